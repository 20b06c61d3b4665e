"""Ground-truth scores on the shapes test pairs, their training callback, checkpoint loading,
`python src/translate.py` and the ONNX/TorchScript export."""
import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import ExifTags, Image

from src.callbacks.shapes_truth import ShapesTruthCallback
from src.data.image_io import WHOLE_FILE_ENDS, load_image, save_in_format, whole_image_file
from src.data.shapes import ShapesDataModule, shape_coverage
from src.data.transforms import to_tensor
from src.metrics.shapes_truth import (ShapesTruthScorer, foreground_masks,
                                      load_test_backgrounds, load_test_meta, per_image_scores,
                                      score_translations)
from src.translate import run_translation
from src.utils.checkpoint_loading import load_model
from src.utils.export import export_translation
from src.utils.run import run_training
from src.models.size_check import size_multiple
from src.utils.translation import check_direction, crop_to_box, pad_to_multiple, translate_images
from src.utils.directions import untranslated_directions
from tests.conftest import compose_train_cfg, results_of_gloo_ranks, run_eval
from tests.test_label_scores import export_segmenter, write_label_map_dataset
from tests.icc_profiles import rgb_profile_with_red_and_blue_swapped

ROOT = Path(__file__).resolve().parents[1]
N_PAIRS = 16
SMALL_DATA = ["data.n_train=16", "data.n_test=16"]  # generated in a blink; the smoke runs read 16 anyway
TRUTH_CALLBACK = ["++callbacks.shapes_truth._target_=src.callbacks.shapes_truth.ShapesTruthCallback",
                  "++callbacks.shapes_truth.every_n_iters=2", "++callbacks.shapes_truth.max_pairs=8"]
SMOKE_RUNS = {"cyclegan": ["model=cyclegan", *SMALL_DATA, *TRUTH_CALLBACK],
              "pix2pix": ["model=pix2pix", "data=shapes_paired", *SMALL_DATA, *TRUTH_CALLBACK],
              "nicegan": ["model=nicegan", *SMALL_DATA, "max_iters=2"]}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, shared_data_dir):
    """One tiny training run per model: its config, returned metrics and last checkpoint."""
    runs = {}
    for name, overrides in SMOKE_RUNS.items():
        cfg = compose_train_cfg(["debug=smoke", *overrides], tmp_path_factory.mktemp(name), shared_data_dir)
        metrics = run_training(cfg)
        runs[name] = SimpleNamespace(cfg=cfg, metrics=metrics,
                                     ckpt=Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    GlobalHydra.instance().clear()
    return runs


@pytest.fixture(scope="module")
def test_pairs(smoke_runs):
    """The first test pairs of the 32 px shapes dataset: testA, testB, backgrounds, meta, folder."""
    data_dir = Path(smoke_runs["cyclegan"].cfg.data.data_dir)
    files = sorted(load_test_meta(data_dir))[:N_PAIRS]

    def read(domain):
        return torch.stack([to_tensor(load_image(data_dir / f"test{domain}" / f, 3)) for f in files])

    return SimpleNamespace(A=read("A"), B=read("B"), backgrounds=load_test_backgrounds(data_dir, files=files),
                           meta=[load_test_meta(data_dir)[f] for f in files], data_dir=data_dir)


# -- the scores on known inputs ------------------------------------------------------------------


def test_ground_truth_against_itself_is_perfect(test_pairs):
    scores = score_translations(test_pairs.B, test_pairs.B, test_pairs.backgrounds)
    assert scores["iou"] == 1.0 and scores["color_error"] == 0.0 and scores["l1"] == 0.0
    assert scores["ssim"] > 0.999 and scores["psnr"] == math.inf


def test_ssim_windows_fit_small_images():
    """torchmetrics sizes SSIM's Gaussian window from sigma alone: the 11 px window is shrunk by
    its sigma for images under 11 px (it failed to pad a 4 px image, and overhung 6-10 px ones)."""
    from src.metrics.shapes_truth import _ssim_sigma
    assert _ssim_sigma(32, 32) == 1.5
    for side, window in ((8, 7), (4, 3), (10, 9)):
        assert 2 * int(3.5 * _ssim_sigma(side, side) + 0.5) + 1 == window
    torch.manual_seed(0)
    for size in (4, 8):
        images = torch.rand(2, 3, size, size) * 2 - 1
        noisy = (images + 0.2 * torch.randn_like(images)).clamp(-1, 1)
        background = torch.zeros_like(images)
        assert torch.allclose(per_image_scores(images, images, background)["ssim"], torch.ones(2))
        assert bool((per_image_scores(noisy, images, background)["ssim"] < 0.99).all())
    with pytest.raises(ValueError, match="SSIM needs images of at least 3x3 px, got 2x5"):
        _ssim_sigma(2, 5)


def test_identity_baseline_keeps_colour_and_half_the_shape(test_pairs):
    scores = per_image_scores(test_pairs.A, test_pairs.B, test_pairs.backgrounds)
    assert 0.4 < float(scores["iou"].mean()) < 0.6 and bool((scores["iou"] < 0.7).all())
    assert float(scores["color_error"].max()) < 1.0


def test_recoloured_ground_truth_has_the_shape_but_not_the_colour(test_pairs):
    # Paint each shape mask with its colour's channels rotated: same chroma, so the mask stays.
    recoloured = test_pairs.B.clone()
    masks = foreground_masks(test_pairs.B, test_pairs.backgrounds)
    for k, meta in enumerate(test_pairs.meta):
        rotated = torch.tensor(meta["shape_color"]).roll(1) * 2 - 1
        recoloured[k][:, masks[k]] = rotated[:, None]
    scores = per_image_scores(recoloured, test_pairs.B, test_pairs.backgrounds)
    assert bool((scores["iou"] == 1.0).all())
    assert float(scores["color_error"].min()) > 50.0


def test_all_background_translation_has_no_shape_and_a_finite_colour_error(test_pairs):
    scores = per_image_scores(test_pairs.backgrounds, test_pairs.B, test_pairs.backgrounds)
    assert bool((scores["iou"] == 0.0).all())
    assert bool(torch.isfinite(scores["color_error"]).all()) and float(scores["color_error"].min()) > 50.0


def test_masks_recover_the_rendered_shapes(test_pairs):
    """Pixels far from the known background: every pixel the shape covers at least half of, and
    none it does not touch (edge pixels in between count by their colour contrast)."""
    boxes = np.array([meta["box"] for meta in test_pairs.meta])
    for domain, kind in (("A", "disc"), ("B", "triangle")):
        masks = foreground_masks(getattr(test_pairs, domain), test_pairs.backgrounds)
        coverage = torch.from_numpy(shape_coverage(kind, boxes, masks.shape[-1]))
        assert bool(masks[coverage >= 0.5].all()) and not bool(masks[coverage == 0].any())


def test_scorer_accumulates_batches_like_one_call(test_pairs):
    scorer = ShapesTruthScorer()
    for start in (0, 5, 11):
        end = {0: 5, 5: 11, 11: N_PAIRS}[start]
        scorer.update(test_pairs.A[start:end], test_pairs.B[start:end], test_pairs.backgrounds[start:end])
    accumulated = {k: float(v) for k, v in scorer.compute().items()}
    assert accumulated == pytest.approx(score_translations(test_pairs.A, test_pairs.B, test_pairs.backgrounds),
                                        rel=1e-5)


# -- the callback ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,directions", [("cyclegan", ("AtoB", "BtoA")), ("pix2pix", ("AtoB",))])
def test_callback_metrics_come_back_from_training(smoke_runs, name, directions):
    metrics = smoke_runs[name].metrics
    truth = {k for k in metrics if k.startswith("truth/")}
    expected = {f"truth/{d}/{prefix}{score}" for d in directions for prefix in ("", "identity_")
                for score in ("iou", "color_error", "l1", "psnr", "ssim")} | {"truth/iou"}
    assert truth == expected
    assert metrics["truth/iou"] == pytest.approx(sum(metrics[f"truth/{d}/iou"] for d in directions) / len(directions))
    assert all(math.isfinite(metrics[k]) for k in truth)
    assert 0.4 < metrics["truth/AtoB/identity_iou"] < 0.6


def small_shapes_datamodule(data_dir, **kwargs) -> ShapesDataModule:
    """The datamodule of the smoke runs' dataset (same generation parameters: no regeneration)."""
    return ShapesDataModule(data_dir=data_dir, size=32, n_train=16, n_test=16, seed=0, **kwargs)


class OracleModel:
    """Stands in for a LightningModule: translates a test image into its partner file, read from
    disk by folder (triangles -> discs for "AtoB")."""

    def __init__(self, data_dir: Path, source_folder: str, target_folder: str):
        self.device, self.iteration = torch.device("cpu"), 0
        files = sorted(load_test_meta(data_dir))
        self.partner = {to_tensor(load_image(data_dir / source_folder / f, 3)).numpy().tobytes():
                        to_tensor(load_image(data_dir / target_folder / f, 3)) for f in files}

    def generator_for(self, direction):
        if direction != "AtoB":
            raise ValueError("AtoB only")

    def translate(self, x, direction):
        return torch.stack([self.partner.get(image.numpy().tobytes(), image) for image in x])



def test_callback_follows_the_datamodule_direction(smoke_runs, caplog):
    """With data.direction=BtoA the model's AtoB reads triangles (folder B) and is scored against
    discs (folder A): an oracle for exactly that mapping scores perfectly."""
    data_dir = Path(smoke_runs["cyclegan"].cfg.data.data_dir)
    datamodule = small_shapes_datamodule(data_dir, direction="BtoA")
    trainer = SimpleNamespace(datamodule=datamodule, global_rank=0, world_size=1)
    oracle = OracleModel(data_dir, source_folder="testB", target_folder="testA")
    callback = ShapesTruthCallback(every_n_iters=1, max_pairs=6)
    with caplog.at_level(logging.INFO):
        callback.setup(trainer, oracle, "fit")
    assert callback.enabled and callback.directions == ["AtoB"] and "not scoring BtoA" in caplog.text
    assert not warnings_in(caplog)   # a one-way model is no fault of the settings
    scores = callback.scores(trainer, oracle)
    assert scores["truth/AtoB/iou"] == 1.0 and scores["truth/AtoB/color_error"] == 0.0
    assert scores["truth/iou"] == 1.0   # the mean over the directions scored: AtoB alone here
    assert 0.4 < scores["truth/AtoB/identity_iou"] < 0.6


def test_a_second_fit_with_the_same_callback_decides_everything_again(smoke_runs):
    """A notebook fits again with the callbacks it has: grayscale data or a one-way model in an
    earlier fit must not leave the callback off or a direction out of the next one."""
    data_dir = Path(smoke_runs["cyclegan"].cfg.data.data_dir)

    def trainer(**settings):
        return SimpleNamespace(datamodule=small_shapes_datamodule(data_dir, **settings), global_rank=0, world_size=1)

    callback = ShapesTruthCallback(every_n_iters=1, max_pairs=4)
    callback.setup(trainer(input_nc=1), CountingIdentity(), "fit")
    assert not callback.enabled
    oracle = OracleModel(data_dir, source_folder="testB", target_folder="testA")
    callback.setup(trainer(direction="BtoA"), oracle, "fit")
    assert callback.enabled and callback.directions == ["AtoB"]
    callback.scores(trainer(direction="BtoA"), oracle)
    fresh = ShapesTruthCallback(every_n_iters=1, max_pairs=4)
    for each in (callback, fresh):
        each.setup(trainer(), CountingIdentity(), "fit")
    scores = callback.scores(trainer(), CountingIdentity())
    assert "truth/BtoA/iou" in scores and scores == fresh.scores(trainer(), CountingIdentity())


class CountingIdentity:
    """Stands in for a LightningModule that returns its input, counting the images it sees."""

    def __init__(self):
        self.device, self.iteration, self.translated = torch.device("cpu"), 0, 0

    def generator_for(self, direction):
        return None

    def translate(self, x, direction):
        self.translated += x.size(0)
        return x



def score_shard(data_dir: str, rank: int, world_size: int) -> tuple[dict, int]:
    datamodule = small_shapes_datamodule(data_dir, eval_batch_size=2)
    trainer = SimpleNamespace(datamodule=datamodule, global_rank=rank, world_size=world_size)
    model, callback = CountingIdentity(), ShapesTruthCallback(max_pairs=5)
    callback.setup(trainer, model, "fit")
    return callback.scores(trainer, model), model.translated


def test_callback_scores_shards_and_sums_them_across_ddp_ranks(smoke_runs, tmp_path):
    """Two gloo processes: each translates its own pairs (3 + 2 of 5, per direction) and both
    log the means over all 5, the same as one process scoring them all."""
    data_dir = str(smoke_runs["cyclegan"].cfg.data.data_dir)
    expected, translated = score_shard(data_dir, 0, 1)
    assert translated == 2 * 5
    results = results_of_gloo_ranks(score_shard, (data_dir,), 2, tmp_path)
    assert [count for _, count in results] == [2 * 3, 2 * 2]
    for metrics, _ in results:
        assert metrics.keys() == expected.keys()
        assert all(metrics[k] == pytest.approx(v, rel=1e-5) for k, v in expected.items() if math.isfinite(v))


def warnings_in(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def test_callback_is_off_without_a_warning_where_it_does_not_apply(tmp_path, caplog):
    """Other data, or a model that translates nothing: a debug line, nothing at INFO or above
    (the default callbacks meet these on nearly every run)."""
    callback = ShapesTruthCallback()
    with caplog.at_level(logging.DEBUG):
        callback.setup(SimpleNamespace(datamodule=SimpleNamespace(data_dir=tmp_path)), None, "fit")
    assert not callback.enabled and "test_meta.json" in caplog.text
    assert [r.levelno for r in caplog.records if "ShapesTruthCallback" in r.getMessage()] == [logging.DEBUG]


@pytest.mark.parametrize("settings, reason", [
    ({"input_nc": 1}, "the shapes masks need RGB images (data.input_nc = data.output_nc = 3)"),
    ({"preprocess": "crop", "crop_size": 24}, "the test images are preprocessed to (24, 24), not the generated 32x32 "
                                              "the backgrounds are drawn at (data.preprocess=none scores them)"),
])
def test_callback_warns_where_the_settings_keep_it_from_the_shapes_data(smoke_runs, caplog, settings, reason):
    data_dir = Path(smoke_runs["cyclegan"].cfg.data.data_dir)
    trainer = SimpleNamespace(datamodule=small_shapes_datamodule(data_dir, **settings), global_rank=0, world_size=1)
    callback = ShapesTruthCallback()
    with caplog.at_level(logging.INFO):
        callback.setup(trainer, CountingIdentity(), "fit")
    assert not callback.enabled and warnings_in(caplog) == [f"ShapesTruthCallback disabled: {reason}."]


# -- loading checkpoints ------------------------------------------------------------------------


def copy_checkpoint(source: Path, target: Path, **changes) -> Path:
    """`source` saved at `target` with `changes` to its top-level entries (None: removed)."""
    checkpoint = torch.load(source, weights_only=True)
    for key, value in changes.items():
        if value is None:
            del checkpoint[key]
        else:
            checkpoint[key] = value
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, target)
    return target


@pytest.mark.parametrize("name,cls", [("cyclegan", "CycleGAN"), ("pix2pix", "Pix2Pix"), ("nicegan", "NICEGAN")])
def test_load_model_builds_the_class_the_checkpoint_records(smoke_runs, name, cls, tmp_path, monkeypatch):
    from src.utils import checkpoint_loading
    assert not (smoke_runs[name].ckpt.parents[1] / ".hydra").exists()
    recorded = torch.load(smoke_runs[name].ckpt, weights_only=True)["model_class"]
    assert recorded.endswith(f".{cls}")
    built = []
    build = checkpoint_loading._build
    monkeypatch.setattr(checkpoint_loading, "_build", lambda c, h, s: built.append(c.__name__) or build(c, h, s))
    rng = torch.get_rng_state()
    model = load_model(smoke_runs[name].ckpt)
    assert type(model).__name__ == cls and not model.training and built == [cls]   # no class tried in vain
    assert torch.equal(rng, torch.get_rng_state())  # building the model drew no numbers of ours
    saved = torch.load(smoke_runs[name].ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    # A checkpoint from before the record: the class is found from its weights.
    legacy = copy_checkpoint(smoke_runs[name].ckpt, tmp_path / "legacy.ckpt", model_class=None)
    assert type(load_model(legacy)).__name__ == cls and len(built) > 1


def test_pix2pix_translations_are_the_same_whatever_else_is_translated_with_them(smoke_runs, tmp_path):
    """Its test-time dropout drew from one stream, image after image: an output depended on the
    folder's order, the size groups and the outputs skip_existing kept."""
    from src.utils.translation import translate_images
    model = load_model(smoke_runs["pix2pix"].ckpt)
    side = smoke_runs["pix2pix"].cfg.data.size
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a", "b", "c"):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(paths[-1])
    together = dict(translate_images(model, paths, "AtoB", seed=0))
    alone = dict(translate_images(model, paths[2:], "AtoB", seed=0))
    assert np.array_equal(together[paths[2]], alone[paths[2]])
    assert not np.array_equal(dict(translate_images(model, paths[2:], "AtoB", seed=1))[paths[2]], alone[paths[2]])


def test_translate_refuses_a_size_the_unet_cannot_take_before_running_it(smoke_runs):
    """pix2pix's U-Net stopped inside its skip connections, "Sizes of tensors must match"."""
    model = load_model(smoke_runs["pix2pix"].ckpt)
    side = smoke_runs["pix2pix"].cfg.data.size
    with pytest.raises(ValueError, match=rf"translate: Pix2Pix cannot translate {side + 4}x{side + 4} px images: the "
                                         rf"AtoB translation fails: .* The nearest square sizes it translates: "
                                         rf"{side}x{side}"):
        model.translate(torch.zeros(1, 3, side + 4, side + 4), "AtoB")
    assert model.translate(torch.zeros(1, 3, side, side), "AtoB").shape == (1, 3, side, side)


def test_lightnings_load_from_checkpoint_leaves_the_callers_random_streams_alone(smoke_runs):
    """The resume hook it calls set a notebook's torch, numpy and python streams to the
    training run's saved ones."""
    import random

    import numpy as np
    from src.models.cyclegan import CycleGAN

    saved = torch.load(smoke_runs["cyclegan"].ckpt, weights_only=True)["rng_states"]
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    states = np.random.get_state()[1].copy(), random.getstate()
    model = CycleGAN.load_from_checkpoint(smoke_runs["cyclegan"].ckpt, map_location="cpu", weights_only=True)
    assert isinstance(model, CycleGAN)
    assert np.array_equal(np.random.get_state()[1], states[0]) and random.getstate() == states[1]
    assert not torch.equal(torch.get_rng_state(), saved["torch"])   # (building the model draws from it)


def test_load_model_reads_the_checkpoint_onto_the_cpu_and_moves_only_the_model(smoke_runs, monkeypatch):
    """The file holds the optimizers' moments and the EMA copies beside the model: read onto a
    GPU they could take more memory than the model needs there."""
    from src.utils import checkpoint_loading
    read_onto, moved_to = [], []
    original_load, original_to = torch.load, torch.nn.Module.to
    monkeypatch.setattr(checkpoint_loading.torch, "load",
                        lambda *a, **kw: read_onto.append(kw.get("map_location")) or original_load(*a, **kw))
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **kw: moved_to.append(a) or original_to(self, *a, **kw))
    load_model(smoke_runs["cyclegan"].ckpt, map_location="meta")
    assert read_onto == ["cpu"] and ("meta",) in moved_to


def test_a_model_loaded_for_another_device_than_the_cpu_gets_torchs_layers(smoke_runs, monkeypatch, caplog):
    """fast_conv's rewrites are CPU convolutions, which on a GPU defer to torch's: a model loaded
    for one builds none (nor compiles their kernels, or warns where it cannot)."""
    from src.nets import fast_conv
    from src.nets.winograd_build import WinogradUnavailable

    assert any(load_model(smoke_runs["cyclegan"].ckpt).fast_conv_layers.values())

    def no_compiler():
        raise WinogradUnavailable("no C compiler found")

    monkeypatch.setattr(fast_conv, "kernels", no_compiler)
    monkeypatch.setattr(fast_conv, "AUTO_WINOGRAD_MIN_CHANNELS", 1)   # the smoke nets' layers are eligible
    with caplog.at_level(logging.WARNING):
        load_model(smoke_runs["cyclegan"].ckpt)
    assert "the Winograd kernels are unavailable" in caplog.text   # on the CPU, it tries them
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        elsewhere = load_model(smoke_runs["cyclegan"].ckpt, map_location="meta")
    assert not any(elsewhere.fast_conv_layers.values()) and "fast_conv" not in caplog.text


def test_load_model_refuses_a_recorded_class_that_is_not_the_checkpoints(smoke_runs, tmp_path):
    source = smoke_runs["cyclegan"].ckpt
    with pytest.raises(ValueError, match=r"model class os.system is not a model of src.models"):
        load_model(copy_checkpoint(source, tmp_path / "a.ckpt", model_class="os.system"))
    with pytest.raises(ValueError, match=r"it records model class src.models.nicegan.NICEGAN, but its "
                                         r"hyperparameters or weights are not those of that model"):
        load_model(copy_checkpoint(source, tmp_path / "b.ckpt", model_class="src.models.nicegan.NICEGAN"))


@pytest.mark.parametrize("where, refused", [
    ("generator", r"\(generator._target_\): its network class builtins.open is not a network of src.nets"),
    ("nested", r"\(generator.norm._target_\): its network class builtins.open is not a network of src.nets"),
    ("arguments", r"its settings hold generator._args_, which Hydra would build a call from"),
])
def test_load_model_builds_nothing_but_networks_from_a_checkpoints_settings(smoke_runs, tmp_path, where, refused):
    """The settings are plain values, so `weights_only` lets them through: a `_target_` they
    name would be called as the model is built (here, one creating a file). Only network
    classes of src.nets are."""
    source = smoke_runs["cyclegan"].ckpt
    hparams = torch.load(source, weights_only=True)["hyper_parameters"]
    marker = tmp_path / "called"
    call = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    generator = {"generator": call, "nested": {**hparams["generator"], "norm": call},
                 "arguments": {**hparams["generator"], "_args_": [call]}}[where]
    altered = copy_checkpoint(source, tmp_path / "a.ckpt", hyper_parameters={**hparams, "generator": generator})
    with pytest.raises(ValueError, match=refused):
        load_model(altered)
    assert not marker.exists()


def test_load_model_refuses_a_class_reached_through_a_modules_import(smoke_runs, tmp_path):
    """Hydra follows attributes: src.nets.generators.nn.Conv2d names torch's class through the
    module's `import torch.nn as nn`, past a check of the name's start."""
    source = smoke_runs["cyclegan"].ckpt
    hparams = torch.load(source, weights_only=True)["hyper_parameters"]
    imported = {"_target_": "src.nets.generators.nn.Conv2d", "in_channels": 1, "out_channels": 1, "kernel_size": 1}
    altered = copy_checkpoint(source, tmp_path / "a.ckpt", hyper_parameters={**hparams, "generator": imported})
    with pytest.raises(TypeError, match=r"\(generator._target_\): its network class src.nets.generators.nn.Conv2d is "
                                        r"not a network of this codebase"):
        load_model(altered)


def test_load_model_reads_the_run_config(smoke_runs, tmp_path):
    """For a checkpoint that does not record its class."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    ckpt = copy_checkpoint(smoke_runs["cyclegan"].ckpt, run_dir / "checkpoints" / "last.ckpt", model_class=None)
    (run_dir / ".hydra" / "config.yaml").write_text("model:\n  _target_: src.models.nicegan.NICEGAN\n")
    with pytest.raises(ValueError, match=r"names model._target_=src.models.nicegan.NICEGAN, but the checkpoint "
                                         r"is not one of that model \(.*\). Was it moved"):  # used, not guessed
        load_model(ckpt)
    (run_dir / ".hydra" / "config.yaml").write_text("model:\n  _target_: src.models.cyclegan.CycleGAN\n")
    assert type(load_model(ckpt)).__name__ == "CycleGAN"


# -- translating files --------------------------------------------------------------------------


def write_odd_inputs(folder: Path) -> dict[str, tuple[int, int]]:
    """RGBA 37x45, grayscale 30x22, RGB 37x45 images and a photo stored 37x45 that its EXIF
    orientation turns to 45x37; name -> (height, width) as viewed."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 45, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (30, 22), dtype=np.uint8), "L").save(folder / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)).save(folder / "rgb.png")
    turned = Image.Exif()
    turned[ExifTags.Base.Orientation] = 8
    Image.fromarray(rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)).save(folder / "portrait.jpg", exif=turned)
    return {"rgba": (37, 45), "gray": (30, 22), "rgb": (37, 45), "portrait": (45, 37)}


def test_translate_script_writes_input_sized_outputs_and_an_onnx_graph(smoke_runs, tmp_path):
    pytest.importorskip("onnxruntime")
    sizes = write_odd_inputs(tmp_path / "in")
    env = {**os.environ, "PROJECT_ROOT": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "src" / "translate.py"), f"ckpt_path={smoke_runs['cyclegan'].ckpt}",
           f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", "direction=BtoA", "batch_size=2",
           "device=cpu", "export=onnx", "export_size=32", f"paths.log_dir={tmp_path / 'logs'}"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, (height, width) in sizes.items():
        with Image.open(tmp_path / "out" / f"{name}.png") as image:
            assert (image.height, image.width, image.mode) == (height, width, "RGB")
    assert (tmp_path / "out" / "generator_BtoA.onnx").is_file()


def test_translate_reads_deep_grayscale_files_at_the_runs_bit_depth(smoke_runs, tmp_path):
    """A run trained with data.bit_depth=12 (recorded in its checkpoint) gets a 12-bit file in a
    16-bit PNG read as that translates as the same picture in an 8-bit file does; read as 16-bit
    data it is a dark copy with 1/16 of the grey levels. (Instance norm ignores the brightness,
    not the lost levels.)"""
    levels = ((np.arange(32)[:, None] * 8 + np.arange(32)[None, :] * 5) % 256).astype(np.uint8)
    Image.fromarray(np.rint(levels * (4095 / 255)).astype(np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(levels).save(tmp_path / "eight.png")
    model = load_model(smoke_runs["cyclegan"].ckpt)
    paths = [tmp_path / "deep.png", tmp_path / "eight.png"]
    as_16_bit = dict(translate_images(model, paths, "AtoB"))
    assert not np.array_equal(as_16_bit[paths[0]], as_16_bit[paths[1]])
    model.training_data["bit_depth"] = 12
    as_12_bit = dict(translate_images(model, paths, "AtoB"))
    assert np.array_equal(as_12_bit[paths[0]], as_12_bit[paths[1]])


def test_translate_reads_colour_profiles_as_the_runs_data_were(smoke_runs, tmp_path):
    """A file whose profile stores sRGB blue as (255, 0, 0) translates as a plain blue file
    does; in a run trained with data.to_srgb=false, as a plain red one."""
    pattern = np.zeros((32, 32, 3), np.uint8)
    pattern[:, :16, 0] = 255   # left half: stored red, which the profile says is blue
    Image.fromarray(pattern).save(tmp_path / "profiled.png", icc_profile=rgb_profile_with_red_and_blue_swapped())
    Image.fromarray(pattern).save(tmp_path / "red.png")
    Image.fromarray(pattern[..., ::-1].copy()).save(tmp_path / "blue.png")
    model = load_model(smoke_runs["cyclegan"].ckpt)
    paths = [tmp_path / "profiled.png", tmp_path / "red.png", tmp_path / "blue.png"]
    converted = dict(translate_images(model, paths, "AtoB"))
    assert np.array_equal(converted[paths[0]], converted[paths[2]])
    assert not np.array_equal(converted[paths[0]], converted[paths[1]])
    model.training_data["to_srgb"] = False
    as_stored = dict(translate_images(model, paths, "AtoB"))
    assert np.array_equal(as_stored[paths[0]], as_stored[paths[1]])


def test_translate_resizes_with_the_runs_kernel(smoke_runs, tmp_path):
    """short_side resizes inputs as the run's data were (data.resize_interpolation); a run that
    predates the key resizes bicubic, the default."""
    write_odd_inputs(tmp_path)
    model = load_model(smoke_runs["cyclegan"].ckpt)
    paths = sorted(tmp_path.glob("*.*"))
    outputs = {}
    for kernel in ("bicubic", "bilinear", None):
        model.training_data.pop("resize_interpolation", None)
        if kernel:
            model.training_data["resize_interpolation"] = kernel
        outputs[kernel] = dict(translate_images(model, paths, "AtoB", short_side=16))
    for path in paths:
        assert np.array_equal(outputs[None][path], outputs["bicubic"][path])
        assert not np.array_equal(outputs["bilinear"][path], outputs["bicubic"][path])


def test_batched_translation_matches_one_at_a_time(smoke_runs, tmp_path):
    sizes = write_odd_inputs(tmp_path)
    model = load_model(smoke_runs["cyclegan"].ckpt)
    paths = sorted(tmp_path.glob("*.*"))
    batched = dict(translate_images(model, paths, "AtoB", batch_size=8))
    single = dict(translate_images(model, paths, "AtoB", batch_size=1))
    for path in paths:
        assert batched[path].shape == (*sizes[path.stem], 3)
        assert np.abs(batched[path].astype(int) - single[path].astype(int)).max() <= 1


def test_a_translation_holding_nan_is_refused_naming_the_file_not_written_black(smoke_runs, tmp_path, monkeypatch):
    write_odd_inputs(tmp_path)
    model = load_model(smoke_runs["cyclegan"].ckpt)
    paths = sorted(tmp_path.glob("*.*"))
    monkeypatch.setattr(model, "translate", lambda x, direction: torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="NaN or infinite") as error:
        dict(translate_images(model, paths, "AtoB", batch_size=1))
    assert any(f"translation of {path} holds" in str(error.value) for path in paths)


def test_translate_keeps_the_input_folders_subfolders(smoke_runs, tmp_path):
    for clip in ("clip1", "clip2"):   # the same file name in both
        (tmp_path / "in" / clip).mkdir(parents=True)
        Image.fromarray(np.full((32, 40, 3), 90, np.uint8)).save(tmp_path / "in" / clip / "0001.png")
    written = run_translation(translate_cfg(ckpt_path=str(smoke_runs["cyclegan"].ckpt), input=str(tmp_path / "in"),
                                            output=str(tmp_path / "out")))["written"]
    assert sorted(Path(p).relative_to(tmp_path / "out").as_posix() for p in written) == ["clip1/0001.png",
                                                                                         "clip2/0001.png"]
    assert Image.open(tmp_path / "out" / "clip2" / "0001.png").size == (40, 32)


def test_short_side_scales_each_input_to_the_training_scale_first(smoke_runs, tmp_path):
    sizes = write_odd_inputs(tmp_path / "in")   # (height, width): 37x45, 30x22, 37x45, turned 45x37
    written = run_translation(translate_cfg(ckpt_path=str(smoke_runs["cyclegan"].ckpt), input=str(tmp_path / "in"),
                                            output=str(tmp_path / "out"), short_side=16))["written"]
    shorter_16 = {"rgba": (16, 19), "gray": (22, 16), "rgb": (16, 19), "portrait": (19, 16)}
    assert set(shorter_16) == set(sizes) and len(written) == 4
    for name, (height, width) in shorter_16.items():
        assert Image.open(tmp_path / "out" / f"{name}.png").size == (width, height)
    with pytest.raises(ValueError, match=r"short_side=0 must be a positive integer or null"):
        run_translation(translate_cfg(ckpt_path=str(smoke_runs["cyclegan"].ckpt), input=str(tmp_path / "in"),
                                      output=str(tmp_path / "out0"), short_side=0))


def test_size_squashes_every_input_to_it_as_resize_and_crop_trained_and_eval_scores(smoke_runs, tmp_path,
                                                                                  monkeypatch):
    """A model trained with preprocess=resize_and_crop saw its images squashed into squares (a 2:1
    Cityscapes frame too), and eval.py scores it on crop_size squares; short_side keeps the aspect.
    Every image's size is then known: none is read for it (a PNG's meant decoding it twice)."""
    import src.utils.translation as translation
    write_odd_inputs(tmp_path / "in")
    monkeypatch.setattr(translation, "upright_size", lambda path: pytest.fail(f"{path} decoded for its size"))
    for size, expected in ((16, (16, 16)), ([12, 20], (12, 20))):
        written = run_translation(translate_cfg(ckpt_path=str(smoke_runs["cyclegan"].ckpt), input=str(tmp_path / "in"),
                                                output=str(tmp_path / f"out{size}"), size=size))["written"]
        assert len(written) == 4 and {Image.open(path).size[::-1] for path in written} == {expected}
    for size, message in ((0, r"size=0 must be a positive number of px \(a square\) or \[height, width\]"),
                          ([1, 2, 3], r"size=\[1, 2, 3\] must be"),
                          (16, r"size=16 and short_side=16: set one of them")):
        with pytest.raises(ValueError, match=message):
            run_translation(translate_cfg(ckpt_path=str(smoke_runs["cyclegan"].ckpt), input=str(tmp_path / "in"),
                                          output=str(tmp_path / "refused"), size=size,
                                          short_side=16 if "short_side" in message else None))


def test_short_side_decodes_jpegs_as_the_training_data_did(smoke_runs, tmp_path, monkeypatch):
    """A run trained with data.reduced_jpeg_decode=false saw photos decoded whole; its
    translations at a short side do too (the default reads them at libjpeg's reduced scale)."""
    from src.utils import translation
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.zeros((64, 96, 3), dtype=np.uint8)).save(photo)
    asked, read = [], translation.load_image
    monkeypatch.setattr(translation, "load_image", lambda path, channels, decode_at_least=None, **reading: (
        asked.append(decode_at_least) or read(path, channels, decode_at_least, **reading)))
    model = load_model(smoke_runs["cyclegan"].ckpt)
    for reduced, preprocess in ((True, "resize_and_crop"), (False, "resize_and_crop"), (True, "scale_width")):
        model.training_data.update(reduced_jpeg_decode=reduced, preprocess=preprocess)
        list(translate_images(model, [photo], short_side=16))
    assert asked == [(16, 24), None, None]   # (reduced decoding is resize_and_crop's alone)


def test_pad_to_multiple_crops_back_exactly():
    x = torch.rand(2, 3, 37, 45)
    padded, box = pad_to_multiple(x, 4)
    assert padded.shape[-2:] == (40, 48) and torch.equal(crop_to_box(padded, box), x)
    tiny, box = pad_to_multiple(torch.rand(1, 1, 3, 5), 32)  # too small to reflect: replicated
    assert tiny.shape[-2:] == (32, 32) and crop_to_box(tiny, box).shape[-2:] == (3, 5)
    same, _ = pad_to_multiple(x[..., :36, :44], 4)
    assert same.shape[-2:] == (36, 44)


def test_size_multiples_follow_the_networks(smoke_runs):
    num_downs = smoke_runs["pix2pix"].cfg.model.generator.num_downs
    assert size_multiple(load_model(smoke_runs["pix2pix"].ckpt), "AtoB") == 2 ** num_downs
    assert size_multiple(load_model(smoke_runs["cyclegan"].ckpt), "BtoA") == 4
    assert size_multiple(load_model(smoke_runs["nicegan"].ckpt), "AtoB") == 4  # the source encoder's


def write_noise_image(path: Path) -> None:
    """A 32x32 RGB PNG of seeded noise at `path` (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)


def translate_cfg(**values):
    return OmegaConf.create({"ckpt_path": None, "input": None, "output": None, "direction": "AtoB",
                             "batch_size": 8, "device": "cpu", "export": None, "export_size": 32, "short_side": None,
                             "seed": 0, **values})


def test_pix2pix_translations_from_python_are_translate_pys_under_its_seed(smoke_runs, tmp_path):
    """README "From Python": pix2pix's test-time dropout draws on torch's RNG; with translate.py's
    seed, the notebook's translations are the command line's, and its own random state is left
    as it was."""
    from src.utils.translation import translate_images
    write_odd_inputs(tmp_path / "in")
    ckpt = str(smoke_runs["pix2pix"].ckpt)
    run_translation(translate_cfg(ckpt_path=ckpt, input=str(tmp_path / "in"), output=str(tmp_path / "out")))
    model = load_model(ckpt)
    state = torch.get_rng_state()
    translated = list(translate_images(model, sorted((tmp_path / "in").iterdir()), "AtoB", seed=0))
    assert torch.equal(state, torch.get_rng_state())
    assert len(translated) == 4
    for path, image in translated:
        saved = np.asarray(Image.open(tmp_path / "out" / f"{path.stem}.png"))
        assert np.array_equal(saved.reshape(image.shape), image), path.name
    unseeded = list(translate_images(model, sorted((tmp_path / "in").iterdir()), "AtoB"))
    assert any(not np.array_equal(a, b) for (_, a), (_, b) in zip(translated, unseeded))   # dropout draws


def test_translate_errors_name_the_setting(smoke_runs, tmp_path):
    write_odd_inputs(tmp_path / "in")
    with pytest.raises(ValueError, match="ckpt_path is required"):
        run_translation(translate_cfg(input=str(tmp_path / "in"), output=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="ckpt_path="):
        run_translation(translate_cfg(ckpt_path=str(tmp_path / "nope.ckpt"), input=str(tmp_path / "in")))
    with pytest.raises(FileNotFoundError, match="input="):
        run_translation(translate_cfg(ckpt_path=str(smoke_runs["pix2pix"].ckpt), input=str(tmp_path / "nope"),
                                      output=str(tmp_path / "out")))
    with pytest.raises(ValueError, match="direction=BtoA"):
        run_translation(translate_cfg(ckpt_path=str(smoke_runs["pix2pix"].ckpt), input=str(tmp_path / "in"),
                                      output=str(tmp_path / "out"), direction="BtoA"))
    with pytest.raises(ValueError, match=r"device=mps: Apple's MPS is not available here.*use device=cpu"):
        run_translation(translate_cfg(ckpt_path=str(smoke_runs["pix2pix"].ckpt), input=str(tmp_path / "in"),
                                      output=str(tmp_path / "out"), device="mps"))   # (no Mac runs these tests)
    with pytest.raises(ValueError, match=r"device='tpu' is not a device torch knows: use auto, cpu, cuda"):
        run_translation(translate_cfg(ckpt_path=str(smoke_runs["pix2pix"].ckpt), input=str(tmp_path / "in"),
                                      output=str(tmp_path / "out"), device="tpu"))
    # before a folder is translated, not after
    with pytest.raises(ValueError, match=r"export='onnxx' must be one of onnx, torchscript \(or null\)"):
        run_translation(translate_cfg(ckpt_path=str(smoke_runs["pix2pix"].ckpt), input=str(tmp_path / "in"),
                                      output=str(tmp_path / "out"), export="onnxx"))
    assert not (tmp_path / "out").exists()
    written = run_translation(translate_cfg(ckpt_path=str(smoke_runs["pix2pix"].ckpt), input=str(tmp_path / "in"),
                                            output=str(tmp_path / "out")))["written"]
    assert sorted(Path(p).name for p in written) == ["gray.png", "portrait.png", "rgb.png", "rgba.png"]
    for keyword in ("last", "https://host/run.ckpt"):   # Lightning's resume keywords are no files to load
        with pytest.raises(ValueError, match=f"ckpt_path={keyword}: name a checkpoint file here"):
            run_translation(translate_cfg(ckpt_path=keyword, input=str(tmp_path / "in"), output=str(tmp_path / "o")))


def test_translate_refuses_to_overwrite_its_inputs(smoke_runs, tmp_path):
    """PNG inputs translated into their own folder would be replaced by their translations;
    an output folder inside the input folder would be read as input by a later run."""
    write_odd_inputs(tmp_path / "in")
    before = {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()}
    with pytest.raises(ValueError, match=r"rgb.png would be overwritten by its own output: choose an output folder"):
        run_translation(translate_cfg(ckpt_path=str(smoke_runs["cyclegan"].ckpt), input=str(tmp_path / "in"),
                                      output=str(tmp_path / "in")))
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before
    with pytest.raises(ValueError, match=r"output=.*/in/out lies inside input=.*/in: a later run"):
        run_translation(translate_cfg(ckpt_path=str(smoke_runs["cyclegan"].ckpt), input=str(tmp_path / "in"),
                                      output=str(tmp_path / "in" / "out")))
    assert not (tmp_path / "in" / "out").exists()
    # An output that is the input under another name (a hard link here; `X.png` is `X.PNG` on a
    # Mac's disk): the same file, whatever the paths say
    (tmp_path / "out").mkdir()
    os.link(tmp_path / "in" / "rgb.png", tmp_path / "out" / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb.png would be overwritten by its own output"):
        run_translation(translate_cfg(ckpt_path=str(smoke_runs["cyclegan"].ckpt), input=str(tmp_path / "in" / "rgb.png"),
                                      output=str(tmp_path / "out"), overwrite=True))
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before
    # Another input's output: the input folder inside the output (output=. for input=in), whose
    # subfolder in/in/ maps onto in/ itself
    (tmp_path / "in" / "in").mkdir()
    (tmp_path / "in" / "in" / "rgb.png").write_bytes(before["rgb.png"][::-1])   # not an image: never read
    with pytest.raises(ValueError, match=r"/in/rgb.png would be overwritten by the output of \S+/in/in/rgb.png"):
        run_translation(translate_cfg(ckpt_path=str(smoke_runs["cyclegan"].ckpt), input=str(tmp_path / "in"),
                                      output=str(tmp_path), overwrite=True))
    assert (tmp_path / "in" / "rgb.png").read_bytes() == before["rgb.png"]


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                                                "can't allocate memory: you tried to allocate 9663676416 bytes."),
                                   RuntimeError("MPS backend out of memory (MPS allocated: 17.80 GB, other "
                                                "allocations: 1.02 GB, max allowed: 18.13 GB)."),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                                                "not enough memory: you tried to allocate 9663676416 bytes.")])
def test_a_batch_too_large_for_the_device_names_the_images_and_the_settings_that_fit(smoke_runs, tmp_path, error):
    """A phone's photos at full size through a generator run out of GPU (or host) memory: the
    error names the images and their size, and short_side / batch_size, not only torch's words."""
    write_odd_inputs(tmp_path / "in")
    model = load_model(smoke_runs["cyclegan"].ckpt)

    def exhausted(images, direction):
        raise error
    model.translate = exhausted
    paths = sorted((tmp_path / "in").iterdir())
    with pytest.raises(MemoryError, match=r"translating \d image\(s\) of \d+x\d+ px \(.*\) ran out of memory: "
                                          r"translate at the scale .* with short_side=N .*, or pass batch_size=1"):
        list(translate_images(model, paths, "AtoB", batch_size=2))
    with pytest.raises(MemoryError, match=r"lower short_side=16, or pass batch_size=1"):
        list(translate_images(model, paths, "AtoB", batch_size=2, short_side=16))


def test_translate_refuses_existing_outputs_unless_told_to_replace_them(smoke_runs, tmp_path):
    """A second run into the same folder would replace the first's outputs, or mix with them,
    without a word: refused before anything is written; overwrite=true replaces them, a link
    among them as a file of its own, not the file it points to."""
    write_odd_inputs(tmp_path / "in")
    ckpt = str(smoke_runs["cyclegan"].ckpt)
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere.png").write_bytes(b"kept")
    (tmp_path / "out" / "gray.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(FileExistsError, match=r"1 output file\(s\) exist already, e.g. .*gray.png: choose another "
                                              r"output folder or pass overwrite=true .* skip_existing=true to "
                                              r"translate only the inputs without one \(where the folder's "
                                              r"translation.json is of this checkpoint and settings\)"):
        run_translation(translate_cfg(ckpt_path=ckpt, input=str(tmp_path / "in"), output=str(tmp_path / "out")))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gray.png"]
    written = run_translation(translate_cfg(ckpt_path=ckpt, input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                                            overwrite=True))["written"]
    assert len(written) == 4 and not (tmp_path / "out" / "gray.png").is_symlink()
    assert (tmp_path / "elsewhere.png").read_bytes() == b"kept"


def test_skip_existing_continues_an_interrupted_translation(smoke_runs, tmp_path):
    """skip_existing=true translates only the inputs without an output (what a killed run left to
    do) and leaves the outputs there untouched, an existing export too; beside overwrite=true, which
    contradicts it, it is refused before anything is written."""
    write_odd_inputs(tmp_path / "in")
    ckpt, out = str(smoke_runs["cyclegan"].ckpt), tmp_path / "out"
    settings = dict(ckpt_path=ckpt, input=str(tmp_path / "in"), output=str(out), export="torchscript")
    first = run_translation(translate_cfg(**settings))
    complete = {Path(path).name: np.asarray(Image.open(path), dtype=int) for path in first["written"]}
    (out / "gray.png").unlink()
    (out / "rgb.png").unlink()
    (out / "rgba.png").write_bytes(b"a kept output" + WHOLE_FILE_ENDS[".png"])   # (it ends as a whole PNG does)
    graph = out / "generator_AtoB.pt"
    graph.write_bytes(b"a kept graph")
    with pytest.raises(ValueError, match="overwrite=true replaces .* skip_existing=true keeps them: pass one"):
        run_translation(translate_cfg(**settings, overwrite=True, skip_existing=True))
    with pytest.raises(ValueError, match="skip_existing='yes' must be true or false"):
        run_translation(translate_cfg(**settings, skip_existing="yes"))
    assert not (out / "gray.png").exists()
    second = run_translation(translate_cfg(**settings, skip_existing=True))
    assert sorted(Path(path).name for path in second["written"]) == ["gray.png", "rgb.png"]
    assert sorted(Path(path).name for path in second["skipped"]) == ["portrait.png", "rgba.png"]
    assert second["export"] is None and graph.read_bytes() == b"a kept graph"
    assert (out / "rgba.png").read_bytes() == b"a kept output" + WHOLE_FILE_ENDS[".png"]
    # A graph whose card a kill cut off (written after it) is exported again: the card says its input range
    Path(f"{graph}.json").unlink()
    third = run_translation(translate_cfg(**settings, skip_existing=True))
    assert third["export"] is not None and Path(f"{graph}.json").is_file() and graph.read_bytes() != b"a kept graph"
    for name in ("gray.png", "rgb.png", "portrait.png"):   # as the first run wrote them (batched otherwise)
        assert np.abs(np.asarray(Image.open(out / name), dtype=int) - complete[name]).max() <= 1
    record = json.loads((out / "translation.json").read_text())
    assert record["ckpt_path"] == str(Path(ckpt).resolve()) and record["iteration"] == 4
    # Kept outputs of another translation (here another scale) would sit beside this one's unsaid.
    (out / "gray.png").unlink()
    with pytest.raises(ValueError, match=r"holds the outputs of another translation \(short_side: None there, 16 "
                                         r"here\): choose another output folder, or pass overwrite=true"):
        run_translation(translate_cfg(**settings, skip_existing=True, short_side=16))
    assert not (out / "gray.png").exists()
    # overwrite=true of one input would leave the other two and the graph, then taken for its own
    (tmp_path / "one").mkdir()
    (tmp_path / "in" / "rgb.png").rename(tmp_path / "one" / "rgb.png")
    one = dict(settings, input=str(tmp_path / "one"), export=None, short_side=16)
    with pytest.raises(ValueError, match=r"holds outputs of another translation \(short_side: None there, 16 here\) "
                                         r"that this one would not replace, even with overwrite=true, e.g. .*: choose "
                                         r"another output folder, or remove them"):
        run_translation(translate_cfg(**one, overwrite=True))
    # An input of other names is told so without overwrite too, not to pass it (refused as well)
    (tmp_path / "other").mkdir()
    shutil.copy(tmp_path / "one" / "rgb.png", tmp_path / "other" / "fresh.png")
    with pytest.raises(ValueError, match=r"that this one would not replace, even with overwrite=true"):
        run_translation(translate_cfg(**dict(one, input=str(tmp_path / "other"))))
    for name in ("rgba.png", "portrait.png"):
        (out / name).unlink()
    with pytest.raises(ValueError, match=r"would not replace, even with overwrite=true, e.g. .*generator_AtoB.pt"):
        run_translation(translate_cfg(**one, overwrite=True))
    graph.unlink()
    with pytest.raises(ValueError, match=r"even with overwrite=true, e.g. .*generator_AtoB.pt.json"):   # its card
        run_translation(translate_cfg(**one, overwrite=True))
    Path(f"{graph}.json").unlink()
    assert run_translation(translate_cfg(**one, overwrite=True))["written"] == [str(out / "rgb.png")]
    assert json.loads((out / "translation.json").read_text())["short_side"] == 16


def test_format_jpg_writes_jpegs_that_skip_existing_and_the_record_tell_apart(smoke_runs, tmp_path):
    """format=jpg writes x.jpg (quality 95: close to the PNG), recorded, so PNGs are not added to
    the folder unsaid; skip_existing remakes a cut JPEG; a record from before the format was
    recorded reads as PNG; an unknown format is refused before anything is written."""
    write_odd_inputs(tmp_path / "in")
    settings = dict(ckpt_path=str(smoke_runs["cyclegan"].ckpt), input=str(tmp_path / "in"))
    with pytest.raises(ValueError, match=r"format='gif' must be one of jpg, png \(the translations' file format"):
        run_translation(translate_cfg(**settings, output=str(tmp_path / "jpg"), format="gif"))
    assert not (tmp_path / "jpg").exists()
    png = run_translation(translate_cfg(**settings, output=str(tmp_path / "png")))
    jpg = run_translation(translate_cfg(**settings, output=str(tmp_path / "jpg"), format="jpg"))
    assert sorted(Path(path).name for path in jpg["written"]) == ["gray.jpg", "portrait.jpg", "rgb.jpg", "rgba.jpg"]
    for written_png, written_jpg in zip(sorted(png["written"]), sorted(jpg["written"])):
        with Image.open(written_jpg) as image:
            assert image.format == "JPEG"
        lossless, lossy = np.asarray(Image.open(written_png), dtype=float), np.asarray(Image.open(written_jpg))
        assert lossless.shape == lossy.shape and np.abs(lossless - lossy).mean() < 8, written_jpg
    assert json.loads((tmp_path / "jpg" / "translation.json").read_text())["format"] == "jpg"
    kept = (tmp_path / "jpg" / "rgb.jpg").read_bytes()
    (tmp_path / "jpg" / "gray.jpg").write_bytes((tmp_path / "jpg" / "gray.jpg").read_bytes()[:-10])   # a power cut
    again = run_translation(translate_cfg(**settings, output=str(tmp_path / "jpg"), format="jpg", skip_existing=True))
    assert [Path(path).name for path in again["written"]] == ["gray.jpg"] and len(again["skipped"]) == 3
    assert whole_image_file(tmp_path / "jpg" / "gray.jpg") and (tmp_path / "jpg" / "rgb.jpg").read_bytes() == kept
    for mode in ("skip_existing", "overwrite"):   # PNGs beside JPEGs
        with pytest.raises(ValueError, match=r"holds outputs of another translation \(format: 'jpg' there, 'png' "
                                             r"here\) that this one would not replace, even with overwrite=true, e.g. "
                                             r".*\.jpg"):
            run_translation(translate_cfg(**settings, output=str(tmp_path / "jpg"), **{mode: True}))
    record = tmp_path / "png" / "translation.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if k != "format"}))
    assert run_translation(translate_cfg(**settings, output=str(tmp_path / "png"), skip_existing=True))["written"] == []
    # An export alone writes no images: it joins a JPEG folder, and JPEGs join its folder
    exported = run_translation(translate_cfg(ckpt_path=settings["ckpt_path"], output=str(tmp_path / "jpg"),
                                             export="torchscript"))
    assert exported["export"] is not None
    assert json.loads((tmp_path / "jpg" / "translation.json").read_text())["format"] == "jpg"
    run_translation(translate_cfg(ckpt_path=settings["ckpt_path"], output=str(tmp_path / "graph"),
                                  export="torchscript"))
    assert json.loads((tmp_path / "graph" / "translation.json").read_text())["format"] is None
    run_translation(translate_cfg(**settings, output=str(tmp_path / "graph"), format="jpg"))
    assert json.loads((tmp_path / "graph" / "translation.json").read_text())["format"] == "jpg"
    # skip_existing's look at the other inputs' outputs takes the folder's format: two cameras' IMG_0001
    for trip in ("trip1", "trip2"):
        write_noise_image(tmp_path / trip / "IMG_0001.png")
        if trip == "trip1":
            run_translation(translate_cfg(**dict(settings, input=str(tmp_path / trip)), output=str(tmp_path / "trips"),
                                          format="jpg"))
    with pytest.raises(ValueError, match=r"skip_existing=true would keep .*IMG_0001.jpg for an input of .*trip2"):
        run_translation(translate_cfg(**dict(settings, input=str(tmp_path / "trip2")), output=str(tmp_path / "trips"),
                                      format="jpg", skip_existing=True))
    with pytest.raises(ValueError, match=r"a jpg file is named \*.jpg"):
        save_in_format(np.zeros((4, 4, 3), np.uint8), tmp_path / "x.png", "jpg")


def test_an_input_folder_inside_the_output_folder_is_not_taken_for_outputs(smoke_runs, tmp_path):
    """input=out/photos output=out: another translation's record there, and overwrite=true, named
    the input photos as outputs it would not replace, to be removed."""
    write_odd_inputs(tmp_path / "out" / "photos")
    settings = dict(ckpt_path=str(smoke_runs["cyclegan"].ckpt), input=str(tmp_path / "out" / "photos"),
                    output=str(tmp_path / "out"))
    run_translation(translate_cfg(**settings, format="jpg"))
    again = run_translation(translate_cfg(**settings, format="jpg", short_side=16, overwrite=True))
    assert len(again["written"]) == 4 and len(list((tmp_path / "out" / "photos").iterdir())) == 4


def test_a_second_translation_into_a_busy_output_folder_is_refused(smoke_runs, tmp_path):
    """Two translations started together into one folder each passed the record's check before
    the other wrote it, and mixed two models' images under one record."""
    from src.utils.folder_lock import FolderInUse, FolderLock
    write_odd_inputs(tmp_path / "in")
    out = tmp_path / "out"
    with FolderLock(out, "the first translation's folder", "", name=".translate.lock"):
        with pytest.raises(FolderInUse, match=rf"{out} is in use by process {os.getpid()}.*: a translation's output "
                                              r"folder is written by one process at a time. Give this translation "
                                              r"its own output="):
            run_translation(translate_cfg(ckpt_path=str(smoke_runs["cyclegan"].ckpt), input=str(tmp_path / "in"),
                                          output=str(out)))
    assert [path.name for path in out.iterdir()] == [".translate.lock"]   # nothing of its own


def test_skip_existing_keeps_only_whole_outputs_of_its_own_input(smoke_runs, tmp_path):
    """An output a power loss cut short after its rename (empty, or without PNG's end) is made
    again; and a second folder translated into the same output folder (cameras repeat names:
    trip1/IMG_0001.jpg, trip2/IMG_0001.jpg) is refused, where skip_existing would have kept the
    first folder's translation for the second folder's photo."""
    write_odd_inputs(tmp_path / "in")
    ckpt, out = str(smoke_runs["cyclegan"].ckpt), tmp_path / "out"
    settings = dict(ckpt_path=ckpt, input=str(tmp_path / "in"), output=str(out))
    run_translation(translate_cfg(**settings))
    (out / "gray.png").write_bytes(b"")
    (out / "rgb.png").write_bytes((out / "rgb.png").read_bytes()[:-4])
    again = run_translation(translate_cfg(**settings, skip_existing=True))
    assert sorted(Path(path).name for path in again["written"]) == ["gray.png", "rgb.png"]
    assert all(whole_image_file(out / name) for name in ("gray.png", "rgb.png"))
    assert json.loads((out / "translation.json").read_text())["inputs"] == [str((tmp_path / "in").resolve())]
    shutil.copytree(tmp_path / "in", tmp_path / "trip2")
    with pytest.raises(ValueError, match=r"skip_existing=true would keep .*out/\S+.png and 3 other output\(s\) for an "
                                         r"input of "
                                         r".*trip2, and .*in has an input of that output's name too, translated into "
                                         r".*out: it may be that one's translation"):
        run_translation(translate_cfg(**dict(settings, input=str(tmp_path / "trip2")), skip_existing=True))
    # One of the first input's own files, given alone, keeps its own output
    alone = run_translation(translate_cfg(**dict(settings, input=str(tmp_path / "in" / "rgb.png")), skip_existing=True))
    assert alone["written"] == [] and [Path(p).name for p in alone["skipped"]] == ["rgb.png"]
    # A second input of other names continues where it stopped: none of its outputs can be the first's
    (tmp_path / "trip3").mkdir()
    for name in ("gray.jpg", "rgb.png"):
        shutil.copy(tmp_path / "in" / name, tmp_path / "trip3" / name.replace(".", "_3."))
    trip3 = dict(settings, input=str(tmp_path / "trip3"))
    assert len(run_translation(translate_cfg(**trip3))["written"]) == 2
    (out / "rgb_3.png").unlink()
    again = run_translation(translate_cfg(**trip3, skip_existing=True))
    assert [Path(p).name for p in again["written"]] == ["rgb_3.png"] and len(again["skipped"]) == 1


def test_images_far_past_the_training_scale_are_said_with_the_fix(caplog):
    """A 12 MP photo through a model of 286 px images: its outputs are not what it learnt."""
    from types import SimpleNamespace
    from src.utils.translation import warn_of_sizes_past_the_training_scale
    model = SimpleNamespace(training_data={"preprocess": "resize_and_crop", "load_size": 286, "crop_size": 256})
    with caplog.at_level("WARNING"):
        warn_of_sizes_past_the_training_scale(model, {(500, 600): [Path("a.jpg")]})
        assert not caplog.text
        warn_of_sizes_past_the_training_scale(model, {(3000, 4000): [Path("b.jpg"), Path("c.jpg")],
                                                      (600, 800): [Path("d.jpg")], (500, 600): [Path("a.jpg")]})
    assert ("3 image(s) are translated at their own size, up to 3000x4000 px (b.jpg), more than 2 times the scale "
            "the model trained at (data.load_size=286): its outputs there are not what it learnt. short_side=286 "
            "translates at that scale") in caplog.text
    caplog.clear()
    for preprocess in ("none", "crop", "scale_width_and_crop"):   # images at their own size, or their width's
        model.training_data["preprocess"] = preprocess
        warn_of_sizes_past_the_training_scale(model, {(3000, 4000): [Path("b.jpg")]})
    assert not caplog.text


@pytest.mark.parametrize("where", ["directory", "contents"])
def test_a_checkpoint_read_the_system_refuses_is_not_called_cut_short(smoke_runs, tmp_path, monkeypatch, where):
    """Permissions or an I/O error on a whole checkpoint: the advice to use another checkpoint
    of the run is wrong there, and init_from names its own setting."""
    import shutil

    from src.utils.checkpoint_loading import load_model
    from src.utils.initial_weights import initial_weights_to_load
    from tests.test_auto_resume import refuse_reads_of
    path = tmp_path / "last.ckpt"
    shutil.copy(smoke_runs["cyclegan"].ckpt, path)
    refuse_reads_of(path, monkeypatch, where)
    with pytest.raises(OSError, match=rf"ckpt_path={path}: the system refused the read .*check its permissions"):
        load_model(path)
    if where == "directory":   # checked before any work
        with pytest.raises(OSError, match=rf"init_from={path}: the system refused the read"):
            initial_weights_to_load({"init_from": str(path), "ckpt_path": None})
    with pytest.raises(ValueError, match=r"init_from=auto: name a checkpoint file here .*ckpt_path=auto"):
        initial_weights_to_load({"init_from": "auto", "ckpt_path": None})


def test_a_checkpoint_with_objects_a_weights_only_load_refuses_is_named_as_such(tmp_path):
    from src.utils.checkpoint_loading import load_model
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Path("/a")}}, path)   # a Path: not weights-only
    with pytest.raises(ValueError, match=r"foreign.ckpt is whole but holds objects a weights-only load refuses"):
        load_model(path)


def test_a_constructors_own_error_stays_the_cause_of_the_load_error(smoke_runs, monkeypatch):
    """A TypeError raised inside a model's constructor (a bug there, not in the file) was kept as
    text only: the traceback that locates it was lost."""
    import src.utils.checkpoint_loading as checkpoint_loading
    bug = TypeError("unsupported operand inside a network's __init__")

    def build(*args, **kwargs):
        raise bug
    monkeypatch.setattr(checkpoint_loading, "_build", build)
    with pytest.raises(ValueError, match="unsupported operand inside") as caught:
        checkpoint_loading.load_model(smoke_runs["cyclegan"].ckpt)
    assert caught.value.__cause__ is bug


@pytest.mark.parametrize("override, message", [("batch_size=0", r"batch_size=0 must be a positive integer"),
                                               ("device=tpu", r"device='tpu' is not a device torch knows"),
                                               ("data.num_workers=x", r"data.num_workers='x' must be an integer"),
                                               ("name=[a,b]", r"name=\['a', 'b'\] must be a single name")])
def test_eval_settings_it_cannot_use_are_named(smoke_runs, tmp_path, shared_data_dir, override, message):
    with pytest.raises(ValueError, match=message):
        evaluate(smoke_runs["cyclegan"], tmp_path, shared_data_dir, override)


def test_eval_on_data_of_another_kind_than_the_model_names_both(smoke_runs, tmp_path, shared_data_dir):
    """A translator's checkpoint with data=shapes_labelled failed with a KeyError 'B' at the
    first batch."""
    with pytest.raises(ValueError, match=r"model=CycleGAN \(ckpt_path=.*last.ckpt\) trains on two image domains: "
                                         r".*data._target_=src.data.shapes.ShapesLabelledDataModule is not one"):
        evaluate(smoke_runs["cyclegan"], tmp_path, shared_data_dir, "data=shapes_labelled")


def test_a_size_the_generator_cannot_translate_names_the_file_and_the_sizes_it_can(smoke_runs, tmp_path):
    """A 1x1 image pads to 4x4, where the ResNet generator's instance norm has one pixel left:
    the file, the nearest size that works and the fix come before any output is written."""
    (tmp_path / "in").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "in" / "fine.png")
    Image.new("RGB", (1, 1)).save(tmp_path / "in" / "speck.png")
    ckpt = str(smoke_runs["cyclegan"].ckpt)
    with pytest.raises(ValueError, match=r"speck.png \(1x1 px, padded to 4x4\): CycleGAN cannot translate 4x4 px "
                                         r"images: the AtoB translation fails: .* The nearest square sizes it "
                                         r"translates: 8x8; resize the input"):
        run_translation(translate_cfg(ckpt_path=ckpt, input=str(tmp_path / "in"), output=str(tmp_path / "out")))
    assert not (tmp_path / "out" / "fine.png").exists()
    with pytest.raises(ValueError, match=r"export_size=2: .* 8x8; set export_size to one of them"):
        run_translation(translate_cfg(ckpt_path=ckpt, export="torchscript", export_size=2, output=str(tmp_path / "x")))
    # a model from Python keeps its mode (and device) when its export is refused
    model = load_model(ckpt).train()
    with pytest.raises(ValueError, match="set export_size to one of them"):
        export_translation(model, "AtoB", "torchscript", tmp_path / "x", size=2)
    assert model.G_A.training


# -- export ---------------------------------------------------------------------------------------


def run_exported(path: Path, x: torch.Tensor) -> torch.Tensor:
    if path.suffix == ".pt":
        return torch.jit.load(str(path))(x)
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("name,direction", [("cyclegan", "AtoB"), ("nicegan", "BtoA")])
def test_export_matches_pytorch_at_any_size(smoke_runs, tmp_path, fmt, name, direction):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    model = load_model(smoke_runs[name].ckpt)
    report = export_translation(model, direction, fmt, tmp_path, size=smoke_runs[name].cfg.data.size)
    assert report["dynamic"] and report["checked"] and report["max_difference"] < 1e-3
    path = Path(report["path"])
    assert path.name == f"generator_{direction}{'.pt' if fmt == 'torchscript' else '.onnx'}"
    x = torch.rand(3, 3, 36, 20) * 2 - 1  # another batch size and a non-square size than traced
    assert torch.allclose(run_exported(path, x), model.translate(x, direction), atol=1e-4)
    assert report["matches_translate"]
    # beside it, what the graph takes and gives, which translate.py does outside it
    card = json.loads(Path(f"{path}.json").read_text())
    assert card["input"]["range"] == [-1.0, 1.0] and card["input"]["channels"] == 3 and card["output"]["range"] == [-1, 1]
    assert card["input"]["sides"].startswith(f"any multiple of {size_multiple(model, direction)} px")
    assert card["check"]["dynamic"] and card["iteration"] == model.loaded_iteration and card["direction"] == direction
    assert card["translates"] == f"the dataset's domain {direction[0]} into {direction[-1]}"


def test_an_export_that_fails_its_check_replaces_nothing(smoke_runs, tmp_path, monkeypatch):
    """The graph is checked under a temporary name: one that differs from PyTorch neither stays
    nor replaces the earlier export; translate.py refuses to replace an export unasked."""
    from src.utils import export
    model = load_model(smoke_runs["cyclegan"].ckpt)
    killed = tmp_path / ".generator_AtoB.pt.0123.tmp"   # a killed export's, two hours ago: cleared
    killed.write_bytes(b"partial")
    os.utime(killed, (killed.stat().st_mtime - 7200,) * 2)
    path = Path(export_translation(model, "AtoB", "torchscript", tmp_path, size=16)["path"])
    earlier = path.read_bytes()
    with torch.no_grad():
        next(model.G_A.parameters()).add_(1.0)   # another graph
    monkeypatch.setattr(export, "max_difference", lambda got, expected: 0.5)
    with pytest.raises(RuntimeError, match=r"generator_AtoB.pt: exported torchscript graph differs from PyTorch"):
        export_translation(model, "AtoB", "torchscript", tmp_path, size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, f"{path.name}.json"]
    assert path.read_bytes() == earlier
    with pytest.raises(FileExistsError, match=r"exist already, e.g. \S+generator_AtoB.pt: .* overwrite=true"):
        run_translation(translate_cfg(ckpt_path=str(smoke_runs["cyclegan"].ckpt), export="torchscript",
                                      export_size=16, output=str(tmp_path)))


def test_an_export_the_runtime_could_not_check_says_so_on_its_card(smoke_runs, tmp_path, monkeypatch):
    """Without onnxruntime the graph is written unchecked: its card must not promise any size."""
    from src.utils import export
    monkeypatch.setitem(export._RUNNERS, "torchscript", lambda path: None)   # as _onnx_runner without onnxruntime
    model = load_model(smoke_runs["cyclegan"].ckpt)
    report = export_translation(model, "AtoB", "torchscript", tmp_path, size=16)
    card = json.loads(Path(f"{report['path']}.json").read_text())
    assert report["checked"] is False and card["check"]["checked"] is False
    assert card["input"]["sides"].endswith("; unchecked: onnxruntime was missing")
    assert card["output"]["channels"] == 3


def test_an_export_size_the_model_cannot_take_is_refused_before_the_folder_is_translated(smoke_runs, tmp_path,
                                                                                          monkeypatch):
    """The export ran after every image of the folder was written: its size error came at the
    end (a full-mode U-GAT-IT built for one size, played here by the cycle GAN refusing 48 px)."""
    from src.models import size_check
    write_odd_inputs(tmp_path / "in")
    cfg = translate_cfg(ckpt_path=str(smoke_runs["cyclegan"].ckpt), input=str(tmp_path / "in"),
                        output=str(tmp_path / "out"), export="torchscript", export_size=48)
    original = size_check.translation_failure
    monkeypatch.setattr(size_check, "translation_failure", lambda model, direction, n, h, w: (
        "built for 32 px only" if (h, w) == (48, 48) else original(model, direction, n, h, w)))
    with pytest.raises(ValueError, match=r"export_size=48: CycleGAN cannot translate 48x48 px images: built for 32 px"):
        run_translation(cfg)
    assert not list((tmp_path / "out").glob("*.png"))
    with pytest.raises(ValueError, match=r"export_size=0 must be a positive integer \(px: the side of the example"):
        run_translation(translate_cfg(ckpt_path=str(smoke_runs["cyclegan"].ckpt), output=str(tmp_path / "o2"),
                                      export="torchscript", export_size=0))


def test_pix2pix_export_normalises_each_image_by_its_own_statistics_and_says_it_has_no_dropout(smoke_runs,
                                                                                                tmp_path, caplog):
    """pix2pix samples with test-time batch statistics (one image at a time) and dropout. The graph
    was its eval-mode network (running statistics); now each image is normalised by its own
    statistics, as translate.py does, and only the random dropout differs: the report, the card
    and a warning say so."""
    from src.models.base import sampling_mode
    model = load_model(smoke_runs["pix2pix"].ckpt)
    model.training_data["direction"] = "BtoA"   # facades' and cityscapes' labels -> photo
    with caplog.at_level("WARNING"):
        report = export_translation(model, "AtoB", "torchscript", tmp_path, size=smoke_runs["pix2pix"].cfg.data.size)
    assert report["matches_translate"] is False
    assert "Pix2Pix samples with test-time dropout (model.test_time_dropout=true)" in caplog.text
    assert "batch_stats" not in caplog.text
    card = json.loads(Path(f"{report['path']}.json").read_text())
    assert card["differs_from_translate_by"] == ["test-time dropout"]
    size = smoke_runs["pix2pix"].cfg.data.size
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    if importlib.util.find_spec("onnxruntime"):
        onnx_report = export_translation(model, "AtoB", "onnx", tmp_path / "onnx", size=size)   # InstanceNormalization
        assert onnx_report["checked"] and onnx_report["max_difference"] < 1e-3
    with sampling_mode([model.G], batch_stats=True):   # translate.py's normalisation, without its dropout
        reference = torch.cat([model.G(image[None]) for image in x])
    with sampling_mode([model.G]):
        running = model.G(x)
    exported = run_exported(Path(report["path"]), x)
    assert torch.allclose(exported, reference, atol=1e-4) and not torch.allclose(exported, running, atol=1e-3)
    assert card["translates"] == "the dataset's domain B into A"


# -- eval.py ---------------------------------------------------------------------------------


def evaluate(run, tmp_path, shared_data_dir, *overrides):
    data = run.cfg.data
    return run_eval([f"ckpt_path={run.ckpt}", f"data={data.name}", f"data.size={data.size}",
                     f"data.max_dataset_size={data.max_dataset_size}", f"data.n_train={data.n_train}",
                     f"data.n_test={data.n_test}", *overrides], tmp_path, shared_data_dir)


def test_eval_refuses_a_test_domain_too_small_to_score_before_translating(smoke_runs, tmp_path, shared_data_dir):
    """One image in testA: FID/KID need two. eval.py translated and wrote every image, then
    failed with KID's bare error, without metrics.json; now it refuses first, naming the folder."""
    root = tmp_path / "own_data"
    for folder, count in (("testA", 1), ("testB", 3)):
        (root / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(root / folder / f"{i}.png")
    with pytest.raises(ValueError, match=r"eval.py scores AtoB with FID/KID between the translations of the 1 test "
                                         r"image\(s\) of .*own_data/testA and the 3 of .*own_data/testB, which "
                                         r"need at least 2 each"):
        run_eval([f"ckpt_path={smoke_runs['cyclegan'].ckpt}", "data=horse2zebra", f"data.data_dir={root}",
                  "data.load_size=32", "data.crop_size=32", "data.num_workers=0", "data.persistent_workers=false",
                  "feature_extractor=random_cnn"], tmp_path / "eval", shared_data_dir)
    assert not (tmp_path / "eval" / "fakeB").exists()


def test_a_second_evaluation_into_a_busy_output_folder_is_refused(smoke_runs, tmp_path, shared_data_dir):
    """Two evaluations into one output_dir would delete each other's images and keep one's
    scores: the second is refused, naming the first, before it removes anything."""
    from src.utils.folder_lock import FolderInUse, FolderLock
    (tmp_path / "fakeB").mkdir()
    (tmp_path / "fakeB" / "x.png").write_bytes(b"the first evaluation's")
    with FolderLock(tmp_path, "the first evaluation's folder", "", name=".eval.lock"):
        with pytest.raises(FolderInUse, match=rf"{tmp_path} is in use by process {os.getpid()}.*: an evaluation's "
                                              r"output folder is written by one process at a time. Give this "
                                              r"evaluation its own output_dir"):
            evaluate(smoke_runs["cyclegan"], tmp_path, shared_data_dir)
    assert (tmp_path / "fakeB" / "x.png").read_bytes() == b"the first evaluation's"


def test_eval_writes_translations_per_source_file_and_every_metric(smoke_runs, tmp_path, shared_data_dir, capsys):
    results, out = evaluate(smoke_runs["cyclegan"], tmp_path, shared_data_dir)
    assert set(results) == {"AtoB", "BtoA"}
    for direction, fake_dir, source in (("AtoB", "fakeB", "testA"), ("BtoA", "fakeA", "testB")):
        metrics = results[direction]
        for key in ("fid", "kid_x100", "iou", "color_error", "l1", "psnr", "ssim", "identity_iou"):
            assert math.isfinite(metrics[key]), (direction, key)
        assert 0.3 < metrics["identity_iou"] < 0.7 and metrics["identity_color_error"] < 1.0
        written = sorted(p.name for p in (out / fake_dir).glob("*.png"))
        data_dir = Path(smoke_runs["cyclegan"].cfg.data.data_dir)
        expected = sorted(p.stem + ".png" for p in (data_dir / source).glob("*.png"))[:len(written)]
        assert written and written == expected
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"]["AtoB"]["fid"] == results["AtoB"]["fid"]
    assert report["weights"] == "trained"   # a run without an EMA of its generators
    assert report["iteration"] == smoke_runs["cyclegan"].cfg.max_iters   # which state of the run was scored
    assert capsys.readouterr().out.strip().startswith("| CycleGAN / shapes [random_cnn] | AtoB: fid=")


def test_eval_decodes_with_the_datas_workers(smoke_runs, tmp_path, shared_data_dir, monkeypatch):
    loaders = []
    original = torch.utils.data.DataLoader.__init__
    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__",
                        lambda self, *args, **kwargs: loaders.append(kwargs.get("num_workers", 0))
                        or original(self, *args, **kwargs))
    results, _ = evaluate(smoke_runs["cyclegan"], tmp_path, shared_data_dir, "data.num_workers=1")
    assert loaders and set(loaders) == {1}
    assert math.isfinite(results["AtoB"]["fid"])


def test_eval_into_a_used_output_dir_keeps_only_its_own_images(smoke_runs, tmp_path, shared_data_dir, caplog,
                                                               monkeypatch):
    """Evaluated again into the same folder on fewer images: the earlier evaluation's extra
    translations would stay beside the new ones, for a tool scoring the folder to count. One
    stopped halfway leaves no earlier scores beside images they do not describe."""
    _, out = evaluate(smoke_runs["cyclegan"], tmp_path, shared_data_dir)
    before = len(list((out / "fakeB").glob("*.png")))
    with caplog.at_level("INFO"):
        _, again = evaluate(smoke_runs["cyclegan"], tmp_path, shared_data_dir, "data.max_dataset_size=2")
    assert again == out and before > 2 and len(list((out / "fakeB").glob("*.png"))) == 2
    assert f"Removing the {before} images an earlier evaluation left in {out / 'fakeB'}" in caplog.text
    assert (out / "metrics.json").is_file()
    from src.utils import evaluation
    monkeypatch.setattr(evaluation, "evaluate_direction", lambda *args, **kwargs: (_ for _ in ()).throw(
        KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        evaluate(smoke_runs["cyclegan"], tmp_path, shared_data_dir)
    assert not (out / "metrics.json").exists()
    # nor a re-run that cannot load its checkpoint: a sweep's table would show the earlier scores as its own
    (out / "metrics.json").write_text('{"ckpt_path": "the earlier evaluation"}')
    monkeypatch.setattr(evaluation, "load_model", lambda *args, **kwargs: (_ for _ in ()).throw(
        OSError("the checkpoint's disk is gone")))
    with pytest.raises(OSError, match="disk is gone"):
        evaluate(smoke_runs["cyclegan"], tmp_path, shared_data_dir)
    assert not (out / "metrics.json").exists()


def test_eval_scores_no_ground_truth_on_cropped_shapes(smoke_runs, tmp_path, shared_data_dir, caplog):
    """The backgrounds are drawn at the generated size: on center crops they would not line up
    with the shapes (and a redrawn, squeezed one gave wrong IoU and colour errors)."""
    size = smoke_runs["cyclegan"].cfg.data.size
    with caplog.at_level("INFO"):
        results, _ = evaluate(smoke_runs["cyclegan"], tmp_path, shared_data_dir, "data.preprocess=crop",
                              f"data.crop_size={size - 8}")
    assert set(results["AtoB"]) == {"fid", "kid_x100", "kid_std_x100"}
    assert f"No ground-truth scores: the test images are preprocessed to ({size - 8}, {size - 8})" in caplog.text


def test_eval_multirun_tables_the_checkpoints_it_compared(smoke_runs, tmp_path, shared_data_dir):
    """`python src/eval.py -m ckpt_path=a,b`: one row per checkpoint in <sweep dir>/summary.md,
    with its direction-wise scores, and a checkpoint that cannot be read listed as failed."""
    run = smoke_runs["cyclegan"]
    data = run.cfg.data
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "src" / "eval.py"), "-m", f"ckpt_path={run.ckpt},{tmp_path / 'missing.ckpt'}",
           f"data={data.name}", f"data.size={data.size}", f"data.n_train={data.n_train}", f"data.n_test={data.n_test}",
           f"data.max_dataset_size={data.max_dataset_size}", f"paths.data_dir={shared_data_dir}",
           f"paths.log_dir={tmp_path}/logs", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "PROJECT_ROOT": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "no such checkpoint file" in result.stderr   # Hydra reports the failure
    # Lightning's rank-zero lines (imported before Hydra's logging, it kept them on the console)
    assert "][pytorch_lightning.utilities.rank_zero][INFO] - FID over " in (sweep / "0" / "eval.log").read_text()
    report = json.loads((sweep / "0" / "metrics.json").read_text())["metrics"]
    table = (sweep / "summary.md").read_text()
    # the iteration: which state of the run each checkpoint was (last.ckpt moves on while it trains)
    assert (f"| 0 | ckpt_path={run.ckpt} | completed | {run.cfg.max_iters} | random_cnn | "
            f"{report['AtoB']['fid']:.4g} | {report['BtoA']['fid']:.4g} |" in table)
    assert f"| 1 | ckpt_path={tmp_path / 'missing.ckpt'} | failed: FileNotFoundError" in table
    assert "| job | overrides | status | iteration | features | AtoB/fid | BtoA/fid | AtoB/kid_x100 |" in table


def test_eval_scores_pix2pix_one_way(smoke_runs, tmp_path, shared_data_dir):
    results, out = evaluate(smoke_runs["pix2pix"], tmp_path, shared_data_dir)
    assert set(results) == {"AtoB"} and not (out / "fakeA").exists()
    # Its test-time dropout draws from eval's seed: the same scores on every call, others with another seed,
    # and the caller's RNG is left as it was (eval seeds its own, not the process's).
    before = torch.get_rng_state()
    again, _ = evaluate(smoke_runs["pix2pix"], tmp_path / "again", shared_data_dir)
    other, _ = evaluate(smoke_runs["pix2pix"], tmp_path / "other", shared_data_dir, "seed=1")
    assert again == results and other["AtoB"]["fid"] != results["AtoB"]["fid"]
    assert torch.equal(torch.get_rng_state(), before)


def test_translate_gives_pix2pix_the_same_translation_on_every_call(smoke_runs, tmp_path):
    """Test-time dropout draws from translate's seed (0 unless set)."""
    write_noise_image(tmp_path / "in" / "x.png")
    outputs = []
    before = torch.get_rng_state()
    for name, seed in (("first", 0), ("again", 0), ("other", 1)):
        run_translation(translate_cfg(ckpt_path=str(smoke_runs["pix2pix"].ckpt), input=str(tmp_path / "in"),
                                      output=str(tmp_path / name), seed=seed))
        outputs.append(np.asarray(Image.open(tmp_path / name / "x.png")))
    assert np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[0], outputs[2])
    assert torch.equal(torch.get_rng_state(), before)   # translate seeds its own RNG, not the process's


def test_eval_of_a_checkpoint_away_from_its_run_takes_the_data_it_records(smoke_runs, tmp_path, shared_data_dir):
    """No run config beside the checkpoint (a copied file, a run with its own paths.output_dir):
    the data is rebuilt from the DataModule class and settings the checkpoint records, and
    `+data.KEY=` still overrides one of them."""
    from src.utils.evaluation import run_evaluation
    alone = tmp_path / "alone.ckpt"
    alone.write_bytes(smoke_runs["cyclegan"].ckpt.read_bytes())
    cfg = compose_train_cfg([f"ckpt_path={alone}", "+data.max_dataset_size=3"], tmp_path / "eval", shared_data_dir,
                            config_name="eval")
    run_evaluation(cfg)
    report = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    assert report["data"] == "shapes" and report["directions"]["AtoB"]["translated"] == 3
    assert report["feature_extractor"] == smoke_runs["cyclegan"].cfg.data.feature_extractor   # the data's choice


@pytest.mark.parametrize("recorded, message", [(None, "pass data=NAME .* older than the record"),
                                               ("os.system", "its data class os.system is not a DataModule")])
def test_eval_without_data_or_a_usable_record_says_what_to_pass(smoke_runs, tmp_path, shared_data_dir, recorded,
                                                                message):
    from src.utils.evaluation import run_evaluation
    checkpoint = torch.load(smoke_runs["cyclegan"].ckpt, map_location="cpu", weights_only=True)
    assert checkpoint["datamodule_class"] == "src.data.shapes.ShapesDataModule"
    checkpoint["datamodule_class"] = recorded
    torch.save(checkpoint, tmp_path / "altered.ckpt")
    cfg = compose_train_cfg([f"ckpt_path={tmp_path / 'altered.ckpt'}"], tmp_path, shared_data_dir,
                            config_name="eval")
    with pytest.raises(ValueError, match=message):
        run_evaluation(cfg)


@pytest.mark.parametrize("from_run_config", [False, True])
def test_eval_builds_nothing_but_the_data_class_from_a_recorded_data_config(smoke_runs, tmp_path, shared_data_dir,
                                                                           from_run_config):
    """The data settings a checkpoint records, or its run's config holds, are built by Hydra:
    a `_target_` nested in them (here, one creating a file) is refused before anything is built."""
    from src.utils.evaluation import run_evaluation
    marker = tmp_path / "called"
    call = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    checkpoint = torch.load(smoke_runs["cyclegan"].ckpt, map_location="cpu", weights_only=True)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    if from_run_config:
        (run_dir / ".hydra").mkdir()
        data = {"_target_": checkpoint["datamodule_class"], **checkpoint["datamodule_hyper_parameters"],
                "max_dataset_size": call}
        (run_dir / ".hydra" / "config.yaml").write_text(json.dumps({"data": data}))   # YAML reads JSON
    else:
        checkpoint["datamodule_hyper_parameters"]["max_dataset_size"] = call
    torch.save(checkpoint, run_dir / "checkpoints" / "last.ckpt")
    cfg = compose_train_cfg([f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"], tmp_path / "eval", shared_data_dir,
                            config_name="eval")
    node = "data" if from_run_config else "datamodule_hyper_parameters"
    with pytest.raises(ValueError, match=rf"\({node}.max_dataset_size._target_\): its data class builtins.open is not "
                                         rf"a DataModule of src.data"):
        run_evaluation(cfg)
    assert not marker.exists()


def test_untranslated_directions_come_with_the_models_reason():
    class OneWay:
        def generator_for(self, direction):
            if direction != "AtoB":
                raise ValueError("translates AtoB only")
    assert untranslated_directions(OneWay()) == {"BtoA": "translates AtoB only"}
    assert untranslated_directions(CountingIdentity()) == {}


def write_folder_dataset(root: Path, test_sizes: dict[str, tuple[int, int]]) -> Path:
    """trainA/B and testA/B of noise PNGs (width, height): test files as given, the rest 32x32."""
    rng = np.random.default_rng(0)
    files = {f"{split}{domain}/{domain}{k}.png": (32, 32) for split in ("train", "test") for domain in "AB"
             for k in range(2)}
    files.update(test_sizes)
    for name, (width, height) in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / name)
    return root


def evaluate_on_folders(run, tmp_path, data_root: Path, *overrides, data: str = "horse2zebra"):
    return run_eval([f"ckpt_path={run.ckpt}", f"data={data}", f"data.data_dir={data_root}",
                     "feature_extractor=random_cnn", "kid_subset_size=2", *overrides], tmp_path / "eval", tmp_path)


def evaluate_label_maps(run, tmp_path, data_root: Path, *overrides):
    """eval.py on the cityscapes config (its label palette) over `data_root`'s 32 px label maps."""
    return evaluate_on_folders(run, tmp_path, data_root, "data.layout=folders", "data.direction=AtoB",
                               "data.load_size=32", "data.crop_size=32", *overrides, data="cityscapes")


def test_eval_scores_label_maps_both_ways_on_the_cityscapes_palette(smoke_runs, tmp_path, capsys):
    """pix2pix AtoB on label maps: into the label domain, its outputs are scored as classes
    against the real maps; out of it, with a segmenter, the FCN-score of its outputs and of the
    real "photos" (here the label maps themselves, so the stand-in net gets them all right)."""
    root = write_label_map_dataset(tmp_path / "labels")
    segmenter = export_segmenter(tmp_path / "nearest.pt2", size=(32, 32))
    results, out = evaluate_label_maps(smoke_runs["pix2pix"], tmp_path / "to_labels", root, "data.label_domain=B")
    scores = results["AtoB"]
    assert {"label_pixel_acc", "label_class_acc", "label_class_iou"} <= set(scores)
    assert all(0 <= scores[k] < 1 for k in ("label_pixel_acc", "label_class_acc", "label_class_iou"))
    assert not any(k.startswith("fcn_") for k in scores)
    assert f"label_pixel_acc={scores['label_pixel_acc']:.3f}" in capsys.readouterr().out

    results, out = evaluate_label_maps(smoke_runs["pix2pix"], tmp_path / "to_photos", root, "data.label_domain=A",
                                       f"segmenter_path={segmenter}")
    scores = results["AtoB"]
    assert [scores[f"real_fcn_{k}"] for k in ("pixel_acc", "class_acc", "class_iou")] == [1.0, 1.0, 1.0]
    assert all(0 <= scores[f"fcn_{k}"] < 1 for k in ("pixel_acc", "class_acc", "class_iou"))
    assert json.loads((out / "metrics.json").read_text())["metrics"]["AtoB"]["fcn_class_iou"] == scores["fcn_class_iou"]


def test_eval_of_a_run_older_than_a_data_setting_says_how_to_turn_it_on(smoke_runs, tmp_path, caplog):
    """A cityscapes run saved before data.label_palette existed: eval takes the run's data as
    saved (no label scores) and says which setting the config has gained and how to pass it."""
    from src.utils.evaluation import run_evaluation
    root = write_label_map_dataset(tmp_path / "labels")
    data = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / "cityscapes.yaml"))
    data.update(data_dir=str(root), layout="folders", direction="AtoB", load_size=32, crop_size=32)
    del data["label_palette"], data["label_domain"]
    run_dir = tmp_path / "run"
    ckpt = copy_into_run_dir(smoke_runs["pix2pix"], run_dir, {"data": data})
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": {"data": "cityscapes"}}}}),
                   run_dir / ".hydra" / "hydra.yaml")

    def evaluate(*overrides):
        cfg = compose_train_cfg([f"ckpt_path={ckpt}", "feature_extractor=random_cnn", "kid_subset_size=2", *overrides],
                                tmp_path / "eval", tmp_path, config_name="eval")
        try:
            return run_evaluation(cfg)
        finally:
            GlobalHydra.instance().clear()

    with caplog.at_level(logging.INFO, logger="src.utils.evaluation"):
        results = evaluate()
    assert not any(k.startswith("label_") for k in results["AtoB"])
    assert "data.label_palette=cityscapes is in the data config now" in caplog.text
    assert "+data.label_palette=cityscapes to use it" in caplog.text and "+data.label_domain=B" in caplog.text
    results = evaluate("+data.label_palette=cityscapes", "+data.label_domain=B")
    assert 0 <= results["AtoB"]["label_pixel_acc"] < 1


def test_a_data_setting_added_since_is_suggested_at_its_value_for_the_run():
    """The shapes configs' `load_size: ${.size}`: pasted as written, the interpolation failed the
    command (eval.py resolves its overrides); it is suggested as the run's size, and one that
    names what the data node lacks is left for the user to fill in."""
    from src.data.download import pasteable_setting
    from src.utils.evaluation import UNRESOLVED, value_among
    data = OmegaConf.create({"size": 48, "crop_size": 48})
    assert pasteable_setting("data.load_size", value_among(data, "load_size", "${.size}")) == "++data.load_size=48"
    assert value_among(data, "flip", True) is True
    assert value_among(data, "data_dir", "${paths.data_dir}/shapes") is UNRESOLVED


def test_the_data_option_a_run_folder_records_is_read_as_a_plain_name_only(tmp_path):
    """The run folder may come from elsewhere: a recorded choice of `../model/cyclegan` read
    another folder's YAML as the data config's (any file, by more `..`)."""
    from src.utils.evaluation import data_keys_added_since
    (tmp_path / ".hydra").mkdir()
    for choice, gained in (("cityscapes", "label_palette"), ("../model/cyclegan", None)):
        OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": {"data": choice}}}}),
                       tmp_path / ".hydra" / "hydra.yaml")
        added = data_keys_added_since(tmp_path / ".hydra" / "config.yaml", OmegaConf.create({"name": "x"}))
        assert (gained in added) if gained else added == {}


def test_eval_of_a_perfect_translator_scores_one_on_the_label_maps(tmp_path):
    """The whole scoring path of both directions on a translator that returns its input, A and
    B being the same label maps: every label-map score is exactly 1."""
    from src.data.paired import PairedDataModule
    from src.metrics.features import build_feature_extractor
    from src.metrics.fid_kid import FidKidScorer
    from src.metrics.segmenter import Segmenter
    from src.utils.evaluation import evaluate_translations
    root = write_label_map_dataset(tmp_path / "labels")
    segmenter = Segmenter(export_segmenter(tmp_path / "nearest.pt2", size=(32, 32)), 19, None, "cpu", "segmenter_path")
    scorer = FidKidScorer(build_feature_extractor("random_cnn", None, "cpu", settings=""), kid_subsets=2,
                          kid_subset_size=2)
    datamodule = PairedDataModule(data_dir=root, name="labels", layout="folders", load_size=32, crop_size=32,
                                  label_palette="cityscapes", label_domain="B")
    datamodule.setup("test")
    dataset = datamodule.dataset("test", train=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=datamodule.collate)
    _, results = evaluate_translations(CountingIdentity(), datamodule, dataset, loader, scorer, tmp_path / "out",
                                       "cpu", segmenter)
    expected = {"AtoB": ("label_pixel_acc", "label_class_acc", "label_class_iou"),
                "BtoA": ("fcn_pixel_acc", "fcn_class_acc", "fcn_class_iou", "real_fcn_pixel_acc",
                         "real_fcn_class_acc", "real_fcn_class_iou")}
    for direction, keys in expected.items():
        assert {k: results[direction].get(k) for k in keys} == dict.fromkeys(keys, 1.0), direction


def test_eval_label_map_settings_name_the_fix(smoke_runs, tmp_path):
    root = write_label_map_dataset(tmp_path / "labels")
    with pytest.raises(ValueError, match=r"segmenter_size=\[32\] must be \[height, width\]"):
        evaluate_label_maps(smoke_runs["pix2pix"], tmp_path, root, "segmenter_size=[32]")
    with pytest.raises(ValueError, match=r"data horse2zebra has none: set their palette and domain "
                                         r"\(\+\+data.label_palette=cityscapes \+\+data.label_domain=B,"):
        evaluate_on_folders(smoke_runs["cyclegan"], tmp_path, write_folder_dataset(tmp_path / "plain", {}),
                            f"segmenter_path={tmp_path / 'any.pt2'}")


def test_eval_translates_test_images_of_mixed_sizes_each_at_its_size(smoke_runs, tmp_path):
    """preprocess=none keeps each image's size: evaluation batches one image at a time instead
    of failing to stack a batch (eval's batch_size is 8)."""
    root = write_folder_dataset(tmp_path / "mixed", {"testA/A0.png": (32, 32), "testA/A1.png": (48, 32),
                                                     "testA/A2.png": (40, 24)})
    results, out = evaluate_on_folders(smoke_runs["cyclegan"], tmp_path, root, "data.preprocess=none")
    sizes = {p.name: Image.open(p).size for p in (out / "fakeB").glob("*.png")}
    assert sizes == {"A0.png": (32, 32), "A1.png": (48, 32), "A2.png": (40, 24)}
    assert math.isfinite(results["AtoB"]["fid"])
    report = json.loads((out / "metrics.json").read_text())
    assert report["directions"]["AtoB"] == {"from": "A", "to": "B", "translated": 3, "real": 2, "output": "fakeB",
                                            "saved": 3, "kid_subset_size": 2}   # 1000 capped at the 2 real images
    assert report["kid_subsets"] == 50


def test_eval_scores_every_translation_and_writes_as_many_as_save_images_says(smoke_runs, tmp_path):
    root = write_folder_dataset(tmp_path / "four", {"testA/A2.png": (32, 32), "testA/A3.png": (32, 32)})
    every, out = evaluate_on_folders(smoke_runs["cyclegan"], tmp_path / "every", root)
    assert len(list((out / "fakeB").glob("*.png"))) == 4
    for save_images, written in (("2", 2), ("false", 0)):
        results, out = evaluate_on_folders(smoke_runs["cyclegan"], tmp_path / save_images, root,
                                           f"save_images={save_images}")
        assert results["AtoB"]["fid"] == pytest.approx(every["AtoB"]["fid"])   # all four scored
        assert len(list((out / "fakeB").glob("*.png"))) == written
        report = json.loads((out / "metrics.json").read_text())
        assert report["directions"]["AtoB"]["saved"] == written and report["directions"]["AtoB"]["translated"] == 4
    with pytest.raises(ValueError, match=r"save_images='some' must be true \(write every translation or sample\), "
                                         r"false \(score without writing any\) or how many"):
        evaluate_on_folders(smoke_runs["cyclegan"], tmp_path / "bad", root, "save_images=some")


def test_eval_refuses_two_test_files_that_would_write_one_output(smoke_runs, tmp_path):
    root = write_folder_dataset(tmp_path / "stems", {})
    Image.open(root / "testA" / "A0.png").save(root / "testA" / "A0.jpg")
    with pytest.raises(ValueError, match=r"testA/A0.jpg and .*testA/A0.png would both be written as .*fakeB/A0.png"):
        evaluate_on_folders(smoke_runs["cyclegan"], tmp_path, root)


def test_eval_records_its_checkpoint_by_absolute_path_and_takes_use_ema_as_a_bool(smoke_runs, tmp_path, monkeypatch):
    """metrics.json outlives the directory eval.py ran in: a relative ckpt_path is recorded
    resolved (as translate.py's record has it). use_ema=no was read as true."""
    root = write_folder_dataset(tmp_path / "data", {})
    ckpt = smoke_runs["cyclegan"].ckpt
    monkeypatch.chdir(ckpt.parent)
    _, out = evaluate_on_folders(SimpleNamespace(ckpt=ckpt.name), tmp_path / "relative", root)
    assert json.loads((out / "metrics.json").read_text())["ckpt_path"] == str(ckpt.resolve())
    with pytest.raises(ValueError, match=r"use_ema='no' must be true or false"):
        evaluate_on_folders(smoke_runs["cyclegan"], tmp_path / "no", root, "use_ema=no")


def test_eval_refuses_two_test_files_whose_outputs_differ_only_in_case(smoke_runs, tmp_path):
    """On a disk that ignores case (macOS, Windows) fakeB/a0.png would overwrite fakeB/A0.png."""
    root = write_folder_dataset(tmp_path / "cases", {})
    Image.open(root / "testA" / "A0.png").save(root / "testA" / "a0.jpg")
    with pytest.raises(ValueError, match=r"testA/A0.png and .*testA/a0.jpg would both be written as .*fakeB/a0.png "
                                         r"\(on a disk that ignores case"):
        evaluate_on_folders(smoke_runs["cyclegan"], tmp_path, root)


def test_eval_names_translations_by_their_path_inside_the_test_folder(smoke_runs, tmp_path):
    """Test images in subfolders (frames of two clips, same file names) are all read and their
    translations keep the subfolders, so neither overwrites the other."""
    root = write_folder_dataset(tmp_path / "clips", {"testA/clip1/0001.png": (32, 32), "testA/clip2/0001.png": (32, 32)})
    results, out = evaluate_on_folders(smoke_runs["cyclegan"], tmp_path, root)
    written = sorted(p.relative_to(out / "fakeB").as_posix() for p in (out / "fakeB").rglob("*.png"))
    assert written == ["A0.png", "A1.png", "clip1/0001.png", "clip2/0001.png"]
    assert json.loads((out / "metrics.json").read_text())["directions"]["AtoB"]["translated"] == 4


def test_eval_reads_the_data_the_way_round_the_model_was_trained(smoke_runs, tmp_path, shared_data_dir):
    """A run trained with data.direction=BtoA translates the dataset's B images with its AtoB
    generator: evaluating it with the other direction is refused, and with its own the outputs
    are named by the dataset domain they imitate."""
    checkpoint = torch.load(smoke_runs["cyclegan"].ckpt, map_location="cpu", weights_only=True)
    checkpoint["datamodule_hyper_parameters"]["direction"] = "BtoA"
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save(checkpoint, ckpt)
    run = SimpleNamespace(ckpt=ckpt, cfg=smoke_runs["cyclegan"].cfg)
    with pytest.raises(ValueError, match=f"data.direction=AtoB, but ckpt_path={ckpt} was trained with "
                                         "data.direction=BtoA: pass \\+\\+data.direction=BtoA"):
        evaluate(run, tmp_path / "wrong", shared_data_dir)
    _, out = evaluate(run, tmp_path / "right", shared_data_dir, "data.direction=BtoA")
    report = json.loads((out / "metrics.json").read_text())
    assert report["data_direction"] == "BtoA"
    assert report["directions"]["AtoB"]["from"] == "B" and report["directions"]["AtoB"]["output"] == "fakeA"
    data_dir = Path(smoke_runs["cyclegan"].cfg.data.data_dir)
    written = sorted(p.name for p in (out / "fakeA").glob("*.png"))   # AtoB's outputs, named by testB files
    assert written and set(written) <= {p.name for p in (data_dir / "testB").glob("*.png")}


def test_pix2pix_trained_b_to_a_is_told_to_translate_with_direction_atob(smoke_runs, tmp_path):
    """Its generator is the model's AtoB whichever way the data was read: translate.py's BtoA was
    told to set data.direction=BtoA, which it was trained with and translate.py has no key for."""
    checkpoint = torch.load(smoke_runs["pix2pix"].ckpt, map_location="cpu", weights_only=True)
    for trained, other in (("AtoB", "BtoA"), ("BtoA", "AtoB")):
        checkpoint["datamodule_hyper_parameters"]["direction"] = trained
        torch.save(checkpoint, tmp_path / f"{trained}.ckpt")
        with pytest.raises(ValueError, match=r"direction=BtoA: Pix2Pix cannot translate this way: pix2pix translates "
                                             r"one way only, direction=AtoB \(its generator's: the dataset's "
                                             rf"{trained[0]} -> {trained[-1]}.*train one with data.direction={other}$"):
            check_direction(load_model(tmp_path / f"{trained}.ckpt"), "BtoA")
    training = load_model(tmp_path / "AtoB.ckpt")
    training.training_data = {}   # a model in training: its data's way round is not its to say
    with pytest.raises(ValueError, match=r"one way only, direction=AtoB; for the other way, train one with the other "
                                         r"data.direction$"):
        training.generator_for("BtoA")


def test_a_cut_short_checkpoint_is_named_with_the_fix(smoke_runs, tmp_path):
    truncated = tmp_path / "last.ckpt"
    truncated.write_bytes(Path(smoke_runs["cyclegan"].ckpt).read_bytes()[:5000])
    with pytest.raises(ValueError, match=f"ckpt_path={truncated} cannot be read as a checkpoint .*cut short"):
        load_model(truncated)


def evaluate_a_copy_of_the_run(run, tmp_path, shared_data_dir, run_config: dict, *overrides: str) -> dict:
    """eval.py without data=NAME on a copy of `run`'s checkpoint in a run folder whose
    .hydra/config.yaml is `run_config`; returns its metrics.json."""
    from src.utils.evaluation import run_evaluation
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(run.ckpt.read_bytes())
    (tmp_path / "run" / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(run_config), tmp_path / "run" / ".hydra" / "config.yaml")
    cfg = compose_train_cfg([f"ckpt_path={ckpt}", *overrides], tmp_path / "eval", shared_data_dir, config_name="eval")
    try:
        run_evaluation(cfg)
    finally:
        GlobalHydra.instance().clear()
    return json.loads((Path(cfg.output_dir) / "metrics.json").read_text())


def test_eval_takes_the_runs_data_with_the_keys_given_on_the_command_line(smoke_runs, tmp_path, shared_data_dir):
    """Without data=NAME the run's data config is used, and `+data.<key>=` overrides a key of
    it (a dataset moved to another folder, another cap on the test images)."""
    data = OmegaConf.to_container(smoke_runs["cyclegan"].cfg.data, resolve=True)
    report = evaluate_a_copy_of_the_run(smoke_runs["cyclegan"], tmp_path, shared_data_dir, {"data": data},
                                        "+data.max_dataset_size=3")
    assert report["data"] == "shapes" and report["directions"]["AtoB"]["translated"] == 3


def test_eval_reads_the_folder_the_run_read_wherever_it_runs_from(smoke_runs, tmp_path, shared_data_dir):
    """The run's data config interpolates its root (`$PROJECT_ROOT` or the working directory),
    which resolves as eval.py runs: started elsewhere, it pointed at a folder that does not exist.
    The folder the checkpoint records is read."""
    data = OmegaConf.to_container(smoke_runs["cyclegan"].cfg.data, resolve=True)
    data["data_dir"] = "${paths.data_dir}/" + Path(data["data_dir"]).name
    run_config = {"paths": {"data_dir": str(tmp_path / "elsewhere" / "data")}, "data": data}
    report = evaluate_a_copy_of_the_run(smoke_runs["cyclegan"], tmp_path, shared_data_dir, run_config,
                                        "+data.max_dataset_size=3")
    assert report["directions"]["AtoB"]["translated"] == 3 and not (tmp_path / "elsewhere").exists()


def test_eval_with_a_data_config_of_other_image_settings_than_the_run_says_so(smoke_runs, tmp_path, shared_data_dir,
                                                                             caplog):
    """data=NAME brings that config's image settings: a run trained at another crop size is then
    scored on images it never saw the like of, and its scores do not compare with the run's."""
    checkpoint = torch.load(smoke_runs["cyclegan"].ckpt, map_location="cpu", weights_only=True)
    checkpoint["datamodule_hyper_parameters"].update(preprocess="crop", crop_size=24)
    # A key the data config lacks (the U-GAT-IT and NICE-GAN configs add it): its fix is a `++`.
    checkpoint["datamodule_hyper_parameters"]["resize_interpolation"] = "bilinear"
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save(checkpoint, ckpt)
    run = SimpleNamespace(ckpt=ckpt, cfg=smoke_runs["cyclegan"].cfg)
    with caplog.at_level("WARNING"):
        evaluate(run, tmp_path / "eval", shared_data_dir)
    assert "The data is read otherwise than the run was trained on" in caplog.text
    fix = "++data.preprocess=crop ++data.crop_size=24 ++data.resize_interpolation=bilinear"
    assert f"pass {fix} to read it as trained" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        evaluate(run, tmp_path / "as_trained", shared_data_dir, *fix.split())   # the fix as given
    assert "The data is read otherwise" not in caplog.text


def test_eval_of_a_grayscale_run_scores_fid_without_the_colour_ground_truth(train_cfg, tmp_path, shared_data_dir):
    cfg = train_cfg("model=cyclegan", "data.input_nc=1", "loss.weights.identity=0", "max_iters=1",
                    "data.max_dataset_size=4", "++callbacks.fid_kid=null", "++callbacks.latent=null",
                    "++callbacks.shapes_truth=null")
    run_training(cfg)
    run = SimpleNamespace(ckpt=Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", cfg=cfg)
    # The data config's own channel counts (RGB) do not fit the run's networks: refused by name.
    with pytest.raises(ValueError, match=r"data.input_nc=3, but ckpt_path=.* was trained with data.input_nc=1: its "
                                         r"networks read and write that many channels. Pass \+\+data.input_nc=1$"):
        evaluate(run, tmp_path / "as_configured", shared_data_dir)
    results, out = evaluate(run, tmp_path / "eval", shared_data_dir, "data.input_nc=1")
    assert set(results["AtoB"]) == {"fid", "kid_x100", "kid_std_x100"} and math.isfinite(results["BtoA"]["fid"])
    assert {Image.open(p).mode for p in (out / "fakeA").glob("*.png")} == {"L"}   # domain A is grayscale here


def copy_into_run_dir(run, run_dir: Path, run_config: dict) -> Path:
    """The smoke run's last checkpoint in `run_dir/checkpoints`, beside a Hydra run config; as
    a checkpoint from before the FID callback recorded its measure, so the config is read."""
    (run_dir / "checkpoints").mkdir(parents=True)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(run.ckpt, weights_only=True)
    for state in checkpoint["callbacks"].values():
        state.pop("measure", None)
    torch.save(checkpoint, ckpt)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(run_config), run_dir / ".hydra" / "config.yaml")
    return ckpt


@pytest.mark.parametrize("fid_kid, data, expected", [
    ({"feature_extractor": "random_cnn", "feature_extractor_weights_path": None}, {"feature_extractor": "inception"},
     ("random_cnn", None)),
    ({"feature_extractor": "auto", "feature_extractor_weights_path": "/w/inception.pth"},
     {"feature_extractor": "inception"}, ("inception", "/w/inception.pth")),
    (None, {"feature_extractor": "random_cnn"}, ("random_cnn", None)),
])
def test_runs_feature_extractor_reads_the_fid_callback_then_the_data(smoke_runs, tmp_path, fid_kid, data, expected):
    from src.utils.evaluation import runs_feature_extractor
    ckpt = copy_into_run_dir(smoke_runs["cyclegan"], tmp_path / "run", {"callbacks": {"fid_kid": fid_kid},
                                                                        "data": data})
    assert runs_feature_extractor(ckpt) == expected
    assert runs_feature_extractor(smoke_runs["cyclegan"].ckpt.parent / "elsewhere" / "x.ckpt") == (None, None)


def test_the_feature_extractor_a_checkpoint_recorded_is_read_before_its_runs_config(smoke_runs, tmp_path):
    """A checkpoint copied away from its run folder (no .hydra beside it) is scored with the
    features its run measured with, which its FID callback recorded, not its data's choice."""
    from src.utils.evaluation import runs_feature_extractor
    alone = tmp_path / "alone.ckpt"
    alone.write_bytes(smoke_runs["cyclegan"].ckpt.read_bytes())
    measured = torch.load(alone, weights_only=True)["callbacks"]
    (state,) = [s for s in measured.values() if "measure" in s]
    assert runs_feature_extractor(alone) == (state["measure"]["feature_extractor"], None) == ("random_cnn", None)


def test_eval_takes_the_runs_weights_file_only_where_it_exists(smoke_runs, tmp_path, monkeypatch):
    from src.utils.evaluation import feature_extractor_choice
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    monkeypatch.setenv("HOME", str(tmp_path))   # a run config's `~` (its file found, opened expanded)
    for index, (run_weights, expected) in enumerate(((weights, str(weights)), ("~/inception.pth", "~/inception.pth"),
                                                     (tmp_path / "elsewhere.pth", None))):
        ckpt = copy_into_run_dir(smoke_runs["cyclegan"], tmp_path / f"run{index}",
                                 {"callbacks": {"fid_kid": {"feature_extractor": "inception",
                                                            "feature_extractor_weights_path": str(run_weights)}}})
        eval_cfg = OmegaConf.create({"ckpt_path": str(ckpt), "feature_extractor": "auto",
                                     "feature_extractor_weights_path": None})
        assert feature_extractor_choice(eval_cfg, datamodule=None) == ("inception", expected)
        eval_cfg.feature_extractor_weights_path = "/given.pth"   # eval's own setting wins
        assert feature_extractor_choice(eval_cfg, datamodule=None) == ("inception", "/given.pth")


def test_eval_scores_with_the_feature_extractor_the_run_trained_with(smoke_runs, tmp_path):
    """A run on real-image folders scored its FIDs with random_cnn: `feature_extractor=auto`
    scores its checkpoint with random_cnn too, not with the folders' Inception (which would also
    need a download here), and says so in metrics.json."""
    from src.utils.evaluation import run_evaluation
    root = write_folder_dataset(tmp_path / "folders", {})
    ckpt = copy_into_run_dir(smoke_runs["cyclegan"], tmp_path / "run",
                             {"callbacks": {"fid_kid": {"feature_extractor": "random_cnn"}},
                              "data": {"feature_extractor": "inception"}})
    cfg = compose_train_cfg([f"ckpt_path={ckpt}", "data=horse2zebra", f"data.data_dir={root}", "kid_subset_size=2"],
                            tmp_path / "eval", tmp_path, config_name="eval")
    try:
        assert cfg.feature_extractor == "auto"
        results = run_evaluation(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert json.loads((Path(cfg.output_dir) / "metrics.json").read_text())["feature_extractor"] == "random_cnn"
    assert math.isfinite(results["AtoB"]["fid"])


@pytest.mark.parametrize("text", ["{", "[1, 2]"])
def test_an_unreadable_translation_record_is_replaced_with_overwrite_where_every_output_is(tmp_path, text):
    """A folder's translation.json that is no record (cut by an editor, a list) was refused with
    "pass overwrite=true", and refused again with it, as the record was read first."""
    from src.translate import RECORD_NAME, keep_one_translation_per_folder, other_inputs
    (tmp_path / RECORD_NAME).write_text(text)
    assert other_inputs(tmp_path, "photos") == []   # (skip_existing's look, before the record's check)
    (tmp_path / "a.png").write_bytes(b"")
    record = {"ckpt_path": "/runs/last.ckpt", "iteration": 5, "direction": "AtoB"}
    with pytest.raises(ValueError, match=r"translation.json is not a translation record \(.*\): pass overwrite=true"):
        keep_one_translation_per_folder(tmp_path, record, overwrite=False, targets={tmp_path / "a.png"})
    (tmp_path / "b.png").write_bytes(b"")   # an output this translation would not replace
    for overwrite in (False, True):   # not told to pass overwrite=true, which would be refused as well
        with pytest.raises(ValueError, match=r"holds outputs of another translation \(its record unreadable: .*\) "
                                             r"that this one would not replace, even with overwrite=true, e.g. .*b.png"):
            keep_one_translation_per_folder(tmp_path, record, overwrite=overwrite, targets={tmp_path / "a.png"})
    keep_one_translation_per_folder(tmp_path, record, overwrite=True, targets={tmp_path / "a.png", tmp_path / "b.png"},
                                    input_path=str(tmp_path / "photos"))
    assert {k: v for k, v in json.loads((tmp_path / RECORD_NAME).read_text()).items() if k != "inputs"} == record


def test_an_input_folder_without_images_is_named_with_the_kinds_read(tmp_path):
    from src.utils.translation import list_input_images
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=rf"input={tmp_path} holds no image file \(.*\.jpg.*\.png"):
        list_input_images(tmp_path)
