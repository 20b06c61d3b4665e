"""Time series for the recurrent GANs (RGAN / RCGAN, Esteban et al. 2017).

Items are ``{"A": (T, C) float tensor in [-1, 1], "label": int, "index": int}``; a batch stacks
them to (B, T, C). ("A", "label" and "index" as in the labelled image batches, so the
noise-to-sample models' base reads both.) Two sources:

* ``source: sines`` (the embedded default, the RGAN paper's toy data): every series holds
  `channels` sine waves x_c(t) = a_c sin(2 pi f t / T + phi_c), t = 0 .. T - 1, amplitude
  a_c ~ U[0.1, 0.9], phase phi_c ~ U[-pi, pi], one frequency f ~ U[1, 5] cycles per series.
  The label is the frequency band of f (`num_classes` equal bands of [1, 5]): the condition an
  RCGAN can be given. Generated from `seed`, the same on every machine.
* ``source: csv``: a real series, one row per time step, one numeric column per channel
  (`columns`; default every column but `label_column`). The last `test_fraction` of the steps
  is the test part (time order: the test series come after the training ones, and no window
  holds steps of both), each part is cut into windows of `seq_len` steps every `stride` steps,
  and each channel is scaled to [-1, 1] by the training part's minimum and maximum. With `label_column`, a window's label is that column's value at
  its last step (integer classes 0 .. K-1).
"""
from __future__ import annotations

import csv
import logging
import math
from array import array
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from src.data.base import SplitDataModule
from src.utils.config_checks import require_int

log = logging.getLogger(__name__)

SOURCES = ("sines", "csv")
#: how spreadsheets and pandas write a missing value (compared lower-cased)
#: (nan itself reads as a number, and is refused as one that is not finite)
MISSING_VALUES = {"", "na", "n/a", "null", "none"}
FREQUENCY_RANGE = (1.0, 5.0)
AMPLITUDE_RANGE = (0.1, 0.9)


class SequenceDataset(Dataset):
    def __init__(self, series: np.ndarray | torch.Tensor, labels: np.ndarray) -> None:
        self.series = torch.as_tensor(series, dtype=torch.float32)
        self.labels = labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"A": self.series[index], "label": int(self.labels[index]), "index": index}


def sine_series(n: int, seq_len: int, channels: int, num_classes: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n series (n, seq_len, channels) of sines, and each one's frequency band (see the module doc)."""
    low, high = FREQUENCY_RANGE
    frequency = rng.uniform(low, high, (n, 1, 1))
    amplitude = rng.uniform(*AMPLITUDE_RANGE, (n, 1, channels))
    phase = rng.uniform(-math.pi, math.pi, (n, 1, channels))
    t = np.arange(seq_len).reshape(1, seq_len, 1)
    series = amplitude * np.sin(2 * math.pi * frequency * t / seq_len + phase)
    bands = np.minimum(((frequency[:, 0, 0] - low) / (high - low) * max(num_classes, 1)).astype(np.int64),
                       max(num_classes, 1) - 1)
    return series, bands


def is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv_columns(path: Path, columns: list[str] | None, label_column: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(steps, channels) values and the label column of a CSV file with a header row."""
    if not path.is_file():
        raise FileNotFoundError(f"data.csv_path={path} does not exist: point it at a CSV file with a header row "
                                "and one numeric column per channel")
    # utf-8-sig: a spreadsheet's byte-order mark would otherwise become part of the first column's
    # name (and the locale's codec, Windows' default, would misread UTF-8 names)
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"data.csv_path={path} holds no data rows")
        if columns is None and all(is_number_text(name) for name in header):
            raise ValueError(f"data.csv_path={path}: line 1 ({','.join(header)}) looks like data, not a header "
                             "row naming the columns: add one (its first values would be taken as names), or, "
                             "where these are the names, list them in ++data.columns=[...]")
        wanted = columns or [c for c in header if c != label_column]
        missing = [c for c in wanted + ([label_column] if label_column else []) if c not in header]
        if missing:
            raise ValueError(f"data.csv_path={path} has no column {missing} (data.columns / data.label_column); "
                             f"its columns: {header}")
        read = wanted + ([label_column] if label_column else [])
        positions = [header.index(c) for c in read]
        # Parsed row by row into 8 bytes a value: rows kept as Python strings and dicts would
        # take ~1 KB each, gigabytes for a series of millions of steps.
        parsed = [array("d") for _ in read]
        for row in reader:
            if not row:   # a blank line (spreadsheets' exports end with some)
                continue
            line = reader.line_num   # the file's line, quoted line breaks counted
            if len(row) != len(header):   # a missing field, or an unquoted comma shifting the others
                raise ValueError(f"data.csv_path={path}: line {line} has {len(row)} fields, the header has "
                                 f"{len(header)}")
            for column, position, numbers in zip(read, positions, parsed):
                text = row[position]
                if text.strip().lower() in MISSING_VALUES:
                    raise ValueError(f"data.csv_path={path}: column {column!r} has no value ({text!r}) on line "
                                     f"{line}: every value must be a finite number (fill or drop the gaps first)")
                try:
                    numbers.append(float(text))
                except ValueError as error:
                    raise ValueError(f"data.csv_path={path}: column {column!r} is not numeric ({text!r} on line "
                                     f"{line}: {error}); choose the numeric columns with '++data.columns=[a,b]'") from error
                # float() reads nan and inf too; one of them would turn the column's scaling into NaN.
                if not math.isfinite(numbers[-1]):
                    raise ValueError(f"data.csv_path={path}: column {column!r} holds {text!r} on line {line}: every "
                                     "value must be a finite number (fill or drop the gaps first)")
                if column == label_column and numbers[-1] != round(numbers[-1]):
                    raise ValueError(f"data.csv_path={path}: label column {label_column!r} holds {text!r} on line "
                                     f"{line}: labels are class indices (whole numbers from 0)")
    if not parsed or not len(parsed[0]):
        raise ValueError(f"data.csv_path={path} holds no data rows")
    values = np.stack([np.frombuffer(numbers) for numbers in parsed[:len(wanted)]], axis=1)
    labels = np.frombuffer(parsed[-1]).astype(np.int64) if label_column else None
    return values, labels


class SequenceDataModule(SplitDataModule):
    def __init__(self, source: str = "sines", seq_len: int = 30, channels: int = 5, num_classes: int = 1,
                 n_train: int = 10000, n_test: int = 1000, seed: int = 0, csv_path: str | None = None,
                 columns: list[str | int | float] | str | int | None = None, label_column: str | int | None = None,
                 stride: int = 1,
                 test_fraction: float = 0.2, max_dataset_size: int | None = None, name: str = "sines",
                 batch_size: int = 28,
                 batches_per_iteration: int = 1, eval_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool = False, persistent_workers: bool = False) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         persistent_workers=persistent_workers, eval_batch_size=eval_batch_size)
        self.save_hyperparameters(logger=False)
        if source not in SOURCES:
            raise ValueError(f"data.source={source!r} must be one of {', '.join(SOURCES)}")
        for key, value in (("seq_len", seq_len), ("channels", channels), ("num_classes", num_classes),
                           ("n_train", n_train), ("n_test", n_test), ("stride", stride)):
            require_int(f"data.{key}", value)
        if source == "csv" and not csv_path:
            raise ValueError("data.source=csv needs data.csv_path=/path/to/series.csv (data=csv_series has the key; "
                             "on another data config, ++data.csv_path=...)")
        if source == "csv" and not label_column and num_classes != 1:
            raise ValueError(f"data.num_classes={num_classes} but no data.label_column: without a column of classes "
                             f"every window's label is 0. Name the column (++data.label_column=...) or set "
                             f"data.num_classes=1")
        require_int("data.max_dataset_size", max_dataset_size, allow_none=True)
        if not 0 < test_fraction < 1:
            raise ValueError(f"data.test_fraction={test_fraction!r} must be between 0 and 1")
        self.source, self.name = source, name
        self.seq_len, self.channels, self.num_classes = seq_len, channels, num_classes
        self.set_batches_per_iteration(batches_per_iteration)
        self._splits: dict[str, tuple[np.ndarray | torch.Tensor, np.ndarray]] | None = None
        self.scale: tuple[np.ndarray, np.ndarray] | None = None   # CSV data: each channel's training min, max

    def _build_dataset(self, split: str, train: bool) -> Dataset:
        if self._splits is None:
            self._splits = self._sines() if self.source == "sines" else self._csv_windows()
        series, labels = self._splits[split]
        first = slice(self.hparams.max_dataset_size)   # the first N series of the split (None: all)
        return SequenceDataset(series[first], labels[first])

    def _sines(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        # One stream per split, so the test set does not depend on n_train.
        return {split: sine_series(n, self.seq_len, self.channels, self.num_classes,
                                   np.random.default_rng([int(self.hparams.seed), stream]))
                for stream, (split, n) in enumerate((("train", self.hparams.n_train), ("test", self.hparams.n_test)))}

    def _csv_windows(self) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
        hp = self.hparams
        path = Path(hp.csv_path)
        # Names as text: `data.columns=temp` arrives as one string (list() would split it into
        # letters), and Hydra reads a header name like 2019 as an int (alone or in a list).
        named = [hp.columns] if isinstance(hp.columns, (str, int, float)) else hp.columns
        columns = [str(c) for c in named] if named else None
        label_column = None if hp.label_column is None else str(hp.label_column)
        values, labels = read_csv_columns(path, columns, label_column)
        if values.shape[1] != self.channels:
            raise ValueError(f"data.csv_path={path} gives {values.shape[1]} channels, data.channels={self.channels}: "
                             f"set data.channels={values.shape[1]} (or pick columns with ++data.columns=[...]). The file "
                             f"is read as one series, a row per time step and a column per channel")
        split = int(round(len(values) * (1 - hp.test_fraction)))
        parts = {"train": (0, split), "test": (split, len(values))}
        starts = {name: np.arange(first, last - self.seq_len + 1, hp.stride) for name, (first, last) in parts.items()}
        if min(len(s) for s in starts.values()) < 1:
            raise ValueError(f"data.csv_path={path}: {len(values)} steps split at data.test_fraction={hp.test_fraction} "
                             f"give {len(starts['train'])} training and {len(starts['test'])} test windows of "
                             f"data.seq_len={self.seq_len}: too few; lower seq_len or add data")
        # Scale by the training part only: the test part must not leak into the scaling.
        low, high = values[:split].min(0), values[:split].max(0)
        scaled = 2 * (values - low) / np.where(high > low, high - low, 1.0) - 1
        self.scale = (low, high)   # the data's units of the [-1, 1] values (eval.py's samples.npy)
        outside = float(np.mean(np.abs(scaled[split:]) > 1))
        if outside > 0:
            log.warning("data.csv_path=%s: %.1f%% of the test part's values lie outside the training part's range "
                        "(scaled beyond [-1, 1], where the generator's tanh cannot reach): its MMD and TSTR scores "
                        "count that against every model. Training ranges per column: %s to %s", path,
                        100 * outside, low.tolist(), high.tolist())
        if labels is not None and labels.min() < 0:
            row = int(np.argmax(labels < 0)) + 1
            raise ValueError(f"data.label_column={label_column} holds {labels[row - 1]} (first in data row {row}): "
                             f"labels are classes 0..K-1")
        if labels is not None and labels.max() >= self.num_classes:
            raise ValueError(f"data.label_column={label_column} holds labels {labels.min()}..{labels.max()}, "
                             f"outside 0..{self.num_classes - 1}: set data.num_classes={labels.max() + 1}")

        # Every window (steps, seq_len, channels) as a view of the scaled series: with stride 1 a
        # copy would hold each value seq_len times.
        every_window = torch.as_tensor(scaled, dtype=torch.float32).unfold(0, self.seq_len, 1).transpose(1, 2)

        def windows(first_steps: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
            series = every_window[first_steps[0]:first_steps[-1] + 1:hp.stride]
            window_labels = (labels[first_steps + self.seq_len - 1] if labels is not None
                             else np.zeros(len(first_steps), dtype=np.int64))
            return series, window_labels

        return {name: windows(first_steps) for name, first_steps in starts.items()}
