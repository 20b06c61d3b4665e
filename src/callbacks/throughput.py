"""Speed and memory in the loggers, on the rows that carry the losses: a wandb chart of it/s
shows a run that slowed down (a full disk, a shared GPU, an evaluation grown too long), and
the data-wait share says whether the loader is what holds training back.

On each iteration whose losses are logged (`trainer.log_every_n_steps`), over the time since
the previous such row (or the start of training), rank zero logs:

- `time/it_per_s`: training iterations per second, wall clock, everything included
  (evaluations, checkpoints and sample grids that fell into the window);
- `time/images_per_s`: real images loaded per second over all devices (what train/kimg counts);
- `time/data_wait`: the share of that time the training loop waited for its next batch (the
  loader, and the copy to the device). On a GPU the host queues kernels ahead of the device, so
  a wait there stalls the device only once the queue runs dry: a share near zero clears the
  loader, a large one points at it;
- `memory/peak_gpu_gb`: the most GPU memory torch's tensors have held so far (CUDA only).

Timing needs no device sync of its own: a logged iteration already waits for its losses.
"""
from __future__ import annotations

import time

import pytorch_lightning as pl
import torch


def peak_gpu_gb(device: torch.device) -> float:
    """The most memory torch's tensors have held on this CUDA device so far, in GiB."""
    return torch.cuda.max_memory_allocated(device) / 2**30


class ThroughputMetrics(pl.Callback):
    def __init__(self) -> None:
        self._since = (0.0, 0, 0)   # the window's start: time, iteration, images seen
        self._waited = 0.0          # seconds waited for batches in the window
        self._epoch_started_at: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._since = (time.perf_counter(), pl_module.iteration, pl_module.images_seen or 0)
        self._waited = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # An epoch's first batch is waited for from here: its loader (re)starts its workers after
        # this hook. The end of the previous epoch's last batch is further back, before epoch-end
        # work that is not waiting for data.
        self._epoch_started_at = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        # The module's batch-end hook is a batch's last, after every callback's (saves,
        # evaluations): from it to here the loop fetched this batch and copied it to the device.
        waiting_since = max(filter(None, (pl_module.batch_finished_at, self._epoch_started_at)), default=None)
        if waiting_since is not None:
            self._waited += time.perf_counter() - waiting_since
        self._epoch_started_at = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if not pl_module.logging_losses:
            return
        now = time.perf_counter()
        then, iteration, images = self._since
        elapsed = max(now - then, 1e-9)
        metrics = {"time/it_per_s": (pl_module.iteration - iteration) / elapsed,
                   "time/images_per_s": ((pl_module.images_seen or 0) - images) / elapsed,
                   "time/data_wait": min(self._waited / elapsed, 1.0)}
        if pl_module.device.type == "cuda":
            metrics["memory/peak_gpu_gb"] = peak_gpu_gb(pl_module.device)
        pl_module.log_dict(metrics, batch_size=pl_module.batch_images(batch))
        self._since = (now, pl_module.iteration, pl_module.images_seen or 0)
        self._waited = 0.0
