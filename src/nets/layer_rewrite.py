"""What the rewritten CPU layers (`src/nets/fast_conv.py`) share: when a rewrite may run, and
how a layer is switched to it. `rewrite_applies` also guards the other CPU-only fast paths
(AdaLIN's statistics, `src/nets/adalin.py`)."""
from typing import Callable

import torch
import torch.nn as nn


def exporting_or_compiling() -> bool:
    """Inside TorchScript scripting/tracing, ONNX or torch.export, or torch.compile: graphs
    there must hold torch's own operators."""
    return (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export())


def rewrite_applies(x: torch.Tensor, weight: torch.Tensor | None) -> bool:
    """The rewrites are measured and written for float32 on the CPU, in eager mode; elsewhere
    (GPUs, autocast, other dtypes, exported or compiled graphs) layers run torch's operator.
    `weight`: the layer's, if it has one. Batched images only: torch's layers also take an
    unbatched (C, H, W) one."""
    return (x.dim() == 4 and x.device.type == "cpu" and x.dtype == torch.float32
            and (weight is None or weight.dtype == torch.float32)
            and not torch.is_autocast_enabled("cpu") and not exporting_or_compiling())


def output_pixels(layer: nn.Conv2d, x: torch.Tensor, extra_padding: tuple[int, int] = (0, 0)) -> int:
    """Pixels per image of `layer(x)`, from its kernel size, stride and numeric padding (plus
    `extra_padding` rows and columns on each side, padding the layer applies beyond its own)."""
    h, w = ((size + 2 * (p + e) - k) // s + 1 for size, p, e, k, s in
            zip(x.shape[-2:], layer.padding, extra_padding, layer.kernel_size, layer.stride))
    return h * w


def switch_layers(net: nn.Module, eligible: Callable[[nn.Module], bool], rewritten: type) -> list[nn.Module]:
    """Make every eligible layer of `net` an instance of `rewritten` (a subclass of its class
    that only overrides `forward`), in place: parameters, hooks and state_dict keys stay the
    same. Returns the switched layers."""
    layers = [m for m in net.modules() if eligible(m)]
    for layer in layers:
        layer.__class__ = rewritten
    return layers
