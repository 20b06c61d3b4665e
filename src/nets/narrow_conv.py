"""Backward of convolutions with a few output channels, through wide convolutions, on the CPU.

The generators end in a convolution from 64 channels to the image's 3 (CycleGAN's and
U-GAT-IT's 7x7). oneDNN computes its backward at a fraction of its usual rate (64 -> 3, 7x7 at
256x256: 89 ms for 2.5 GFLOP, against 27 ms here), because it vectorises over output
channels and there are three. Both gradients can be written as convolutions whose output has the
*wide* side instead, the shape oneDNN is fast at (the same as the generators' first layer):

- input gradient = a convolution of the padded output gradient (3 channels) with the weights
  transposed and flipped, into 64 channels;
- weight gradient = the weight gradient of that same 3 -> 64 convolution when it would be given
  the layer's input as its output gradient, transposed and flipped back.

The forward stays torch's. Same result up to float rounding.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from src.nets.layer_rewrite import rewrite_applies, switch_layers

#: layers with at most this many output channels and (under `auto`) at least this many inputs
MAX_OUTPUT_CHANNELS = 4
MIN_INPUT_CHANNELS = 32


class NarrowOutputConvolution(torch.autograd.Function):
    """conv2d(x, weight, bias, stride 1, padding) with the backward described above."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        c_out, c_in, kh, kw = weight.shape
        full = (kh - 1 - ctx.padding[0], kw - 1 - ctx.padding[1])   # "full" correlation padding
        flipped = weight.transpose(0, 1).flip(2, 3)                  # (C_in, C_out, kh, kw)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad_y, flipped.contiguous(), padding=full)
        if ctx.needs_input_grad[1]:
            padded = F.pad(grad_y, (full[1], full[1], full[0], full[0]))
            _, swapped, _ = torch.ops.aten.convolution_backward(
                x, padded, flipped, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False])
            grad_w = swapped.transpose(0, 1).flip(2, 3)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


class NarrowOutputConv2d(nn.Conv2d):
    """nn.Conv2d whose backward runs through wide convolutions on float32 CPU tensors (and is
    torch's elsewhere). Only assigned as the class of an existing layer (`use_narrow_output`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and rewrite_applies(x, self.weight):
            return NarrowOutputConvolution.apply(x, self.weight, self.bias, self.padding)
        return super().forward(x)


def narrow_output_eligible(module: nn.Module, min_input_channels: int = MIN_INPUT_CHANNELS) -> bool:
    """A plain stride-1 Conv2d from many channels to a few, zero-padded by at most kernel - 1."""
    return (type(module) is nn.Conv2d and module.out_channels <= MAX_OUTPUT_CHANNELS
            and module.in_channels >= min_input_channels and module.stride == (1, 1)
            and module.dilation == (1, 1) and module.groups == 1 and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple)
            and all(p <= k - 1 for p, k in zip(module.padding, module.kernel_size)))


def use_narrow_output(net: nn.Module, min_input_channels: int = MIN_INPUT_CHANNELS) -> int:
    """Switch the eligible convolutions of `net`; returns how many were switched."""
    return len(switch_layers(net, lambda m: narrow_output_eligible(m, min_input_channels), NarrowOutputConv2d))
