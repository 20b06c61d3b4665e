"""Convert a folder of images, once, into the JPEGs or PNGs training reads fastest.

    python -m src.data.convert_images photos/ data/my_dataset/trainA --short-side 512

Phones' photos are slow to read on every training item: a 12-megapixel HEIC takes about 0.5 s of
a CPU core to decode and 0.3 s more to convert its Display P3 colours, where a JPEG of the same
photo decoded at reduced scale takes about 10 ms. Each image is read as the datasets read it
(upright by its orientation, colours converted to sRGB, transparency on white, 16-bit files at
--bit-depth), shrunk with PIL's --interpolation kernel (bicubic unless told; PIL widens it as
it shrinks, so it low-passes) so that its shorter side is --short-side pixels (never enlarged),
and written under OUTPUT with its path inside INPUT, so paired folders still pair. Training
resizes the converted images once more, with `data.resize_interpolation`: give the same kernel
here (bilinear for U-GAT-IT and NICE-GAN) to resample with one kind throughout.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

from src.data.folder_tools import add_reading_arguments, input_errors_as_usage, map_in_processes, reading_settings
from src.data.folders import lies_inside, list_images, output_paths, refuse_existing_outputs
from src.data.image_io import WRITE_FORMATS, load_image, save_in_format
from src.data.transforms import RESIZE_INTERPOLATIONS, resize_image, short_side_size

def _convert_one(paths: tuple[Path, Path], short_side: int | None, interpolation: str, image_format: str,
                 channels: int, to_srgb: bool, bit_depth: int) -> None:
    source, target = paths
    # Decoding a JPEG at reduced scale stops at the size asked for on both sides, so at short_side.
    at_least = (short_side, short_side) if short_side else None
    image = load_image(source, channels, at_least, bit_depth=bit_depth, to_srgb=to_srgb)
    height, width = image.shape[:2]
    if short_side is not None and min(height, width) > short_side:
        image = resize_image(image, *short_side_size(height, width, short_side), interpolation)
    save_in_format(image, target, image_format)


def convert_images(input_dir: str | Path, output_dir: str | Path, short_side: int | None = None,
                   image_format: str = "jpg", channels: int = 3, to_srgb: bool = True, bit_depth: int = 16,
                   overwrite: bool = False, workers: int = 1, interpolation: str = "bicubic") -> list[Path]:
    """Convert every image under `input_dir` into `output_dir` (see the module's doc), in
    `workers` processes; returns the files written. Nothing is written when a name would
    collide or, without `overwrite`, when a file to write exists already."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if image_format not in WRITE_FORMATS:
        raise ValueError(f"--format {image_format!r} must be one of {', '.join(WRITE_FORMATS)}")
    if short_side is not None and short_side < 1:
        raise ValueError(f"--short-side {short_side} must be a positive number of pixels")
    if interpolation not in RESIZE_INTERPOLATIONS:
        raise ValueError(f"--interpolation {interpolation!r} must be one of {', '.join(RESIZE_INTERPOLATIONS)}")
    if lies_inside(output_dir, input_dir):
        raise ValueError(f"{output_dir} lies inside {input_dir}: its files would be read as inputs next "
                         f"time; write them elsewhere")
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: no such folder")
    targets = output_paths(list_images(input_dir), output_dir, input_dir, WRITE_FORMATS[image_format][0])
    if not overwrite:
        refuse_existing_outputs(targets.values(), "pass --overwrite")
    convert = partial(_convert_one, short_side=short_side, interpolation=interpolation, image_format=image_format,
                      channels=channels, to_srgb=to_srgb, bit_depth=bit_depth)
    for _ in map_in_processes(convert, targets.items(), workers):
        pass
    return list(targets.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.data.convert_images",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="folder of images (subfolders are read too)")
    parser.add_argument("output", help="folder to write into (the same subfolders)")
    parser.add_argument("--short-side", type=int, default=None,
                        help="shrink so that the shorter side is this many pixels (default: keep the size)")
    parser.add_argument("--interpolation", default="bicubic", choices=sorted(RESIZE_INTERPOLATIONS),
                        help="PIL's kernel for shrinking (default: bicubic); the run's data.resize_interpolation "
                             "(bilinear for U-GAT-IT and NICE-GAN) keeps one kind of resampling from photo to crop")
    parser.add_argument("--format", default="jpg", choices=sorted(WRITE_FORMATS),
                        help="output format (default: jpg, quality 95)")
    parser.add_argument("--overwrite", action="store_true", help="replace files that exist in the output folder")
    add_reading_arguments(parser)
    args = parser.parse_args(argv)
    with input_errors_as_usage(parser):
        written = convert_images(args.input, args.output, args.short_side, args.format, args.channels,
                                 overwrite=args.overwrite, workers=args.workers, interpolation=args.interpolation,
                                 **reading_settings(args))
    print(f"Wrote {len(written)} image(s) into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
