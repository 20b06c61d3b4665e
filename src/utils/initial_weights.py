"""Start a new run from the networks of another run's checkpoint (`init_from`).

Fine-tuning (a model trained on one dataset, trained on another), or a branch of a run that
goes on as a run of its own: other loss weights, another schedule, its own folder and logger
runs. Only the networks come from the file; the run itself starts afresh: iteration 0, new
optimizers and learning-rate schedules, empty image pools, an EMA that starts from the loaded
weights, a progressive model's growth from `model.start_resolution`. `ckpt_path` is the other
way: it continues the run that wrote the file, state and all.

A run that resumes (a named `ckpt_path`, or `ckpt_path=auto` finding this run's own checkpoint
after a requeue) takes its networks from that checkpoint: they started from `init_from` once
already, and loading it again would throw the run's training away.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from src.callbacks.ema import averaged_state_dict
from src.models.checkpoint_fit import (changed_settings, check_checkpoint_file, checkpoint_iteration, class_path,
                                       defaults_changed_since, read_by_this_run, read_training_checkpoint,
                                       state_dict_mismatch)

log = logging.getLogger(__name__)

#: which of a checkpoint's weights `init_from_weights` may take
WEIGHT_CHOICES = ("trained", "ema")


def initial_weights_to_load(cfg) -> str | None:
    """The `init_from` checkpoint a run starting from it loads (checked before any work: the
    choice of weights, and a whole file), or None: none is set, or the run resumes (its resolved
    `ckpt_path`), which takes its networks from its own checkpoint."""
    init_from = cfg.get("init_from")
    if init_from is None:
        return None
    if cfg.get("ckpt_path") is not None:
        log.info("Resuming from %s: init_from=%s is not loaded again (the run started from it)", cfg.ckpt_path, init_from)
        return None
    check_weight_choice(cfg.get("init_from_weights", "trained"))
    check_checkpoint_file(init_from, "init_from")
    return str(init_from)


def check_weight_choice(weights: str) -> None:
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"init_from_weights={weights!r}: choose one of {', '.join(WEIGHT_CHOICES)}")


def same_lineage(recorded: str, cls: type, init_from: str | Path) -> bool:
    """Whether the checkpoint's model class (a name read from the file, checked to be a model of
    src.models before it is imported) and `cls` are one a subclass of the other: a variant of a
    model (another loss, say) may start from the model's trained networks, which the exact
    state_dict comparison then checks."""
    from src.utils.checkpoint_loading import model_class   # (it imports the models: not at module import)

    try:
        saved = model_class(recorded, f"init_from={init_from}")
    except (ValueError, TypeError, ImportError):   # a class of elsewhere, or renamed since: another model
        return False
    return issubclass(cls, saved) or issubclass(saved, cls)


def start_from_checkpoint(model: torch.nn.Module, init_from: str | Path, weights: str = "trained",
                          data_settings: dict | None = None) -> None:
    """Load the networks of the checkpoint `init_from` into `model`, as they were trained
    (`weights="trained"`) or with its EMA's averaged sampling networks (`"ema"`: the generators,
    and NICE-GAN's encoders, which its discriminators share; every other part of a discriminator
    is the trained one). A ValueError naming the setting and the fix for a
    checkpoint of another model class or of networks of other shapes."""
    check_weight_choice(weights)
    checkpoint = read_training_checkpoint(init_from, key="init_from")
    here = class_path(model)
    recorded = checkpoint.get("model_class")
    if recorded is not None and recorded != here and not same_lineage(recorded, type(model), init_from):
        raise ValueError(f"init_from={init_from} holds a {recorded.rsplit('.', 1)[-1]}, and this run builds a "
                         f"{type(model).__name__}: choose the checkpoint's model (model=...) or another checkpoint")
    state_dict = checkpoint["state_dict"]
    if weights == "ema":
        state_dict = averaged_state_dict(checkpoint)
        if state_dict is None:
            raise ValueError(f"init_from_weights=ema: the run that wrote init_from={init_from} kept no EMA of its "
                             f"generators (callbacks.ema.enabled was false): use init_from_weights=trained")
    mismatch = state_dict_mismatch(model.state_dict(), state_dict)
    if mismatch is not None:
        raise ValueError(f"init_from={init_from}: its networks do not fit the {type(model).__name__} this run builds "
                         f"({mismatch}). The networks start from the checkpoint's as they are, so the network "
                         f"settings ({model.network_settings()}, data.input_nc/output_nc, and data.crop_size for "
                         f"ProGAN, StyleGAN and full U-GAT-IT and NICE-GAN) must be those of the run that wrote it")
    model.load_state_dict(state_dict, strict=True)
    iteration = checkpoint_iteration(checkpoint, model)
    log.info("Networks from %s (its iteration %d, %s weights); iteration, optimizers, schedules and image pools "
             "start afresh", init_from, iteration, weights)
    changed = read_by_this_run(changed_settings(checkpoint, dict(model.hparams), data_settings or {})
                               + defaults_changed_since(checkpoint, data_settings or {}, model), model,
                               data_settings or {})
    if changed:
        log.info("Settings that differ from the run that wrote init_from: %s", "; ".join(changed))
