"""`model.fast_conv`: CPU convolution (and instance-norm) layers rewritten to compute the same
result faster.

- 3x3 and 4x4 stride-1 convolutions by Winograd F(4x4, 3x3) and F(3x3, 4x4), with the padding of
  an nn.ReflectionPad2d just before them applied as they read their input (`src/nets/winograd.py`);
- convolutions into at most 4x4 pixels and transposed convolutions on inputs of at most 8x8
  pixels as matrix products (`src/nets/gemm_conv.py`);
- convolutions into a few channels (the generators' last layer) with their backward through
  convolutions into many and their forward on the input's space-to-depth rearrangement
  (`src/nets/narrow_conv.py`);
- instance norms without running statistics by torch's group norm, one group per channel
  (`src/nets/instance_norm.py`).

Switched layers keep their parameters and state_dict keys, and run torch's own operator off the
CPU, outside float32, under autocast and in exported or compiled graphs.
"""
import logging

import torch.nn as nn

from src.nets.gemm_conv import GemmConv2d, GemmConvTranspose2d, use_gemm_conv
from src.nets.instance_norm import InstanceNormAsGroupNorm, use_group_norm_for_instance_norm
from src.nets.narrow_conv import MIN_INPUT_CHANNELS, NarrowOutputConv2d, use_narrow_output
from src.nets.winograd import ReflectionPadInNextLayer, WinogradConv2d, use_winograd, winograd_eligible
from src.nets.winograd_build import WinogradUnavailable, kernels

log = logging.getLogger(__name__)

#: `auto` gives Winograd to layers with at least this many input channels, run on inputs with at
#: least this many output pixels (by kernel size). Measured forward + backward on 2 threads
#: (experiments/bench/README.md): 3x3, 256 channels 1.3x (32x32) to 1.9x (64x64), 128 channels
#: 1.2-1.6x, 64 channels no gain, and 64 -> 32 at 256x256 1.8x slower; on a few pixels the
#: weight transform (36/r^2 times the weights) costs more than the products save. 4x4 kernels
#: transform into 36/16 times their weights only, and oneDNN's backward of the PatchGAN's
#: 256 -> 512 layer is slow: into 15x15 (the PatchGAN at 128 px) 12.9 against 21.5 ms, into 11x11
#: 11.5 against 14.6, into 10x10 level, into 7x7 slower (14.7 against 8 ms).
AUTO_WINOGRAD_MIN_CHANNELS = 128
AUTO_WINOGRAD_MIN_OUTPUT_PIXELS = {3: 256, 4: 100}

#: The classes switched layers get: each subclasses the torch layer it replaces and overrides only
#: `forward` (a reflection pad whose padding moved into the Winograd layer after it passes its
#: input on).
REWRITTEN_LAYERS = (WinogradConv2d, ReflectionPadInNextLayer, GemmConv2d, GemmConvTranspose2d, NarrowOutputConv2d,
                    InstanceNormAsGroupNorm)


def configure_fast_conv(net: nn.Module, setting: bool | str, key: str = "model.fast_conv",
                        second_order: bool = False) -> dict[str, int]:
    """Apply the setting to `net`; returns how many layers each rewrite switched.

    second_order: `net`'s gradient is itself differentiated (a critic under WGAN-GP's penalty):
    only the rewrites whose backward differentiates again (the product forms, the group-norm
    instance norm), not Winograd's or the narrow-output backward (once-differentiable).

    auto: Winograd for 3x3 and 4x4 layers of >= AUTO_WINOGRAD_MIN_CHANNELS input channels on
    inputs with >= AUTO_WINOGRAD_MIN_OUTPUT_PIXELS[kernel size] outputs, if its C kernels build
    here (a warning otherwise), the narrow-output forms for layers of >= MIN_INPUT_CHANNELS
    inputs, the product form for every other convolution and transposed convolution (used on
    small images), and the group-norm form for instance norms;
    true: every layer each rewrite can take, whatever its width (an error if the Winograd kernels
    cannot be built); false: torch's layers everywhere.
    """
    if setting not in (True, False, "auto"):
        raise ValueError(f"{key}={setting!r} must be true, false or auto")
    if setting is False:
        return {"winograd": 0, "gemm_conv": 0, "gemm_conv_transpose": 0, "narrow_output": 0, "instance_norm": 0}
    if second_order:
        return {"winograd": 0, **use_gemm_conv(net), "narrow_output": 0,
                "instance_norm": use_group_norm_for_instance_norm(net)}
    # Layers into a few channels first: they gain more from the narrow-output backward than from
    # Winograd's products, which have only those few rows.
    narrow = use_narrow_output(net, 1 if setting is True else MIN_INPUT_CHANNELS)
    winograd = _configure_winograd(net, setting, key)
    # Last: the product forms take the plain layers the other rewrites left.
    return {"winograd": winograd, **use_gemm_conv(net), "narrow_output": narrow,
            "instance_norm": use_group_norm_for_instance_norm(net)}


def _configure_winograd(net: nn.Module, setting: bool | str, key: str) -> int:
    min_channels = 1 if setting is True else AUTO_WINOGRAD_MIN_CHANNELS
    if not any(winograd_eligible(m, min_channels) for m in net.modules()):
        return 0   # nothing to switch: do not build the kernels
    try:
        kernels()
    except WinogradUnavailable as error:
        if setting is True:
            raise WinogradUnavailable(f"{key}=true: {error}") from error
        log.warning("%s=auto: 3x3 and 4x4 convolutions stay torch's, the Winograd kernels are unavailable: %s",
                    key, error)
        return 0
    if setting is True:
        return use_winograd(net)
    return use_winograd(net, AUTO_WINOGRAD_MIN_CHANNELS, AUTO_WINOGRAD_MIN_OUTPUT_PIXELS)
