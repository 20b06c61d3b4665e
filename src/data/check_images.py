"""Read every image under some folders once, as the datasets read them, and list every file that
cannot be read, with its reason and fix, before a long run meets them one crash at a time.

    python -m src.data.check_images data/my_dataset --bit-depth 12 --min-side 256
    python -m src.data.check_images data=horse2zebra data.data_dir=/path/to/my_data

Given Hydra overrides instead of folders, it checks the train and test folders of the dataset
that `python src/train.py <overrides>` trains on, read with that data config's channels,
bit depth and colour conversion (and, with preprocess=crop, its crop size as --min-side).

Training stops at the first unreadable image (saving crashed.ckpt); this finds all of them in one
pass, in parallel processes. It also reports the range of image sizes and, with --min-side, the
images whose shorter side is under it (smaller than data.crop_size they cannot be cropped with
preprocess=crop; smaller than data.load_size they are enlarged). The exit status is 1 when an
image cannot be read or is under --min-side.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from hydra.errors import HydraException
from hydra.utils import get_class, instantiate
from omegaconf.errors import OmegaConfBaseException

from src.data.folder_tools import add_reading_arguments, input_errors_as_usage, map_in_processes, reading_settings
from src.data.folders import list_images
from src.data.image_io import load_image
from src.utils.config_checks import check_argument_types
from src.utils.training_config import compose_training_config

# Files named in full in each list of the report; the rest are counted.
NAMED_IN_REPORT = 20


@dataclass
class FolderCheck:
    """What reading every image under some folders found."""
    sizes: dict[Path, tuple[int, int]] = field(default_factory=dict)   # (height, width) of each readable image
    errors: dict[Path, str] = field(default_factory=dict)              # why each other image cannot be read

    def smaller_than(self, min_side: int) -> dict[Path, tuple[int, int]]:
        return {path: size for path, size in self.sizes.items() if min(size) < min_side}


def _read_one(item: tuple[Path, int], bit_depth: int, to_srgb: bool) -> tuple[int, int] | str:
    """(height, width) of the image (path, channels) as the datasets read it, or why it cannot be read."""
    path, channels = item
    try:
        return load_image(path, channels, bit_depth=bit_depth, to_srgb=to_srgb).shape[:2]
    except (OSError, ValueError) as error:   # ImageReadError is an OSError, whose message names the file
        return str(error) if str(path) in str(error) else f"{path}: {error}"


def check_images(folders: Sequence[str | Path] | Mapping[str | Path, int], channels: int = 3, bit_depth: int = 16,
                 to_srgb: bool = True, workers: int = 1) -> FolderCheck:
    """Read every image under `folders` (subfolders too, as list_images finds them) with
    `channels`, or each folder's own channel count where `folders` maps them to one, in `workers`
    processes; an unreadable image is recorded, not raised."""
    folders = folders if isinstance(folders, Mapping) else dict.fromkeys(folders, channels)
    items = [(path, count) for folder, count in folders.items() for path in list_images(folder)]
    read = partial(_read_one, bit_depth=bit_depth, to_srgb=to_srgb)
    check = FolderCheck()
    for (path, _), outcome in zip(items, map_in_processes(read, items, workers)):
        if isinstance(outcome, str):
            check.errors[path] = outcome
        else:
            check.sizes[path] = tuple(outcome)
    return check


def data_config_folders(overrides: list[str]) -> tuple[dict[Path, int], dict, int | None]:
    """The train and test folders of the dataset `python src/train.py <overrides>` trains on (a
    folder per domain, or per class of a labelled dataset), each with the channels it is read
    with; the data config's pixel-reading settings (load_image's keywords); and its crop size
    where preprocess=crop, which cannot crop smaller images. Missing folders raise the data
    modules' errors (with the download command)."""
    cfg = compose_training_config(overrides)
    # Asked of the class, before its settings are checked: the default model's image settings
    # (data.resize_interpolation) are no settings of the time-series data
    try:
        data_class = get_class(cfg.data._target_)
    except ImportError as error:   # a misspelt _target_: the input's fault, said as a usage error
        raise ValueError(f"data._target_={cfg.data._target_} cannot be imported: {error}") from error
    if not hasattr(data_class, "image_folders"):   # (the time-series data: sines, csv_series)
        raise ValueError(f"data={cfg.data.get('name')} holds no images ({data_class.__name__}): check_images "
                         f"reads image folders")
    check_argument_types(cfg.data, "data")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()   # the embedded datasets are written to disk here
    folders = datamodule.image_folders()
    if not folders:
        raise ValueError(f"data={cfg.data.get('name')} does not keep its images in folders of image files: pass "
                         f"its image folders to check_images instead")
    transform = datamodule.eval_transform
    return folders, transform.reading, transform.crop_size if transform.preprocess == "crop" else None


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
    parser.add_argument("folders", nargs="+",
                        help="folders of images (subfolders are read too), or Hydra overrides of the training config "
                             "that name a dataset (data=horse2zebra data.data_dir=...), whose settings then apply")
    parser.add_argument("--min-side", type=int, default=None,
                        help="list the images whose shorter side is under this many pixels")
    add_reading_arguments(parser)
    args = parser.parse_args(argv)
    # (a folder may hold '=' too: date=2024-05-01/, lr=0.1/)
    # (a deletion, ~key, is Hydra's too; a folder named so exists)
    overrides = [item for item in args.folders if ("=" in item or item.startswith("~")) and not Path(item).exists()]
    if overrides and len(overrides) < len(args.folders):
        parser.error("give either folders or Hydra overrides (data=NAME ...), not both")
    if overrides and (args.channels != 3 or args.bit_depth != 16 or args.keep_stored_colours):
        parser.error("--channels, --bit-depth and --keep-stored-colours are for folders: with a data config, "
                     "give data.input_nc / data.output_nc, ++data.bit_depth and ++data.to_srgb")
    if overrides:
        # A misspelt config name or key is the input's fault too.
        with input_errors_as_usage(parser, HydraException, OmegaConfBaseException):
            folders, reading, crop_size = data_config_folders(overrides)
        min_side = args.min_side if args.min_side is not None else crop_size
    else:
        folders, reading, min_side = dict.fromkeys(args.folders, args.channels), reading_settings(args), args.min_side
    print("Checking " + ", ".join(str(folder) for folder in folders))
    with input_errors_as_usage(parser):
        check = check_images(folders, workers=args.workers, **reading)
    print(report(check, min_side))
    under = check.smaller_than(min_side) if min_side is not None else {}
    return 1 if check.errors or under else 0


if __name__ == "__main__":
    sys.exit(main())
