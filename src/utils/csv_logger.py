"""Lightning's CSV logger with one row per logged step, in step order.

Lightning's writer appends a row for every `log_metrics` call. In one iteration the learning-rate
monitor writes at the batch's start, the losses come at its end, and the evaluations (FID/KID,
t-SNE), logged at the next step, come before both: `metrics.csv` held two or three half-empty
rows per step, out of order, and a column such as `train/G` alternated between a value and
nothing, which plots as no line at all. Here the rows of one step are merged, and written in
step order: the latest step's row is held back until a later step shows it is complete (or the
run ends), so nothing already written is read back in the usual case.
"""
from __future__ import annotations

import csv

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only


class StepRowsWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self.written_up_to = -1   # the highest step in the file

    def log_metrics(self, metrics_dict: dict, step: int | None = None) -> None:
        super().log_metrics(metrics_dict, step)
        row = self.metrics.pop()
        pending = next((r for r in self.metrics if r["step"] == row["step"]), None)
        if pending is None:
            self.metrics.append(row)
        else:
            pending.update(row)

    def save(self, hold_latest: bool = True) -> None:
        """Write the pending rows of every step but the latest (all of them with `hold_latest`
        false, as the run ends)."""
        if not self.metrics:
            return
        self.metrics.sort(key=lambda r: r["step"])
        latest = self.metrics[-1]["step"]
        held = [r for r in self.metrics if hold_latest and r["step"] == latest]
        self.metrics = self.metrics[:len(self.metrics) - len(held)]
        if self.metrics:
            highest = self.metrics[-1]["step"]
            if self.metrics[0]["step"] <= self.written_up_to:
                self._merge_into_file()
            else:
                super().save()   # appends, or rewrites the file under a header with new columns
            self.written_up_to = max(self.written_up_to, highest)
        self.metrics = held

    def _merge_into_file(self) -> None:
        """Rows for steps the file already has (a value logged late): merged into the file's own
        rows, and the file rewritten in step order."""
        self._record_new_keys()
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = {int(r["step"]): {k: v for k, v in r.items() if v != ""} for r in csv.DictReader(file)}
        for row in self.metrics:
            rows.setdefault(row["step"], {}).update(row)
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows[step] for step in sorted(rows))
        self.metrics = []


class StepRowsCSVLogger(CSVLogger):
    """`CSVLogger` whose `metrics.csv` has one row per step, in step order (StepRowsWriter)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> StepRowsWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = StepRowsWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self._experiment.save(hold_latest=False)
        super().finalize(status)
