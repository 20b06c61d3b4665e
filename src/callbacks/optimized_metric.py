"""`optimized_metric` (what `src/train.py` returns to a sweeper) checked when the fit starts.

An Optuna search returns `optimized_metric` after each trial has trained to its end: a metric
no callback of the run logs (`truth/iou`, the searches' default, off the shapes data) or a
direction that searches for the worst score (`eval/fid` maximised) would only show then, or
never. Both are checked once every callback's `setup` has decided whether it applies, before the
first iteration. A name that no evaluation of its family logs (`eval/kid` for `eval/kid_x100`,
`eval/fid_BtoA` of pix2pix) is refused after the first evaluations of the callbacks that could
log it, naming the closest they did log, instead of at the end of the trial.
"""
from __future__ import annotations

import difflib
import re

import pytorch_lightning as pl

from src.callbacks.periodic_evaluation import PeriodicEvaluation

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


def closest_names(metric: str, logged) -> str:
    """The logged names nearest `metric`, for a message (all of them where none is near)."""
    names = sorted(logged)
    # a name it begins (eval/kid of eval/kid_x100) first, then the most alike
    extending = sorted((name for name in names if name.startswith(metric)), key=len)
    near = (extending + [name for name in difflib.get_close_matches(metric, names, n=3, cutoff=0.6)
                         if name not in extending])[:3]
    return f"the closest: {', '.join(near)}" if near else f"they are: {', '.join(names) or 'none'}"


class OptimizedMetricCheck(pl.Callback):
    """Stops the run at fit start when no enabled evaluation callback logs `metric`, and after
    the first evaluations of those that could when none of them logged it."""

    def __init__(self, metric: str, direction: str | None = None):
        check_search_direction(metric, direction)
        self.metric = metric
        self._producers: list[PeriodicEvaluation] = []   # those whose first evaluations decide

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        producers = [cb for cb in trainer.callbacks if isinstance(cb, PeriodicEvaluation) and cb.metric_prefix
                     and self.metric.startswith(cb.metric_prefix)]
        self._producers = [cb for cb in producers if cb.enabled]
        if self._producers or not self.metric.startswith(EVALUATION_FAMILIES):
            return
        if not producers:
            raise ValueError(f"optimized_metric={self.metric}: no callback of this run logs it (conf/callbacks/"
                             f"default.yaml has those that do): the run would train to its end and return nothing")
        keys = ", ".join(cb.config_key for cb in producers)
        raise ValueError(f"optimized_metric={self.metric} comes from {keys}, which is off for this run (its log "
                         f"line above says why): the run would train to its end and return nothing. Choose a metric "
                         f"this run logs (eval/fid on real data; in an Optuna search, with hydra.sweeper.direction=minimize)")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._producers or not all(cb.has_evaluated for cb in self._producers):
            return
        if PeriodicEvaluation.training_ends_here(trainer):
            # the run's last evaluation: let it end with its checkpoint; src/train.py names the
            # metric then, with the names it logged
            self._producers = []
            return
        producers, self._producers = self._producers, []   # decided: checked once
        if self.metric in trainer.callback_metrics:
            return
        family = [name for name in trainer.callback_metrics
                  if any(name.startswith(cb.metric_prefix) for cb in producers)]
        keys = ", ".join(cb.config_key for cb in producers)
        raise ValueError(f"optimized_metric={self.metric}: {keys} evaluated at iteration {pl_module.iteration} "
                         f"without logging it ({closest_names(self.metric, family)}): the run would train to its end "
                         f"and return nothing: set optimized_metric to one of the names this run logs")
