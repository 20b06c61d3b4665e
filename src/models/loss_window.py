"""The losses logged over a window of iterations (`AdversarialModel.log_losses`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossWindow:
    """The sums of the losses `names` (in order) over the iterations since the last logged one,
    kept on the losses' device: adding costs no wait for the GPU. Under fp16 loss scaling, where
    an overflowing loss only skips its step, now and then, a loss's inf or NaN values are left
    out of its mean (`counts`: the values each sum holds) instead of making the window's inf."""
    names: list[str]
    sums: torch.Tensor
    counts: torch.Tensor | None = None   # None: every iteration counts for every loss
    iterations: int = 0

    @classmethod
    def start(cls, names: list[str], values: torch.Tensor, skip_non_finite: bool = False) -> LossWindow:
        """A window holding this first iteration's `values`."""
        window = cls(names, torch.zeros_like(values), torch.zeros_like(values) if skip_non_finite else None)
        window.add(values)
        return window

    def add(self, values: torch.Tensor) -> None:
        if self.counts is None:
            self.sums += values
        else:
            finite = torch.isfinite(values)
            self.sums += torch.where(finite, values, 0.0)
            self.counts += finite
        self.iterations += 1

    def mean(self) -> torch.Tensor:
        """Per loss; NaN for one whose every value was left out."""
        return self.sums / (self.iterations if self.counts is None else self.counts)
