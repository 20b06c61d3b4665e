"""Sampling a generator's batch norm with the statistics of a fixed reference batch.

The DCGAN, WGAN, WGAN-GP and InfoGAN code sample with the generator in training mode: every
batch-norm layer normalises a batch of samples by that batch's own mean and variance (never by
running averages, which lag behind a generator that changes every step). Done literally, a
sample would depend on which others share its batch: the batch size, the DDP shard, the varied
rows of a code traversal. Instead every sample is normalised by the statistics of one fixed batch
of latents generated beside it (a reference batch, as in virtual batch norm): as in the code, the
current generator's batch moments at the training batch size, and each sample a function of its
own latent only.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn


def tracked_batch_norms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers that normalise by running buffers in eval mode (the ones without
    buffers normalise by the batch in every mode already)."""
    return [m for m in net.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]


@contextlib.contextmanager
def reference_batch_statistics(net: nn.Module, rows: int) -> Iterator[None]:
    """Inside the block, each tracked batch-norm layer of `net` (in eval mode) normalises its
    whole input by the mean and biased variance of the input's first `rows` rows, exactly as a
    training-mode layer normalises those rows alone; the running buffers are put back after."""
    layers = tracked_batch_norms(net)
    saved = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in layers]

    def normalise_by_reference_rows(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        reference = inputs[0][:rows]
        dims = [0, *range(2, reference.dim())]   # per channel, over the batch (and positions)
        var, mean = torch.var_mean(reference.float(), dim=dims, correction=0)
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)

    handles = [layer.register_forward_pre_hook(normalise_by_reference_rows) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for layer, (mean, var) in zip(layers, saved):
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
