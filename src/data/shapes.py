"""The embedded synthetic dataset: discs (domain A) <-> triangles (domain B); also served as one
labelled domain (disc 0, triangle 1) for noise-to-image GANs.

Each image shows one filled shape in a saturated colour over a linear gradient between two
low-saturation colours. A disc and an upright isosceles triangle (base on the bottom edge of the
box, apex at its top middle) drawn in the same square box are the two domains, so a translator
must change the shape and keep everything else: position, size, colour and background.

Guarantees the evaluation relies on:

* Test pair k (``testA/<k>.png``, ``testB/<k>.png``) shares every attribute but the shape, and
  ``test_meta.json`` records them, so `render_background` re-creates the background exactly
  (byte for byte wherever the shape does not cover a pixel).
* Background and shape colours are far apart. The chroma max(rgb) - min(rgb) of a shape colour is
  at least 0.85 * 0.85 = 0.72, that of any background pixel at most 0.95 * 0.15 = 0.14 (chroma
  is convex, so the gradient stays below its ends), hence every shape pixel differs from the
  background under it by at least (0.72 - 0.14) / 2 = 0.29 (74 of 255 levels) in some channel:
  "pixels far from the known background" recovers the shape mask.
* Generation is deterministic from the seed (same seed -> identical PNG bytes) and written into
  a temporary folder that is renamed into place, so concurrent processes never see half a
  dataset. ``meta.json`` records the parameters; a folder generated with other parameters is
  regenerated, a folder not generated here is never overwritten.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from src.data.labelled import LabelledImageDataModule
from src.data.paired import PairedDataModule
from src.data.placement import place, remove_stale_scratch, scratch_prefix
from src.data.unpaired import UnpairedDataModule

GENERATOR_VERSION = 1
SUPERSAMPLE = 4  # sub-pixels per side for anti-aliased shape edges (16 samples per pixel)
BOX_SIDE_FRACTION = (0.35, 0.70)  # box side relative to the image side
SHAPE_SATURATION, SHAPE_VALUE = (0.85, 1.0), (0.85, 1.0)
BACKGROUND_SATURATION, BACKGROUND_VALUE = (0.0, 0.15), (0.15, 0.95)
SHAPES = {"A": "disc", "B": "triangle"}

# Independent random streams per split/domain: the test set of a seed is the same for the
# unpaired and the paired variant, and trainA does not depend on n_train of trainB.
_STREAMS = {"trainA": 0, "trainB": 1, "test": 2, "train_pairs": 3}
_MAX_SUBPIXELS_PER_CHUNK = 1 << 23  # bounds memory of the vectorised mask (about 8 MB of bools)


# -- drawing the scene attributes -------------------------------------------------------------


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all in [0, 1]; returns (..., 3)."""
    sector = np.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * fraction)
    t = value * (1.0 - saturation * (1.0 - fraction))
    sector = sector.astype(int) % 6
    choices = [
        (value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)
    ]
    channels = [np.choose(sector, [choice[c] for choice in choices]) for c in range(3)]
    return np.stack(channels, axis=-1)


def _random_colors(rng: np.random.Generator, n: int, saturation: tuple, value: tuple) -> np.ndarray:
    hue = rng.uniform(0.0, 1.0, n)
    return _hsv_to_rgb(hue, rng.uniform(*saturation, n), rng.uniform(*value, n))


def draw_scenes(rng: np.random.Generator, n: int, size: int) -> list[dict[str, Any]]:
    """Attributes of n scenes: background gradient, square box (pixels), shape colour."""
    side = rng.uniform(*BOX_SIDE_FRACTION, n) * size
    x0 = rng.uniform(0.0, 1.0, n) * (size - side)
    y0 = rng.uniform(0.0, 1.0, n) * (size - side)
    shape_color = _random_colors(rng, n, SHAPE_SATURATION, SHAPE_VALUE)
    color0 = _random_colors(rng, n, BACKGROUND_SATURATION, BACKGROUND_VALUE)
    color1 = _random_colors(rng, n, BACKGROUND_SATURATION, BACKGROUND_VALUE)
    angle = rng.uniform(0.0, 2.0 * math.pi, n)
    return [
        {
            "background": {
                "color0": color0[k].tolist(),
                "color1": color1[k].tolist(),
                # Stored as a unit vector (math.cos/sin per scalar) so re-rendering needs no
                # trigonometry, whose vectorised and scalar numpy paths may differ in the last bit.
                "direction": [math.cos(angle[k]), math.sin(angle[k])],
            },
            "box": [float(x0[k]), float(y0[k]), float(side[k])],
            "shape_color": shape_color[k].tolist(),
        }
        for k in range(n)
    ]


# -- rendering ------------------------------------------------------------------------------


def _gradients(color0: np.ndarray, color1: np.ndarray, direction: np.ndarray, size: int) -> np.ndarray:
    """Linear gradients, (n, size, size, 3) floats in [0, 1], from (n, 3), (n, 3), (n, 2).

    Along `direction`, t runs from 0 at the image corner furthest behind to 1 at the corner
    furthest ahead, evaluated at pixel centres in image-side units. Only elementwise arithmetic,
    so a batch of scenes and a single scene give bit-identical values.
    """
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size
    dx, dy = direction[:, 0, None, None], direction[:, 1, None, None]
    lowest = np.minimum(dx, 0.0) + np.minimum(dy, 0.0)
    highest = np.maximum(dx, 0.0) + np.maximum(dy, 0.0)
    t = (centres[None, None, :] * dx + centres[None, :, None] * dy - lowest) / (highest - lowest)
    t = t[..., None]
    return color0[:, None, None, :] * (1.0 - t) + color1[:, None, None, :] * t


def shape_coverage(kind: str, boxes: np.ndarray, size: int, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction of each pixel covered by the shape, (n, size, size) in [0, 1].

    boxes: (n, 3) rows (x0, y0, side) in pixels, x to the right, y down. The disc is inscribed in
    the box; the triangle has the box's bottom edge as base and its apex at the top middle.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 3)
    x0, y0, side = (boxes[:, i, None, None] for i in range(3))
    samples = (np.arange(size * supersample, dtype=np.float64) + 0.5) / supersample
    x, y = samples[None, None, :], samples[None, :, None]
    if kind == "disc":
        radius = side / 2.0
        inside = (x - (x0 + radius)) ** 2 + (y - (y0 + radius)) ** 2 <= radius**2
    elif kind == "triangle":
        depth = y - y0  # 0 at the apex, side at the base
        inside = (depth >= 0.0) & (depth <= side) & (np.abs(x - (x0 + side / 2.0)) <= depth / 2.0)
    else:
        raise ValueError(f"Unknown shape {kind!r}; expected 'disc' or 'triangle'.")
    n = boxes.shape[0]
    return inside.reshape(n, size, supersample, size, supersample).mean(axis=(2, 4))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _scene_arrays(scenes: list[dict[str, Any]]) -> tuple[np.ndarray, ...]:
    def column(get) -> np.ndarray:
        return np.array([get(scene) for scene in scenes], dtype=np.float64)

    return (
        column(lambda s: s["background"]["color0"]),
        column(lambda s: s["background"]["color1"]),
        column(lambda s: s["background"]["direction"]),
        column(lambda s: s["box"]),
        column(lambda s: s["shape_color"]),
    )


def render_scenes(scenes: list[dict[str, Any]], kind: str, size: int) -> np.ndarray:
    """Render scenes with one shape kind, (n, size, size, 3) uint8."""
    color0, color1, direction, boxes, shape_color = _scene_arrays(scenes)
    background = _gradients(color0, color1, direction, size)
    coverage = shape_coverage(kind, boxes, size)[..., None]
    # Where coverage is 0 this is exactly the background (x*1 + y*0 == x), so
    # render_background reproduces those pixels bit for bit.
    image = background * (1.0 - coverage) + shape_color[:, None, None, :] * coverage
    return _to_uint8(image)


def render_background(meta_k: dict[str, Any], size: int) -> np.ndarray:
    """The background of one scene (an entry of test_meta.json), (size, size, 3) uint8."""
    color0, color1, direction, _, _ = _scene_arrays([meta_k])
    return _to_uint8(_gradients(color0, color1, direction, size))[0]


# -- writing a dataset folder -----------------------------------------------------------------


def _file_names(n: int) -> list[str]:
    # Zero-padded so that sorted file order is the index order (sample grids, test pairs).
    width = max(4, len(str(n - 1)))
    return [f"{k:0{width}d}.png" for k in range(n)]


def _write_images(folder: Path, scenes: list[dict[str, Any]], kind: str, size: int) -> None:
    folder.mkdir(parents=True)
    chunk = max(1, _MAX_SUBPIXELS_PER_CHUNK // (size * SUPERSAMPLE) ** 2)
    names = _file_names(len(scenes))
    for start in range(0, len(scenes), chunk):
        images = render_scenes(scenes[start : start + chunk], kind, size)
        for name, image in zip(names[start : start + chunk], images):
            Image.fromarray(image).save(folder / name)


def _write_pairs(root: Path, split: str, scenes: list[dict[str, Any]], size: int) -> None:
    """splitA/k.png and splitB/k.png share the scene; split_meta.json records it."""
    for domain, kind in SHAPES.items():
        _write_images(root / f"{split}{domain}", scenes, kind, size)
    entries = [{"file": name, **scene} for name, scene in zip(_file_names(len(scenes)), scenes)]
    meta = {"size": size, "shapes": SHAPES, "pairs": entries}
    (root / f"{split}_meta.json").write_text(json.dumps(meta))


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream]])


def generate(root: Path, params: dict[str, Any]) -> None:
    """Write the dataset described by params into root (which must not exist)."""
    size, seed = params["size"], params["seed"]
    n_train, n_test = params["n_train"], params["n_test"]
    root.mkdir(parents=True)
    if params["paired"]:
        _write_pairs(root, "train", draw_scenes(_rng(seed, "train_pairs"), n_train, size), size)
    else:
        for domain, kind in SHAPES.items():
            scenes = draw_scenes(_rng(seed, f"train{domain}"), n_train, size)
            _write_images(root / f"train{domain}", scenes, kind, size)
    _write_pairs(root, "test", draw_scenes(_rng(seed, "test"), n_test, size), size)
    (root / "meta.json").write_text(json.dumps(params, indent=2))  # last: marks it complete


def shapes_params(size: int, n_train: int, n_test: int, seed: int, paired: bool) -> dict[str, Any]:
    """The parameters a generated folder must match (written as its meta.json)."""
    for key, value, minimum in (
        ("data.size", size, 8), ("data.n_train", n_train, 1), ("data.n_test", n_test, 1)
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{key}={value!r} must be an integer >= {minimum}.")
    return {
        "generator": "src.data.shapes",
        "version": GENERATOR_VERSION,
        "size": size,
        "n_train": n_train,
        "n_test": n_test,
        "seed": int(seed),
        "paired": paired,
        "supersample": SUPERSAMPLE,
    }


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def ensure_shapes_dataset(folder: str | Path, params: dict[str, Any]) -> Path:
    """Make folder hold the shapes dataset described by params; cheap when it already does."""
    folder = Path(folder)
    existing_meta = _read_meta(folder)
    if existing_meta == params:
        return folder
    generated_here = (existing_meta or {}).get("generator") == params["generator"]
    if folder.is_dir() and any(folder.iterdir()) and not generated_here:
        raise FileExistsError(
            f"{folder} exists but was not generated by src.data.shapes (no meta.json of ours); "
            f"refusing to overwrite it. Remove it or set data.data_dir to another folder."
        )
    # Resolved: a data_dir that is a link to scratch storage (empty, or not made yet) is filled
    # through it, from a scratch folder beside its target; the link itself is never moved.
    real = folder.resolve()
    real.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(real)
    scratch = Path(tempfile.mkdtemp(prefix=scratch_prefix(real), dir=real.parent))
    built = scratch / real.name
    try:
        generate(built, params)
        if _read_meta(real) not in (None, params):
            # Generated with other parameters: move it aside, then swap the new one in.
            stale = real.parent / f".{real.name}.stale-{uuid.uuid4().hex[:8]}"
            os.rename(real, stale)
            shutil.rmtree(stale, ignore_errors=True)
        # (False: another process generated the same parameters first; other ones raise)
        place(built, real, lambda placed: _read_meta(placed) == params)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


# -- DataModules -------------------------------------------------------------------------------


class _GeneratedShapes:
    """Mixin: generate the shapes dataset into data_dir before any split is indexed.

    Extra arguments: size (image side, px), n_train (training images per domain, or training
    pairs), n_test (test pairs), seed. load_size/crop_size default to size; preprocess to "none".
    """

    default_name = "shapes"
    paired_training_scenes = False

    def __init__(
        self,
        data_dir: str | Path,
        name: str | None = None,
        size: int = 32,
        n_train: int = 1000,
        n_test: int = 100,
        seed: int = 0,
        preprocess: str = "none",
        load_size: int | None = None,
        crop_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.shapes_params = shapes_params(size, n_train, n_test, seed, self.paired_training_scenes)
        self.unread_crop_size = crop_size if preprocess == "none" and crop_size not in (None, size) else None
        kwargs.setdefault("feature_extractor", "random_cnn")  # no Inception download for toy data
        super().__init__(  # the DataModule this is mixed into
            data_dir=data_dir,
            name=name or self.default_name,
            preprocess=preprocess,
            load_size=size if load_size is None else load_size,
            crop_size=size if crop_size is None else crop_size,
            **kwargs,
        )

    def check_present(self) -> None:
        """Nothing to check: prepare_data writes the dataset (once, on one rank under DDP)."""

    def setup(self, stage: str | None = None) -> None:
        # Training only (None: every stage, as SplitDataModule.setup reads it): evaluating a run
        # that trained so (at data.size) must still work.
        if stage in ("fit", None) and self.unread_crop_size is not None:
            # Unread with preprocess none, while the models size their networks from it.
            size, crop = self.shapes_params["size"], self.unread_crop_size
            raise ValueError(f"data.crop_size={crop}: the shapes images are generated at data.size={size} and used "
                             f"as they are (data.preprocess=none); set data.size={crop} instead, or crop with "
                             f"data.preprocess=crop and a data.crop_size up to data.size")
        super().setup(stage)

    def _ensure_available(self) -> None:
        # Called from prepare_data and again before any dataset is indexed, because
        # prepare_data does not run in every code path (direct setup, sample_batch, tests).
        ensure_shapes_dataset(self.data_dir, self.shapes_params)


class ShapesDataModule(_GeneratedShapes, UnpairedDataModule):
    """Unpaired discs (A) and triangles (B); the training images of A and B are drawn
    independently. Other arguments as UnpairedDataModule."""


class ShapesPairedDataModule(_GeneratedShapes, PairedDataModule):
    """Paired discs -> triangles for pix2pix: training pair k shares every attribute but the
    shape, like the test pairs; written in the folders layout. Other arguments as
    PairedDataModule."""

    default_name = "shapes_paired"
    paired_training_scenes = True


class ShapesLabelledDataModule(_GeneratedShapes, LabelledImageDataModule):
    """Discs (label 0) and triangles (label 1) as one labelled domain for noise-to-image GANs:
    the unpaired shapes folders read with layout "domains" (data.classes=[B]: triangles only).
    Other arguments as LabelledImageDataModule."""

    display_names = SHAPES

    def __init__(self, *args: Any, layout: str = "domains", **kwargs: Any) -> None:
        if layout != "domains":  # the generated folders are trainA/trainB/testA/testB
            raise ValueError(f"data.layout={layout!r}: the shapes dataset has the layout 'domains' only.")
        super().__init__(*args, layout=layout, **kwargs)
