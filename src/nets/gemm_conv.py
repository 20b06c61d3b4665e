"""Transposed convolutions on small inputs as one matrix product and a fold, on the CPU.

A transposed convolution is `fold(W^T x)`: every input pixel's channels times the weight matrix
(C_in x C_out*k*k) give the k x k patch it adds to the output. On inputs of a few pixels (the
innermost U-Net layers: 1024 -> 512 channels at 2x2 to 8x8, 8M weights each) oneDNN's
transposed convolution, and above all its backward, runs far below memory speed: forward +
backward of ConvTranspose2d(1024, 512, 4, 2, 1) on a 2x2 input took 71 ms against 22 ms as a
product (2 threads). The product form's backward is autograd's: unfold, and two products.
Same result up to float rounding.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.nets.layer_rewrite import rewrite_applies, switch_layers

#: inputs of at most this many pixels (8x8) take the product form; from 16x16 oneDNN is as fast.
MAX_INPUT_PIXELS = 64


def conv_transpose2d_as_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """`F.conv_transpose2d(x, weight, bias, stride, padding)` (no output padding, groups or
    dilation) as a matrix product followed by `F.fold`."""
    n, c_in, h, w = x.shape
    c_out, kh, kw = weight.shape[1:]
    out_h = (h - 1) * stride[0] - 2 * padding[0] + kh
    out_w = (w - 1) * stride[1] - 2 * padding[1] + kw
    patches = weight.reshape(c_in, c_out * kh * kw).t() @ x.reshape(n, c_in, h * w)  # (N, C_out*k*k, H*W)
    y = F.fold(patches, (out_h, out_w), (kh, kw), stride=stride, padding=padding)
    return y if bias is None else y + bias.view(1, -1, 1, 1)


class GemmConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d that runs as a product and a fold on small float32 CPU inputs, and as
    itself elsewhere. Only assigned as the class of an existing layer (`use_gemm_conv_transpose`),
    so parameters, hooks and state_dict keys stay the same."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (output_size is None and x.dim() == 4 and x.shape[2] * x.shape[3] <= MAX_INPUT_PIXELS
                and rewrite_applies(x, self.weight)):
            return conv_transpose2d_as_product(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x, output_size)


def gemm_eligible(module: nn.Module) -> bool:
    """A plain ConvTranspose2d: no groups, dilation or output padding, zero padding mode."""
    return (type(module) is nn.ConvTranspose2d and module.groups == 1 and module.dilation == (1, 1)
            and module.output_padding == (0, 0) and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple))


def use_gemm_conv_transpose(net: nn.Module) -> int:
    """Switch the eligible transposed convolutions of `net`; returns how many were switched."""
    return len(switch_layers(net, gemm_eligible, GemmConvTranspose2d))
