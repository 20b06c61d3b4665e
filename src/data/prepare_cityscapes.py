"""Cityscapes for pix2pix and CycleGAN, built from the official release.

    python -m src.data.prepare_cityscapes --gtfine gtFine --leftimg8bit leftImg8bit --output data/cityscapes

The pix2pix and CycleGAN authors no longer hand out their copies of Cityscapes (its licence):
their download scripts send users to https://www.cityscapes-dataset.com (registration) for
gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip, and to a script that builds the papers'
256x256 pairs from them. This builds the same folders: each photo
(`leftImg8bit/<split>/<city>/<id>_leftImg8bit.png`) with its label colours
(`gtFine/<split>/<city>/<id>_gtFine_color.png`), both resized to --size (PIL bicubic, as that
script), written as JPEG quality 100 with full-resolution colour, pair i as

    train/<i>.jpg  test/<i>.jpg       photo | labels side by side (pix2pix; val becomes test)
    trainA/<i>_A.jpg  trainB/<i>_B.jpg  testA/ testB/   photo, labels (CycleGAN)

in sorted order of the pairs' ids. One folder serves `data=cityscapes` (A = photo, B = labels;
the paper's labels -> photo is its `direction: BtoA`) and, with `data.data_dir` pointing at it,
`data=cityscapes_unpaired`.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from PIL import Image

from src.data.download import DATASETS, missing_folders
from src.data.placement import place, remove_stale_scratch, scratch_prefix

log = logging.getLogger(__name__)

PHOTO_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_color.png"
#: the release's split -> the split written (the papers test on Cityscapes' val images)
SPLITS = {"train": "train", "val": "test"}


def _visible(folder: Path, pattern: str) -> list[Path]:
    """The files `pattern` matches in `folder`, less hidden ones (a Mac's `._<name>` resource
    forks, which pathlib's `*` matches and which would be pairs of their own, without a partner),
    their number in a warning, as the image folders' listing (src/data/folders.py) gives it."""
    found = list(folder.glob(pattern))
    visible = [path for path in found if not any(part.startswith(".") for part in path.relative_to(folder).parts)]
    if len(visible) < len(found):
        log.warning("%s: %d hidden files (names starting with '.', such as a Mac's ._* files) are left out", folder,
                    len(found) - len(visible))
    return visible


def find_pairs(gtfine: Path, leftimg8bit: Path, split: str) -> list[tuple[Path, Path]]:
    """(photo, label colours) of every image of `split`, by id; an id with one file only is an
    error naming it (the two archives of another release, or one unpacked in part)."""
    photos = {path.name[:-len(PHOTO_SUFFIX)]: path for path in _visible(leftimg8bit / split, f"*/*{PHOTO_SUFFIX}")}
    labels = {path.name[:-len(LABEL_SUFFIX)]: path for path in _visible(gtfine / split, f"*/*{LABEL_SUFFIX}")}
    for found, folder, suffix, release in ((photos, leftimg8bit, PHOTO_SUFFIX, "leftImg8bit"),
                                           (labels, gtfine, LABEL_SUFFIX, "gtFine")):
        if not found:
            raise FileNotFoundError(f"{folder / split} holds no <city>/*{suffix}: give the unpacked {release} folder "
                                    f"of {release}_trainvaltest.zip")
    for ids, have, lack in ((photos.keys() - labels.keys(), photos, LABEL_SUFFIX),
                            (labels.keys() - photos.keys(), labels, PHOTO_SUFFIX)):
        if ids:
            first = sorted(ids)[0]
            raise FileNotFoundError(f"{have[first]} has no partner {first}{lack} ({len(ids)} such files)")
    return [(photos[key], labels[key]) for key in sorted(photos)]


def _resized(path: Path, size: int) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)


def prepare_cityscapes(gtfine: str | Path, leftimg8bit: str | Path, output: str | Path, size: int = 256) -> int:
    """Write the pairs of both splits into `output` (see the module's doc); returns their number.
    An output folder that holds files already is refused (nothing is written). They are written
    into a scratch folder beside it, renamed into place when complete: a run stopped part-way
    (minutes for the 3475 pairs) leaves no dataset folder that looks whole and is not."""
    # resolved: a link to an empty folder on another disk gets the scratch folder beside its target
    gtfine, leftimg8bit, output = Path(gtfine), Path(leftimg8bit), Path(output).resolve()
    if size < 1:
        raise ValueError(f"--size {size} must be a positive number of pixels")
    if output.is_dir() and any(output.iterdir()):
        raise FileExistsError(f"{output} is not empty: write into a new folder")
    pairs = {written: find_pairs(gtfine, leftimg8bit, split) for split, written in SPLITS.items()}
    save = {"quality": 100, "subsampling": 0}
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(output)
    with tempfile.TemporaryDirectory(prefix=scratch_prefix(output), dir=output.parent) as scratch:
        built = Path(scratch) / output.name
        for split, split_pairs in pairs.items():
            for folder in (split, f"{split}A", f"{split}B"):
                (built / folder).mkdir(parents=True, exist_ok=True)
            for index, (photo_path, label_path) in enumerate(split_pairs):
                photo, label = _resized(photo_path, size), _resized(label_path, size)
                side_by_side = Image.new("RGB", (2 * size, size))
                side_by_side.paste(photo, (0, 0))
                side_by_side.paste(label, (size, 0))
                side_by_side.save(built / split / f"{index}.jpg", **save)
                photo.save(built / f"{split}A" / f"{index}_A.jpg", **save)
                label.save(built / f"{split}B" / f"{index}_B.jpg", **save)
            print(f"{split}: {len(split_pairs)} pairs")
        if not place(built, output, lambda folder: not missing_folders(folder, DATASETS["cityscapes"].layout)):
            print(f"{output} was filled by another run meanwhile; this run's pairs are discarded")
    return sum(map(len, pairs.values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.data.prepare_cityscapes",
                                     description="Build the pix2pix / CycleGAN Cityscapes pairs from the official "
                                                 "gtFine and leftImg8bit folders.")
    parser.add_argument("--gtfine", required=True, help="the unpacked gtFine folder (gtFine_trainvaltest.zip)")
    parser.add_argument("--leftimg8bit", required=True, help="the unpacked leftImg8bit folder "
                                                             "(leftImg8bit_trainvaltest.zip)")
    parser.add_argument("--output", required=True, help="the dataset folder to write, e.g. data/cityscapes")
    parser.add_argument("--size", type=int, default=256, help="side of the square images (default: 256)")
    args = parser.parse_args(argv)
    try:
        count = prepare_cityscapes(args.gtfine, args.leftimg8bit, args.output, args.size)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(error, file=sys.stderr)
        return 2
    print(f"Done: {count} pairs in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
