"""One table of a sweep's jobs: what each job changed and where it ended.

A multirun leaves one directory per job (`<sweep dir>/<job number>/`). Comparing them meant
opening each job's CSV log. Here:

- every training run writes `final_metrics.json` into its run directory when its fit ends
  (src/callbacks/final_metrics.py, src/utils/run_results.py): the iteration it reached, the last value of every logged
  metric, the best FID and the iteration it came at, and the checkpoint to resume from;
- the Hydra callback `SweepSummary` (conf/train.yaml: hydra.callbacks) gathers the jobs' files after each
  job and at the end of the sweep into `<sweep dir>/summary.csv` (every metric) and `summary.md`
  (the overrides and the metrics in `metrics`, those present). A job that raised is listed as
  failed with its error (and said on the console as it fails), one without a file as not
  finished. After each job, not only at the end, because Hydra's basic sweeper, once its batch
  of jobs (all of them, by default) has run, raises the first failed job's error and never
  reaches its end-of-sweep hook, and so that a sweep stopped part-way still has its table;
- an evaluation sweep (`python src/eval.py -m ckpt_path=a.ckpt,b.ckpt`) gets the same table
  from each job's `metrics.json` (conf/eval.yaml), its metrics named direction/metric
  ("AtoB/fid", "samples/is");
- `python -m src.utils.sweep_summary <sweep dir> [result file]` rebuilds the table, e.g. of a
  SLURM sweep whose jobs ran elsewhere, or after adding jobs with `ckpt_path=auto`.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src.utils.folder_lock import FolderInUse, FolderLock
from src.utils.hydra_runtime import hydra_config, is_multirun, is_rank_zero
from src.utils.log_file import log_file_handlers
from src.utils.nested import flattened
from src.utils.run_results import EVAL_RESULT, FINAL_METRICS, write_failure
from src.utils.whole_files import write_text_whole

log = logging.getLogger(__name__)

SUMMARY_CSV, SUMMARY_MD = "summary.csv", "summary.md"
#: the lock of the table's update, and how long a job waits for another's (a read of the job
#: records and two small writes: well under a second, minutes on a struggling network disk)
SUMMARY_LOCK, SUMMARY_LOCK_WAIT_S = ".summary.lock", 300.0
#: what the markdown table shows by default, per result file, where a job has it (the CSV has every metric)
DEFAULT_METRICS = {
    FINAL_METRICS: ("eval/fid", "eval/fid_AtoB", "eval/fid_BtoA", "eval/kid_x100",                 # translation
                    "truth/iou", "truth/AtoB/iou", "truth/BtoA/iou",
                    "segmentation/AtoB/label_class_iou", "segmentation/BtoA/label_class_iou",
                    "segmentation/AtoB/fcn_class_iou", "segmentation/BtoA/fcn_class_iou",
                    "eval/fid_samples", "eval/kid_x100_samples", "eval/is_samples", "eval/cls_is_samples",  # noise
                    "eval/mmd2_samples"),                                                         # series
    EVAL_RESULT: ("AtoB/fid", "BtoA/fid", "AtoB/kid_x100", "BtoA/kid_x100", "AtoB/iou", "BtoA/iou",
                  "AtoB/label_class_iou", "BtoA/label_class_iou", "AtoB/fcn_class_iou", "BtoA/fcn_class_iou",
                  "samples/fid", "samples/kid_x100", "samples/is", "samples/cls_is", "samples/mmd2", "samples/tstr"),
}


#: settings the markdown table shows where they differ between jobs, set on the command line or
#: by a model's or data's own config (model=cyclegan,ugatit trains at other sizes and lengths):
#: rows that differ in them compare more than the models (column name -> config key)
SETTING_COLUMNS = {"data": "data.name", "size": "data.crop_size", "batch": "data.batch_size",
                   "iterations": "max_iters", "kimg": "max_kimg", "epochs": "trainer.max_epochs",
                   "light": "model.generator.light",
                   # the weights the run sampled and scored with: its generators' average, or the trained ones
                   "EMA": "callbacks.ema.enabled"}


def job_settings(job_dir: Path) -> dict[str, Any]:
    """The `SETTING_COLUMNS` of a training job, from its latest start's resolved config (the
    values it trained with, defaults included), and the code it ran (`code`: the git revision its
    start recorded, "+dirty" with uncommitted changes: jobs started hours apart may have run
    other code); {} for a job without one (an evaluation's)."""
    starts = sorted(job_dir.glob("starts/*/resolved.yaml"))
    if not starts:
        return {}
    cfg = OmegaConf.load(starts[-1])
    settings = {name: OmegaConf.select(cfg, key, default=None) for name, key in SETTING_COLUMNS.items()}
    settings["EMA"] = bool(settings["EMA"])   # (a config without callbacks.ema keeps none)
    record = starts[-1].parent / "start.yaml"
    settings["code"] = OmegaConf.load(record).get("code_revision") if record.is_file() else None
    return settings


#: what a sweep folder without a job lacks
NO_JOBS = ("no job directories found (0/, 1/, ... or any holding the .hydra/ folder Hydra writes into each job's: "
           "keep hydra.output_subdir=.hydra where hydra.sweep.subdir names jobs otherwise)")


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job directories, in job order: those named by their job number (Hydra's
    default subdir) and those holding the `.hydra/` Hydra writes into each job's, whatever
    `hydra.sweep.subdir` names them (`${hydra.job.override_dirname}`, whose path-valued
    overrides nest them). Not searched below a job's directory (its checkpoints, samples)."""
    sweep_dir, found = Path(sweep_dir), []
    for folder, subfolders, _ in os.walk(sweep_dir):
        here = Path(folder)
        numbered = here.parent == sweep_dir and here.name.isdigit()
        if here != sweep_dir and (numbered or ".hydra" in subfolders):
            found.append(here)
            subfolders.clear()
    return sorted(found, key=lambda job: (job_number(job), str(job)))


def job_number(job_dir: Path) -> int:
    """The job's number: its folder's name, or the `hydra.job.num` its `.hydra/hydra.yaml`
    records (-1 without either)."""
    if job_dir.name.isdigit():
        return int(job_dir.name)
    recorded = job_dir / ".hydra" / "hydra.yaml"
    number = OmegaConf.select(OmegaConf.load(recorded), "hydra.job.num", default=None) if recorded.is_file() else None
    return int(number) if number is not None else -1


def read_job(job_dir: Path, result_name: str = FINAL_METRICS) -> dict[str, Any]:
    # The latest start's overrides are those of the run the folder holds: Hydra rewrites .hydra/
    # for a job its checks then refuse (another sweep's job of the same number).
    started = sorted(job_dir.glob("starts/*/overrides.yaml"))
    overrides_file = started[-1] if started else job_dir / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    job = {"job": job_number(job_dir), "overrides": overrides, "settings": job_settings(job_dir)}
    result_file = job_dir / result_name
    if not result_file.is_file():
        return {**job, "status": "not finished"}
    try:
        result = json.loads(result_file.read_text())
    except (OSError, ValueError) as error:   # (a copy cut short, a file edited by hand): the other rows stand
        return {**job, "status": "unreadable", "error": f"{result_file}: {error}"}
    result.setdefault("status", "completed")   # an evaluation's metrics.json is written at its end
    # {"AtoB": {"fid": 1.0}} -> {"AtoB/fid": 1.0}: an evaluation's metrics per direction as one
    # row's columns (training's are flat already)
    result["metrics"] = flattened(result.get("metrics", {}), "/")
    return {**job, **result}


def summary_rows(sweep_dir: Path, result_name: str = FINAL_METRICS) -> list[dict[str, Any]]:
    jobs = job_dirs(sweep_dir)
    rows = [read_job(job, result_name) for job in jobs]
    for row, job in zip(rows, jobs):
        row["folder"] = job.relative_to(sweep_dir).as_posix()   # (another hydra.sweep.subdir names it otherwise)
    return rows


def _varying_overrides(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Each job's overrides without those every job shares (the sweep's fixed settings)."""
    shared = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    return [[o for o in r["overrides"] if o not in shared] for r in rows]


#: the CSV's columns before the metrics: a job's own fields
JOB_COLUMNS = ("job", "folder", "status", "overrides", "iteration", "feature_extractor", "best_fid", "best_fid_iteration",
               "checkpoint", "code_revision", "error")


def summary_csv(rows: list[dict[str, Any]]) -> str:
    metric_names = sorted({name for r in rows for name in r.get("metrics", {})})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*JOB_COLUMNS, *metric_names])
    writer.writeheader()
    for r in rows:
        writer.writerow({**{k: r.get(k, "") for k in JOB_COLUMNS}, "overrides": " ".join(r["overrides"]),
                         "code_revision": r["settings"].get("code") or "", **r.get("metrics", {})})
    return out.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None or value == "" else str(value)


def summary_markdown(rows: list[dict[str, Any]], metrics: list[str], sweep_dir: Path) -> str:
    shown = [m for m in metrics if any(m in r.get("metrics", {}) for r in rows)]
    has_iteration = any("iteration" in r for r in rows)   # a run's, or the one an evaluation's checkpoint was at
    has_best = any("best_fid" in r for r in rows)
    # FID/KID of another feature extractor are other numbers: said beside them
    has_extractor = any("feature_extractor" in r for r in rows)
    settings = differing_settings(rows)
    header = (["job", "overrides", *settings, "status"] + ["iteration"] * has_iteration + ["features"] * has_extractor
              + shown + ["best FID (iteration)"] * has_best)
    lines = [f"# Sweep {sweep_dir}", "",
             f"{len(rows)} job(s). Overrides shared by every job are left out; each job's metrics as it ended "
             f"(every metric: {SUMMARY_CSV})."
             + (" The best FID is picked on the test images it is measured on: an optimistic number, for "
                "finding a run's good checkpoints, not for comparing models." if has_best else "")
             + (f" The jobs differ in {', '.join(settings)} (their columns: set on the command line or by a "
                f"model's own config, or the code a job ran): their rows compare more than what the overrides "
                f"name." if settings else ""), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r, overrides in zip(rows, _varying_overrides(rows)):
        status = r["status"] if "error" not in r else f"{r['status']}: {r['error']}"
        status = " ".join(status.replace("|", "/").split())   # one table row, whatever the message
        job = str(r["job"]) if r["folder"] == str(r["job"]) else f"{r['job']} ({r['folder']})"
        cells = ([job.replace("|", "/"), " ".join(overrides).replace("|", "/") or "-", *(_cell(r["settings"].get(s)) for s in settings), status]
                 + [_cell(r.get("iteration"))] * has_iteration
                 + [_cell(r.get("feature_extractor"))] * has_extractor + [_cell(r.get("metrics", {}).get(m)) for m in shown])
        if has_best:
            cells.append(f"{r['best_fid']:.4g} ({r['best_fid_iteration']})" if "best_fid" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + seed_table(rows, shown)) + "\n"


def differing_settings(rows: list[dict[str, Any]]) -> list[str]:
    """The `SETTING_COLUMNS` whose values differ between the jobs that recorded them."""
    recorded = [r["settings"] for r in rows if r.get("settings")]
    return [name for name in (*SETTING_COLUMNS, "code") if len({repr(s.get(name)) for s in recorded}) > 1]


def without_seed(overrides: list[str]) -> tuple[str, ...]:
    return tuple(o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "seed")


def seed_table(rows: list[dict[str, Any]], metrics: list[str]) -> list[str]:
    """Markdown lines of the table over seeds, where the sweep ran settings under several seeds
    (`seed=0,1,2`): per setting, the completed runs' count, their iterations and each metric's
    mean and standard deviation (n - 1), the spread a comparison between settings is judged by.
    Empty otherwise."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r, overrides in zip(rows, _varying_overrides(rows)):
        groups.setdefault(tuple(sorted(without_seed(overrides))), []).append(r)   # whatever their order
    if all(len(jobs) < 2 for jobs in groups.values()):
        return []
    header = ["overrides (but the seed)", "runs", "iteration", *[f"{m} (mean ± std)" for m in metrics]]
    lines = ["", "## Over seeds", "",
             "The completed runs of each setting. Iterations that differ are listed: their runs are not at "
             "the same point.", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for overrides, jobs in groups.items():
        done = [r for r in jobs if r.get("status") == "completed"]
        iterations = sorted({r["iteration"] for r in done if "iteration" in r})
        cells = [" ".join(overrides).replace("|", "/") or "-", f"{len(done)} of {len(jobs)}", ", ".join(map(str, iterations)) or "-"]
        for metric in metrics:
            values = [float(r["metrics"][metric]) for r in done if metric in r.get("metrics", {})]
            cells.append(mean_and_spread(values))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def mean_and_spread(values: list[float]) -> str:
    """Mean ± std of the finite values, saying how many runs had none (a diverged run's NaN)."""
    finite = [v for v in values if math.isfinite(v)]
    others = f"; {len(values) - len(finite)} non-finite" if len(finite) < len(values) else ""
    if not finite:
        return f"- ({len(values)} non-finite)" if values else "-"
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return f"{mean:.4g} (n=1{others})"
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))
    return f"{mean:.4g} ± {std:.2g} (n={len(finite)}{others})"


def write_summary(sweep_dir: Path, metrics: list[str] | tuple[str, ...] | None = None,
                  result_name: str = FINAL_METRICS) -> Path | None:
    """summary.csv and summary.md of the sweep's jobs so far; None when it has none yet.
    `metrics`: the markdown table's columns (None: DEFAULT_METRICS of the result file)."""
    if metrics is None:
        metrics = DEFAULT_METRICS.get(result_name, ())
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return None
    # The jobs of a sweep on a cluster end, and rewrite the table, at the same time: one at a time,
    # each reading the jobs' records under the lock, so a job that read them before another's
    # record was written cannot write its older table last. Whole files besides.
    with FolderLock(sweep_dir, "the sweep's table", "A job stuck in its table's update holds it: remake the "
                    "table with `python -m src.utils.sweep_summary SWEEP_DIR`.", name=SUMMARY_LOCK,
                    wait_s=SUMMARY_LOCK_WAIT_S):
        rows = summary_rows(sweep_dir, result_name)
        if not rows:
            return None
        write_text_whole(sweep_dir / SUMMARY_CSV, summary_csv(rows))
        path = sweep_dir / SUMMARY_MD
        write_text_whole(path, summary_markdown(rows, list(metrics), sweep_dir))
    return path




class SweepSummary(Callback):
    """Hydra callback: the sweep's table after each job and at the end (multirun only)."""

    def __init__(self, metrics: list[str] | None = None, result_file: str = FINAL_METRICS) -> None:
        """metrics: the markdown table's columns (None: DEFAULT_METRICS of `result_file`)."""
        self.metrics = metrics
        self.result_file = result_file

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not is_rank_zero():
            return
        if job_return.status == JobStatus.FAILED:
            # the exception itself: JobReturn.return_value would raise it (and print it once more)
            error, job_dir = job_return._return_value, Path(config.hydra.runtime.output_dir)
            write_failure(job_dir, error, self.result_file)
            # Hydra prints only the first failed job's error, and only after the last job.
            files = log_file_handlers()
            traceback_in = f" (its traceback: {files[0].baseFilename})" if files else ""
            log.error("Job %s (%s) failed: %s: %s%s; the sweep goes on", config.hydra.job.num,
                      " ".join(job_return.overrides or []), type(error).__name__, error, traceback_in)
        self._write_table(Path(config.hydra.sweep.dir), "after this job")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_rank_zero():
            return
        path = self._write_table(Path(config.hydra.sweep.dir), "at the sweep's end")
        if path is not None:
            log.info("Sweep summary: %s\n%s", path, path.read_text(encoding="utf-8"))
            warn_of_a_sweep_without_results(summary_rows(Path(config.hydra.sweep.dir), self.result_file))

    def _write_table(self, sweep_dir: Path, when: str) -> Path | None:
        try:
            path = write_summary(sweep_dir, self.metrics, self.result_file)
        except FolderInUse as busy:   # the jobs' own records are written: the table is not worth failing them
            log.warning("The sweep's table was not updated %s: %s", when, busy)
            return None
        if path is None:
            log.warning("The sweep has no table: %s in %s", NO_JOBS, sweep_dir)
        return path


def refresh_the_sweeps_table() -> None:
    """The table of the sweep this job belongs to, rewritten from a job that stops the sweep (a
    Ctrl-C, a SIGTERM): the process ends with it, and the table's after-job hook never ran, so
    the stopped job (and, after a failed one, the failure) was missing from it."""
    hydra_cfg = hydra_config()
    settings = OmegaConf.select(hydra_cfg, "callbacks.sweep_summary", default=None) if hydra_cfg is not None else None
    if settings is None or not is_multirun() or not is_rank_zero():
        return
    table = SweepSummary(settings.get("metrics"), settings.get("result_file", FINAL_METRICS))
    table._write_table(Path(hydra_cfg.sweep.dir), "as the sweep stops")


def warn_of_a_sweep_without_results(rows: list[dict[str, Any]]) -> None:
    """A search whose every trial diverged ends as a success, each trial told the worst value, and
    its optimization_results.yaml names one of them as the best (`best_value: -.inf`)."""
    if rows and not any(row.get("status") == "completed" for row in rows):
        statuses = sorted({str(row.get("status")) for row in rows})
        log.warning("No job of this sweep completed (%s): any best parameters it names are of no result. A lower "
                    "learning rate or the other remedies the jobs' errors list may help", ", ".join(
                        f"{sum(row.get('status') == status for row in rows)} {status}" for status in statuses))


def sweep_table_settings(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's own `hydra.callbacks.sweep_summary` settings (its columns, its result file),
    from a job's `.hydra/hydra.yaml`: a table rebuilt from the files is the one the sweep wrote."""
    for job in job_dirs(sweep_dir):
        if (recorded := job / ".hydra" / "hydra.yaml").is_file():
            settings = OmegaConf.select(OmegaConf.load(recorded), "hydra.callbacks.sweep_summary", default=None)
            return OmegaConf.to_container(settings) if settings is not None else {}
    return {}


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(f"usage: python -m src.utils.sweep_summary <sweep dir> [result file: {FINAL_METRICS} "
              f"(training) or {EVAL_RESULT} (src/eval.py); default: the sweep's own]", file=sys.stderr)
        return 2
    recorded = sweep_table_settings(Path(argv[0])) if Path(argv[0]).is_dir() else {}
    result_name = argv[1] if len(argv) == 2 else recorded.get("result_file", FINAL_METRICS)
    # (the sweep's columns are of its own result file: another one's table takes that file's defaults)
    columns = recorded.get("metrics") if result_name == recorded.get("result_file", FINAL_METRICS) else None
    path = write_summary(Path(argv[0]), columns, result_name)
    if path is None:
        print(f"{argv[0]}: {NO_JOBS}", file=sys.stderr)
        return 1
    print(path.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
