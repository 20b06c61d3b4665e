"""StyleGAN's generator (Karras et al., CVPR 2019), growing as ProGAN's (src/nets/progan.py).

- Mapping network: z (pixel-normalised, the one-hot class appended when conditional) through
  `mapping_layers` (8) equalised fully connected layers with a 100x lower learning rate, to w.
- Synthesis: a learned constant 4x4 input; at each resolution (bilinear upsampling between
  them) 3x3 convs, each followed by per-pixel noise scaled by a learned per-channel factor B,
  LeakyReLU(0.2) and AdaIN with the style A(w) of that layer (src/nets/adain.py).
- Style mixing regularisation: in training, with probability `mixing_prob`, a second latent's w
  drives the layers from a crossover point drawn at random.
- Truncation: in eval mode, w = w_avg + psi (w - w_avg), w_avg a running mean of training w's
  (`truncation_psi` 1: off), in the styled layers below `truncation_cutoff` (the authors' code:
  8, the layers up to 32x32, so that the fine details keep their variety; null: every layer).
- Noise maps are drawn at every call, or taken from the caller (`noise=`, one map per styled
  layer of the shapes `noise_shapes()`): evaluation seeds them per test item, so a sample does
  not depend on the batch it is drawn in (src/models/noise_base.py).

It returns full-size images like ProGAN's generator, so ProGAN's discriminator, growth schedule
and training step serve it unchanged (`model=stylegan`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.nets.adain import AdaIN
from src.nets.noise_nets import append_condition
from src.nets.progan import EqualizedConv2d, EqualizedLinear, GrowingNet, leaky, level_channels, pixel_norm
from src.utils.config_checks import is_int

#: decay of the running mean of w that truncation pulls towards
W_AVG_DECAY = 0.995


class NoiseInput(nn.Module):
    """x + B * noise: one noise map per image, shared by the channels, scaled per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn(x.size(0), 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        return x + self.weight[None, :, None, None] * noise.to(x.dtype)


class StyledLayer(nn.Module):
    """(conv 3x3) -> noise -> LeakyReLU -> AdaIN(w); the first layer has no conv (the constant)."""

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, conv: bool = True):
        super().__init__()
        self.conv = EqualizedConv2d(in_channels, out_channels, 3, padding=1) if conv else None
        self.noise = NoiseInput(out_channels)
        self.adain = AdaIN(out_channels, style_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv(x) if self.conv is not None else x
        return self.adain(leaky(self.noise(x, noise)), w)


class StyleGANGenerator(GrowingNet):
    def __init__(self, latent_dim: int = 512, output_nc: int = 3, image_size: int = 256, fmap_base: int = 8192,
                 fmap_max: int = 512, num_classes: int = 0, mapping_layers: int = 8, style_dim: int = 512,
                 mixing_prob: float = 0.9, truncation_psi: float = 1.0, truncation_cutoff: int | None = None):
        super().__init__(image_size)
        if not 0.0 <= mixing_prob <= 1.0:
            raise ValueError(f"model.generator.mixing_prob={mixing_prob!r} must be in [0, 1]")
        if truncation_cutoff is not None and (not is_int(truncation_cutoff) or truncation_cutoff < 1):
            raise ValueError(f"model.generator.truncation_cutoff={truncation_cutoff!r} must be a positive number "
                             "of styled layers, or null for all of them")
        self.latent_dim, self.output_nc, self.num_classes = latent_dim, output_nc, num_classes
        self.mixing_prob, self.truncation_psi = mixing_prob, truncation_psi
        self.truncation_cutoff = truncation_cutoff
        mapping, width = [], latent_dim + num_classes
        for _ in range(mapping_layers):
            mapping += [EqualizedLinear(width, style_dim, lr_mul=0.01), nn.LeakyReLU(0.2)]
            width = style_dim
        self.mapping = nn.Sequential(*mapping)
        self.register_buffer("w_avg", torch.zeros(style_dim))
        channels = level_channels(self.top_level, fmap_base, fmap_max)
        self.constant = nn.Parameter(torch.ones(1, channels[0], 4, 4))
        self.levels = nn.ModuleList([nn.ModuleList([StyledLayer(channels[0], channels[0], style_dim, conv=False),
                                                    StyledLayer(channels[0], channels[0], style_dim)])])
        self.levels.extend(nn.ModuleList([StyledLayer(channels[k - 1], channels[k], style_dim),
                                          StyledLayer(channels[k], channels[k], style_dim)])
                           for k in range(1, self.top_level + 1))
        self.to_rgb = nn.ModuleList(EqualizedConv2d(c, output_nc, 1, gain=1.0) for c in channels)

    def styles(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.mapping(append_condition(pixel_norm(z), labels, self.num_classes))

    def layer_styles(self, z: torch.Tensor, labels: torch.Tensor | None) -> list[torch.Tensor]:
        """The w of each styled layer: one latent's, or two latents' mixed at a random crossover
        (training), or truncated towards the mean w (eval)."""
        w = self.styles(z, labels)
        count = 2 * (self.level + 1)
        if not self.training:
            if self.truncation_psi == 1.0:
                return [w] * count
            truncated = torch.lerp(self.w_avg.to(w.dtype), w, self.truncation_psi)
            cutoff = count if self.truncation_cutoff is None else min(self.truncation_cutoff, count)
            return [truncated] * cutoff + [w] * (count - cutoff)
        with torch.no_grad():
            self.w_avg.lerp_(w.detach().float().mean(0), 1 - W_AVG_DECAY)
        if count > 1 and torch.rand(()) < self.mixing_prob:
            mixed = self.styles(torch.randn_like(z), labels)
            crossover = int(torch.randint(1, count, ()))
            return [w] * crossover + [mixed] * (count - crossover)
        return [w] * count

    def noise_shapes(self) -> list[tuple[int, int, int]]:
        """The shape of one image's noise map for each styled layer run at the current stage."""
        return [(1, 4 * 2 ** k, 4 * 2 ** k) for k in range(self.level + 1) for _ in range(2)]

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None,
                noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        if noise is not None and [tuple(n.shape[1:]) for n in noise] != self.noise_shapes():
            raise ValueError(f"noise maps of shapes {[tuple(n.shape[1:]) for n in noise]} given; the stage "
                             f"(level {self.level}) takes {self.noise_shapes()} (see noise_shapes())")
        ws = iter(self.layer_styles(z, labels))
        maps = iter(noise) if noise is not None else None
        x = self.constant.expand(z.size(0), -1, -1, -1)
        previous = x
        for k in range(self.level + 1):
            if k > 0:
                previous = x
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            first, second = self.levels[k]
            x = first(x, next(ws), next(maps) if maps else None)
            x = second(x, next(ws), next(maps) if maps else None)
        return self.full_size_image(x, previous)
