"""Translate image files of any size the generator allows, in batches, as uint8 arrays.

Generators halve the resolution a fixed number of times and must get back to the same size, so
each side has to be a multiple of `size_multiple` (4 for the ResNet, U-GAT-IT and NICE-GAN
generators, 2**num_downs for the U-Net). Inputs are padded up to the next multiple by
reflection (not resized: the image's own pixels go through the network unresampled, and a
reflected border looks like more of the image to the convolutions), translated, and the output
is cropped back to the size translated: the input's, or that `short_side` or `size` scaled it to.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from src.data.errors import EmptyDatasetError
from src.data.folders import IMAGE_EXTENSIONS, list_images
from src.data.image_io import PIXEL_READING_KEYS, load_image, upright_size
from src.data.transforms import FIRST_RESIZE_MODES, resize_image, short_side_size, to_tensor
from src.models.base import TranslationModel
from src.models.size_check import check_translation_size, input_channels, size_multiple
from src.utils.accelerator import is_out_of_memory
from src.utils.config_checks import require_int
from src.utils.directions import DIRECTIONS
from src.utils.image_grid import to_uint8_images
from src.utils.rng import derived_seed, isolated_rng

log = logging.getLogger(__name__)

CropBox = tuple[int, int, int, int]  # top, left, height, width


# -- devices, directions and what the networks need ----------------------------------------------


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; "cuda" or "mps" where there is none is an error.
    Apple's MPS is used when asked for (device=mps: evaluation keeps its float64 sums on the CPU,
    `float64_device`), not by auto, which takes the devices the tests run on."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device={name!r} is not a device torch knows: use auto, cpu, cuda, cuda:N or mps") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name}: no CUDA device is available here; use device=cpu or device=auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={name}: Apple's MPS is not available here (a Mac with Apple silicon and a torch "
                         f"built for it); use device=cpu or device=auto")
    return device


def check_direction(model: TranslationModel, direction: str) -> None:
    """Raise a ValueError naming `direction=` when the model cannot translate this way."""
    if not isinstance(model, TranslationModel):
        raise ValueError(f"{type(model).__name__} generates images from noise and translates none: translate.py "
                         "is for the translation models (eval.py ckpt_path=... [num_samples=N] writes and scores a "
                         "noise model's samples)")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} must be one of {', '.join(DIRECTIONS)}")
    try:
        model.generator_for(direction)
    except ValueError as error:
        raise ValueError(f"direction={direction}: {type(model).__name__} cannot translate this way: {error}") from error


# -- padding to the size the generator allows ----------------------------------------------------


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, CropBox]:
    """Pad (N, C, H, W) so H and W are multiples of `multiple`, centring the image.

    Reflection padding, or edge replication where the image is too small to reflect (reflection
    needs the pad to be smaller than the side). Returns the padded batch and the box
    (top, left, height, width) that crops the original area back out.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    top, left = pad_h // 2, pad_w // 2
    box = (top, left, height, width)
    if pad_h == 0 and pad_w == 0:
        return x, box
    padding = (left, pad_w - left, top, pad_h - top)
    mode = "reflect" if max(padding[:2]) < width and max(padding[2:]) < height else "replicate"
    return F.pad(x, padding, mode=mode), box


def crop_to_box(x: torch.Tensor, box: CropBox) -> torch.Tensor:
    top, left, height, width = box
    return x[..., top:top + height, left:left + width]


# -- files in, arrays out --------------------------------------------------------------------------


def list_input_images(path: str | Path) -> list[Path]:
    """The image itself, or the image files of a folder and its subfolders, as the datasets list
    them (`list_images`: sorted, hidden entries left out with a warning)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input={path}: no such file or folder")
    try:
        return list_images(path)
    except EmptyDatasetError as error:
        raise FileNotFoundError(f"input={path} holds no image file ({', '.join(sorted(IMAGE_EXTENSIONS))})") from error


def translation_size(size: tuple[int, int], short_side: int | None = None,
                     fixed: tuple[int, int] | None = None) -> tuple[int, int]:
    """The (height, width) an image of `size` is translated at: `fixed` for every image, or its
    own scaled to a shorter side of `short_side` px, or its own."""
    if fixed is not None:
        return fixed
    return short_side_size(*size, short_side) if short_side else size


def group_by_size(paths: list[Path], short_side: int | None = None,
                  fixed: tuple[int, int] | None = None) -> dict[tuple[int, int], list[Path]]:
    """(height, width) -> its paths, in order of first appearance: one batch holds one size,
    the size each image is translated at (`translation_size`)."""
    if fixed is not None:   # every image's: no need to read a size (a PNG's means decoding it whole)
        return {fixed: list(paths)} if paths else {}
    groups: dict[tuple[int, int], list[Path]] = {}
    for path in paths:
        groups.setdefault(translation_size(upright_size(path), short_side, fixed), []).append(path)
    return groups


def fixed_translation_size(size: int | Sequence[int] | None, short_side: int | None) -> tuple[int, int] | None:
    """translate.py's `size` as (height, width): one number for a square, or [height, width];
    ValueError naming the setting for anything else, beside `short_side`, or for a `short_side`
    that is not a number of px."""
    require_int("short_side", short_side, allow_none=True, why=" (px; null: translate at the input's size)")
    if size is None:
        return None
    # (a Hydra list is a ListConfig: a Sequence, not a list)
    sides = list(size) if isinstance(size, Sequence) and not isinstance(size, str) else [size]
    if len(sides) not in (1, 2) or not all(
            isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in sides):
        raise ValueError(f"size={size!r} must be a positive number of px (a square) or [height, width], or null")
    if short_side is not None:
        raise ValueError(f"size={size!r} and short_side={short_side}: set one of them (size squashes every image "
                         f"to that size; short_side scales it, the aspect kept)")
    return (sides[0], sides[-1])


def round_up(side: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is at least `side`."""
    return -(-side // multiple) * multiple


def out_of_memory(chunk: list[Path], size: tuple[int, int], short_side: int | None,
                  fixed: tuple[int, int] | None = None) -> MemoryError:
    """The error of a batch too large for the device, with the images and the settings that fit it
    (a phone's 12 MP photo through a ResNet generator takes several GB of activations)."""
    # (fixed_translation_size refuses size beside short_side: one of them at most is set)
    if fixed is not None:
        scale = f"lower size={list(fixed)}"
    elif short_side is not None:
        scale = f"lower short_side={short_side}"
    else:
        scale = "translate at the scale the model was trained at with short_side=N (its data.load_size, e.g. 286)"
    return MemoryError(f"translating {len(chunk)} image(s) of {size[0]}x{size[1]} px ({chunk[0]}"
                       f"{' and others' if len(chunk) > 1 else ''}) ran out of memory: {scale}, or pass "
                       f"batch_size=1")


def translate_each_seeded(model: TranslationModel, images: torch.Tensor, direction: str, paths: list[Path],
                          seed: int) -> torch.Tensor:
    """Each image translated alone, its noise drawn from `derived_seed(seed, its file name)`."""
    translated = []
    for path, image in zip(paths, images.split(1)):
        with isolated_rng(images.device, derived_seed(seed, path.name)):
            translated.append(model.translate(image, direction))
    return torch.cat(translated)


#: how far past its training scale an image's short side may go before the translation says so
PAST_TRAINING_SCALE = 2


def warn_of_sizes_past_the_training_scale(model: TranslationModel, groups: dict[tuple[int, int], list[Path]]) -> None:
    """Images translated at their own size, their short side over PAST_TRAINING_SCALE times the
    scale the model trained at (a 12 MP photo through a model of 256 px crops of 286 px images):
    its normalisation's statistics and its textures are those of that scale, so the output is
    another picture than at it (zebra stripes a tenth as wide), and slow. Said once, with the fix."""
    data = model.training_data
    if data.get("preprocess", "resize_and_crop") not in FIRST_RESIZE_MODES or not data.get("load_size"):
        return   # trained on crops of images at their own size (or their width's scale): no one short side
    scale = int(data["load_size"])
    large = {size: group for size, group in groups.items() if min(size) > PAST_TRAINING_SCALE * scale}
    if large:
        count = sum(len(group) for group in large.values())
        height, width = max(large, key=min)
        log.warning("%d image(s) are translated at their own size, up to %dx%d px (%s), more than %d times the "
                    "scale the model trained at (data.load_size=%d): its outputs there are not what it learnt. "
                    "short_side=%d translates at that scale", count, height, width, large[(height, width)][0],
                    PAST_TRAINING_SCALE, scale, scale)


def translate_images(model: TranslationModel, paths: list[str | Path], direction: str = "AtoB",
                     batch_size: int = 8, device: str | torch.device | None = None,
                     short_side: int | None = None, size: int | Sequence[int] | None = None,
                     seed: int | None = None) -> Iterator[tuple[Path, np.ndarray]]:
    """Translate image files; yields (path, HxWxC uint8 output the size of the input, or of the
    input scaled to a shorter side of `short_side` px: the scale the model was trained at, or of
    `size` (px, a square, or [height, width]), every input squashed to it: what a model trained
    with preprocess=resize_and_crop saw, and what eval.py scores at data.crop_size).

    Files are read with the channels the translation expects (grayscale, RGBA and 16-bit inputs
    are converted by src.data.image_io) and batched by size (models that normalise with the
    batch's own statistics, pix2pix, translate each image alone: TranslationModel.translate).
    The model is moved to `device` (None: it translates where it is). Yields in size-group
    order, not in `paths` order.

    `seed`: a model that samples with noise (pix2pix's test-time dropout) draws each image's from
    its own seed, derived from `seed` and the file's name, so an image's translation does not
    depend on the others translated with it (their order, the size groups, the outputs that
    skip_existing kept); None: from torch's stream as it stands, one image after another.
    """
    check_direction(model, direction)
    require_int("batch_size", batch_size)
    fixed = fixed_translation_size(size, short_side)
    if device is None:
        device = model.device
    else:
        device = torch.device(device)
        model.to(device)
    multiple, channels = size_multiple(model, direction), input_channels(model, direction)
    groups = group_by_size([Path(p) for p in paths], short_side, fixed)
    if fixed is None and short_side is None:
        warn_of_sizes_past_the_training_scale(model, groups)
    # Every size before the first output is written (a JPEG's from its header: one broken further
    # in stops the run when it is read, naming it).
    for (height, width), group in groups.items():
        padded = (round_up(height, multiple), round_up(width, multiple))
        check_translation_size(model, direction, *padded,
                               what=f"{group[0]} ({height}x{width} px, padded to {padded[0]}x{padded[1]})",
                               fix="resize the input to one of them (size=N translates every input at N x N)")

    # Pixel values (deep grayscale files, colour profiles) are read, and images resized, as the
    # model's training data were; a setting the run predates keeps the default.
    reading = {key: model.training_data[key] for key in PIXEL_READING_KEYS if key in model.training_data}
    interpolation = model.training_data.get("resize_interpolation", "bicubic")
    # (the training data decoded JPEGs at reduced scale only in the modes that first resize)
    reduced_decode = (model.training_data.get("reduced_jpeg_decode", True)
                      and model.training_data.get("preprocess", "resize_and_crop") in FIRST_RESIZE_MODES)

    def read(path: Path, scaled: tuple[int, int]) -> torch.Tensor:
        if short_side is None and fixed is None:
            return to_tensor(load_image(path, channels, **reading))
        image = load_image(path, channels, decode_at_least=scaled if reduced_decode else None, **reading)
        return to_tensor(resize_image(image, *scaled, interpolation))

    noisy = seed is not None and bool(model.sampling_options().get("dropout"))

    def generate() -> Iterator[tuple[Path, np.ndarray]]:
        for group_size, group in groups.items():
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                batch = torch.stack([read(path, group_size) for path in chunk]).to(device)
                padded, box = pad_to_multiple(batch, multiple)
                try:
                    translated = (translate_each_seeded(model, padded, direction, chunk, seed) if noisy
                                  else model.translate(padded, direction))
                except (RuntimeError, MemoryError) as error:   # torch.OutOfMemoryError is a RuntimeError
                    if not is_out_of_memory(error):
                        raise
                    raise out_of_memory(chunk, group_size, short_side, fixed) from error
                if not torch.isfinite(translated).all():   # a PNG would show NaN as whatever its cast gives
                    raise ValueError(f"The translation of {chunk[0]}{' (or of another image of its batch)' * (len(chunk) > 1)} "
                                     f"holds NaN or infinite values: the checkpoint's networks diverged or overflow "
                                     f"on this input. Nothing was written for it; translate with an earlier checkpoint")
                yield from zip(chunk, to_uint8_images(crop_to_box(translated, box)))

    return generate()
