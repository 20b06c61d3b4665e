"""Recurrent generator and discriminator over sequences (RGAN / RCGAN, Esteban et al. 2017).

Sequences are (B, T, C) with values in [-1, 1]. The generator reads a fresh noise vector at
every time step (the latent is (B, T, latent_dim)) and emits one C-vector per step through a
linear layer and tanh; the discriminator emits one real/fake logit per time step, (B, T), so the
adversarial loss is the per-step cross-entropy averaged over steps. When conditional
(`num_classes` > 0, RCGAN) the one-hot condition is concatenated to every step's input of both.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from src.nets.noise_nets import append_condition
from src.nets.tanh import tanh

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


def recurrent_layers(cell: str, input_size: int, hidden: int, num_layers: int) -> nn.RNNBase:
    if cell not in CELLS:
        raise ValueError(f"model.generator.cell / model.discriminator.cell={cell!r} must be one of {list(CELLS)}")
    if hidden < 1 or num_layers < 1:
        raise ValueError(f"hidden={hidden}, num_layers={num_layers}: a recurrent network needs both >= 1")
    return CELLS[cell](input_size, hidden, num_layers=num_layers, batch_first=True)


def run_recurrent(rnn: nn.RNNBase, x: torch.Tensor) -> torch.Tensor:
    """The layer's outputs for every step. On the CPU under autocast it runs in fp32: oneDNN has
    no bf16 LSTM on CPUs without AVX-512 BF16 and fails there ("could not create a primitive
    descriptor for the LSTM forward propagation primitive"), and these layers are small.
    On a GPU, an input that takes gradients runs on torch's own CUDA kernels rather than cuDNN's:
    a critic's gradient penalty (WGAN-GP, R1) differentiates its input gradient, and cuDNN's RNNs
    have no double backward ("Double backwards is not supported for CuDNN RNNs")."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return rnn(x.float())[0]
    if x.is_cuda and x.requires_grad and torch.is_grad_enabled():
        with torch.backends.cudnn.flags(enabled=False):
            return rnn(x)[0]
    return rnn(x)[0]


class RecurrentGenerator(nn.Module):
    def __init__(self, latent_dim: int = 5, channels: int = 1, seq_len: int = 30, hidden: int = 100,
                 num_layers: int = 1, cell: str = "lstm", num_classes: int = 0):
        super().__init__()
        self.latent_dim, self.channels, self.seq_len, self.num_classes = latent_dim, channels, seq_len, num_classes
        self.rnn = recurrent_layers(cell, latent_dim + num_classes, hidden, num_layers)
        self.out = nn.Linear(hidden, channels)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z: (B, T * latent_dim) or (B, T, latent_dim) noise -> (B, T, channels) in [-1, 1]."""
        z = z.view(z.size(0), self.seq_len, self.latent_dim)
        hidden = run_recurrent(self.rnn, append_condition(z, labels, self.num_classes, dim=2))
        return tanh(self.out(hidden))


class RecurrentDiscriminator(nn.Module):
    def __init__(self, channels: int = 1, hidden: int = 100, num_layers: int = 1, cell: str = "lstm",
                 num_classes: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.rnn = recurrent_layers(cell, channels + num_classes, hidden, num_layers)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, channels) -> (B, T) logits, one decision per time step."""
        hidden = run_recurrent(self.rnn, append_condition(x, labels, self.num_classes, dim=2))
        return self.out(hidden).squeeze(2)
