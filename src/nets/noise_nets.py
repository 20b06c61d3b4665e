"""Generators from noise and their discriminators: the classic GAN family's networks.

Every generator maps `(z, labels)` to images in [-1, 1] (tanh), every discriminator maps
`(images, labels)` to one logit per image; `labels` is None unless `num_classes` > 0, in which
case the class is given as a one-hot vector (cGAN, Mirza & Osindero 2014): concatenated to the
generator's noise, and to the discriminator's input (as constant maps for a convolutional one).

- MLP (GAN, Goodfellow et al. 2014; cGAN): fully connected layers. The discriminator's units
  are maxout units (`maxout_pieces`, the papers' code: 5) or LeakyReLU(0.2) (0 pieces, the form
  later code settled on), with dropout on its input and hidden layers.
- DCGAN (Radford et al. 2016): transposed convs up from 4x4 in G, strided convs down to 4x4 in
  D, batch norm in both (not on D's input layer nor G's output), ReLU in G, LeakyReLU(0.2) in
  D, no pooling, no fully connected hidden layers.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.nets.norms import norm_layer, uses_bias
from src.nets.tanh import Tanh
from src.utils.config_checks import is_int

MLP_NORMS = ("batch", "none")


def one_hot(labels: torch.Tensor | None, num_classes: int, like: torch.Tensor) -> torch.Tensor | None:
    """Labels as one-hot rows in `like`'s dtype and device (None without classes)."""
    if num_classes == 0:
        return None
    if labels is None:
        raise ValueError(f"This network is conditional (num_classes={num_classes}) and needs the images' labels")
    return F.one_hot(labels.long(), num_classes).to(dtype=like.dtype, device=like.device)


def append_condition(x: torch.Tensor, labels: torch.Tensor | None, num_classes: int, dim: int = 1) -> torch.Tensor:
    """x with the labels' one-hot vectors appended along `dim`, repeated over every other axis
    but the batch: to noise rows (B, D), to image maps (B, C, H, W) as constant maps, to series
    (B, T, D) at every step (dim=2). x itself when the network is unconditional."""
    code = one_hot(labels, num_classes, x)
    if code is None:
        return x
    shape, size = [x.size(0)] + [1] * (x.dim() - 1), list(x.shape)
    shape[dim] = size[dim] = num_classes
    return torch.cat([x, code.view(shape).expand(size)], dim=dim)


def dcgan_levels(image_size: int, key: str) -> int:
    """Doublings from 4x4 to `image_size`: DCGAN nets need 4 * 2^k px, k >= 1."""
    levels = math.log2(image_size / 4) if isinstance(image_size, int) and image_size > 0 else -1
    if levels < 1 or levels != int(levels):
        raise ValueError(f"{key}={image_size!r}: a DCGAN network works on square images of 4 * 2^k pixels, "
                         "k >= 1 (8, 16, 32, 64, 128 ...); set data.crop_size (and data.size for the embedded "
                         "dataset) to one of them")
    return int(levels)


class DCGANGenerator(nn.Module):
    """z (+ one-hot label) as a 1x1 map -> 4x4 with ngf * 2^(k-1) channels -> doubling the size
    and halving the channels k times -> `output_nc` channels at 4 * 2^k px. 64 px: 512-256-128-64
    channels at ngf 64, the public code's (dcgan.torch) widths; the paper's LSUN generator
    (its Figure 1) is twice as wide, 1024-512-256-128, at ngf 128."""

    def __init__(self, latent_dim: int = 100, output_nc: int = 3, image_size: int = 64, ngf: int = 64,
                 num_classes: int = 0, norm: str = "batch"):
        super().__init__()
        levels = dcgan_levels(image_size, "model.image_size")
        self.latent_dim, self.output_nc, self.image_size, self.num_classes = latent_dim, output_nc, image_size, num_classes
        norm_fn, bias = norm_layer(norm), uses_bias(norm)
        channels = ngf * 2 ** (levels - 1)
        layers = [nn.ConvTranspose2d(latent_dim + num_classes, channels, 4, 1, 0, bias=bias), norm_fn(channels),
                  nn.ReLU(True)]
        for _ in range(levels - 1):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=bias), norm_fn(channels // 2),
                       nn.ReLU(True)]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, output_nc, 4, 2, 1), Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(append_condition(z, labels, self.num_classes)[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """Image (+ one-hot label maps) -> strided 4x4 convs halving the size down to 4x4 (ndf,
    2 ndf, ... channels; no norm on the first) -> a 4x4 conv to one logit.

    `features` is everything before that last conv (InfoGAN's Q head reads it too), flattened
    to `feature_dim` numbers per image."""

    def __init__(self, input_nc: int = 3, image_size: int = 64, ndf: int = 64, num_classes: int = 0,
                 norm: str = "batch"):
        super().__init__()
        levels = dcgan_levels(image_size, "model.image_size")
        self.num_classes = num_classes
        norm_fn, bias = norm_layer(norm), uses_bias(norm)
        layers = [nn.Conv2d(input_nc + num_classes, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        channels = ndf
        for _ in range(levels - 1):
            layers += [nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=bias), norm_fn(channels * 2),
                       nn.LeakyReLU(0.2, True)]
            channels *= 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 1, 4, 1, 0)
        self.feature_dim = channels * 4 * 4

    def features(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(append_condition(x, labels, self.num_classes)).flatten(1)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """One logit per image from `features`."""
        return self.head(features.view(features.size(0), -1, 4, 4)).flatten(1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(self.features(x, labels))


def check_mlp_norm(norm: str) -> None:
    if norm not in MLP_NORMS:
        raise ValueError(f"model.generator.norm={norm!r}: an MLP generator takes one of {MLP_NORMS}")


def check_hidden(hidden, key: str) -> list[int]:
    hidden = list(hidden)
    if not hidden or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ValueError(f"{key}={hidden!r} must be a non-empty list of positive layer widths")
    return hidden


class MLPGenerator(nn.Module):
    """z (+ one-hot label) -> fully connected ReLU layers of `hidden` widths -> tanh pixels."""

    def __init__(self, latent_dim: int = 100, output_nc: int = 1, image_size: int = 28,
                 hidden: list[int] = (256, 512, 1024), num_classes: int = 0, norm: str = "none"):
        super().__init__()
        check_mlp_norm(norm)
        self.latent_dim, self.output_nc, self.image_size, self.num_classes = latent_dim, output_nc, image_size, num_classes
        layers, width = [], latent_dim + num_classes
        for out in check_hidden(hidden, "model.generator.hidden"):
            layers += [nn.Linear(width, out, bias=norm != "batch")]
            layers += [nn.BatchNorm1d(out)] if norm == "batch" else []
            layers += [nn.ReLU(True)]
            width = out
        layers += [nn.Linear(width, output_nc * image_size * image_size), Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(append_condition(z, labels, self.num_classes)).view(
            z.size(0), self.output_nc, self.image_size, self.image_size)


class Maxout(nn.Module):
    """Maxout units (Goodfellow et al. 2013): each of `units` outputs is the largest of `pieces`
    linear functions of the input."""

    def __init__(self, in_features: int, units: int, pieces: int):
        super().__init__()
        self.units, self.pieces = units, pieces
        self.linear = nn.Linear(in_features, units * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(x.size(0), self.units, self.pieces).amax(dim=2)


class MLPDiscriminator(nn.Module):
    """Flattened image (+ one-hot label) -> dropout `input_dropout` -> layers of `hidden` widths
    (maxout units of `maxout_pieces` pieces, or LeakyReLU(0.2) when 0), each followed by dropout
    `dropout` (`features`, `feature_dim` wide) -> one logit. The GAN paper's code: maxout 240 x 5
    pieces twice, dropout 0.2 on the input and 0.5 after each hidden layer."""

    def __init__(self, input_nc: int = 1, image_size: int = 28, hidden: list[int] = (1024, 512, 256),
                 num_classes: int = 0, dropout: float = 0.0, input_dropout: float = 0.0, maxout_pieces: int = 0):
        super().__init__()
        for key, rate in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"model.discriminator.{key}={rate!r} must be in [0, 1)")
        if not is_int(maxout_pieces) or maxout_pieces < 0 or maxout_pieces == 1:
            raise ValueError(f"model.discriminator.maxout_pieces={maxout_pieces!r} must be 0 (LeakyReLU units) or "
                             "the pieces of each maxout unit, >= 2")
        self.num_classes = num_classes
        width = input_nc * image_size * image_size + num_classes
        layers = [nn.Dropout(input_dropout)] if input_dropout > 0 else []
        for out in check_hidden(hidden, "model.discriminator.hidden"):
            layers += ([Maxout(width, out, maxout_pieces)] if maxout_pieces
                       else [nn.Linear(width, out), nn.LeakyReLU(0.2, True)])
            layers += [nn.Dropout(dropout)] if dropout > 0 else []
            width = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        self.feature_dim = width

    def features(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(append_condition(x.flatten(1), labels, self.num_classes))

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(self.features(x, labels))
