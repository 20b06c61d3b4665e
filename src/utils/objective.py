"""The value `src/train.py` returns to a sweeper: `optimized_metric` of the finished run.

Free of torch on purpose: `src/train.py` imports it before the allocator is chosen, which must
happen before torch loads (src/utils/allocator.py).
"""
from __future__ import annotations

import logging
import math

from src.utils.hydra_runtime import hydra_config

log = logging.getLogger(__name__)


def sweeper_direction() -> str | None:
    """The direction a single-objective sweeper (Optuna's) optimises in, when one runs this job."""
    hydra_cfg = hydra_config()
    if hydra_cfg is None:
        return None
    direction = (hydra_cfg.get("sweeper") or {}).get("direction")
    return direction if isinstance(direction, str) else None


def objective_value(metric: str, value: float, direction: str | None) -> float:
    """`value`, or for a run that diverged (NaN, infinite) the worst value in `direction`: Optuna
    refuses NaN, and the Hydra sweeper then fails on its own error handling, ending the whole
    study; the worst value records the trial as a bad region of the search and the study goes on.
    Outside such a search a non-finite value is an error naming the metric."""
    if math.isfinite(value):
        return value
    if direction is None:
        raise ValueError(f"optimized_metric {metric} is {value}: the run diverged or its evaluation failed")
    worst = math.inf if direction.lower() == "minimize" else -math.inf
    log.warning("optimized_metric %s is %s (the run diverged?): the search is told %s, the worst value", metric,
                value, worst)
    return worst
