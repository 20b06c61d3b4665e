"""Eval's scores of the papers' Cityscapes tables, for data with one domain of colour-coded
semantic label maps (`data.label_palette`, `data.label_domain`; the cityscapes config sets them):

* photo -> labels (CycleGAN's Table 3, pix2pix's photo->labels): the generated label map's
  colours as classes (nearest palette colour) against the real label map's, where test items
  are pairs (paired data, or unpaired folders whose names match: CycleGAN's copies).
  Keys `label_pixel_acc`, `label_class_acc`, `label_class_iou`.
* labels -> photo, the FCN-score (pix2pix's Table 1-2, CycleGAN's Table 2): a segmentation net
  (eval's `segmenter_path`) segments the generated photo, scored against the classes of the label
  map it was generated from. Keys `fcn_pixel_acc`, ...; where test items are pairs, also the
  net's scores on the real photos, `real_fcn_*`: the papers' "ground truth" row, the ceiling of
  the others.

All scores come from a confusion matrix summed over the test set (src/metrics/segmentation_scores.py)
at the size of the label maps as evaluation loads them (the data's crop size). The papers' FCN-
score compares at the official gtFine labels' 2048x1024 instead; see the README for how close
the colour maps come and how to feed the net at its own size (`segmenter_size`).
"""
from __future__ import annotations

import logging

import torch
from omegaconf import OmegaConf

from src.metrics.label_maps import Palette, colours_to_classes
from src.metrics.segmentation_scores import SegmentationScorer
from src.metrics.segmenter import Segmenter
from src.utils.config_checks import is_int

log = logging.getLogger(__name__)


class GeneratedLabelScores:
    """photo -> labels: the classes of the generated label maps against the real ones."""

    def __init__(self, palette: Palette, device):
        self.palette = palette
        self.scorer = SegmentationScorer(palette.num_classes).to(device)

    def update(self, source: torch.Tensor, target: torch.Tensor, fake: torch.Tensor) -> None:
        self.scorer.update(colours_to_classes(fake, self.palette), colours_to_classes(target, self.palette))

    def compute(self) -> dict[str, float]:
        return {f"label_{name}": value for name, value in self.scorer.compute().items()}


class FcnScores:
    """labels -> photo: the segmenter's classes of the generated photos (and, given `real`, of
    the real ones) against the classes of the source label maps."""

    def __init__(self, palette: Palette, segmenter: Segmenter, real: bool, device):
        self.palette, self.segmenter = palette, segmenter
        self.scorers = {"fcn": SegmentationScorer(palette.num_classes).to(device)}
        if real:
            self.scorers["real_fcn"] = SegmentationScorer(palette.num_classes).to(device)

    def update(self, source: torch.Tensor, target: torch.Tensor, fake: torch.Tensor) -> None:
        truth = colours_to_classes(source, self.palette)
        photos = {"fcn": fake, "real_fcn": target}
        for name, scorer in self.scorers.items():
            scorer.update(self.segmenter.classes(photos[name], tuple(truth.shape[-2:])), truth)

    def compute(self) -> dict[str, float]:
        return {f"{prefix}_{name}": value for prefix, scorer in self.scorers.items()
                for name, value in scorer.compute().items()}


def label_scores_for(datamodule, source: str, target: str, segmenter: Segmenter | None, device,
                     real_photos: bool = True, explain: bool = True, key_prefix: str = ""):
    """The label-map scores of translating dataset domain `source` into `target`, or None
    (with the reason logged unless `explain=False`) where the data has no label maps or the
    direction cannot be scored; `real_photos=False` leaves out the real photos' FCN-score
    (known from an earlier call); `key_prefix`: where the segmenter's setting lives in the config."""
    palette, labels = getattr(datamodule, "label_palette", None), getattr(datamodule, "label_domain", None)
    if palette is None or labels not in (source, target):
        return None
    say = log.info if explain else log.debug
    pairs = datamodule.test_items_are_pairs()
    if target == labels:
        if not pairs:
            say("No photo->labels scores for %s->%s: the test images are not pairs (their names do not match "
                "one to one), so no real label map goes with a translation", source, target)
            return None
        return GeneratedLabelScores(palette, device)
    if segmenter is None:
        say("No FCN-score for %s->%s: %ssegmenter_path=/path/to/segmenter.pt2 (a segmentation net of the "
            "label classes, src/metrics/segmenter.py) scores the generated photos", source, target, key_prefix)
        return None
    return FcnScores(palette, segmenter, real=real_photos and pairs, device=device)


def check_segmenter_size(size, key: str) -> None:
    """ValueError naming `key` unless `size` is null or [height, width] in pixels."""
    if size is None:
        return
    size = OmegaConf.to_container(size) if OmegaConf.is_config(size) else size
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(is_int(v) and v > 0 for v in size)):
        raise ValueError(f"{key}={size!r} must be [height, width] in pixels (the size the segmenter was exported "
                         "for), or null: the label maps' size")


def segmenter_for(datamodule, path, size, device, key_prefix: str = "") -> Segmenter | None:
    """The FCN-score's segmentation net of the settings `<key_prefix>segmenter_path` and
    `<key_prefix>segmenter_size` (checked even without a path), or None without a path."""
    check_segmenter_size(size, f"{key_prefix}segmenter_size")
    if path is None:
        return None
    if getattr(datamodule, "label_palette", None) is None:
        # `++`: eval.py's config holds no data node of its own to override (data: null, the run's)
        raise ValueError(f"{key_prefix}segmenter_path={path} scores generated photos against label maps, but data "
                         f"{datamodule.name} has none: set their palette and domain (++data.label_palette=cityscapes "
                         f"++data.label_domain=B, as conf/data/cityscapes.yaml does), or leave "
                         f"{key_prefix}segmenter_path unset")
    return Segmenter(path, datamodule.label_palette.num_classes, size, device, key=f"{key_prefix}segmenter_path")
