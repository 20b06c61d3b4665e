"""Where one training iteration spends its time, from a torch.profiler trace.

Self time is the time an operator spent outside the operators it called, so the self times add
up to the profiled wall time (intra-op threads work inside the calling operator's span). Two
views come out: the top operators by self time, and a split into backward (the autograd engine's
`evaluate_function` spans), optimizer steps and zeroing (the `Optimizer.*` spans torch.optim
records) and the rest (forward passes, losses, Lightning's bookkeeping). A step taken inside the
backward (`step_in_backward`: a gradient hook steps each tensor as its gradient is ready) runs
inside the engine's span of that tensor's gradient, and is counted as a step, not as backward. The written tables are
by operator, and by operator and input shapes (which layer each cost belongs to).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def _self_time_us(event, device: str) -> float:
    if device == "cuda":
        return event.self_device_time_total   # (torch's self_cuda_time_total is deprecated for it)
    return event.self_cpu_time_total


BACKWARD_SPAN = "autograd::engine::evaluate_function"


def _inside(event, prefix: str) -> bool:
    """Whether one of the event's enclosing CPU spans is named `prefix`..."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(prefix):
            return True
        parent = parent.cpu_parent
    return False


def time_split_us(events) -> dict[str, float]:
    """CPU time (µs) of the backward, the optimizer steps and the zeroing, from the profile's
    events (not averaged: which span encloses which is needed); the backward without the steps
    and zeroing taken inside it."""
    def total(prefix: str, within_backward: bool | None = None) -> float:
        return sum(e.cpu_time_total for e in events if e.name.startswith(prefix)
                   and (within_backward is None or _inside(e, BACKWARD_SPAN) == within_backward))
    in_backward = total("Optimizer.", within_backward=True)
    return {"backward": total(BACKWARD_SPAN, within_backward=False) - in_backward,
            "optimizer_step": total("Optimizer.step"), "zero_grad": total("Optimizer.zero_grad")}


def summarise_profile(profiler, row_limit: int, device: str, table_path: Path) -> dict[str, Any]:
    events = profiler.key_averages()
    total_self_us = sum(e.self_cpu_time_total for e in events)
    split = time_split_us(profiler.events())
    backward_us, optimizer_us, zero_grad_us = split["backward"], split["optimizer_step"], split["zero_grad"]
    top = sorted(events, key=lambda e: _self_time_us(e, device), reverse=True)[:row_limit]
    summary = {
        "profiled_s": total_self_us / 1e6,
        "split_s": {"backward": backward_us / 1e6, "optimizer_step": optimizer_us / 1e6,
                    "zero_grad": zero_grad_us / 1e6,
                    "forward_and_rest": max(0.0, total_self_us - backward_us - optimizer_us - zero_grad_us) / 1e6},
        "top_ops": [{"op": e.key, "calls": e.count, "self_s": _self_time_us(e, device) / 1e6,
                     "share": _self_time_us(e, device) / max(total_self_us, 1e-9) if device != "cuda" else None}
                    for e in top],
    }
    table_path.parent.mkdir(parents=True, exist_ok=True)
    sort_by = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    table_path.write_text(events.table(sort_by=sort_by, row_limit=max(row_limit, 40)))
    summary["table"] = str(table_path)
    by_shape = profiler.key_averages(group_by_input_shape=True)
    shapes_path = table_path.with_name(table_path.stem + "_by_shape.txt")
    shapes_path.write_text(by_shape.table(sort_by=sort_by, row_limit=max(row_limit, 40) * 2, max_shapes_column_width=120))
    summary["table_by_shape"] = str(shapes_path)
    return summary
