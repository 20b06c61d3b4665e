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
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.metrics.inception_score import InceptionScorer   # torchmetrics' IS, fed the classifier's logits

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
    """The fixed classifier trained on (images (N, C, H, W) in [-1, 1], labels (N,)); in eval mode."""
    if num_classes < 2:
        raise ValueError(f"A classifier score needs at least 2 classes, the data has {num_classes}")
    inputs, targets = classifier_input(images), labels.long()
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        net = build_classifier(inputs.size(1), num_classes)
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(epochs):
            for index in torch.randperm(len(inputs)).split(batch_size):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(net(inputs[index]), targets[index]).backward()
                optimizer.step()
    return net.eval()


@torch.no_grad()
def classifier_logits(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return net(classifier_input(images.cpu()))


class ClassifierScorer:
    """The trained classifier's scores, accumulated batch by batch: `update_real` with the
    reference images and their labels, `update_fake` with samples (and, for a conditional model,
    the classes they were drawn for), then `compute()`."""

    def __init__(self, net: nn.Module, num_classes: int, splits: int = 10, seed: int = 0):
        self.net, self.num_classes = net, num_classes
        self.inception_score = {kind: InceptionScorer(num_classes, splits=splits, seed=seed) for kind in ("real", "fake")}
        self.correct = {"real": 0, "fake": 0}
        self.seen = {"real": 0, "fake": 0}

    def _count(self, kind: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.correct[kind] += int((logits.argmax(1) == labels.cpu().long()).sum())
        self.seen[kind] += len(labels)

    def update_real(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        logits = classifier_logits(self.net, images)
        self.inception_score["real"].update(logits)
        self._count("real", logits, labels)

    def update_fake(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        logits = classifier_logits(self.net, images)
        self.inception_score["fake"].update(logits)
        if labels is not None:
            self._count("fake", logits, labels)

    def compute(self) -> dict[str, float]:
        scores = {f"cls_{key}": value for key, value in self.inception_score["fake"].compute().items()}
        scores["cls_is_real"] = self.inception_score["real"].compute()["is"]
        scores.update({f"cls_acc_{kind}": self.correct[kind] / self.seen[kind] for kind in ("real", "fake")
                       if self.seen[kind]})
        return scores
