"""Check, before the first training step, that the networks can run on the images they get.

An image size the networks cannot take otherwise fails deep inside a forward pass, with a
message about tensor sizes that names no setting (a U-Net's skip connection: "Sizes of tensors
must match"; a discriminator that runs out of pixels: "Padding size should be less than the
corresponding input dimension"), or, worse, a generator whose output is not the input's size
(a ResNet generator given 30 px returns 32). So the first batch's shape goes through every
network the training step runs, on the meta device: shapes only, no arithmetic, no memory, a
few milliseconds. Where a network fails, the error names the image size, the network, the
nearest sizes every network accepts, and the settings that choose them.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.func import functional_call

from src.utils.directions import translated_directions

log = logging.getLogger(__name__)

#: how many multiples of the generators' size step to try on each side of a failing size
SEARCH_STEPS = 64


class _Call(nn.Module):
    """Runs `fn` with `root`'s parameters and buffers swapped by `functional_call`."""

    def __init__(self, root: nn.Module, fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.root = root
        # Not registered as a submodule when `fn` is a network: its parameters would then have
        # a second name, which functional_call would swap but not put back.
        self.__dict__["fn"] = fn

    def forward(self, *args: torch.Tensor):
        return self.fn(*args)


def run_on_meta(model: nn.Module, fn: Callable[..., object], *args: torch.Tensor) -> object:
    """`fn(*args)` with every parameter and buffer of `model` replaced by a meta tensor of its
    shape: the model's own tensors (weights, spectral-norm vectors, running statistics) are
    neither read nor written. Compiled networks run eagerly (no compilation for meta inputs)."""
    state = {f"root.{name}": torch.empty_like(tensor, device="meta")
             for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
    # Tensors kept as plain attributes (torch's spectral norm sets `module.weight` in a forward
    # pre-hook) would be left as meta tensors: put them back.
    attributes = [(module.__dict__, key, value) for module in model.modules()
                  for key, value in vars(module).items() if isinstance(value, torch.Tensor)]
    # SyncBatchNorm (trainer.sync_batchnorm) refuses a tensor off the GPU in training mode once
    # the process group exists: in eval mode it normalises alone, with the same output shape.
    synced = [module for module in model.modules() if isinstance(module, nn.SyncBatchNorm) and module.training]
    try:
        for module in synced:
            module.training = False
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            return functional_call(_Call(model, fn), state, args)
    finally:
        for module in synced:
            module.training = True
        for namespace, key, value in attributes:
            namespace[key] = value


def first_conv_channels(net: nn.Module) -> int | None:
    """Channels of the first convolution a net runs; None for a net without one."""
    return next((m.in_channels for m in net.modules() if isinstance(m, nn.Conv2d)), None)


def _stride_product(net: nn.Module) -> int:
    """Downsampling factor of a net without a declared `size_multiple`: the product of its
    conv strides (the convs of these nets run one after another, none in parallel branches)."""
    factor = 1
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            factor *= max(module.stride)
    return factor


def size_multiple(model, direction: str) -> int:
    """What every image side must be a multiple of for this translation.

    A net's declared `size_multiple` wins; otherwise its conv strides tell (NICE-GAN's source
    encoder: two stride-2 convs -> 4; its decoder-only generator: 1). Nets run in a chain, so
    their factors multiply.
    """
    return math.prod(getattr(net, "size_multiple", None) or _stride_product(net)
                     for net in model.translation_nets(direction))


def input_channels(model, direction: str) -> int:
    """Channels the translation reads: those of the first convolution it runs."""
    for net in model.translation_nets(direction):
        if (channels := first_conv_channels(net)) is not None:
            return channels
    raise ValueError(f"{type(model).__name__} {direction}: no convolution found to read the input channels from")


def meta_translation(model, direction: str, batch_size: int, height: int, width: int) -> torch.Tensor | str:
    """The `direction` translation of such a batch, run on the meta device, or what goes wrong.
    (An operator without a meta kernel raises NotImplementedError: the callers' to skip.)"""
    x = torch.empty(batch_size, input_channels(model, direction), height, width, device="meta")
    try:
        y = run_on_meta(model, lambda t: model.translation_forward(t, direction), x)
    except (RuntimeError, ValueError) as error:
        return f"the {direction} translation fails: {error}"
    if not isinstance(y, torch.Tensor):   # an added model's generator with several outputs (image, mask)
        raise TypeError(f"{type(model).__name__}.translation_forward(x, {direction!r}) returns a "
                        f"{type(y).__name__}, not the translated images: a generator with several outputs needs "
                        f"translation_forward overridden to return the image (as U-GAT-IT's does)")
    return y


def output_channels(model, direction: str, batch_size: int, height: int, width: int) -> int | None:
    """Channels the `direction` translation writes for such a batch, or None where it cannot run
    on it (check_image_size names that)."""
    try:
        y = meta_translation(model, direction, batch_size, height, width)
    except NotImplementedError:
        return None
    return None if isinstance(y, str) else y.shape[1]


def size_step(model) -> int:
    """What every side must be a multiple of for the model's translations."""
    return max(size_multiple(model, direction) for direction in translated_directions(model)[0])


def translation_failure(model, direction: str, batch_size: int, height: int, width: int) -> str | None:
    """What goes wrong when the `direction` translation runs on `height` x `width` images, or
    None when it runs and keeps the size."""
    y = meta_translation(model, direction, batch_size, height, width)
    if isinstance(y, str):
        return y
    if tuple(y.shape[-2:]) != (height, width):
        return f"the {direction} translation returns {y.shape[-2]}x{y.shape[-1]} px images"
    return None


def first_failure(model, batch_size: int, height: int, width: int) -> str | None:
    """What goes wrong when the model's networks run on batches of `height` x `width` images,
    or None when every translation keeps the size and every discriminator runs."""
    for direction in translated_directions(model)[0]:   # pix2pix translates one way
        failure = translation_failure(model, direction, batch_size, height, width)
        if failure is not None:
            return failure
    for net in model.image_discriminators():
        x = torch.empty(batch_size, first_conv_channels(net), height, width, device="meta")
        try:
            run_on_meta(model, net, x)
        except (RuntimeError, ValueError) as error:
            return f"the discriminator {type(net).__name__} fails: {error}"
    return None


def nearest_accepted(accepted: Callable[[int], bool], side: int, step: int) -> tuple[int | None, int | None]:
    """The largest square side below `side` and the smallest above it, among the SEARCH_STEPS
    multiples of `step` on each side of it, that `accepted` takes (None where none is)."""
    below = range((side - 1) // step * step, 0, -step)[:SEARCH_STEPS]
    above = range((side // step + 1) * step, (side // step + 1 + SEARCH_STEPS) * step, step)
    return next(filter(accepted, below), None), next(filter(accepted, above), None)


def nearest_sizes_text(below: int | None, above: int | None) -> str:
    return " or ".join(f"{s}x{s}" for s in (below, above) if s is not None)


def check_translation_size(model, direction: str, height: int, width: int, what: str,
                           fix: str = "resize the input to one of them") -> None:
    """Raise a ValueError naming `what` (an input file, the export size) and `fix` when the
    `direction` translation cannot run on `height` x `width` images (padded to its size multiple)."""
    try:
        failure = translation_failure(model, direction, 1, height, width)
    except NotImplementedError as error:   # an operator without a meta kernel: nothing to learn here
        log.warning("Image size check skipped: %s", error)
        return
    if failure is None:
        return
    step = size_multiple(model, direction)
    below, above = nearest_accepted(lambda s: translation_failure(model, direction, 1, s, s) is None,
                                    min(height, width), step)
    nearest = nearest_sizes_text(below, above) or f"none within {SEARCH_STEPS} steps of {step} px"
    raise ValueError(f"{what}: {type(model).__name__} cannot translate {height}x{width} px images: {failure}. "
                     f"The nearest square sizes it translates: {nearest}; {fix}.")


def check_image_size(model, images: torch.Tensor) -> None:
    """Raise a ValueError naming the data settings when the model's networks cannot train on
    batches shaped like `images` (N, C, H, W)."""
    batch_size, _, height, width = images.shape
    try:
        failure = first_failure(model, batch_size, height, width)
    except NotImplementedError as error:   # an operator without a meta kernel: nothing to learn here
        log.warning("Image size check skipped: %s", error)
        return
    if failure is None:
        return
    step = size_step(model)
    below, above = nearest_accepted(lambda s: first_failure(model, batch_size, s, s) is None,
                                    min(height, width), step)
    accepted = nearest_sizes_text(below, above)
    networks = model.network_settings()
    hint = (f"the nearest square size its networks accept: {accepted}" if accepted else
            f"no square size within {SEARCH_STEPS} steps of {step} px works: check the networks' depth ({networks})")
    raise ValueError(
        f"{type(model).__name__} cannot train on {height}x{width} px images (batch {batch_size}): {failure}. "
        f"Image sides must be multiples of {step} px for its generators, and {hint}. Set data.crop_size "
        f"(data.size for the embedded shapes datasets; data.load_size too with preprocess=scale_width; "
        f"preprocess=none keeps each image's own size: resize the dataset, or choose a cropping preprocess), "
        f"or make the networks shallower or deeper ({networks}).")
