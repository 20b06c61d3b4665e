"""Preprocessing pipelines (albumentations 2.x): resize/crop/flip, then a [-1, 1] CHW tensor.

The `preprocess` modes follow junyanz/pytorch-CycleGAN-and-pix2pix:

=======================  ======================================  ================================
mode                     training                                evaluation (deterministic)
=======================  ======================================  ================================
resize_and_crop          resize to load x load, random crop      resize straight to crop x crop
crop                     random crop crop x crop                 center crop crop x crop
scale_width              width -> load (keep aspect, height at   same as training
                         least crop), sides floored to x4
scale_width_and_crop     scale_width, random crop crop x crop    scale_width, center crop
scale_shortside_and_     shorter side -> load (keep aspect),     same as training
center_crop              center crop crop x crop
none                     sides floored to a multiple of 4        same as training
=======================  ======================================  ================================

plus a random horizontal flip in training when `flip` is set.

`scale_shortside_and_center_crop` (not a junyanz mode) is DCGAN's and torchvision's recipe for
photos (Resize + CenterCrop): a noise-to-image GAN learns the training images' framing, and FID
compares its samples with the evaluation images, so the two must frame alike. resize_and_crop's
random crops of a larger resize show content bigger than its evaluation resize does.

Randomness: every random draw comes from a per-call seed, and a missing seed is drawn from
torch's global RNG; training items are prepared with that RNG seeded per item
(src/data/epoch_order.py), so `seed` fixes every crop and flip whatever the workers.
albumentations' own default would seed from OS entropy.
"""

from __future__ import annotations

import random
from functools import partial

import albumentations as A
import numpy as np
import torch
from PIL import Image

from src.utils.image_grid import from_uint8_levels

PREPROCESS_MODES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop",
                    "scale_shortside_and_center_crop", "none")
#: the modes that first resize every image to load_size on its shorter side or more (a JPEG may
#: then decode reduced; the images' scale is load_size whatever their own)
FIRST_RESIZE_MODES = ("resize_and_crop", "scale_shortside_and_center_crop")

# The generators halve the resolution twice (ResNet) and must upsample back to the same size,
# so modes that keep the image's own size make each side a multiple of this.
SIDE_MULTIPLE = 4
#: how far (relative) the aspect ratios of a pair's two images may differ and still be resized onto
#: each other: rounding of two resolutions of one scene (2048x1024 and 255x128), not another shape
PAIR_ASPECT_TOLERANCE = 0.01

# The resampling kernel (`data.resize_interpolation`): bicubic as CycleGAN's and pix2pix's
# loaders (PIL BICUBIC), bilinear as U-GAT-IT's and NICE-GAN's (torchvision's Resize default,
# which resizes a PIL image with PIL). Resizing is PIL's own, so the pixels the networks see are
# the references' to the bit: PIL's cubic kernel (a = -0.5; cv2's is -0.75, sharper, with more
# overshoot) widened by the scale when shrinking, which low-passes against aliasing.
RESIZE_INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def validate_preprocess(preprocess: str, load_size: int, crop_size: int) -> None:
    """Raise ValueError naming the config key when the preprocessing settings cannot work."""
    if preprocess not in PREPROCESS_MODES:
        raise ValueError(
            f"data.preprocess={preprocess!r} is unknown; valid values: {', '.join(PREPROCESS_MODES)}."
        )
    for key, value in (("data.load_size", load_size), ("data.crop_size", crop_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{key}={value!r} must be a positive integer (pixels).")
    needs_load_at_least_crop = preprocess in ("resize_and_crop", "scale_width_and_crop",
                                              "scale_shortside_and_center_crop")
    if needs_load_at_least_crop and crop_size > load_size:
        raise ValueError(
            f"data.crop_size={crop_size} is larger than data.load_size={load_size}: with "
            f"preprocess={preprocess!r} the image is first scaled to load_size and then cropped. "
            f"Use crop_size <= load_size."
        )
    if preprocess.startswith("scale_width") and load_size < SIDE_MULTIPLE:
        raise ValueError(f"data.load_size={load_size} must be at least {SIDE_MULTIPLE} with data.preprocess={preprocess} "
                         f"(the width it scales to)")


def resize_image(image: np.ndarray, height: int, width: int, interpolation: str = "bicubic",
                 **_: object) -> np.ndarray:
    """HxWxC uint8 image (C = 1 or 3) resized to height x width with PIL's `interpolation` (a
    RESIZE_INTERPOLATIONS name), as the references' loaders resize."""
    channels = image.shape[2]
    pil_image = Image.fromarray(image[:, :, 0] if channels == 1 else image)  # mode L or RGB
    resized = pil_image.resize((width, height), RESIZE_INTERPOLATIONS[interpolation])
    return np.array(resized, dtype=np.uint8).reshape(height, width, channels)  # a writable copy


def scale_width(image: np.ndarray, load_size: int, crop_size: int, interpolation: str = "bicubic",
                **_: object) -> np.ndarray:
    """Scale so that the width is load_size, keeping the aspect ratio; the height is kept at least
    crop_size so a crop_size crop always fits, the height truncated to whole pixels (both as in
    the reference implementation: int(max(load * h / w, crop)))."""
    height, width = image.shape[:2]
    new_height = int(max(load_size * height / width, crop_size))
    if (new_height, load_size) == (height, width):
        return image
    return resize_image(image, new_height, load_size, interpolation)


def short_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) scaled so that the shorter side is `side` px, the aspect kept (the longer
    side rounded)."""
    if height <= width:
        return side, max(1, round(width * side / height))
    return max(1, round(height * side / width)), side


def scale_shortside(image: np.ndarray, load_size: int, interpolation: str = "bicubic", **_: object) -> np.ndarray:
    """Scale so that the shorter side is load_size, keeping the aspect ratio."""
    height, width = image.shape[:2]
    size = short_side_size(height, width, load_size)
    return image if size == (height, width) else resize_image(image, *size, interpolation)


def floor_to_multiple(image: np.ndarray, multiple: int = SIDE_MULTIPLE, **_: object) -> np.ndarray:
    """Center-crop each side down to a multiple of `multiple` (at most multiple-1 pixels lost).

    Rounding down by cropping, not resizing, keeps the pixels untouched: no interpolation blur
    and no aspect change.
    """
    height, width = image.shape[:2]
    new_height, new_width = height - height % multiple, width - width % multiple
    top, left = (height - new_height) // 2, (width - new_width) // 2
    return image[top : top + new_height, left : left + new_width]


def _geometry(preprocess: str, load_size: int, crop_size: int, train: bool,
              interpolation: str = "bicubic") -> list[A.BasicTransform]:
    """The resize/crop steps of one mode, random in training and deterministic in evaluation."""
    crop = A.RandomCrop if train else A.CenterCrop
    to_width = A.Lambda(image=partial(scale_width, load_size=load_size, crop_size=crop_size,
                                      interpolation=interpolation))
    to_multiple = A.Lambda(image=partial(floor_to_multiple, multiple=SIDE_MULTIPLE))

    def resize(height: int, width: int) -> A.Lambda:
        return A.Lambda(image=partial(resize_image, height=height, width=width, interpolation=interpolation))

    if preprocess == "resize_and_crop":
        if train:
            return [resize(load_size, load_size), A.RandomCrop(crop_size, crop_size)]
        return [resize(crop_size, crop_size)]
    if preprocess == "crop":
        return [crop(crop_size, crop_size)]
    if preprocess == "scale_width":
        return [to_width, to_multiple]
    if preprocess == "scale_width_and_crop":
        return [to_width, crop(crop_size, crop_size)]
    if preprocess == "scale_shortside_and_center_crop":
        to_short_side = A.Lambda(image=partial(scale_shortside, load_size=load_size, interpolation=interpolation))
        return [to_short_side, A.CenterCrop(crop_size, crop_size)]
    return [to_multiple]  # "none"


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWxC uint8 -> CxHxW float32 in [-1, 1] (0 -> -1, 255 -> 1)."""
    return from_uint8_levels(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))


def draw_seed() -> int:
    """A seed for one random draw, taken from torch's global RNG (which Lightning seeds)."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


class ImageTransform:
    """Preprocesses one image, or a pair with exactly the same crop and flip.

    train=True: the random training pipeline; train=False: the deterministic evaluation one.
    """

    def __init__(
        self,
        preprocess: str = "resize_and_crop",
        load_size: int = 286,
        crop_size: int = 256,
        flip: bool = True,
        train: bool = True,
        reduced_jpeg_decode: bool = True,
        bit_depth: int = 16,
        to_srgb: bool = True,
        resize_interpolation: str = "bicubic",
    ) -> None:
        validate_preprocess(preprocess, load_size, crop_size)
        if resize_interpolation not in RESIZE_INTERPOLATIONS:
            raise ValueError(f"data.resize_interpolation={resize_interpolation!r} must be one of "
                             f"{', '.join(RESIZE_INTERPOLATIONS)} (the kernel that resizes images)")
        self.preprocess, self.load_size, self.crop_size = preprocess, load_size, crop_size
        self.resize_interpolation = resize_interpolation
        # How the loader reads pixel values (load_image's keywords): the samples of files of more
        # than 8 bits, and colours in an embedded ICC profile.
        self.reading = {"bit_depth": bit_depth, "to_srgb": to_srgb}
        # What the loader may decode a large JPEG down to (open_image's decode_at_least): at least
        # the size every image is first resized to, in the modes that have one (a shorter side of
        # load_size: more than load x load decoded keeps it). In the others the output's size
        # follows the image's own (scale_width's height) or takes its pixels as they are (crop, none).
        first_resize = {"resize_and_crop": (load_size, load_size) if train else (crop_size, crop_size),
                        "scale_shortside_and_center_crop": (load_size, load_size)}.get(preprocess)
        self.decode_at_least = first_resize if reduced_jpeg_decode else None   # (FIRST_RESIZE_MODES)
        steps = _geometry(preprocess, load_size, crop_size, train, resize_interpolation)
        if train and flip:
            steps.append(A.HorizontalFlip(p=0.5))
        self.is_random = train and (flip or preprocess in ("resize_and_crop", "crop", "scale_width_and_crop"))
        # "image_b" receives the same parameters as "image": that is what keeps pairs aligned.
        self._pipeline = A.Compose(steps, additional_targets={"image_b": "image"}, seed=0)

    def _check_fits(self, image: np.ndarray) -> None:
        height, width = image.shape[:2]
        if self.preprocess == "crop" and min(height, width) < self.crop_size:
            raise ValueError(
                f"data.crop_size={self.crop_size} is larger than an image of {height}x{width} "
                f"(preprocess='crop' does not resize). Lower ++data.crop_size=... or use "
                f"++data.preprocess=resize_and_crop."
            )
        if self.preprocess == "none" and min(height, width) < SIDE_MULTIPLE:
            raise ValueError(
                f"An image of {height}x{width} is too small for data.preprocess='none' "
                f"(sides must be at least {SIDE_MULTIPLE}): remove it, or resize the images to one size with "
                f"data.preprocess=resize_and_crop."
            )

    def _seed_pipeline(self, seed: int | None) -> None:
        if not self.is_random:
            return
        seed = draw_seed() if seed is None else seed
        # One generator shared by all steps. Compose.set_random_seed(seed) would instead give
        # every step its own generator with the SAME seed: the flip decision and the crop's
        # vertical offset would be the same number (every flipped crop in the upper part).
        self._pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __call__(self, image: np.ndarray, seed: int | None = None) -> torch.Tensor:
        """Preprocess an HxWxC uint8 image; seed=None draws one from torch's global RNG."""
        self._check_fits(image)
        self._seed_pipeline(seed)
        return to_tensor(self._pipeline(image=image)["image"])

    def pair(
        self, image: np.ndarray, partner: np.ndarray, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocess two images with identical random parameters.

        A partner of another size is first resized to the image's size, so that the shared crop
        window covers the same content in both (channel counts may differ); one of another
        shape is refused: resized, it would be squashed out of alignment with its image.
        """
        if partner.shape[:2] != image.shape[:2]:
            (height, width), (partner_height, partner_width) = image.shape[:2], partner.shape[:2]
            if abs(partner_width / partner_height - width / height) > PAIR_ASPECT_TOLERANCE * width / height:
                raise ValueError(f"its partner is {partner_width}x{partner_height} px, another shape than its "
                                 f"{width}x{height} px: resized onto it, the partner would be squashed out of "
                                 f"alignment (turned by its EXIF orientation, or cropped?). Give the pair's images "
                                 f"one aspect ratio")
            partner = resize_image(partner, *image.shape[:2], self.resize_interpolation)
        self._check_fits(image)
        self._seed_pipeline(seed)
        out = self._pipeline(image=image, image_b=partner)
        return to_tensor(out["image"]), to_tensor(out["image_b"])
