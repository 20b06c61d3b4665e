"""Interleaved A/B within one benchmark run (`ab=<setting>` in conf/bench.yaml).

On the shared hosts this project is measured on, whole runs of unchanged code drift by +-10%
(experiments/bench/README.md), more than most optimisations are worth; comparing two runs, even
back to back, then says little. Here one run switches a setting on for even iterations and off
for odd ones, so both settings meet nearly the same host conditions, and the medians of the two
halves compare like for like. A slow spell can still fall on more iterations of one half:
measure 10 or more of each.

Only settings that can change between iterations of a live model qualify:
- `fast_conv`: the rewritten convolution layers (src/nets/fast_conv.py) swap to torch's class
  and back (they only override `forward`, so parameters and state are untouched);
- `step_in_backward`: `model.optimizer.step_in_backward`, read at every update.
"""
from __future__ import annotations

import statistics
from typing import Any, Callable

import torch.nn as nn

from src.nets.fast_conv import REWRITTEN_LAYERS

Toggle = Callable[[bool], None]


def _fast_conv(model: nn.Module) -> Toggle:
    layers = [(m, type(m)) for m in model.modules() if isinstance(m, REWRITTEN_LAYERS)]
    if not layers:
        raise ValueError("ab=fast_conv: this model has no rewritten convolution layers "
                         "(model.fast_conv=false, or none qualifies), so there is nothing to compare")

    def toggle(on: bool) -> None:
        for layer, rewritten in layers:
            layer.__class__ = rewritten if on else rewritten.__mro__[1]   # the torch class it extends
    return toggle


def _step_in_backward(model: nn.Module) -> Toggle:
    def toggle(on: bool) -> None:
        model.optimizer_cfg["step_in_backward"] = on
    return toggle


TOGGLES: dict[str, Callable[[nn.Module], Toggle]] = {"fast_conv": _fast_conv, "step_in_backward": _step_in_backward}


def make_toggle(setting: str, model: nn.Module) -> Toggle:
    if setting not in TOGGLES:
        raise ValueError(f"ab={setting!r} cannot be switched within a run; choose one of {sorted(TOGGLES)} "
                         "(conf/bench.yaml: ab), or compare separate runs with `tweaks`")
    return TOGGLES[setting](model)


def setting_is_on(batch_idx: int) -> bool:
    """The setting is on for even iterations (warm-up included, so both paths warm up)."""
    return batch_idx % 2 == 0


def split_times(times: list[float], first_timed: int, setting: str) -> dict[str, Any]:
    """The timed iterations' times by setting, with their medians, and the median over pairs of
    neighbouring iterations (one of each) of off / on: a slow spell of the host that spans a
    pair leaves its ratio alone, where it can still move both medians."""
    on = [t for i, t in enumerate(times) if i >= first_timed and setting_is_on(i)]
    off = [t for i, t in enumerate(times) if i >= first_timed and not setting_is_on(i)]
    return {"setting": setting, "on_times_s": on, "off_times_s": off,
            "on_s_per_iter": statistics.median(on), "off_s_per_iter": statistics.median(off),
            "pair_speedup": statistics.median(b / a for a, b in zip(on, off))}
