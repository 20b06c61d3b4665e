"""Throughput of a DataModule's training loader: can the data pipeline keep up with training?

The embedded shapes dataset, or camera-sized stand-in photos (`photos: {count, width, height}`
in the DataModule's node: JPEGs of smooth random scenes in trainA/trainB/testA/testB), is
generated into a temporary folder (not timed), then the train loader is iterated for a few
epochs exactly as the Trainer would. Reported: items per second (one item is an A image and a B
image) over all epochs, including the workers' start-up, and over the epochs after the first
(steady state: persistent workers, warm page cache).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
import torch
from PIL import Image

from src.utils.bench_machine import cpu_kind, peak_rss_bytes


def write_stand_in_photos(folder: Path, count: int, width: int, height: int, seed: int = 0) -> None:
    """`count` JPEGs (quality 90) of width x height per domain and split folder: a coarse random
    colour field blown up bicubically plus fine grain, so they compress and decode as photos do."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", count), ("test", 1)):
        for domain in "AB":
            (folder / f"{split}{domain}").mkdir(parents=True)
            for k in range(n):
                coarse = rng.integers(0, 256, (height // 64 + 2, width // 64 + 2, 3), dtype=np.uint8)
                scene = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
                grain = rng.integers(-8, 9, scene.shape, dtype=np.int16)
                pixels = np.clip(scene.astype(np.int16) + grain, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}{domain}" / f"{k:04d}.jpg", quality=90)


def measure_data_throughput(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(spec["threads"])
    node = dict(spec["datamodule"])
    photos = node.pop("photos", None)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        if photos:
            write_stand_in_photos(Path(tmp), **photos)
        datamodule = hydra.utils.instantiate({**node, "data_dir": tmp})
        datamodule.prepare_data()
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        epoch_times, items = [], 0
        for _ in range(spec["epochs"]):
            start, n = time.perf_counter(), 0
            for batch in loader:
                n += batch["A"].size(0)
            epoch_times.append(time.perf_counter() - start)
            items = n
    steady = epoch_times[1:] or epoch_times
    return {
        "items_per_epoch": items,
        "epoch_times_s": epoch_times,
        "items_per_s": items * len(epoch_times) / sum(epoch_times),
        "steady_items_per_s": items * len(steady) / sum(steady),
        "image_shape": list(batch["A"].shape[1:]),
        "peak_rss_bytes": peak_rss_bytes(),
        "host": {"cpu_kind": cpu_kind()},   # the rows of each kind of CPU are their own (bench_report.row_key)
    }
