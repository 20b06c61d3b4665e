"""Optimizer steps fused into the backward pass: each parameter is stepped, and its gradient
freed, as soon as backward has finished that gradient.

A player's step otherwise holds the gradients of all its parameters at once, at the end of
backward, while the optimizer runs: as much memory again as the player's weights (pix2pix's
U-Net: 0.22 GB, U-GAT-IT's discriminators: 0.45 GB). Adam updates every tensor on its own, so
stepping each one when its gradient is complete is the same update (the technique of PyTorch's
"optimizer step in backward" recipe), and at most a few gradients are alive at any time.

It applies only where nothing needs all gradients before the first step:
- fp16 loss scaling checks every gradient for inf/NaN before any step (scaled runs step after
  backward, as before);
- gradient clipping needs every gradient's norm before any step (clipped runs step after
  backward, as before);
- DDP averages gradients across processes in buckets that finish at the end of backward, after
  the per-parameter hooks have run (multi-process runs step after backward, as before).
"""
from __future__ import annotations

import contextlib

import torch

#: Parameters with fewer elements than this (256 KB in fp32) are left to the regular step after
#: backward. A step in backward is one `optimizer.step()` call per tensor, ~35 us of Python and
#: dispatch: 48 small tensors (fused Adam, 2 threads) take 1.70 ms one by one against 0.25 ms in
#: one step. Their gradients hold little memory (biases and norm parameters: 0.06-0.26% of the
#: elements of the paper configurations, 39-94 tensors), so stepping them early saves nothing;
#: for small models, where every tensor is this small, the per-tensor calls were ~6% of an
#: iteration (CycleGAN with 4 channels at 32 px: ~25 ms).
MIN_ELEMENTS = 1 << 16


def raw_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer behind Lightning's LightningOptimizer wrapper (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def step_one(optimizer: torch.optim.Optimizer, group: dict, param: torch.Tensor) -> None:
    """Run the optimizer's own step for one parameter of one of its groups only (its state, the
    group's current settings): every group is shown just that parameter, or nothing."""
    saved = [g["params"] for g in optimizer.param_groups]
    try:
        for g in optimizer.param_groups:
            g["params"] = [param] if g is group else []
        optimizer.step()
    finally:
        for g, params in zip(optimizer.param_groups, saved):
            g["params"] = params


@contextlib.contextmanager
def stepping_in_backward(optimizers, min_elements: int = 0):
    """Inside this block, a backward steps every trainable parameter of `optimizers` with at
    least `min_elements` elements as soon as its gradient is accumulated, then frees that
    gradient. Smaller parameters, and parameters that receive no gradient in the block, are left
    for the regular `step()` afterwards (it skips those without a gradient)."""
    handles = []

    def step_and_free(param: torch.Tensor, optimizer: torch.optim.Optimizer, group: dict) -> None:
        step_one(optimizer, group, param)
        param.grad = None

    try:
        for optimizer in map(raw_optimizer, optimizers):
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if param.requires_grad and param.numel() >= min_elements:
                        handles.append(param.register_post_accumulate_grad_hook(
                            lambda p, opt=optimizer, g=group: step_and_free(p, opt, g)))
        yield
    finally:
        for handle in handles:
            handle.remove()
