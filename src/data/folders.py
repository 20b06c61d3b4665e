"""Finding image files on disk, with errors that say what is missing and how to get it."""

from __future__ import annotations

import contextlib
import logging
import os
import unicodedata
from pathlib import Path

from src.data.download import how_to_get
from src.data.errors import DatasetNotFoundError, EmptyDatasetError
from src.utils.hydra_runtime import warn_for_every_rank

log = logging.getLogger(__name__)

# What PIL reads and the reference code lists (an animated GIF gives its first frame), and the
# formats phones save photos in: HEIC/HEIF (iPhones' default; read through pillow-heif, which
# image_io registers) and AVIF.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif",
                              ".heic", ".heif", ".avif"})
#: folders that systems and archivers put among a user's files, never data: a Mac's zip archive
#: (`__MACOSX`: a resource fork per file), a Synology NAS's thumbnails (`@eaDir/<photo>/
#: SYNOPHOTO_THUMB_*.jpg`, valid JPEGs, three to five per photo) and recycle bin, Windows' drive folders
SYSTEM_FOLDERS = frozenset({"__MACOSX", "@eaDir", "#recycle", "$RECYCLE.BIN", "System Volume Information"})
# Named entries of a skipped-file warning; the rest are counted.
SKIPPED_NAMES_SHOWN = 5


def require_folder(folder: str | Path, dataset_name: str, data_dir: str | Path) -> Path:
    """Return folder as a Path, or raise DatasetNotFoundError saying how to get the dataset."""
    folder = Path(folder)
    refuse_a_missing_test_split(folder)
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"Dataset folder not found: {folder}. {how_to_get(dataset_name, data_dir)}"
        )
    return folder


def refuse_a_missing_test_split(folder: Path) -> None:
    """DatasetNotFoundError for a test split's folder (`testA`, `test`) that is missing beside
    its training split's: folders of one's own images, where no download helps."""
    train = folder.with_name("train" + folder.name.removeprefix("test")) if folder.name.startswith("test") else None
    if not folder.is_dir() and train is not None and train.is_dir():
        raise DatasetNotFoundError(
            f"Dataset folder not found: {folder}, the test split beside {train}. Every run reads it: the sample "
            f"grids and the evaluations (FID/KID, eval.py) score it, and none of its images is trained on. Move "
            f"some of {train.name}'s images (a tenth, say) into {folder}")


def not_data_folder(name: str) -> bool:
    """A hidden folder (`.ipynb_checkpoints`, a Mac's `.Trashes`) or one of `SYSTEM_FOLDERS`."""
    return name.startswith(".") or name in SYSTEM_FOLDERS


def list_images(folder: str | Path, max_count: int | None = None) -> list[Path]:
    """Image files in folder and its subfolders, sorted by their path inside folder, at most
    max_count (the first ones).

    Subfolders are read as the reference implementations read them (junyanz's, U-GAT-IT's and
    NICE-GAN's datasets walk the folder tree), symbolic links followed, each folder once.
    Hidden files and folders (a Mac's `._photo.jpg` resource forks, `.ipynb_checkpoints`) and
    the folders of `SYSTEM_FOLDERS` (a NAS's thumbnails) are left out, with the files that are
    not images, in one warning. Sorting makes the file order
    (and so test pairs and sample grids) the same on every machine. Raises EmptyDatasetError
    when the tree holds no image.
    """
    folder = Path(folder)
    found: list[tuple[tuple[str, ...], Path]] = []   # (path inside folder, as parts; path)
    skipped: list[str] = []
    visited: set[str] = set()
    # Depth first, each folder's entries typed by the listing itself (os.scandir): no stat call
    # per file, which on network storage costs minutes for a million images, per listing.
    pending: list[tuple[Path, tuple[str, ...]]] = [(folder, ())]
    while pending:
        here, parts = pending.pop()
        real = os.path.realpath(here)
        if real in visited:   # a link back up the tree: walked already
            continue
        visited.add(real)
        # A folder that cannot be listed (missing, no permission) stops the run with its path.
        with os.scandir(here) as listing:
            entries = list(listing)
        subfolders = []
        for entry in entries:
            inside = (*parts, entry.name)
            if entry.is_dir():   # links to folders are followed
                if not_data_folder(entry.name):
                    skipped.append("/".join(inside) + "/")
                else:
                    subfolders.append(entry)
            elif (entry.name.startswith(".") or os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS
                  or not entry.is_file()):   # a broken link, a pipe
                skipped.append("/".join(inside))
            else:
                found.append((inside, here / entry.name))
        # Sorted, real folders before links to them: a folder reached both ways is named by its
        # own path whatever order the file system lists it in.
        subfolders.sort(key=lambda entry: (entry.is_symlink(), entry.name))
        pending += reversed([(here / entry.name, (*parts, entry.name)) for entry in subfolders])
    found.sort(key=lambda item: item[0])
    images = [path for _, path in found]
    if skipped and images:
        # Not silent: a folder of .jxl photos next to a few .jpg ones would otherwise train on the few.
        skipped.sort()
        more = f" and {len(skipped) - SKIPPED_NAMES_SHOWN} more" if len(skipped) > SKIPPED_NAMES_SHOWN else ""
        warn_for_every_rank(log, "%s: %d entries are hidden, system folders or not image files (%s) and are left out: %s%s", folder,
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


def lies_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` is `folder` or lies under it, also where the names differ in letter case on
    a disk that ignores it (macOS's, Windows'): `photos/out` inside `Photos`. Resolved paths keep
    the case they are given in on macOS, so the existing ancestors are compared as files."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    if path.is_relative_to(folder):
        return True
    if not folder.is_dir():
        return False
    return any(ancestor.exists() and os.path.samefile(ancestor, folder) for ancestor in (path, *path.parents))


def refuse_existing_outputs(targets, how_to_replace: str) -> None:
    """FileExistsError when any of the files to write exists already (nothing is written then):
    another run's outputs would be replaced, or mixed in with these, without a word."""
    existing = [target for target in targets if Path(target).exists()]
    if existing:
        raise FileExistsError(f"{len(existing)} output file(s) exist already, e.g. {existing[0]}: choose another "
                              f"output folder or {how_to_replace}")


class OutputNames:
    """The output of each input, `output_dir/<its name_in_folder><suffix>`, given one input at a
    time; two inputs of one name are an error, also where the names differ only in case or
    Unicode form (`Photo.jpg`, `photo.png`): a disk that ignores case (macOS, Windows, exFAT)
    would write one over the other."""

    def __init__(self, output_dir: str | Path, folder: Path | None = None, suffix: str = ".png") -> None:
        self.output_dir, self.folder, self.suffix = Path(output_dir), folder, suffix
        self._inputs: dict[str, Path] = {}   # name as a case-blind disk compares it -> its input

    def target(self, path: str | Path) -> Path:
        path = Path(path)
        name = name_in_folder(path, self.folder)
        key = unicodedata.normalize("NFC", name).casefold()
        if key in self._inputs:
            raise ValueError(f"{self._inputs[key]} and {path} would both be written as "
                             f"{self.output_dir / name}{self.suffix} (on a disk that ignores case, where names "
                             f"differ only in it); rename one of them")
        self._inputs[key] = path
        return self.output_dir / f"{name}{self.suffix}"


def output_paths(paths: list[Path], output_dir: str | Path, folder: Path | None = None,
                 suffix: str = ".png") -> dict[Path, Path]:
    """Input path -> its output (`OutputNames`), none of them over an input."""
    names = OutputNames(output_dir, folder, suffix)
    targets = {path: names.target(path) for path in paths}
    refuse_outputs_over_inputs(targets)
    return targets


def refuse_outputs_over_inputs(targets: dict[Path, Path]) -> None:
    """ValueError when an output would be written over any of the inputs: its own (the same
    folder), or another's (output=. over input=photos maps photos/photos/a.png onto
    photos/a.png). Compared as files, so a link or another case of a name is caught too."""
    inputs = {}
    for path in targets:
        with contextlib.suppress(OSError):
            status = path.stat()
            inputs[(status.st_dev, status.st_ino)] = path
    for path, target in targets.items():
        try:
            status = target.stat()
        except OSError:   # not there yet: nothing to overwrite
            continue
        if (overwritten := inputs.get((status.st_dev, status.st_ino))) is not None:
            whose = "its own output" if overwritten == path else f"the output of {path}"
            raise ValueError(f"{overwritten} would be overwritten by {whose}: choose an output folder outside "
                             f"the input")
