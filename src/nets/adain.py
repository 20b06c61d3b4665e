"""Adaptive instance normalisation (Huang & Belongie 2017) with StyleGAN's learned affine map A:
each channel of each image is normalised, then scaled and shifted by numbers computed from a
style vector w, (y_s, y_b) = A(w), the scale's bias starting at 1 so a fresh layer passes its
normalised input through."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.nets.progan import EqualizedLinear


class AdaIN(nn.Module):
    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.scale = EqualizedLinear(style_dim, channels, gain=1.0, bias_init=1.0)
        self.shift = EqualizedLinear(style_dim, channels, gain=1.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = F.instance_norm(x, eps=1e-8)
        return self.scale(w)[:, :, None, None] * x + self.shift(w)[:, :, None, None]
