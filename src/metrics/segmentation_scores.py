"""Semantic segmentation scores of the pix2pix and CycleGAN papers' Cityscapes tables: per-pixel
accuracy, per-class accuracy and class IoU, from one confusion matrix over the whole test set
(the reference evaluation sums one histogram over all images, not per-image means).

The scores follow the reference evaluation (junyanz's scripts/eval_cityscapes), with one
difference where a class is missing: the reference divides by (count + 1e-12), so a class with
no ground-truth pixel counts 0 in the per-class accuracy (and in the IoU when it is not predicted
either), lowering the means of a small test subset. Here such a class is left out of the mean:
per-class accuracy averages the classes present in the ground truth, IoU the classes present in
the ground truth or the prediction. On the full Cityscapes val set every class is present and
the two agree.
"""
from __future__ import annotations

from typing import Any

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from src.metrics.label_maps import IGNORE
from src.utils.accelerator import float64_device


def scores_of_confusion(confusion: torch.Tensor) -> dict[str, float]:
    """The three scores of a (C, C) confusion matrix, rows the true class, columns the predicted;
    a column beyond the last row (C + 1 columns) counts predictions of no class, always wrong."""
    confusion = confusion.to(float64_device(confusion.device)).double()   # (Apple's MPS has no float64)
    classes = confusion.size(0)
    hits = confusion[:, :classes].diagonal()
    truth, predicted = confusion.sum(1), confusion[:, :classes].sum(0)
    if truth.sum() == 0:
        raise ValueError("no scored pixel: every ground-truth pixel is an ignored label")
    union = truth + predicted - hits
    return {"pixel_acc": float(hits.sum() / truth.sum()),
            "class_acc": float((hits[truth > 0] / truth[truth > 0]).mean()),
            "class_iou": float((hits[union > 0] / union[union > 0]).mean())}


class SegmentationScorer(MulticlassConfusionMatrix):
    """Sums the confusion matrix of every `update(predicted, truth)` ((N, H, W) class maps;
    IGNORE pixels of `truth` are left out, an IGNORE prediction on a scored pixel is a miss);
    `compute()` gives the scores, summed across DDP ranks like any torchmetrics state."""

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        # One more class than scored: the column of "no class" predictions (an ignored label's
        # colour in a generated label map), so they count as misses instead of being dropped.
        super().__init__(num_classes + 1, ignore_index=IGNORE, validate_args=False, **kwargs)
        self.scored_classes = num_classes

    def update(self, predicted: torch.Tensor, truth: torch.Tensor) -> None:
        if predicted.shape != truth.shape:
            raise ValueError(f"predicted classes {tuple(predicted.shape)} and ground truth {tuple(truth.shape)} "
                             "must have the same shape")
        none = self.scored_classes
        super().update(predicted.masked_fill((predicted < 0) | (predicted >= none), none), truth)

    def compute(self) -> dict[str, float]:
        return scores_of_confusion(super().compute()[: self.scored_classes])
