"""Ground-truth translation scores on the shapes test pairs, logged during training.

Every `every_n_iters` training iterations and once when training ends, the test pairs are
translated in both directions and scored against their partners (src/metrics/shapes_truth.py):
`truth/<direction>/{iou,color_error,l1,psnr,ssim}`, next to the identity baseline (the input
itself scored as the translation) `truth/<direction>/identity_<score>`. IoU near 1 with a colour
error near 0 means the shape was changed and the colour kept; the identity baseline has IoU about
0.5 and colour error 0, so it shows at a glance how far the model moved from "do nothing".

Directions are the model's (`translate(x, "AtoB")`): with `data.direction=BtoA` the datamodule
delivers domain B as "A", so the model's AtoB reads the folders' B side and is scored against A.

DDP: each rank translates its shard of the pairs (indices rank::world_size); the scores are
torchmetrics states summed across ranks in `compute()`, so every rank logs the same means.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset

from src.metrics.shapes_truth import (ShapesTruthScorer, background_tensor, is_shapes_dataset, load_test_meta,
                                      test_image_size)

log = logging.getLogger(__name__)

DIRECTIONS = ("AtoB", "BtoA")


class ShapesTruthCallback(pl.Callback):
    def __init__(self, every_n_iters: int = 1000, directions: tuple[str, ...] | list[str] = DIRECTIONS,
                 max_pairs: int | None = None):
        unknown = [d for d in directions if d not in DIRECTIONS]
        if unknown:
            raise ValueError(f"callbacks.shapes_truth.directions: {unknown} not in {DIRECTIONS}")
        if max_pairs is not None and (not isinstance(max_pairs, int) or max_pairs < 1):
            raise ValueError(f"callbacks.shapes_truth.max_pairs={max_pairs!r} must be a positive int or null")
        self.every_n_iters = every_n_iters
        self.directions = list(directions)
        self.max_pairs = max_pairs
        self.enabled = True
        self._dataset = None
        self._backgrounds: torch.Tensor | None = None  # (N, 3, H, W) in [-1, 1], by dataset index
        self._identity: dict[str, dict[str, float]] = {}  # the baseline never changes: scored once
        self._last_scored = -1

    # -- setup -------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        data_dir = getattr(datamodule, "data_dir", None)
        if data_dir is None or not is_shapes_dataset(data_dir):
            self._disable(f"data_dir={data_dir} has no test_meta.json (not the shapes dataset)")
            return
        if (datamodule.input_nc, datamodule.output_nc) != (3, 3):
            self._disable("the shapes masks need RGB images (data.input_nc = data.output_nc = 3)")
            return
        dataset = datamodule.dataset("test", train=False)
        meta = load_test_meta(data_dir)
        size = test_image_size(data_dir)
        n = len(dataset) if self.max_pairs is None else min(self.max_pairs, len(dataset))
        backgrounds = []
        for index in range(n):
            item = dataset[index]
            source, target = Path(item["A_path"]), Path(item["B_path"])
            if source.name != target.name or source.name not in meta:
                self._disable(f"test item {index} pairs {source.name} with {target.name}, not one test pair")
                return
            if tuple(item["A"].shape[-2:]) != (size, size):
                self._disable(f"test images are preprocessed to {tuple(item['A'].shape[-2:])}, not the generated "
                              f"{size}x{size} the backgrounds are rendered at (use data.preprocess=none)")
                return
            backgrounds.append(background_tensor(meta[source.name], size))
        self._dataset = Subset(dataset, range(n))
        self._backgrounds = torch.stack(backgrounds)
        self._drop_unsupported_directions(pl_module)

    def _drop_unsupported_directions(self, pl_module: pl.LightningModule) -> None:
        """Ask the model up front (pix2pix translates AtoB only), so every DDP rank agrees on
        the directions before any collective sync, including ranks with an empty shard."""
        for direction in list(self.directions):
            try:
                pl_module.generator_for(direction)
            except ValueError as error:
                log.warning("ShapesTruthCallback: not scoring %s: %s", direction, error)
                self.directions.remove(direction)

    def _disable(self, reason: str) -> None:
        self.enabled = False
        log.warning("ShapesTruthCallback disabled: %s.", reason)

    # -- when to score -------------------------------------------------------------------------

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.enabled and self.every_n_iters > 0 and pl_module.iteration % self.every_n_iters == 0:
            self.score_and_log(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # The end of training is scored here, not in on_train_end, where Lightning refuses
        # self.log; this hook also runs when max_iters stops the run in mid-epoch.
        if self.enabled and self._training_ends(trainer) and pl_module.iteration != self._last_scored:
            self.score_and_log(trainer, pl_module)

    @staticmethod
    def _training_ends(trainer: pl.Trainer) -> bool:
        max_steps_reached = 0 < trainer.max_steps <= trainer.global_step
        max_epochs = trainer.max_epochs
        last_epoch = max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs
        return max_steps_reached or last_epoch or trainer.should_stop

    # -- scoring -----------------------------------------------------------------------------

    def _shard(self, trainer: pl.Trainer) -> list[int]:
        return list(range(trainer.global_rank, len(self._dataset), trainer.world_size))

    def _score_direction(self, trainer, pl_module, direction: str, batch_size: int) -> dict[str, float]:
        """Means over all ranks' pairs of the model's scores and of the identity baseline's
        (computed the first time only: the inputs do not change)."""
        source_key, target_key = ("A", "B") if direction == "AtoB" else ("B", "A")
        device = pl_module.device
        scorer = ShapesTruthScorer().to(device)
        identity = None if direction in self._identity else ShapesTruthScorer().to(device)
        shard = self._shard(trainer)
        loader = DataLoader(Subset(self._dataset, shard), batch_size=batch_size, shuffle=False)
        for start, batch in zip(range(0, len(shard), batch_size), loader):
            source, target = batch[source_key].to(device), batch[target_key].to(device)
            backgrounds = self._backgrounds[shard[start:start + batch_size]].to(device)
            fake = pl_module.translate(source, direction)
            scorer.update(fake, target, backgrounds)
            if identity is not None:
                identity.update(source, target, backgrounds)
        results = {k: float(v) for k, v in scorer.compute().items()}
        if identity is not None:
            self._identity[direction] = {k: float(v) for k, v in identity.compute().items()}
        results.update({f"identity_{k}": v for k, v in self._identity[direction].items()})
        return results

    def score_and_log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        batch_size = getattr(trainer.datamodule, "eval_batch_size", 1)
        device = pl_module.device
        metrics = {}
        # Scoring must not move the training RNG streams (a run with this callback trains like one
        # without it, and resumes from a checkpoint the same way): translation may draw dropout
        # noise and the eval transform draws its seed from torch's RNG.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for direction in self.directions:
                scores = self._score_direction(trainer, pl_module, direction, batch_size)
                metrics.update({f"truth/{direction}/{k}": v for k, v in scores.items()})
        if metrics:
            # Values are already reduced over ranks (torchmetrics sync), so no sync_dist here.
            pl_module.log_dict(metrics, batch_size=1)
        self._last_scored = pl_module.iteration
        return metrics
