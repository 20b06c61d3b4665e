"""CIFAR-10 (Krizhevsky 2009) as class folders of PNG files, for the noise-to-image GANs (the
benchmark of the WGAN-GP paper and most GAN papers after it).

The binary release (cifar-10-binary.tar.gz, unpacked to cifar-10-batches-bin/) holds five
training files and one test file of fixed-size records: one label byte, then the 32x32 image's
red, green and blue planes (1024 bytes each, rows in order). `convert_cifar10` writes them as
``<target>/<split>/<class>/<index>.png`` (the labelled DataModule's "classes" layout), once, at
download time. The binary release is read rather than the Python one: unpickling a download
would run whatever code it holds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from src.data.mnist import write_class_folders

SIDE = 32
#: bytes per record: the label, then three 32x32 planes
RECORD_BYTES = 1 + 3 * SIDE * SIDE
#: the release's files of each split
SPLIT_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
#: folder names in label order (batches.meta.txt's order), numbered so that they sort in it
CLASS_FOLDERS = ["0_airplane", "1_automobile", "2_bird", "3_cat", "4_deer", "5_dog", "6_frog", "7_horse", "8_ship",
                 "9_truck"]


def read_cifar_records(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 32 x 32 x 3 uint8, labels N) of one binary CIFAR-10 file, with an error naming
    the file when it is not one."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0 or data.size % RECORD_BYTES:
        raise ValueError(f"{path}: {data.size} bytes is not a whole number of CIFAR-10 records ({RECORD_BYTES} "
                         "bytes each): a truncated download? Delete it and download again")
    records = data.reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    if labels.max() >= len(CLASS_FOLDERS):
        raise ValueError(f"{path}: label {int(labels.max())} is not a CIFAR-10 class (0-9): is this CIFAR-100?")
    images = records[:, 1:].reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return images, labels


def convert_cifar10(extracted: Path, target: Path) -> None:
    """The unpacked release folder `extracted` -> `target/train/<class>/` and `target/test/<class>/`."""
    for split, files in SPLIT_FILES.items():
        missing = [name for name in files if not (extracted / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{extracted} lacks {missing}: not the binary CIFAR-10 release")
        parts = [read_cifar_records(extracted / name) for name in files]
        write_class_folders(np.concatenate([images for images, _ in parts]),
                            np.concatenate([labels for _, labels in parts]), target / split, CLASS_FOLDERS)
