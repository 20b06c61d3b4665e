"""The losses logged over a window of iterations (`AdversarialModel.log_losses`)."""
from dataclasses import dataclass

import torch


@dataclass
class LossWindow:
    """The sums of the losses `names` (in order) over the iterations since the last logged one,
    kept on the losses' device: adding costs no wait for the GPU."""
    names: list[str]
    sums: torch.Tensor
    count: int = 0

    def add(self, values: torch.Tensor) -> None:
        self.sums += values
        self.count += 1

    def mean(self) -> torch.Tensor:
        return self.sums / self.count
