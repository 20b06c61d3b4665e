"""Metrics sent to the loggers at a step of our choosing, past Lightning's `self.log`."""
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger


def publish_metrics(trainer: pl.Trainer | None, metrics: dict[str, float], step: int,
                    images: int | None = None) -> None:
    """Put metrics in `trainer.callback_metrics` (what `train()` returns to sweepers, what
    monitors read) on every rank, and send them to the loggers from rank zero. Without a trainer
    (a model's step called by hand), nothing.

    `pl_module.log` is not used: Lightning forbids it in `on_train_end`, where the final
    evaluation runs, and would pass step metrics to the loggers only every `log_every_n_steps`.
    `images`: the row's image count (train/kimg x 1000), where it is not the model's `images_seen`
    (a metric measured inside an iteration, before the count takes the iteration in).
    """
    if trainer is None:
        return
    for name, value in metrics.items():
        trainer.callback_metrics[name] = torch.tensor(float(value), dtype=torch.float64)
    if trainer.is_global_zero:
        # With the image count, as the loss rows have it: wandb plots a metric over a custom
        # x-axis (train/kimg, README "Weights & Biases") only from rows that hold both.
        if images is None:
            images = getattr(trainer.lightning_module, "images_seen", None)
        row = {**metrics, "train/kimg": images / 1000} if images is not None else dict(metrics)
        for logger in trainer.loggers:
            logger.log_metrics(row, step=step)


def publish_summary(trainer: pl.Trainer, values: dict[str, float]) -> None:
    """Set `values` in the wandb run's summary, from rank zero: the summary holds each metric's
    last value, and the runs table of a sweep compares runs by what is put there (the best
    FID), for runs still training or stopped too."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(values)
