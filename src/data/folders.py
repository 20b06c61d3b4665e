"""Finding image files on disk, with errors that say what is missing and how to get it."""

from __future__ import annotations

from pathlib import Path

from src.data.download import how_to_get
from src.data.errors import DatasetNotFoundError, EmptyDatasetError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


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
    images = sorted(path for path in folder.iterdir() if is_image_file(path))
    if not images:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise EmptyDatasetError(
            f"No images found in {folder} (looked for {extensions}). Put the images of this "
            f"domain/split there, or point data.data_dir at the right dataset folder."
        )
    return images if max_count is None else images[:max_count]
