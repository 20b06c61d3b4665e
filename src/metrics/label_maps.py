"""Colour-coded semantic label maps: their palettes, and turning colours back into classes.

The pix2pix and CycleGAN Cityscapes datasets hold the semantic labels as colour images (the
official `gtFine_color` colours, JPEG-compressed at 256 px). Both papers score their label maps
as classes: CycleGAN's photo->labels table maps each generated colour to the nearest label
colour, and the labels->photo FCN-score needs the classes of the input label map.

A palette lists the evaluated classes (their index is the class, Cityscapes' "trainId") with
their colours, and the colours of the labels left out of evaluation (Cityscapes' void,
parking, rail track, ...): a pixel nearest to one of those is IGNORE, as the official
evaluation ignores them, instead of being pulled into the nearest evaluated class.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

#: The class of a pixel that is not scored (torchmetrics' ignore_index; Cityscapes' 255).
IGNORE = 255

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Palette:
    names: tuple[str, ...]
    colours: tuple[RGB, ...]        # colours[k]: class k
    ignored_colours: tuple[RGB, ...]

    @property
    def num_classes(self) -> int:
        return len(self.names)


# cityscapesScripts' labels.py: the 19 evaluated classes in trainId order, then the colours of
# the labels with trainId 255. (Polegroup shares pole's colour and license plate car's; a
# colour image cannot tell them apart, so those pixels count as pole and car.)
CITYSCAPES = Palette(
    names=("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
           "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
           "bicycle"),
    colours=((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
             (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
             (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)),
    ignored_colours=((0, 0, 0), (111, 74, 0), (81, 0, 81), (250, 170, 160), (230, 150, 140), (180, 165, 180),
                     (150, 100, 100), (150, 120, 90), (0, 0, 90), (0, 0, 110)),
)

PALETTES = {"cityscapes": CITYSCAPES}


def palette_named(name: str, key: str) -> Palette:
    if name not in PALETTES:
        raise ValueError(f"{key}={name!r} must be one of {', '.join(PALETTES)} (or null: no label maps)")
    return PALETTES[name]


def colours_to_classes(images: torch.Tensor, palette: Palette) -> torch.Tensor:
    """(N, H, W) int64 classes of (N, 3, H, W) RGB images in [-1, 1]: each pixel's nearest
    palette colour (Euclidean in 0-255 RGB), IGNORE where that is an ignored label's colour.
    Nearest rather than exact, since JPEG and generators only come close to the colours."""
    if images.dim() != 4 or images.size(1) != 3:
        raise ValueError(f"colour label maps must be RGB images (N, 3, H, W), got shape {tuple(images.shape)}")
    colours = torch.tensor(palette.colours + palette.ignored_colours, dtype=torch.float32, device=images.device)
    classes = torch.arange(len(colours), device=images.device)
    classes[palette.num_classes:] = IGNORE
    pixels = (images.float() + 1) * 127.5                                     # (N, 3, H, W), 0-255
    # ||p - c||^2 = ||p||^2 - 2 p.c + ||c||^2; ||p||^2 is the same for every colour.
    distance = (colours.pow(2).sum(1).view(1, -1, 1, 1)
                - 2 * torch.einsum("nchw,kc->nkhw", pixels, colours))
    return classes[distance.argmin(1)]
