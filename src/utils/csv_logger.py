"""Lightning's CSV logger with one row per logged step, in step order.

Lightning's writer appends a row for every `log_metrics` call. In one iteration the learning-rate
monitor writes at the batch's start, the losses come at its end, and the evaluations (FID/KID,
t-SNE), logged at the next step, come before both: `metrics.csv` held two or three half-empty
rows per step, out of order, and a column such as `train/G` alternated between a value and
nothing, which plots as no line at all. Here the rows of one step are merged, and written in
step order: the latest step's row is held back until a later step shows it is complete (or a
checkpoint is saved, or the run ends), so nothing already written is read back in the usual case.

A resumed run goes on in the file of the run it resumes (the latest `version_N` of its folder),
where Lightning started a new `version_N+1` at every resume: a run requeued three times was
split over four files, each older one holding the iterations the resume repeats. The first step
the resumed run logs is its resume iteration: the file's rows after it (the stopped run's work
past its checkpoint, or a whole earlier run in the folder where a new one starts at step 0) are
moved to `metrics.replaced_<time>.csv` beside it, and that step's own row is merged with the new
values (its evaluation, logged before the checkpoint was saved, stays).

Rewrites of the file (a resume, a value for an earlier row, a new column) replace it whole
(`write_whole`, on a local disk): a job killed mid-rewrite leaves the old file, not the run's
history cut short. Appends may still end in a row cut short; a resume drops it, and says so.

A late value for one of the file's last rows, the usual case (at a checkpoint the rows up to the
evaluation are written, and the iteration's losses come after the checkpoint), rewrites those
rows alone, in place: rewriting the whole file at every checkpoint made a long run's logging
cost grow with the square of its length (5M iterations: about 100k rows parsed and written at
each of 5000 checkpoints). The merged rows add values, so they cover the rows they replace (where
a value replaced by a shorter one would not, the file is rewritten). Those few KB are written
over the old ones as appends are, not whole: a job killed in the middle of that write can leave
them torn, as it can an append.
"""
from __future__ import annotations

import csv
import io
import locale
import logging
import os
import time
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from src.utils.logger_versions import latest_version
from src.utils.whole_files import write_text_whole

log = logging.getLogger(__name__)

#: how many of the file's last rows a late value is merged into in place: the losses come after
#: the rows of their step's learning rates and the next step's evaluations were written
LAST_ROWS = 16


def is_whole_row(row: dict) -> bool:
    """A row with all its fields (DictReader fills a short row's with None) and a step."""
    return None not in row and None not in row.values() and str(row.get("step") or "").isdigit()


def one_row_per_step(rows) -> list[dict]:
    """The rows of each step merged into one (their values, later ones over earlier), in step
    order: a file written before rows were merged here (two or three half-empty rows per step,
    out of order) keeps every value when a resume takes it up, where one row per step would
    have been kept and the step's other values (its evaluation, its learning rates) lost."""
    merged: dict[int, dict] = {}
    for row in rows:
        merged.setdefault(int(row["step"]), {}).update({key: value for key, value in row.items() if value != ""})
    return [merged[step] for step in sorted(merged)]


class StepRowsWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self.written_up_to = -1   # the highest step in the file
        self.continued = False    # whether the file of an earlier process has been taken up
        # The file's last rows (up to LAST_ROWS) and the offset they start at (None: unknown, on a
        # remote store), which a late value rewrites in place.
        self.last_rows: list[dict] = []
        self.last_rows_offset: int | None = None

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes the version's metrics.csv here: a resumed run goes on in it instead."""

    def log_metrics(self, metrics_dict: dict, step: int | None = None) -> None:
        super().log_metrics(metrics_dict, step)
        if not self.continued:
            self.continued = True
            self._continue_file(self.metrics[-1]["step"])
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
                if not self._merge_into_last_rows():
                    self._merge_into_file()
            else:
                self._append()
            self.written_up_to = max(self.written_up_to, highest)
        self.metrics = held

    def _continue_file(self, first_step: int) -> None:
        """Take up the file an earlier process of the run wrote: its rows up to `first_step` (a
        resumed run's first step: its rows after it are the stopped run's work past the
        checkpoint) stay; the rest go to a `metrics.replaced_<time>.csv` beside it. A run that
        starts at step 0 replaces every row."""
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            text = file.read()
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header, rows = list(reader.fieldnames or []), list(reader)
        whole = [r for r in rows if is_whole_row(r)]
        if rows and whole and whole[-1] is rows[-1] and not text.endswith("\n"):
            whole.pop()   # its last field may be cut short too (a step of 1200 read as 12)
        if len(whole) < len(rows):
            log.warning("%s: %d row(s) cut short by a writer that was stopped are dropped", self.metrics_file_path,
                        len(rows) - len(whole))
            rows = whole
        rows = one_row_per_step(rows)
        kept = [0 < first_step and int(r["step"]) <= first_step for r in rows]
        keep = [r for r, stays in zip(rows, kept) if stays]
        replaced = [r for r, stays in zip(rows, kept) if not stays]
        if replaced:
            self._write_rows(os.path.join(self.log_dir, time.strftime("metrics.replaced_%Y%m%d-%H%M%S.csv")),
                             header, replaced)
        self._write_rows(self.metrics_file_path, header, keep)
        self.metrics_keys = sorted(set(header))
        self.written_up_to = max((int(r["step"]) for r in keep), default=-1)

    def _local_size(self) -> int | None:
        """The file's size, on a local disk where it exists (the rows' offsets are kept there)."""
        if not isinstance(self._fs, LocalFileSystem) or not os.path.isfile(self.metrics_file_path):
            return None
        return os.path.getsize(self.metrics_file_path)

    def _append(self) -> None:
        """Lightning's save: appends, or rewrites the file under a header with new columns."""
        rows = [dict(row) for row in self.metrics]
        super().save()
        size = self._local_size()
        if size is None:
            self.last_rows_offset = None
            return
        offset = size - len(self._rows_text(rows))
        if self.last_rows_offset is not None and \
                self.last_rows_offset + len(self._rows_text(self.last_rows)) == offset:   # they go on from them
            rows, offset = self.last_rows + rows, self.last_rows_offset
        self._keep_last_rows(rows, offset)

    def _keep_last_rows(self, rows: list[dict], offset: int, columns: list[str] | None = None) -> None:
        """Remember the file's last rows, `rows` written from `offset` on under `columns` (the
        writer's), up to LAST_ROWS."""
        for dropped in rows[:-LAST_ROWS]:
            offset += len(self._rows_text([dropped], columns))
        self.last_rows, self.last_rows_offset = rows[-LAST_ROWS:], offset

    def _rows_text(self, rows: list[dict], columns: list[str] | None = None) -> bytes:
        """Rows as Lightning's writer appends them (its csv dialect, in the locale's encoding),
        under `columns` (the writer's)."""
        text = io.StringIO(newline="")
        csv.DictWriter(text, fieldnames=self.metrics_keys if columns is None else columns).writerows(rows)
        return text.getvalue().encode(locale.getpreferredencoding(False))

    def _merge_into_last_rows(self) -> bool:
        """Late rows for steps of the last append, merged into its rows and written over them in
        place; False where that cannot be done (an earlier step, a new column, a file changed
        since) and the whole file is to be rewritten."""
        offset, last = self.last_rows_offset, self.last_rows
        if offset is None or not last or self.metrics[0]["step"] < last[0]["step"] or self._record_new_keys():
            return False
        old = self._rows_text(last)
        with open(self.metrics_file_path, "r+b", buffering=0) as file:   # unbuffered: one write() is one call
            file.seek(offset)
            if file.read() != old:   # the file is not as this writer left it
                return False
            rows = one_row_per_step([*last, *self.metrics])
            new = self._rows_text(rows)
            if len(new) < len(old):   # a value replaced by a shorter one: the old rows' end would stay
                return False
            file.seek(offset)
            unwritten = memoryview(new)
            while unwritten:   # an unbuffered write may take fewer bytes than it is given
                unwritten = unwritten[file.write(unwritten):]
        self._keep_last_rows(rows, offset)
        self.metrics = []
        return True

    def _merge_into_file(self) -> None:
        """Rows for steps the file already has (a value logged late): merged into the file's own
        rows, and the file rewritten in step order."""
        self._record_new_keys()
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = one_row_per_step([*csv.DictReader(file), *self.metrics])
        self._write_rows(self.metrics_file_path, self.metrics_keys, rows)
        self.metrics = []

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        """Lightning's rewrite under a header with new columns, replacing the file whole."""
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = list(csv.DictReader(file))
        self._write_rows(self.metrics_file_path, fieldnames, rows)

    def _write_rows(self, path: str, header: list[str], rows: list[dict]) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        if path == self.metrics_file_path:
            self.last_rows_offset = None
        if isinstance(self._fs, LocalFileSystem):
            write_text_whole(Path(path), text.getvalue())
            if path == self.metrics_file_path:   # (a header of other columns: told apart when merging)
                last = [{**row, "step": int(row["step"])} for row in rows[-LAST_ROWS:]]
                self._keep_last_rows(last, len(text.getvalue().encode()) - len(self._rows_text(last, header)), header)
        else:   # a remote store (s3://...) replaces an object whole anyway
            with self._fs.open(path, "w", newline="") as file:
                file.write(text.getvalue())


class StepRowsCSVLogger(CSVLogger):
    """`CSVLogger` whose `metrics.csv` has one row per step, in step order, and that a resumed
    run continues (StepRowsWriter): without a `version` it writes into the folder's latest
    `version_N` (version_0 in a new run folder)."""

    def __init__(self, *args, version: int | str | None = None, **kwargs):
        super().__init__(*args, version=version, **kwargs)
        if version is None:
            self._version = latest_version(self)

    @property
    @rank_zero_experiment
    def experiment(self) -> StepRowsWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = StepRowsWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def finalize(self, status: str) -> None:
        try:
            self._write_every_row()
            super().finalize(status)
        except OSError as error:
            if status == "success":
                raise
            # On a failure's way out (a full disk's, often): an error here would replace the
            # run's own, and Lightning's teardown after it would not run.
            log.warning("%s: the last rows could not be written (%s: %s)", self.log_dir, type(error).__name__, error)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        # The rows up to the checkpoint reach the file with it: the evaluation logged just before
        # a save (held back as the latest step's row) would otherwise wait for the next loss log,
        # and a process killed meanwhile lost it, and the resumed run does not repeat it. A
        # value the step still gets later joins its row in the file.
        self._write_every_row()

    def _write_every_row(self) -> None:
        """The pending rows, the latest step's included."""
        if self._experiment is not None:
            self._experiment.save(hold_latest=False)
