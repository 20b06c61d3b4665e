"""MNIST-format datasets (MNIST, Fashion-MNIST) as class folders of PNG files.

Their releases are four gzipped IDX files (train/test images and labels); the noise-to-image
GANs read image folders, so `build_idx_dataset` writes ``<target>/<split>/<class>/<index>.png``
(the labelled DataModule's "classes" layout), once, at download time. Only the standard library
and numpy/PIL are used.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

#: IDX element type codes -> numpy dtypes (big-endian where it matters)
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
#: split -> (images file, labels file), the names every MNIST-format release uses
IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: Path) -> np.ndarray:
    """The array in a gzipped IDX file, with an error naming the file when it is not one."""
    with gzip.open(path, "rb") as stream:
        data = stream.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    dims = data[3]
    shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
    dtype = np.dtype(IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * dims:]
    if len(body) != expected:
        raise ValueError(f"{path}: its header says {shape} ({expected} bytes), but it holds {len(body)} bytes: "
                         "a truncated download? Delete it and download again")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def write_class_folders(images: np.ndarray, labels: np.ndarray, split_dir: Path, class_names: list[str]) -> None:
    """Image i -> split_dir/<class name of label i>/<i>.png."""
    if len(images) != len(labels):
        raise ValueError(f"{split_dir.name}: {len(images)} images but {len(labels)} labels")
    for name in class_names:
        (split_dir / name).mkdir(parents=True, exist_ok=True)
    width = len(str(len(images) - 1))
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(split_dir / class_names[int(label)] / f"{i:0{width}d}.png")


def build_idx_dataset(base_url: str, class_names: list[str],
                      md5: dict[str, str]) -> Callable[[Path, Callable[[str, Path, str], None]], None]:
    """A builder for `src.data.download`: fetch the four files of `base_url` with `fetch(url,
    destination, md5)` into `target` (`md5`: file name -> its published checksum), then write
    `target/train/<class>/` and `target/test/<class>/` and remove the archives."""
    def build(target: Path, fetch: Callable[[str, Path, str], None]) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for split, (images_file, labels_file) in IDX_FILES.items():
            for file in (images_file, labels_file):
                fetch(f"{base_url}{file}", target / file, md5[file])
            write_class_folders(read_idx(target / images_file), read_idx(target / labels_file), target / split,
                                class_names)
            for file in (images_file, labels_file):
                (target / file).unlink()
    return build
