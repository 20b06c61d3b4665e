"""MMD between real test samples and generated ones: the RGAN paper's measure of a generative
model of time series (and usable for any noise-to-sample model).

Every `every_n_iters` training iterations and at the end: one sample per test item (its latent
fixed by the item's index, of its condition when the model is conditional, `evaluation_pair`),
and the unbiased Gaussian-kernel MMD^2 between the test items and the samples, its bandwidth
fixed by the test items (`sample_mmd2`, src/metrics/mmd.py), logged as `eval/mmd2_samples`. Under DDP each rank
samples its block of the test set and the rows are gathered, so every rank gets the
single-process value.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from src.callbacks.periodic_evaluation import PeriodicEvaluation
from src.utils.metric_publishing import publish_metrics
from src.callbacks.latent import gather_rows
from src.metrics.mmd import sample_mmd2
from src.models.noise_base import SAMPLES, NoiseToImageModel
from src.utils.accelerator import float64_device


class SampleMMDCallback(PeriodicEvaluation):
    config_key = "callbacks.sample_mmd"
    metric_prefix = "eval/mmd2_samples"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not isinstance(pl_module, NoiseToImageModel):
            rank_zero_warn(f"SampleMMDCallback disabled: {type(pl_module).__name__} does not generate from noise.")
            self.enabled = False
            return
        super().setup(trainer, pl_module, stage)

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reals, fakes = [], []
        device = float64_device(pl_module.device)
        for batch in self.evaluation_loader(trainer):
            real, fake = pl_module.evaluation_pair(batch, SAMPLES)
            reals.append(real.flatten(1).to(device).double())
            fakes.append(fake.flatten(1).to(device).double())
        width = reals[0].shape[1] if reals else self.sample_width(trainer, pl_module)
        empty = torch.empty(0, width, dtype=torch.float64, device=device)
        real = gather_rows(torch.cat(reals) if reals else empty).cpu()
        fake = gather_rows(torch.cat(fakes) if fakes else empty).cpu()
        publish_metrics(trainer, {"eval/mmd2_samples": sample_mmd2(real, fake)}, step=pl_module.iteration)

    def sample_width(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
        """Numbers per sample, for a rank whose block is empty (every rank gathers one width)."""
        return self.first_item(trainer, pl_module)["A"][0].numel()
