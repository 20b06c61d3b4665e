"""3x3 stride-1 convolutions computed with Winograd's F(4x4, 3x3) algorithm on the CPU.

Each 4x4 block of outputs costs 36 multiplications per input channel instead of 144: input
tiles and weights are transformed, multiplied in 36 batched matrix products (MKL, through
`torch.bmm`), and the products transformed back. The backward pass is the same algorithm
run through its adjoints, so the gradients cost as little as the forward: the input gradient
comes from the output gradient's transform and the weights' transposed products, the weight
gradient from the same output-gradient transform against the input's tiles (recomputed, not
stored, to keep the memory of a plain convolution).

Same result as `F.conv2d` up to float rounding (relative error ~2e-6 in fp32, against ~1e-7 for
a direct convolution: the transforms multiply by up to 8 and 1/24). The tile transforms are C
kernels (`winograd_kernels.c`, built on first use by `winograd_build`).
"""
import threading

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from src.nets.layer_rewrite import rewrite_applies, switch_layers
from src.nets.winograd_build import kernels

_scratch_buffers = threading.local()


def _scratch(slot: str, *shape: int) -> torch.Tensor:
    """A reusable float32 CPU buffer for intermediates that never leave one forward or backward.

    Each call allocates and frees ~10 of them (up to 9 MB each at 64x64): fresh memory from the
    kernel is zero-filled page by page on first touch, which cost as much as the transforms.
    One buffer per slot and thread, grown to the largest size asked for.
    """
    buffers = _scratch_buffers.__dict__
    numel = 1
    for size in shape:
        numel *= size
    if slot not in buffers or buffers[slot].numel() < numel:
        buffers[slot] = torch.empty(numel)
    return buffers[slot][:numel].view(shape)


def _tiles(size: int) -> int:
    """Number of 4-wide output tiles along an input side (a 3x3 valid convolution's output)."""
    return -(-(size - 2) // 4)


def _weight_tiles(weight: torch.Tensor) -> torch.Tensor:
    """weight (K, C, 3, 3) -> its transform (36, K, C)."""
    k, c = weight.shape[:2]
    u = _scratch("weight_tiles", 36, k, c)
    kernels().winograd_weight_transform(weight.data_ptr(), u.data_ptr(), k, c, torch.get_num_threads())
    return u


def _input_tiles(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """x (N, C, 4th+2, 4tw+2) -> its transformed tiles (36, C, N*th*tw)."""
    n, c = x.shape[:2]
    v = _scratch("input_tiles", 36, c, n * th * tw)
    kernels().winograd_input_transform(x.data_ptr(), v.data_ptr(), n, c, th, tw, torch.get_num_threads())
    return v


def _pad_to_tiles(x: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """Zero rows/columns at the bottom/right so the tiles cover the input exactly."""
    extra_h, extra_w = 4 * th + 2 - x.shape[2], 4 * tw + 2 - x.shape[3]
    if extra_h or extra_w:
        x = F.pad(x, (0, extra_w, 0, extra_h))
    return x.contiguous()


class WinogradConv3x3(torch.autograd.Function):
    """y = conv2d(x, weight, bias) for a 3x3 kernel, stride 1, no padding (pad x beforehand)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        n, _, h, w = x.shape
        k = weight.shape[0]
        th, tw = _tiles(h), _tiles(w)
        u = _weight_tiles(weight)                                        # (36, K, C)
        v = _input_tiles(_pad_to_tiles(x, th, tw), th, tw)              # (36, C, P)
        m = torch.bmm(u, v, out=_scratch("products", 36, k, v.shape[2]))  # (36, K, P)
        y = x.new_empty(n, k, 4 * th, 4 * tw)
        bias = bias.contiguous() if bias is not None else None   # held until the kernel returns
        bias_pointer = bias.data_ptr() if bias is not None else None
        kernels().winograd_output_transform(m.data_ptr(), bias_pointer, y.data_ptr(), n, k, th, tw,
                                            torch.get_num_threads())
        # The weight, not its 4x larger transform: recomputing that costs less than holding it.
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y[:, :, :h - 2, :w - 2] if (4 * th, 4 * tw) != (h - 2, w - 2) else y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        k = weight.shape[0]
        th, tw = _tiles(h), _tiles(w)
        threads = torch.get_num_threads()
        if (4 * th, 4 * tw) != (h - 2, w - 2):
            grad_y = F.pad(grad_y, (0, 4 * tw - (w - 2), 0, 4 * th - (h - 2)))
        grad_y = grad_y.contiguous()
        grad_m = _scratch("products", 36, k, n * th * tw)
        kernels().winograd_output_transform_adjoint(grad_y.data_ptr(), grad_m.data_ptr(), n, k, th, tw, threads)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_v = torch.bmm(_weight_tiles(weight).transpose(1, 2), grad_m,
                               out=_scratch("input_tiles", 36, c, n * th * tw))  # (36, C, P)
            grad_x = x.new_empty(n, c, 4 * th + 2, 4 * tw + 2)
            kernels().winograd_input_transform_adjoint(grad_v.data_ptr(), grad_x.data_ptr(), n, c, th, tw, threads)
            grad_x = grad_x[:, :, :h, :w]
        if ctx.needs_input_grad[1]:
            grad_u = torch.bmm(grad_m, _input_tiles(_pad_to_tiles(x, th, tw), th, tw).transpose(1, 2),
                               out=_scratch("weight_grad_tiles", 36, k, c))
            grad_w = weight.new_empty(k, c, 3, 3)
            kernels().winograd_weight_transform_adjoint(grad_u.data_ptr(), grad_w.data_ptr(), k, c, threads)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum((0, 2, 3))
        return grad_x, grad_w, grad_b


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """conv2d(x, weight, bias) with a 3x3 kernel, stride 1, no padding, by F(4x4, 3x3)."""
    if x.dim() != 4 or weight.shape[2:] != (3, 3) or min(x.shape[2:]) < 3:
        raise ValueError(f"winograd_conv3x3 needs a (N, C, H>=3, W>=3) input and a 3x3 kernel, "
                         f"got input {tuple(x.shape)} and weight {tuple(weight.shape)}")
    return WinogradConv3x3.apply(x.contiguous(), weight.contiguous(), bias)


class WinogradConv2d(nn.Conv2d):
    """nn.Conv2d that runs by F(4x4, 3x3) where it can: float32 CPU tensors, outside autocast,
    tracing, scripting, compilation and export; elsewhere it is the plain convolution.

    Only ever assigned as the class of an existing 3x3, stride-1, dilation-1, ungrouped
    nn.Conv2d (`use_winograd`), so parameters, hooks and state_dict keys stay the same.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not rewrite_applies(x, self.weight):
            return super().forward(x)
        pad_h, pad_w = self.padding
        if pad_h or pad_w:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode=mode)
        return winograd_conv3x3(x, self.weight, self.bias)


def winograd_eligible(conv: nn.Module, min_channels: int = 1) -> bool:
    """A plain 3x3, stride-1, dilation-1, ungrouped Conv2d with enough input channels."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and isinstance(conv.padding, tuple)
            and conv.in_channels >= min_channels)


def use_winograd(net: nn.Module, min_channels: int = 1) -> int:
    """Run the eligible convolutions of `net` by F(4x4, 3x3); returns how many were switched."""
    return switch_layers(net, lambda m: winograd_eligible(m, min_channels), WinogradConv2d)
