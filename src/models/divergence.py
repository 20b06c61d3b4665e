"""Stopping a diverged run before it trains on, and saves, weights that are NaN or infinite.

A NaN or infinite loss in fp32 or bf16 gives NaN gradients, and one Adam step with them makes
every weight of that player NaN for good (the generators' average, the EMA, follows). Left
running, the run would go on for hours and replace its good checkpoints (last.ckpt, the
periodic file) with NaN ones, and `ckpt_path=auto` would resume those. Here the losses are
checked on the iterations they are logged (already on the host then: no extra wait for the
GPU; under DDP the weights instead, the same on every rank), and the weights before every
checkpoint save; either stops the run with `TrainingDiverged`, naming the iteration, the term
or tensor, and the last checkpoint saved.

Under fp16 loss scaling an overflowing loss is expected now and then: the scaler skips that
step and the weights stay finite. There the losses are not checked, and the loss scales are:
a scale that keeps falling means the player's steps are being skipped, iteration after
iteration: warned of below 1, and the run stopped as diverged below 2**-16 (a sweep then
records the trial as diverged, rather than training a frozen player for hours).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

#: a loss scale below this means the player's gradients overflowed fp16 even unscaled (the
#: scale starts at 2**16 and halves on each overflow): its steps are being skipped
LOW_LOSS_SCALE = 1.0
#: a loss scale below this means its gradients overflowed fp16 at 2**-16 of their size: 32 more
#: skipped steps than 2000-step growth intervals since the start; the player has stopped
#: training, and the run has diverged as surely as one whose fp32 loss went NaN
DIVERGED_LOSS_SCALE = 2.0 ** -16


class TrainingDiverged(FloatingPointError):
    """The run's losses or weights are NaN or infinite."""


def first_non_finite(module: nn.Module) -> str | None:
    """The name of the first parameter of `module` holding a NaN or an infinity, or None when
    all are finite (one wait for the device, not one per tensor). Parameters only: under DDP
    they are the same on every rank, where buffers (batch norm's running statistics) are not,
    and every rank must come to the same answer."""
    named = [(name, t) for name, t in module.named_parameters() if t.numel()]
    if not named:
        return None
    with torch.no_grad():
        finite = torch.stack([torch.isfinite(t).all() for _, t in named]).cpu()
    bad = (~finite).nonzero()
    return named[int(bad[0])][0] if len(bad) else None


def refuse_non_finite_weights(module: nn.Module, iteration: int, context: str = "") -> None:
    """TrainingDiverged where a weight of `module` is not finite; `context` is added to the
    message (before a save: the latest checkpoint the run wrote)."""
    tensor = first_non_finite(module)
    if tensor is not None:
        raise TrainingDiverged(diverged_message(f"{tensor} is not finite{context}", iteration))


def refuse_saving_non_finite(module, last_saved: str | None) -> None:
    """Before a checkpoint save of `module` (an AdversarialModel): a diverged run stops rather
    than write NaN weights over its good files; the message names the last file it saved."""
    refuse_non_finite_weights(module, module.iteration,
                              f" (checked before saving a checkpoint); the last saved is {last_saved or 'none'}")


def non_finite_losses(names, values: torch.Tensor) -> dict[str, float]:
    """The logged loss names whose values (host tensor, one per name) are NaN or infinite."""
    return {name: float(v) for name, v in zip(names, values.tolist()) if not math.isfinite(v)}


def divergence_of(error: BaseException) -> TrainingDiverged | None:
    """`error` as TrainingDiverged where it is one, also where a process Lightning spawned
    (`ddp_spawn`) raised it: the main process then gets torch's ProcessRaisedException, which
    carries the rank's traceback as text only. None for any other error."""
    if isinstance(error, TrainingDiverged):
        return error
    if isinstance(error, torch.multiprocessing.ProcessRaisedException):
        marker = f"{TrainingDiverged.__name__}: "
        raised = [line.split(marker, 1)[1] for line in str(error).splitlines() if marker in line]
        if raised:
            return TrainingDiverged(raised[-1])
    return None


def diverged_message(where: str, iteration: int) -> str:
    # (also where the run saved nothing yet: a divergence in its first iterations)
    return (f"Training diverged at iteration {iteration}: {where}. The run stops here rather than train on, and "
            f"overwrite its checkpoints, with weights that are not finite; any checkpoint it saved holds finite "
            f"weights (each is checked before it is saved), last.ckpt the latest. A lower learning rate "
            f"(model.optimizer.lr), a smaller loss weight, gradient clipping (+trainer.gradient_clip_val=1.0), "
            f"trainer.precision=32 or a new seed may avoid it, from the start or from a saved checkpoint "
            f"(ckpt_path=...): a resume with a lower model.optimizer.lr scales its restored rates and schedule by "
            f"new / saved.")
