"""A dataset's file paths in two numpy arrays, not one Python object per path.

DataLoader workers are forked from the main process and share its memory page by page until a
page is written. Reading a Python object writes it (its reference count), so a list of Path
objects is copied into every worker bit by bit as an epoch touches its items: ~370 bytes a
path, per worker and rank (a million-image domain pair with 4 workers: ~0.7 GB per process).
Here the paths are one UTF-8 buffer and its offsets, which reading leaves untouched; a Path is
made on access.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


class PathColumn(Sequence):
    """Paths, read back as Path objects (names undecodable as UTF-8 survive: os.fsencode)."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        encoded = [os.fsencode(path) for path in paths]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(path) for path in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"path index {index} out of range for {len(self)} paths")
        start, end = self._offsets[index], self._offsets[index + 1]
        return Path(os.fsdecode(self._buffer[start:end].tobytes()))


class Rows(Sequence):
    """Columns of equal length read as rows: row i is (column[i] for each column), e.g. pairs
    of paths, or (path, label) with the labels in a numpy array (read back as ints)."""

    def __init__(self, *columns: Sequence) -> None:
        if len({len(column) for column in columns}) > 1:
            raise ValueError(f"columns of different lengths: {[len(column) for column in columns]}")
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return tuple(column[index].item() if isinstance(column, np.ndarray) else column[index]
                     for column in self.columns)


def path_rows(rows: Iterable[tuple]) -> Rows:
    """Rows of paths (and ints: labels) kept compactly: a PathColumn per path column, a numpy
    array per int column."""
    rows = list(rows)
    width = len(rows[0]) if rows else 0
    columns = []
    for k in range(width):
        values = [row[k] for row in rows]
        columns.append(np.asarray(values, dtype=np.int64) if isinstance(values[0], (int, np.integer))
                       else PathColumn(values))
    return Rows(*columns) if columns else Rows([])
