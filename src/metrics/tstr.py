"""Train on synthetic, test on real (TSTR; Esteban, Hyland & Rätsch 2017, the RCGAN paper's
evaluation of conditional series): a classifier of the condition is trained on generated
series with the labels they were generated for, and its accuracy is measured on the real test
series. Beside it, TRTR (trained on the real training series) is the ceiling it is read
against: TSTR near TRTR means the samples carry what tells the classes apart.

The classifier is a small fixed recipe, the same for both sides so that only the training
data differs: a two-layer MLP on the flattened series, full-batch Adam for `epochs` epochs,
from a seeded initialisation. (The paper used a random forest; any fixed classifier serves the
comparison.)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

HIDDEN = 64


def classifier_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                        num_classes: int, epochs: int = 200, lr: float = 1e-2, seed: int = 0) -> float:
    """Accuracy on (test_x, test_y) of the fixed classifier trained on (train_x, train_y);
    series are (N, T, C) and labels (N,) class indices."""
    generator = torch.Generator().manual_seed(seed)
    width = train_x[0].numel()
    # skip_init: nn.Linear's own initialisation would draw from the global RNG (training's)
    net = nn.Sequential(nn.utils.skip_init(nn.Linear, width, HIDDEN), nn.ReLU(),
                        nn.utils.skip_init(nn.Linear, HIDDEN, num_classes))
    with torch.no_grad():   # seeded from `seed` instead
        for layer in (net[0], net[2]):
            bound = layer.in_features ** -0.5
            layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * 2 * bound - bound)
            layer.bias.zero_()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    inputs, targets = train_x.flatten(1).float(), train_y.long()
    with torch.enable_grad():
        for _ in range(epochs):
            optimizer.zero_grad()
            F.cross_entropy(net(inputs), targets).backward()
            optimizer.step()
    with torch.no_grad():
        predicted = net(test_x.flatten(1).float()).argmax(1)
    return float((predicted == test_y.long()).float().mean())


def tstr_trtr(synthetic: tuple[torch.Tensor, torch.Tensor], real_train: tuple[torch.Tensor, torch.Tensor],
              real_test: tuple[torch.Tensor, torch.Tensor], num_classes: int, seed: int = 0) -> dict[str, float]:
    """{"tstr": accuracy trained on synthetic, "trtr": accuracy trained on real}, both on the
    real test series; each side (series, labels)."""
    return {"tstr": classifier_accuracy(*synthetic, *real_test, num_classes, seed=seed),
            "trtr": classifier_accuracy(*real_train, *real_test, num_classes, seed=seed)}
