"""What the benchmark needs to know about the machine: how busy it is, and how much memory a
process has used.

Timings on a shared CPU are only worth keeping when nothing else runs: a second busy torch
process on the other core slows a training step 7-25x. Two views of "busy" are used:

- the 1-minute load average (`/proc/loadavg`), the usual rule of thumb before a run;
- the CPU time other processes used while we measured: the busy time of the CPUs this process
  may use (all of them, or a job's share of a node) from `/proc/stat` minus its own CPU time, over the same wall-clock window. Unlike the load average
  it is not smeared over a minute, so it does not count our own previous configuration.
"""
from __future__ import annotations

import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from src.utils.environment import allowed_cpus


def load_average() -> float:
    """The 1-minute load average (runnable processes, averaged over the last minute)."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def busy_cpu_ticks(stat: str, cpus: set[int] | None = None) -> int:
    """From /proc/stat's text, the clock ticks the CPUs `cpus` (None: all together) spent on
    anything but idle/iowait since boot: on a shared node, other jobs' CPUs are not this run's
    business."""
    rows = {name: [int(v) for v in values] for name, *values in (line.split() for line in stat.splitlines())
            if name.startswith("cpu")}
    wanted = [rows["cpu"]] if cpus is None else [rows[f"cpu{cpu}"] for cpu in cpus if f"cpu{cpu}" in rows]
    busy = 0
    for fields in wanted:
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        # guest time is already counted in user time; summing the first 8 fields avoids double counting
        busy += sum(fields[:8]) - idle
    return busy


def _busy_cpu_seconds() -> float:
    """Seconds the CPUs this process may use spent on anything but idle/iowait since boot."""
    with open("/proc/stat") as f:
        return busy_cpu_ticks(f.read(), allowed_cpus()) / os.sysconf("SC_CLK_TCK")


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
    """Cores in use by any process right now, of those this process may use, averaged over
    `sample_s` seconds (we sleep meanwhile)."""
    start = _busy_cpu_seconds()
    time.sleep(sample_s)
    return (_busy_cpu_seconds() - start) / sample_s


def wait_until_quiet(max_load: float | None, max_busy_cores: float | None, wait_s: float, checks: int,
                     log: Callable[[str], None] = print) -> bool:
    """Wait (up to `checks` times `wait_s` seconds) until the machine looks idle.

    Quiet means: 1-minute load average below `max_load` (skipped when None, and on a share of a
    node, where it counts other jobs) AND cores in use right now, of those this process may use,
    below `max_busy_cores` (skipped when None). Returns whether it got quiet.
    """
    allowed = allowed_cpus()
    if max_load is not None and allowed is not None and len(allowed) < (os.cpu_count() or 0):
        log(f"this process may use {len(allowed)} of the machine's {os.cpu_count()} CPUs: the load average, "
            f"which counts all of them, is not checked")
        max_load = None
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
    """Peak resident set size of this process so far: the kernel's high-water mark of its memory
    (`VmHWM`). Not `ru_maxrss`, which Linux carries over an exec from the process that started it:
    a worker started by a parent holding 0.8 GB reports 0.8 GB whatever it uses itself. Where
    /proc has no `VmHWM` (not Linux), ru_maxrss (KiB on Linux, bytes on macOS)."""
    return _status_bytes("VmHWM:") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
        1 if sys.platform == "darwin" else 1024)


def current_rss_bytes() -> int | None:
    return _status_bytes("VmRSS:")


def _status_bytes(field: str) -> int | None:
    """A size from /proc/self/status (kB there), or None where it is not there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


#: the widest vector instructions a CPU has, by its /proc/cpuinfo flag, widest first
VECTOR_LEVELS = (("avx512_bf16", "AVX-512 with BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))


def cpu_kind(cpuinfo: str | None = None) -> str:
    """The CPU's name, generation and widest vector instructions, e.g. "AMD EPYC (family 23
    model 49, AVX2)". The model name alone does not tell hosts apart: the shared hosts this is
    measured on all report "AMD EPYC", yet some are AVX2-only parts and others have AVX-512 with
    BF16, and MKL's products run at a different share of the FMA peak on each, while the oneDNN
    convolutions the references spend their time in do not. So results record it, and
    `versus_reference` keeps one verdict per kind."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break   # the first processor's block describes them all
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" not in fields:
        return name
    flags = set(fields.get("flags", "").split())
    vectors = next((label for flag, label in VECTOR_LEVELS if flag in flags), "no AVX")
    return f"{name} (family {fields['cpu family']} model {fields.get('model', '?')}, {vectors})"


#: where a Linux guest's free page reporting (virtio-balloon) keeps its settings
PAGE_REPORTING = Path("/sys/module/page_reporting/parameters")
#: the largest order of a free block on x86-64 (4 MB); a reporting order above it reports nothing
MAX_PAGE_ORDER = 10


def free_page_reporting_order(params: Path = PAGE_REPORTING) -> int | None:
    """The smallest order of the free memory blocks this virtual machine hands back to its
    hypervisor (9: every free 2 MB block), or None where none is handed back (no reporting
    device, or not a virtual machine). The hypervisor drops a reported block's memory and backs
    it again on its next first touch, and transparent huge pages are taken from exactly those
    blocks: on a Firecracker guest with order 9 the first 512 MB of huge pages a process filled
    took 0.5-7.7 s, against 0.1-0.16 s with reporting off (experiments/bench/README.md). That
    moves `allocator=thp`'s warm-up by seconds, so every row records it."""
    try:
        order = int((params / "page_reporting_order").read_text())
    except (OSError, ValueError):
        return None
    try:   # some kernels count what they reported: nothing means no device reports
        if int((params / "reported_kib").read_text()) == 0:
            return None
    except (OSError, ValueError):
        pass
    return order if order <= MAX_PAGE_ORDER else None


def host_speed(repeats: int = 3) -> dict[str, float | str]:
    """What this host delivers right now, on the threads torch is set to use: the rate of a
    2048^3 fp32 matrix product (G multiply-adds/s, MKL's peak on these shapes), of oneDNN's 3x3
    convolution of 256 channels at 32x32 (what the references' direct convolutions run at),
    and of a 64 MB copy (GB/s read + written; twice the 32 MB L3), and the CPU's kind
    (`cpu_kind`). The same code measures 10-20% apart on different days here, and the ratio
    against the reference moves with it: much of our iteration is MKL's products (Winograd's
    and the small layers'), much of the reference's is oneDNN's convolutions, and the two
    stand in a different proportion on different CPUs (51 against 76-84 G/s on an AVX2 host).
    So every row records the host it was measured on, with its free page reporting. Run after
    the row's measurement: its buffers must not raise the row's peak memory."""
    import torch
    import torch.nn.functional as F

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
    image, weight = torch.randn(1, 256, 32, 32), torch.randn(256, 256, 3, 3)
    conv_s = median_seconds(lambda: F.conv2d(image, weight, padding=1))
    return {"gemm_gmac_per_s": n ** 3 / gemm_s / 1e9, "conv_gmac_per_s": 256 * 256 * 9 * 32 * 32 / conv_s / 1e9,
            "copy_gb_per_s": 2 * source.numel() * 4 / copy_s / 1e9, "cpu_kind": cpu_kind(),
            "free_page_reporting_order": free_page_reporting_order()}
