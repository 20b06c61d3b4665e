"""Checkpointing counted in training iterations.

Lightning's `every_n_train_steps` counts optimizer steps, and under manual optimization a GAN
iteration takes several (2 for CycleGAN, 3 for NICE-GAN). This converts `every_n_iters` with
the model's `optimizer_steps_per_iter` when training starts.
"""
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class IterationCheckpoint(ModelCheckpoint):
    def __init__(self, every_n_iters: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.every_n_iters = every_n_iters

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.every_n_iters:
            self._every_n_train_steps = self.every_n_iters * pl_module.optimizer_steps_per_iter
        super().setup(trainer, pl_module, stage)
