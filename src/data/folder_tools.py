"""What the command-line tools over a folder of images share: reading its images in parallel
processes, and the options that say how pixels are read (those of the data config)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from src.data.errors import ImageReadError
from src.utils.environment import usable_cpus

#: What a tool's input can be wrong with: a missing or empty folder, a dataset not downloaded,
#: an output that exists, an unreadable image, an impossible option. Each message names the path
#: or option and the fix.
INPUT_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, ImageReadError, ValueError)


@contextlib.contextmanager
def input_errors_as_usage(parser: argparse.ArgumentParser, *more: type[BaseException]) -> Iterator[None]:
    """Report INPUT_ERRORS (and `more`) as the parser reports a bad option, one line and exit
    status 2, instead of a traceback: they are the input's fault, and their messages say what
    to change."""
    try:
        yield
    except (*INPUT_ERRORS, *more) as error:
        parser.error(str(error))


def map_in_processes(function: Callable, items: Iterable, workers: int) -> Iterator[Any]:
    """`function` over `items` in `workers` processes (1: in this one), results in order. Each
    image is decoded in one process (a HEIC: about a second of a core). The first error, naming
    its file, stops the work: items not yet started are dropped."""
    if workers < 1:   # checked here, before anything is read
        raise ValueError(f"--workers {workers} must be at least 1")
    return map(function, items) if workers == 1 else _map_in_pool(function, items, workers)


def _map_in_pool(function: Callable, items: Iterable, workers: int) -> Iterator[Any]:
    with ProcessPoolExecutor(pool_size(workers)) as pool:
        try:
            yield from pool.map(function, items, chunksize=4)
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


#: the most processes a pool may have on Windows (ProcessPoolExecutor refuses more there)
WINDOWS_MAX_WORKERS = 61


def pool_size(workers: int, platform: str = sys.platform) -> int:
    """`workers`, within what the platform's process pool takes (--workers, or its default of a
    process per usable core, may ask for more)."""
    return min(workers, WINDOWS_MAX_WORKERS) if platform == "win32" else workers


def add_reading_arguments(parser: argparse.ArgumentParser) -> None:
    """--channels, --keep-stored-colours, --bit-depth (as data.input_nc, data.to_srgb=false and
    data.bit_depth read images) and --workers."""
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3), help="3: RGB (default), 1: grayscale")
    parser.add_argument("--keep-stored-colours", action="store_true",
                        help="do not convert colour profiles to sRGB (++data.to_srgb=false in a run)")
    parser.add_argument("--bit-depth", type=int, default=16, choices=range(8, 17), metavar="8..16",
                        help="bits of the samples of 16-bit files (data.bit_depth; default 16)")
    parser.add_argument("--workers", type=int, default=usable_cpus(),
                        help="processes reading in parallel (default: one per CPU core this process may use)")


def reading_settings(args: argparse.Namespace) -> dict:
    """load_image's keywords from the options add_reading_arguments added."""
    return {"bit_depth": args.bit_depth, "to_srgb": not args.keep_stored_colours}
