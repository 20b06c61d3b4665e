"""The process's environment: variables set for a while, and the CPUs it may run on (stdlib
only: imported before torch, whose CUDA allocator reads its settings from the environment when
it loads)."""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable
from pathlib import Path


def allowed_cpus() -> set[int] | None:
    """The CPUs this process may run on: a SLURM job's or a container's share of a node, where
    os.cpu_count() counts the whole node. None where the system does not say (macOS, Windows)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


CGROUP_ROOT, CGROUP_MEMBERSHIP = Path("/sys/fs/cgroup"), Path("/proc/self/cgroup")


def cgroup_folders(controller: str, cgroup_root: Path = CGROUP_ROOT,
                   membership: Path = CGROUP_MEMBERSHIP) -> list[Path]:
    """The folders of this process's cgroup for `controller` ("cpu", "memory") and of every cgroup
    above it, innermost first (a limit may sit on any: a SLURM job's, a systemd slice's), from
    /proc/self/cgroup: cgroup v2's one tree (`0::/path`) and v1's tree per controller
    (`4:cpu,cpuacct:/path`). In a container with its own cgroup namespace the path is "/"."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return []
    folders = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            tree = cgroup_root
        elif controller in controllers.split(","):
            tree = cgroup_root / controllers
            tree = tree if tree.is_dir() else cgroup_root / controller
        else:
            continue
        inner = tree / path.lstrip("/")
        folders += [inner, *(folder for folder in inner.parents if folder.is_relative_to(tree))]
    return folders


def read_numbers(path: Path) -> list[str]:
    """The words of a cgroup file, [] where it cannot be read (no such controller or level)."""
    try:
        return path.read_text().split()
    except OSError:
        return []


def cpu_quota(cgroup_root: Path = CGROUP_ROOT, membership: Path = CGROUP_MEMBERSHIP) -> int | None:
    """The CPU time a cgroup limit allows this process, in whole CPUs rounded up (`docker
    --cpus=4`, a Kubernetes limit: the CPUs stay all visible, their time is capped); None without
    a limit, or where the system has no cgroups. cgroup v2's cpu.max, v1's CFS quota; the
    smallest of the process's cgroup and those above it."""
    quotas = []
    for folder in cgroup_folders("cpu", cgroup_root, membership):
        words = (read_numbers(folder / "cpu.max")
                 or read_numbers(folder / "cpu.cfs_quota_us") + read_numbers(folder / "cpu.cfs_period_us"))
        if len(words) >= 2 and words[0].isdigit() and words[1].isdigit() and int(words[1]) > 0:
            quotas.append(max(1, math.ceil(int(words[0]) / int(words[1]))))   # ("max", "-1": no limit)
    return min(quotas, default=None)


def usable_cpus() -> int:
    """How many CPUs this process may run on (`allowed_cpus`: 8 of a 128-core node for `srun -c
    8`, where os.cpu_count() says 128), and has the time of (`cpu_quota`)."""
    count = len(allowed_cpus() or ()) or os.cpu_count() or 1
    return min(count, cpu_quota() or count)


def memory_limit(cgroup_root: Path = CGROUP_ROOT, membership: Path = CGROUP_MEMBERSHIP) -> int | None:
    """The memory a cgroup limit allows this process (`docker --memory`, a Kubernetes limit, a
    SLURM job's --mem) in bytes; None without one. cgroup v2's memory.max, v1's limit (a huge
    number when unset); the smallest of the process's cgroup and those above it."""
    limits = []
    for folder in cgroup_folders("memory", cgroup_root, membership):
        words = read_numbers(folder / "memory.max") or read_numbers(folder / "memory.limit_in_bytes")
        if words and words[0].isdigit() and int(words[0]) < 1 << 60:
            limits.append(int(words[0]))
    return min(limits, default=None)


def physical_memory_bytes() -> int | None:
    """The memory this process may use: the machine's, or a cgroup's limit below it (a
    container's, a job's: the OOM killer stops a worker there, whatever the machine has). None
    where the system does not say (Windows)."""
    try:
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    return min(machine, memory_limit() or machine)


#: torch reads these at every torch.load, and they win over its `weights_only` argument
FORCE_WEIGHTS_ONLY, FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def weights_only_loads():
    """Every torch.load inside the block reads tensors only, also one a library makes with
    `weights_only=False` (torch-fidelity's Inception weights, torch.export's pickled constants):
    a file swapped between a check and a library's own load is read as safely as the check read
    it. A user's opposite setting (for torch >= 2.6's default), which torch refuses beside it, is
    set aside for the block."""
    with environment_restored((FORCE_WEIGHTS_ONLY, FORCE_NO_WEIGHTS_ONLY)):
        os.environ[FORCE_WEIGHTS_ONLY] = "1"
        os.environ.pop(FORCE_NO_WEIGHTS_ONLY, None)
        yield


@contextlib.contextmanager
def environment_restored(names: Iterable[str]):
    """The environment variables `names` as they were before the block (unset where they were)."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
