"""Ours against the reference's iteration in alternating fresh processes (`versus_reference=N`).

Whether a configuration is 1.5x faster than its reference is a ratio of two runs, and on the
shared hosts this project is measured on a run of unchanged code drifts by 10-20% within an
hour (experiments/bench/README.md), more than separates 1.4x from 1.5x. Interleaving the two
inside one process cancels the drift but not the allocator: the two iterations allocate
differently and move each other's page faults (README, "What interleaving cannot compare").

So each pair here is two fresh processes back to back, ours and the reference's iteration
(`tweaks.iteration=reference`), with the order swapped from one pair to the next (ours first,
then the reference first, ...), so a steady drift does not favour either side. The verdict is
the median over pairs of reference s/iter / ours, with every pair's numbers kept.

The ratio can follow the host's arithmetic rate: ours is nearly all matrix products and
convolutions, which a slower core stretches, while much of the reference's iteration is
memory-bound work that it does not (one run's pairs did; another's did not: README, "Goal
status"). So the pairs are also grouped by the host's product rate measured beside them
(`speedup_by_host_rate`), to compare runs of different hours band by band and to see whether a
run's spread is the host's rate or noise. The kind of CPU matters more than the hour: the
shared hosts are of different generations under one name, and MKL's products, which much of
our iteration is, run at a different share of what oneDNN's direct convolutions reach on each.
So every pair records the CPU's kind and oneDNN's rate beside MKL's, and results.json keeps one
entry per configuration and kind of CPU or GPU (`bench_report.versus_key`): pairs of different kinds
are never pooled into one verdict.

One run's few pairs leave the median uncertain (pairs of one run spread 1.2-1.7x here), so:
- the entry carries a distribution-free 95% confidence interval for the median speed-up
  (`speedup_ci95`, from the pairs' order statistics; from 6 pairs on), which says whether the
  pairs decide a goal such as 1.5x or leave it open;
- a run on the same code as the stored entry (clean revisions with no change between them
  outside what is not measured: `bench_run.UNMEASURED_PATHS`) adds its pairs to it (`pool_same_code`) instead of
  replacing them, so pairs gathered over several runs and hours form one verdict on one code.
  Changed code, or a tree with uncommitted changes, starts over.
"""
from __future__ import annotations

import math
import re
import statistics
from typing import Any, Callable

from src.utils.bench_report import REFERENCE_PROTOCOL, host_rate, memory_gb

#: runs one spec in a fresh process (waiting for a quiet machine first); None: it was skipped
Measure = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def pair_order(index: int) -> tuple[str, str]:
    """Which side runs first in pair `index`: ours in even pairs, the reference's in odd ones."""
    return ("own", "reference") if index % 2 == 0 else ("reference", "own")


def run_pairs(own: dict[str, Any], reference: dict[str, Any], pairs: int, measure: Measure) -> dict[str, Any]:
    """`pairs` pairs of (ours, the reference's iteration) for one configuration; the summary."""
    if pairs < 1:
        raise ValueError(f"versus_reference={pairs} must be a number of pairs >= 1 (conf/bench.yaml), or null")
    specs = {"own": own, "reference": reference}
    measured = []
    for index in range(pairs):
        rows = {}
        for side in pair_order(index):
            rows[side] = measure(specs[side])
            if rows[side] is None:
                break
        if all(rows.get(side) is not None for side in specs):   # a pair with a skipped side says nothing
            measured.append(pair_summary(index, rows["own"], rows["reference"]))
    return summarise(own, measured)


def pair_summary(index: int, own: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    host = own.get("host", {})
    return {"pair": index, "first": pair_order(index)[0],
            "own_s_per_iter": own["s_per_iter"], "reference_s_per_iter": reference["s_per_iter"],
            "speedup": reference["s_per_iter"] / own["s_per_iter"],
            "own_peak_gb": memory_gb(own), "reference_peak_gb": memory_gb(reference),
            "disturbed": bool(own.get("disturbed") or reference.get("disturbed")),
            "host_gemm_gmac_per_s": _mean_host_rate("gemm_gmac_per_s", own, reference),
            "host_conv_gmac_per_s": _mean_host_rate("conv_gmac_per_s", own, reference),
            "cpu_kind": host.get("cpu_kind"), "gpu_name": own.get("gpu_name"),
            # the warm-ups are not in the verdict, but show what a host's memory costs a fresh process
            "own_warmup_s": own.get("warmup_times_s"), "reference_warmup_s": reference.get("warmup_times_s"),
            "free_page_reporting_order": host.get("free_page_reporting_order"),
            "measured_at": own["measured_at"], "revision": own["revision"]}


def _mean_host_rate(rate: str, *rows: dict[str, Any]) -> float | None:
    rates = [value for value in (host_rate(row, rate) for row in rows) if value]
    return statistics.fmean(rates) if rates else None


#: width of the host-rate bands (G multiply-adds/s) the pairs are grouped by
HOST_RATE_BAND = 10


def speedup_by_host_rate(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pairs' median speed-up per band of host rate, slowest band first; pairs without a
    host rate are left out."""
    bands: dict[int, list[float]] = {}
    for p in pairs:
        rate = p.get("host_gemm_gmac_per_s")
        if rate:
            bands.setdefault(int(rate // HOST_RATE_BAND) * HOST_RATE_BAND, []).append(p["speedup"])
    return [{"host_gemm_gmac_per_s": [low, low + HOST_RATE_BAND], "pairs": len(speedups),
             "speedup": statistics.median(speedups)} for low, speedups in sorted(bands.items())]


#: coverage the median's confidence interval is built for
CONFIDENCE = 0.95


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The narrowest interval between order statistics [x_(k), x_(n+1-k)] that holds the median of
    the distribution the values come from with at least `confidence`, whatever that distribution
    (each value falls below the median with probability 1/2, so the count below is binomial).
    None when even [min, max] is not sure enough (fewer than 6 values at 95%)."""
    n, values = len(values), sorted(values)
    best = None
    for k in range(1, n // 2 + 1):
        outside = 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n   # median below x_(k) or above x_(n+1-k)
        if 1 - outside < confidence:
            break
        best = (values[k - 1], values[n - k])
    return best


#: a revision label git vouches for: a bare commit hash (not "+dirty", "unknown" or a copy's
#: "<hash> (no git)", which name code that git cannot compare)
COMMIT = re.compile(r"[0-9a-f]+")


def pool_same_code(old: dict[str, Any], new: dict[str, Any], same_code: Callable[[str, str], bool]
                   ) -> dict[str, Any]:
    """The stored entry `old` and a new run's `new` for the same configuration as one entry: their
    pairs pooled when every pair was measured on clean revisions whose measured code is the same
    (`same_code(a, b)`: no change between a and b outside `bench_run.UNMEASURED_PATHS`), else
    `new` alone (also when a revision is not a bare commit hash, see COMMIT). A run whose every
    pair was skipped (a busy machine, `quiet.on_busy=skip`) measured nothing: `old` stays."""
    if not new["pairs"]:
        return old
    revisions = {p["revision"] for p in old["pairs"] + new["pairs"]}
    if not old["pairs"] or not all(COMMIT.fullmatch(r) for r in revisions):
        return new
    current = new["pairs"][-1]["revision"]
    if not all(same_code(r, current) for r in revisions):
        return new
    pairs = [{**p, "pair": index} for index, p in enumerate(old["pairs"] + new["pairs"])]
    return summarise(new, pairs)


def summarise(spec: dict[str, Any], pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """The configuration's entry in results.json: every pair, and the medians over them."""
    entry = {key: spec[key] for key in ("name", "label", "device", "batch_size", "precision", "allocator")}
    # Our side's tweaks, and a timing protocol other than the reference table's: such pairs are
    # a verdict of their own (bench_report.versus_key)
    protocol = {key: spec[key] for key, value in REFERENCE_PROTOCOL.items() if spec.get(key, value) != value}
    if spec.get("variant") or protocol:
        entry["variant"] = {**spec.get("variant", {}), **protocol}
    entry["pairs"] = pairs
    for hardware, what in (("cpu_kind", "kinds of CPU"), ("gpu_name", "GPUs")):
        kinds = {p.get(hardware) for p in pairs}
        if len(kinds) > 1:
            raise ValueError(f"pairs measured on different {what} cannot form one verdict: {sorted(map(str, kinds))}")
        if kinds and None not in kinds:
            entry[hardware] = kinds.pop()
    if pairs:
        def median(key: str) -> float:
            return statistics.median(p[key] for p in pairs)
        speedups = [p["speedup"] for p in pairs]
        for rate in ("host_gemm_gmac_per_s", "host_conv_gmac_per_s"):
            rates = [p[rate] for p in pairs if p.get(rate)]
            entry[rate] = statistics.median(rates) if rates else None
        entry.update(speedup=median("speedup"), speedup_range=(min(speedups), max(speedups)),
                     own_s_per_iter=median("own_s_per_iter"),
                     reference_s_per_iter=median("reference_s_per_iter"), own_peak_gb=median("own_peak_gb"),
                     reference_peak_gb=median("reference_peak_gb"), speedup_ci95=median_interval(speedups),
                     speedup_by_host_rate=speedup_by_host_rate(pairs))
    return entry
