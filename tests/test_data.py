"""Data layer: folder DataModules, preprocessing, image decoding, errors, the shapes dataset."""

import glob
import hashlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import struct
import time
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import ExifTags, Image  # noqa: E402

from src.data import check_images, convert_images, download  # noqa: E402
from src.data.folders import list_images  # noqa: E402
from src.data.errors import (  # noqa: E402
    DatasetNotFoundError,
    EmptyDatasetError,
    ImageReadError,
    MissingPartnerError,
)
from src.data.image_io import load_image, open_image, upright_size  # noqa: E402
from src.data.paired import PairedDataModule, match_by_name  # noqa: E402
from src.data.placement import STALE_SCRATCH_S  # noqa: E402
from src.data.sequences import SequenceDataModule  # noqa: E402
from src.data.shapes import (  # noqa: E402
    ShapesDataModule,
    ShapesPairedDataModule,
    ensure_shapes_dataset,
    render_background,
    shape_coverage,
    shapes_params,
)
from src.data.transforms import PREPROCESS_MODES, RESIZE_INTERPOLATIONS, ImageTransform, scale_width  # noqa: E402
from src.data.unpaired import UnpairedDataModule  # noqa: E402
from src.data.colour_profiles import SRGB_CURVE, rgb_profile  # noqa: E402
from tests.deep_images import exif_chunk, icc_chunk, png_chunk, write_png_16, write_tiff_16  # noqa: E402
from tests.icc_profiles import (D65_WHITE, SRGB_BLUE, SRGB_GREEN, SRGB_RED,  # noqa: E402
                                cmyk_profile_that_prints_everything_black, linear_gray_profile,
                                rgb_profile_with_red_and_blue_swapped)

CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"
RED, BLUE = (255, 0, 0), (0, 0, 255)


# -- helpers ---------------------------------------------------------------------------------


def write_image(path: Path, size=(20, 16), color=None, seed=0) -> Path:
    """An RGB image of width x height; random noise unless a colour is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    if color is None:
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        pixels = np.broadcast_to(np.array(color, np.uint8), (height, width, 3))
    Image.fromarray(np.ascontiguousarray(pixels)).save(path)
    return path


def make_unpaired(root: Path, n_a=3, n_b=5, n_test_a=2, n_test_b=2, size=(20, 16)) -> Path:
    for split, counts in (("train", (n_a, n_b)), ("test", (n_test_a, n_test_b))):
        for domain, count in zip("AB", counts):
            for k in range(count):
                seed = len(split) * 100 + ord(domain) * 10 + k  # distinct noise per file
                write_image(root / f"{split}{domain}" / f"{domain}{k}.png", size, seed=seed)
    return root


def module(cls, root, **kwargs):
    settings = dict(name="mydata", preprocess="resize_and_crop", load_size=12, crop_size=8)
    settings.update(kwargs)
    return cls(data_dir=root, **settings)


def test_the_data_folder_is_recorded_absolute(tmp_path, monkeypatch, shared_data_dir):
    """A relative `data.data_dir=data/mine` went into the checkpoint as it was typed: eval.py
    run from another folder looked for it there (or read another `data/mine`)."""
    monkeypatch.chdir(shared_data_dir.parent)
    dm = module(UnpairedDataModule, shared_data_dir.name)
    assert dm.hparams["data_dir"] == str(shared_data_dir) and dm.data_dir == shared_data_dir
    monkeypatch.setenv("HOME", str(shared_data_dir.parent))
    assert module(UnpairedDataModule, f"~/{shared_data_dir.name}").hparams["data_dir"] == str(shared_data_dir)
    monkeypatch.chdir(tmp_path)   # elsewhere, the record still names the folder the run read
    assert Path(dm.hparams["data_dir"]).is_dir()


def test_a_datamodule_built_in_python_keeps_settings_a_weights_only_load_takes(tmp_path, shared_data_dir):
    """A notebook's `data_dir=Path(...)` (or a numpy number) went into every checkpoint's
    DataModule settings as an object a weights-only load refuses: resume, eval, translate and
    init_from all failed on the run's checkpoints."""
    from src.utils.config_checks import to_plain
    dm = module(UnpairedDataModule, Path(shared_data_dir))
    assert dm.hparams["data_dir"] == str(shared_data_dir)
    torch.save({"datamodule_hyper_parameters": dict(dm.hparams)}, tmp_path / "c.ckpt")
    assert torch.load(tmp_path / "c.ckpt", weights_only=True)["datamodule_hyper_parameters"]["data_dir"] == \
        str(shared_data_dir)
    plain = to_plain({"sizes": (np.int64(3), [np.float32(0.5)]), "roots": [tmp_path]})
    assert plain == {"sizes": (3, [0.5]), "roots": [str(tmp_path)]} and type(plain["sizes"][0]) is int


# -- unpaired folders ------------------------------------------------------------------------


def test_unpaired_batch_contract(tmp_path):
    dm = module(UnpairedDataModule, make_unpaired(tmp_path / "d"), batch_size=2)
    dm.setup("fit")
    assert dm.paired is False
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"A", "B", "A_path", "B_path"}
    assert batch["A"].shape == (2, 3, 8, 8) and batch["B"].shape == (2, 3, 8, 8)
    assert batch["A"].dtype == torch.float32
    for key in "AB":
        assert -1.0 <= batch[key].min() and batch[key].max() <= 1.0
    assert all("trainA" in path for path in batch["A_path"])
    assert all("trainB" in path for path in batch["B_path"])
    assert len(dm.train_dataloader().dataset) == 5  # max(len A, len B)


def test_unpaired_direction_swaps_domains_and_channels(tmp_path):
    dm = module(UnpairedDataModule, make_unpaired(tmp_path / "d"), direction="BtoA", input_nc=1, output_nc=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert "trainB" in batch["A_path"][0] and "trainA" in batch["B_path"][0]
    assert batch["A"].shape[1] == 1 and batch["B"].shape[1] == 3


def test_balanced_sampling_draws_every_image_of_the_smaller_domain_as_often(tmp_path):
    """CycleGAN's loader cycles the source: with 4 sources and 6 targets, A0 and A1 come twice an
    epoch, every epoch. U-GAT-IT's and NICE-GAN's code shuffle each domain on its own, so
    `balanced` takes the larger domain in the epoch's order (each target once) and draws the
    smaller at random; a larger source keeps its order either way."""
    import collections
    from src.data.epoch_order import seeded_global_rngs
    root = make_unpaired(tmp_path / "d", n_a=4, n_b=6)
    counts = {}
    for sampling in ("cyclegan", "balanced"):
        dm = module(UnpairedDataModule, root, unpaired_sampling=sampling, load_size=8, flip=False)
        dm.setup("fit")
        dataset = dm.dataset("train")
        sources, targets = collections.Counter(), collections.Counter()
        for epoch in range(100):
            for index in range(6):
                with seeded_global_rngs(epoch * 6 + index):
                    item = dataset[index]
                sources[Path(item["A_path"]).name] += 1
                targets[Path(item["B_path"]).name] += 1
        counts[sampling] = sources, targets
    sources, targets = counts["cyclegan"]
    assert sources == {"A0.png": 200, "A1.png": 200, "A2.png": 100, "A3.png": 100}
    sources, targets = counts["balanced"]
    assert targets == {f"B{k}.png": 100 for k in range(6)}   # each once an epoch
    assert sorted(sources) == [f"A{k}.png" for k in range(4)] and all(110 <= n <= 190 for n in sources.values())
    dm = module(UnpairedDataModule, root, unpaired_sampling="balanced", direction="BtoA")
    dm.setup("fit")
    assert [Path(dm.dataset("train")[i]["A_path"]).name for i in range(6)] == [f"B{k}.png" for k in range(6)]
    with pytest.raises(ValueError, match=r"data.unpaired_sampling='even' must be one of cyclegan, balanced"):
        module(UnpairedDataModule, root, unpaired_sampling="even")


def test_max_dataset_size_caps_each_domain(tmp_path):
    dm = module(UnpairedDataModule, make_unpaired(tmp_path / "d", n_a=4, n_b=6), max_dataset_size=2)
    dm.setup("fit")
    dataset = dm.dataset("train")
    assert len(dataset) == 2
    assert [p.name for p in dataset.source_paths] == ["A0.png", "A1.png"]
    assert [p.name for p in dataset.target_paths] == ["B0.png", "B1.png"]


def test_random_partner_changes_and_is_seeded(tmp_path):
    dm = module(UnpairedDataModule, make_unpaired(tmp_path / "d", n_a=2, n_b=20))
    dm.setup("fit")

    def epochs(seed, n=4):
        torch.manual_seed(seed)
        return [
            [(b["A_path"][0], b["B_path"][0], b["A"].sum().item()) for b in dm.train_dataloader()]
            for _ in range(n)
        ]

    first = epochs(0)
    partners_of_a0 = {b_path for epoch in first for a_path, b_path, _ in epoch if a_path.endswith("A0.png")}
    assert len(partners_of_a0) > 1  # not always the same partner
    # Drawn, not read by index: A0 is every even item, which by index would pair it with even Bs only.
    assert not partners_of_a0 <= {str(tmp_path / "d" / "trainB" / f"B{i}.png") for i in range(0, 20, 2)}
    assert epochs(0) == first  # torch.manual_seed fixes order, partners, crops and flips
    assert epochs(1) != first


def test_worker_processes_are_seeded_from_torch(tmp_path):
    dm = module(UnpairedDataModule, make_unpaired(tmp_path / "d", n_a=4, n_b=4), num_workers=2)
    dm.setup("fit")

    def run():
        return [(b["B_path"][0], b["A"].sum().item()) for b in dm.train_dataloader()]

    torch.manual_seed(3)
    first = run()
    torch.manual_seed(3)
    assert run() == first
    torch.manual_seed(4)
    assert run() != first   # the workers' streams come from torch's seed, not a fixed one


def test_pinned_memory_only_with_a_gpu(tmp_path, monkeypatch):
    # data.pin_memory=true serves host -> GPU copies; on a CPU-only machine torch would warn at
    # every loader ("no accelerator is found") and ignore it
    root = make_unpaired(tmp_path / "d")
    for cuda in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        dm = module(UnpairedDataModule, root, pin_memory=True)
        assert dm.pin_memory is cuda
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dm = module(UnpairedDataModule, root, pin_memory=True)
    dm.setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        next(iter(dm.train_dataloader()))


def test_test_loader_pairs_in_sorted_order(tmp_path):
    root = make_unpaired(tmp_path / "d", n_test_a=3, n_test_b=2)
    dm = module(UnpairedDataModule, root, batch_size=4, eval_batch_size=1)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert len(batches) == 3  # eval_batch_size 1, max(3, 2) items
    pairs = [(Path(b["A_path"][0]).name, Path(b["B_path"][0]).name) for b in batches]
    assert pairs == [("A0.png", "B0.png"), ("A1.png", "B1.png"), ("A2.png", "B0.png")]
    assert batches[0]["A"].shape[-1] == 8  # eval: resized straight to crop_size


def test_sample_batch_is_first_items_and_deterministic(tmp_path):
    dm = module(UnpairedDataModule, make_unpaired(tmp_path / "d", n_test_a=3, n_test_b=3))
    torch.manual_seed(0)
    first = dm.sample_batch(2)
    torch.manual_seed(1)
    second = dm.sample_batch(2)
    assert [Path(p).name for p in first["A_path"]] == ["A0.png", "A1.png"]
    assert first["A"].shape == (2, 3, 8, 8)
    assert torch.equal(first["A"], second["A"]) and torch.equal(first["B"], second["B"])
    assert dm.sample_batch(10)["A"].shape[0] == 3
    assert Path(dm.sample_batch(1, split="train")["A_path"][0]).parent.name == "trainA"


def test_images_of_mixed_sizes_batch_one_at_a_time_or_fail_naming_the_files(tmp_path, caplog):
    """preprocess=none keeps each image's size: evaluation batches one image at a time, a batch
    of several names two files of different sizes and the settings, and sample grids take the
    first images of the first one's size."""
    root = make_unpaired(tmp_path / "d", n_test_a=3, n_test_b=3)
    write_image(root / "testA" / "A1.png", size=(24, 16))   # the others are 20x16
    dm = module(UnpairedDataModule, root, preprocess="none", batch_size=2)
    assert dm.eval_batch_size == 1
    assert [tuple(b["A"].shape[-2:]) for b in dm.test_dataloader()] == [(16, 20), (16, 24), (16, 20)]

    batched = module(UnpairedDataModule, root, preprocess="none", eval_batch_size=2)
    with pytest.raises(ValueError, match=r"testA/A0.png is 16x20 and .*testA/A1.png is 16x24 after "
                                         r"data.preprocess=none\. Batch one image at a time \(data.batch_size=1"):
        next(iter(batched.test_dataloader()))
    with caplog.at_level("INFO"):
        grid = dm.sample_batch(3)
    assert [Path(p).name for p in grid["A_path"]] == ["A0.png", "A2.png"]
    assert "A1.png" in caplog.text
    # One output size: the batch stacks as before.
    assert module(UnpairedDataModule, root, eval_batch_size=3).sample_batch(3)["A"].shape == (3, 3, 8, 8)


# -- paired ----------------------------------------------------------------------------------


def make_aligned(root: Path, splits=("train", "test"), n=2, half=(10, 8)) -> Path:
    for split in splits:
        for k in range(n):
            pixels = np.zeros((half[1], 2 * half[0], 3), np.uint8)
            pixels[:, : half[0]] = RED
            pixels[:, half[0] :] = BLUE
            (root / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / split / f"{k}.jpg", quality=100)
    return root


def test_aligned_pairs_split_left_a_right_b(tmp_path):
    root = make_aligned(tmp_path / "facades", splits=("train", "val"))  # no test/: val/ is used
    for direction, (src, tgt) in {"AtoB": (0, 2), "BtoA": (2, 0)}.items():
        dm = module(PairedDataModule, root, preprocess="none", direction=direction)
        assert dm.paired is True
        batch = dm.sample_batch(2)
        assert batch["A"].shape == (2, 3, 8, 8)
        assert "val" in batch["A_path"][0] and batch["A_path"] == batch["B_path"]
        # red is (1, -1, -1) in [-1, 1]; the dominant channel tells the half apart
        assert batch["A"][:, src].mean() > 0.9 and batch["A"][:, tgt].mean() < -0.9
        assert batch["B"][:, tgt].mean() > 0.9 and batch["B"][:, src].mean() < -0.9


def test_an_odd_width_a_b_image_splits_into_equal_halves_without_its_last_column():
    """Otherwise B's half would be a column wider, and squeezed to A's size: a pixel-shifted pair."""
    from PIL import Image
    from src.data.paired import split_side_by_side
    image = Image.new("RGB", (9, 4), (255, 0, 0))
    image.paste((0, 0, 255), (4, 0, 8, 4))   # B: columns 4..7; column 8 is the odd one
    image.paste((0, 255, 0), (8, 0, 9, 4))
    left, right = split_side_by_side(image)
    assert left.size == right.size == (4, 4)
    assert set(right.getdata()) == {(0, 0, 255)}


def test_cached_aligned_pairs_decode_each_file_once_and_give_the_same_pairs(tmp_path, monkeypatch):
    from src.data import paired
    from src.data.epoch_order import SeededItems
    root = make_aligned(tmp_path / "facades", n=3)
    opened = []
    original = paired.open_image
    monkeypatch.setattr(paired, "open_image", lambda path, *a: opened.append(path) or original(path, *a))
    plain, cached = (module(PairedDataModule, root, preprocess="crop", crop_size=6, cache_decoded=c) for c in (False, True))
    pairs = [[SeededItems(dm.dataset("train", train=True))[i, seed] for dm in (plain, cached)]
             for seed in (1, 2) for i in range(3)]
    assert all(torch.equal(a[key], b[key]) for a, b in pairs for key in ("A", "B"))
    assert len(opened) == 2 * 3 + 3   # cached: each file once


def test_a_decoded_cache_past_half_the_memory_is_said_at_setup(tmp_path, monkeypatch, caplog):
    """It keeps every decoded training image in each loader process, with no cap (FFHQ at 1024 px:
    220 GB a process): estimated from the first item and said where it passes half the memory."""
    from src.data import base
    root = make_aligned(tmp_path / "facades", n=3)
    for memory, said in ((2 * 2 * 3 * 480 + 1, False), (2 * 2 * 3 * 480 - 1, True)):
        monkeypatch.setattr(base, "physical_memory_bytes", lambda: memory)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="src.data.base"):
            module(PairedDataModule, root, preprocess="crop", crop_size=6, cache_decoded=True, num_workers=2).setup("fit")
        # the decoded halves (10 x 8 px RGB each: 480 bytes, before the 6 px crop) x 3 items x 2 processes
        assert ("data.cache_decoded=true keeps every decoded training image in each of 2 loader process(es) on this "
                "machine: about 0.0 GB for 3 items of 0.00 MB decoded, with 0.0 GB of memory for this process (the "
                "machine's, or its container's or job's limit). Set ++data.cache_decoded=false" in caplog.text) == said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="src.data.base"):   # without the cache: nothing kept, nothing said
        module(PairedDataModule, root, preprocess="crop", crop_size=6, num_workers=2).setup("fit")
    assert "cache_decoded" not in caplog.text


def test_two_photo_folders_under_train_are_not_cut_in_half_as_aligned_pairs(tmp_path):
    """`train/` makes `auto` pick the aligned layout, which walks subfolders: train/A and train/B
    of whole photos trained on each one's left half against its right half."""
    root = tmp_path / "mine"
    for split in ("train", "test"):
        for domain in ("A", "B"):
            write_image(root / split / domain / "x.png", color=RED)
    dm = module(PairedDataModule, root, preprocess="none")
    with pytest.raises(DatasetNotFoundError, match=r"mine/(train|test) holds A/ and B/ folders, and the aligned layout reads "
                                                   r"each image as A\|B side by side .* with \+\+data.layout=folders"):
        dm.sample_batch(1)


def test_folders_pairs_matched_by_name(tmp_path):
    root = tmp_path / "pairs"
    for split in ("train", "test"):
        for name in ("x", "y"):
            write_image(root / f"{split}A" / f"{name}.png", color=RED)
            write_image(root / f"{split}B" / f"{name}.jpg", color=BLUE)
    dm = module(PairedDataModule, root, layout="auto")
    assert dm.resolved_layout() == "folders"
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert Path(batch["A_path"][0]).stem == Path(batch["B_path"][0]).stem
    assert batch["A"][0, 0].mean() > 0.9 and batch["B"][0, 2].mean() > 0.9


def test_missing_partner_names_the_file(tmp_path):
    root = tmp_path / "pairs"
    for split in ("train", "test"):
        write_image(root / f"{split}A" / "x.png")
        write_image(root / f"{split}B" / "x.png")
    write_image(root / "trainA" / "lonely.png")
    dm = module(PairedDataModule, root)
    with pytest.raises(MissingPartnerError, match="lonely.png"):
        dm.setup("fit")
    # Two files of one name in a folder: which one x.png in the other folder pairs with is unclear.
    (root / "trainA" / "lonely.png").unlink()
    write_image(root / "trainA" / "x.jpg")
    with pytest.raises(MissingPartnerError, match=r"trainA/x.jpg and .*trainA/x.png share the name 'x'|"
                                                  r"trainA/x.png and .*trainA/x.jpg share the name 'x'"):
        module(PairedDataModule, root).setup("fit")


def test_pair_gets_identical_random_transform(tmp_path):
    root = tmp_path / "pairs"
    for split in ("train", "test"):
        for k in range(3):
            write_image(root / f"{split}A" / f"{k}.png", size=(30, 24), seed=k)
            write_image(root / f"{split}B" / f"{k}.png", size=(30, 24), seed=k)
    dm = module(PairedDataModule, root, preprocess="resize_and_crop", load_size=20, crop_size=10, flip=True)
    dm.setup("fit")
    torch.manual_seed(0)
    for _ in range(4):
        for batch in dm.train_dataloader():
            assert torch.equal(batch["A"], batch["B"])


def test_pair_partner_of_other_size_and_channels(tmp_path):
    transform = ImageTransform("crop", 16, 8, flip=True, train=True)
    image = np.random.default_rng(0).integers(0, 256, (12, 14, 3), dtype=np.uint8)
    partner = np.ascontiguousarray(image[::2, ::2, :1])  # half the size, one channel
    a, b = transform.pair(image, partner, seed=5)
    assert a.shape == (3, 8, 8) and b.shape == (1, 8, 8)
    # The shared crop covers the same content in both: a smooth image and its half-size copy
    # (a partner resized the other way round, or cropped elsewhere, would differ by far more).
    rows, cols = np.meshgrid(np.arange(12), np.arange(14), indexing="ij")
    smooth = np.repeat((rows * 15 + cols * 4).astype(np.uint8)[:, :, None], 3, axis=2)
    half = np.array(Image.fromarray(smooth).resize((7, 6), Image.Resampling.BILINEAR))
    transposed = np.ascontiguousarray(half.transpose(1, 0, 2))   # 7 x 6: same pixels, other layout
    for seed in range(4):
        a, b = transform.pair(smooth, half, seed=seed)
        assert (a - b).abs().mean() < 0.1, seed   # in [-1, 1]: a few grey levels apart
    with pytest.raises(ValueError, match=r"its partner is 6x7 px, another shape than its 14x12 px"):
        transform.pair(smooth, transposed, seed=0)   # squashed onto it, it matched nothing


# -- image modes ------------------------------------------------------------------------------


def test_image_modes(tmp_path):
    gradient16 = (np.arange(32 * 16).reshape(16, 32) * 128).astype(np.uint16)  # 0 .. 65408
    images = {
        "gray.png": Image.fromarray(np.full((6, 8), 100, np.uint8), mode="L"),
        "rgba.png": Image.new("RGBA", (8, 6), (10, 10, 10, 0)),  # fully transparent
        "palette.png": Image.new("RGB", (8, 6), (0, 200, 0)).convert("P", palette=Image.Palette.ADAPTIVE),
        "cmyk.jpg": Image.new("CMYK", (8, 6), (0, 0, 0, 0)),
        "deep.png": Image.fromarray(gradient16),
        "la.png": Image.new("LA", (8, 6), (30, 0)),
    }
    for name, image in images.items():
        image.save(tmp_path / name)
    for name in images:
        for channels in (1, 3):
            array = load_image(tmp_path / name, channels)
            assert array.dtype == np.uint8 and array.shape[2] == channels
            assert array.shape[:2] in ((6, 8), (16, 32))
    assert load_image(tmp_path / "gray.png", 3)[0, 0].tolist() == [100, 100, 100]
    assert load_image(tmp_path / "rgba.png", 3)[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert load_image(tmp_path / "la.png", 1)[0, 0, 0] == 255
    assert load_image(tmp_path / "palette.png", 3)[0, 0].tolist() == [0, 200, 0]
    assert load_image(tmp_path / "cmyk.jpg", 3).min() >= 250  # CMYK 0,0,0,0 is white
    deep = load_image(tmp_path / "deep.png", 1)[..., 0]
    assert deep.min() == 0 and deep.max() >= 254  # scaled to 8 bit, not clipped at 255
    assert len(np.unique(deep)) > 200
    with pytest.raises(ValueError, match="data.input_nc"):
        load_image(tmp_path / "gray.png", 2)


def test_a_mode_that_converts_to_rgb_only_is_read_as_grayscale_through_rgb(tmp_path):
    """CIELAB TIFFs convert to RGB but not to grayscale: data.input_nc=1 stopped with PIL's bare
    "conversion from LAB to L not supported", naming no file."""
    Image.new("LAB", (8, 6), (200, 90, 160)).save(tmp_path / "lab.tif")
    colour = load_image(tmp_path / "lab.tif", 3)
    grey = load_image(tmp_path / "lab.tif", 1)
    expected = np.array(Image.fromarray(colour).convert("L"))
    assert grey.shape == (6, 8, 1) and np.array_equal(grey[..., 0], expected)


def test_a_transparent_colour_reads_white_like_alpha(tmp_path):
    """PNG's tRNS marks one stored grey or RGB value transparent, as a palette entry can be: its
    pixels are composited on white like alpha, with a colour profile converted, and in 16-bit
    files at 16 bits and at data.bit_depth=12 alike; the other pixels keep their value."""
    rgb = Image.new("RGB", (4, 2), (1, 2, 3))
    rgb.putpixel((3, 1), (90, 60, 30))
    rgb.save(tmp_path / "rgb.png", transparency=(1, 2, 3))
    rgb.save(tmp_path / "rgb_profile.png", transparency=(1, 2, 3), icc_profile=rgb_profile_with_red_and_blue_swapped())
    grey = Image.new("L", (4, 2), 5)
    grey.putpixel((3, 1), 77)
    grey.save(tmp_path / "grey.png", transparency=5)
    grey.save(tmp_path / "grey_profile.png", transparency=5, icc_profile=linear_gray_profile())
    deep = np.full((2, 4, 3), 4000, np.uint16)
    deep[1, 3] = (1000, 2000, 3000)
    write_png_16(tmp_path / "deep.png", deep, before_pixels=png_chunk(b"tRNS", struct.pack(">3H", 4000, 4000, 4000)))
    write_png_16(tmp_path / "deep_grey.png", deep[..., :1], before_pixels=png_chunk(b"tRNS", struct.pack(">H", 4000)))
    kept = {"rgb.png": [90, 60, 30], "rgb_profile.png": [30, 60, 90], "grey.png": [77] * 3, "deep.png": [3, 7, 11],
            "deep_grey.png": [3] * 3}
    for name, bit_depth in [(name, 16) for name in ("rgb.png", "rgb_profile.png", "grey.png", "grey_profile.png",
                                                    "deep.png", "deep_grey.png")] + [("deep.png", 12),
                                                                                     ("deep_grey.png", 12)]:
        read = load_image(tmp_path / name, 3, bit_depth=bit_depth).astype(int)
        assert (read[0] == 255).all() and (read[1, :3] == 255).all(), (name, bit_depth)
        if name in kept and bit_depth == 16:
            assert np.abs(read[1, 3] - kept[name]).max() <= 2, name
    assert load_image(tmp_path / "deep.png", 3, bit_depth=12)[1, 3].tolist() == [62, 125, 187]
    assert load_image(tmp_path / "deep_grey.png", 1, bit_depth=12)[1, 3].tolist() == [62]

def test_12_bit_data_read_as_16_bit_says_once_which_bit_depth_fills_the_range(tmp_path, monkeypatch, caplog):
    from src.data import bit_depth
    monkeypatch.setattr(bit_depth, "_told_of_unused_top_bits", False)
    twelve = (np.arange(16 * 16).reshape(16, 16) * 16).astype(np.uint16)   # 0 .. 4080
    Image.fromarray(twelve).save(tmp_path / "scan.png")
    Image.fromarray(twelve * 16).save(tmp_path / "full.png")   # the whole 16-bit range
    with caplog.at_level(logging.WARNING, logger="src.data.bit_depth"):
        load_image(tmp_path / "full.png", 1)
        load_image(tmp_path / "scan.png", 1, bit_depth=12)
        assert not caplog.records
        load_image(tmp_path / "scan.png", 1)
        load_image(tmp_path / "scan.png", 1)
    (record,) = caplog.records
    assert record.getMessage() == (f"{tmp_path / 'scan.png'}: its 16-bit samples all lie in 0..4080, so it reads nearly "
                                   "black (at most 16 of 255). If the files hold 12-bit data, read them at that depth "
                                   "(++data.bit_depth=12 to train.py or eval.py, --bit-depth 12 to python -m "
                                   "src.data.check_images or src.data.convert_images; translate.py reads at its "
                                   "checkpoint's bit depth); a dark image is read as it is. (Said once per process.)")


def test_12_bit_data_in_16_bit_files_is_read_at_its_bit_depth(tmp_path):
    """A scanner's 12-bit values stored in 16-bit PNGs: read as 16-bit data they stay dark (at
    most 16 of 255); with data.bit_depth=12 they fill 0..255, in the datasets as in load_image;
    a value beyond the declared depth names the file and the setting instead of being clipped."""
    twelve = (np.arange(16 * 16).reshape(16, 16) * 16).astype(np.uint16)   # 0 .. 4080
    twelve[-1, -1] = 4095
    for split in ("train", "test"):
        for domain in "AB":
            (tmp_path / "scans" / f"{split}{domain}").mkdir(parents=True)
            Image.fromarray(twelve).save(tmp_path / "scans" / f"{split}{domain}" / "scan.png")
    path = tmp_path / "scans" / "testA" / "scan.png"
    assert load_image(path, 1).max() == 16
    assert load_image(path, 1, bit_depth=12).max() == 255 and load_image(path, 1, bit_depth=12).min() == 0
    dm = module(UnpairedDataModule, tmp_path / "scans", input_nc=1, output_nc=1, preprocess="none", flip=False,
                bit_depth=12)
    dm.setup("fit")
    assert dm.test_dataloader().dataset[0]["A"].max() == 1.0   # 4095 -> 255 -> 1 in [-1, 1]
    with pytest.raises(ImageReadError, match=r"scan.png: values 0..4095 lie outside the 10-bit range 0..1023: "
                                             r"set data.bit_depth"):
        load_image(path, 1, bit_depth=10)
    for wrong in (7, 17, "12"):
        with pytest.raises(ValueError, match=f"data.bit_depth={wrong!r}"):
            module(UnpairedDataModule, tmp_path / "scans", bit_depth=wrong)


def test_12_bit_colour_in_16_bit_files_is_read_at_its_bit_depth(tmp_path):
    """12-bit colour in 16-bit PNG and TIFF files (RGB, RGBA, grey with alpha; uncompressed and
    OpenCV's LZW): PIL alone keeps each sample's high byte, so they stay at most 15 of 255; with
    bit_depth=12 they fill 0..255, with alpha kept at 16 bits (a transparent pixel reads white),
    in the datasets (A|B halves too) as in load_image."""
    twelve = np.random.default_rng(0).integers(0, 4096, (8, 8, 3)).astype(np.uint16)   # sides a multiple of 4
    twelve[0, 0] = 4095
    expected = np.rint(twelve * (255 / 4095)).astype(np.uint8)
    alpha = np.full((8, 8, 1), 65535, np.uint16)
    alpha[-1, -1] = 0
    files = {
        "rgb.png": write_png_16(tmp_path / "rgb.png", twelve),
        "rgba.png": write_png_16(tmp_path / "rgba.png", np.concatenate([twelve, alpha], 2)),
        "grey_alpha.png": write_png_16(tmp_path / "grey_alpha.png", np.concatenate([twelve[..., :1], alpha], 2)),
        "rgb.tif": write_tiff_16(tmp_path / "rgb.tif", twelve),
        "rgba.tif": write_tiff_16(tmp_path / "rgba.tif", np.concatenate([twelve, alpha], 2)),
    }
    cv2.imwrite(str(tmp_path / "lzw.tif"), np.ascontiguousarray(twelve[..., ::-1]))   # OpenCV writes BGR, LZW
    files["lzw.tif"] = tmp_path / "lzw.tif"
    for name, path in files.items():
        channels = 1 if name.startswith("grey") else 3
        for bit_depth, values in ((16, twelve >> 8), (12, expected)):   # as 16-bit data: dark
            want = values[..., :channels].astype(np.uint8)
            if "alpha" in name or "rgba" in name:
                want[-1, -1] = 255   # transparent -> white
            assert np.array_equal(load_image(path, channels, bit_depth=bit_depth), want), (name, bit_depth)
    # the datasets pass data.bit_depth on, the A|B loader included
    root = tmp_path / "aligned"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        write_png_16(root / split / "0.png", np.concatenate([twelve, twelve[..., ::-1]], 1))
    dm = module(PairedDataModule, root, preprocess="none", flip=False, bit_depth=12)
    dm.setup("fit")
    item = dm.dataset("test")[0]
    for key, half in (("A", expected), ("B", expected[..., ::-1])):
        assert torch.allclose(item[key], torch.from_numpy(half.copy()).permute(2, 0, 1) / 127.5 - 1, atol=1e-6), key
    # a value beyond the declared depth names the file and the setting
    over = twelve.copy()
    over[1, 1, 1] = 4096
    with pytest.raises(ImageReadError, match=r"over.png: values \d+..4096 lie outside the 12-bit range 0..4095: "
                                             r"set data.bit_depth"):
        load_image(write_png_16(tmp_path / "over.png", over), 3, bit_depth=12)


def test_16_bit_colour_read_at_its_bit_depth_keeps_orientation_and_colour_profile(tmp_path):
    """The file's EXIF orientation turns the picture as it does at 16 bits (a PNG's eXIf chunk
    before or after the pixels; each of a TIFF's 8), and its embedded profile converts its
    colours. A file OpenCV cannot decode names itself and the fix."""
    twelve = np.random.default_rng(1).integers(0, 4096, (6, 8, 3)).astype(np.uint16)
    expected = np.rint(twelve * (255 / 4095)).astype(np.uint8)
    # How each orientation turns the stored picture to view it (6: 90 degrees clockwise); PIL's
    # reading at 16 bits (the high bytes) must be turned the same way.
    turns = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
             7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}
    files = [(write_png_16(tmp_path / f"{where}.png", twelve, **{where: exif_chunk(6)}), 6)
             for where in ("before_pixels", "after_pixels")]
    files += [(write_tiff_16(tmp_path / f"o{orientation}.tif", twelve, orientation), orientation)
              for orientation in turns]
    for path, orientation in files:
        assert np.array_equal(load_image(path, 3, bit_depth=12), turns[orientation](expected)), path.name
        assert np.array_equal(load_image(path, 3), turns[orientation](twelve >> 8)), path.name
    cut = tmp_path / "cut.png"
    cut.write_bytes(write_png_16(tmp_path / "whole.png", twelve).read_bytes()[:-40])   # pixel data cut short
    with pytest.raises(ImageReadError, match=r"cut.png: OpenCV cannot decode .*data.bit_depth=16 to train.py or "
                                             r"eval.py, --bit-depth 16 to python -m src.data.check_images"):
        load_image(cut, 3, bit_depth=12)
    # At 16 bits, OpenCV reads a file for its transparent colour alone: reading at 16 bits is no fix
    cut.write_bytes(write_png_16(tmp_path / "whole.png", twelve, before_pixels=png_chunk(
        b"tRNS", struct.pack(">3H", 1, 2, 3))).read_bytes()[:-40])
    with pytest.raises(ImageReadError, match=r"cut.png: OpenCV cannot decode .*: replace the file, or remove its "
                                             r"transparent colour \(a PNG's tRNS chunk\)") as refusal:
        load_image(cut, 3)
    assert "bit_depth" not in str(refusal.value)
    red = np.zeros((4, 4, 3), np.uint16)
    red[..., 0] = 4095
    path = write_png_16(tmp_path / "profile.png", red, before_pixels=icc_chunk(rgb_profile_with_red_and_blue_swapped()))
    read = load_image(path, 3, bit_depth=12).astype(int)
    assert read[..., 2].min() >= 250 and read[..., :2].max() <= 5   # stored red is the profile's blue
    assert np.array_equal(load_image(path, 3, bit_depth=12, to_srgb=False)[0, 0], [255, 0, 0])


def test_colour_samples_pil_cannot_read_are_named_instead_of_called_broken(tmp_path):
    """A valid TIFF of float (HDR) or 32-bit integer colour samples, which PIL cannot open, is
    named as such with the fix; a file that is no image keeps the replace-the-file message."""
    samples = np.random.default_rng(0).random((4, 6, 3), dtype=np.float32)
    cv2.imwrite(str(tmp_path / "hdr.tif"), samples)
    cv2.imwrite(str(tmp_path / "counts.tif"), (samples * 1000).astype(np.int32))
    for name, held in (("hdr.tif", "3-channel float32"), ("counts.tif", "3-channel int32")):
        with pytest.raises(ImageReadError, match=f"{name}: it holds {held} samples, which PIL cannot read. "
                                                 f"Convert it to 8- or 16-bit integer sRGB images"):
            load_image(tmp_path / name, 3)
    (tmp_path / "notes.tif").write_bytes(b"II*\0 not really a TIFF")
    with pytest.raises(ImageReadError, match="notes.tif: cannot identify image file .*Delete or replace the file"):
        load_image(tmp_path / "notes.tif", 3)


@pytest.mark.parametrize("refusal", [PermissionError(13, "Permission denied"), OSError(5, "Input/output error")])
def test_a_read_the_system_refuses_is_not_called_a_broken_file(tmp_path, monkeypatch, refusal):
    """A file this user may not read, or a network file system's I/O error: the advice to
    delete the file would destroy a whole one."""
    import src.data.image_io as image_io
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")

    def refuse(*args, **kwargs):
        raise refusal
    monkeypatch.setattr(image_io.Image, "open", refuse)
    with pytest.raises(ImageReadError, match=r"a.png: the system refused the read \(\[Errno \d+\] .*permissions") as caught:
        load_image(tmp_path / "a.png", 3)
    assert "Delete" not in str(caught.value)
    monkeypatch.setattr(image_io.Image, "open", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(MemoryError):
        load_image(tmp_path / "a.png", 3)

def test_float_grey_samples_are_read_as_0_to_1_and_others_refused(tmp_path):
    """A depth map in metres was stretched from its own min to its own max: every image on a
    scale of its own. Float samples are read as 0..1, and values beyond are an error naming the
    file and the fix."""
    Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32), mode="F").save(tmp_path / "unit.tif")
    assert load_image(tmp_path / "unit.tif", 1)[..., 0].tolist() == [[0, 128], [255, 64]]
    Image.fromarray(np.array([[0.5, 2.0], [7.5, 1.0]], np.float32), mode="F").save(tmp_path / "metres.tif")
    with pytest.raises(ImageReadError, match=r"metres.tif: float samples 0.5..7.5 lie outside 0..1, .* store them as "
                                             r"16-bit integers \(with data.bit_depth\)"):
        load_image(tmp_path / "metres.tif", 1)


def test_colours_in_an_embedded_icc_profile_are_read_as_srgb(tmp_path):
    """Pixels stored in a profile whose red and blue primaries are swapped: the stored
    (255, 0, 0) is sRGB blue. They are read as blue in every mode that carries colour (alpha
    kept apart, palette entries converted), a linear grey profile's 128 as sRGB's 188 (with or
    without alpha), a CMYK press profile's colours as its table says, and with to_srgb=False, in
    load_image as in the datasets, as the stored values."""
    swapped, gray = rgb_profile_with_red_and_blue_swapped(), linear_gray_profile()
    rgba = Image.new("RGBA", (8, 6), RED + (255,))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    images = {
        "rgb.png": (Image.new("RGB", (8, 6), RED), swapped),
        "rgb.jpg": (Image.new("RGB", (8, 6), RED), swapped),
        "rgb.heic": (Image.new("RGB", (8, 6), RED), swapped),
        "rgba.png": (rgba, swapped),
        "palette.png": (Image.new("RGB", (8, 6), RED).convert("P", palette=Image.Palette.ADAPTIVE), swapped),
        "gray.png": (Image.new("L", (8, 6), 128), gray),
        "gray_alpha.png": (Image.new("LA", (8, 6), (128, 255)), gray),
        "cmyk.jpg": (Image.new("CMYK", (8, 6), (0, 0, 0, 0)), cmyk_profile_that_prints_everything_black()),
    }
    for name, (image, profile) in images.items():
        image.save(tmp_path / name, icc_profile=profile)
    assert load_image(tmp_path / "rgb.png", 3)[2, 3].tolist() == list(BLUE)
    assert load_image(tmp_path / "rgb.png", 3, to_srgb=False)[2, 3].tolist() == list(RED)
    assert load_image(tmp_path / "rgb.jpg", 3)[2, 3].argmax() == 2
    assert load_image(tmp_path / "rgb.heic", 3)[2, 3].argmax() == 2
    assert load_image(tmp_path / "rgba.png", 3)[0, 0].tolist() == [255, 255, 255]   # transparent -> white
    assert load_image(tmp_path / "rgba.png", 3)[2, 3].tolist() == list(BLUE)
    assert load_image(tmp_path / "palette.png", 3)[2, 3].tolist() == list(BLUE)
    assert load_image(tmp_path / "gray.png", 1)[2, 3, 0] == 188
    assert load_image(tmp_path / "gray.png", 1, to_srgb=False)[2, 3, 0] == 128
    assert load_image(tmp_path / "gray_alpha.png", 1)[2, 3, 0] == 188
    assert load_image(tmp_path / "cmyk.jpg", 3).max() == 0   # the profile's black, where PIL alone gives white
    assert load_image(tmp_path / "cmyk.jpg", 3, to_srgb=False).min() >= 250
    for split in ("train", "test"):
        for domain in "AB":
            (tmp_path / "p3" / f"{split}{domain}").mkdir(parents=True)
            images["rgb.png"][0].save(tmp_path / "p3" / f"{split}{domain}" / "red.png", icc_profile=swapped)
    for to_srgb, colour in ((True, BLUE), (False, RED)):
        dm = module(UnpairedDataModule, tmp_path / "p3", preprocess="none", flip=False, to_srgb=to_srgb)
        dm.setup("fit")
        assert dm.test_dataloader().dataset[0]["A"][:, 0, 0].tolist() == [1.0 if c else -1.0 for c in colour]


def test_a_profile_written_from_srgbs_description_converts_sRGB_to_itself(tmp_path):
    """The profile maths (colourants adapted to D50, the sRGB tone curve) against littlecms's own
    sRGB: a random image in a profile built from sRGB's chromaticities reads back unchanged."""
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "srgb.png",
                                 icc_profile=rgb_profile(SRGB_RED, SRGB_GREEN, SRGB_BLUE, D65_WHITE, SRGB_CURVE))
    assert np.abs(load_image(tmp_path / "srgb.png", 3).astype(int) - pixels).max() <= 1


def test_an_srgb_profile_costs_no_conversion_per_image(tmp_path, monkeypatch):
    """A profile that converts every probe colour to itself (sRGB, as editors embed it) is found
    out once, when its transform is built; its images are then read as stored, without running
    the transform per item. Another profile's images are converted on every read."""
    from src.data import image_io

    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    srgb = rgb_profile(SRGB_RED, SRGB_GREEN, SRGB_BLUE, D65_WHITE, SRGB_CURVE)
    Image.fromarray(pixels).save(tmp_path / "srgb.png", icc_profile=srgb)
    Image.fromarray(pixels).save(tmp_path / "swapped.png", icc_profile=rgb_profile_with_red_and_blue_swapped())
    image_io._transform_to_srgb.cache_clear()
    calls = []
    apply_transform = image_io.ImageCms.applyTransform
    monkeypatch.setattr(image_io.ImageCms, "applyTransform", lambda *args: calls.append(1) or apply_transform(*args))
    for _ in range(3):
        assert np.array_equal(load_image(tmp_path / "srgb.png", 3), pixels)
    assert len(calls) == 1   # the probe, when the transform was built
    for _ in range(3):
        load_image(tmp_path / "swapped.png", 3)
    assert len(calls) == 1 + 1 + 3


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055) * 255


def srgb_decode(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.float64) / 255
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4)


def test_a_heif_photo_in_display_p3_by_its_nclx_colour_information_is_read_as_srgb(tmp_path):
    """Phones other than Apple's describe a HEIF's colours by number (nclx: primaries 12 =
    Display P3, transfer 13 = the sRGB curve) instead of an ICC profile. The colour comes out as
    the published P3 -> sRGB matrix (in linear light) says; sRGB's own numbers stay as stored;
    an HDR transfer (PQ) names the file and the setting."""
    stored = (200, 100, 50)
    nclx = {"color_primaries": 12, "transfer_characteristics": 13, "matrix_coefficients": 0, "full_range_flag": 1}
    Image.new("RGB", (16, 16), stored).save(tmp_path / "p3.heic", quality=-1, nclx_profile=nclx)
    p3_to_srgb = np.array([[1.2249401, -0.2249404, 0.0], [-0.0420569, 1.0420571, 0.0],
                           [-0.0196376, -0.0786361, 1.0982735]])
    expected = srgb_encode(p3_to_srgb @ srgb_decode(stored))
    assert np.abs(load_image(tmp_path / "p3.heic", 3)[8, 8] - expected).max() <= 2
    assert np.abs(load_image(tmp_path / "p3.heic", 3, to_srgb=False)[8, 8].astype(int) - stored).max() <= 2
    srgb = {**nclx, "color_primaries": 1}
    Image.new("RGB", (16, 16), stored).save(tmp_path / "srgb.heic", quality=-1, nclx_profile=srgb)
    assert np.abs(load_image(tmp_path / "srgb.heic", 3)[8, 8].astype(int) - stored).max() <= 2
    Image.new("RGB", (16, 16), stored).save(tmp_path / "pq.heic", quality=-1,
                                            nclx_profile={**nclx, "color_primaries": 9, "transfer_characteristics": 16})
    with pytest.raises(ImageReadError, match=r"pq.heic: its nclx colour information has transfer characteristics 16 "
                                             r".*data.to_srgb=false"):
        load_image(tmp_path / "pq.heic", 3)


def test_a_profile_that_does_not_fit_the_pixels_names_the_file_and_the_setting(tmp_path):
    Image.new("L", (8, 6), 128).save(tmp_path / "gray.png", icc_profile=rgb_profile_with_red_and_blue_swapped())
    Image.new("RGB", (8, 6), RED).save(tmp_path / "broken.png", icc_profile=b"not a profile")
    for name in ("gray.png", "broken.png"):
        with pytest.raises(ImageReadError, match=f"{name}: its embedded ICC colour profile .*data.to_srgb=false to "
                                                 f"train.py, eval.py or python -m src.data.check_images data=NAME; "
                                                 f"--keep-stored-colours to check_images or src.data.convert_images "
                                                 f"given folders; translate.py"):
            load_image(tmp_path / name, 3)
        assert load_image(tmp_path / name, 3, to_srgb=False).shape == (6, 8, 3)
    with pytest.raises(ValueError, match="data.to_srgb='yes'"):
        module(UnpairedDataModule, tmp_path, to_srgb="yes")


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif", ".heic", ".avif"])
def test_photos_are_turned_upright_by_their_exif_orientation(tmp_path, suffix):
    # Stored 16 rows x 24 columns, the left 8 columns white (8x8-aligned, so JPEG keeps the edge).
    # Orientation 6 means "turn 90 degrees clockwise to view": 24 rows x 16 columns, the top 8
    # rows white. Orientation 1 (upright) and no tag keep the stored picture.
    stored = np.zeros((16, 24, 3), np.uint8)
    stored[:, :8] = 255
    for orientation in (6, 1, None):
        path = tmp_path / f"photo_{orientation}{suffix}"
        exif = Image.Exif()
        if orientation is not None:
            exif[ExifTags.Base.Orientation] = orientation
        quality = {".jpg": 100, ".avif": 100, ".heic": -1}   # -1: lossless
        # As bytes: pillow-heif then writes the orientation as HEIF's own rotation, as phones do (the
        # rotation is what HEIF readers apply; its reader resets the EXIF tag).
        Image.fromarray(stored).save(path, exif=exif.tobytes(),
                                     **({"quality": quality[suffix]} if suffix in quality else {}))
        array = load_image(path, 3).astype(int)
        if orientation == 6:
            assert array.shape == (24, 16, 3) and upright_size(path) == (24, 16)
            assert array[:8].mean() > 250 and array[8:].mean() < 5
        else:
            assert array.shape == (16, 24, 3) and upright_size(path) == (16, 24)
            assert np.abs(array - stored).max() <= 8


def test_a_folder_is_converted_once_into_upright_srgb_jpegs_at_a_short_side(tmp_path, capsys):
    """convert_images reads each image as the datasets do (a HEIC turned by its rotation, a
    transparent PNG on white), shrinks it to the short side (never enlarges) and writes it under
    the same path inside the output folder; it refuses collisions, existing files (unless told)
    and an output inside the input."""
    stored = np.zeros((16, 24, 3), np.uint8)
    stored[:, :8] = 255
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    (tmp_path / "in" / "day1").mkdir(parents=True)
    Image.fromarray(stored).save(tmp_path / "in" / "phone.heic", exif=exif.tobytes(), quality=-1)
    Image.new("RGBA", (40, 20), (0, 0, 0, 0)).save(tmp_path / "in" / "day1" / "logo.png")
    Image.new("RGB", (6, 4), RED).save(tmp_path / "in" / "small.png")
    assert convert_images.main([str(tmp_path / "in"), str(tmp_path / "out"), "--short-side", "8", "--workers", "2"]) == 0
    assert "Wrote 3 image(s)" in capsys.readouterr().out
    phone = load_image(tmp_path / "out" / "phone.jpg", 3).astype(int)
    assert phone.shape == (12, 8, 3) and phone[:3].min() > 240 and phone[-4:].max() < 15   # upright: white on top
    assert load_image(tmp_path / "out" / "day1" / "logo.jpg", 3).shape == (8, 16, 3)
    assert load_image(tmp_path / "out" / "day1" / "logo.jpg", 3).min() > 250   # transparent -> white
    small = load_image(tmp_path / "out" / "small.jpg", 3)
    assert small.shape == (4, 6, 3) and small[..., 0].min() > 240 and small[..., 1:].max() < 15
    with pytest.raises(FileExistsError, match="3 output file.*--overwrite"):
        convert_images.convert_images(tmp_path / "in", tmp_path / "out")
    written = convert_images.convert_images(tmp_path / "in", tmp_path / "out", image_format="png", channels=1,
                                            overwrite=True)
    assert load_image(tmp_path / "out" / "small.png", 3)[0, 0].tolist() == [76, 76, 76]   # red's luma, as stored
    assert sorted(path.name for path in written) == ["logo.png", "phone.png", "small.png"]
    with pytest.raises(ValueError, match="lies inside"):
        convert_images.convert_images(tmp_path / "in", tmp_path / "in" / "converted")
    Image.new("RGB", (6, 4), RED).save(tmp_path / "in" / "small.jpg")
    with pytest.raises(ValueError, match="small.jpg and .*small.png would both be written as .*out2/small.jpg"):
        convert_images.convert_images(tmp_path / "in", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    (tmp_path / "in" / "small.jpg").unlink()
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="broken.png"):   # named from a worker process too
        convert_images.convert_images(tmp_path / "in", tmp_path / "out3", workers=2)
    with pytest.raises(ValueError, match="--workers 0 must be at least 1"):
        convert_images.convert_images(tmp_path / "in", tmp_path / "out3", workers=0)


def test_convert_images_shrinks_with_the_kernel_asked_for(tmp_path):
    """--interpolation picks PIL's kernel (the run's data.resize_interpolation), bicubic unless told."""
    noise = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(noise).save(tmp_path / "in" / "noise.png")
    for kernel in ("bicubic", "bilinear"):
        args = [str(tmp_path / "in"), str(tmp_path / kernel), "--short-side", "8", "--format", "png"]
        assert convert_images.main(args + (["--interpolation", kernel] if kernel == "bilinear" else [])) == 0
        expected = Image.fromarray(noise).resize((12, 8), RESIZE_INTERPOLATIONS[kernel])
        assert np.array_equal(np.asarray(Image.open(tmp_path / kernel / "noise.png")), np.asarray(expected))
    with pytest.raises(ValueError, match="--interpolation 'nearest' must be one of bicubic, bilinear"):
        convert_images.convert_images(tmp_path / "in", tmp_path / "out", interpolation="nearest")



def test_check_images_lists_every_unreadable_image_and_the_small_ones(tmp_path, capsys):
    """check_images reads every image under its folders as the datasets do (here in 2 processes):
    each unreadable one is listed with its reason, where a run stops at the first; the sizes are
    summed up, --min-side lists the small images, and the exit status says whether all is well."""
    # (a folder holding '=' is a folder, not a Hydra override)
    train, test = tmp_path / "date=2024-05-01" / "trainA", tmp_path / "date=2024-05-01" / "testA"
    write_image(train / "a.png", size=(20, 16))
    write_image(train / "day1" / "b.png", size=(40, 30))
    (train / "broken.jpg").write_bytes(b"not an image")
    cut = write_image(test / "cut.png", size=(20, 16))
    cut.write_bytes(cut.read_bytes()[:-30])   # its pixel data cut short
    scan = np.full((18, 18, 3), 4095, np.uint16)   # 12-bit data: beyond 10 bits
    write_png_16(test / "scan.png", scan)
    folders = [str(train), str(test)]
    assert check_images.main([*folders, "--workers", "2", "--min-side", "20", "--bit-depth", "10"]) == 1
    out = capsys.readouterr().out
    assert "Read 2 of 5 image(s).\nShorter sides 16..30 px; the largest image is 30x40 (height x width)." in out
    assert "3 image(s) cannot be read:" in out
    for reason in ("broken.jpg: cannot identify image file", "cut.png: image file is truncated",
                   "scan.png: values 4095..4095 lie outside the 10-bit range"):
        assert re.search(rf"\n  Cannot read image file \S+{reason}|\n  \S+{reason}", out), reason
    assert f"1 image(s) have a shorter side under --min-side 20:\n  {train / 'a.png'}: 16x20" in out
    (train / "broken.jpg").unlink()
    cut.unlink()
    assert check_images.main([*folders, "--bit-depth", "12", "--min-side", "16"]) == 0
    assert "Read 3 of 3 image(s).\nShorter sides 16..30 px" in capsys.readouterr().out
    assert check_images.check_images(folders, bit_depth=12).sizes[test / "scan.png"] == (18, 18)


def test_check_images_reads_a_data_configs_folders_with_its_settings(tmp_path, capsys):
    """Given Hydra overrides, check_images checks the train and test folders of the dataset the
    training config names, each domain with its channels, at the config's bit depth, and with
    preprocess=crop takes the crop size as --min-side; a missing folder gets the data modules'
    error (one line, as a bad option: no traceback), and the folder options are refused there
    instead of being ignored."""
    root = make_unpaired(tmp_path / "mine", size=(20, 16))
    write_image(root / "testB" / "big.png", size=(40, 30))
    write_png_16(root / "trainA" / "scan.png", np.full((18, 18, 3), 4095, np.uint16))   # 12-bit data
    data = ["data=horse2zebra", f"data.data_dir={root}"]
    assert check_images.main([*data, "+data.bit_depth=10", "data.preprocess=crop", "data.crop_size=18"]) == 1
    out = capsys.readouterr().out
    assert all(str(root / folder) in out.splitlines()[0] for folder in ("trainA", "trainB", "testA", "testB"))
    assert "Read 13 of 14 image(s)." in out and "scan.png: values 4095..4095 lie outside the 10-bit range" in out
    assert f"12 image(s) have a shorter side under --min-side 18:\n  {root / 'trainA' / 'A0.png'}: 16x20" in out
    assert check_images.main([*data, "+data.bit_depth=12", "data.input_nc=1"]) == 0
    assert "Read 14 of 14 image(s).\nShorter sides 16..30 px" in capsys.readouterr().out
    for overrides, message in [(["data=horse2zebra", f"data.data_dir={tmp_path / 'nowhere'}"],
                                 f"Dataset folder not found: {tmp_path / 'nowhere'}. Download it with"),
                                ([*data, "data.load_size=big"], "data.load_size='big' must be an integer"),
                                (["data=horse2zebr"], "data/horse2zebr"),
                                ([*data, "--bit-depth", "12"], "--bit-depth and --keep-stored-colours are for folders")]:
        with pytest.raises(SystemExit) as stop:
            check_images.main(overrides)
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_check_images_reads_a_labelled_datasets_class_folders(tmp_path, capsys, shared_data_dir):
    """A labelled dataset (data=class_folders) is checked class folder by class folder in both
    splits, with the config's channels; a class missing from the test split is named."""
    root = tmp_path / "labelled"
    for split, count in (("train", 3), ("test", 2)):
        for name in ("cat", "dog"):
            for i in range(count):
                write_image(root / split / name / f"{i}.png", size=(12, 10), seed=i)
    (root / "train" / "dog" / "broken.png").write_bytes(b"not a png")
    data = ["data=class_folders", f"data.data_dir={root}"]
    assert check_images.main([*data, "data.input_nc=1"]) == 1
    out = capsys.readouterr().out
    assert all(str(root / split / name) in out.splitlines()[0] for split in ("train", "test") for name in ("cat", "dog"))
    assert "Read 10 of 11 image(s)." in out and f"{root / 'train' / 'dog' / 'broken.png'}:" in out
    (root / "train" / "dog" / "broken.png").unlink()
    assert check_images.main([*data, "data.input_nc=1"]) == 0
    for path in (root / "test" / "dog").iterdir():
        path.unlink()
    (root / "test" / "dog").rmdir()
    with pytest.raises(SystemExit) as stop:
        check_images.main(data)
    assert stop.value.code == 2 and str(root / "test" / "dog") in capsys.readouterr().err
    assert check_images.main(["data=shapes_labelled", f"paths.data_dir={shared_data_dir}"]) == 0
    # a Hydra deletion is an override, not a folder
    assert check_images.main(["data=shapes_labelled", f"paths.data_dir={shared_data_dir}", "~data.flip"]) == 0
    with pytest.raises(SystemExit) as stop:   # a misspelt class: a usage error, not a traceback
        check_images.main(["data=shapes_labelled", "data._target_=src.data.shapes.ShapesLabeled"])
    assert stop.value.code == 2 and "data._target_=src.data.shapes.ShapesLabeled cannot be imported" in \
        capsys.readouterr().err
    # The time-series data holds no images: it was told to pass its (nonexistent) image folders,
    # or, of a CSV not there, that the CSV was missing; without model=rgan, that the default model's
    # data.resize_interpolation was none of its settings.
    for data, model in itertools.product(("sines", "csv_series"), (["model=rgan"], [])):
        with pytest.raises(SystemExit) as stop:
            check_images.main([f"data={data}", *model, f"paths.data_dir={tmp_path / 'none'}"])
        assert stop.value.code == 2 and f"data={data} holds no images (SequenceDataModule)" in capsys.readouterr().err


def test_the_folder_tools_name_a_missing_or_empty_folder_in_one_line(tmp_path, capsys):
    """A missing, empty or not-a-folder input is reported as a bad option is (exit status 2, the
    path in the message), not as a traceback."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for folder, message in [("missing", "No such file or directory"), ("empty", "No images found in"),
                            ("file.txt", "Not a directory")]:
        with pytest.raises(SystemExit) as stop:
            check_images.main([str(tmp_path / folder)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and str(tmp_path / folder) in err
    with pytest.raises(SystemExit) as stop:
        convert_images.main([str(tmp_path / "missing"), str(tmp_path / "out")])
    assert stop.value.code == 2 and f"{tmp_path / 'missing'}: no such folder" in capsys.readouterr().err


def write_photo(path: Path, width: int, height: int, orientation: int | None = None) -> Path:
    """A smooth JPEG photo stand-in (gradients and broad waves, which JPEG's DCT scaling keeps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    pixels = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x + 4 * y)], -1) * 255
    exif = Image.Exif()
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    Image.fromarray(pixels.round().astype(np.uint8)).save(path, quality=95, exif=exif)
    return path


def test_a_large_jpeg_decodes_at_reduced_scale_never_down_to_the_size_asked(tmp_path):
    photo = write_photo(tmp_path / "photo.jpg", 1024, 768)
    # (height, width) asked -> the largest of 1/1, 1/2, 1/4, 1/8 that keeps both sides above that:
    # exactly half is decoded whole, so the run's resize kernel, not the DCT's scaling, makes the
    # last step (as for a training size that is not such a fraction)
    for asked, decoded in (((100, 100), (256, 192)), ((50, 50), (128, 96)), ((400, 400), (1024, 768)),
                           ((384, 512), (1024, 768)), ((383, 511), (512, 384)), (None, (1024, 768))):
        assert open_image(photo, asked).size == decoded
    # asked in upright terms: a portrait stored 1024 x 768 and turned (orientation 6) is 768 wide
    turned = write_photo(tmp_path / "turned.jpg", 1024, 768, orientation=6)
    assert open_image(turned, (300, 200)).size == (384, 512)   # 1/2: 200 <= 384, 300 <= 512
    Image.open(photo).save(tmp_path / "photo.png")
    assert open_image(tmp_path / "photo.png", (50, 50)).size == (1024, 768)   # only JPEG has it
    # a camera's multi-picture JPEG (MPO): the same decoder, the same scaling and orientation
    with Image.open(turned) as picture:
        picture.save(tmp_path / "turned.mpo", format="MPO", save_all=True, append_images=[picture.copy()],
                     exif=picture.getexif())
    assert Image.open(tmp_path / "turned.mpo").format == "MPO"
    assert open_image(tmp_path / "turned.mpo", (300, 200)).size == (384, 512)
    assert upright_size(tmp_path / "turned.mpo") == (1024, 768)


@pytest.mark.parametrize("layout", ["unpaired", "aligned"])
def test_reduced_jpeg_decode_gives_the_full_decodes_items(tmp_path, layout):
    """Decoding a photo at 1/8 scale before the resize to 64 px gives what the full decode's resize
    does, up to rounding; only resize_and_crop, whose first resize has a fixed size, uses it."""
    root = tmp_path / layout
    for split in ("train", "test"):
        if layout == "unpaired":
            for domain in "AB":
                write_photo(root / f"{split}{domain}" / "p.jpg", 1024, 768)
        else:   # A|B side by side: each half is resized to 64, so the whole image to 64 x 128
            write_photo(root / split / "p.jpg", 2048, 768)
    cls = UnpairedDataModule if layout == "unpaired" else PairedDataModule
    items = {}
    for reduced in (True, False):
        dm = module(cls, root, load_size=64, crop_size=64, flip=False, reduced_jpeg_decode=reduced)
        dm.setup("fit")
        assert dm.eval_transform.decode_at_least == ((64, 64) if reduced else None)
        items[reduced] = dm.test_dataloader().dataset[0]
    for key in "AB":
        assert items[True][key].shape == items[False][key].shape == (3, 64, 64)
        difference = (items[True][key] - items[False][key]).abs()
        assert difference.mean() < 0.005 and difference.max() < 0.03   # of the [-1, 1] range: 0.7 and 4 levels
    assert module(cls, root, preprocess="scale_width", load_size=64, crop_size=64).train_transform.decode_at_least is None
    with pytest.raises(ValueError, match="data.reduced_jpeg_decode='yes' must be true or false"):
        module(cls, root, reduced_jpeg_decode="yes")


def test_each_half_of_a_side_by_side_jpeg_is_decoded_to_more_than_its_resize(tmp_path, monkeypatch):
    """An A|B JPEG whose halves come out of the DCT scaling at exactly the resize size (258 px wide
    at 1/2 is 129, whose halves are 64 when the last column goes) was never resized by the run's
    kernel; each half is decoded to more than it."""
    from src.data import paired
    write_photo(tmp_path / "ab" / "test" / "p.jpg", 258, 130)
    (tmp_path / "ab" / "train").mkdir()
    write_photo(tmp_path / "ab" / "train" / "p.jpg", 258, 130)
    widths, split = [], paired.split_side_by_side
    monkeypatch.setattr(paired, "split_side_by_side",
                        lambda image: [widths.append(half.width) or half for half in split(image)])
    dm = module(PairedDataModule, tmp_path / "ab", load_size=64, crop_size=64, flip=False)
    dm.setup("fit")
    assert dm.test_dataloader().dataset[0]["A"].shape == (3, 64, 64)
    assert widths and min(widths) > 64, widths


def test_an_output_folder_inside_the_input_is_found_where_the_disk_ignores_letter_case(tmp_path, monkeypatch):
    """macOS's disks ignore case and its resolved paths keep the case given: `photos/out` lay
    inside `Photos` unnoticed, and the next run read the outputs as inputs. A disk that ignores
    case is played here by a samefile that does."""
    from src.data.folders import lies_inside
    (tmp_path / "Photos").mkdir()
    assert lies_inside(tmp_path / "Photos" / "out", tmp_path / "Photos")
    assert not lies_inside(tmp_path / "photos" / "out", tmp_path / "Photos")   # this disk tells case apart
    assert not lies_inside(tmp_path / "elsewhere", tmp_path / "Photos")
    monkeypatch.setattr(os.path, "samefile", lambda a, b: str(a).lower() == str(b).lower())
    monkeypatch.setattr(Path, "exists", lambda self: str(self).lower().startswith(str(tmp_path / "photos").lower())
                        or self in tmp_path.parents or self == tmp_path)
    assert lies_inside(tmp_path / "photos" / "out", tmp_path / "Photos")
    assert not lies_inside(tmp_path / "elsewhere", tmp_path / "Photos")


def test_the_image_tools_start_a_process_per_cpu_the_job_may_use(monkeypatch):
    """On a 128-core node a SLURM job of 8 cores was given 128 decoding processes
    (os.cpu_count() counts the node)."""
    import argparse

    from src.data import folder_tools
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    parser = argparse.ArgumentParser()
    folder_tools.add_reading_arguments(parser)
    assert parser.parse_args([]).workers == 8
    # Windows' process pool takes at most 61 processes: the default on a larger machine, or a
    # --workers above it, was refused as a usage error
    assert folder_tools.pool_size(96, "win32") == 61 and folder_tools.pool_size(96, "linux") == 96
    assert folder_tools.pool_size(8, "win32") == 8


def test_grayscale_channels_in_batches(tmp_path):
    root = tmp_path / "gray"
    for folder in ("trainA", "trainB", "testA", "testB"):
        (root / folder).mkdir(parents=True)
        Image.fromarray(np.full((16, 16), 80, np.uint8), mode="L").save(root / folder / "0.png")
    dm = module(UnpairedDataModule, root, input_nc=1, output_nc=3)
    batch = dm.sample_batch(1)
    assert batch["A"].shape == (1, 1, 8, 8) and batch["B"].shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="data.output_nc"):
        module(UnpairedDataModule, root, output_nc=4)


# -- preprocessing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, expected_hw",
    [
        ("resize_and_crop", (16, 16)),  # train: 24x24 then crop 16; eval: straight to 16
        ("crop", (16, 16)),
        ("scale_width", (16, 24)),  # width -> 24, height int(24 * 45 / 67) = 16
        ("scale_width_and_crop", (16, 16)),
        ("scale_shortside_and_center_crop", (16, 16)),  # 45x67 -> 24x36, the center 16x16
        ("none", (44, 64)),  # 45x67 floored to multiples of 4
    ],
)
def test_preprocess_output_sizes(mode, expected_hw):
    image = np.random.default_rng(0).integers(0, 256, (45, 67, 3), dtype=np.uint8)
    for train in (True, False):
        out = ImageTransform(mode, load_size=24, crop_size=16, flip=True, train=train)(image, seed=1)
        assert tuple(out.shape) == (3, *expected_hw), (mode, train)
        assert out.dtype == torch.float32 and out.min() >= -1 and out.max() <= 1


def test_class_folders_frame_training_images_as_their_fid_references():
    """class_folders trained noise GANs on random 64 px crops of a 72 px resize and scored them
    against whole images resized to 64: content 1.125x larger than the references, edges cut."""
    from src.utils.training_config import compose_training_config
    data = compose_training_config(["model=dcgan", "data=class_folders"]).data
    settings = {"preprocess": data.preprocess, "load_size": data.load_size, "crop_size": data.crop_size}
    portrait = np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    trained = ImageTransform(**settings, flip=False, train=True)(portrait, seed=3)
    assert torch.equal(trained, ImageTransform(**settings, flip=False, train=False)(portrait))
    assert tuple(trained.shape) == (3, data.crop_size, data.crop_size)
    # DCGAN's Resize + CenterCrop: the shorter side scaled whole, the longer one cut evenly
    shorter_side_whole = np.zeros((80, 40, 3), np.uint8)
    shorter_side_whole[:, :6] = shorter_side_whole[:, -6:] = 255      # both vertical edges stay
    shorter_side_whole[:10] = shorter_side_whole[-10:] = 128          # the cut rows go
    out = ImageTransform("scale_shortside_and_center_crop", 20, 20, flip=False, train=False)(shorter_side_whole)
    assert out[:, :, 0].min() > 0.5 and out[:, :, -1].min() > 0.5
    assert (out[:, :, 6:14] == -1).all()
    transform = ImageTransform("scale_shortside_and_center_crop", 64, 64, train=True)
    assert transform.decode_at_least == (64, 64)   # a large JPEG still decodes reduced, above the short side


def test_scale_width_keeps_height_at_least_crop_and_multiple_of_4():
    wide = np.zeros((10, 67, 3), np.uint8)  # height 24 * 10 / 67 = 3.6 < crop 16 -> 16
    assert ImageTransform("scale_width", 24, 16, train=False)(wide).shape == (3, 16, 24)
    tall = np.zeros((45, 43, 3), np.uint8)  # height 24 * 45 / 43 = 25.1 -> 25 -> floored to 24
    assert ImageTransform("scale_width", 24, 16, train=False)(tall).shape == (3, 24, 24)
    # The height is truncated as the reference's int(): 8 * 17 / 10 = 13.6 -> 13
    assert scale_width(np.zeros((17, 10, 3), np.uint8), load_size=8, crop_size=4).shape == (13, 8, 3)


def reference_loader(image: np.ndarray, size: int, kernel: int) -> torch.Tensor:
    """The references' loading of an HxWx3 uint8 image: PIL resize, then ToTensor and
    Normalize((0.5,) * 3, (0.5,) * 3)."""
    resized = np.asarray(Image.fromarray(image).resize((size, size), kernel), dtype=np.float32)
    return (torch.from_numpy(resized).permute(2, 0, 1) / 255 - 0.5) / 0.5


def test_resizing_gives_the_reference_loaders_pixels_with_the_configured_kernel():
    """Bicubic as CycleGAN's loader (the default), bilinear as U-GAT-IT's and NICE-GAN's,
    enlarging and shrinking: PIL's, not cv2's kernels."""
    image = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    kernels = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
    for size in (24, 8):  # enlarging, shrinking
        made = {name: ImageTransform("resize_and_crop", size, size, flip=False, train=False,
                                     resize_interpolation=name)(image) for name in kernels}
        for name, kernel in kernels.items():
            assert torch.allclose(made[name], reference_loader(image, size, kernel), atol=1e-6), (name, size)
        assert not torch.allclose(made["bicubic"], made["bilinear"])
    gray = image[:, :, :1]   # one channel: PIL's mode L, the same kernel
    made = ImageTransform("resize_and_crop", 24, 24, flip=False, train=False)(gray)
    assert torch.allclose(made, reference_loader(np.repeat(gray, 3, axis=2), 24, Image.Resampling.BICUBIC)[:1],
                          atol=1e-6)
    # Training resizes to load_size and crops a window of exactly that image.
    load = reference_loader(image, 24, Image.Resampling.BICUBIC)
    crop = ImageTransform("resize_and_crop", 24, 16, flip=False, train=True)(image, seed=3)
    windows = [load[:, top:top + 16, left:left + 16] for top in range(9) for left in range(9)]
    assert any(torch.allclose(crop, window, atol=1e-6) for window in windows)
    with pytest.raises(ValueError, match=r"data.resize_interpolation='nearest' must be one of bicubic, bilinear"):
        ImageTransform(resize_interpolation="nearest")


@pytest.mark.parametrize("overrides, kernel", [
    (["model=cyclegan", "data=cat2dog"], "bicubic"), (["model=pix2pix", "data=facades"], "bicubic"),
    (["model=ugatit", "data=horse2zebra"], "bilinear"), (["model=nicegan", "data=horse2zebra"], "bilinear"),
    (["model=nicegan", "data=horse2zebra", "data.resize_interpolation=bicubic"], "bicubic"),   # the command line wins
    (["model=dcgan", "data=cat2dog"], "bicubic")])   # a noise model: the DataModule's default
def test_the_resampling_kernel_is_the_translation_methods_code_whatever_the_data(train_cfg, overrides, kernel):
    assert train_cfg(*overrides).data.get("resize_interpolation", "bicubic") == kernel


@pytest.mark.parametrize("overrides, load_size", [
    (["model=ugatit", "data=horse2zebra"], 286), (["model=ugatit", "data=horse2zebra", "data.crop_size=128"], 158),
    (["model=nicegan", "data=cat2dog", "data.crop_size=128"], 158),
    (["model=nicegan", "data=cat2dog", "data.crop_size=128", "data.load_size=200"], 200),   # the command line wins
    (["model=cyclegan", "data=horse2zebra", "data.crop_size=128"], 286)])   # CycleGAN's two sizes are separate options
def test_the_attention_models_resize_to_the_crop_size_plus_30_as_their_code(train_cfg, overrides, load_size):
    """U-GAT-IT's and NICE-GAN's code resize to img_size + 30 before the random crop: at
    crop_size 128 a load_size of 286 would crop under half the image."""
    assert train_cfg(*overrides).data.load_size == load_size


@pytest.mark.parametrize("config", ["maps", "maps_unpaired"])
def test_the_maps_configs_read_their_large_jpegs_as_the_papers_loaders(tmp_path, config):
    """The maps images (600 px a side) are over twice the 286 px they are resized to: a reduced
    JPEG decode would read them at 300 px first. The public configs compared with the papers
    decode whole, so an item is the reference loader's bicubic resize of the full image (here at
    a tenth of the size: 120 px halves for 28 px items)."""
    rng = np.random.default_rng(0)
    pair = rng.integers(0, 256, (120, 240, 3), dtype=np.uint8)
    root = tmp_path / config
    if config == "maps":
        for split in ("train", "val"):
            (root / split).mkdir(parents=True)
            Image.fromarray(pair).save(root / split / "1.jpg", quality=95)
    else:
        for split in ("train", "test"):
            for domain, half in (("A", pair[:, :120]), ("B", pair[:, 120:])):
                (root / f"{split}{domain}").mkdir(parents=True)
                Image.fromarray(np.ascontiguousarray(half)).save(root / f"{split}{domain}" / "1.jpg", quality=95)
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "data": OmegaConf.load(CONF_DATA / f"{config}.yaml")})
    dm = instantiate(cfg.data, load_size=28, crop_size=28, num_workers=0)
    dm.setup("fit")
    item = dm.test_dataloader().dataset[0]
    source = root / ("val/1.jpg" if config == "maps" else "testA/1.jpg")
    decoded = np.asarray(Image.open(source).convert("RGB"))[:, :120]
    assert torch.allclose(item["A"], reference_loader(np.ascontiguousarray(decoded), 28, Image.Resampling.BICUBIC),
                          atol=1e-6)


def test_eval_transform_is_deterministic_and_unflipped():
    image = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    transform = ImageTransform("crop", 20, 12, flip=True, train=False)
    assert not transform.is_random
    out = transform(image)
    expected = torch.from_numpy(image[4:16, 4:16]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(out, expected)


def test_flip_is_independent_of_crop_position():
    # Seeding each albumentations step with the same seed would make "flipped" equal to
    # "crop in the top half"; the shared generator keeps them independent.
    image = np.arange(12 * 12, dtype=np.uint8).reshape(12, 12, 1).repeat(3, axis=2)
    transform = ImageTransform("crop", 12, 6, flip=True, train=True)
    outcomes = set()
    for seed in range(64):
        out = transform(image, seed=seed)[0]
        flipped = bool(out[0, 0] > out[0, -1])
        top = bool(out[0, 0] < -1 + 2 * (6 * 12) / 255)  # first row comes from rows 0..5
        outcomes.add((flipped, top))
    assert len(outcomes) == 4


def test_unknown_preprocess_and_bad_sizes_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="data.preprocess") as error:
        ImageTransform("zoom", 286, 256)
    assert all(mode in str(error.value) for mode in PREPROCESS_MODES)
    with pytest.raises(ValueError, match="data.crop_size"):
        ImageTransform("resize_and_crop", 200, 256)
    with pytest.raises(ValueError, match="data.load_size"):
        ImageTransform("resize_and_crop", 0, 256)
    with pytest.raises(ValueError, match="data.crop_size"):
        ImageTransform("crop", 286, -1)
    with pytest.raises(ValueError, match="data.preprocess"):
        UnpairedDataModule(data_dir=tmp_path, name="x", preprocess="zoom")
    # crop larger than the image is found when the image is loaded; the file is named
    dm = module(UnpairedDataModule, make_unpaired(tmp_path / "d"), preprocess="crop", crop_size=64)
    with pytest.raises(ValueError, match=r"data.crop_size=64.*") as error:
        dm.sample_batch(1)
    assert "A0.png" in str(error.value)
    with pytest.raises(ValueError, match=r"An image of 2x3 is too small for data.preprocess='none' .*: remove it, "
                                         r"or resize the images to one size with data.preprocess=resize_and_crop"):
        ImageTransform("none", 286, 256, train=False)(np.zeros((2, 3, 3), np.uint8))


# -- clear errors -------------------------------------------------------------------------------


def test_missing_dataset_says_how_to_download(tmp_path):
    dm = UnpairedDataModule(data_dir=tmp_path / "horse2zebra", name="horse2zebra")  # no error yet
    with pytest.raises(DatasetNotFoundError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert str(tmp_path / "horse2zebra") in message
    assert f"python -m src.data.download horse2zebra --root {tmp_path}" in message


def test_missing_split_folder_and_unknown_dataset(tmp_path):
    root = tmp_path / "mine"
    write_image(root / "trainA" / "0.png")
    dm = UnpairedDataModule(data_dir=root, name="mine")
    with pytest.raises(FileNotFoundError) as error:
        dm.setup("fit")
    assert str(root / "trainB") in str(error.value) and "trainA/ trainB/ testA/ testB/" in str(error.value)


def test_files_that_are_not_images_are_left_out_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "trainA"
    write_image(folder / "a.png")
    Image.open(folder / "a.png").save(folder / "b.gif")
    (folder / "notes.txt").write_text("x")
    (folder / "empty").mkdir()
    with caplog.at_level("WARNING"):
        assert [p.name for p in list_images(folder)] == ["a.png", "b.gif"]
    assert f"{folder}: 1 entries are hidden, system folders or not image files" in caplog.text and ": notes.txt" in caplog.text


def test_a_warning_about_what_every_rank_shares_is_said_by_rank_zero_alone(tmp_path, caplog, monkeypatch):
    """Every rank lists the data's folders; under srun or torchrun the ranks write one train.log,
    so a folder's warning came eight times on eight GPUs."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only
    folder = tmp_path / "trainA"
    write_image(folder / "a.png")
    (folder / "notes.txt").write_text("x")
    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    with caplog.at_level("WARNING"):
        assert [p.name for p in list_images(folder)] == ["a.png"]
    assert "hidden, system folders or not image files" not in caplog.text


def test_subfolders_are_read_as_the_reference_code_reads_them(tmp_path, caplog):
    """Images in subfolders count (junyanz's, U-GAT-IT's and NICE-GAN's datasets walk the tree),
    in path order; hidden files and folders (a Mac's ._ resource forks) are left out with a
    warning; a link back up the tree is walked once."""
    folder = tmp_path / "trainA"
    # (a Synology NAS keeps valid JPEG thumbnails of every photo in @eaDir/<photo>/)
    for name in ("b.png", "a/z.png", "a/deeper/y.png", "c/x.png", ".thumbs/t.png",
                 "a/@eaDir/z.png/SYNOPHOTO_THUMB_S.png", "__MACOSX/a/z.png"):
        write_image(folder / name)
    (folder / "._b.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not a PNG")
    (folder / "c" / "up").symlink_to(folder, target_is_directory=True)
    with caplog.at_level("WARNING"):
        listed = [p.relative_to(folder).as_posix() for p in list_images(folder)]
    assert listed == ["a/deeper/y.png", "a/z.png", "b.png", "c/x.png"]
    assert "4 entries are hidden, system folders or not image files" in caplog.text
    assert "._b.png, .thumbs/, __MACOSX/, a/@eaDir/" in caplog.text
    assert [p.name for p in list_images(folder, max_count=2)] == ["y.png", "z.png"]


def test_listing_a_folder_takes_no_file_system_call_per_image(tmp_path, monkeypatch, caplog):
    """On network storage a stat call per file costs minutes for a million images, per listing
    and rank: the listing's own entry types are used (a link is still followed, and a broken one
    left out with the warning)."""
    calls = []
    for name in ("stat", "lstat"):
        original = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *args, _original=original, **kwargs: calls.append(args) or
                            _original(*args, **kwargs))

    def calls_to_list(count: int) -> int:
        folder = tmp_path / str(count)
        for index in range(count):
            (folder / f"{index:03d}.png").parent.mkdir(parents=True, exist_ok=True)
            (folder / f"{index:03d}.png").write_bytes(b"not decoded by a listing")
        calls.clear()
        assert len(list_images(folder)) == count
        return len(calls)

    assert calls_to_list(5) == calls_to_list(60)
    folder = tmp_path / "linked"
    write_image(folder / "a.png")
    (folder / "b.png").symlink_to(folder / "a.png")
    (folder / "c.png").symlink_to(folder / "missing.png")
    with caplog.at_level("WARNING"):
        assert [p.name for p in list_images(folder)] == ["a.png", "b.png"]
    assert "1 entries are hidden, system folders or not image files" in caplog.text and ": c.png" in caplog.text


def test_a_folder_reached_by_a_link_too_is_named_by_its_own_path(tmp_path):
    """A link to a folder beside it ("a_view" -> "sub", listed first by name): the folder is read
    once, under its real name, whatever order the file system lists the two in."""
    folder = tmp_path / "testA"
    write_image(folder / "sub" / "s.png")
    (folder / "a_view").symlink_to(folder / "sub", target_is_directory=True)
    assert [p.relative_to(folder).as_posix() for p in list_images(folder)] == ["sub/s.png"]


def test_output_names_that_differ_only_in_case_or_unicode_form_are_refused(tmp_path):
    """On a disk that ignores case (macOS, Windows, exFAT) `Photo.png` and `photo.png` are one
    file, and so are the composed and decomposed spellings of an accented name."""
    from src.data.folders import output_paths
    for first, second in (("Photo.jpg", "photo.png"), ("caf\u00e9.png", "cafe\u0301.jpg")):
        paths = [tmp_path / "in" / first, tmp_path / "in" / second]
        with pytest.raises(ValueError, match=r"would both be written as .* \(on a disk that ignores case"):
            output_paths(paths, tmp_path / "out", tmp_path / "in")
    assert len(output_paths([tmp_path / "in" / "a.png", tmp_path / "in" / "b.png"], tmp_path / "out")) == 2


def test_a_folder_that_cannot_be_listed_is_named_not_passed_over(tmp_path, monkeypatch):
    folder = tmp_path / "trainA"
    write_image(folder / "a.png")
    write_image(folder / "locked" / "b.png")
    scandir = os.scandir

    def no_permission_for_locked(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", no_permission_for_locked)
    with pytest.raises(PermissionError, match="locked"):
        list_images(folder)
    with pytest.raises(FileNotFoundError, match="missing"):
        list_images(tmp_path / "missing")


def test_paired_folders_match_by_the_path_inside_each_folder(tmp_path):
    root = tmp_path / "clips"
    for split in ("train", "test"):
        for clip, color in (("clip1", RED), ("clip2", BLUE)):   # the same file names in both clips
            write_image(root / f"{split}A" / clip / "0001.png", color=color)
            write_image(root / f"{split}B" / clip / "0001.jpg", color=color)
    dm = module(PairedDataModule, root, layout="folders", flip=False)
    dm.setup("fit")
    dataset = dm.test_dataloader().dataset
    assert [(Path(a).parent.name, Path(b).parent.name) for a, b in dataset.pairs] == [("clip1", "clip1"),
                                                                                     ("clip2", "clip2")]
    assert dataset[1]["A"][2].mean() > 0.9 and dataset[1]["B"][2].mean() > 0.9   # both blue
    write_image(root / "testA" / "clip3" / "0001.png")
    with pytest.raises(MissingPartnerError, match=r"clip3/0001.png has no partner named 'clip3/0001.\*'"):
        match_by_name(root / "testA", root / "testB")


def test_partners_whose_names_differ_only_in_unicode_form_match(tmp_path):
    """A name copied from a Mac keeps its accents decomposed (NFD); its partner's are composed
    (NFC): they looked the same in the missing-partner error, and did not match."""
    import unicodedata
    root = tmp_path / "pairs"
    for split in ("train", "test"):
        write_image(root / f"{split}A" / (unicodedata.normalize("NFD", "café") + ".png"), color=RED)
        write_image(root / f"{split}B" / (unicodedata.normalize("NFC", "café") + ".png"), color=RED)
    (pair,) = match_by_name(root / "testA", root / "testB")
    assert unicodedata.normalize("NFC", pair[0].stem) == pair[1].stem and pair[0].stem != pair[1].stem


def test_a_pair_of_two_shapes_is_refused_naming_both_files_and_one_of_two_sizes_is_resized(tmp_path):
    """A partner of another shape (turned upright by its EXIF orientation) was squashed onto its
    image without a word; one of another size but the same shape (a label map at another
    resolution) is resized, as before."""
    root = tmp_path / "pairs"
    for split in ("train", "test"):
        write_image(root / f"{split}A" / "0.png", size=(40, 32))
        write_image(root / f"{split}B" / "0.png", size=(20, 16))   # half the size, the same shape
        write_image(root / f"{split}A" / "1.png", size=(40, 32))
        write_image(root / f"{split}B" / "1.png", size=(32, 40))   # turned
    dm = module(PairedDataModule, root, layout="folders", flip=False)
    dm.setup("fit")
    dataset = dm.test_dataloader().dataset
    assert dataset[0]["A"].shape[-2:] == dataset[0]["B"].shape[-2:]
    with pytest.raises(ValueError, match=r"testA/1.png \(partner .*testB/1.png\): its partner is 32x40 px, another "
                                         r"shape than its 40x32 px: resized onto it, the partner would be squashed"):
        dataset[1]


@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
def test_pairs_named_with_their_domain_letter_match(tmp_path, direction):
    """CycleGAN's copies of the paired datasets (and junyanz's prepare_cityscapes_dataset.py)
    name pair i `i_A.jpg` / `i_B.jpg`: they pair up, either way round; a folder where not every
    name carries its letter is matched by the names as they are."""
    root = tmp_path / "cityscapes"
    colors = {"0": (255, 0, 0), "1": (0, 0, 255)}
    for split in ("train", "test"):
        for k, color in colors.items():
            write_image(root / f"{split}A" / f"{k}_A.jpg", color=color)
            write_image(root / f"{split}B" / f"{k}_B.png", color=color)
    dm = module(PairedDataModule, root, layout="folders", flip=False, direction=direction)
    dm.setup("fit")
    dataset = dm.test_dataloader().dataset
    source, target = ("A", "B") if direction == "AtoB" else ("B", "A")
    assert [(Path(a).stem, Path(b).stem) for a, b in dataset.pairs] == [(f"0_{source}", f"0_{target}"),
                                                                       (f"1_{source}", f"1_{target}")]
    assert dataset[1]["A"][2].mean() > 0.9 and dataset[1]["B"][2].mean() > 0.9   # both blue
    write_image(root / "testA" / "2.jpg")
    with pytest.raises(MissingPartnerError, match=r"0_A.jpg has no partner named '0_A.\*'"):
        match_by_name(root / "testA", root / "testB")


def test_a_setting_that_is_not_a_boolean_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"data.flip='maybe' must be true or false"):
        module(UnpairedDataModule, tmp_path, flip="maybe")


def test_a_negative_worker_count_is_refused_by_key(tmp_path):
    """`-1` ("all cores" elsewhere) reached torch's DataLoader first in the FID callback's setup,
    whose message names no config key."""
    with pytest.raises(ValueError, match=r"data.num_workers=-1 must be an integer >= 0 \(worker processes"):
        module(UnpairedDataModule, tmp_path, num_workers=-1)


def test_a_data_setting_of_the_wrong_type_stops_the_run_by_key(train_cfg):
    from src.utils.run import run_training
    with pytest.raises(ValueError, match=r"data.num_workers='x' must be an integer \(ShapesDataModule's num_workers\)"):
        run_training(train_cfg("model=cyclegan", "data.num_workers=x"))
    # a folder's name the YAML reads as a number: Path(123) would fail with a TypeError naming no key
    with pytest.raises(ValueError, match=r"data.data_dir=123 must be a path \(UnpairedDataModule's data_dir\)"):
        run_training(train_cfg("model=cyclegan", "data=horse2zebra", "data.data_dir=123"))
    cfg = train_cfg("model=cyclegan", "data=horse2zebra", "data.data_dir=/nowhere/horse2zebra")
    with pytest.raises(DatasetNotFoundError):   # a string passes the check and reaches the folder's check
        run_training(cfg)


@pytest.mark.parametrize("layout", ["missing", "no trainB", "pix2pix, no test/"])
def test_a_dataset_not_on_disk_stops_the_run_before_the_model_is_built(train_cfg, tmp_path, monkeypatch, layout):
    """Named with the missing folder and the download command at once, not in Lightning's setup
    after a full-size model was built (and DDP started)."""
    from src.models.cyclegan import CycleGAN
    from src.models.pix2pix import Pix2Pix
    from src.utils.run import run_training
    built = []
    for cls in (CycleGAN, Pix2Pix):
        monkeypatch.setattr(cls, "__init__", lambda self, *a, **k: built.append(type(self).__name__))
    root = tmp_path / "data"
    if layout == "no trainB":
        make_unpaired(root)
        shutil.rmtree(root / "trainB")
    if layout == "pix2pix, no test/":
        make_aligned(root, splits=("train",))
    model = "pix2pix" if layout.startswith("pix2pix") else "cyclegan"
    data = "facades" if model == "pix2pix" else "horse2zebra"
    missing = {"missing": f"{root}\\. Download it with", "no trainB": f"{root / 'trainB'}\\. Download it with",
               "pix2pix, no test/": f"{root / 'test'}, the test split beside {root / 'train'}"}[layout]
    with pytest.raises(DatasetNotFoundError, match=f"Dataset folder not found: {missing}"):
        run_training(train_cfg(f"model={model}", f"data={data}", f"data.data_dir={root}"))
    assert built == []


@pytest.mark.parametrize("layout", ["unpaired", "classes"])
def test_a_dataset_of_training_images_only_is_told_to_hold_some_out_as_its_test_split(tmp_path, layout):
    """One's own photos in trainA/ and trainB/ (or train/<class>/) were told the layouts and how
    to download a dataset, not that the test split was the folder missing."""
    from src.data.labelled import LabelledImageDataModule
    if layout == "unpaired":
        root = make_unpaired(tmp_path / "mine")
        shutil.rmtree(root / "testB")
        dm, missing = module(UnpairedDataModule, root), root / "testB"
    else:
        root = tmp_path / "mine"
        for k in range(2):
            write_image(root / "train" / "cats" / f"{k}.png", (20, 16), seed=k)
        dm, missing = LabelledImageDataModule(data_dir=root, name="mine", load_size=16, crop_size=16), root / "test"
    with pytest.raises(DatasetNotFoundError, match=f"Dataset folder not found: {missing}, the test split beside "
                                                   f"{missing.parent / missing.name.replace('test', 'train')}.* Move "
                                                   f"some of train.*'s images"):
        dm.setup("fit")


def test_manual_dataset_explains_where_to_get_it(tmp_path):
    dm = UnpairedDataModule(data_dir=tmp_path / "selfie2anime", name="selfie2anime")
    with pytest.raises(DatasetNotFoundError, match="Google Drive"):
        dm.setup("fit")


def test_empty_folder_is_named(tmp_path):
    root = make_unpaired(tmp_path / "d")
    for path in (root / "trainB").iterdir():
        path.unlink()
    (root / "trainB" / "notes.txt").write_text("not an image")
    with pytest.raises(EmptyDatasetError, match=str(root / "trainB")):
        module(UnpairedDataModule, root).setup("fit")


def test_corrupt_image_names_the_file(tmp_path):
    root = make_unpaired(tmp_path / "d")
    bad = root / "testA" / "A0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageReadError, match="A0.png"):
        module(UnpairedDataModule, root).sample_batch(1)


def test_download_registry_and_cli(capsys):
    for name in ("horse2zebra", "summer2winter_yosemite", "monet2photo", "apple2orange", "cat2dog",
                 "facades", "maps", "edges2shoes", "cityscapes", "selfie2anime"):
        assert name in download.DATASETS
    assert download.DATASETS["facades"].url.endswith("/pix2pix/datasets/facades.tar.gz")
    assert download.DATASETS["horse2zebra"].url.endswith("/cyclegan/datasets/horse2zebra.zip")
    assert "cityscapes-dataset.com" in download.DATASETS["cityscapes"].note
    assert download.main(["selfie2anime", "--root", "/nonexistent"]) == 1
    assert "trainA/" in capsys.readouterr().out
    assert download.main(["--list"]) == 0
    assert "cat2dog" in capsys.readouterr().out


def test_download_extracts_into_root_name(tmp_path, monkeypatch, capsys):
    # A local archive through a file:// URL exercises fetch + extract + move without a network.
    import tarfile

    source_dir = make_unpaired(tmp_path / "src" / "toy", n_a=1, n_b=1, n_test_a=1, n_test_b=1)
    zipped, tarred = tmp_path / "toy.zip", tmp_path / "toy.tar.gz"
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in source_dir.rglob("*.png"):
            archive.write(path, path.relative_to(source_dir.parent))
    with tarfile.open(tarred, "w:gz") as archive:
        archive.add(source_dir, arcname="toy")
    monkeypatch.setitem(
        download.DATASETS, "toy", download.DatasetSource(zipped.as_uri(), download.UNPAIRED_LAYOUT)
    )
    monkeypatch.setitem(
        download.DATASETS, "toy_copy",
        download.DatasetSource(tarred.as_uri(), download.UNPAIRED_LAYOUT, archive_folder="toy"),
    )
    root = tmp_path / "data"
    killed, running = root / ".toy-killed", root / ".toy-running"   # scratch of a killed download, and of a live one
    for scratch in (killed, running):
        (scratch / "toy.zip").parent.mkdir(parents=True)
        (scratch / "toy.zip").write_bytes(b"partial")
    for path in (killed, killed / "toy.zip"):
        os.utime(path, (time.time() - 2 * STALE_SCRATCH_S,) * 2)
    assert download.main(["toy", "--root", str(root)]) == 0
    assert not killed.exists() and running.exists()
    shutil.rmtree(running)
    assert download.download("toy_copy", root) == root / "toy_copy"
    for name in ("toy", "toy_copy"):
        assert sorted(p.name for p in (root / name).iterdir()) == ["testA", "testB", "trainA", "trainB"]
    stale = root / ".toy-killed-again"   # killed, while a later download filled the folder
    stale.mkdir()
    os.utime(stale, (time.time() - 2 * STALE_SCRATCH_S,) * 2)
    assert download.download("toy", root) == root / "toy"  # present: nothing to do
    assert "nothing to do" in capsys.readouterr().out and not stale.exists()
    assert sorted(p.name for p in root.iterdir()) == ["toy", "toy_copy"]  # no scratch left

    # Another job's scratch entry gone between the listing and its look (cleaned up, or placed):
    # a build in progress, kept, not a crash of this one.
    from src.data import placement
    busy = root / ".toy-busy"
    (busy / "part").mkdir(parents=True)
    real_stat = Path.stat

    def gone_meanwhile(self, *args, **kwargs):
        if self.name == "part":
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return real_stat(self, *args, **kwargs)

    os.utime(busy, (time.time() - 2 * STALE_SCRATCH_S,) * 2)
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(Path, "stat", gone_meanwhile)
        placement.remove_stale_scratch(root / "toy")
    assert busy.exists()
    shutil.rmtree(busy)

    # A broken archive names its URL; the command prints one line and fails.
    zipped.write_bytes(zipped.read_bytes()[:200])
    assert download.main(["toy", "--root", str(tmp_path / "other")]) == 1
    assert f"toy.zip from {zipped.as_uri()} is not a whole archive" in capsys.readouterr().err
    assert not (tmp_path / "other" / "toy").exists()


def test_two_jobs_downloading_the_same_dataset_leave_one_whole_copy(tmp_path, monkeypatch, capsys):
    """Two jobs started together both download; the one that finishes second finds the dataset in
    place (a rename onto a full folder fails, where a move would have nested its copy inside)."""
    source_dir = make_unpaired(tmp_path / "src" / "toy", n_a=1, n_b=1, n_test_a=1, n_test_b=1)
    zipped = tmp_path / "toy.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in source_dir.rglob("*.png"):
            archive.write(path, path.relative_to(source_dir.parent))
    monkeypatch.setitem(download.DATASETS, "toy", download.DatasetSource(zipped.as_uri(), download.UNPAIRED_LAYOUT))
    root = tmp_path / "data"
    fetch = download.fetch

    def the_other_job_finishes_first(url, destination, md5):
        fetch(url, destination, md5)
        if not (root / "toy").exists():
            monkeypatch.setattr(download, "fetch", fetch)
            download.download("toy", root)            # the other job, from start to end
    monkeypatch.setattr(download, "fetch", the_other_job_finishes_first)
    assert download.download("toy", root) == root / "toy"
    assert "filled by another download of toy meanwhile" in capsys.readouterr().out
    assert sorted(p.name for p in (root / "toy").iterdir()) == ["testA", "testB", "trainA", "trainB"]
    assert sorted(p.name for p in root.iterdir()) == ["toy"]   # no scratch folder left


def test_a_download_cut_short_is_an_error_not_a_truncated_file(tmp_path, monkeypatch):
    """urllib ends a read early without an error when the connection drops: the byte count is
    checked against the announced length, and no file is left (a later run finding one would
    take it as whole: the FCN weights' download is kept where it lands)."""
    class DroppedConnection(io.BytesIO):
        headers = {"Content-Length": "100"}

    monkeypatch.setattr(download.urllib.request, "urlopen", lambda url, timeout: DroppedConnection(b"x" * 60))
    with pytest.raises(download.DownloadError, match=r"Downloading http://host/a.zip stopped after 60 of 100 bytes"):
        download.fetch("http://host/a.zip", tmp_path / "a.zip")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(download.urllib.request, "urlopen", lambda url, timeout: DroppedConnection(b"x" * 100))
    download.fetch("http://host/a.zip", tmp_path / "a.zip")
    assert [p.name for p in tmp_path.iterdir()] == ["a.zip"] and (tmp_path / "a.zip").read_bytes() == b"x" * 100

    def refused(url, timeout):
        raise download.urllib.error.URLError("Connection refused")

    monkeypatch.setattr(download.urllib.request, "urlopen", refused)
    with pytest.raises(download.DownloadError, match=r"Downloading http://host/a.zip failed: .*Connection refused.*\. "
                                                     r"Run the command again.$"):
        download.fetch("http://host/a.zip", tmp_path / "a.zip")

    import ssl
    for wrapped in (True, False):   # urlopen wraps it in a URLError; a read after the handshake does not
        def unverified(url, timeout):   # macOS's python.org Python before 'Install Certificates.command'
            error = ssl.SSLCertVerificationError(1, "certificate verify failed")
            error.reason = "CERTIFICATE_VERIFY_FAILED"   # as the ssl module sets it
            raise download.urllib.error.URLError(error) if wrapped else error

        monkeypatch.setattr(download.urllib.request, "urlopen", unverified)
        with pytest.raises(download.DownloadError, match=r"certificate verify failed.*cannot verify the server's "
                                                         r"certificate, so running again fails the same way: on macOS .*"
                                                         r"'Install Certificates.command'.* SSL_CERT_FILE"):
            download.fetch("http://host/a.zip", tmp_path / "a.zip")


def test_a_failed_download_says_whether_running_again_can_help(tmp_path, monkeypatch):
    """A server that answers 404 or cannot be reached at all fails again on the next try, and a
    full disk is not the network's failure: each says what to do, and leaves no file."""
    import errno
    import socket

    def failing(error):
        def urlopen(url, timeout):
            raise error
        return urlopen

    gone = download.urllib.error.HTTPError("http://host/a.zip", 404, "Not Found", {}, None)
    login = download.urllib.error.HTTPError("http://host/a.zip", 407, "Proxy Authentication Required", {}, None)
    tunnel = download.urllib.error.URLError(OSError("Tunnel connection failed: 407 Proxy Authentication Required"))
    busy = download.urllib.error.HTTPError("http://host/a.zip", 429, "Too Many Requests", {}, None)
    offline = download.urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))
    for error, advice in ((gone, r"HTTP Error 404: Not Found\. The server does not serve this file at this address"),
                          (offline, r"name resolution.*\. This machine cannot reach the server .*https_proxy"),
                          (busy, r"Too Many Requests\. Run the command again\.$"),
                          (login, r"The proxy asks for a login: put it in the proxy's address"),
                          (tunnel, r"The proxy asks for a login")):
        monkeypatch.setattr(download.urllib.request, "urlopen", failing(error))
        with pytest.raises(download.DownloadError, match=advice):
            download.fetch("http://host/a.zip", tmp_path / "a.zip")

    class Reply(io.BytesIO):
        headers = {"Content-Length": str(3 << 30)}

    monkeypatch.setattr(download.urllib.request, "urlopen", lambda url, timeout: Reply(b"x" * 10))
    monkeypatch.setattr(download.shutil, "disk_usage", lambda folder: SimpleNamespace(free=1 << 30))
    with pytest.raises(download.DownloadError, match=rf"http://host/a.zip needs 3.00 GiB, and {tmp_path} has 1.00 "
                                                     r"GiB free: free some space there, or download onto another"):
        download.fetch("http://host/a.zip", tmp_path / "a.zip")   # before writing a byte of it
    monkeypatch.undo()

    class FullDisk:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    class SmallReply(io.BytesIO):
        headers = {}

    monkeypatch.setattr(download.urllib.request, "urlopen", lambda url, timeout: SmallReply(b"x" * 10))
    with pytest.raises(OSError) as raised:   # the disk's error as itself, not taken for the network's
        download._download("http://host/a.zip", FullDisk(), tmp_path, 4, None)
    assert raised.type is OSError and raised.value.errno == errno.ENOSPC
    monkeypatch.setattr(download, "_download", lambda url, out, *rest: FullDisk().write(b"x"))
    with pytest.raises(download.DownloadError, match=rf"{tmp_path} ran out of space downloading http://host/a.zip "
                                                     r"\(No space left on device: a cluster's quota counts too\): "):
        download.fetch("http://host/a.zip", tmp_path / "a.zip")

    def over_quota(*args):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(download, "_download", over_quota)
    with pytest.raises(download.DownloadError, match=r"ran out of space .*\(Disk quota exceeded"):
        download.fetch("http://host/a.zip", tmp_path / "a.zip")
    assert list(tmp_path.iterdir()) == []


def test_an_archive_needs_room_and_the_layout_before_it_is_placed(tmp_path, monkeypatch):
    """Unpacking checks the room its members take first; an archive of another layout is an
    error that places nothing (placed, it would pass for the dataset until training named the
    missing folder)."""
    payload = tmp_path / "server" / "toy.zip"
    payload.parent.mkdir()
    with zipfile.ZipFile(payload, "w") as zipped:
        for folder in ("trainA", "trainB", "testA"):   # no testB
            zipped.writestr(f"toy/{folder}/0.png", b"x" * 1000)
    root = tmp_path / "data"
    monkeypatch.setitem(download.DATASETS, "toy", download.DatasetSource(payload.as_uri(), download.UNPAIRED_LAYOUT))
    with pytest.raises(download.DownloadError, match=r"toy.zip unpacked without testB/, so it is not laid out as "
                                                     r"trainA/ trainB/ .* Nothing was placed in .*data/toy"):
        download.download("toy", root)
    assert list(root.iterdir()) == []
    into = tmp_path / "into"
    into.mkdir()
    monkeypatch.setattr(download.shutil, "disk_usage", lambda folder: SimpleNamespace(free=2000))
    with pytest.raises(download.DownloadError, match=r"unpacking toy.zip needs 0.00 GiB, and .*into has 0.00 GiB"):
        download.extract(payload, into)
    assert list(into.iterdir()) == []


def test_a_download_whose_checksum_differs_is_refused_and_not_kept(tmp_path, monkeypatch):
    """A release checked by its published MD5: a corrupted or changed file is an error naming the
    URL and both checksums, leaves no file and no dataset folder; the right file passes."""
    payload = tmp_path / "server" / "toy.zip"
    payload.parent.mkdir()
    with zipfile.ZipFile(payload, "w") as zipped:
        for folder in ("trainA", "trainB", "testA", "testB"):
            zipped.writestr(f"toy/{folder}/0.png", b"not read here")
    right = hashlib.md5(payload.read_bytes()).hexdigest()
    with pytest.raises(download.DownloadError, match=rf"arrived with MD5 {right}, not the published 0{{32}}"):
        download.fetch(payload.as_uri(), tmp_path / "a.zip", "0" * 32)
    assert not (tmp_path / "a.zip").exists()
    download.fetch(payload.as_uri(), tmp_path / "a.zip", right.upper())   # as release pages often print it
    assert (tmp_path / "a.zip").read_bytes() == payload.read_bytes()

    root = tmp_path / "data"
    monkeypatch.setitem(download.DATASETS, "toy", download.DatasetSource(payload.as_uri(), download.UNPAIRED_LAYOUT,
                                                                           md5="f" * 32))
    assert download.main(["toy", "--root", str(root)]) == 1
    assert not (root / "toy").exists() and list(root.iterdir()) == []   # no scratch folder left either
    monkeypatch.setitem(download.DATASETS, "toy", download.DatasetSource(payload.as_uri(), download.UNPAIRED_LAYOUT,
                                                                           md5=right))
    assert download.main(["toy", "--root", str(root)]) == 0 and (root / "toy" / "trainA" / "0.png").is_file()


def test_a_folder_unpacked_one_level_down_is_found_not_downloaded_again(tmp_path):
    """Unzipping by hand into data/horse2zebra/ gives data/horse2zebra/horse2zebra/trainA: the
    training error names the inner folder, and the download command does not claim the dataset
    is there (it used to say "nothing to do" over the same folder)."""
    outer = tmp_path / "horse2zebra"
    make_unpaired(outer / "horse2zebra")
    with pytest.raises(DatasetNotFoundError, match=f"one folder down, in {outer / 'horse2zebra'}: "
                                                   f"pass \\+\\+data.data_dir={outer / 'horse2zebra'} to train.py "
                                                   f"or eval.py, or move its folders up into {outer}"):
        UnpairedDataModule(data_dir=outer, name="horse2zebra").setup("fit")
    with pytest.raises(download.DownloadError, match=f"{outer} exists but lacks trainA/, trainB/, testA/, testB/. "
                                                     f"The dataset is one folder down"):
        download.download("horse2zebra", tmp_path)
    shutil.rmtree(outer / "horse2zebra")
    write_image(outer / "trainA" / "0.png")
    with pytest.raises(download.DownloadError, match=f"lacks trainB/, testA/, testB/. Download it with: "
                                                     f"python -m src.data.download horse2zebra --root {tmp_path} "
                                                     f"\\(after moving the incomplete {outer} away\\)"):
        download.download("horse2zebra", tmp_path)


# -- the shapes dataset ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "s"
    return ensure_shapes_dataset(root, shapes_params(32, 20, 6, 0, paired=False))


def test_shapes_layout_and_determinism(shapes_root, tmp_path):
    folders = ("trainA", "trainB", "testA", "testB")
    counts = {folder: len(list((shapes_root / folder).glob("*.png"))) for folder in folders}
    assert counts == {"trainA": 20, "trainB": 20, "testA": 6, "testB": 6}
    again = ensure_shapes_dataset(tmp_path / "again", shapes_params(32, 20, 6, 0, paired=False))
    for path in sorted(shapes_root.rglob("*")):
        if path.is_file():
            assert (again / path.relative_to(shapes_root)).read_bytes() == path.read_bytes(), path
    other = ensure_shapes_dataset(tmp_path / "other", shapes_params(32, 20, 6, 1, paired=False))
    assert (other / "testA" / "0000.png").read_bytes() != (shapes_root / "testA" / "0000.png").read_bytes()


def test_shapes_test_pairs_share_everything_but_the_shape(shapes_root):
    meta = json.loads((shapes_root / "test_meta.json").read_text())
    assert len(meta["pairs"]) == 6 and meta["size"] == 32
    for k, entry in enumerate(meta["pairs"]):
        disc = np.array(Image.open(shapes_root / "testA" / entry["file"]))
        triangle = np.array(Image.open(shapes_root / "testB" / entry["file"]))
        assert disc.shape == (32, 32, 3)
        corners = (0, -1)
        for y in corners:
            for x in corners:
                assert (disc[y, x] == triangle[y, x]).all()
        assert (disc != triangle).any(axis=-1).sum() > 10
        # the background is re-rendered exactly wherever neither shape touches a pixel
        box = np.array([entry["box"]])
        untouched = (shape_coverage("disc", box, 32)[0] == 0) & (shape_coverage("triangle", box, 32)[0] == 0)
        background = render_background(entry, 32)
        assert (disc[untouched] == background[untouched]).all()
        # shape pixels are far from the background under them (mask recovery)
        inside = shape_coverage("disc", box, 32)[0] == 1
        distance = np.abs(disc.astype(int) - background.astype(int)).max(axis=-1)
        assert distance[inside].min() >= 70 and distance[untouched].max() == 0


def test_disc_and_triangle_overlap():
    box = np.array([[2.0, 3.0, 50.0]])
    disc, triangle = shape_coverage("disc", box, 64)[0], shape_coverage("triangle", box, 64)[0]
    iou = np.minimum(disc, triangle).sum() / np.maximum(disc, triangle).sum()
    assert 0.45 < iou < 0.6
    assert abs(triangle.sum() - 0.5 * 50**2) < 20  # half the box
    assert triangle[4:10].sum() < triangle[45:51].sum()  # apex up


def test_shapes_mismatch_regenerates_and_foreign_folder_is_refused(tmp_path):
    root = ensure_shapes_dataset(tmp_path / "s", shapes_params(16, 4, 2, 0, paired=False))
    root = ensure_shapes_dataset(root, shapes_params(16, 6, 2, 0, paired=False))
    assert len(list((root / "trainA").glob("*.png"))) == 6
    assert json.loads((root / "meta.json").read_text())["n_train"] == 6
    foreign = tmp_path / "mine"
    write_image(foreign / "photo.png")
    with pytest.raises(FileExistsError, match="refusing"):
        ensure_shapes_dataset(foreign, shapes_params(16, 4, 2, 0, paired=False))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no scratch left behind


def test_shapes_generation_removes_the_scratch_a_killed_one_left(tmp_path):
    """A generation killed (SIGKILL, a time limit) leaves its scratch folder: the next one
    removes it once it is stale, and leaves a live one's alone."""
    killed, live = tmp_path / ".s-killed", tmp_path / ".s-live"
    for scratch in (killed, live):
        write_image(scratch / "s" / "trainA" / "0.png")
    for path in (killed, *killed.rglob("*")):
        os.utime(path, (time.time() - 2 * STALE_SCRATCH_S,) * 2)
    ensure_shapes_dataset(tmp_path / "s", shapes_params(16, 4, 2, 0, paired=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s-live", "s"]


def _generate_in_subprocess(root: str) -> str:
    return str(ensure_shapes_dataset(root, shapes_params(16, 30, 5, 0, paired=False)))


def test_shapes_concurrent_generation_is_safe(tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    root = tmp_path / "shared"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_generate_in_subprocess, [str(root)] * 4))
    assert results == [str(root)] * 4
    assert len(list((root / "trainB").glob("*.png"))) == 30
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]


def test_shapes_datamodules_generate_lazily(tmp_path):
    dm = ShapesDataModule(data_dir=tmp_path / "u", size=16, n_train=5, n_test=3, batch_size=2)
    dm.setup()  # no prepare_data call, and no stage: every split (a notebook's call)
    batch = next(iter(dm.train_dataloader()))
    assert batch["A"].shape == (2, 3, 16, 16) and dm.paired is False
    paired = ShapesPairedDataModule(data_dir=tmp_path / "p", size=16, n_train=5, n_test=3)
    assert paired.paired is True
    sample = paired.sample_batch(3, split="train")
    # a training pair shares the background: corner pixels agree
    assert torch.equal(sample["A"][:, :, 0, 0], sample["B"][:, :, 0, 0])
    assert not torch.equal(sample["A"], sample["B"])
    assert (tmp_path / "p" / "train_meta.json").exists()


def test_shapes_crop_size_unread_at_their_own_size_is_refused(tmp_path):
    """`data.crop_size=128` on the 32 px shapes trained at 32 px, with networks sized for 128
    (n_blocks / num_downs: auto): the message says which key sets the size. A crop is read."""
    unread = ShapesDataModule(data_dir=tmp_path / "u", size=32, n_train=2, n_test=2, crop_size=128)
    with pytest.raises(ValueError, match=r"data.crop_size=128: the shapes images are generated at data.size=32 .* "
                                         r"set data.size=128 instead"):
        unread.setup("fit")
    with pytest.raises(ValueError, match=r"data.crop_size=128"):
        unread.setup()   # every stage, as a notebook's bare setup() asks: training included
    unread.setup("test")   # a run that trained so is still evaluated
    dm = ShapesDataModule(data_dir=tmp_path / "u", size=16, n_train=2, n_test=2, preprocess="crop", crop_size=8)
    assert dm.sample_batch(1, split="train")["A"].shape == (1, 3, 8, 8)


# -- configs -----------------------------------------------------------------------------------


def test_all_data_configs_instantiate_without_data(tmp_path):
    files = sorted(glob.glob(str(CONF_DATA / "*.yaml")))
    assert len(files) >= 12
    for file in files:
        paths = {"data_dir": str(tmp_path / "nowhere")}
        cfg = OmegaConf.create({"paths": paths, "data": OmegaConf.load(file)})
        dm = instantiate(cfg.data)
        if isinstance(dm, SequenceDataModule):   # series: in memory (sines) or one CSV file
            assert cfg.data.source == "sines" or cfg.data.csv_path.startswith(str(tmp_path / "nowhere")), file
            continue
        assert str(dm.data_dir).startswith(str(tmp_path / "nowhere")), file
        paired = {"facades", "maps", "edges2shoes", "cityscapes", "shapes_paired"}
        assert dm.paired == (Path(file).stem in paired), file
    assert not (tmp_path / "nowhere").exists()  # construction touched no folder


@pytest.mark.parametrize("name", ["cityscapes_unpaired", "facades_unpaired", "maps_unpaired"])
def test_cyclegans_unpaired_copies_have_a_config_and_a_download(tmp_path, name):
    """CycleGAN's papers train on these copies with B drawn at random; their configs point at
    the folders `python -m src.data.download NAME` fills, and say so when they are missing."""
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "data": OmegaConf.load(CONF_DATA / f"{name}.yaml")})
    dm = instantiate(cfg.data)
    assert isinstance(dm, UnpairedDataModule) and dm.data_dir == tmp_path / name and name in download.DATASETS
    assert (dm.label_palette is not None) == (name == "cityscapes_unpaired")
    how = "prepare_cityscapes --gtfine gtFine --leftimg8bit leftImg8bit" if name == "cityscapes_unpaired" else \
        f"download {name}"
    with pytest.raises(DatasetNotFoundError, match=f"python -m src.data.{how}"):
        dm.setup("fit")


def test_cityscapes_is_built_from_the_official_release_in_both_layouts(tmp_path):
    """The authors withdrew their Cityscapes copies: the registry sends users to the official
    release and to prepare_cityscapes, which pairs each photo with its label colours by id, at
    the papers' size, as an A|B image (photo left) and as trainA/i_A, trainB/i_B; val is the
    test split. Both data configs read the folder it writes."""
    from src.data import prepare_cityscapes
    assert download.DATASETS["cityscapes"].url is None and download.DATASETS["cityscapes_unpaired"].url is None
    assert download.main(["cityscapes", "--root", str(tmp_path / "data")]) == 1
    gtfine, photos = tmp_path / "gtFine", tmp_path / "leftImg8bit"
    colours = {"train": [(200, 0, 0), (0, 200, 0)], "val": [(0, 0, 200)]}
    for split, split_colours in colours.items():
        for k, colour in enumerate(split_colours):
            name = f"aachen_{k:06d}_000019"
            write_image(photos / split / "aachen" / f"{name}_leftImg8bit.png", size=(64, 32), color=colour)
            write_image(gtfine / split / "aachen" / f"{name}_gtFine_color.png", size=(64, 32), color=(128, 64, 128))
    output = tmp_path / "data" / "cityscapes"
    assert prepare_cityscapes.main(["--gtfine", str(gtfine), "--leftimg8bit", str(photos), "--output", str(output),
                                    "--size", "16"]) == 0
    assert sorted(p.name for p in output.iterdir()) == ["test", "testA", "testB", "train", "trainA", "trainB"]
    side_by_side = np.asarray(Image.open(output / "train" / "1.jpg"))
    assert side_by_side.shape == (16, 32, 3)
    assert np.abs(side_by_side[:, :16].astype(int) - (0, 200, 0)).max() < 8          # photo left: A
    assert np.abs(side_by_side[:, 16:].astype(int) - (128, 64, 128)).max() < 8       # labels right: B
    assert sorted(p.name for p in (output / "testA").iterdir()) == ["0_A.jpg"]
    for config, cls in (("cityscapes", PairedDataModule), ("cityscapes_unpaired", UnpairedDataModule)):
        cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path / "data")},
                                "data": OmegaConf.load(CONF_DATA / f"{config}.yaml")})
        dm = instantiate(cfg.data, data_dir=str(output), load_size=16, crop_size=16, preprocess="none", num_workers=0)
        assert isinstance(dm, cls)
        dm.setup("fit")
        item = dm.test_dataloader().dataset[0]
        photo = item["B"] if config == "cityscapes" else item["A"]   # cityscapes: BtoA, labels -> photo
        assert photo[2].mean() > 0.5 and photo[0].mean() < -0.5       # the val photo, blue
    (photos / "train" / "aachen" / "aachen_000001_000019_leftImg8bit.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"aachen_000001_000019_gtFine_color.png has no partner "
                                                r"aachen_000001_000019_leftImg8bit.png"):
        prepare_cityscapes.prepare_cityscapes(gtfine, photos, tmp_path / "again")
    (photos / "val" / "aachen" / "aachen_000000_000019_leftImg8bit.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/val holds no <city>/\*_leftImg8bit.png"):
        prepare_cityscapes.find_pairs(gtfine, photos, "val")
    with pytest.raises(FileExistsError, match="is not empty"):
        prepare_cityscapes.prepare_cityscapes(gtfine, photos, output)


def test_a_cityscapes_build_stopped_part_way_leaves_no_dataset_folder(tmp_path, monkeypatch):
    """The pairs are written into a scratch folder renamed into place at the end: a run stopped
    part-way left a folder with some of the pairs, which the data configs took for the dataset and
    a second run refused as not empty."""
    from src.data import prepare_cityscapes
    gtfine, photos = tmp_path / "gtFine", tmp_path / "leftImg8bit"
    for split, count in (("train", 3), ("val", 1)):
        for k in range(count):
            name = f"aachen_{k:06d}_000019"
            write_image(photos / split / "aachen" / f"{name}_leftImg8bit.png", size=(32, 16))
            write_image(gtfine / split / "aachen" / f"{name}_gtFine_color.png", size=(32, 16))
    output = tmp_path / "data" / "cityscapes"
    resized, calls = prepare_cityscapes._resized, []

    def stopped_at_the_fifth_image(path, size):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return resized(path, size)

    monkeypatch.setattr(prepare_cityscapes, "_resized", stopped_at_the_fifth_image)
    with pytest.raises(KeyboardInterrupt):
        prepare_cityscapes.prepare_cityscapes(gtfine, photos, output, size=8)
    assert not output.exists() and not list(output.parent.iterdir())   # nor a scratch folder
    monkeypatch.setattr(prepare_cityscapes, "_resized", resized)
    assert prepare_cityscapes.prepare_cityscapes(gtfine, photos, output, size=8) == 4
    assert sorted(p.name for p in (output / "trainA").iterdir()) == ["0_A.jpg", "1_A.jpg", "2_A.jpg"]


def test_dataset_paths_are_kept_in_arrays_that_workers_share_and_read_back_whole(tmp_path):
    """A list of Path objects is copied into every forked DataLoader worker as the epoch reads
    it (reference counts are writes): the paths are one buffer and its offsets, made into Paths on
    access, names that are not UTF-8 included, and they pickle (spawned workers) as they are."""
    import pickle
    from src.data.path_table import PathColumn, path_rows
    names = [tmp_path / f"domain/sub/{index:06d}.png" for index in range(1000)]
    names += [tmp_path / "caf\u00e9.png", Path(os.fsdecode(b"/data/\xff\xfe.png"))]
    column = PathColumn(names)
    assert list(column) == names and column[-1] == names[-1] and column[3:5] == names[3:5]
    with pytest.raises(IndexError):
        column[len(names)]
    # ~one byte per character and 8 per path, where a Path object holds ~370 bytes
    assert column._buffer.nbytes + column._offsets.nbytes < sum(len(str(n)) + 9 for n in names)
    rows = pickle.loads(pickle.dumps(path_rows([(names[0], 3), (names[1], 0)])))
    assert rows[0] == (names[0], 3) and type(rows[1][1]) is int and len(rows) == 2


def test_an_image_write_cut_short_leaves_the_earlier_file_and_a_link_keeps_its_target(tmp_path, monkeypatch):
    """translate.py or eval.py killed mid-write left a cut PNG that a later run (or a tool
    scoring the folder) read as whole; an output that is a link is replaced, not written through."""
    from src.data.image_io import save_image

    earlier, newer = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    save_image(earlier, tmp_path / "out.png")
    written = Image.Image.save

    def cut_short(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG cut")
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(Image.Image, "save", cut_short)
        with pytest.raises(KeyboardInterrupt):
            save_image(newer, tmp_path / "out.png")
    assert written is Image.Image.save and np.array_equal(load_image(tmp_path / "out.png", 3), earlier)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    (tmp_path / "kept.png").symlink_to(tmp_path / "out.png")
    save_image(newer, tmp_path / "kept.png")
    assert np.array_equal(load_image(tmp_path / "out.png", 3), earlier) and not (tmp_path / "kept.png").is_symlink()
    assert np.array_equal(load_image(tmp_path / "kept.png", 3), newer)


@pytest.mark.parametrize("kind", ["zip_parent", "zip_absolute", "tar_parent", "tar_symlink", "tar_fifo"])
def test_an_archive_member_that_would_land_outside_the_data_root_is_refused(tmp_path, kind):
    """A download from a changed or hostile mirror must not write outside data/<name>."""
    import io
    import tarfile
    archive = tmp_path / ("toy.zip" if kind.startswith("zip") else "toy.tar.gz")
    if kind.startswith("zip"):
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.writestr("toy/trainA/a.png", b"x")
            zipped.writestr("../evil.txt" if kind == "zip_parent" else str(tmp_path / "evil.txt"), b"x")
    else:
        with tarfile.open(archive, "w:gz") as tarred:
            if kind == "tar_parent":
                member = tarfile.TarInfo("../evil.txt")
                member.size = 1
                tarred.addfile(member, io.BytesIO(b"x"))
            elif kind == "tar_symlink":
                link = tarfile.TarInfo("toy/link")
                link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
                tarred.addfile(link)
            else:   # named as an image: the loader's open() would block on it for good
                fifo = tarfile.TarInfo("toy/trainA/a.png")
                fifo.type = tarfile.FIFOTYPE
                tarred.addfile(fifo)
    into = tmp_path / "data" / "scratch"
    into.mkdir(parents=True)
    with pytest.raises(RuntimeError, match=r"Refusing unsafe (path|member) "):
        download.extract(archive, into)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "data" / "evil.txt").exists()
    assert list(into.iterdir()) == []   # nothing of it written


def test_each_unpaired_model_samples_as_its_authors_loader(train_cfg):
    """CycleGAN's loader cycles its source domain; U-GAT-IT's and NICE-GAN's shuffle each domain
    on its own (src/data/base.py, UNPAIRED_SAMPLINGS)."""
    for model, sampling in (("cyclegan", "cyclegan"), ("ugatit", "balanced"), ("nicegan", "balanced")):
        cfg = train_cfg(f"model={model}", "data=horse2zebra")
        assert cfg.data.unpaired_sampling == sampling, model
        assert instantiate(cfg.data).unpaired_sampling == sampling


def test_an_image_over_pils_pixel_guard_is_named_with_the_way_round_it(tmp_path, monkeypatch):
    """A scan or panorama over PIL's ~179 M pixel guard (here, a lowered guard)."""
    from PIL import Image as PILImage
    write_image(tmp_path / "big.png", (64, 64), seed=0)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 64 * 64 // 4)   # PIL refuses over twice this
    with pytest.raises(ImageReadError, match=r"Cannot read image file .*big.png: .*Shrink it with an image editor"):
        load_image(tmp_path / "big.png", 3)
