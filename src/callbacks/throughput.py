"""Speed and memory in the loggers, on the rows that carry the losses: a wandb chart of it/s
shows a run that slowed down (a full disk, a shared GPU, an evaluation grown too long), and
the data-wait share says whether the loader is what holds training back.

On each iteration whose losses are logged (`trainer.log_every_n_steps`), over the time since
the previous such row (or the start of training), rank zero logs:

- `time/it_per_s`: training iterations per second, wall clock, everything included
  (evaluations, checkpoints and sample grids that fell into the window);
- `time/images_per_s`: real images loaded per second over all devices (what train/kimg counts);
- `time/data_wait`: the share of that time spent in the training loader's `next()`, waiting for
  a batch its workers had not yet delivered (or, with no workers, loading it). On a GPU the
  host queues kernels ahead of the device, so a wait there stalls the device only once the
  queue runs dry: a share near zero clears the loader, a large one points at it;
- `memory/peak_gpu_gb`: the most GPU memory torch's tensors have held since the fit's training
  began (CUDA only; reset then, as a multirun's jobs share the process).

The fetch is timed where Lightning reports it to its profiler (the `train_dataloader_next`
action), through a wrapper around the trainer's profiler for the fit: time between batches
counts other work too (under DDP, a broadcast before each fetch waits for the GPU's queue).
Timing needs no device sync of its own: a logged iteration already waits for its losses.
"""
from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

#: the profiler action Lightning's training loop wraps around each `next()` of its loader
FETCH_ACTION = "train_dataloader_next"


def peak_gpu_gb(device: torch.device) -> float:
    """The most memory torch's tensors have held on this CUDA device since the fit's training
    began (AdversarialModel.on_train_start resets the mark), in GB (10^9 bytes), as its name and
    the benchmark's memory columns say (GiB would read 7% low beside them)."""
    return torch.cuda.max_memory_allocated(device) / 1e9


class RateWindow:
    """Iterations and images per second since a mark."""

    def __init__(self) -> None:
        self.when, self.iteration, self.images = 0.0, 0, None

    def mark(self, pl_module: pl.LightningModule, when: float) -> None:
        # images_seen is None from a checkpoint without the count, until the first batch estimates it
        self.when, self.iteration, self.images = when, pl_module.iteration, pl_module.images_seen

    def elapsed(self, now: float) -> float:
        """Seconds since the mark (never 0: rates divide by it)."""
        return max(now - self.when, 1e-9)

    def rates(self, pl_module: pl.LightningModule, now: float) -> tuple[float, float | None]:
        """(iterations/s, images/s) since the mark; images/s None where the mark had no count."""
        elapsed = self.elapsed(now)
        images = None if self.images is None else ((pl_module.images_seen or 0) - self.images) / elapsed
        return (pl_module.iteration - self.iteration) / elapsed, images


class FetchTimer:
    """The trainer's profiler, with the seconds spent in the training loader's `next()` added up
    (`waited`); every call goes on to the profiler it wraps."""

    def __init__(self, profiler) -> None:
        self.wrapped = profiler
        self.waited = 0.0
        self._started: float | None = None

    def start(self, action_name: str) -> None:
        if action_name.endswith(FETCH_ACTION):
            self._started = time.perf_counter()
        self.wrapped.start(action_name)

    def stop(self, action_name: str) -> None:
        self.wrapped.stop(action_name)
        if action_name.endswith(FETCH_ACTION) and self._started is not None:
            self.waited += time.perf_counter() - self._started
            self._started = None

    def __getattr__(self, name: str):
        return getattr(self.wrapped, name)


class ThroughputMetrics(pl.Callback):
    def __init__(self) -> None:
        self._window = RateWindow()
        self._fetches: FetchTimer | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fetches = FetchTimer(trainer.profiler)
        trainer.profiler = self._fetches

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_profiler(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_profiler(trainer)

    def _restore_profiler(self, trainer: pl.Trainer) -> None:
        if self._fetches is not None and trainer.profiler is self._fetches:
            trainer.profiler = self._fetches.wrapped
        self._fetches = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._window.mark(pl_module, time.perf_counter())
        if self._fetches is not None:
            self._fetches.waited = 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if not pl_module.logging_losses or self._fetches is None:
            return
        now = time.perf_counter()
        it_per_s, images_per_s = self._window.rates(pl_module, now)
        waited = min(self._fetches.waited / self._window.elapsed(now), 1.0)
        metrics = {"time/it_per_s": it_per_s, "time/data_wait": waited}
        if images_per_s is not None:
            metrics["time/images_per_s"] = images_per_s
        if pl_module.device.type == "cuda":
            metrics["memory/peak_gpu_gb"] = peak_gpu_gb(pl_module.device)
        pl_module.log_dict(metrics, batch_size=pl_module.batch_images(batch))
        self._window.mark(pl_module, now)
        self._fetches.waited = 0.0
