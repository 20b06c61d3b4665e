"""The Cityscapes-table scores of label maps, logged during training (eval.py's, see
src/utils/label_evaluation.py): on data with colour label maps (`data.label_palette`), each
direction into the label domain logs `segmentation/<direction>/label_{pixel_acc,class_acc,class_iou}`
of its generated label maps (paired data), and, given `segmenter_path`, each direction out of it
logs the FCN-score of its generated photos, `segmentation/<direction>/fcn_*` (the real photos'
`real_fcn_*` are scored once, at the first evaluation: they do not change). The names after the
direction are eval.py's, so a run's curves and its checkpoint's evaluation compare key by key.

Schedule, evaluation set, DDP sharding and RNG isolation are PeriodicEvaluation's; the
confusion matrices are torchmetrics states summed across ranks, so every rank logs the scores
of the whole evaluation set.
"""
from __future__ import annotations

import logging

import pytorch_lightning as pl

from src.callbacks.periodic_evaluation import PeriodicEvaluation
from src.metrics.segmenter import Segmenter
from src.utils.directions import DIRECTION_KEYS, domain_folders, translated_directions
from src.utils.label_evaluation import FcnScores, check_segmenter_size, label_scores_for, segmenter_for

log = logging.getLogger(__name__)


class LabelScoresCallback(PeriodicEvaluation):
    min_images = 1
    config_key = "callbacks.label_scores"
    metric_prefix = "segmentation/"

    def __init__(self, every_n_iters: int = 5000, max_images: int | None = None, batch_size: int | None = None,
                 segmenter_path: str | None = None, segmenter_size: list[int] | None = None, seed: int = 0):
        super().__init__(every_n_iters=every_n_iters, max_images=max_images, batch_size=batch_size, seed=seed)
        self.segmenter_path = segmenter_path
        self.segmenter_size = segmenter_size
        check_segmenter_size(segmenter_size, f"{self.config_key}.segmenter_size")
        self._segmenter: Segmenter | None = None
        self._real: dict[str, dict[str, float]] = {}   # real photos' FCN-scores, by direction
        self._explained: set[str] = set()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._real, self._explained = {}, set()   # a new fit may bring other data
        datamodule = trainer.datamodule
        if getattr(datamodule, "label_palette", None) is None:
            # Most data has no label maps: not worth a line in every run's log.
            log.debug("LabelScoresCallback off: the data has no colour label maps (data.label_palette)")
            self.enabled = False
            return
        if not callable(getattr(pl_module, "translate", None)):
            self.enabled = False
            return
        super().setup(trainer, pl_module, stage)
        # Loaded here so a wrong file stops the run at its start, not at the first evaluation.
        self._segmenter = segmenter_for(datamodule, self.segmenter_path, self.segmenter_size, "cpu",
                                        key_prefix=f"{self.config_key}.")

    def scores(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """`segmentation/<direction>/<score>` of every scored direction (a collective call under DDP)."""
        datamodule, device = trainer.datamodule, pl_module.device
        if self._segmenter is not None:
            self._segmenter.to(device)
        metrics = {}
        for direction in translated_directions(pl_module)[0]:
            scores = label_scores_for(datamodule, *domain_folders(datamodule, direction), self._segmenter, device,
                                      real_photos=direction not in self._real, explain=direction not in self._explained,
                                      key_prefix=f"{self.config_key}.")
            self._explained.add(direction)   # why a direction is not scored, said at the first evaluation only
            if scores is None:
                continue
            source_key, target_key = DIRECTION_KEYS[direction]
            # Each source image once, as eval.py scores them: an unpaired test split cycles its
            # smaller domain. Where the scores pair source and target the items are real pairs,
            # whose domains have one count, so nothing is cut there.
            for batch in self.distinct_batches(trainer):
                if not len(batch[source_key]):
                    continue   # past the source domain's distinct images
                source, target = batch[source_key].to(device), batch[target_key].to(device)
                scores.update(source, target, pl_module.translate(source, direction))
            results = scores.compute()
            if isinstance(scores, FcnScores):
                real = {k: v for k, v in results.items() if k.startswith("real_")}
                self._real.setdefault(direction, real)
                results.update(self._real[direction])
            metrics.update({f"segmentation/{direction}/{k}": v for k, v in results.items()})
        if self._segmenter is not None:   # its 134M weights leave the device between evaluations
            self._segmenter.to("cpu")
        return metrics
