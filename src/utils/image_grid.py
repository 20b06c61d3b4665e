"""Tensor batches -> one image grid (no torchvision: it cannot be installed with CPU torch)."""
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

#: text height of the row names, as a fraction of a row's height (and at least MIN_TEXT px)
TEXT_FRACTION, MIN_TEXT = 0.25, 10


def require_float_images(images: torch.Tensor, what: str) -> None:
    """TypeError for images that are not float (N, C, H, W), the [-1, 1] convention everything
    here reads: uint8 pixels would be clamped to white, one image's (C, H, W) split wrongly."""
    if not isinstance(images, torch.Tensor):   # a NumPy array or a PIL image: no `.dim` to say so
        raise TypeError(f"{what} takes a torch tensor of float images (N, C, H, W) in [-1, 1], got a "
                        f"{type(images).__module__}.{type(images).__name__} (an (H, W, C) uint8 array `a`: "
                        f"torch.from_numpy(a).permute(2, 0, 1)[None] / 127.5 - 1; image files: translate_images)")
    if images.dim() != 4 or not images.is_floating_point():
        raise TypeError(f"{what} takes a batch of float images (N, C, H, W) in [-1, 1], got a {images.dtype} tensor "
                        f"of shape {tuple(images.shape)} (one image: x[None]; uint8 pixels: x / 127.5 - 1)")


def to_uint8_levels(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> the uint8 values their saved files hold (clamped, rounded)."""
    return ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def from_uint8_levels(levels: torch.Tensor) -> torch.Tensor:
    """uint8 values -> float32 in [-1, 1] (0 -> -1, 255 -> 1): the inverse of to_uint8_levels."""
    return levels.float().div_(127.5).sub_(1.0)


def to_uint8_images(batch: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    return to_uint8_levels(batch).permute(0, 2, 3, 1).cpu().numpy()


def shrunk_to_side(images: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """[N, C, H, W] images scaled down (antialiased) so that their longer side is at most
    `max_side` px, the aspect kept; as they are when they fit, or with `max_side` None."""
    height, width = images.shape[-2:]
    if max_side is None or max(height, width) <= max_side:
        return images
    scale = max_side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return torch.nn.functional.interpolate(images.float(), size=size, mode="bilinear", antialias=True,
                                           align_corners=False)


def make_grid(rows: dict[str, torch.Tensor], padding: int = 2, labels: bool = True) -> np.ndarray:
    """Stack named rows of [N, C, H, W] images in [-1, 1] into one HxWx3 uint8 array.

    Each row is one entry of `rows` (e.g. real_A / fake_B / rec_A), its name written in a margin
    on the left (`labels`): U-GAT-IT's grid has ten rows, InfoGAN's one per code value.
    1-channel images are shown in grey; NaN pixels (a diverging run's) in black, not whatever a
    cast of NaN gives. Rows may differ in size (domains of other shapes under
    `preprocess=scale_width` or `none`): each keeps its own, the narrower padded white on the right.
    """
    tiles = []
    for images in rows.values():
        images = torch.nan_to_num(images.detach().float().cpu(), nan=-1.0).clamp(-1, 1)
        if images.size(1) == 1:
            images = images.expand(-1, 3, -1, -1)
        images = torch.nn.functional.pad(images[:, :3], (padding,) * 4, value=1.0)
        tiles.append(torch.cat(list(images), dim=2))  # one row: [3, H, N * W]
    width = max(tile.size(2) for tile in tiles)
    tiles = [torch.nn.functional.pad(tile, (0, width - tile.size(2)), value=1.0) for tile in tiles]
    grid = to_uint8_images(torch.cat(tiles, dim=1)[None])[0]
    if not labels:
        return grid
    return np.concatenate([row_names(list(rows), [tile.size(1) for tile in tiles]), grid], axis=1)


def row_names(names: list[str], row_heights: list[int]) -> np.ndarray:
    """A white margin with each name, in black, beside its row (of its height)."""
    font = row_font(min(row_heights))
    width = max(font.getbbox(name)[2] for name in names) + 6
    margin = Image.new("RGB", (width, sum(row_heights)), "white")
    draw = ImageDraw.Draw(margin)
    top_of_row = 0
    for name, height in zip(names, row_heights):
        _, top, _, bottom = font.getbbox(name)   # centred by hand: a bitmap font takes no anchor
        draw.text((3, top_of_row + (height - bottom - top) // 2), name, fill="black", font=font)
        top_of_row += height
    return np.asarray(margin)


def row_font(row_height: int) -> ImageFont.ImageFont:
    size = max(MIN_TEXT, round(row_height * TEXT_FRACTION))
    try:
        return ImageFont.load_default(size=size)   # Pillow's own font (needs FreeType): no file to find
    except (ImportError, OSError, TypeError):       # Pillow built without FreeType: its bitmap font
        return ImageFont.load_default()
