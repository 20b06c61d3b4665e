"""What the benchmark needs to know about the machine: how busy it is, and how much memory a
process has used.

Timings on a shared CPU are only worth keeping when nothing else runs: a second busy torch
process on the other core slows a training step 7-25x. Two views of "busy" are used:

- the 1-minute load average (`/proc/loadavg`), the usual rule of thumb before a run;
- the CPU time other processes used while we measured: all CPUs' busy time from `/proc/stat`
  minus this process's own CPU time, over the same wall-clock window. Unlike the load average
  it is not smeared over a minute, so it does not count our own previous configuration.
"""
from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from typing import Callable


def load_average() -> float:
    """The 1-minute load average (runnable processes, averaged over the last minute)."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def _busy_cpu_seconds() -> float:
    """Seconds all CPUs together spent on anything but idle/iowait since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user time; summing the first 8 fields avoids double counting
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU time of this process (all its threads) plus its finished children."""
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_usage.ru_utime + self_usage.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class ForeignCpuMeter:
    """Average number of cores used by OTHER processes between `start()` and `stop()`.

    DataLoader workers that are still running are not "own" time until they exit, so measure
    a window in which this process has no live children (the training-step measurement).
    """
    _wall: float = 0.0
    _busy: float = 0.0
    _own: float = 0.0

    def start(self) -> "ForeignCpuMeter":
        self._wall, self._busy, self._own = time.perf_counter(), _busy_cpu_seconds(), _own_cpu_seconds()
        return self

    def stop(self) -> float:
        wall = time.perf_counter() - self._wall
        busy = _busy_cpu_seconds() - self._busy
        own = _own_cpu_seconds() - self._own
        return max(0.0, busy - own) / max(wall, 1e-9)


def busy_cores(sample_s: float = 3.0) -> float:
    """Cores in use by any process right now, averaged over `sample_s` seconds (we sleep meanwhile)."""
    start = _busy_cpu_seconds()
    time.sleep(sample_s)
    return (_busy_cpu_seconds() - start) / sample_s


def wait_until_quiet(max_load: float | None, max_busy_cores: float | None, wait_s: float, checks: int,
                     log: Callable[[str], None] = print) -> bool:
    """Wait (up to `checks` times `wait_s` seconds) until the machine looks idle.

    Quiet means: 1-minute load average below `max_load` (skipped when None) AND cores in use
    right now below `max_busy_cores` (skipped when None). Returns whether it got quiet.
    """
    for attempt in range(checks + 1):
        load = load_average()
        busy = busy_cores() if max_busy_cores is not None else 0.0
        load_ok = max_load is None or load < max_load
        busy_ok = max_busy_cores is None or busy < max_busy_cores
        if load_ok and busy_ok:
            return True
        if attempt < checks:
            log(f"machine busy (load {load:.2f}, {busy:.2f} cores in use); re-checking in {wait_s:.0f} s "
                f"({attempt + 1}/{checks})")
            time.sleep(wait_s)
    return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def host_speed(repeats: int = 3) -> dict[str, float]:
    """What this host delivers right now, on the threads torch is set to use: the rate of a
    2048^3 fp32 matrix product (G multiply-adds/s, MKL's peak on these shapes) and of a 64 MB
    copy (GB/s read + written; twice the 32 MB L3). The same code measures 10-20% apart on
    different days here, and the ratio against the reference moves with it (a slower core
    stretches our arithmetic-bound iteration more than the reference's memory-heavier one), so
    every row records the host it was measured on. Run after the row's measurement: its buffers
    must not raise the row's peak memory."""
    import torch

    def median_seconds(fn: Callable[[], object]) -> float:
        fn()   # warm-up: first touch of the output, thread start-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm_s = median_seconds(lambda: a @ b)
    source = torch.ones(16 * 1024 * 1024)   # 64 MB
    target = torch.empty_like(source)
    copy_s = median_seconds(lambda: target.copy_(source))
    return {"gemm_gmac_per_s": n ** 3 / gemm_s / 1e9, "copy_gb_per_s": 2 * source.numel() * 4 / copy_s / 1e9}
