"""The CPUs a run may use (src/utils/environment.py usable_cpus) and torch's threads kept within
them (src/utils/process_state.py threads_within_usable_cpus)."""
import torch

from src.utils import environment, process_state
from src.utils.environment import cpu_quota


def test_a_cgroup_cpu_limit_counts_as_its_cpus_rounded_up(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("250000 100000\n")   # docker --cpus=2.5
    assert cpu_quota(v2) == 3
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(v1) == 4
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(v1) is None
    assert cpu_quota(tmp_path / "none") is None


def test_usable_cpus_take_the_smaller_of_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(environment, "allowed_cpus", lambda: set(range(64)))
    monkeypatch.setattr(environment, "cpu_quota", lambda: 4)
    assert environment.usable_cpus() == 4
    monkeypatch.setattr(environment, "cpu_quota", lambda: None)
    assert environment.usable_cpus() == 64


def test_torch_threads_are_lowered_to_the_usable_cpus_unless_omp_num_threads_says(monkeypatch):
    """torch counts the machine's cores, so a process limited to one CPU's time ran as many
    threads as the machine has cores. (conftest puts the thread count back after the test.)"""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(process_state, "usable_cpus", lambda: 1)
    torch.set_num_threads(2)
    process_state.threads_within_usable_cpus()
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    process_state.threads_within_usable_cpus()
    assert torch.get_num_threads() == 2
