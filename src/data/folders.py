"""Finding image files on disk, with errors that say what is missing and how to get it."""

from __future__ import annotations

import logging
from pathlib import Path

from src.data.download import how_to_get
from src.data.errors import DatasetNotFoundError, EmptyDatasetError

log = logging.getLogger(__name__)

# What PIL reads and the reference code lists (an animated GIF gives its first frame).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"})
# Named entries of a skipped-file warning; the rest are counted.
SKIPPED_NAMES_SHOWN = 5


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def require_folder(folder: str | Path, dataset_name: str, data_dir: str | Path) -> Path:
    """Return folder as a Path, or raise DatasetNotFoundError saying how to get the dataset."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"Dataset folder not found: {folder}. {how_to_get(dataset_name, data_dir)}"
        )
    return folder


def list_images(folder: str | Path, max_count: int | None = None) -> list[Path]:
    """Image files directly inside folder, sorted by name, at most max_count (the first ones).

    Sorting makes the file order (and so test pairs and sample grids) the same on every machine.
    Raises EmptyDatasetError when the folder holds no image.
    """
    folder = Path(folder)
    entries = sorted(folder.iterdir())
    images = [path for path in entries if is_image_file(path)]
    skipped = [path.name + ("/" if path.is_dir() else "") for path in entries if not is_image_file(path)]
    if skipped and images:
        # Not silent: a folder of .heic photos next to a few .jpg ones would otherwise train on
        # the few, and subfolders are not searched.
        more = f" and {len(skipped) - SKIPPED_NAMES_SHOWN} more" if len(skipped) > SKIPPED_NAMES_SHOWN else ""
        log.warning("%s: %d entries are not image files (%s) and are left out: %s%s", folder, len(skipped),
                    ", ".join(sorted(IMAGE_EXTENSIONS)), ", ".join(skipped[:SKIPPED_NAMES_SHOWN]), more)
    if not images:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise EmptyDatasetError(
            f"No images found in {folder} (looked for {extensions}). Put the images of this "
            f"domain/split there, or point data.data_dir at the right dataset folder."
        )
    return images if max_count is None else images[:max_count]
