"""The training progress bar, counted in training iterations.

With `max_iters` the run sets Lightning's `max_steps` (optimizer steps: several per GAN
iteration) and `max_epochs=-1`. Lightning's bars then take the epoch's total as the smaller of
the epoch's batches and the optimizer steps left, so in a run's last epoch the bar stops short
of its total (at 1/2 of it for CycleGAN's two steps per iteration), and Rich's bar names the
epoch "Epoch 3/-2". These bars count iterations left instead, and name the epoch alone.
"""
from __future__ import annotations

from pytorch_lightning.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from pytorch_lightning.utilities.imports import _RICH_AVAILABLE


class IterationTotals:
    """The epoch's total in iterations, for a bar class it comes before."""

    @property
    def total_train_batches(self) -> int | float:
        trainer = self.trainer
        if trainer.max_epochs == -1 and trainer.max_steps > 0:
            per_iteration = getattr(trainer.lightning_module, "optimizer_steps_per_iter", 1)
            iterations_left = -(-(trainer.max_steps - trainer.global_step) // per_iteration)
            return min(trainer.num_training_batches, iterations_left)
        return trainer.num_training_batches


class IterationRichProgressBar(IterationTotals, RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs == -1:   # training to max_iters: no last epoch to name
            return f"Epoch {current_epoch}"
        return super()._get_train_description(current_epoch)


class IterationTQDMProgressBar(IterationTotals, TQDMProgressBar):
    pass


def iteration_progress_bar() -> ProgressBar:
    """The bar Lightning would pick by default (Rich when installed), counting iterations."""
    return IterationRichProgressBar() if _RICH_AVAILABLE else IterationTQDMProgressBar()
