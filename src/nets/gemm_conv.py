"""Convolutions and transposed convolutions on images of a few pixels as matrix products, on the CPU.

On a few pixels (the U-Net's innermost layers: 512-1024 channels at 1x1 to 8x8, 4-8M weights
each) a layer is bound by reading its weights and writing its weight gradient, not by its
arithmetic, and oneDNN runs it far below memory speed: forward + backward of
ConvTranspose2d(1024, 512, 4, 2, 1) on a 2x2 input took 71 ms, of Conv2d(512, 512, 4, 2, 1) into
1x1 13.7 ms; as products 22 and 5.4 ms (2 threads). With unfold/fold (im2col/col2im) and the
weights as a matrix W (C_out x C_in*k*k for a convolution, C_in x C_out*k*k for a transposed one):

- convolution: y = W unfold(x); input gradient fold(W^T g); weight gradient g unfold(x)^T;
- transposed convolution: y = fold(W^T x); input gradient W unfold(g); weight gradient x unfold(g)^T.

The products with the weights run through `src/nets/skinny_products.py` (MKL is slow on these
shapes as they come). The backward is made of differentiable operators, so gradient penalties can
differentiate through it again. Same results up to float rounding.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.nets.layer_rewrite import output_pixels, rewrite_applies, switch_layers
from src.nets.skinny_products import columns_t_times_wide, wide_times_columns

#: transposed convolutions on inputs of at most this many pixels (8x8) take the product form;
#: from 16x16 oneDNN is as fast.
MAX_INPUT_PIXELS = 64
#: convolutions into at most this many pixels (4x4) take it: into 8x8 (the U-Net's 512 -> 512
#: layer from 16x16) the products were no faster than oneDNN in the training iteration.
MAX_OUTPUT_PIXELS = 16


def _columns(t: torch.Tensor) -> torch.Tensor:
    """[N, R, L] -> [R, N*L]: the images' columns side by side (a view for one image)."""
    n, r, length = t.shape
    return t[0] if n == 1 else t.transpose(0, 1).reshape(r, n * length)


def _images(columns: torch.Tensor, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """[R, N*L] -> a new contiguous [N, R, *shape] tensor (never a view: autograd lets the layers
    after these run in place)."""
    r = columns.shape[0]
    out = columns.new_empty(n, r, *shape)
    out.view(n, r, -1).copy_(columns.view(r, n, -1).transpose(0, 1))
    return out


def _finish_forward(ctx, y, x, weight, bias, stride, padding) -> torch.Tensor:
    """Add the bias and keep what the backward needs (the input, not its unfolded copy: the
    backward recomputes that, so it stays differentiable in x)."""
    if bias is not None:
        y += bias.view(1, -1, 1, 1)
    ctx.save_for_backward(x, weight)
    ctx.geometry = (x.shape[0], tuple(x.shape[2:]), stride, padding)
    ctx.has_bias = bias is not None
    return y


def _bias_gradient(ctx, grad_y: torch.Tensor) -> torch.Tensor | None:
    return grad_y.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None


class ConvolutionAsProduct(torch.autograd.Function):
    """F.conv2d(x, weight, bias, stride, padding) (no groups or dilation) as products."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        n, _, h, w = x.shape
        c_out, _, kh, kw = weight.shape
        out_hw = ((h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1)
        cols = _columns(F.unfold(x, (kh, kw), stride=stride, padding=padding))      # [C_in*k*k, N*L]
        y = _images(wide_times_columns(weight.reshape(c_out, -1), cols), n, out_hw)
        return _finish_forward(ctx, y, x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        n, in_hw, stride, padding = ctx.geometry
        c_out, _, kh, kw = weight.shape
        g = _columns(grad_y.reshape(n, c_out, -1))                                   # [C_out, N*L]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_cols = columns_t_times_wide(g, weight.reshape(c_out, -1)).t()       # [C_in*k*k, N*L]
            grad_x = F.fold(_images(grad_cols, n, (grad_cols.shape[1] // n,)), in_hw, (kh, kw),
                            stride=stride, padding=padding)
        if ctx.needs_input_grad[1]:
            cols = _columns(F.unfold(x, (kh, kw), stride=stride, padding=padding))
            grad_w = (g @ cols.t()).view(weight.shape)
        return grad_x, grad_w, _bias_gradient(ctx, grad_y), None, None


class ConvTransposeAsProduct(torch.autograd.Function):
    """F.conv_transpose2d(x, weight, bias, stride, padding) (no output padding, groups or
    dilation) as products."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        n, c_in, h, w = x.shape
        _, c_out, kh, kw = weight.shape
        out_hw = ((h - 1) * stride[0] - 2 * padding[0] + kh, (w - 1) * stride[1] - 2 * padding[1] + kw)
        x_cols = _columns(x.reshape(n, c_in, h * w))                                  # [C_in, N*H*W]
        patches = columns_t_times_wide(x_cols, weight.reshape(c_in, -1)).t()        # [C_out*k*k, N*H*W]
        y = F.fold(_images(patches, n, (h * w,)), out_hw, (kh, kw), stride=stride, padding=padding)
        return _finish_forward(ctx, y, x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        n, in_hw, stride, padding = ctx.geometry
        c_in, _, kh, kw = weight.shape
        grad_patches = _columns(F.unfold(grad_y, (kh, kw), stride=stride, padding=padding))  # [C_out*k*k, N*H*W]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _images(wide_times_columns(weight.reshape(c_in, -1), grad_patches), n, in_hw)
        if ctx.needs_input_grad[1]:
            x_cols = _columns(x.reshape(n, c_in, -1))
            grad_w = (x_cols @ grad_patches.t()).view(weight.shape)
        return grad_x, grad_w, _bias_gradient(ctx, grad_y), None, None


def conv2d_as_product(x, weight, bias, stride, padding) -> torch.Tensor:
    return ConvolutionAsProduct.apply(x, weight, bias, stride, padding)


def conv_transpose2d_as_product(x, weight, bias, stride, padding) -> torch.Tensor:
    return ConvTransposeAsProduct.apply(x, weight, bias, stride, padding)


def small_output_conv2d(layer: nn.Conv2d, x: torch.Tensor, max_output_pixels: float = MAX_OUTPUT_PIXELS
                        ) -> torch.Tensor | None:
    """`layer(x)` as products where it runs into at most `max_output_pixels` float32 CPU pixels;
    None elsewhere. Also the fallback of the Winograd layers below their minimum size (U-GAT-IT's
    and NICE-GAN's 1024 -> 2048 4x4 layer into 3x3: forward + backward 115 -> 68 ms)."""
    if (x.dim() == 4 and output_pixels(layer, x) <= max_output_pixels and rewrite_applies(x, layer.weight)
            and (layer.padding_mode == "zeros" or layer.padding == (0, 0))):
        return conv2d_as_product(x, layer.weight, layer.bias, layer.stride, layer.padding)
    return None


class GemmConv2d(nn.Conv2d):
    """nn.Conv2d that runs as products into small float32 CPU outputs, and as itself elsewhere.
    Only assigned as the class of an existing layer (`use_gemm_conv`), so parameters, hooks and
    state_dict keys stay the same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = small_output_conv2d(self, x)
        return y if y is not None else super().forward(x)


class GemmConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d that runs as products on small float32 CPU inputs, and as itself
    elsewhere. Only assigned as the class of an existing layer (`use_gemm_conv`)."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (output_size is None and x.dim() == 4 and x.shape[2] * x.shape[3] <= MAX_INPUT_PIXELS
                and rewrite_applies(x, self.weight)):
            return conv_transpose2d_as_product(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x, output_size)


def _plain(module: nn.Module) -> bool:
    return (module.groups == 1 and module.dilation == (1, 1) and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple))


def gemm_conv_eligible(module: nn.Module) -> bool:
    """A plain Conv2d: no groups or dilation, zero padding given as numbers."""
    return type(module) is nn.Conv2d and _plain(module)


def gemm_conv_transpose_eligible(module: nn.Module) -> bool:
    """A plain ConvTranspose2d, without output padding."""
    return type(module) is nn.ConvTranspose2d and _plain(module) and module.output_padding == (0, 0)


def use_gemm_conv(net: nn.Module) -> dict[str, int]:
    """Switch the eligible convolutions and transposed convolutions of `net` (those the other
    rewrites left); returns how many of each were switched."""
    return {"gemm_conv": len(switch_layers(net, gemm_conv_eligible, GemmConv2d)),
            "gemm_conv_transpose": len(switch_layers(net, gemm_conv_transpose_eligible, GemmConvTranspose2d))}
