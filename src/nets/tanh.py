"""The generators' output tanh, the same on every call on a CPU.

torch's CPU tanh runs through MKL's vector math library, whose float32 result for the same input
can differ in the last bit from one call to the next when torch runs on two or more threads
(measured with torch 2.13: `torch.tanh` of one (1, 3, 32, 32) tensor, 50 calls, gave two
different results in some processes). A seeded run then drifted from its repetition, or from
its resume, by ~1e-8 after a few iterations, in about one process of twenty. On a CPU the
outputs here are 2 sigmoid(2x) - 1, through torch's own vectorised sigmoid, which gave one
result in every process: the same function, to ~2e-7 (its gradient to ~3e-7). Elsewhere (GPUs,
other dtypes, exported or compiled graphs, which hold torch's own operators) torch's tanh.
"""
import torch
import torch.nn as nn

from src.nets.layer_rewrite import exporting_or_compiling


def tanh(x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu" and x.dtype == torch.float32 and not exporting_or_compiling():
        return 2 * torch.sigmoid(2 * x) - 1
    return torch.tanh(x)


class Tanh(nn.Tanh):
    """nn.Tanh computed by `tanh` (no parameters: checkpoints are unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tanh(x)
