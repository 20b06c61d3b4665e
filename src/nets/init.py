"""Weight initialisations of the papers (pix2pix/CycleGAN: N(0, 0.02))."""
import math

import torch.nn as nn

INIT_NAMES = ("normal", "xavier", "kaiming", "orthogonal", "uniform", "tflib", "pytorch")
#: the batch norms whose scale is drawn (InfoGAN's and the MLP generator's are 1-d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)
#: the layers whose weights an init draws
WEIGHTED_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
#: every layer an init reaches (batch norms with a scale: their scale)
INITIALISED_LAYERS = WEIGHTED_LAYERS + BATCH_NORMS


def tflib_uniform_(m: nn.Module, weight) -> None:
    """The WGAN-GP code's (tflib) init: uniform with standard deviation sqrt(4 / (fan_in +
    fan_out)) for convolutions (its `he_init`; a strided conv's fan_out and a transposed conv's
    fan_in divided by the stride's area) and sqrt(2 / (in + out)) for linear layers (Glorot).
    `weight`: the layer's trainable weight."""
    if isinstance(m, nn.Linear):
        std = math.sqrt(2.0 / (m.in_features + m.out_features))
    else:
        kernel, stride_area = math.prod(m.kernel_size), math.prod(m.stride)
        fan_in, fan_out = m.in_channels * kernel, m.out_channels * kernel
        if isinstance(m, nn.ConvTranspose2d):
            fan_in /= stride_area
        else:
            fan_out /= stride_area
        std = math.sqrt(4.0 / (fan_in + fan_out))
    nn.init.uniform_(weight, -std * math.sqrt(3), std * math.sqrt(3))


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """Initialise conv/linear weights by `init_type` and batch-norm scales by N(1, gain); `gain`
    is the standard deviation of `normal` and the half-width of `uniform` (pylearn2's irange).
    `tflib` (no gain) sets batch-norm scales to 1, as that code does, and so do `xavier` and
    `orthogonal`, whose gain multiplies the weights (1.0 for the GAN's fully connected layers:
    N(1, 1) scales would start some negative). `pytorch` keeps the
    layers' own initialisation, as code that never calls an init does."""
    if init_type not in INIT_NAMES:
        raise ValueError(f"Unknown init '{init_type}' (config key model.init.type); choose one of {INIT_NAMES}")
    if init_type == "pytorch":
        return net

    def init_module(m: nn.Module) -> None:
        if isinstance(m, WEIGHTED_LAYERS):
            # A spectrally normalised layer keeps its trainable weight in `weight_orig`.
            weight = getattr(m, "weight_orig", m.weight)
            if init_type == "normal":
                nn.init.normal_(weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(weight, gain=gain)
            elif init_type == "uniform":
                nn.init.uniform_(weight, -gain, gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(weight, a=0, mode="fan_in")
            elif init_type == "tflib":
                tflib_uniform_(m, weight)
            else:
                nn.init.orthogonal_(weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, BATCH_NORMS) and m.weight is not None:
            if init_type in ("normal", "uniform", "kaiming"):
                nn.init.normal_(m.weight, 1.0, gain)
            else:   # tflib's code sets 1; xavier's and orthogonal's gain (~1) is a scale, not a spread
                nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    net.apply(init_module)
    return net
