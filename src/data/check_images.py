"""Read every image under some folders once, as the datasets read them, and list every file that
cannot be read, with its reason and fix, before a long run meets them one crash at a time.

    python -m src.data.check_images data/my_dataset --bit-depth 12 --min-side 256

Training stops at the first unreadable image (saving crashed.ckpt); this finds all of them in one
pass, in parallel processes. It also reports the range of image sizes and, with --min-side, the
images whose shorter side is under it (smaller than data.crop_size they cannot be cropped with
preprocess=crop; smaller than data.load_size they are enlarged). The exit status is 1 when an
image cannot be read or is under --min-side.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from src.data.folder_tools import add_reading_arguments, map_in_processes, reading_settings
from src.data.folders import list_images
from src.data.image_io import load_image

# Files named in full in each list of the report; the rest are counted.
NAMED_IN_REPORT = 20


@dataclass
class FolderCheck:
    """What reading every image under some folders found."""
    sizes: dict[Path, tuple[int, int]] = field(default_factory=dict)   # (height, width) of each readable image
    errors: dict[Path, str] = field(default_factory=dict)              # why each other image cannot be read

    def smaller_than(self, min_side: int) -> dict[Path, tuple[int, int]]:
        return {path: size for path, size in self.sizes.items() if min(size) < min_side}


def _read_one(path: Path, channels: int, bit_depth: int, to_srgb: bool) -> tuple[int, int] | str:
    """(height, width) of the image as the datasets read it, or why it cannot be read."""
    try:
        return load_image(path, channels, bit_depth=bit_depth, to_srgb=to_srgb).shape[:2]
    except (OSError, ValueError) as error:   # ImageReadError is an OSError, whose message names the file
        return str(error) if str(path) in str(error) else f"{path}: {error}"


def check_images(folders: list[str | Path], channels: int = 3, bit_depth: int = 16, to_srgb: bool = True,
                 workers: int = 1) -> FolderCheck:
    """Read every image under `folders` (subfolders too, as list_images finds them) in `workers`
    processes; an unreadable image is recorded, not raised."""
    paths = [path for folder in folders for path in list_images(folder)]
    read = partial(_read_one, channels=channels, bit_depth=bit_depth, to_srgb=to_srgb)
    check = FolderCheck()
    for path, outcome in zip(paths, map_in_processes(read, paths, workers)):
        if isinstance(outcome, str):
            check.errors[path] = outcome
        else:
            check.sizes[path] = tuple(outcome)
    return check


def _listed(lines: list[str]) -> str:
    more = [f"  ... and {len(lines) - NAMED_IN_REPORT} more"] if len(lines) > NAMED_IN_REPORT else []
    return "\n".join([f"  {line}" for line in lines[:NAMED_IN_REPORT]] + more)


def report(check: FolderCheck, min_side: int | None = None) -> str:
    """The check in words: sizes, then the images that cannot be read and those under min_side."""
    lines = [f"Read {len(check.sizes)} of {len(check.sizes) + len(check.errors)} image(s)."]
    if check.sizes:
        sides = [min(size) for size in check.sizes.values()]
        largest = max(check.sizes.values(), key=lambda size: size[0] * size[1])
        lines.append(f"Shorter sides {min(sides)}..{max(sides)} px; the largest image is {largest[0]}x{largest[1]} "
                     f"(height x width).")
    if check.errors:
        lines.append(f"{len(check.errors)} image(s) cannot be read:\n" + _listed(list(check.errors.values())))
    if min_side is not None and (small := check.smaller_than(min_side)):
        lines.append(f"{len(small)} image(s) have a shorter side under --min-side {min_side}:\n"
                     + _listed([f"{path}: {height}x{width}" for path, (height, width) in small.items()]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.data.check_images", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="folders of images (subfolders are read too)")
    parser.add_argument("--min-side", type=int, default=None,
                        help="list the images whose shorter side is under this many pixels")
    add_reading_arguments(parser)
    args = parser.parse_args(argv)
    check = check_images(args.folders, args.channels, workers=args.workers, **reading_settings(args))
    print(report(check, args.min_side))
    under = check.smaller_than(args.min_side) if args.min_side is not None else {}
    return 1 if check.errors or under else 0


if __name__ == "__main__":
    sys.exit(main())
