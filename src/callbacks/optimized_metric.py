"""`optimized_metric` (what `src/train.py` returns to a sweeper) checked when the fit starts.

An Optuna search returns `optimized_metric` after each trial has trained to its end: a metric
no callback of the run logs (`truth/AtoB/iou`, the searches' default, off the shapes data) or a
direction that searches for the worst score (`eval/fid` maximised) would only show then, or
never. Both are checked once every callback's `setup` has decided whether it applies, before the
first iteration.
"""
from __future__ import annotations

import re

import pytorch_lightning as pl

from src.callbacks.fid_kid import PeriodicEvaluation

#: the metric families of the evaluation callbacks (their `metric_prefix`es start so): a metric
#: of one that no callback of the run logs is refused; other names (a training loss, a metric of a
#: callback of one's own) are left to the end of the run
EVALUATION_FAMILIES = ("eval/", "truth/", "latent/", "segmentation/")
#: the last part of a metric's name, by which way is better
LOWER_IS_BETTER = re.compile(r"^(fid|kid|mmd2|color_error|l1)(_|$)")
HIGHER_IS_BETTER = re.compile(r"(^|_)(iou|psnr|ssim|is|acc)(_|$)")


def better_direction(metric: str) -> str | None:
    """"minimize" or "maximize" for the evaluation scores whose better way is known, else None."""
    leaf = metric.rsplit("/", 1)[-1]
    if LOWER_IS_BETTER.search(leaf):
        return "minimize"
    if HIGHER_IS_BETTER.search(leaf):
        return "maximize"
    return None


def check_search_direction(metric: str, direction: str | None) -> None:
    """A sweeper told to go the wrong way for `metric` (maximise an FID) is refused."""
    better = better_direction(metric)
    if direction is not None and better is not None and str(direction).lower() != better:
        raise ValueError(f"optimized_metric={metric} is better {'lower' if better == 'minimize' else 'higher'}, but "
                         f"hydra.sweeper.direction={direction}: the search would look for the worst runs. Set "
                         f"hydra.sweeper.direction={better}")


class OptimizedMetricCheck(pl.Callback):
    """Stops the run at fit start when no enabled evaluation callback logs `metric`."""

    def __init__(self, metric: str, direction: str | None = None):
        check_search_direction(metric, direction)
        self.metric = metric

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        producers = [cb for cb in trainer.callbacks if isinstance(cb, PeriodicEvaluation) and cb.metric_prefix
                     and self.metric.startswith(cb.metric_prefix)]
        if any(cb.enabled for cb in producers) or not self.metric.startswith(EVALUATION_FAMILIES):
            return
        if not producers:
            raise ValueError(f"optimized_metric={self.metric}: no callback of this run logs it (conf/callbacks/"
                             f"default.yaml has those that do): the run would train to its end and return nothing")
        keys = ", ".join(cb.config_key for cb in producers)
        raise ValueError(f"optimized_metric={self.metric} comes from {keys}, which is off for this run (its log "
                         f"line above says why): the run would train to its end and return nothing. Choose a metric "
                         f"this run logs (eval/fid on real data, with hydra.sweeper.direction=minimize)")
