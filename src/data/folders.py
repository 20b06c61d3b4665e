"""Finding image files on disk, with errors that say what is missing and how to get it."""

from __future__ import annotations

import logging
import os
import unicodedata
from pathlib import Path

from src.data.download import how_to_get
from src.data.errors import DatasetNotFoundError, EmptyDatasetError

log = logging.getLogger(__name__)

# What PIL reads and the reference code lists (an animated GIF gives its first frame), and the
# formats phones save photos in: HEIC/HEIF (iPhones' default; read through pillow-heif, which
# image_io registers) and AVIF.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif",
                              ".heic", ".heif", ".avif"})
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


def _raise(error: OSError) -> None:
    """os.walk's error handler: a folder that cannot be listed (missing, no permission) stops the
    run with its path, instead of being passed over in silence (os.walk's default)."""
    raise error


def list_images(folder: str | Path, max_count: int | None = None) -> list[Path]:
    """Image files in folder and its subfolders, sorted by their path inside folder, at most
    max_count (the first ones).

    Subfolders are read as the reference implementations read them (junyanz's, U-GAT-IT's and
    NICE-GAN's datasets walk the folder tree), symbolic links followed, each folder once.
    Hidden files and folders (a Mac's `._photo.jpg` resource forks, `.ipynb_checkpoints`) are
    left out, with the files that are not images, in one warning. Sorting makes the file order
    (and so test pairs and sample grids) the same on every machine. Raises EmptyDatasetError
    when the tree holds no image.
    """
    folder = Path(folder)
    images: list[Path] = []
    skipped: list[str] = []
    visited: set[str] = set()
    for root, subfolders, files in os.walk(folder, followlinks=True, onerror=_raise):
        real = os.path.realpath(root)
        if real in visited:   # a link back up the tree: walked already
            subfolders[:] = []
            continue
        visited.add(real)
        here = Path(root)
        skipped += [(here / name).relative_to(folder).as_posix() + "/" for name in subfolders if name.startswith(".")]
        # Sorted, real folders before links to them: a folder reached both ways is named by its
        # own path whatever order the file system lists it in.
        subfolders[:] = sorted((name for name in subfolders if not name.startswith(".")),
                               key=lambda name: (os.path.islink(here / name), name))
        for name in files:
            path = here / name
            if name.startswith(".") or not is_image_file(path):
                skipped.append(path.relative_to(folder).as_posix())
            else:
                images.append(path)
    images.sort(key=lambda path: path.relative_to(folder).parts)
    if skipped and images:
        # Not silent: a folder of .jxl photos next to a few .jpg ones would otherwise train on the few.
        skipped.sort()
        more = f" and {len(skipped) - SKIPPED_NAMES_SHOWN} more" if len(skipped) > SKIPPED_NAMES_SHOWN else ""
        log.warning("%s: %d entries are hidden or not image files (%s) and are left out: %s%s", folder,
                    len(skipped), ", ".join(sorted(IMAGE_EXTENSIONS)), ", ".join(skipped[:SKIPPED_NAMES_SHOWN]),
                    more)
    if not images:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise EmptyDatasetError(
            f"No images found in {folder} or its subfolders (looked for {extensions}). Put the images of this "
            f"domain/split there, or point data.data_dir at the right dataset folder."
        )
    return images if max_count is None else images[:max_count]


def name_in_folder(path: Path, folder: Path | None) -> str:
    """A file's name within the tree `list_images` found it in: its path inside `folder` without
    the extension, subfolders kept (`day1/x.jpg` -> `day1/x`, so `day1/0001.jpg` and
    `day2/0001.jpg` stay apart); the file's stem when it is not inside `folder`. Pairs match by
    it, and evaluation and translation name their outputs by it."""
    path = Path(path)
    if folder is not None and path.is_relative_to(folder):
        return path.relative_to(folder).with_suffix("").as_posix()
    return path.stem


def refuse_existing_outputs(targets, how_to_replace: str) -> None:
    """FileExistsError when any of the files to write exists already (nothing is written then):
    another run's outputs would be replaced, or mixed in with these, without a word."""
    existing = [target for target in targets if Path(target).exists()]
    if existing:
        raise FileExistsError(f"{len(existing)} output file(s) exist already, e.g. {existing[0]}: choose another "
                              f"output folder or {how_to_replace}")


def output_paths(paths: list[Path], output_dir: str | Path, folder: Path | None = None,
                 suffix: str = ".png") -> dict[Path, Path]:
    """Input path -> `output_dir/<its name_in_folder><suffix>`; two inputs of one name are an error,
    also where the names differ only in case or Unicode form (`Photo.jpg`, `photo.png`): a disk
    that ignores case (macOS, Windows, exFAT) would write one over the other."""
    output_dir = Path(output_dir)
    targets: dict[Path, Path] = {}
    seen: dict[str, Path] = {}
    for path in paths:
        name = name_in_folder(path, folder)
        key = unicodedata.normalize("NFC", name).casefold()
        if key in seen:
            raise ValueError(f"{seen[key]} and {path} would both be written as {output_dir / name}{suffix} (on a "
                             f"disk that ignores case, where names differ only in it); rename one of them")
        seen[key] = path
        targets[path] = output_dir / f"{name}{suffix}"
        # samefile: the input itself, behind a link, or behind another case of its name
        if targets[path].exists() and os.path.samefile(targets[path], path):
            raise ValueError(f"{path} would be overwritten by its own output: choose an output folder other than "
                             f"the input's")
    return targets
