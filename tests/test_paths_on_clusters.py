"""Paths as clusters and shared machines have them: dataset folders that are links to scratch
storage, long file names, a Mac's `._*` files, path-valued overrides, a home that cannot be
written or is not there, paths with spaces and commas in the commands the messages suggest."""
import logging
import os
import shlex
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from src.data import download
from src.data.placement import place
from src.data.prepare_cityscapes import find_pairs
from src.nets import winograd_build
from src.nets.winograd_build import WinogradUnavailable
from src.utils.whole_files import NAME_MAX_BYTES, remove_stale_temporaries, temporary_name, write_whole, writer_id

LAYOUT = ("trainA", "trainB", "testA", "testB")


def unpaired_dataset(folder: Path) -> Path:
    for split in LAYOUT:
        (folder / split).mkdir(parents=True)
        (folder / split / "0.png").write_bytes(b"png")
    return folder


def link_to_scratch(tmp_path: Path, made: bool) -> tuple[Path, Path]:
    """data/horse2zebra -> scratch/horse2zebra, that folder empty or not made yet."""
    real = tmp_path / "scratch" / "horse2zebra"
    (real if made else real.parent).mkdir(parents=True)
    link = tmp_path / "data" / "horse2zebra"
    link.parent.mkdir()
    link.symlink_to(real, target_is_directory=True)
    return link, real


@pytest.mark.parametrize("made", [True, False], ids=["empty", "not_made_yet"])
def test_a_dataset_placed_on_a_link_to_scratch_fills_the_links_target(tmp_path, made):
    """A rename onto the link (or removing it as an empty folder) raised NotADirectoryError."""
    link, real = link_to_scratch(tmp_path, made)
    built = unpaired_dataset(tmp_path / "scratch" / ".extracted" / "horse2zebra")   # an unpacked archive
    assert place(built, link, lambda folder: False)
    assert link.is_symlink() and sorted(p.name for p in real.iterdir()) == sorted(LAYOUT)


@pytest.mark.parametrize("made", [True, False], ids=["empty", "not_made_yet"])
def test_a_download_into_a_link_to_scratch_builds_beside_the_links_target(tmp_path, monkeypatch, made):
    """The scratch folder sits beside the link's target (one file system, a cheap rename), not
    beside the link, and the data lands in the target: no network (a build in place of a fetch)."""
    link, real = link_to_scratch(tmp_path, made)
    builds = []

    def build(folder: Path, fetch) -> None:
        builds.append(folder)
        unpaired_dataset(folder)

    source = download.DatasetSource("http://not.fetched.invalid/", download.UNPAIRED_LAYOUT, build=build)
    monkeypatch.setitem(download.DATASETS, "horse2zebra", source)
    assert download.download("horse2zebra", tmp_path / "data") == link
    (built,) = builds
    assert built.parent.parent == real.parent   # scratch/.horse2zebra-xxxx/horse2zebra
    assert link.is_symlink() and not download.missing_folders(real, download.UNPAIRED_LAYOUT)
    assert sorted(p.name for p in tmp_path.glob("*/.*")) == []   # no scratch folder left behind


@pytest.mark.parametrize("made", [True, False], ids=["empty", "not_made_yet"])
def test_shapes_generated_into_a_link_to_scratch_fill_the_links_target(tmp_path, made, monkeypatch):
    from src.data.shapes import ensure_shapes_dataset, shapes_params

    import src.data.shapes as shapes
    link, real = link_to_scratch(tmp_path, made)
    params = shapes_params(size=8, n_train=1, n_test=1, seed=0, paired=False)
    assert ensure_shapes_dataset(link, params) == link
    assert link.is_symlink() and (real / "meta.json").is_file()
    assert sorted(p.name for p in tmp_path.glob("*/.*")) == []   # scratch folders gone
    # Generated again with other parameters: the stale data is moved aside beside the target,
    # never the link itself (which the old code renamed away, leaving a plain folder behind).
    scratch_folders = []
    generate = shapes.generate
    monkeypatch.setattr(shapes, "generate", lambda folder, p: scratch_folders.append(folder) or generate(folder, p))
    other = shapes_params(size=8, n_train=2, n_test=1, seed=0, paired=False)
    assert ensure_shapes_dataset(link, other) == link
    assert link.is_symlink() and shapes._read_meta(real) == other
    assert [folder.parent.parent for folder in scratch_folders] == [real.parent]   # <scratch>/<name>, beside it
    assert sorted(p.name for p in tmp_path.glob("*/.*")) == []


@pytest.mark.parametrize("name", ["a" * 246 + ".bin", "漢" * 82 + ".bin"], ids=["ascii", "cjk"])
def test_a_whole_file_of_a_250_byte_name_is_written(tmp_path, name):
    """A legal name of 218 bytes or more made a temporary name over 255 bytes (ENAMETOOLONG):
    its start is cut in the temporary name, which stale-file globs of the name still find."""
    assert len(name.encode()) == 250
    write_whole(tmp_path / name, lambda stream: stream.write(b"whole"))
    assert (tmp_path / name).read_bytes() == b"whole" and [p.name for p in tmp_path.iterdir()] == [name]
    writer = writer_id()
    temporary = temporary_name(name, writer)
    assert len(temporary.encode()) <= NAME_MAX_BYTES and temporary.endswith(f".bin.{writer}.tmp")
    (tmp_path / temporary).write_bytes(b"left by a killed writer")
    for name_glob in (name, "*.bin"):
        remove_stale_temporaries(tmp_path, name_glob, older_than_s=-1)
        assert [p.name for p in tmp_path.iterdir()] == [name]
        (tmp_path / temporary).write_bytes(b"left by a killed writer")


def test_cityscapes_pairs_leave_out_a_macs_resource_forks(tmp_path, caplog):
    """A `._<id>_leftImg8bit.png` (a Mac copying to a FAT or network disk) was an id of its own,
    without a partner: the build stopped with a FileNotFoundError."""
    photos, labels = tmp_path / "leftImg8bit" / "train" / "aachen", tmp_path / "gtFine" / "train" / "aachen"
    photos.mkdir(parents=True)
    labels.mkdir(parents=True)
    (photos / "aachen_000000_000019_leftImg8bit.png").write_bytes(b"png")
    (labels / "aachen_000000_000019_gtFine_color.png").write_bytes(b"png")
    (photos / "._aachen_000000_000019_leftImg8bit.png").write_bytes(b"resource fork")
    with caplog.at_level(logging.WARNING, logger="src.data.prepare_cityscapes"):
        pairs = find_pairs(tmp_path / "gtFine", tmp_path / "leftImg8bit", "train")
    assert [(photo.name, label.name) for photo, label in pairs] == [
        ("aachen_000000_000019_leftImg8bit.png", "aachen_000000_000019_gtFine_color.png")]
    assert "1 hidden files" in caplog.text and "leftImg8bit/train" in caplog.text


def test_wandb_run_names_leave_out_path_valued_overrides():
    """data.data_dir=<a long scratch path> filled the 128 characters, and every job of a sweep
    had the same name."""
    from src.utils.wandb_run import run_name

    cfg = OmegaConf.create({"model_name": "cyclegan", "data": {"name": "horse2zebra"}})
    scratch = "/scratch/group/someone/datasets/" + "x" * 100
    overrides = [f"data.data_dir={scratch}", "data.csv_path=tables/pairs.csv", "+data.label_dir=labels",
                 f"init_from='{scratch}/last.ckpt'", "init_from=logs/train/runs/h2z/checkpoints/last.ckpt",
                 "loss.weights.cycle=5", "model.optimizer.lr=0.0002"]
    assert run_name(cfg, overrides) == "cyclegan-horse2zebra-loss.weights.cycle=5,model.optimizer.lr=0.0002"


def test_a_resumed_wandb_run_keeps_its_name_group_and_tags(train_cfg):
    """A sweep's job resumed by hand as a single run derived a plain group and lost its
    `multirun` tag, and wandb replaced the run's tags with the resume's: the checkpoint keeps the
    run's own, as plain values (it loads weights-only), and a value the config sets still wins."""
    import io
    from types import SimpleNamespace

    import torch
    from pytorch_lightning.loggers import WandbLogger

    from src.utils.wandb_run import WandbRunIdCallback, with_wandb_identity
    logger = WandbLogger(id="run7", name="cyclegan-shapes-seed=3", group="train/sweep_a", tags=["model:cyclegan",
                                                                                               "multirun"])
    checkpoint = {}
    WandbRunIdCallback().on_save_checkpoint(SimpleNamespace(loggers=[logger]), None, checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    checkpoint = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    cfg = train_cfg("logger=wandb")
    node = with_wandb_identity(cfg.logger, cfg, checkpoint).wandb
    assert (node.id, node.name, node.group, list(node.tags)) == (
        "run7", "cyclegan-shapes-seed=3", "train/sweep_a", ["model:cyclegan", "multirun"])
    fresh = with_wandb_identity(cfg.logger, cfg, None).wandb   # a new run derives its own
    assert fresh.group == "smoke" and "multirun" not in fresh.tags
    cfg.logger.wandb.group = "mine"
    assert with_wandb_identity(cfg.logger, cfg, checkpoint).wandb.group == "mine"


def test_wandb_run_names_cut_to_length_still_tell_a_sweeps_jobs_apart():
    """Cut at 128 characters, the swept `seed=N` at the end was lost and the seeds' runs shared
    one name; a digest of the whole name keeps them apart, and a short name is left as it is."""
    from src.utils.wandb_run import MAX_NAME_LENGTH, run_name

    cfg = OmegaConf.create({"model_name": "cyclegan", "data": {"name": "horse2zebra"}})
    fixed = ["max_iters=100000", "model.lr_schedule.unit=iteration", "model.lr_schedule.constant=half",
             "model.lr_schedule.decay=half"]
    names = {run_name(cfg, [*fixed, f"seed={seed}"]) for seed in range(3)}
    assert len(names) == 3 and all(len(name) == MAX_NAME_LENGTH for name in names)
    assert all(name.startswith("cyclegan-horse2zebra-max_iters=100000,model.lr_schedule.unit=iteration") for name in names)
    assert run_name(cfg, ["seed=1"]) == "cyclegan-horse2zebra-seed=1"


def no_home():
    raise RuntimeError("Could not determine home directory.")


@pytest.fixture
def temporary_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(folder))
    return folder


def test_the_kernel_cache_is_the_users_cache_folder_where_it_can_be_written(tmp_path, temporary_dir, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))   # not made yet: it will be
    assert winograd_build._cache_dir() == tmp_path / "cache" / "gan-i2i" / "winograd"
    assert list(temporary_dir.iterdir()) == [] and not (tmp_path / "cache").exists()   # nothing made yet


@pytest.mark.parametrize("home", ["a_file", "no_home", "read_only"])
def test_the_kernel_cache_falls_back_to_a_private_temporary_folder(tmp_path, temporary_dir, monkeypatch, home):
    """A cache folder that cannot be made (a file in its way, a read-only home) lost the kernels'
    speed-up; without a home (HOME unset, no passwd entry) Path.home()'s RuntimeError crashed a
    CPU run. Neither compiles anything here."""
    if home == "a_file":
        (tmp_path / "cache").write_text("not a folder")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    elif home == "no_home":
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        monkeypatch.setattr(Path, "home", staticmethod(no_home))
    else:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "home").mkdir(mode=0o555)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = winograd_build._cache_dir()
    if not hasattr(os, "getuid"):
        assert folder == temporary_dir / "gan-i2i" / "winograd"
        return
    assert folder == temporary_dir / f"gan-i2i-{os.getuid()}" / "winograd"
    assert folder.parent.stat().st_mode & 0o077 == 0   # private: no other user plants a library there
    assert winograd_build._cache_dir() == folder        # found again


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX ownership and modes")
def test_a_temporary_kernel_cache_others_may_write_in_is_refused(tmp_path, temporary_dir, monkeypatch):
    """A library another user planted there would be loaded into the run: the kernels are
    unavailable instead (the models keep torch's convolutions), the message saying what to set."""
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shared = temporary_dir / f"gan-i2i-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(WinogradUnavailable, match="not this user's own private folder; set XDG_CACHE_HOME"):
        winograd_build._cache_dir()
    shared.rmdir()
    shared.symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(WinogradUnavailable, match="not this user's own private folder"):
        winograd_build._cache_dir()


def test_the_download_hint_pastes_back_paths_with_spaces_commas_and_accents(tmp_path):
    """`--root <path>` and `++data.data_dir=<path>` were printed bare: a path with a space, ',',
    '=', parentheses or 'é' split into several shell words or broke Hydra's override grammar."""
    root = tmp_path / "runs, v=2 (épreuve)"
    hint = download.how_to_get("horse2zebra", root / "h2z")
    command, _, rest = hint.removeprefix("Download it with: ").partition(" and pass ")
    assert shlex.split(command)[-2:] == ["--root", str(root)]
    (override,) = shlex.split(rest.partition(" Expected layout of ")[0])
    (parsed,) = OverridesParser.create().parse_overrides([override])
    assert parsed.key_or_group == "data.data_dir" and parsed.value() == str(root / "horse2zebra")
    nested = unpaired_dataset(root / "horse2zebra" / "horse2zebra")   # unpacked a folder too deep
    hint = download.how_to_get("horse2zebra", root / "horse2zebra")
    (override,) = shlex.split(hint.partition(": pass ")[2].partition(" to train.py or eval.py")[0])
    assert OverridesParser.create().parse_overrides([override])[0].value() == str(nested)
    assert download.pasteable_override("data.data_dir", "/data/horse2zebra") == "++data.data_dir=/data/horse2zebra"


def test_the_download_hint_quotes_for_windows_shells_there(monkeypatch):
    """cmd.exe passes POSIX single quotes through as part of the argument: on Windows the hint's
    arguments are quoted as its C runtime reads them."""
    monkeypatch.setattr(download, "WINDOWS", True)
    assert download.shell_quoted(r"C:\data") == r"C:\data"
    assert download.shell_quoted(r"C:\my data") == r'"C:\my data"'
    override = download.pasteable_override("data.data_dir", r"C:\my data\h2z")
    assert override.startswith('"++data.data_dir=') and "'\"'\"'" not in override
    (parsed,) = OverridesParser.create().parse_overrides([override[1:-1]])   # the shell's removal of "..."
    assert parsed.value() == r"C:\my data\h2z"


def test_a_pasteable_override_of_a_key_the_config_holds_has_no_plus_signs():
    """The run's end and a crash name `ckpt_path=` and `hydra.run.dir=` to paste back: run
    folders lie under the working directory, whose path may hold spaces, '(' or accents."""
    override = download.pasteable_override("ckpt_path", "/home/josé/GAN runs (1)/last.ckpt", prefix="")
    (parsed,) = OverridesParser.create().parse_overrides(shlex.split(override))
    assert (parsed.key_or_group, parsed.value()) == ("ckpt_path", "/home/josé/GAN runs (1)/last.ckpt")
    assert download.pasteable_override("ckpt_path", "/runs/a/last.ckpt", prefix="") == "ckpt_path=/runs/a/last.ckpt"
    # a name alone is shown as it is where Hydra reads it as a name, and quoted where it would not
    assert download.pasteable_override("init_from", "last.ckpt", prefix="") == "init_from=last.ckpt"
    assert download.pasteable_override("output", "2024", prefix="") == '"output=\'2024\'"'


@pytest.mark.parametrize("value", [None, True, 3, 1e-4, "bicubic", "None", "2024", "nan", "big dogs", "a=b,c",
                                   ["cats", "big dogs", None, 2], {"A": 0.5, "B": "x y"}])
def test_a_suggested_setting_reads_back_as_its_value(value):
    """eval.py's fixes (`++data.resize_interpolation=bilinear`) printed Python's values: None
    read back as the string 'None', and a list's "['a', 'b']" split at its space in the shell."""
    override = download.pasteable_setting("data.x", value)
    (parsed,) = OverridesParser.create().parse_overrides(shlex.split(override))
    assert (parsed.key_or_group, parsed.value()) == ("data.x", value)
    assert download.pasteable_setting("data.x", "bicubic") == "++data.x=bicubic"   # plain where it can be
    assert download.pasteable_setting("data.x", np.float64(0.5)) == "++data.x=0.5"   # (numpy's repr: np.float64(0.5))
    if isinstance(value, list):   # as a config holds it
        assert download.pasteable_setting("data.x", OmegaConf.create({"x": value}).x) == override


@pytest.mark.parametrize("key,value,read_as", [("input", 2024, "a number"), ("output", True, "true or false")])
def test_a_file_name_hydra_reads_as_a_number_is_refused_with_its_quoted_form(tmp_path, key, value, read_as):
    """`output=2024` reached Path() as an int (a TypeError naming no setting); `input=0` was
    reported as a missing input."""
    import torch

    from src.translate import run_translation
    torch.save({}, tmp_path / "last.ckpt")   # (a whole file: the checkpoint checks come first)
    cfg = OmegaConf.create({"ckpt_path": str(tmp_path / "last.ckpt"), "input": "photos", "output": "out"})
    cfg[key] = value
    with pytest.raises(ValueError, match=f"{key}={value!r}: Hydra read the name as {read_as}; quote it") as refused:
        run_translation(cfg)
    pasted = shlex.split(str(refused.value).rpartition(", as ")[2].partition(" (")[0])
    assert OverridesParser.create().parse_overrides(pasted)[0].value() == str(value)   # a string now
    with pytest.raises(ValueError, match="ckpt_path=2024: Hydra read the name as a number"):
        run_translation(OmegaConf.create({"ckpt_path": 2024, "input": "photos"}))


def test_eval_and_translate_refuse_hydra_job_chdir(monkeypatch, tmp_path):
    """Under hydra.job.chdir=true they ran inside their output folder: a relative ckpt_path was
    "no such checkpoint file" and a relative output= was written inside the folder."""
    from src.translate import run_translation
    from src.utils import config_checks
    from src.utils.evaluation import run_evaluation
    monkeypatch.setattr(config_checks, "hydra_config", lambda: OmegaConf.create({"job": {"chdir": True}}))
    for run in (run_translation, run_evaluation):
        with pytest.raises(ValueError, match="hydra.job.chdir=true: the commands keep the working directory"):
            run(OmegaConf.create({"ckpt_path": "last.ckpt", "input": "photos", "output_dir": str(tmp_path)}))


def test_a_wandb_run_that_cannot_finish_leaves_the_runs_own_result(monkeypatch, caplog):
    """finish_wandb_run runs in the run's `finally`: wandb failing there (its service or network
    gone) replaced the run's error, or failed a run that had trained and saved everything."""
    import sys
    import types

    from src.utils.wandb_run import finish_wandb_run

    def unreachable(exit_code):
        raise ConnectionError("wandb service is gone")

    fake = types.SimpleNamespace(run=types.SimpleNamespace(dir="/runs/a/wandb/run-1/files"), finish=unreachable)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with caplog.at_level("WARNING"):
        finish_wandb_run(exit_code=1)
    assert "wandb could not finish its run (ConnectionError: wandb service is gone)" in caplog.text
    assert "/runs/a/wandb/run-1/files" in caplog.text


def test_a_leading_tilde_in_the_tools_file_settings_is_the_home_folder(tmp_path, monkeypatch, train_cfg):
    """A `~` quoted for Hydra (zsh, macOS's shell, does not expand it) or written in a config
    file reached the tools as typed: they looked for a folder named `~` and reported no such
    checkpoint. Here the checkpoint is found, and refused as the cut file it is."""
    from src.translate import run_translation
    from src.utils.evaluation import run_evaluation
    from src.utils.run import run_training
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "cut.ckpt").write_bytes(b"PK\x03\x04 cut short")
    found = f"{tmp_path}/cut.ckpt cannot be read as a checkpoint"
    given = OmegaConf.create({"ckpt_path": "~/cut.ckpt", "input": "~/photos", "output_dir": str(tmp_path / "eval")})
    for run in (run_translation, run_evaluation):
        with pytest.raises(ValueError, match=f"ckpt_path={found}"):
            run(given)
    assert given.ckpt_path == "~/cut.ckpt"   # the caller's config as given
    for key in ("ckpt_path", "init_from"):
        with pytest.raises(ValueError, match=f"{key}={found}"):
            run_training(train_cfg(f"{key}='~/cut.ckpt'"))


def test_a_leading_tilde_in_a_weights_file_is_the_home_folder_where_the_file_is_opened(tmp_path, monkeypatch):
    """Expanded where the file is opened, so every way the setting arrives is served: train's
    callbacks, eval's settings, and a run's config eval falls back on. Each file here is found,
    and refused for what it holds, not for being missing."""
    import torch

    from src.metrics import features
    from src.metrics.segmenter import Segmenter
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(features, "torch_fidelity_available", lambda: True)
    torch.save({"code": types.SimpleNamespace(a=1)}, tmp_path / "w.pth")
    with pytest.raises(features.InceptionUnavailable, match=f"{tmp_path}/w.pth is not a plain tensor state dict"):
        features.build_feature_extractor("inception", weights_path="~/w.pth")
    (tmp_path / "fcn.pt2").write_bytes(b"not a program")
    with pytest.raises(ValueError, match=f"segmenter_path={tmp_path}/fcn.pt2 is not a program"):
        Segmenter("~/fcn.pt2", num_classes=2, size=None, device="cpu", key="segmenter_path")


def test_the_fid_record_keeps_a_weights_files_tilde_expanded(train_cfg, tmp_path, monkeypatch):
    """Checkpoints from before `~` was expanded where the file is opened recorded the expanded
    path: recorded as typed, the same file would read as another measure on a resume, and the
    run's best FID would start over."""
    import torch

    from src.utils.run import run_training
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = train_cfg("max_iters=1", "callbacks.fid_kid.feature_extractor_weights_path='~/w.pth'")
    run_training(cfg)
    states = torch.load(f"{cfg.paths.output_dir}/checkpoints/last.ckpt", weights_only=True)["callbacks"]
    (measure,) = [state["measure"] for state in states.values() if "measure" in state]
    assert measure["feature_extractor_weights_path"] == f"{tmp_path}/w.pth"
