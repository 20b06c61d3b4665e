"""Ground-truth scores on the embedded `shapes` dataset.

Test pair k (`testA/k.png`, `testB/k.png`) shares background, box and colour and differs only in
the shape, so a translation of testA/k can be compared with testB/k pixel by pixel (and the
other way round). Besides the usual image distances (L1, PSNR, SSIM) two scores say *what*
went wrong:

* IoU of the shape masks: did the model change the geometry into the target shape?
* foreground colour error: did it keep the shape's colour?

A mask is "pixels far from pair k's known background" (re-rendered from ``test_meta.json``):
the per-pixel largest channel difference to the background above `FOREGROUND_THRESHOLD`.

Scales: inputs are images in [-1, 1] (the codebase's convention); L1 is the mean absolute
difference on the [0, 1] pixel scale, PSNR and SSIM use data_range 1 on that scale, the colour
error is the Euclidean distance of the median foreground colours in 0-255 RGB.

`per_image_scores` gives one value per image; `score_translations` their means;
`ShapesTruthScorer` accumulates sums and counts over batches as a torchmetrics Metric, so its
`compute()` sums them across DDP ranks (each rank may score its own shard of the pairs).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from src.data.shapes import (BACKGROUND_SATURATION, BACKGROUND_VALUE, SHAPE_SATURATION, SHAPE_VALUE,
                             render_background)
from src.data.transforms import to_tensor

TEST_META_FILE = "test_meta.json"

# The generator's guarantee (see src/data/shapes.py): the chroma max(rgb) - min(rgb) of a shape
# colour is at least s_min * v_min, that of a background pixel at most s_max * v_max. Two colours
# whose chromas differ by d differ by at least d / 2 in some channel, so every fully covered
# shape pixel is at least this far (0.29, 74 of 255 levels) from the background under it.
MIN_SHAPE_SEPARATION = (SHAPE_SATURATION[0] * SHAPE_VALUE[0]
                        - BACKGROUND_SATURATION[1] * BACKGROUND_VALUE[1]) / 2.0
# Half the guaranteed separation (0.145, about 37 of 255 levels): every fully covered shape pixel
# is in the mask and no exact background pixel is; an anti-aliased edge pixel is in once its
# coverage exceeds threshold / contrast, i.e. always from 50% coverage on; and a generator's
# background noise below 37 levels is not taken for a shape.
FOREGROUND_THRESHOLD = MIN_SHAPE_SEPARATION / 2.0

SCORE_NAMES = ("iou", "color_error", "l1", "psnr", "ssim")
_SSIM_KERNEL, _SSIM_SIGMA = 11, 1.5  # torchmetrics' default Gaussian window (the SSIM paper's)


# -- the known backgrounds ---------------------------------------------------------------------


def is_shapes_dataset(data_dir: str | Path) -> bool:
    """True when data_dir holds a generated shapes dataset with its test-pair records."""
    return (Path(data_dir) / TEST_META_FILE).is_file()


def load_test_meta(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """File name (e.g. "0007.png") -> that test pair's scene record from test_meta.json."""
    meta = json.loads((Path(data_dir) / TEST_META_FILE).read_text())
    return {entry["file"]: entry for entry in meta["pairs"]}


def test_image_size(data_dir: str | Path) -> int:
    return int(json.loads((Path(data_dir) / TEST_META_FILE).read_text())["size"])


def truth_unavailable(size: int, channels: tuple[int, int], image_shape: tuple[int, ...]) -> str | None:
    """Why the ground truth cannot score the test images of a shapes dataset generated at `size`
    (`test_image_size`) read with `channels` (input_nc, output_nc) at `image_shape` (H, W), or
    None: the masks are found by colour, and the backgrounds are drawn at the generated size,
    which a crop would not line up with."""
    if tuple(channels) != (3, 3):
        return "the shapes masks need RGB images (data.input_nc = data.output_nc = 3)"
    if tuple(image_shape) != (size, size):
        return (f"the test images are preprocessed to {tuple(image_shape)}, not the generated {size}x{size} the "
                f"backgrounds are drawn at (data.preprocess=none scores them)")
    return None


def background_tensor(meta_k: dict[str, Any], size: int) -> torch.Tensor:
    """Pair k's background, (3, size, size) in [-1, 1], bit-exact with the PNGs off the shape."""
    return to_tensor(np.ascontiguousarray(render_background(meta_k, size)))


def load_test_backgrounds(data_dir: str | Path, size: int | None = None,
                          files: list[str] | None = None) -> torch.Tensor:
    """Backgrounds of the test pairs, (N, 3, H, W) in [-1, 1], in sorted file order (= pair index
    order) or in the order of `files`. size defaults to the size the dataset was generated at."""
    meta = load_test_meta(data_dir)
    size = test_image_size(data_dir) if size is None else size
    files = sorted(meta) if files is None else files
    return torch.stack([background_tensor(meta[name], size) for name in files])


# -- masks, colours and per-image scores ------------------------------------------------------


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def foreground_masks(images: torch.Tensor, backgrounds: torch.Tensor,
                     threshold: float = FOREGROUND_THRESHOLD) -> torch.Tensor:
    """(N, H, W) bool: pixels whose largest channel difference to the background exceeds
    `threshold` (both in [-1, 1]; the threshold is on the [0, 1] scale)."""
    distance = (to_unit_range(images) - to_unit_range(backgrounds)).abs().amax(dim=1)
    return distance > threshold


def mask_iou(masks: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of two (N, H, W) bool masks; two empty masks agree perfectly (1)."""
    intersection = (masks & reference).flatten(1).sum(1).float()
    union = (masks | reference).flatten(1).sum(1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def median_colors(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N, C) per-channel median over each image's mask, on the 0-255 scale.

    Every mask must be non-empty (see `color_error` for the fallbacks)."""
    pixels = to_unit_range(images).flatten(2) * 255.0  # (N, C, HW)
    outside = ~masks.flatten(1)[:, None, :].expand_as(pixels)
    return pixels.masked_fill(outside, float("nan")).nanmedian(dim=2).values


def _non_empty(masks: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Each mask, or its fallback where the mask is empty."""
    empty = ~masks.flatten(1).any(1)
    return torch.where(empty[:, None, None], fallback, masks)


def color_error(fakes: torch.Tensor, targets: torch.Tensor, fake_masks: torch.Tensor,
                target_masks: torch.Tensor) -> torch.Tensor:
    """Per-image Euclidean distance (0-255 RGB) of the median foreground colours.

    A translation with an empty mask (it drew no shape) is read over the ground truth's mask
    region instead, so the score says which colour it put where the shape should be; an empty
    ground-truth mask (not possible on shapes) falls back to the whole image. Never NaN.
    """
    whole = torch.ones_like(target_masks)
    target_region = _non_empty(target_masks, whole)
    fake_region = _non_empty(fake_masks, target_region)
    difference = median_colors(fakes, fake_region) - median_colors(targets, target_region)
    return difference.norm(dim=1)


def _ssim_sigma(height: int, width: int) -> float:
    """The Gaussian window's sigma: the default 1.5 (an 11 px window), or for images under 11 px
    the sigma whose window is the largest odd size that fits. torchmetrics sizes a Gaussian
    window from sigma alone (2 * int(3.5 sigma + 0.5) + 1) and ignores `kernel_size`."""
    side = min(_SSIM_KERNEL, height, width)
    side = side if side % 2 == 1 else side - 1
    if side < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 px, got {height}x{width}")
    return _SSIM_SIGMA if side == _SSIM_KERNEL else (side - 1) / 7


def per_image_scores(fakes: torch.Tensor, targets: torch.Tensor, backgrounds: torch.Tensor,
                     threshold: float = FOREGROUND_THRESHOLD) -> dict[str, torch.Tensor]:
    """Scores of each translation against its ground truth, each (N,).

    fakes, targets, backgrounds: (N, 3, H, W) in [-1, 1]; backgrounds[i] is the known background
    of pair i. Keys: iou, color_error (0-255), l1 ([0, 1] scale), psnr (dB, data_range 1; inf for
    identical images), ssim.
    """
    if not (fakes.shape == targets.shape == backgrounds.shape):
        raise ValueError(f"fakes {tuple(fakes.shape)}, targets {tuple(targets.shape)} and backgrounds "
                         f"{tuple(backgrounds.shape)} must have the same shape")
    if fakes.dim() != 4 or fakes.size(1) != 3:
        raise ValueError(f"expected RGB batches (N, 3, H, W), got {tuple(fakes.shape)}: the shapes masks rely "
                         f"on colour separation, which grayscale images do not keep")
    fakes, targets = fakes.detach().float(), targets.detach().float()
    backgrounds = backgrounds.to(fakes.device, torch.float32)
    fake_masks = foreground_masks(fakes, backgrounds, threshold)
    target_masks = foreground_masks(targets, backgrounds, threshold)
    fake01, target01 = to_unit_range(fakes), to_unit_range(targets)
    return {
        "iou": mask_iou(fake_masks, target_masks),
        "color_error": color_error(fakes, targets, fake_masks, target_masks),
        "l1": (fake01 - target01).abs().flatten(1).mean(1),
        "psnr": peak_signal_noise_ratio(fake01, target01, data_range=1.0, reduction="none", dim=(1, 2, 3)),
        "ssim": structural_similarity_index_measure(fake01, target01, data_range=1.0, reduction="none",
                                                    sigma=_ssim_sigma(*fake01.shape[-2:])),
    }


def score_translations(fakes: torch.Tensor, targets: torch.Tensor, backgrounds: torch.Tensor,
                       threshold: float = FOREGROUND_THRESHOLD) -> dict[str, float]:
    """Mean of `per_image_scores` over the batch, as plain floats."""
    return {k: float(v.mean()) for k, v in per_image_scores(fakes, targets, backgrounds, threshold).items()}


# -- accumulation over batches (and ranks) ----------------------------------------------------


class ShapesTruthScorer(Metric):
    """Mean per-image scores over every `update(fakes, targets, backgrounds)` call.

    The states are sums and a count reduced with "sum", so under DDP `compute()` returns the
    means over the images of every rank (torchmetrics syncs them; all ranks must call compute).
    """

    full_state_update = False

    def __init__(self, threshold: float = FOREGROUND_THRESHOLD, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        for name in SCORE_NAMES:
            self.add_state(f"{name}_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, fakes: torch.Tensor, targets: torch.Tensor, backgrounds: torch.Tensor) -> None:
        scores = per_image_scores(fakes, targets, backgrounds, self.threshold)
        for name, values in scores.items():
            state = getattr(self, f"{name}_sum")
            setattr(self, f"{name}_sum", state + values.to(state).sum())
        self.count = self.count + fakes.size(0)

    def compute(self) -> dict[str, torch.Tensor]:
        if int(self.count) == 0:
            raise ValueError("ShapesTruthScorer.compute() called before any image was scored")
        return {name: getattr(self, f"{name}_sum") / self.count for name in SCORE_NAMES}
