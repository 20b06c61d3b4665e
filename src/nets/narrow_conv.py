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

The forward, for odd kernels, runs on the input's 2x2 space-to-depth rearrangement: a
(k//2 + 1)^2 convolution from 4 x 64 channels into 4 x 3 (one per output phase), shuffled back.
oneDNN takes as long for 3 output channels as for 16 (64 -> 3, 7x7 at 128x128: 8 ms, 19 G
multiply-adds/s); into 12 it uses more of its lanes (2.6-3 ms for the convolution, 4-6 ms with
the rearrangement and its memory). Same result up to float rounding.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from src.nets.layer_rewrite import rewrite_applies, switch_layers

#: layers with at most this many output channels and (under `auto`) at least this many inputs
MAX_OUTPUT_CHANNELS = 4
MIN_INPUT_CHANNELS = 32


def _space_to_depth_weight(weight: torch.Tensor) -> torch.Tensor:
    """(O, C, k, k), k odd -> (4 O, 4 C, t, t), t = k // 2 + 1: output channel o*4 + a*2 + b is
    output phase (a, b) of channel o, input channel c*4 + q*2 + r is input phase (q, r) of c (the
    orders of pixel_shuffle and pixel_unshuffle); tap (p, p') reads kernel entry
    (2p + q - a, 2p' + r - b), zero outside the kernel."""
    o, c, k, _ = weight.shape
    taps = k // 2 + 1
    padded = F.pad(weight, (1, 1, 1, 1))      # entry u of the kernel at u + 1; -1 and k read zeros
    phase, offset, tap = torch.arange(2), torch.arange(2), torch.arange(taps)
    rows = 2 * tap.view(1, 1, -1) + offset.view(1, -1, 1) - phase.view(-1, 1, 1) + 1   # [a, q, p]
    gathered = padded[:, :, rows.view(2, 1, 2, 1, taps, 1), rows.view(1, 2, 1, 2, 1, taps)]
    # gathered: [O, C, a, b, q, r, p, p'] -> [O, a, b, C, q, r, p, p']
    return gathered.permute(0, 2, 3, 1, 4, 5, 6, 7).reshape(4 * o, 4 * c, taps, taps)


def narrow_output_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          padding: tuple[int, int]) -> torch.Tensor:
    """conv2d(x, weight, bias, stride 1, padding), through the space-to-depth form for square odd
    kernels."""
    k = weight.shape[2]
    if weight.shape[3] != k or k % 2 == 0:
        return F.conv2d(x, weight, bias, padding=padding)
    h, w = x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1]
    out_h, out_w = h - k + 1, w - k + 1
    # zero padding as the layer's, plus a row or column to make the sides even
    x = F.pad(x, (padding[1], padding[1] + w % 2, padding[0], padding[0] + h % 2))
    phases = F.conv2d(F.pixel_unshuffle(x, 2), _space_to_depth_weight(weight),
                      None if bias is None else bias.repeat_interleave(4))
    y = F.pixel_shuffle(phases, 2)
    return y if y.shape[2:] == (out_h, out_w) else y[:, :, :out_h, :out_w].contiguous()


class NarrowOutputConvolution(torch.autograd.Function):
    """conv2d(x, weight, bias, stride 1, padding) with the backward described above."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return narrow_output_forward(x, weight, bias, padding)

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
            if grad_w.stride() != weight.stride():
                # Laid out transposed: autograd would copy it into the weight's layout, but not
                # with one output channel, whose size-1 dimension keeps the transposed stride,
                # which DDP (its gradient buckets laid out as the weight) warns of at every run.
                grad_w = torch.empty_like(weight).copy_(grad_w)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


class NarrowOutputConv2d(nn.Conv2d):
    """nn.Conv2d whose forward and backward run as above on float32 CPU tensors (and are torch's
    elsewhere). Only assigned as the class of an existing layer (`use_narrow_output`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not rewrite_applies(x, self.weight):
            return super().forward(x)
        if torch.is_grad_enabled():
            return NarrowOutputConvolution.apply(x, self.weight, self.bias, self.padding)
        return narrow_output_forward(x, self.weight, self.bias, self.padding)


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
