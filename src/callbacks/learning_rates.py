"""Lightning's learning-rate monitor, whose rows carry `train/kimg` as the loss rows do.

wandb plots a metric over a custom x-axis (`train/kimg`, README "Weights & Biases") only from
rows that hold both, and Lightning writes the rates in rows of their own (at the batch's start,
before the loss rows): over kimg the `lr/*` charts were empty. A rate row gets the count the
loss row of its step carries, the images trained on once that batch is done, so the two agree
where a logger merges a step's rows into one (`metrics.csv`).
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor


class LearningRatesWithImageCount(LearningRateMonitor):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._kimg: float | None = None   # the count the next rate row carries

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._kimg = self.kimg_after(pl_module, batch)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # (a per-epoch row: the rate starts where the epoch does)
        images = getattr(pl_module, "images_seen", None)
        self._kimg = images / 1000 if images is not None else None
        super().on_train_epoch_start(trainer, pl_module)

    @staticmethod
    def kimg_after(pl_module: pl.LightningModule, batch: Any) -> float | None:
        """The thousands of images trained on once this batch's iteration is done, as its loss row
        logs them; None for a module that does not count them."""
        return pl_module.images_after(batch) / 1000 if hasattr(pl_module, "images_after") else None

    def _extract_stats(self, trainer: pl.Trainer, interval: str) -> dict[str, float]:
        stats = super()._extract_stats(trainer, interval)
        if stats and self._kimg is not None:
            stats["train/kimg"] = self._kimg
        return stats
