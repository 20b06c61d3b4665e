"""Checkpointing counted in training iterations, with a checkpoint at the end of every run.

Lightning's `every_n_train_steps` counts optimizer steps, and under manual optimization a GAN
iteration takes several (2 for CycleGAN, 3 for NICE-GAN). This converts `every_n_iters` with
the model's `optimizer_steps_per_iter`, and also saves after the run's last iteration (a run
stopped by `max_iters` mid-epoch would otherwise end without one) and on Ctrl-C.
"""
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint


class IterationCheckpoint(ModelCheckpoint):
    """Files are named by training iteration (`iter_0004000.ckpt`, like the sample grids), not
    by Lightning's default `epoch=0-step=8000` whose step counts optimizer steps. A `filename`
    template can use `{iter}` next to Lightning's `{epoch}`, `{step}` and logged metrics."""

    def __init__(self, every_n_iters: int | None = None, filename: str | None = "iter_{iter:07d}",
                 auto_insert_metric_name: bool = False, **kwargs):
        super().__init__(filename=filename, auto_insert_metric_name=auto_insert_metric_name, **kwargs)
        self.every_n_iters = every_n_iters

    def _monitor_candidates(self, trainer: pl.Trainer) -> dict:
        candidates = super()._monitor_candidates(trainer)
        candidates["iter"] = torch.tensor(trainer.lightning_module.iteration)
        return candidates

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.every_n_iters:
            self._every_n_train_steps = self.every_n_iters * pl_module.optimizer_steps_per_iter
        super().setup(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Replaces the parent's manual-optimization branch, which warns on every save.
        step = trainer.global_step
        due = self._every_n_train_steps > 0 and step % self._every_n_train_steps == 0
        last_step = 0 < trainer.max_steps <= step
        if not (due or last_step) or self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Ctrl-C makes Lightning exit the process after its graceful shutdown: save first, so no
        # run ends without a checkpoint.
        if isinstance(exception, KeyboardInterrupt) and self.dirpath:
            trainer.save_checkpoint(f"{self.dirpath}/interrupted.ckpt", weights_only=False)
