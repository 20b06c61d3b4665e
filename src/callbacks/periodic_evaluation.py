"""The schedule and evaluation-set plumbing every evaluation callback shares (FID/KID, the
latent t-SNE/MMD, the shapes' ground truth, the label-map scores, the samples' MMD): when to
evaluate (every `every_n_iters` iterations and at the run's end, on every rank, on training's
untouched random streams), on which test images (the first `max_images`, each rank a contiguous
block of them, each image once) and in which batches."""
from __future__ import annotations

import time
from collections.abc import Iterator

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Subset

from src.data.unpaired import distinct_images
from src.utils.config_checks import require_int
from src.utils.metric_publishing import publish_metrics
from src.utils.rng import isolated_rng


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Rank's contiguous block of n items: sizes differ by at most one, no item is repeated,
    and concatenating the blocks in rank order gives the original order."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


class PeriodicEvaluation(pl.Callback):
    """Base of the evaluation callbacks: calls `evaluate(trainer, pl_module)` every
    `every_n_iters` training iterations (`pl_module.iteration`, not optimizer steps) and once at
    the end of training, on every rank, with a seeded RNG that leaves training's untouched.

    The data is the first `max_images` items (all: None) of the DataModule's test split, in file
    order, deterministic transform; `evaluation_loader` serves this rank's block of them.
    """

    #: the smallest evaluation set the metric is defined on (FID needs two images)
    min_images = 2
    #: the callback's node in conf/callbacks, for error messages
    config_key = "callbacks.<name>"
    #: the start of the names of the metrics it logs (`optimized_metric` is checked against it)
    metric_prefix: str | None = None

    def __init__(self, every_n_iters: int = 5000, max_images: int | None = None, batch_size: int | None = None,
                 seed: int = 0):
        key = self.config_key
        require_int(f"{key}.every_n_iters", every_n_iters, least=0, why=" (0: only at the end of training)")
        require_int(f"{key}.max_images", max_images, least=self.min_images, allow_none=True,
                    why=" (null: the whole test split)")
        require_int(f"{key}.batch_size", batch_size, allow_none=True, why=" (null: the data's evaluation batch size)")
        self.every_n_iters, self.max_images, self.batch_size, self.seed = every_n_iters, max_images, batch_size, seed
        self.enabled = True
        self._last_evaluated = -1   # (restored from a checkpoint: of the run, not of this fit)
        self._evaluated_this_fit = False
        self._loader: DataLoader | None = None

    # ----- what subclasses provide -------------------------------------------------------
    def scores(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """The metrics of one evaluation, the same on every rank (a collective call under DDP)."""
        raise NotImplementedError

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float] | None:
        """Log `scores` at the module's iteration and return them; callbacks that also save or
        plot override it."""
        metrics = self.scores(trainer, pl_module)
        if metrics:
            publish_metrics(trainer, metrics, step=pl_module.iteration)
        return metrics

    # ----- the evaluation set ------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # A new fit may bring another DataModule, world size or model: it decides all of this again.
        self.enabled, self._last_evaluated, self._evaluated_this_fit, self._loader = True, -1, False, None
        datamodule = trainer.datamodule
        if stage == "fit" and (datamodule is None or not hasattr(datamodule, "test_dataloader")):
            rank_zero_warn(f"{type(self).__name__} disabled: it evaluates on the DataModule's test split, "
                           "and this run has no DataModule with a test_dataloader().")
            self.enabled = False
        if stage == "fit" and self.enabled:
            # Here, not at the first evaluation thousands of iterations in.
            _, subset = self.evaluation_dataset(trainer)
            where = f"the test split of {getattr(datamodule, 'data_dir', 'the data')}"
            if len(subset) < self.min_images:
                raise ValueError(f"{type(self).__name__} needs at least {self.min_images} test images, and {where} has "
                                 f"{len(subset)}: add test images, or turn it off with {self.config_key}=null")
            # An unpaired split is as long as its larger domain: its item count hides a domain of
            # one image, which the evaluation (each image once: distinct_batches) would fail on.
            for key, count in distinct_images(subset.dataset).items():
                if count < self.min_images:   # (the items, checked above, are at least as many)
                    raise ValueError(f"{type(self).__name__} needs at least {self.min_images} distinct test images "
                                     f"of each domain, and {where} has {count} in domain {key}: add test images, "
                                     f"or turn it off with {self.config_key}=null")

    def evaluation_dataset(self, trainer: pl.Trainer):
        """The test split (with the DataModule's evaluation loader settings), capped at max_images
        (the items the DataModule's `evaluation_indices` picks: the first ones, or for labelled
        data ones in the split's class proportions)."""
        reference = trainer.datamodule.test_dataloader()
        dataset = reference.dataset
        if self.max_images is None or self.max_images >= len(dataset):
            return reference, Subset(dataset, range(len(dataset)))
        pick = getattr(trainer.datamodule, "evaluation_indices", None)
        return reference, Subset(dataset, pick("test", self.max_images) if pick else range(self.max_images))

    def evaluation_block(self, trainer: pl.Trainer) -> range:
        """The indices into the evaluation set that this rank evaluates, in loader order.

        Lightning adds no DistributedSampler to a loader made in a callback; the sampler's
        padding would count some images twice, so the split is done here without padding.
        """
        _, subset = self.evaluation_dataset(trainer)
        return shard_range(len(subset), trainer.global_rank, trainer.world_size)

    def evaluation_loader(self, trainer: pl.Trainer) -> DataLoader:
        """This rank's contiguous block of the evaluation set (`evaluation_block`)."""
        if self._loader is None:
            reference, subset = self.evaluation_dataset(trainer)
            block = self.evaluation_block(trainer)
            self._loader = DataLoader(Subset(subset, block), batch_size=self.batch_size or reference.batch_size,
                                      shuffle=False, drop_last=False, num_workers=reference.num_workers,
                                      collate_fn=reference.collate_fn, pin_memory=reference.pin_memory)
        return self._loader

    def distinct_batches(self, trainer: pl.Trainer) -> Iterator[dict]:
        """This rank's evaluation batches, each image key ("A", "B") cut to the images not shown
        earlier in the evaluation set: a test split that cycles its smaller domain
        (`distinct_images`) would otherwise count some images twice in FID/KID and the latent
        MMD, unlike eval.py and the papers' code. The keys' rows then no longer pair up (where the
        items are real pairs, the domains have one count and nothing is cut; the shapes' ground
        truth reads `evaluation_loader`). An item's
        image is a repeat exactly when its index is past the domain's count, because the
        evaluation set starts at item 0 (`evaluation_indices`)."""
        _, subset = self.evaluation_dataset(trainer)
        counts = distinct_images(subset.dataset)
        indices = [subset.indices[i] for i in self.evaluation_block(trainer)]
        start = 0
        for batch in self.evaluation_loader(trainer):
            if counts:
                size = len(batch[next(iter(counts))])
                index = torch.tensor(indices[start:start + size])
                start += size
                batch = dict(batch)
                for key, count in counts.items():
                    keep = index < count
                    batch[key] = batch[key][keep]
                    if f"{key}_path" in batch:
                        batch[f"{key}_path"] = [path for path, kept in zip(batch[f"{key}_path"], keep) if kept]
            yield batch

    def first_item(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        """Item 0 of the evaluation set as a batch of one, on the module's device (the same on
        every rank, so probes built on it decide the same everywhere)."""
        reference, subset = self.evaluation_dataset(trainer)
        batch = reference.collate_fn([subset[0]])
        return {k: v.to(pl_module.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ----- the schedule ------------------------------------------------------------------
    def after_evaluation(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                         metrics: dict[str, float] | None) -> None:
        """Work after an evaluation (`metrics`: what `evaluate` returned), back on training's
        random streams: a checkpoint saved here records those streams, which a resume from it
        continues (not the evaluation's seeded ones)."""

    @property
    def last_evaluated(self) -> int:
        """The iteration of the run's last evaluation (-1: none), a resumed one's included."""
        return self._last_evaluated

    @property
    def has_evaluated(self) -> bool:
        """Whether an evaluation of this fit has run (and logged what it logs): not one of the run
        before a resume, whose logged values this fit's metrics do not hold."""
        return self._evaluated_this_fit

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        started = time.monotonic()
        with isolated_rng(pl_module.device, self.seed):
            metrics = self.evaluate(trainer, pl_module)
        if metrics:   # the loggers have them; the console and train.log said nothing but a new best FID
            scores = ", ".join(f"{name} {value:.4g}" for name, value in metrics.items())
            rank_zero_info(f"{type(self).__name__} at iteration {pl_module.iteration} "
                           f"({time.monotonic() - started:.0f} s): {scores}")
        # Before the work after it: a checkpoint saved there (best_fid.ckpt) records this evaluation
        # as done, or a resume from it would evaluate its iteration again.
        self._last_evaluated, self._evaluated_this_fit = pl_module.iteration, True
        self.after_evaluation(trainer, pl_module, metrics)

    @staticmethod
    def training_ends_here(trainer: pl.Trainer) -> bool:
        """Whether the iteration that just ended is the run's last (`max_iters`, the last batch of
        `trainer.max_epochs`, or a stop asked for, as `max_kimg`'s): its evaluation then runs at the
        batch's end, before the checkpoint Lightning writes there or at the epoch's end, so that
        last.ckpt holds its result (a best FID), instead of in `on_train_end`, after it."""
        if trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step:
            return True
        max_epochs = trainer.max_epochs
        return bool(trainer.is_last_batch) and max_epochs is not None and 0 < max_epochs <= trainer.current_epoch + 1

    def due_at(self, iteration: int) -> bool:
        """Whether the schedule evaluates `iteration` (besides the run's last)."""
        return self.every_n_iters > 0 and iteration % self.every_n_iters == 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        iteration = pl_module.iteration
        if self.enabled and (self.due_at(iteration) or self.training_ends_here(trainer)) \
                and iteration != self._last_evaluated:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled and pl_module.iteration > 0 and pl_module.iteration != self._last_evaluated:
            self._run(trainer, pl_module)

    # The iteration last evaluated comes back with a checkpoint (written after the batch-end
    # evaluations): a finished run resumed from the checkpoint of its last batch trains nothing
    # and would otherwise evaluate that iteration again at its end, logging its rows twice (with
    # the training weights where an EMA's were scored at the batch's end).
    def state_dict(self) -> dict:
        return {"last_evaluated": self._last_evaluated}

    def load_state_dict(self, state_dict: dict) -> None:
        self._last_evaluated = int(state_dict.get("last_evaluated", -1))
