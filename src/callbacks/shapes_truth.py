"""Ground-truth translation scores on the shapes test pairs, logged during training.

Every `every_n_iters` training iterations and once when training ends, the test pairs are
translated in both directions and scored against their partners (src/metrics/shapes_truth.py):
`truth/<direction>/{iou,color_error,l1,psnr,ssim}`, next to the identity baseline (the input
itself scored as the translation) `truth/<direction>/identity_<score>`. IoU near 1 with a colour
error near 0 means the shape was changed and the colour kept; the identity baseline has IoU about
0.5 and colour error 0, so it shows at a glance how far the model moved from "do nothing".

Directions are the model's (`translate(x, "AtoB")`): with `data.direction=BtoA` the datamodule
delivers domain B as "A", so the model's AtoB reads the folders' B side and is scored against A.

Schedule, evaluation set (the first `max_pairs` test pairs), DDP sharding (each rank a
contiguous block) and RNG isolation are PeriodicEvaluation's, as for FID/KID and the latent
callback; the scores are torchmetrics states summed across ranks in `compute()`, so every rank
publishes the same means.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch

from src.callbacks.periodic_evaluation import PeriodicEvaluation
from src.metrics.shapes_truth import (ShapesTruthScorer, background_tensor, is_shapes_dataset, load_test_meta,
                                      test_image_size, truth_unavailable)
from src.utils.config_checks import require_int
from src.utils.directions import DIRECTION_KEYS, DIRECTIONS, translated_directions

log = logging.getLogger(__name__)


class ShapesTruthCallback(PeriodicEvaluation):
    min_images = 1  # a score per pair: one pair is a valid (if noisy) evaluation set
    config_key = "callbacks.shapes_truth"
    metric_prefix = "truth/"

    def __init__(self, every_n_iters: int = 1000, directions: tuple[str, ...] | list[str] = DIRECTIONS,
                 max_pairs: int | None = None, batch_size: int | None = None, seed: int = 0):
        unknown = [d for d in directions if d not in DIRECTIONS]
        if unknown:
            raise ValueError(f"callbacks.shapes_truth.directions: {unknown} not in {DIRECTIONS}")
        require_int("callbacks.shapes_truth.max_pairs", max_pairs, allow_none=True)
        super().__init__(every_n_iters=every_n_iters, max_images=max_pairs, batch_size=batch_size, seed=seed)
        self.configured_directions = list(directions)
        self.directions = list(directions)   # those the model of this fit translates
        self._backgrounds: torch.Tensor | None = None  # (N, 3, H, W) in [-1, 1], by evaluation index
        self._identity: dict[str, dict[str, float]] = {}  # the baseline never changes: scored once

    # -- setup -------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # A new fit may bring another model or data.
        self.directions, self._identity = list(self.configured_directions), {}
        datamodule = trainer.datamodule
        data_dir = getattr(datamodule, "data_dir", None)
        if data_dir is None or not is_shapes_dataset(data_dir):
            self._disable(f"data_dir={data_dir} has no test_meta.json (not the shapes dataset)", applies=False)
            return
        if not callable(getattr(pl_module, "translate", None)):
            self._disable(f"{type(pl_module).__name__} translates no images (it generates them from noise)",
                          applies=False)
            return
        super().setup(trainer, pl_module, stage)
        if not self.enabled:
            return
        _, pairs = self.evaluation_dataset(trainer)
        size, channels = test_image_size(data_dir), (datamodule.input_nc, datamodule.output_nc)
        if why := truth_unavailable(size, channels, pairs[0]["A"].shape[-2:]):   # the shapes' images share a size
            self._disable(why)
            return
        meta = load_test_meta(data_dir)
        backgrounds = []
        for index in range(len(pairs)):
            item = pairs[index]
            source, target = Path(item["A_path"]).name, Path(item["B_path"]).name
            if source != target or source not in meta:
                self._disable(f"test item {index} pairs {source} with {target}, not one test pair")
                return
            backgrounds.append(background_tensor(meta[source], size))
        self._backgrounds = torch.stack(backgrounds)
        self._drop_unsupported_directions(pl_module)

    def _drop_unsupported_directions(self, pl_module: pl.LightningModule) -> None:
        """Ask the model up front (pix2pix translates AtoB only), so every DDP rank agrees on
        the directions before any collective sync, including ranks with an empty shard."""
        translated, skipped = translated_directions(pl_module, self.directions)
        for direction, reason in skipped.items():
            # As FID/KID says it: a one-way model's other direction is no fault of the settings.
            log.info("ShapesTruthCallback: not scoring %s: %s", direction, reason)
        self.directions = list(translated)

    def _disable(self, reason: str, applies: bool = True) -> None:
        """Off, with the reason: a warning where the scores would apply but the settings prevent
        them; only a debug line where they do not apply (other data, a noise model), which the
        default callbacks meet on nearly every run, so it would only crowd the start's log."""
        self.enabled = False
        log.log(logging.WARNING if applies else logging.DEBUG, "ShapesTruthCallback %s: %s.",
                "disabled" if applies else "off", reason)

    # -- scoring -----------------------------------------------------------------------------

    def _score_direction(self, trainer, pl_module, direction: str) -> dict[str, float]:
        """Means over all ranks' pairs of the model's scores and of the identity baseline's
        (computed the first time only: the inputs do not change)."""
        source_key, target_key = DIRECTION_KEYS[direction]
        device = pl_module.device
        scorer = ShapesTruthScorer().to(device)
        identity = None if direction in self._identity else ShapesTruthScorer().to(device)
        start = self.evaluation_block(trainer).start
        for batch in self.evaluation_loader(trainer):
            source, target = batch[source_key].to(device), batch[target_key].to(device)
            backgrounds = self._backgrounds[start:start + source.size(0)].to(device)
            start += source.size(0)
            fake = pl_module.translate(source, direction)
            scorer.update(fake, target, backgrounds)
            if identity is not None:
                identity.update(source, target, backgrounds)
        results = {k: float(v) for k, v in scorer.compute().items()}
        if identity is not None:
            self._identity[direction] = {k: float(v) for k, v in identity.compute().items()}
        results.update({f"identity_{k}": v for k, v in self._identity[direction].items()})
        return results

    def scores(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """`truth/<direction>/<score>` of every scored direction (a collective call under DDP), and
        `truth/iou`, the directions' mean IoU: a search's objective for a model that translates
        both ways (the hparams_search configs), rather than half of it."""
        metrics = {}
        for direction in self.directions:
            scores = self._score_direction(trainer, pl_module, direction)
            metrics.update({f"truth/{direction}/{k}": v for k, v in scores.items()})
        if self.directions:
            metrics["truth/iou"] = sum(metrics[f"truth/{d}/iou"] for d in self.directions) / len(self.directions)
        return metrics
