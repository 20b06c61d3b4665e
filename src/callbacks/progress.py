"""The training progress bar, counted in training iterations.

With `max_iters` the run sets Lightning's `max_steps` (optimizer steps: several per GAN
iteration) and `max_epochs=-1`. Lightning's bars then take the epoch's total as the smaller of
the epoch's batches and the optimizer steps left, so in a run's last epoch the bar stops short
of its total (at 1/2 of it for CycleGAN's two steps per iteration), and Rich's bar names the
epoch "Epoch 3/-2". These bars count iterations left instead, and name the epoch alone.

A run resumed inside an epoch gets no `on_train_epoch_start` from Lightning (the epoch has
started), so its bar would have no total: the bar sets one up at train start instead, counting
the batches the epoch had done before the resume.
"""
from __future__ import annotations

from pytorch_lightning.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from pytorch_lightning.utilities.imports import _RICH_AVAILABLE


class IterationTotals:
    """The epoch's total in iterations, and the bar's metrics without the loggers' version, for
    a bar class it comes before."""

    @property
    def total_train_batches(self) -> int | float:
        trainer = self.trainer
        if trainer.max_epochs == -1 and trainer.max_steps > 0:
            per_iteration = getattr(trainer.lightning_module, "optimizer_steps_per_iter", 1)
            iterations_left = -(-(trainer.max_steps - trainer.global_step) // per_iteration)
            # the bar counts the epoch's batches from its start, a resumed run's included
            return min(trainer.num_training_batches, self._batches_before_resume + iterations_left)
        return trainer.num_training_batches

    #: batches the epoch had done when the run resumed inside it (0 once that epoch has ended)
    _batches_before_resume = 0

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.fit_loop.restarted_mid_epoch:   # Lightning will not call the epoch's start hook
            done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            # A checkpoint of an epoch's last batch resumes at the next epoch's start (Lightning
            # counts it as mid-epoch, and resets the count only after this hook).
            self._batches_before_resume = done if done < trainer.num_training_batches else 0
            self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._batches_before_resume = 0

    def get_metrics(self, trainer, pl_module) -> dict:
        # Without the loggers' version: the run folder names the run, and Rich's bar printed the
        # version in its loss format ("v_num: 0.000").
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class IterationRichProgressBar(IterationTotals, RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs == -1:   # training to max_iters: no last epoch to name
            return f"Epoch {current_epoch}"
        return super()._get_train_description(current_epoch)


class IterationTQDMProgressBar(IterationTotals, TQDMProgressBar):
    pass


#: Rich bar redraws per second at most. Lightning's default, 100, redraws after nearly every batch
#: of a fast GPU run, each redraw about 0.6 ms of a thread that holds the interpreter lock, while
#: the training loop is what keeps the GPU fed.
RICH_REFRESH_PER_SECOND = 4


def iteration_progress_bar() -> ProgressBar:
    """The bar Lightning would pick by default (Rich when installed), counting iterations."""
    return IterationRichProgressBar(refresh_rate=RICH_REFRESH_PER_SECOND) if _RICH_AVAILABLE \
        else IterationTQDMProgressBar()
