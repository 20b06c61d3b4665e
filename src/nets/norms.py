"""Normalisation layers chosen by name, so configs can say `norm: instance`."""
import functools

import torch.nn as nn

NORM_NAMES = ("batch", "instance", "layer", "none")


def norm_layer(name: str):
    """Return a constructor `f(num_channels) -> nn.Module` for the named norm.

    Instance norm follows the CycleGAN code: no affine parameters, no running statistics.
    Batch norm keeps running statistics, but pix2pix evaluates with batch statistics (see
    `Pix2Pix.sampling_options`, read by `TranslationModel.translate`), which with batch 1 is
    instance norm, as in the paper. Layer norm
    normalises each image over channels and pixels (GroupNorm with one group).
    """
    if name == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if name == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if name == "layer":
        # Per image over (C, H, W), with a per-channel scale and shift: the critic norm of the
        # WGAN-GP paper, whose penalty needs every image normalised on its own.
        return lambda num_channels: nn.GroupNorm(1, num_channels, affine=True)
    if name == "none":
        return lambda num_channels: nn.Identity()
    raise ValueError(f"Unknown norm '{name}' (config key model.*.norm); choose one of {NORM_NAMES}")


def vector_norm_layer(name: str, width: int) -> nn.Module:
    """The named norm for a fully connected layer's `width` outputs: batch norm over the batch,
    layer norm over the vector (WGAN-GP's critic), or none. Instance norm has no such form."""
    if name == "batch":
        return nn.BatchNorm1d(width)
    if name == "layer":
        return nn.LayerNorm(width)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"norm '{name}' (config key model.*.norm) has no form for a fully connected layer's output; "
                     f"choose one of batch, layer, none")


def uses_bias(name: str) -> bool:
    """Convs before an affine batch norm need no bias (the norm's shift replaces it)."""
    return name != "batch"
