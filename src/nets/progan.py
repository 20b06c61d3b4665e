"""Progressive GAN networks (Karras et al., ICLR 2018): a generator and a discriminator that grow
from 4x4 by doubling the resolution, each new level faded in with a weight alpha from 0 to 1.

Both networks hold every level from the start and run the levels up to `level` (set with
`set_stage(level, alpha)`; the model sets it from the training iteration, so a resumed run
picks the stage up by itself). The generator always returns `image_size` pixels (the current
resolution upsampled by nearest neighbour) and the discriminator always takes them (average-
pooled to the current resolution), so data, samples and FID/KID keep one size while the
networks grow. Nearest upsampling then average pooling by the same factor is the identity, so
the discriminator sees exactly what the generator made at its resolution.

The paper's building blocks:
- equalised learning rate: weights drawn from N(0, 1) and scaled at every forward by He's
  constant sqrt(2 / fan_in), so Adam's step is the same for every layer;
- pixel norm in the generator after every conv: each pixel's feature vector scaled to unit
  average square;
- minibatch standard deviation before the discriminator's last block: the standard deviation of
  every feature over the batch, averaged into one number, appended as a constant channel;
- LeakyReLU(0.2) everywhere, a linear output (no tanh) and 1x1 toRGB / fromRGB convs per level.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.nets.noise_nets import append_condition, dcgan_levels


class EqualizedConv2d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    """`lr_mul` < 1 slows the layer's learning by that factor (StyleGAN's mapping network: 0.01):
    weights stored as N(0, 1 / lr_mul^2) and scaled by lr_mul at run time."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2), lr_mul: float = 1.0,
                 bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), bias_init / lr_mul))
        self.scale = gain / math.sqrt(in_features) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def stddev_group(batch: int, group_size: int | None) -> int:
    """The images each minibatch standard deviation is taken over in a batch of `batch`: the
    largest size up to `group_size` (None: the whole batch) that divides it."""
    group = batch if group_size is None else min(group_size, batch)
    while batch % group:
        group -= 1
    return group


def minibatch_stddev(x: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """x with one more channel: the standard deviation per feature and pixel over a group of
    images, averaged into one number per group. `group_size` None: the whole batch is one group
    (the paper's words); 4: the authors' code, each image with the 3 others of its group (the
    largest size up to it that divides the batch)."""
    n = x.size(0)
    group = stddev_group(n, group_size)
    grouped = x.reshape(group, n // group, *x.shape[1:])   # image i is in subgroup i mod (n / group), as theirs
    # In float32: in fp16, 1e-8 rounds to 0, and a group of identical features (one image, or a
    # collapsed generator) gives sqrt(0), whose gradient is inf, then NaN through var's.
    std = (grouped.float().var(dim=0, unbiased=False) + 1e-8).sqrt().flatten(1).mean(1)   # one per subgroup
    per_image = std.repeat(group)
    return torch.cat([x, per_image[:, None, None, None].expand(n, 1, *x.shape[2:]).to(x.dtype)], dim=1)


def level_channels(levels: int, fmap_base: int, fmap_max: int) -> list[int]:
    """Channels at 4x4, 8x8, ... (level 0 .. levels): min(fmap_base / 2^(level + 1), fmap_max)."""
    return [max(1, min(fmap_base // 2 ** (level + 1), fmap_max)) for level in range(levels + 1)]


def leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def blur_kernel() -> torch.Tensor:
    """StyleGAN's low-pass filter, [1, 2, 1] x [1, 2, 1] / 16, as a [1, 1, 3, 3] kernel."""
    taps = torch.tensor([1.0, 2.0, 1.0])
    return (taps[:, None] * taps[None, :] / 16)[None, None]


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """`kernel` (`blur_kernel()`) on each channel, zero padding as the authors': run before a 2x2
    average pooling, it makes the downsampling bilinear rather than a box filter's. The network
    keeps the kernel as a buffer on its device: one made per call would be a blocking copy to
    the GPU at every block of every discriminator pass."""
    return F.conv2d(x, kernel.to(x.dtype).expand(x.size(1), 1, 3, 3), padding=1, groups=x.size(1))


class GrowingNet(nn.Module):
    """The stage both networks share: the top level run and its fade-in weight. Kept as buffers
    too, so a checkpoint loaded for sampling (eval.py) runs at the stage it was trained to; the
    forward passes read the plain level and whether a level is fading in (reading a buffer's
    value would wait for a GPU), and take the fade-in weight as the buffer's tensor: under
    `compile` a Python float that changes every iteration would recompile the network every
    iteration, where a bool and a level recompile once per stage."""

    def __init__(self, image_size: int):
        super().__init__()
        self.top_level = dcgan_levels(image_size, "model.image_size")
        self.image_size = image_size
        self.register_buffer("stage_level", torch.tensor(self.top_level))
        self.register_buffer("stage_alpha", torch.tensor(1.0))
        self.level, self.alpha, self.fading = self.top_level, 1.0, False

    def set_stage(self, level: int, alpha: float) -> None:
        if not 0 <= level <= self.top_level or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"stage level={level}, alpha={alpha}: level must be in 0..{self.top_level}, alpha in [0, 1]")
        self.stage_level.fill_(level)
        self.stage_alpha.fill_(alpha)
        self.level, self.alpha = int(level), float(alpha)
        self.fading = self.level > 0 and self.alpha < 1.0

    def fade(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """`new` weighted by alpha over `old` (the level below's), alpha read from the buffer."""
        return torch.lerp(old, new, self.stage_alpha.to(new.dtype))

    def full_size_image(self, x: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """A generator's output: the current level's toRGB of `x`, faded over the level below's
        (`previous`) while alpha < 1, presented at `image_size`. Both upsamplings are nearest, in
        StyleGAN too (its features are upsampled bilinearly, its images not: the authors'
        `upscale2d`): the reals are faded the same way (`faded_reals`), and the discriminator's
        average pooling undoes it exactly. A smoother fade of the fakes alone would show the
        critic a difference that is not one of quality."""
        image = self.to_rgb[self.level](x)
        if self.fading:
            old = F.interpolate(self.to_rgb[self.level - 1](previous), scale_factor=2, mode="nearest")
            image = self.fade(old, image)
        factor = 2 ** (self.top_level - self.level)
        return F.interpolate(image, scale_factor=factor, mode="nearest") if factor > 1 else image

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.set_stage(int(self.stage_level), float(self.stage_alpha))


class ProGANGenerator(GrowingNet):
    def __init__(self, latent_dim: int = 512, output_nc: int = 3, image_size: int = 256, fmap_base: int = 8192,
                 fmap_max: int = 512, num_classes: int = 0, normalize_latent: bool = True):
        super().__init__(image_size)
        self.latent_dim, self.output_nc, self.num_classes = latent_dim, output_nc, num_classes
        self.normalize_latent = normalize_latent
        channels = level_channels(self.top_level, fmap_base, fmap_max)
        # 4x4: the latent as a 1x1 map through a 4x4 "transposed conv" (a linear layer), then a 3x3 conv.
        self.first = EqualizedLinear(latent_dim + num_classes, channels[0] * 16, gain=math.sqrt(2) / 4)
        self.first_conv = EqualizedConv2d(channels[0], channels[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.ModuleList([EqualizedConv2d(channels[k - 1], channels[k], 3, padding=1),
                           EqualizedConv2d(channels[k], channels[k], 3, padding=1)])
            for k in range(1, self.top_level + 1))
        self.to_rgb = nn.ModuleList(EqualizedConv2d(c, output_nc, 1, gain=1.0) for c in channels)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = append_condition(pixel_norm(z) if self.normalize_latent else z, labels, self.num_classes)
        x = pixel_norm(leaky(self.first(z).view(z.size(0), -1, 4, 4)))
        x = pixel_norm(leaky(self.first_conv(x)))
        previous = x
        for conv1, conv2 in self.blocks[:self.level]:
            previous = x
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = pixel_norm(leaky(conv2(pixel_norm(leaky(conv1(x))))))
        return self.full_size_image(x, previous)


class ProGANDiscriminator(GrowingNet):
    """`blur`: StyleGAN's discriminator blocks, which low-pass filter (`blur`) before each
    block's downsampling conv and activate after the downsampling; ProGAN's have no filter and
    activate before it. (The flag switches both: a StyleGAN ablation without the filter runs
    ProGAN's blocks.) `mbstd_group_size`: the images each minibatch
    standard deviation is taken over (`minibatch_stddev`)."""

    def __init__(self, input_nc: int = 3, image_size: int = 256, fmap_base: int = 8192, fmap_max: int = 512,
                 num_classes: int = 0, blur: bool = False, mbstd_group_size: int | None = None):
        super().__init__(image_size)
        if mbstd_group_size is not None and (isinstance(mbstd_group_size, bool) or not isinstance(mbstd_group_size, int)
                                             or mbstd_group_size < 2):
            raise ValueError(f"model.discriminator.mbstd_group_size={mbstd_group_size!r} must be an integer >= 2 "
                             "(the authors' code: 4) or null (the whole batch)")
        self.num_classes, self.blur, self.mbstd_group_size = num_classes, blur, mbstd_group_size
        if blur:   # not saved: checkpoints keep their keys, and the kernel is a constant
            self.register_buffer("low_pass", blur_kernel(), persistent=False)
        channels = level_channels(self.top_level, fmap_base, fmap_max)
        # A conditional critic reads the one-hot label as constant input maps (as DCGAN's).
        self.from_rgb = nn.ModuleList(EqualizedConv2d(input_nc + num_classes, c, 1) for c in channels)
        self.blocks = nn.ModuleList(
            nn.ModuleList([EqualizedConv2d(channels[k], channels[k], 3, padding=1),
                           EqualizedConv2d(channels[k], channels[k - 1], 3, padding=1)])
            for k in range(1, self.top_level + 1))
        self.last_conv = EqualizedConv2d(channels[0] + 1, channels[0], 3, padding=1)
        self.last_dense = EqualizedLinear(channels[0] * 16, channels[0])
        self.out = EqualizedLinear(channels[0], 1, gain=1.0)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        factor = 2 ** (self.top_level - self.level)
        x = F.avg_pool2d(x, factor) if factor > 1 else x
        x = append_condition(x, labels, self.num_classes)
        h = leaky(self.from_rgb[self.level](x))
        for k in range(self.level, 0, -1):
            conv1, conv2 = self.blocks[k - 1]
            h = leaky(conv1(h))
            # ProGAN (its paper's table): conv, LReLU, downsample. StyleGAN (the authors'
            # D_basic): blur, conv, downsample, then the activation.
            h = leaky(F.avg_pool2d(conv2(blur(h, self.low_pass)), 2)) if self.blur else F.avg_pool2d(leaky(conv2(h)), 2)
            if k == self.level and self.fading:   # fading the new level in over the previous one
                old = leaky(self.from_rgb[k - 1](F.avg_pool2d(x, 2)))
                h = self.fade(old, h)
        h = leaky(self.last_conv(minibatch_stddev(h, self.mbstd_group_size)))
        return self.out(leaky(self.last_dense(h.flatten(1))))
