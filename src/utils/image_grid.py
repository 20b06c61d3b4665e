"""Tensor batches -> one image grid (no torchvision: it cannot be installed with CPU torch)."""
import numpy as np
import torch
from PIL import Image


def make_grid(rows: dict[str, torch.Tensor], padding: int = 2) -> np.ndarray:
    """Stack named rows of [N, C, H, W] images in [-1, 1] into one HxWx3 uint8 array.

    Each row is one entry of `rows` (e.g. real_A / fake_B / rec_A); 1-channel images are shown
    in grey. Rows of a different spatial size are not expected (all come from one batch).
    """
    tiles = []
    for images in rows.values():
        images = images.detach().float().cpu().clamp(-1, 1)
        if images.size(1) == 1:
            images = images.expand(-1, 3, -1, -1)
        images = torch.nn.functional.pad(images[:, :3], (padding,) * 4, value=1.0)
        tiles.append(torch.cat(list(images), dim=2))  # one row: [3, H, N * W]
    grid = torch.cat(tiles, dim=1)
    return ((grid.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)


def save_image(array: np.ndarray, path) -> None:
    Image.fromarray(array).save(path)
