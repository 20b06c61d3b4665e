"""Speed and memory in the loggers (src/callbacks/throughput.py)."""
import csv
import statistics
import time
from pathlib import Path

import pytest

from conftest import NO_EVALUATION
from src.data.paired import PairedImageDataset
from src.utils.run import run_training

FETCH_DELAY_S = 0.2
PLAIN_ITEM = PairedImageDataset.__getitem__


def logged_rows(cfg) -> list[dict[str, float]]:
    (metrics_file,) = Path(cfg.paths.output_dir).glob("csv/version_*/metrics.csv")
    with open(metrics_file) as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f) if row["time/it_per_s"]]


def run_with_fetch_delay(train_cfg, monkeypatch, delay_s: float, out_dir: Path) -> list[dict[str, float]]:
    def slow_item(self, index):
        time.sleep(delay_s)
        return PLAIN_ITEM(self, index)

    monkeypatch.setattr(PairedImageDataset, "__getitem__", slow_item)
    # (no sample grid: the run's last, made at its last batch's end, would count in the last row's time)
    cfg = train_cfg("model=pix2pix", "data=shapes_paired", "max_iters=6", *NO_EVALUATION,
                    "++callbacks.image_grid=null", "callbacks.model_checkpoint.every_n_iters=0")
    cfg.paths.output_dir = str(out_dir)
    run_training(cfg)
    return logged_rows(cfg)


def test_peak_gpu_memory_is_in_the_gb_its_name_says(monkeypatch):
    """It was in GiB, 7% below the benchmark's GB columns for the same bytes."""
    import torch

    from src.callbacks.throughput import peak_gpu_gb
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3_000_000_000)
    assert peak_gpu_gb(torch.device("cuda")) == 3.0


def test_each_logged_row_carries_the_speed_and_the_share_of_time_spent_waiting_for_data(train_cfg, monkeypatch, tmp_path):
    """A loader that takes 0.2 s a batch shows: on every logged row (every iteration here) most of
    the time went to waiting for data, and the speed is at most one iteration per 0.2 s. Without
    the delay the wait is a smaller share. Iterations load one image pair each (batch 1)."""
    slow = run_with_fetch_delay(train_cfg, monkeypatch, FETCH_DELAY_S, tmp_path / "slow")
    assert len(slow) == 6
    # Most of an iteration's time went to waiting, in the typical row: the first row's iteration
    # carries the fit's one-time costs, as long as a fetch or more, and on a busy machine another
    # row may carry a pause of its own.
    assert statistics.median(row["time/data_wait"] for row in slow[1:]) > 0.5, slow
    for row in slow:
        assert 0 < row["time/it_per_s"] <= 1 / FETCH_DELAY_S, row
        assert row["time/images_per_s"] == pytest.approx(row["time/it_per_s"]), row
        assert "memory/peak_gpu_gb" not in row   # CUDA only
    fast = run_with_fetch_delay(train_cfg, monkeypatch, 0.0, tmp_path / "fast")
    # (the first rows left out: they carry the fit's one-time costs, which a busy machine stretches)
    assert max(row["time/data_wait"] for row in fast[1:]) < min(row["time/data_wait"] for row in slow[1:])
    assert min(row["time/it_per_s"] for row in fast[1:]) > max(row["time/it_per_s"] for row in slow[1:])
