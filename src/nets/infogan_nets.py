"""InfoGAN's networks (Chen et al., NeurIPS 2016, appendix C.1, its MNIST architecture).

Generator: FC 1024 - FC (s/4 x s/4 x 2 ngf), each ReLU + batch norm, then a 4x4 stride-2
transposed conv to ngf channels (batch norm, ReLU) and one to the image (tanh): 7x7x128 -> 14x14x64
-> 28x28 at the paper's 28 px and ngf 64. Discriminator: 4x4 stride-2 convs to ndf (LeakyReLU,
no norm) and 2 ndf channels (batch norm, LeakyReLU), FC 1024 (batch norm, LeakyReLU): its
`features`, which D's output layer and InfoGAN's head Q both read. LeakyReLU leaks 0.1, as the
paper's appendix C states for the hidden layers of D (its code's `leaky_rectify` default, 0.01,
differs; the paper is followed).

Sizes other than 28 take the same layers on s/4 maps (s divisible by 4). `norm` replaces batch
norm in D (layer norm for WGAN-GP's critic, or none); G keeps batch norm unless `norm: none`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from src.nets.noise_nets import append_condition
from src.nets.norms import norm_layer, uses_bias, vector_norm_layer
from src.nets.tanh import Tanh
from src.utils.config_checks import is_int

LEAKY_SLOPE = 0.1   # the paper, appendix C: "lRELU with leaky rate 0.1" in D's hidden layers (and Q's)


def quarter_size(image_size: int) -> int:
    if not is_int(image_size) or image_size < 4 or image_size % 4:
        raise ValueError(f"model.image_size={image_size!r}: InfoGAN's networks halve the image twice, so its side "
                         "must be a multiple of 4 (the paper's MNIST: 28); set data.crop_size (and data.size for "
                         "the embedded dataset)")
    return image_size // 4


class InfoGANGenerator(nn.Module):
    def __init__(self, latent_dim: int = 74, output_nc: int = 1, image_size: int = 28, ngf: int = 64,
                 fc: int = 1024, num_classes: int = 0, norm: str = "batch"):
        super().__init__()
        self.latent_dim, self.output_nc, self.image_size, self.num_classes = latent_dim, output_nc, image_size, num_classes
        self.start = quarter_size(image_size)
        norm_fn, bias = norm_layer(norm), uses_bias(norm)
        self.fc = nn.Sequential(
            nn.Linear(latent_dim + num_classes, fc, bias=bias), vector_norm_layer(norm, fc), nn.ReLU(True),
            nn.Linear(fc, self.start ** 2 * 2 * ngf, bias=bias), vector_norm_layer(norm, self.start ** 2 * 2 * ngf),
            nn.ReLU(True))
        self.conv = nn.Sequential(
            nn.ConvTranspose2d(2 * ngf, ngf, 4, 2, 1, bias=bias), norm_fn(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, output_nc, 4, 2, 1), Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.fc(append_condition(z, labels, self.num_classes))
        return self.conv(h.view(z.size(0), -1, self.start, self.start))


class InfoGANDiscriminator(nn.Module):
    def __init__(self, input_nc: int = 1, image_size: int = 28, ndf: int = 64, fc: int = 1024,
                 num_classes: int = 0, norm: str = "batch"):
        super().__init__()
        self.num_classes = num_classes
        quarter = quarter_size(image_size)
        norm_fn, bias = norm_layer(norm), uses_bias(norm)
        self.body = nn.Sequential(
            nn.Conv2d(input_nc + num_classes, ndf, 4, 2, 1), nn.LeakyReLU(LEAKY_SLOPE, True),
            nn.Conv2d(ndf, 2 * ndf, 4, 2, 1, bias=bias), norm_fn(2 * ndf), nn.LeakyReLU(LEAKY_SLOPE, True),
            nn.Flatten(),
            nn.Linear(2 * ndf * quarter * quarter, fc, bias=bias), vector_norm_layer(norm, fc),
            nn.LeakyReLU(LEAKY_SLOPE, True))
        self.head = nn.Linear(fc, 1)
        self.feature_dim = fc

    def features(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(append_condition(x, labels, self.num_classes))

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(self.features(x, labels))
