"""The Inception Score of generated images (Salimans et al. 2016), the headline metric of the
WGAN-GP and ProGAN papers' CIFAR-10 tables: exp(E_x KL(p(y|x) || p(y))), its mean and standard
deviation over `splits` (10) parts of the samples, as torch-fidelity computes it (the 1008
unbiased Inception logits; parts that differ by at most one sample; the population standard
deviation of the parts' scores, as the original TF code's np.std). torchmetrics'
`InceptionScore` keeps the samples; its own split (`chunk`: parts of ceil(N / splits), so 19
samples in 6 parts make five, the last of three) and its sample standard deviation are not used.

`InceptionScorer` hands torchmetrics logits computed beforehand (an identity "feature
network"): FidKidScorer derives them from the features it already has for FID (Inception's
unbiased logits are its pool3 features times the last layer's weights), so the samples go
through the network once. It also fixes two things for DDP and reproducibility: the logits are gathered concatenated in rank order (torchmetrics gathers its
list state element by element) and the shuffle before splitting comes from a fixed seed, so
two ranks give the single-process value and a run's score does not depend on the training RNG.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
from torchmetrics.image.inception import InceptionScore
from torchmetrics.utilities.data import dim_zero_cat

from src.metrics.features import PrecomputedFeatures


class SeededInceptionScore(InceptionScore):
    """torchmetrics' Inception Score state, its logits gathered concatenated, scored as
    torch-fidelity does with the split shuffle drawn from `seed`; `splits` is capped so each
    part holds at least two images."""

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed, self.max_splits = seed, self.splits
        self.add_state("features", [], dist_reduce_fx="cat")

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        logits = dim_zero_cat(self.features)   # after the DDP sync: every rank's samples
        count = len(logits)
        if count < 2:
            raise RuntimeError(f"The Inception Score needs at least 2 generated images, got {count}")
        self.splits = max(1, min(self.max_splits, count // 2))
        order = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed))
        logits = logits[order.to(logits.device)]
        probabilities, log_probabilities = logits.softmax(1), logits.log_softmax(1)
        scores = []
        for part in range(self.splits):
            rows = slice(part * count // self.splits, (part + 1) * count // self.splits)
            p, log_p = probabilities[rows], log_probabilities[rows]
            # log of the part's marginal from the log-probabilities: a class that every sample's
            # softmax rounds to 0 (logit gaps over ~745 in float64, a confident classifier) gives
            # a finite log instead of log(0), whose 0 * -inf made the score NaN.
            log_marginal = log_p.logsumexp(0, keepdim=True) - math.log(len(log_p))
            scores.append((p * (log_p - log_marginal)).sum(1).mean().exp())
        scores = torch.stack(scores)
        return scores.mean(), scores.std(correction=0)


class InceptionScorer(nn.Module):
    """`update(logits)` once per batch of generated images' class logits (FidKidScorer derives
    them from the features it computed anyway), then `compute()`: ``{"is", "is_std"}`` (the std
    is 0 when the samples make one split). Under DDP every rank calls both; `compute()` syncs."""

    def __init__(self, num_classes: int, splits: int = 10, seed: int = 0):
        super().__init__()
        if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
            raise ValueError(f"inception_score_splits={splits!r} must be an integer >= 1 (callbacks.fid_kid."
                             "inception_score_splits in training, inception_score_splits in eval.py)")
        self.num_classes = int(num_classes)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            self.metric = SeededInceptionScore(feature=PrecomputedFeatures(self.num_classes), splits=splits, seed=seed)

    def update(self, logits: torch.Tensor) -> None:
        self.metric.update(logits.double())

    def compute(self, device: torch.device | str = "cpu") -> dict[str, float]:
        if not self.metric.features:   # a rank with no samples still joins the gather, with the right shape
            self.metric.features.append(torch.empty(0, self.num_classes, dtype=torch.float64, device=device))
        mean, std = self.metric.compute()
        return {"is": float(mean), "is_std": 0.0 if self.metric.splits == 1 else float(std)}

    def reset(self) -> None:
        self.metric.reset()
