"""Label maps as classes (palette colours), the Cityscapes-table segmentation scores, and the
FCN-score's exported segmentation net."""
import io
import json
import logging
import math
import os
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from src.callbacks.label_scores import LabelScoresCallback
from src.data.paired import PairedDataModule
from src.metrics.label_maps import CITYSCAPES, IGNORE, colours_to_classes
from src.metrics.segmentation_scores import SegmentationScorer
from src.metrics.segmenter import Segmenter
from src.utils.label_evaluation import FcnScores, GeneratedLabelScores, label_scores_for
from src.utils.run import run_training
from tests.conftest import compose_train_cfg, results_of_gloo_ranks


def colour_image(colours, height: int = 4) -> torch.Tensor:
    """(1, 3, height, len(colours)) image in [-1, 1], column k of colour k."""
    rgb = torch.tensor(colours, dtype=torch.float32).T.reshape(1, 3, 1, -1)
    return (rgb / 127.5 - 1).expand(1, 3, height, -1).contiguous()


def random_label_map(classes: torch.Tensor) -> torch.Tensor:
    """The colour image of an (N, H, W) class map."""
    colours = torch.tensor(CITYSCAPES.colours, dtype=torch.float32) / 127.5 - 1
    return colours[classes].permute(0, 3, 1, 2).contiguous()


def write_label_map_dataset(root: Path, count: int = 4, size: int = 32, splits=("test",),
                            domain_endings: bool = False) -> Path:
    """testA/ and testB/ (and the other `splits`) of the same colour label maps (8 px blocks of
    random classes), PNG so the colours stay exact: label maps whose "photos" are themselves;
    named 0000.png, or with `domain_endings` as CycleGAN's copies name pairs (0000_A.png, 0000_B.png)."""
    generator = torch.Generator().manual_seed(4)
    for split in splits:
        for k in range(count):
            classes = torch.randint(0, 19, (1, size // 8, size // 8), generator=generator)
            classes = classes.repeat_interleave(8, 1).repeat_interleave(8, 2)
            pixels = ((random_label_map(classes)[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
            for domain in "AB":
                (root / f"{split}{domain}").mkdir(parents=True, exist_ok=True)
                ending = f"_{domain}" if domain_endings else ""
                Image.fromarray(pixels).save(root / f"{split}{domain}" / f"{k:04d}{ending}.png")
    return root


class NearestColour(torch.nn.Module):
    """Stand-in segmentation net: class scores are minus the distance to each palette colour."""

    def __init__(self, num_classes: int = CITYSCAPES.num_classes):
        super().__init__()
        colours = torch.tensor(CITYSCAPES.colours[:num_classes], dtype=torch.float32) / 255
        self.register_buffer("colours", colours)

    def forward(self, x):
        return -((x.unsqueeze(1) - self.colours.view(1, -1, 3, 1, 1)) ** 2).sum(2)


def export_segmenter(path: Path, size=(16, 16), num_classes: int = CITYSCAPES.num_classes) -> Path:
    program = torch.export.export(NearestColour(num_classes).eval(), (torch.rand(1, 3, *size),))
    torch.export.save(program, str(path))
    return path


# -- colours to classes --------------------------------------------------------------------------


def test_palette_colours_come_back_as_their_classes_and_unscored_labels_as_ignore():
    classes = colours_to_classes(colour_image(CITYSCAPES.colours + CITYSCAPES.ignored_colours), CITYSCAPES)
    expected = list(range(19)) + [IGNORE] * len(CITYSCAPES.ignored_colours)
    assert classes.shape == (1, 4, 29) and (classes == torch.tensor(expected)).all()


def test_colours_a_little_off_take_the_nearest_palette_colour():
    """JPEG and generators only come close: the closest palette colours (truck, caravan,
    trailer: 20 levels apart) must still be told apart at +-5 levels per channel."""
    generator = torch.Generator().manual_seed(0)
    clean = colour_image(CITYSCAPES.colours + CITYSCAPES.ignored_colours, height=16)
    noisy = (clean + (torch.rand(clean.shape, generator=generator) - 0.5) * 10 / 127.5).clamp(-1, 1)
    assert torch.equal(colours_to_classes(noisy, CITYSCAPES), colours_to_classes(clean, CITYSCAPES))


def test_label_maps_must_be_rgb():
    with pytest.raises(ValueError, match=r"RGB images \(N, 3, H, W\), got shape \(2, 1, 8, 8\)"):
        colours_to_classes(torch.zeros(2, 1, 8, 8), CITYSCAPES)


# -- the scores ----------------------------------------------------------------------------------


def reference_scores(truth: np.ndarray, predicted: np.ndarray, n: int) -> tuple[float, float, float]:
    """The pix2pix/CycleGAN evaluation as published: one histogram of the valid ground-truth
    pixels, accuracies and IoU with a 1e-12 guard, averaged over every class."""
    valid = (truth >= 0) & (truth < n)
    hist = np.bincount(n * truth[valid] + predicted[valid], minlength=n * n).reshape(n, n)
    acc = np.diag(hist).sum() / (hist.sum() + 1e-12)
    class_acc = np.diag(hist) / (hist.sum(1) + 1e-12)
    iou = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist) + 1e-12)
    return acc, np.nanmean(class_acc), np.nanmean(iou)


def test_scores_agree_with_the_published_evaluation_when_every_class_is_present():
    generator = torch.Generator().manual_seed(1)
    truth = torch.randint(0, 19, (3, 24, 24), generator=generator)
    truth[:, :2] = IGNORE                                              # unscored labels
    predicted = torch.where(torch.rand(truth.shape, generator=generator) < 0.6, truth,
                            torch.randint(0, 19, truth.shape, generator=generator))
    predicted[:, :2] = torch.randint(0, 19, (3, 2, 24), generator=generator)
    scorer = SegmentationScorer(19)
    scorer.update(predicted, truth)
    scores = scorer.compute()
    expected = reference_scores(truth.numpy().ravel(), predicted.numpy().ravel(), 19)
    assert [scores["pixel_acc"], scores["class_acc"], scores["class_iou"]] == pytest.approx(expected, abs=1e-9)
    assert 0.55 < scores["pixel_acc"] < 0.75   # 60% kept, 1/19 of the rest right by chance


def scores_of(predicted, truth, n):
    scorer = SegmentationScorer(n)
    scorer.update(predicted, truth)
    return scorer.compute()


def test_a_class_missing_from_the_truth_leaves_the_class_accuracy_but_counts_in_iou_when_predicted():
    truth = torch.tensor([[[0, 0, 1, 1]]])
    predicted = torch.tensor([[[0, 2, 1, 1]]])
    scores = scores_of(predicted, truth, 3)
    # class 0: 1 of 2 right, class 1: 2 of 2; class 2 has no true pixel: out of the accuracy
    # mean, but it is predicted once, so its IoU (0) counts: (1/2 + 1 + 0) / 3.
    assert scores == pytest.approx({"pixel_acc": 0.75, "class_acc": 0.75, "class_iou": 0.5})


def test_a_prediction_of_no_class_is_a_miss_and_unscored_truth_pixels_count_nowhere():
    truth = torch.tensor([[[0, 0, 1, IGNORE]]])
    predicted = torch.tensor([[[0, IGNORE, 1, 0]]])
    scores = scores_of(predicted, truth, 2)
    # class 0: 1 of 2 (the other predicted as no class), class 1: 1 of 1; the IGNORE truth
    # pixel's prediction of 0 counts neither as a hit nor against class 0's IoU.
    assert scores == pytest.approx({"pixel_acc": 2 / 3, "class_acc": 0.75, "class_iou": 0.75})


def test_scores_sum_over_batches_like_one_call():
    generator = torch.Generator().manual_seed(2)
    truth = torch.randint(0, 5, (4, 8, 8), generator=generator)
    predicted = torch.randint(0, 5, (4, 8, 8), generator=generator)
    whole, parts = SegmentationScorer(5), SegmentationScorer(5)
    whole.update(predicted, truth)
    for k in range(4):
        parts.update(predicted[k:k + 1], truth[k:k + 1])
    assert parts.compute() == whole.compute()


def test_scores_need_matching_shapes_and_a_scored_pixel():
    scorer = SegmentationScorer(3)
    with pytest.raises(ValueError, match=r"predicted classes \(1, 4, 4\) and ground truth \(1, 4, 5\)"):
        scorer.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long))
    scorer.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), IGNORE))
    with pytest.raises(ValueError, match="no scored pixel"):
        scorer.compute()


# -- the FCN-score's segmenter -------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter_file(tmp_path_factory) -> Path:
    return export_segmenter(tmp_path_factory.mktemp("segmenter") / "nearest.pt2")


@pytest.fixture(scope="module")
def segmenter_file_32(tmp_path_factory) -> Path:
    return export_segmenter(tmp_path_factory.mktemp("segmenter") / "nearest32.pt2", size=(32, 32))


def test_segmenter_classes_images_at_the_label_size(segmenter_file):
    generator = torch.Generator().manual_seed(3)
    classes = torch.randint(0, 19, (2, 8, 8), generator=generator).repeat_interleave(2, 1).repeat_interleave(2, 2)
    images = random_label_map(classes)                                           # (2, 3, 16, 16)
    segmenter = Segmenter(segmenter_file, 19, None, "cpu", key="segmenter_path")
    assert torch.equal(segmenter.classes(images, (16, 16)), classes)
    # 8 px label maps, the net exported for 16 px (segmenter_size): each image is enlarged to
    # 16 px to be segmented, and its class scores shrunk back to the label maps' 8 px.
    # (One colour per image: enlarging blends neighbouring colours, which need not segment alike.)
    plain = torch.tensor([4, 13]).view(2, 1, 1).expand(2, 8, 8)
    resized = Segmenter(segmenter_file, 19, (16, 16), "cpu", key="segmenter_path").classes(random_label_map(plain),
                                                                                            (8, 8))
    assert torch.equal(resized, plain)


class OpensAFile:
    """Unpickled in full, it creates `marker`: the code a file's author could run on load."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def rewritten_archive(source: Path, target: Path, replace: dict[str, bytes], add: dict[str, bytes] = {}) -> Path:
    """A copy of the zip `source` with the members whose names end in a key of `replace`
    replaced, and the members of `add` (named inside its top folder) added."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            new.writestr(name, next((data for end, data in replace.items() if name.endswith(end)), old.read(name)))
        top = old.namelist()[0].split("/")[0]
        for name, data in add.items():
            new.writestr(f"{top}/{name}", data)
    return target


def test_a_segmenter_file_runs_none_of_its_authors_code(segmenter_file, tmp_path):
    """torch.export.load loads a weight stored in pickle form with weights_only=False: a file
    whose weight is a pickled call is refused before the call runs; a file with Python objects
    among its constants (unpickled in full) is refused by name."""
    marker = tmp_path / "ran"
    payload = io.BytesIO()
    torch.save(OpensAFile(marker), payload)
    with zipfile.ZipFile(segmenter_file) as archive:
        (config_name,) = [n for n in archive.namelist() if n.endswith("weights/model_weights_config.json")]
        config = json.loads(archive.read(config_name))
    config["config"]["colours"]["use_pickle"] = True
    pickled = rewritten_archive(segmenter_file, tmp_path / "pickled.pt2",
                                {"weights/model_weights_config.json": json.dumps(config).encode(),
                                 "weights/weight_0": payload.getvalue()})
    with pytest.raises(ValueError, match=r"pickled.pt2 is not a program saved by torch.export.save .*Weights only load"):
        Segmenter(pickled, 19, None, "cpu", key="segmenter_path")
    assert not marker.exists()
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None   # set for the load only

    # torch reads each by its path there; a kind it might add later is refused until known
    for name in ("opaque_obj_0", "opaque_obj_x/inner", "custom_obj_1", "future_obj_2"):
        objects = rewritten_archive(segmenter_file, tmp_path / "objects.pt2", {},
                                    add={f"data/constants/{name}": payload.getvalue()})
        with pytest.raises(ValueError, match=rf"objects.pt2 holds pickled Python or TorchScript objects \(.*{name}\)"):
            Segmenter(objects, 19, None, "cpu", key="segmenter_path")
    assert not marker.exists()
    assert Segmenter(segmenter_file, 19, None, "cpu", key="segmenter_path").module is not None


def program_rewritten(segmenter_file: Path, target: Path, change) -> Path:
    """A copy of the export whose program JSON `change(document)` edits in place."""
    with zipfile.ZipFile(segmenter_file) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith("models/model.json")]
        document = json.loads(archive.read(name))
    change(document)
    return rewritten_archive(segmenter_file, target, {"models/model.json": json.dumps(document).encode()})


def test_a_segmenter_program_whose_text_would_run_as_code_is_refused_before_loading(segmenter_file, tmp_path):
    """torch.export.load parses a symbolic size with sympy's sympify (an eval), .module() runs
    the shape guards with exec, and a node may call any callable under torch (torch.os.system):
    each would run its author's code without a pickle in the file."""
    marker = tmp_path / "ran"
    code = f"__import__('builtins').open({str(marker)!r}, 'w').close() or True"

    def symbolic_size(document):
        sizes = document["graph_module"]["graph"]["tensor_values"]
        meta = next(iter(sizes.values()))
        meta["sizes"][0] = {"as_expr": {"expr_str": code, "hint": None}}

    def guards(document):
        document["guards_code"] = [code]

    def foreign_call(document):
        document["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"

    for change, found in ((symbolic_size, "a symbolic size"), (guards, "shape guards"),
                          (foreign_call, "a call of 'torch.os.system'")):
        crafted = program_rewritten(segmenter_file, tmp_path / "crafted.pt2", change)
        with pytest.raises(ValueError, match=rf"crafted.pt2 holds {re.escape(found)} .*models/model.json, which "
                                             r"loading would run as code: export a net of ATen operations"):
            Segmenter(crafted, 19, None, "cpu", key="segmenter_path")
        assert not marker.exists()
    # nested beyond what json (and torch's loader after it) parses: refused, not a RecursionError
    deep = rewritten_archive(segmenter_file, tmp_path / "deep.pt2", {"models/model.json": b"[" * 100_000 + b"]" * 100_000})
    with pytest.raises(ValueError, match=r"deep.pt2: .*models/model.json is nested too deeply to be a program's"):
        Segmenter(deep, 19, None, "cpu", key="segmenter_path")


def test_a_segmenter_out_of_memory_is_not_called_an_export_of_another_shape(segmenter_file):
    """Out of memory on the device is said as it is, not as "export it for that shape"."""
    segmenter = Segmenter(segmenter_file, 19, None, "cpu", key="segmenter_path")

    def out_of_memory(image):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    segmenter.module = out_of_memory
    with pytest.raises(torch.OutOfMemoryError, match="CUDA out of memory"):
        segmenter.classes(torch.zeros(1, 3, 16, 16), (16, 16))


def test_segmenter_errors_name_the_setting_and_the_fix(segmenter_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="segmenter_path=.*missing.pt2: no such file"):
        Segmenter(tmp_path / "missing.pt2", 19, None, "cpu", key="segmenter_path")
    torch.save({"state_dict": {}}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="segmenter_path=.*weights.pt is not a program saved by torch.export.save"):
        Segmenter(tmp_path / "weights.pt", 19, None, "cpu", key="segmenter_path")
    images = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"returned \(1, 19, 16, 16\); it must return \(1, C, h, w\) class scores, "
                                         r"channel k for class k of the label palette's 20"):
        Segmenter(segmenter_file, 20, None, "cpu", key="segmenter_path").classes(images, (16, 16))
    with pytest.raises(ValueError, match=r"cannot segment a \(1, 3, 12, 12\) image: .*set segmenter_size"):
        Segmenter(segmenter_file, 19, None, "cpu", key="segmenter_path").classes(torch.zeros(1, 3, 12, 12), (12, 12))
    # In training the settings are the callback's: the fix names its key.
    with pytest.raises(ValueError, match=r"set callbacks\.label_scores\.segmenter_size to the size"):
        Segmenter(segmenter_file, 19, None, "cpu", key="callbacks.label_scores.segmenter_path").classes(
            torch.zeros(1, 3, 12, 12), (12, 12))


# -- the data's label maps -----------------------------------------------------------------------


def test_data_names_its_label_palette_and_domain_settings(tmp_path):
    datamodule = PairedDataModule(data_dir=tmp_path, name="cityscapes", label_palette="cityscapes", label_domain="A")
    assert datamodule.label_palette is CITYSCAPES and datamodule.label_domain == "A"
    assert PairedDataModule(data_dir=tmp_path, name="facades").label_palette is None
    with pytest.raises(ValueError, match="data.label_palette='ade20k' must be one of cityscapes"):
        PairedDataModule(data_dir=tmp_path, name="x", label_palette="ade20k")
    with pytest.raises(ValueError, match="data.label_domain='labels' must be A or B"):
        PairedDataModule(data_dir=tmp_path, name="x", label_palette="cityscapes", label_domain="labels")
    with pytest.raises(ValueError, match="domain B needs 3 channels, and data.output_nc=1: set data.output_nc=3"):
        PairedDataModule(data_dir=tmp_path, name="x", label_palette="cityscapes", output_nc=1)
    with pytest.raises(ValueError, match="domain B needs 3 channels, and data.input_nc=1: set data.input_nc=3"):
        PairedDataModule(data_dir=tmp_path, name="x", label_palette="cityscapes", direction="BtoA", input_nc=1)
    PairedDataModule(data_dir=tmp_path, name="x", label_palette="cityscapes", input_nc=1)   # photos may be grey


# -- which direction is scored how ---------------------------------------------------------------


def test_each_direction_gets_the_scores_its_data_allows(segmenter_file, caplog):
    """photo->labels needs the real label map of the same image (paired data); labels->photo
    needs the segmenter, and compares with the real photos only where they are paired."""
    segmenter = Segmenter(segmenter_file, 19, None, "cpu", key="segmenter_path")

    def data(paired, label_domain="B", palette=CITYSCAPES):
        return SimpleNamespace(label_palette=palette, label_domain=label_domain, test_items_are_pairs=lambda: paired)

    assert isinstance(label_scores_for(data(True), "A", "B", None, "cpu"), GeneratedLabelScores)
    fcn = label_scores_for(data(True), "B", "A", segmenter, "cpu")
    assert isinstance(fcn, FcnScores) and set(fcn.scorers) == {"fcn", "real_fcn"}
    assert set(label_scores_for(data(False), "B", "A", segmenter, "cpu").scorers) == {"fcn"}
    assert label_scores_for(data(True, palette=None), "A", "B", segmenter, "cpu") is None
    with caplog.at_level(logging.INFO, logger="src.utils.label_evaluation"):
        assert label_scores_for(data(False), "A", "B", segmenter, "cpu") is None
        assert label_scores_for(data(True), "B", "A", None, "cpu") is None
    assert "the test images are not pairs" in caplog.text
    assert "No FCN-score for B->A: segmenter_path=" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="src.utils.label_evaluation"):
        assert label_scores_for(data(True), "B", "A", None, "cpu", explain=False) is None
    assert not caplog.text   # the training callback says it at its first evaluation only


# -- the training callback -----------------------------------------------------------------------


def test_training_logs_the_label_scores_of_both_directions(tmp_path, segmenter_file_32, monkeypatch):
    """CycleGAN on label maps (B): AtoB makes label maps, scored as classes; BtoA makes "photos",
    FCN-scored by the stand-in segmenter, which gets the real ones (the maps themselves) right.
    Between evaluations the segmenter waits on the CPU, not on training's device."""
    moves = []
    to = Segmenter.to
    monkeypatch.setattr(Segmenter, "to", lambda self, device: moves.append(str(device)) or to(self, device))
    root = write_label_map_dataset(tmp_path / "labels", splits=("train", "test"))
    cfg = compose_train_cfg(["debug=smoke", "model=cyclegan", "data=cityscapes", f"data.data_dir={root}",
                             "data.layout=folders", "data.direction=AtoB", "data.load_size=32", "data.crop_size=32",
                             "data.feature_extractor=random_cnn", "callbacks.latent=null",
                             f"callbacks.label_scores.segmenter_path={segmenter_file_32}"], tmp_path / "run", tmp_path)
    metrics = run_training(cfg)
    logged = {k: v for k, v in metrics.items() if k.startswith("segmentation/")}
    scores = ("pixel_acc", "class_acc", "class_iou")
    assert set(logged) == {f"segmentation/{d}/{prefix}_{k}" for d, prefix in
                           (("AtoB", "label"), ("BtoA", "fcn"), ("BtoA", "real_fcn")) for k in scores}
    assert all(0 <= v <= 1 and math.isfinite(v) for v in logged.values())
    assert [logged[f"segmentation/BtoA/real_fcn_{k}"] for k in scores] == [1.0, 1.0, 1.0]
    assert moves[-1] == "cpu" and len(moves) == 2 * 2   # two evaluations: there and back


def test_callback_is_off_without_label_maps_and_checks_its_segmenter_at_start(tmp_path, caplog):
    callback = LabelScoresCallback()
    trainer = SimpleNamespace(datamodule=PairedDataModule(data_dir=tmp_path, name="facades"))
    with caplog.at_level(logging.DEBUG):
        callback.setup(trainer, SimpleNamespace(translate=lambda x, d: x), "fit")
    assert not callback.enabled
    # most data has no label maps: no line at INFO or above on every run's start
    assert [r.levelno for r in caplog.records if "LabelScoresCallback" in r.getMessage()] == [logging.DEBUG]
    with pytest.raises(ValueError, match=r"callbacks.label_scores.segmenter_size=\[0, 16\] must be \[height, width\]"):
        LabelScoresCallback(segmenter_size=[0, 16])
    labelled = SimpleNamespace(datamodule=PairedDataModule(data_dir=write_label_map_dataset(tmp_path / "labels"),
                                                           name="labels", layout="folders", label_palette="cityscapes"))
    with pytest.raises(FileNotFoundError, match="callbacks.label_scores.segmenter_path=.*missing.pt2: no such file"):
        LabelScoresCallback(segmenter_path=str(tmp_path / "missing.pt2")).setup(
            labelled, SimpleNamespace(translate=lambda x, d: x), "fit")


class Road:
    """Stands in for a translator that paints everything road-coloured."""

    device, iteration = torch.device("cpu"), 0

    def generator_for(self, direction):
        if direction != "AtoB":
            raise ValueError("AtoB only")

    def translate(self, x, direction):
        return random_label_map(torch.zeros(x.size(0), *x.shape[-2:], dtype=torch.long))


def label_scores_of_shard(data_dir: str, max_images: int, rank: int, world_size: int) -> dict:
    datamodule = PairedDataModule(data_dir=data_dir, name="labels", layout="folders", load_size=32, crop_size=32,
                                  eval_batch_size=2, label_palette="cityscapes", label_domain="B")
    trainer = SimpleNamespace(datamodule=datamodule, global_rank=rank, world_size=world_size)
    callback = LabelScoresCallback(max_images=max_images)
    callback.setup(trainer, Road(), "fit")
    return callback.scores(trainer, Road())


def test_callback_says_why_a_direction_is_not_scored_at_its_first_evaluation_only(tmp_path, caplog):
    datamodule = PairedDataModule(data_dir=write_label_map_dataset(tmp_path / "labels"), name="labels",
                                  layout="folders", load_size=32, crop_size=32, label_palette="cityscapes",
                                  label_domain="A")   # AtoB makes photos, and there is no segmenter
    trainer = SimpleNamespace(datamodule=datamodule, global_rank=0, world_size=1)
    callback = LabelScoresCallback()
    callback.setup(trainer, Road(), "fit")
    with caplog.at_level(logging.INFO, logger="src.utils.label_evaluation"):
        assert callback.scores(trainer, Road()) == {} and callback.scores(trainer, Road()) == {}
    assert caplog.text.count("No FCN-score for A->B: callbacks.label_scores.segmenter_path=") == 1


class Identity(Road):
    def translate(self, x, direction):
        return x


def test_cyclegans_unpaired_copy_is_scored_on_its_test_pairs(tmp_path):
    """CycleGAN's copies name pair i `i_A` / `i_B`: the unpaired data serves real pairs at test
    time, so photo->labels (CycleGAN's Table 3) is scored during training on the paper's data;
    folders whose names do not match one to one are not taken for pairs."""
    from src.data.unpaired import UnpairedDataModule
    root = write_label_map_dataset(tmp_path / "copy", count=3, domain_endings=True)

    def datamodule():
        dm = UnpairedDataModule(data_dir=root, name="cityscapes_unpaired", load_size=32, crop_size=32,
                                label_palette="cityscapes", label_domain="B")
        dm.setup("test")
        return dm

    trainer = SimpleNamespace(datamodule=datamodule(), global_rank=0, world_size=1)
    assert trainer.datamodule.test_items_are_pairs()
    callback = LabelScoresCallback()
    callback.setup(trainer, Identity(), "fit")
    assert callback.scores(trainer, Identity()) == {f"segmentation/AtoB/label_{k}": 1.0
                                                    for k in ("pixel_acc", "class_acc", "class_iou")}
    (root / "testB" / "0002_B.png").rename(root / "testB" / "0003_B.png")
    assert not datamodule().test_items_are_pairs()
    (root / "testB" / "0003_B.png").unlink()
    assert not datamodule().test_items_are_pairs()   # 3 against 2: item 2 would cycle to a stranger


class RoadBothWays(Road):
    def generator_for(self, direction):
        pass


def test_an_unpaired_split_cycling_its_label_maps_scores_each_map_once(tmp_path, segmenter_file_32):
    """3 photos and 2 label maps: the split's item 2 shows label map 0 again. The FCN-score of
    labels->photos counts each map once, as eval.py does (and as a split of 2 photos gives)."""
    from src.data.unpaired import UnpairedDataModule

    def fcn_scores(root: Path) -> dict:
        datamodule = UnpairedDataModule(data_dir=root, name="cityscapes_unpaired", load_size=32, crop_size=32,
                                        label_palette="cityscapes", label_domain="B", eval_batch_size=2)
        trainer = SimpleNamespace(datamodule=datamodule, global_rank=0, world_size=1)
        callback = LabelScoresCallback(segmenter_path=str(segmenter_file_32))
        callback.setup(trainer, RoadBothWays(), "fit")
        scores = callback.scores(trainer, RoadBothWays())
        return {k: v for k, v in scores.items() if k.startswith("segmentation/BtoA/fcn_")}

    cycling, distinct = (write_label_map_dataset(tmp_path / name, count=3) for name in ("cycling", "distinct"))
    (cycling / "testB" / "0002.png").unlink()
    for domain in "AB":
        (distinct / f"test{domain}" / "0002.png").unlink()
    assert len(fcn_scores(distinct)) == 3 and fcn_scores(cycling) == fcn_scores(distinct)


@pytest.mark.parametrize("max_images", [5, 1])
def test_callback_sums_the_confusion_of_every_ddp_rank(tmp_path, max_images):
    """Two gloo processes, each scoring its block of the test maps (3 + 2 of 5; 1 + none of 1):
    both log the scores of all of them, the same as one process; with 5, a rank's own block alone
    would score differently, and with 1 the rank without images still gets the whole's scores."""
    root = str(write_label_map_dataset(tmp_path / "labels", count=5))
    expected = label_scores_of_shard(root, max_images, 0, 1)
    assert set(expected) == {f"segmentation/AtoB/label_{k}" for k in ("pixel_acc", "class_acc", "class_iou")}
    if max_images == 5:
        assert label_scores_of_shard(root, max_images, 1, 2) != expected   # the blocks differ
    for scores in results_of_gloo_ranks(label_scores_of_shard, (root, max_images), 2, tmp_path):
        assert scores == pytest.approx(expected, rel=1e-9)


def test_a_segmenter_for_data_without_label_maps_names_overrides_eval_takes(tmp_path):
    """The fix is written with `++` and cityscapes' values: eval.py's config has no data node
    (data: null, the run's), where `data.label_palette=` is refused."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from src.utils.label_evaluation import segmenter_for
    from tests.conftest import CONF_DIR

    plain = SimpleNamespace(label_palette=None, name="horse2zebra")
    with pytest.raises(ValueError, match=r"data horse2zebra has none: set their palette and domain "
                                         r"\(\+\+data.label_palette=cityscapes \+\+data.label_domain=B, as "
                                         r"conf/data/cityscapes.yaml does\)") as refusal:
        segmenter_for(plain, "fcn.pt2", None, "cpu")
    overrides = re.findall(r"\+\+data\.\S+=[^\s,]+", str(refusal.value))
    cityscapes = OmegaConf.load(CONF_DIR / "data" / "cityscapes.yaml")
    try:
        cfg = compose_train_cfg(["ckpt_path=last.ckpt", *overrides], tmp_path, tmp_path, "eval")
    finally:
        GlobalHydra.instance().clear()
    assert {key: cfg.data[key] for key in ("label_palette", "label_domain")} == {
        key: cityscapes[key] for key in ("label_palette", "label_domain")}
