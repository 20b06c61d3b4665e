"""PatchGAN discriminators (pix2pix/CycleGAN) and the pix2pixHD multi-scale wrapper."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.nets.norms import norm_layer, uses_bias


class NLayerDiscriminator(nn.Module):
    """PatchGAN: C64 (no norm) - C128 - ... - C(ndf*min(2^n, 8)) stride 1 - 1-channel conv.

    `n_layers` sets the receptive field: 1 -> 16x16, 3 -> 70x70 (the paper default),
    5 -> 286x286. `n_layers=0` is the 1x1 "pixel" discriminator (PixelGAN).
    Returns per-patch logits; with `return_features=True` also every intermediate activation,
    which the pix2pixHD feature-matching loss compares.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance"):
        super().__init__()
        if n_layers < 0:
            raise ValueError("model.discriminator.n_layers must be >= 0")
        norm_fn, bias = norm_layer(norm), uses_bias(norm)
        if n_layers == 0:
            blocks = [nn.Sequential(nn.Conv2d(input_nc, ndf, 1), nn.LeakyReLU(0.2, True)),
                      nn.Sequential(nn.Conv2d(ndf, ndf * 2, 1, bias=bias), norm_fn(ndf * 2), nn.LeakyReLU(0.2, True)),
                      # a bias under every norm (the authors' has none under batch norm): one scalar,
                      # kept so that the checkpoints made with it load
                      nn.Conv2d(ndf * 2, 1, 1)]
        else:
            blocks = [nn.Sequential(nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True))]
            mult = 1
            for n in range(1, n_layers + 1):
                prev, mult = mult, min(2 ** n, 8)
                stride = 2 if n < n_layers else 1  # the last C-block keeps resolution
                blocks.append(nn.Sequential(
                    nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                    norm_fn(ndf * mult), nn.LeakyReLU(0.2, True)))
            blocks.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return (x, features[:-1]) if return_features else x


class MultiscaleDiscriminator(nn.Module):
    """pix2pixHD: the same PatchGAN design applied at 1x, 1/2, 1/4, ... resolution.

    Each scale has its own weights. Returns a list of logits (and of feature lists), one per
    scale; the adversarial loss sums over scales (pix2pixHD's objective).
    """

    def __init__(self, num_scales: int = 3, **patchgan_kwargs):
        super().__init__()
        if num_scales < 1:
            raise ValueError("model.discriminator.num_scales must be >= 1")
        self.scales = nn.ModuleList(NLayerDiscriminator(**patchgan_kwargs) for _ in range(num_scales))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        outputs = []
        for i, d in enumerate(self.scales):
            if i > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(d(x, return_features=return_features))
        if return_features:
            return [o[0] for o in outputs], [o[1] for o in outputs]
        return outputs
