"""A line of progress in the run's log every few minutes, where no progress bar is drawn.

Rich's bar draws only on a terminal: a batch job (SLURM's .out file, nohup, a submitit job)
shows nothing of it until training ends, and train.log holds no progress either. There, rank
zero logs every `every_n_seconds` (and after the first iteration, so a job shows that training
started):

    iteration 12350/1000000 (1.2%) | 3.41 it/s, 3.41 images/s | ETA 3d 08:15 | G 2.31 D 0.45 | peak GPU 12.0 GB

The rates are over the interval since the previous line (a resumed run's included: they start
at the resume). The ETA is at the pace since this start, evaluations and checkpoints included
(a window between two evaluations would leave them out, or hold one and overshoot), and only
from ETA_AFTER_ITERATIONS on: the first iteration's pace, slowed by the loaders' and kernels'
start-up, made a run of hours read as days. On a terminal the bar shows the same, and the line
is left out unless `always` is set.
"""
from __future__ import annotations

import logging
import sys
import time

import pytorch_lightning as pl

from src.callbacks.image_budget import ImageBudget
from src.callbacks.throughput import RateWindow, peak_gpu_gb
from src.utils.config_checks import is_number

log = logging.getLogger(__name__)

#: iterations of this start before an ETA is given
ETA_AFTER_ITERATIONS = 10


def duration(seconds: float) -> str:
    """`3d 08:15`, `08:15:02`: days, hours and minutes, or hours, minutes and seconds."""
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{days}d {hours:02d}:{minutes:02d}" if days else f"{hours:02d}:{minutes:02d}:{seconds:02d}"


def kimg(images: float) -> str:
    """Thousands of images, to a tenth once there are ten (a short budget's 0.004 shows)."""
    return f"{images / 1000:.1f}" if images >= 10_000 else f"{images / 1000:.3g}"


class ProgressLog(pl.Callback):
    def __init__(self, every_n_seconds: float = 300.0, always: bool = False):
        if not is_number(every_n_seconds) or every_n_seconds <= 0:
            raise ValueError(f"callbacks.progress_log.every_n_seconds={every_n_seconds!r} must be a positive number")
        self.every_n_seconds, self.always = float(every_n_seconds), always
        self.active = False
        self._window = RateWindow()   # since the previous line
        self._due = 0.0   # when the next line is
        self._budget: ImageBudget | None = None   # the run's kimg budget, if it has one
        self._start = (0.0, 0.0, 0)   # this start's (time, progress, iteration): the ETA's pace

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bar_drawn = trainer.progress_bar_callback is not None and sys.stdout.isatty()
        self.active = trainer.is_global_zero and (self.always or not bar_drawn)
        self._budget = next((cb for cb in trainer.callbacks if isinstance(cb, ImageBudget)), None)
        now = time.monotonic()
        self._window.mark(pl_module, now)
        self._start = (now, self.length(trainer, pl_module)[0], pl_module.iteration)
        self._due = now   # the first line comes after the first iteration: a job shows training started

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        now = time.monotonic()
        if self.active and now >= self._due:
            self._log_line(trainer, pl_module, now)
            self._due = now + self.every_n_seconds

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active and pl_module.iteration != self._window.iteration:
            self._log_line(trainer, pl_module, time.monotonic())

    def _log_line(self, trainer: pl.Trainer, pl_module: pl.LightningModule, now: float) -> None:
        """Log the line, and measure the next one's rates from here."""
        progress = self.length(trainer, pl_module)
        log.info(self.line(trainer, pl_module, now, progress))
        self._window.mark(pl_module, now)

    def length(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[float, float | None, str]:
        """(done, total, what): the run's progress in the unit its length is set in (a kimg
        budget's images, max_iters' iterations, or epochs); total None when the run is open-ended."""
        if self._budget is not None:
            return float(pl_module.images_seen or 0), float(self._budget.max_images), "images"
        if trainer.max_steps and trainer.max_steps > 0:
            return float(pl_module.iteration), float(pl_module.run_length_in("iteration")), "iterations"
        batches = trainer.num_training_batches
        epochs = trainer.current_epoch + (trainer.fit_loop.epoch_loop.batch_progress.current.processed / batches
                                          if batches and batches != float("inf") else 0.0)
        total = float(trainer.max_epochs) if trainer.max_epochs and trainer.max_epochs > 0 else None
        # (at the end the epoch counter has moved past the last epoch, whose batches are all done)
        return (min(epochs, total) if total else epochs), total, "epochs"

    def line(self, trainer: pl.Trainer, pl_module: pl.LightningModule, now: float,
             progress: tuple[float, float | None, str]) -> str:
        done, total, unit = progress
        position = f"iteration {pl_module.iteration}"
        if unit == "iterations":
            position += f"/{total:.0f} ({100 * done / total:.1f}%)"
        elif unit == "images" and total:
            position += f", kimg {kimg(done)}/{kimg(total)} ({100 * done / total:.1f}%)"
        elif total:
            position += f", epoch {done:.2f}/{total:.0f}"
        parts = [position]
        if pl_module.iteration > self._window.iteration:
            it_per_s, images_per_s = self._window.rates(pl_module, now)
            parts.append(f"{it_per_s:.3g} it/s" + ("" if images_per_s is None else f", {images_per_s:.3g} images/s"))
            started_at, done_at_start, iteration_at_start = self._start
            rate = (done - done_at_start) / max(now - started_at, 1e-9)
            settled = pl_module.iteration - iteration_at_start >= ETA_AFTER_ITERATIONS
            if total is not None and rate > 0 and (settled or done >= total):
                parts.append(f"ETA {duration(max(total - done, 0.0) / rate)}")
        losses = {name.removeprefix("train/"): float(value) for name, value in trainer.callback_metrics.items()
                  if name.startswith("train/") and name != "train/kimg" and value.numel() == 1}
        if losses:
            parts.append(" ".join(f"{name} {value:.4g}" for name, value in sorted(losses.items())))
        if pl_module.device.type == "cuda":
            parts.append(f"peak GPU {peak_gpu_gb(pl_module.device):.1f} GB")
        return " | ".join(parts)
