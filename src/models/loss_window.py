"""The losses logged over a window of iterations (`AdversarialModel.log_losses`)."""
from dataclasses import dataclass, field

import torch


@dataclass
class LossWindow:
    """The sums of the losses `names` (in order) over the iterations since the last logged one,
    kept on the losses' device: adding costs no wait for the GPU. With `skip_non_finite` (fp16
    loss scaling, where an overflowing loss only skips its step, now and then) a loss's inf or
    NaN values are left out of its mean instead of making the whole window's inf."""
    names: list[str]
    sums: torch.Tensor
    skip_non_finite: bool = False
    counts: torch.Tensor = field(init=False)
    iterations: int = 0

    def __post_init__(self) -> None:
        self.counts = torch.zeros_like(self.sums)

    def add(self, values: torch.Tensor) -> None:
        if self.skip_non_finite:
            finite = torch.isfinite(values)
            self.sums += torch.where(finite, values, 0.0)
            self.counts += finite
        else:
            self.sums += values
            self.counts += 1
        self.iterations += 1

    def mean(self) -> torch.Tensor:
        """Per loss; NaN for one whose every value was left out."""
        return self.sums / self.counts
