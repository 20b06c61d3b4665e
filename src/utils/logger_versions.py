"""Which `version_N` folder a logger writes into: a resumed run goes on in the latest one of its
run folder, where Lightning's loggers start `version_N+1` at every resume (a run requeued three
times was split over four)."""
from __future__ import annotations


def latest_version(logger) -> int:
    """The highest `version_N` of the logger's folder (0 in a new one). Lightning's
    `_get_next_version` lists them, for both its CSV and its TensorBoard loggers."""
    return max(logger._get_next_version() - 1, 0)
