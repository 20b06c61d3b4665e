"""The result file a run leaves in its directory, `final_metrics.json`, written when its fit
ends (src/callbacks/final_metrics.py) or, for a failed multirun job, by the sweep table's Hydra
callback (src/utils/sweep_summary.py).

Free of torch on purpose: Hydra builds its callbacks before `src/train.py` has chosen the
allocator, which must happen before torch loads (src/utils/allocator.py).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from src.utils.hydra_runtime import hydra_run_dir
from src.utils.whole_files import write_text_whole

FINAL_METRICS = "final_metrics.json"
EVAL_RESULT = "metrics.json"   # what src/eval.py writes in its output directory (src/utils/evaluation.py)


def write_final_metrics(run_dir: Path, metrics: dict[str, float], iteration: int, checkpoint: str | None,
                        best_fid: float | None = None, best_fid_iteration: int | None = None,
                        feature_extractor: str | None = None) -> Path:
    """status "completed", the iteration reached, the last value of every logged metric, the best
    FID and its iteration (when one was finite), the features FID/KID were measured on, and the
    checkpoint to resume from."""
    record: dict[str, Any] = {"status": "completed", "iteration": iteration, "checkpoint": checkpoint,
                              "metrics": {name: _json_number(value) for name, value in sorted(metrics.items())}}
    if feature_extractor:
        record["feature_extractor"] = feature_extractor
    if best_fid is not None and math.isfinite(best_fid):
        record.update(best_fid=best_fid, best_fid_iteration=best_fid_iteration)
    return _write(Path(run_dir), record)


def final_record(run_dir: Path) -> dict[str, Any]:
    """The run's `final_metrics.json` as written ({} where there is none)."""
    path = Path(run_dir) / FINAL_METRICS
    return json.loads(path.read_text()) if path.is_file() else {}


def completed_metrics(run_dir: Path) -> dict[str, float] | None:
    """The metrics of a completed run's `final_metrics.json` in `run_dir` (non-finite ones back
    to floats), or None where there is none."""
    record = final_record(run_dir)
    if record.get("status") != "completed":
        return None
    return {name: float(value) for name, value in record.get("metrics", {}).items()}


def write_failure(run_dir: Path, error: BaseException, name: str = FINAL_METRICS, status: str = "failed",
                  replace_older_than: float | None = None, after_training: bool = False) -> None:
    """A failed run's result file `name` (`status`, "failed" or a search trial's "diverged", and
    the error); an earlier start's record in the folder (a re-run, a requeued job), one written
    before `replace_older_than` (a time.time()), is replaced. A record this start wrote itself
    stays: its "completed" one (training ended, the failure came after, a full disk at the
    loggers' last rows say) takes the failure's status and error beside its results, as the
    process ends with the error (a sweep's table showed the job completed). `after_training`: a
    failure found once the fit has returned, so the run's completed record is its own whatever
    its age (a finished run started again trains nothing and writes none)."""
    path = Path(run_dir) / name
    said = f"{type(error).__name__}: {error}"
    kept = path.exists() and (replace_older_than is None or path.stat().st_mtime >= replace_older_than)
    this_runs = after_training or (kept and replace_older_than is not None)
    record = final_record(run_dir) if this_runs and name == FINAL_METRICS else {}
    if record.get("status") == "completed":
        _write(Path(run_dir), {**record, "status": status, "error": f"after training ended: {said}"}, name)
    elif not kept:
        _write(Path(run_dir), {"status": status, "error": said}, name)


def run_folder(cfg) -> Path | None:
    """The run's own folder: the one Hydra made (`paths.output_dir` may name another, which the run
    refuses: a failure's record must not go there), or outside a Hydra app the config's."""
    if (run_dir := hydra_run_dir()) is not None:
        return run_dir
    folder = OmegaConf.select(cfg, "paths.output_dir")   # a notebook's or a test's main(cfg)
    return Path(folder) if folder else None


def _write(run_dir: Path, record: dict[str, Any], name: str = FINAL_METRICS) -> Path:
    path = run_dir / name   # (write_whole makes the folder)
    # Whole: another job of the sweep may be reading it for the sweep's table right now.
    write_text_whole(path, json.dumps(record, indent=2) + "\n")
    return path


def _json_number(value: float) -> float | str:
    """JSON has no NaN or infinity: those are written as text ("nan", "inf")."""
    return value if math.isfinite(value) else str(value)
