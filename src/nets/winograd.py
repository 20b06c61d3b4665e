"""3x3 and 4x4 stride-1 convolutions by Winograd's F(4x4, 3x3) and F(3x3, 4x4) on the CPU.

Each 6x6 input tile (4x4 outputs of a 3x3 kernel, or 3x3 of a 4x4 one) costs 36
multiplications per input channel instead of 144: input tiles and weights are transformed,
multiplied in 36 batched matrix products (MKL, through `torch.bmm`), and the products
transformed back. The backward pass is the same algorithm
run through its adjoints, so the gradients cost as little as the forward: the input gradient
comes from the output gradient's transform and the weights' transposed products, the weight
gradient from the same output-gradient transform against the input's tiles (recomputed, not
stored, to keep the memory of a plain convolution). The layer's padding, reflected or zeros, is
applied while the tiles are read (and folded back in the input gradient), so no padded copy of
the input is made, run through its own backward, or kept for the backward.

Same result as `F.conv2d` up to float rounding (relative error ~2e-6 in fp32, against ~1e-7 for
a direct convolution: the transforms multiply by up to 8 and 1/24). The tile transforms are C
kernels (`winograd_kernels.c`, built on first use by `winograd_build`).
"""
import math
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.optim.optimizer import register_optimizer_step_post_hook

from src.nets.gemm_conv import MAX_OUTPUT_PIXELS, small_output_conv2d
from src.nets.layer_rewrite import output_pixels, rewrite_applies, switch_layers
from src.nets.winograd_build import kernels

_scratch_buffers = threading.local()
#: the largest buffer kept for reuse (elements; 64 MB). Training's are below ~10 MB; a
#: full-resolution photo's (translate.py) reach GBs, which kept would stay with the thread for
#: the life of the process, and which are few enough that their zero-filling costs little
#: against their convolutions.
MAX_KEPT_SCRATCH = 16 * 2**20


def _scratch(slot: str, *shape: int) -> torch.Tensor:
    """A reusable float32 CPU buffer for intermediates that never leave one forward or backward.

    Each call allocates and frees ~10 of them (up to 9 MB each at 64x64): fresh memory from the
    kernel is zero-filled page by page on first touch, which cost as much as the transforms.
    One buffer per slot and thread, grown to the largest size asked for up to MAX_KEPT_SCRATCH
    (a larger one is allocated for the call); four slots (weight tiles, input tiles, products,
    weight-gradient tiles), the middle two reused in the backward once their forward use is over.
    """
    buffers = _scratch_buffers.__dict__
    numel = 1
    for size in shape:
        numel *= size
    if numel > MAX_KEPT_SCRATCH:   # (its weight transform is not recorded: _weight_tiles)
        return torch.empty(shape)
    if slot not in buffers or buffers[slot].numel() < numel:
        buffers[slot] = torch.empty(numel)
        if slot == "weight_tiles":
            buffers.pop("weight_tiles_of", None)   # the transform it held is gone
    return buffers[slot][:numel].view(shape)


#: Counts optimizer steps in this process: a step may change weights without bumping their
#: version counters (fused Adam writes them in place, unseen by autograd).
_optimizer_steps = 0


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


@dataclass(frozen=True)
class Variant:
    """One Winograd algorithm F(m x m, r x r): `outputs` = m per tile side, `kernel` = r, and the
    prefix of its C functions. Both use 6x6 tiles (m + r - 1 = 6), so 36 products."""
    outputs: int
    kernel: int
    prefix: str

    def tiles(self, size: int) -> int:
        """Tiles along an input side of `size` (a valid convolution's output, rounded up)."""
        return -(-(size - self.kernel + 1) // self.outputs)

    def run(self, name: str, *args) -> None:
        getattr(kernels(), self.prefix + name)(*args, torch.get_num_threads())


#: F(4x4, 3x3) for 3x3 kernels and F(3x3, 4x4) for 4x4 kernels (the PatchGAN's stride-1 layer).
VARIANTS = {3: Variant(4, 3, "winograd_"), 4: Variant(3, 4, "winograd_k4_")}


@dataclass(frozen=True)
class Padding:
    """Padding the input transform applies as it reads the input: `rows` above and below,
    `columns` left and right, reflected (as nn.ReflectionPad2d) or zeros."""
    rows: int = 0
    columns: int = 0
    reflect: bool = False

    def padded_size(self, x: torch.Tensor) -> tuple[int, int]:
        """Height and width of x once padded."""
        return x.shape[2] + 2 * self.rows, x.shape[3] + 2 * self.columns

    def args(self, x: torch.Tensor) -> tuple[int, ...]:
        """The C kernels' arguments describing x's planes and this padding."""
        return x.shape[2], x.shape[3], self.rows, self.columns, int(self.reflect)


NO_PADDING = Padding()


def _weight_tiles(weight: torch.Tensor, v: Variant) -> torch.Tensor:
    """weight (K, C, r, r) -> its transform (36, K, C).

    The last transform is kept, with what it was made from: the same weight tensor, unchanged
    since (its version counter, and no optimizer step in between), gets it back. A layer run
    twice before its step (pix2pix's discriminator on the real and the fake pair, then the input
    gradients of both) transforms its weights once instead of four times (2.2 ms each for the
    PatchGAN's 512 x 256 x 4 x 4 weights). Its storage is compared too: `Module.to`/`.float()`
    and `weight.data = ...` swap it without a version bump. A weight written in place through
    `.data` outside an optimizer step changes neither and would not be seen: write weights under
    `torch.no_grad()` instead (as `load_state_dict` and the EMA callback do). An inference
    tensor (torch.inference_mode) has no version: transformed every time. The storage compared is
    held until the next transform: freed, its address could be handed to the storage swapped in,
    which would then pass for it (seen once in a test run: `.data` swapped twice in a row).
    """
    k, c = weight.shape[:2]
    u = _scratch("weight_tiles", 36, k, c)
    made_from = None if weight.is_inference() else (weight._version, weight.data_ptr(), _optimizer_steps, v)
    held = _scratch_buffers.__dict__.get("weight_tiles_of")
    if made_from is not None and held is not None and held[0]() is weight and held[1] == made_from:
        return u
    v.run("weight_transform", weight.data_ptr(), u.data_ptr(), k, c)
    if u.numel() <= MAX_KEPT_SCRATCH:   # in the kept buffer: a later call may find it there
        _scratch_buffers.weight_tiles_of = (weakref.ref(weight), made_from, weight.untyped_storage())
    return u


def _input_tiles(x: torch.Tensor, pad: Padding, th: int, tw: int, v: Variant) -> torch.Tensor:
    """x (N, C, H, W), contiguous -> the transformed tiles (36, C, N*th*tw) of x padded by `pad`,
    then zero-padded at the bottom/right to the tiles' extent."""
    n, c = x.shape[:2]
    tiles = _scratch("input_tiles", 36, c, n * th * tw)
    v.run("input_transform", x.data_ptr(), tiles.data_ptr(), n, c, th, tw, *pad.args(x))
    return tiles


def _tiling(x: torch.Tensor, weight: torch.Tensor, pad: Padding) -> tuple[Variant, int, int, int, int]:
    """The layer's algorithm, its output's height and width, and the tiles along each (the tiles
    may cover a few rows and columns more than the output)."""
    v = VARIANTS[weight.shape[2]]
    h, w = pad.padded_size(x)
    return v, h - v.kernel + 1, w - v.kernel + 1, v.tiles(h), v.tiles(w)


class WinogradConvolution(torch.autograd.Function):
    """y = conv2d(pad(x), weight, bias) for an r x r kernel (r = 3 or 4), stride 1, x contiguous."""

    @staticmethod
    def forward(ctx, x, weight, bias, pad):
        v, out_h, out_w, th, tw = _tiling(x, weight, pad)
        n, k = x.shape[0], weight.shape[0]
        u = _weight_tiles(weight, v)                                     # (36, K, C)
        tiles = _input_tiles(x, pad, th, tw, v)                          # (36, C, P)
        m = torch.bmm(u, tiles, out=_scratch("products", 36, k, tiles.shape[2]))  # (36, K, P)
        y = x.new_empty(n, k, v.outputs * th, v.outputs * tw)
        bias = bias.contiguous() if bias is not None else None   # held until the kernel returns
        v.run("output_transform", m.data_ptr(), bias.data_ptr() if bias is not None else None,
              y.data_ptr(), n, k, th, tw)
        # The weight, not its 36/r^2 times larger transform: recomputing it costs less than holding it.
        ctx.save_for_backward(x, weight)
        ctx.pad, ctx.has_bias = pad, bias is not None
        # A copy, not a view of the whole tiles: an in-place op on a custom Function's view output
        # (a LeakyReLU(inplace=True) after the layer) is an error.
        return y[:, :, :out_h, :out_w].contiguous() if y.shape[2:] != (out_h, out_w) else y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        pad = ctx.pad
        v, out_h, out_w, th, tw = _tiling(x, weight, pad)
        n, c = x.shape[:2]
        k, r = weight.shape[0], v.kernel
        extra_h, extra_w = v.outputs * th - out_h, v.outputs * tw - out_w
        if extra_h or extra_w:
            grad_y = F.pad(grad_y, (0, extra_w, 0, extra_h))
        grad_y = grad_y.contiguous()
        grad_m = _scratch("products", 36, k, n * th * tw)
        v.run("output_transform_adjoint", grad_y.data_ptr(), grad_m.data_ptr(), n, k, th, tw)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_v = torch.bmm(_weight_tiles(weight, v).transpose(1, 2), grad_m,
                               out=_scratch("input_tiles", 36, c, n * th * tw))  # (36, C, P)
            grad_x = torch.empty_like(x)
            v.run("input_transform_adjoint", grad_v.data_ptr(), grad_x.data_ptr(), n, c, th, tw, *pad.args(x))
        if ctx.needs_input_grad[1]:
            # a buffer of its own: the weight tiles may serve this layer's next pass
            grad_u = torch.bmm(grad_m, _input_tiles(x, pad, th, tw, v).transpose(1, 2),
                               out=_scratch("weight_gradient_tiles", 36, k, c))
            grad_w = weight.new_empty(k, c, r, r)
            v.run("weight_transform_adjoint", grad_u.data_ptr(), grad_w.data_ptr(), k, c)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


def winograd_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  pad: Padding = NO_PADDING) -> torch.Tensor:
    """conv2d(x padded by `pad`, weight, bias) with a 3x3 or 4x4 kernel, stride 1, by Winograd
    F(4x4, 3x3) or F(3x3, 4x4)."""
    r = weight.shape[2] if weight.dim() == 4 else 0
    if (x.dim() != 4 or r not in VARIANTS or weight.shape[3] != r
            or min(pad.padded_size(x)) < r):
        raise ValueError(f"winograd_conv needs a (N, C, H, W) input at least as large as a 3x3 or 4x4 "
                         f"kernel once padded, got input {tuple(x.shape)}, {pad} and weight {tuple(weight.shape)}")
    if pad.reflect and (pad.rows >= x.shape[2] or pad.columns >= x.shape[3]):
        raise ValueError(f"reflection padding must be smaller than the input it pads: {pad} for input "
                         f"{tuple(x.shape)}")
    return WinogradConvolution.apply(x.contiguous(), weight.contiguous(), bias, pad)


#: Below their Winograd minimum, layers run as products into at most this many pixels (by kernel
#: size), and as torch's convolution above. oneDNN's backward of 4x4 stride-1 layers is slow at
#: every size measured: 256 -> 512 forward + backward into 5x5 30.3 ms against 9.9 as products,
#: 7x7 14.8 against 9.8, 8x8 19.6 against 8.6, 9x9 14.3 against 11.5 (512 -> 1024 into 7x7 1.33x,
#: 128 -> 256 level). 3x3 layers only into a few pixels, as every other convolution: torch's was
#: faster from 6x6 (256 channels into 6x6 to 12x12 3.1-6.6 ms against 3.9-8.7).
MAX_PRODUCT_OUTPUT_PIXELS = {3: MAX_OUTPUT_PIXELS, 4: math.inf}


class WinogradConv2d(nn.Conv2d):
    """nn.Conv2d that runs by Winograd where it can: float32 CPU tensors of at least
    `min_output_pixels` outputs, outside autocast, tracing, scripting, compilation and export.
    Below that it runs as products (`small_output_conv2d`, up to MAX_PRODUCT_OUTPUT_PIXELS),
    elsewhere as the plain convolution.

    Only ever assigned as the class of an existing 3x3 or 4x4, stride-1, dilation-1, ungrouped
    nn.Conv2d (`use_winograd`), so parameters, hooks and state_dict keys stay the same.
    """

    #: below this many output pixels per image the weight transform outweighs the savings
    min_output_pixels = 0
    #: reflection padding (rows, columns) taken over from the nn.ReflectionPad2d before the layer
    #: (`merge_reflection_padding`); the layer's own `padding` is then zero
    merged_reflection = (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = self.merged_reflection
        if output_pixels(self, x, merged) >= self.min_output_pixels and rewrite_applies(x, self.weight):
            return winograd_conv(x, self.weight, self.bias, self._transform_padding())
        if merged != (0, 0):
            x = F.pad(x, (merged[1], merged[1], merged[0], merged[0]), mode="reflect")
        small = small_output_conv2d(self, x, MAX_PRODUCT_OUTPUT_PIXELS[self.kernel_size[0]])
        return small if small is not None else super().forward(x)

    def _transform_padding(self) -> Padding:
        if self.merged_reflection != (0, 0):
            return Padding(*self.merged_reflection, reflect=True)
        return Padding(*self.padding, reflect=self.padding_mode == "reflect")   # zeros or reflect: winograd_eligible


class ReflectionPadInNextLayer(nn.ReflectionPad2d):
    """An nn.ReflectionPad2d whose padding the Winograd layer after it applies as it reads its
    input (`merge_reflection_padding`): it passes its input on unchanged. Only assigned as the
    class of an existing pad, so switching both layers back to torch's classes restores the pair."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def merge_reflection_padding(net: nn.Module) -> None:
    """Move the padding of each nn.ReflectionPad2d that feeds a Winograd layer directly (the next
    layer of an nn.Sequential) into that layer. The pad and the
    convolution then cost one pass over the input instead of three (pad, its backward, and the
    padded copy the backward keeps): 2-3% of a ResNet generator's iteration."""
    for sequence in net.modules():
        if not isinstance(sequence, nn.Sequential):
            continue
        layers = list(sequence.children())
        for pad, conv in zip(layers, layers[1:]):
            if type(pad) is not nn.ReflectionPad2d or type(conv) is not WinogradConv2d or conv.padding != (0, 0):
                continue
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                pad.__class__ = ReflectionPadInNextLayer
                conv.merged_reflection = (top, left)


def winograd_eligible(conv: nn.Module, min_channels: int = 1) -> bool:
    """A plain 3x3 or 4x4, stride-1, dilation-1, ungrouped Conv2d with zero or reflection padding
    and enough input channels."""
    return (type(conv) is nn.Conv2d and conv.kernel_size in ((3, 3), (4, 4)) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and isinstance(conv.padding, tuple)
            and conv.padding_mode in ("zeros", "reflect") and conv.in_channels >= min_channels)


def use_winograd(net: nn.Module, min_channels: int = 1, min_output_pixels: int | Mapping[int, int] = 0) -> int:
    """Run the eligible convolutions of `net` by Winograd; returns how many were switched.
    `min_output_pixels`: one minimum for every layer, or one per kernel size ({3: ..., 4: ...})."""
    layers = switch_layers(net, lambda m: winograd_eligible(m, min_channels), WinogradConv2d)
    for layer in layers:
        layer.min_output_pixels = (min_output_pixels[layer.kernel_size[0]] if isinstance(min_output_pixels, Mapping)
                                   else min_output_pixels)
    merge_reflection_padding(net)
    return len(layers)
