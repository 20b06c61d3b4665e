"""`python src/train.py` as users run it: multirun and clear errors for bad config."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_train(*args: str, tmp_path: Path, data_dir: Path, log_dir_from_cwd: bool = False
              ) -> subprocess.CompletedProcess:
    """`src/train.py debug=smoke <args>` run in tmp_path, its logs under tmp_path/logs: named by
    `paths.log_dir`, or (`log_dir_from_cwd`) found as a user's are, from the working directory,
    without $PROJECT_ROOT (which `make test` sets)."""
    env = {**os.environ, "PROJECT_ROOT": str(ROOT), "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1",
           "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    if log_dir_from_cwd:
        del env["PROJECT_ROOT"]
    flags = [a for a in args if a.startswith("-")]  # Hydra's flags go before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    log_dir = [] if log_dir_from_cwd else [f"paths.log_dir={tmp_path}/logs"]
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), *flags, "debug=smoke", *log_dir,
           f"paths.data_dir={data_dir}", *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_multirun_writes_one_run_dir_per_job(tmp_path, shared_data_dir):
    # As a user runs it: the sweep folder under the working directory's logs/ (resolved before
    # any job's Hydra config exists).
    result = run_train("-m", "loss=lsgan,hinge", "max_iters=2", tmp_path=tmp_path, data_dir=shared_data_dir,
                       log_dir_from_cwd=True)
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "logs" / "smoke" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert (job / ".hydra" / "overrides.yaml").is_file()
        final = json.loads((job / "final_metrics.json").read_text())
        assert final["status"] == "completed" and final["iteration"] == 2
        assert final["checkpoint"] == str(job / "checkpoints" / "last.ckpt") and "eval/fid" in final["metrics"]
        # the run's warnings are in its log, not on the console alone
        assert "[py.warnings][WARNING] - " in (job / "train.log").read_text()   # (the smoke run's short schedule)
        assert "model.lr_schedule decays the rate" in (job / "train.log").read_text()
    # the sweep's table: one row per job, the override that differs, the job's own FID
    table = (sweeps[0] / "summary.md").read_text()
    for job, loss in zip(jobs, ("lsgan", "hinge")):
        fid = json.loads((job / "final_metrics.json").read_text())["metrics"]["eval/fid"]
        assert f"| {job.name} | loss={loss} | completed | 2 | random_cnn | {fid:.4g} |" in table
    rows = list(csv.DictReader((sweeps[0] / "summary.csv").open()))
    assert ["loss=lsgan" in r["overrides"] for r in rows] == [True, False] and "train/G" in rows[0]


def test_multirun_table_names_a_failed_job_and_keeps_the_others(tmp_path, shared_data_dir):
    result = run_train("-m", "data.batch_size=0,1", "max_iters=2", tmp_path=tmp_path, data_dir=shared_data_dir)
    assert result.returncode != 0   # Hydra reports the failed job at the end
    (sweep,) = (tmp_path / "logs" / "smoke" / "multiruns").iterdir()
    table = (sweep / "summary.md").read_text()
    assert "| 0 | data.batch_size=0 | failed: " in table and "data.batch_size=0 must be a positive integer" in table
    assert "| 1 | data.batch_size=1 | completed | 2 |" in table
    # the failed job's log ends with its error and traceback (Hydra printed them on the console
    # alone), and the console said it as it failed
    log_text = (sweep / "0" / "train.log").read_text()
    assert "Training stopped with this error:" in log_text and "Traceback (most recent call last)" in log_text
    assert "data.batch_size=0 must be a positive integer" in log_text.split("Traceback")[-1]
    assert "Error" not in (sweep / "1" / "train.log").read_text()
    assert "data.batch_size=0 max_iters=2) failed: InstantiationException: " in result.stdout
    assert f"(its traceback: {sweep / '0' / 'train.log'}); the sweep goes on" in result.stdout


@pytest.mark.parametrize("override,message", [
    # the full messages (Hydra's own "Error executing job with overrides: [...]" names the override
    # on the command line, which test_bad_config_fails_at_start_naming_the_key shows)
    ("loss.gan_mode=bogus", "Unknown adversarial loss 'bogus' (config key loss.gan_mode); choose one of"),
    ("model.lr_schedule.policy=exp", "Unknown model.lr_schedule.policy 'exp'; choose one of"),
    ("+model.no_such_arg=1", "model.no_such_arg is not a setting of CycleGAN (they are generator, discriminator"),
    ("+model.generator.n_blocs=6", "model.generator.n_blocs is not a setting of ResnetGenerator (they are "),
    # the default data's class passes **kwargs to its bases: their settings are the ones it takes
    ("++data.crop_sise=64", "data.crop_sise is not a setting of ShapesDataModule (they are data_dir, name, size, "),
    ("model=progan ++model.phase_image=1000", "model.phase_image is not a setting of ProGAN (they are phase_images"),
    # Lightning adds a ModelCheckpoint of its own where none is configured: epoch-end files, no last.ckpt
    ("~callbacks.model_checkpoint", "No checkpoint callback configured: add callbacks.model_checkpoint"),
    # the run passes its own loggers and callbacks: Lightning's TypeError named no setting
    ("+trainer.logger=false", "trainer.logger=False: the run builds the trainer's logger from its own config"),
    ("+trainer.enable_checkpointing=false", "trainer.enable_checkpointing=False: the run builds the trainer's "),
])
def test_a_bad_setting_stops_the_run_before_training_naming_the_key(train_cfg, override, message):
    from hydra.errors import InstantiationException

    from src.utils.run import run_training
    cfg = train_cfg(*override.split())
    with pytest.raises((ValueError, InstantiationException), match=re.escape(message)):
        run_training(cfg)
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))   # at start: nothing trained


@pytest.mark.parametrize("override,message", [
    ("model=nope", "Could not find 'model/nope'"),
    # as the command line shows a run's own error: Hydra's report around it
    ("loss.gan_mode=bogus", "Unknown adversarial loss 'bogus' (config key loss.gan_mode); choose one of"),
    ("allocator=huge", "allocator='huge' is not one of default, thp, reuse, thp_reuse (conf/train.yaml: allocator)"),
    # the run folder is Hydra's: one named in paths alone would leave .hydra/ and train.log behind
    ("paths.output_dir=TMP/elsewhere/run", "choose the run folder with hydra.run.dir=TMP/elsewhere/run"),
    # paths.root_dir is the working directory: inside the run folder, data and logs would go there
    ("hydra.job.chdir=true", "hydra.job.chdir=true: the commands keep the working directory"),
])
def test_bad_config_fails_at_start_naming_the_key(tmp_path, shared_data_dir, override, message):
    override, message = override.replace("TMP", str(tmp_path)), message.replace("TMP", str(tmp_path))
    result = run_train(*override.split(), tmp_path=tmp_path, data_dir=shared_data_dir)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]
    assert not list(tmp_path.rglob("*.ckpt"))   # at start: nothing trained
    # the failure's record is in the run's own folder, never in one paths.output_dir named instead
    assert not (tmp_path / "elsewhere").exists()
    records = list((tmp_path / "logs").rglob("final_metrics.json"))
    if "allocator" not in override and "model=nope" not in override:   # (those stop before the run starts)
        assert [json.loads(r.read_text())["status"] for r in records] == ["failed"], result.stderr[-2000:]


MODEL_NAMES = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))


@pytest.mark.parametrize("overrides", [[f"model={name}"] for name in MODEL_NAMES]
                         + [["model=nicegan", "data=horse2zebra"], ["model=dcgan", "data=cifar10"]])
def test_make_train_builds_every_model_and_its_data(tmp_path, shared_data_dir, overrides):
    """`make train ARGS="model=<name> [data=<real dataset>]"` (experiment=quickstart): the composed
    data and model configs construct, whatever data the model trains on (images, labelled
    images, series, a real dataset without the embedded one's `size`). Nothing is read yet."""
    import hydra

    from conftest import compose_train_cfg
    cfg = compose_train_cfg(["experiment=quickstart", *overrides], tmp_path / "run", shared_data_dir)
    assert cfg.max_iters is not None
    hydra.utils.instantiate(cfg.data)
    hydra.utils.instantiate(cfg.model, _recursive_=False)


@pytest.mark.parametrize("model,data,kind", [
    ("cyclegan", "shapes_labelled", "trains on two image domains"), ("pix2pix", "sines", "trains on two image domains"),
    ("dcgan", "shapes", "trains on a labelled image dataset"), ("rgan", "shapes_labelled", "trains on a sequence dataset"),
])
def test_a_model_on_another_kind_of_data_is_refused_before_anything_is_built(tmp_path, shared_data_dir, model, data,
                                                                             kind):
    """A translator on labelled images failed with OmegaConf's missing `data.output_nc`, and
    with it added, a KeyError 'B' at the first batch: the check names the model and the fix.
    The right kind passes."""
    import hydra

    from conftest import compose_train_cfg
    cfg = compose_train_cfg(["debug=smoke", f"model={model}", f"data={data}"], tmp_path / "run", shared_data_dir)
    model_class = hydra.utils.get_class(cfg.model._target_)
    with pytest.raises(ValueError, match=f"model={model} {kind}: use .*; data._target_=src.data.* is not one") as error:
        model_class.check_data_config(cfg.data, model)
    if model in ("cyclegan", "pix2pix"):   # and what a DataModule of one's own derives from
        assert ("a DataModule of one's own subclasses src.data.unpaired.UnpairedDataModule or "
                "src.data.paired.PairedDataModule") in str(error.value)
    right = {"cyclegan": "shapes", "pix2pix": "shapes_paired", "dcgan": "shapes_labelled", "rgan": "sines"}[model]
    cfg = compose_train_cfg(["debug=smoke", f"model={model}", f"data={right}"], tmp_path / "run", shared_data_dir)
    model_class.check_data_config(cfg.data, model)


def test_a_translator_accepts_a_two_domain_datamodule_of_another_layout(monkeypatch):
    """A two-domain DataModule need not be a paired or unpaired folder layout: subclassing
    TwoDomainDataModule is what a translator asks for (the labelled images are not one)."""
    from src.data.base import TwoDomainDataModule
    from src.models.cyclegan import CycleGAN

    class VideoFramePairs(TwoDomainDataModule):
        paired = False

    monkeypatch.setattr(sys.modules[__name__], "VideoFramePairs", VideoFramePairs, raising=False)
    CycleGAN.check_data_config({"_target_": f"{__name__}.VideoFramePairs"}, "cyclegan")
    with pytest.raises(ValueError, match="trains on two image domains"):
        CycleGAN.check_data_config({"_target_": "src.data.labelled.LabelledImageDataModule"}, "cyclegan")


@pytest.mark.parametrize("overrides,identity", [([], 5.0), (["loss.weights.cycle=5"], 2.5),
                                                (["loss.weights.cycle=5", "loss.weights.identity=1"], 1.0)])
def test_cyclegan_identity_weight_follows_a_cycle_sweep(tmp_path, shared_data_dir, overrides, identity):
    """CycleGAN's code weighs the identity loss as a fraction (0.5) of the cycle weight, so
    `-m loss.weights.cycle=5,10` keeps the paper's ratio; an explicit identity weight wins."""
    import hydra

    from conftest import compose_train_cfg
    cfg = compose_train_cfg(["debug=smoke", "model=cyclegan", *overrides], tmp_path / "run", shared_data_dir)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    assert model.weight("identity") == identity
    assert model.hparams.loss["weights"]["identity"] == identity   # saved resolved, as checkpoints load it


def test_training_and_translating_from_python_as_the_readme_shows(tmp_path, shared_data_dir, monkeypatch):
    """README "From Python": compose the config with an output folder, train, load the
    checkpoint and translate tensors and files, from a working directory elsewhere (a notebook's)
    and with the caller's own Hydra initialised, which stays so."""
    import math

    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conftest import NO_EVALUATION
    from src.utils.checkpoint_loading import load_model
    from src.utils.run import run_training
    from src.utils.training_config import ROOT_DIR, compose_training_config
    from src.utils.translation import translate_images

    monkeypatch.delenv("PROJECT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)   # a notebook's folder
    (tmp_path / "own_conf").mkdir()
    (tmp_path / "own_conf" / "mine.yaml").write_text("answer: 42\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(tmp_path / "own_conf"), version_base="1.3"):   # the caller's own
        cfg = compose_training_config(["debug=smoke", "model=cyclegan", "max_iters=2", *NO_EVALUATION,
                                       f"paths.data_dir={shared_data_dir}"], output_dir=tmp_path / "run")
        assert cfg.paths.root_dir == str(ROOT_DIR) and cfg.paths.output_dir == str(tmp_path / "run")
        assert compose(config_name="mine").answer == 42   # the caller's Hydra, as it was
    try:
        metrics = run_training(cfg)
        # composed without a run folder: Hydra's own error named no fix
        with pytest.raises(ValueError, match=r"paths.output_dir, the run folder, is the one Hydra makes under "
                                             r"src/train.py: from Python, compose the config with "
                                             r"compose_training_config\(overrides, output_dir='runs/NAME'\)"):
            run_training(compose_training_config(["debug=smoke", "model=cyclegan"]))
        # the overrides are checked as train.py checks its command line: this one was trained without
        with pytest.raises(ValueError, match=r"loss.weights.gp=1 would change nothing: loss.gan_mode=lsgan has no "
                                             r"gradient penalty"):
            run_training(compose_training_config(["debug=smoke", "model=cyclegan", "loss.weights.gp=1",
                                                  f"paths.data_dir={shared_data_dir}"], output_dir=tmp_path / "gp"))
    finally:
        GlobalHydra.instance().clear()
    assert math.isfinite(metrics["train/G"])
    model = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    batch = torch.rand(2, 3, 16, 16) * 2 - 1
    assert model.translate(batch, "AtoB").shape == batch.shape
    with pytest.raises(TypeError, match=r"translate takes a batch of float images \(N, C, H, W\) in \[-1, 1\], got a "
                                         r"torch.float32 tensor of shape \(3, 16, 16\) \(one image: x\[None\]"):
        model.translate(batch[0], "AtoB")
    with pytest.raises(TypeError, match=r"translate takes a torch tensor of float images .*, got a numpy.ndarray "
                                        r"\(an \(H, W, C\) uint8 array"):
        model.translate(batch.numpy(), "AtoB")   # (an AttributeError: 'numpy.ndarray' object has no attribute 'dim')
    with pytest.raises(ValueError, match=r"translate: CycleGAN cannot translate 15x15 px images: the AtoB translation "
                                         r"returns 16x16 px images. The nearest square sizes it translates: 12x12 or "
                                         r"16x16; pad them to a multiple of 4 px first \(translate_images does\)"):
        model.translate(batch[..., :15, :15], "AtoB")
    # a notebook's float64 array is taken in the weights' type
    assert model.translate(batch.double(), "AtoB").dtype == torch.float32
    source = next(Path(cfg.data.data_dir).glob("testA/*.png"))
    ((path, image),) = translate_images(model, [source], "AtoB")
    assert path == source and image.dtype == np.uint8
    # On the model's device, which translate_images leaves where it is (it moved it to the CPU)
    elsewhere = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="meta")
    assert model.translate(batch, "AtoB").device.type == "cpu" and elsewhere.translate(batch, "AtoB").is_meta
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: moved.append(args) or self)
    translate_images(elsewhere, [source], "AtoB")
    assert moved == []


def test_a_second_run_into_a_busy_run_folder_is_refused_and_gives_back_its_hydra_files(tmp_path, shared_data_dir):
    """Hydra writes a command's .hydra files into its run folder before the run starts: a second
    command into a folder in use is refused, naming the holder, and the running run's own
    .hydra files (those eval.py and a resume read) are put back from its start's record."""
    from omegaconf import OmegaConf

    from src.utils.folder_lock import FolderLock
    run_dir = tmp_path / "fixed_run"
    first = run_train("max_iters=2", f"hydra.run.dir={run_dir}", tmp_path=tmp_path, data_dir=shared_data_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    (start,) = (run_dir / "starts").iterdir()
    assert list(OmegaConf.load(start / "overrides.yaml")) == list(OmegaConf.load(run_dir / ".hydra/overrides.yaml"))
    assert "max_iters=2" in OmegaConf.load(start / "overrides.yaml")
    with FolderLock(run_dir, "the first run's folder", ""):   # as the first run would, still training
        second = run_train("max_iters=3", f"hydra.run.dir={run_dir}", tmp_path=tmp_path, data_dir=shared_data_dir)
    assert second.returncode != 0
    assert f"is in use by process {os.getpid()}" in second.stderr and "Give this run its own folder" in second.stderr
    assert f"were put back from {start}" in second.stderr
    assert "max_iters=2" in OmegaConf.load(run_dir / ".hydra/overrides.yaml")
    assert OmegaConf.load(run_dir / ".hydra/config.yaml").max_iters == 2
    assert len(list((run_dir / "starts").iterdir())) == 1


@pytest.mark.parametrize("script, expected, absent", [
    ("train", ["python src/train.py model=nicegan data=cat2dog", "model: cgan, cyclegan", "--cfg job"], []),
    ("eval", ["ckpt_path is required", "save_images: true"], ["== Configuration groups"]),
    ("translate", ["ckpt_path is required, and input unless export is set", "skip_existing: false"],
     ["== Configuration groups"]),
    ("bench", ["python src/bench.py 'configurations=[cyclegan_128]'"], ["== Configuration groups"]),
])
def test_help_gives_the_commands_usage_and_config(script, expected, absent):
    """Hydra's generic help listed every folder of conf/ as groups of every command, eval.py's
    included, which takes none of them."""
    env = {**os.environ, "PROJECT_ROOT": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "src" / f"{script}.py"), "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120).stdout
    assert "is powered by Hydra" not in out
    for text in expected:
        assert text in out, text
    for text in absent:
        assert text not in out, text


def test_make_help_lists_every_target():
    phony = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(".PHONY:"))
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    listed = {line.split()[1] for line in out.splitlines() if line.startswith("make ")}
    assert listed == set(phony.removeprefix(".PHONY:").split()) - {"help"}


@pytest.mark.parametrize("entry", ["train", "eval", "translate"])
def test_the_run_log_file_is_written_in_utf8_whatever_the_systems_code_page(tmp_path, entry):
    """Hydra's log file handler takes the system's encoding (Windows' ANSI code page), which cannot
    write every path or name; a line it cannot encode never reaches the file."""
    import logging
    import logging.config

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        job_logging = compose(config_name=entry, return_hydra_config=True).hydra.job_logging
    GlobalHydra.instance().clear()
    settings = OmegaConf.to_container(job_logging, resolve=False)
    settings["handlers"] = {"file": {**settings["handlers"]["file"], "filename": str(tmp_path / "run.log")}}
    settings["root"] = {"handlers": ["file"], "level": "INFO"}
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        logging.config.dictConfig({**settings, "disable_existing_loggers": False})
        (handler,) = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
        assert handler.encoding == "utf-8"
        logging.getLogger("src").info("données/café ρ 猫")
        handler.flush()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], root.level = before
    assert "données/café ρ 猫" in (tmp_path / "run.log").read_text(encoding="utf-8")


@pytest.mark.parametrize("option", ["disabled", "stdout"])
def test_hydras_other_job_logging_options_still_configure(option):
    """The UTF-8 log file is an option of its own: merged into Hydra's default, it also gave
    `hydra/job_logging=disabled` and `stdout` a file handler without a class, which stopped
    every run at its start."""
    import logging
    import logging.config

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hydra/job_logging={option}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    settings = OmegaConf.to_container(cfg.hydra.job_logging, resolve=False)
    assert "file" not in settings.get("handlers", {})
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        logging.config.dictConfig(settings)
    finally:
        for h in root.handlers:
            if h not in before[0]:
                h.close()
        root.handlers[:], root.level = before


def test_library_output_goes_into_the_log_only_where_logging_is_configured(monkeypatch):
    """Lightning, imported before Hydra's logging (eval.py), keeps a console handler of its own and
    does not propagate: its lines missed the log file. Rerouted where the root logs somewhere;
    with hydra/job_logging=disabled (no root handler) it keeps its own, or its lines would go."""
    import logging

    from src.utils.library_warnings import LIGHTNING_LOGGERS, library_output_into_the_log
    root, own = logging.getLogger(), logging.StreamHandler()
    libraries = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    for library in libraries:
        monkeypatch.setattr(library, "handlers", [own])
        monkeypatch.setattr(library, "propagate", False)
    monkeypatch.setattr(root, "handlers", [])
    try:
        library_output_into_the_log()
        assert all(library.handlers == [own] and not library.propagate for library in libraries)
        monkeypatch.setattr(root, "handlers", [logging.NullHandler()])
        library_output_into_the_log()
        assert all(library.handlers == [] and library.propagate for library in libraries)
    finally:
        logging.captureWarnings(False)
