"""Throughput of a DataModule's training loader: can the data pipeline keep up with training?

The embedded shapes dataset is generated into a temporary folder (not timed), then the train
loader is iterated for a few epochs exactly as the Trainer would. Reported: items per second
(one item is an A image and a B image) over all epochs, including the workers' start-up, and
over the epochs after the first (steady state: persistent workers, warm page cache).
"""
from __future__ import annotations

import tempfile
import time
from typing import Any

import hydra
import torch

from src.utils.bench_machine import peak_rss_bytes


def measure_data_throughput(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        datamodule = hydra.utils.instantiate({**spec["datamodule"], "data_dir": tmp})
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
    }
