"""Batching items whose images may differ in size.

`data.preprocess=none` and `scale_width` keep each image's own size (or aspect), so two items of
one dataset can hold images of different sizes; torch's default collate then fails with "stack
expects each tensor to be equal size", naming neither the files nor the setting. These helpers
say which files differ and what to change, and choose items that can share a batch.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from torch.utils.data import default_collate

log = logging.getLogger(__name__)

# Preprocess modes whose output size follows the image's own size or aspect.
SIZE_KEEPING_MODES = ("none", "scale_width")
IMAGE_KEYS = ("A", "B")


def image_sizes(item: dict[str, Any]) -> tuple[tuple[int, ...], ...]:
    """(height, width) of each image of an item."""
    return tuple(tuple(item[key].shape[-2:]) for key in IMAGE_KEYS if key in item)


def collate_same_size(items: Sequence[dict[str, Any]], preprocess: str = "") -> dict[str, Any]:
    """torch's default collate, with an error naming two files of different sizes and the fix
    when a batch mixes sizes."""
    first = items[0]
    for item in items[1:]:
        for key in IMAGE_KEYS:
            if key in item and item[key].shape != first[key].shape:
                a, b = first[key].shape[-2:], item[key].shape[-2:]
                raise ValueError(
                    f"Images of different sizes in one batch: {first.get(f'{key}_path')} is {a[0]}x{a[1]} and "
                    f"{item.get(f'{key}_path')} is {b[0]}x{b[1]} after data.preprocess={preprocess or '?'}. "
                    f"Batch one image at a time (data.batch_size=1, data.eval_batch_size=1) or use a "
                    f"preprocess mode with one output size (resize_and_crop, crop, scale_width_and_crop, "
                    f"scale_shortside_and_center_crop).")
    return default_collate(list(items))


def first_items_of_one_size(dataset, n: int) -> list[dict[str, Any]]:
    """The first `n` items (dataset order) whose images have the first item's sizes, so they
    stack into one batch; items of other sizes are passed over, with a note in the log. At most
    8n items are read, so fewer than n may come back."""
    chosen, passed_over = [dataset[0]], []
    sizes = image_sizes(chosen[0])
    for index in range(1, min(len(dataset), 8 * n)):
        if len(chosen) == n:
            break
        item = dataset[index]
        (chosen if image_sizes(item) == sizes else passed_over).append(item)
    if passed_over:
        log.info("Sample images: %d of the first test images are not %s like the first one and are left out "
                 "of the grid: %s", len(passed_over), " / ".join("x".join(map(str, s)) for s in sizes),
                 ", ".join(str(item.get("A_path")) for item in passed_over))
    return chosen
