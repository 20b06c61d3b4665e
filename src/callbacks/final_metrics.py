"""`final_metrics.json` in the run directory when a fit ends: where the run got to, for scripts
and for the sweep table (src/utils/sweep_summary.py) without reading the loggers' files.

Written from `on_fit_end` on rank zero of the processes that trained: under `ddp_spawn` the
launching process gets the metrics back but not the model's step count or the callbacks'
state (the best FID), so the file could not be written after `fit` returns there.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

FINAL_METRICS = "final_metrics.json"


def write_final_metrics(run_dir: Path, metrics: dict[str, float], iteration: int, checkpoint: str | None,
                        best_fid: float | None = None, best_fid_iteration: int | None = None) -> Path:
    """status "completed", the iteration reached, the last value of every logged metric, the best
    FID and its iteration (when one was finite) and the checkpoint to resume from."""
    record: dict[str, Any] = {"status": "completed", "iteration": iteration, "checkpoint": checkpoint,
                              "metrics": {name: _json_number(value) for name, value in sorted(metrics.items())}}
    if best_fid is not None and math.isfinite(best_fid):
        record.update(best_fid=best_fid, best_fid_iteration=best_fid_iteration)
    return _write(Path(run_dir), record)


def write_failure(run_dir: Path, error: BaseException, name: str = FINAL_METRICS) -> None:
    """A failed run's result file `name` (status "failed" and the error), unless it got as far
    as writing its own."""
    if not (Path(run_dir) / name).exists():
        _write(Path(run_dir), {"status": "failed", "error": f"{type(error).__name__}: {error}"}, name)


def _write(run_dir: Path, record: dict[str, Any], name: str = FINAL_METRICS) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / name
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _json_number(value: float) -> float | str:
    """JSON has no NaN or infinity: those are written as text ("nan", "inf")."""
    return value if math.isfinite(value) else str(value)


class FinalMetrics(pl.Callback):
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from src.callbacks.fid_kid import FidKidCallback   # imported late: it loads the metrics stack
        fid = next((c for c in trainer.callbacks if isinstance(c, FidKidCallback)), None)
        checkpoint = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else None
        write_final_metrics(self.run_dir, {k: float(v) for k, v in trainer.callback_metrics.items()},
                            pl_module.iteration, checkpoint or None,
                            *((fid.best_fid, fid.best_iteration) if fid is not None else ()))
