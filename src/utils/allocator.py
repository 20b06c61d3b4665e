"""Process-wide CPU memory allocation (`allocator` in conf/train.yaml), set before torch loads.

Training allocates and frees tensors of tens to hundreds of MB many times per iteration. By
default glibc maps each block above its mmap threshold fresh from the kernel and returns it on
free, so every new activation or gradient is zero-filled one 4 KB page fault at a time; for
U-GAT-IT and NICE-GAN that system time rivals the arithmetic (experiments/bench/README.md).

- `thp`: torch backs its CPU allocations of 2 MB and more with transparent huge pages
  (`THP_MEM_ALLOC_ENABLE=1`): one fault per 2 MB. torch reads the variable once, at its first
  allocation, so it must be set before `import torch`.
- `reuse`: glibc keeps freed blocks (up to 1 GB) in its heap for the next allocation instead of
  unmapping them (`mallopt`, and the `MALLOC_*_` variables for child processes such as DDP
  ranks). Faster still, but the process keeps its high-water mark of memory.
- `thp_reuse`: both. `default`: neither.

A variable already set in the environment wins over the config. The setting is process-wide:
in a multirun, every job that runs in the same process keeps the first job's setting.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

ALLOCATORS = ("default", "thp", "reuse", "thp_reuse")
_applied: str | None = None  # the setting this process runs with, once configured

THP_ENV = {"THP_MEM_ALLOC_ENABLE": "1"}
REUSE_BYTES = {"MALLOC_MMAP_THRESHOLD_": 1 << 30, "MALLOC_TRIM_THRESHOLD_": (1 << 31) - 1}
# mallopt parameter numbers from glibc's malloc.h.
_MALLOPT_PARAM = {"MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1}
#: the largest mmap threshold older glibc releases accept (HEAP_MAX_SIZE / 2 on 64-bit); newer
#: ones take any
GLIBC_CAPPED_MMAP_THRESHOLD = 32 << 20


def allocator_environment(name: str) -> dict[str, str]:
    """The environment variables that select allocator `name` in a new process."""
    check_allocator_name(name)
    env = dict(THP_ENV) if "thp" in name else {}
    if "reuse" in name:
        env.update({key: str(value) for key, value in REUSE_BYTES.items()})
    return env


def check_allocator_name(name: str) -> None:
    if name not in ALLOCATORS:
        raise ValueError(f"allocator={name!r} is not one of {', '.join(ALLOCATORS)} (conf/train.yaml: allocator)")


def configure_allocator(name: str) -> None:
    """Apply allocator `name` to this process and the processes it starts. Call before torch
    is imported; a variable the user already set is left as it is."""
    global _applied
    check_allocator_name(name)
    if _applied is not None:
        if name != _applied:
            log.warning("allocator=%s ignored: this process already runs with allocator=%s (it cannot be "
                        "changed once torch has allocated memory)", name, _applied)
        return
    _applied = name
    if "thp" in name and "torch" in sys.modules:
        log.warning("allocator=%s: torch is already imported, so THP_MEM_ALLOC_ENABLE may come too late "
                    "for this process (it still reaches the processes it starts)", name)
    environment = allocator_environment(name)
    set_here = [key for key in environment if key not in os.environ]
    for key, value in environment.items():
        os.environ.setdefault(key, value)
    if "reuse" in name:
        _apply_to_this_process(set_here)


def _apply_to_this_process(set_here: list[str]) -> None:
    """glibc reads MALLOC_*_ only at process start: set the same values with mallopt.

    Older glibc refuses an mmap threshold above 32 MiB, and takes the trim threshold anyway,
    which freezes its dynamic mmap threshold at the 128 KiB start: more blocks mapped fresh than
    with no setting at all. So the threshold falls back to 32 MiB, and where even that is refused
    neither is set (nor left in the environment where this call put them, `set_here`: children
    would meet the same)."""
    libc_path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_path)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.warning("allocator 'reuse' needs glibc's mallopt, which this platform lacks (%s); "
                    "running with the platform's allocator", libc_path)
        return
    threshold_key = "MALLOC_MMAP_THRESHOLD_"
    threshold = int(os.environ[threshold_key])
    if mallopt(_MALLOPT_PARAM[threshold_key], ctypes.c_int(threshold)) != 1:
        capped = min(threshold, GLIBC_CAPPED_MMAP_THRESHOLD)
        if capped == threshold or mallopt(_MALLOPT_PARAM[threshold_key], ctypes.c_int(capped)) != 1:
            log.warning("mallopt refused %s=%d: allocator 'reuse' is not applied (a trim threshold alone would "
                        "map more blocks fresh than glibc's default)", threshold_key, threshold)
            for key in set_here:
                if key in REUSE_BYTES:   # thp_reuse keeps its huge pages
                    os.environ.pop(key, None)
            return
        log.warning("mallopt refused %s=%d (this glibc caps it): using %d", threshold_key, threshold, capped)
        if threshold_key in set_here:
            os.environ[threshold_key] = str(capped)
    trim_key = "MALLOC_TRIM_THRESHOLD_"
    value = int(os.environ[trim_key])
    if mallopt(_MALLOPT_PARAM[trim_key], ctypes.c_int(value)) != 1:
        log.warning("mallopt refused %s=%d; that setting is not applied", trim_key, value)
