"""Scores of generated images by a classifier trained on the real labelled images of the same
data, the measures the MNIST-scale GAN literature reads beside FID:

- the classifier's Inception Score of the samples (`cls_is`): exp(E KL(p(y|x) || p(y))) with
  p(y|x) from a classifier that knows the data's classes. It is high when every sample is
  clearly one class and the classes are all present (at most the number of classes), the "IS
  with a trained LeNet" of MNIST papers. On the embedded shapes it sees what the download-free
  random-CNN features do not: whether a sample is a disc or a triangle at all.
- for a conditional model, the accuracy on its samples against the classes they were drawn for
  (`cls_acc_fake`; "GAN-test", Shmelkov et al. 2018);
- the classifier's accuracy on the real reference images (`cls_acc_real`) and its Inception
  Score of them (`cls_is_real`): the ceilings the other two are read against, and the check
  that the classifier learned the classes.

The classifier is a small fixed recipe (three strided convolutions with batch norm, global
average pooling, a linear layer; Adam for `epochs` epochs), trained from a seeded initialisation under a forked RNG
so that scoring changes no other random draw. Images larger than 64 px are pooled down to 64 px
first: the classes of the datasets this serves are visible there, and the cost stays seconds.
It needs data: on the shapes, 2000 training images make it right on 99-100% of the test
images, 300 on only 75% (random colours, sizes and places), which `cls_acc_real` shows.

A training run's checkpoints keep its classifier (`ClassifierScorer.record`), with the settings
it was trained under: a resume and eval.py take it back where those are the same, so a run's
scores are of one classifier from its first evaluation to its last, and the minutes of decoding
and training it at 64 px are spent once per run, not at every start.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from src.metrics.inception_score import InceptionScorer   # torchmetrics' IS, fed the classifier's logits
from src.utils.config_checks import require_int

log = logging.getLogger(__name__)

MAX_SIDE = 64
WIDTHS = (32, 64, 128)


def classifier_input(images: torch.Tensor) -> torch.Tensor:
    """Images as the classifier sees them: at most MAX_SIDE px a side."""
    height, width = images.shape[-2:]
    if max(height, width) > MAX_SIDE:
        images = F.adaptive_avg_pool2d(images, (min(height, MAX_SIDE), min(width, MAX_SIDE)))
    return images.float()


def build_classifier(channels: int, num_classes: int) -> nn.Module:
    layers, width_in = [], channels
    for width in WIDTHS:
        layers += [nn.Conv2d(width_in, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2)]
        width_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width_in, num_classes))


def train_image_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int = 10,
                           batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """The fixed classifier trained on (images (N, C, H, W) in [-1, 1], labels (N,)); in eval mode.
    On the CPU, whatever the run's device: a GPU's kernels are not bit-repeatable (and under
    trainer.deterministic, adaptive pooling's backward refuses to run there), and runs of one
    seed must score with one classifier."""
    if num_classes < 2:
        raise ValueError(f"A classifier score needs at least 2 classes, the data has {num_classes}")
    inputs, targets = classifier_input(images), labels.long()
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.default_generator.manual_seed(seed)   # not torch.manual_seed: it reseeds the GPUs too
        net = build_classifier(inputs.size(1), num_classes)
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(epochs):
            for index in torch.randperm(len(inputs)).split(batch_size):
                if len(index) < 2:   # a last batch of one: its batch norms cannot train on one small image
                    continue
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(net(inputs[index]), targets[index]).backward()
                optimizer.step()
    return net.eval()


@torch.no_grad()
def classifier_logits(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return net(classifier_input(images.to(next(net.parameters()).device)))


def check_classifier_settings(datamodule, max_images: int, epochs: int, key: str = "classifier_max_images") -> bool:
    """Whether the data has a classifier to train (two classes or more); a ValueError naming
    `key` (its `epochs` beside it) for settings it could not be trained with."""
    num_classes = getattr(datamodule, "num_classes", 0)
    if num_classes < 2:
        return False
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < num_classes:
        raise ValueError(f"{key}={max_images!r} must be an integer of at least the {num_classes} classes")
    # (0 epochs would score the samples with an untrained network)
    require_int(key.replace("max_images", "epochs"), epochs, why=" (the classifier's training epochs)")
    return True


def classifier_settings(datamodule, max_images: int, epochs: int) -> dict:
    """What a classifier of the data was trained under, as its record keeps it: one trained
    under other settings gives other scores."""
    return {"data": str(datamodule.name), "classes": list(datamodule.class_names), "channels": datamodule.input_nc,
            "max_images": max_images, "epochs": epochs}


def classifier_of_the_data(datamodule, max_images: int = 10000, epochs: int = 10, splits: int = 10,
                           conditional: bool = False, key: str = "classifier_max_images",
                           trained: bool = True, recorded: dict | None = None) -> ClassifierScorer | None:
    """A scorer with the classifier of `datamodule`'s classes, trained on up to `max_images` of
    its training images (a seeded pick); None where the data has no two classes to
    tell apart (unlabelled, or one class). `key` names the setting in errors. `recorded`: a
    checkpoint's classifier (`ClassifierScorer.record`), taken instead where it was trained under
    these settings. `trained=False`: the classifier untrained, for a DDP rank that takes rank
    zero's weights (training it on every rank decoded the images and trained the net once per
    rank, on the node's shared CPUs)."""
    if not check_classifier_settings(datamodule, max_images, epochs, key):
        return None
    num_classes = datamodule.num_classes
    settings = classifier_settings(datamodule, max_images, epochs)
    earlier = (recorded or {}).get("settings")
    if earlier == settings:
        net = untrained_classifier(datamodule.input_nc, num_classes)
        net.load_state_dict(recorded["state_dict"])
        log.info("Classifier of the %d classes: the one the checkpoint's run trained (classifier score)", num_classes)
        return ClassifierScorer(net, num_classes, splits=splits, conditional=conditional, settings=settings)
    if not trained:
        return ClassifierScorer(untrained_classifier(datamodule.input_nc, num_classes), num_classes, splits=splits,
                                conditional=conditional, settings=settings)
    if recorded is not None:
        earlier = earlier if isinstance(earlier, dict) else {}
        changed = ", ".join(f"{name} {earlier.get(name)!r} -> {value!r}"
                            for name, value in settings.items() if earlier.get(name) != value)
        log.warning("The checkpoint's classifier of the data's classes was trained under other settings (%s): "
                    "a new one is trained, whose scores do not compare with those of the checkpoint's run", changed)
    train = datamodule.dataset("train", train=False)
    picks = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:max_images].tolist()
    # Each image is brought to the classifier's size as it is read, and the full-size one dropped:
    # 10,000 images of 256 px held at once would take 8 GB (31 GB at 512 px); and they are
    # written into one tensor, not gathered and joined, which held them twice.
    inputs, labels = None, torch.empty(len(picks), dtype=torch.long)
    for position, index in enumerate(picks):
        item = train[index]
        image = classifier_input(item["A"][None])[0]
        if inputs is None:
            inputs = torch.empty((len(picks), *image.shape))
        inputs[position], labels[position] = image, int(item["label"])
    net = train_image_classifier(inputs, labels, num_classes, epochs=epochs)
    log.info("Classifier of the %d classes trained on %d training images (classifier score)", num_classes, len(picks))
    return ClassifierScorer(net, num_classes, splits=splits, conditional=conditional, settings=settings)


def untrained_classifier(channels: int, num_classes: int) -> nn.Module:
    """The classifier's network, for weights taken from elsewhere (its initial draws leave the
    caller's random stream alone)."""
    with torch.random.fork_rng(devices=[]):
        return build_classifier(channels, num_classes).eval()


class ClassifierScorer(nn.Module):
    """The trained classifier's scores, accumulated batch by batch: `update_real` with the
    reference images and their labels, `update_fake` with samples (and, for a `conditional`
    model, the classes they were drawn for), then `compute()`. Its states are torchmetrics
    metrics, so under DDP every rank gets the scores of all ranks' images (move it to the
    module's device first)."""

    KINDS = ("real", "fake")

    def __init__(self, net: nn.Module, num_classes: int, splits: int = 10, seed: int = 0, conditional: bool = False,
                 settings: dict | None = None):
        super().__init__()
        self.net, self.num_classes, self.conditional = net, num_classes, conditional
        self.settings = settings   # what the net was trained under (classifier_settings)
        self.inception_score = nn.ModuleDict({kind: InceptionScorer(num_classes, splits=splits, seed=seed)
                                              for kind in self.KINDS})
        self.accuracy = nn.ModuleDict({kind: MulticlassAccuracy(num_classes, average="micro") for kind in self.KINDS})

    def _update(self, kind: str, images: torch.Tensor, labels: torch.Tensor | None) -> None:
        logits = classifier_logits(self.net, images)
        self.inception_score[kind].update(logits)
        if labels is not None:
            self.accuracy[kind].update(logits, labels.to(logits.device).long())

    def record(self) -> dict:
        """The classifier as a checkpoint keeps it: its weights (on the CPU) and settings."""
        return {"settings": self.settings, "state_dict": {name: value.detach().cpu()
                                                          for name, value in self.net.state_dict().items()}}

    def update_real(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self._update("real", images, labels)

    def update_fake(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self._update("fake", images, labels if self.conditional else None)

    def compute(self) -> dict[str, float]:
        device = next(self.net.parameters()).device
        fake_is = self.inception_score["fake"].compute(device)
        scores = {"cls_is": fake_is["is"], "cls_is_std": fake_is["is_std"],
                  "cls_is_real": self.inception_score["real"].compute(device)["is"],
                  "cls_acc_real": float(self.accuracy["real"].compute())}
        if self.conditional:
            scores["cls_acc_fake"] = float(self.accuracy["fake"].compute())
        return scores

    def reset(self) -> None:
        for metric in (*self.inception_score.values(), *self.accuracy.values()):
            metric.reset()
