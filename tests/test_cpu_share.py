"""The CPUs a run may use (src/utils/environment.py usable_cpus) and torch's threads kept within
them (src/utils/process_state.py threads_within_usable_cpus)."""
import torch

from src.utils import environment, process_state
from src.utils.environment import cpu_quota


def cgroup_tree(root, membership: str, limits: dict[str, str]):
    """A fake /sys/fs/cgroup under `root` with `limits` ({relative file: content}) and a fake
    /proc/self/cgroup holding `membership`."""
    for name, content in limits.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    (root / "membership").write_text(membership)
    return root, root / "membership"


def test_a_cgroup_cpu_limit_counts_as_its_cpus_rounded_up(tmp_path):
    # a container with its own cgroup namespace (v2): its limit at the root
    assert cpu_quota(*cgroup_tree(tmp_path / "a", "0::/\n", {"cpu.max": "250000 100000\n"})) == 3
    assert cpu_quota(*cgroup_tree(tmp_path / "b", "0::/\n", {"cpu.max": "max 100000\n"})) is None
    # a SLURM job's step under its job (v2): the smallest limit on the way up
    job = {"slurm/job_7/cpu.max": "400000 100000\n", "slurm/job_7/step_0/cpu.max": "max 100000\n"}
    assert cpu_quota(*cgroup_tree(tmp_path / "c", "0::/slurm/job_7/step_0\n", job)) == 4
    # cgroup v1: the cpu controller's own tree, named with its companions
    v1 = {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "150000\n", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n",
          "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    assert cpu_quota(*cgroup_tree(tmp_path / "d", "4:cpu,cpuacct:/docker/x\n1:memory:/docker/x\n", v1)) == 2
    assert cpu_quota(tmp_path / "none", tmp_path / "no_membership") is None


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


class _LaunchingStrategy:
    """What `threads_shared_among_local_ranks` reads of a Lightning DDP strategy."""

    def __init__(self, launcher, num_processes):
        self.launcher, self.num_processes = launcher, num_processes


def test_a_ddp_launch_shares_the_usable_cpus_among_this_machines_ranks(monkeypatch):
    """Lightning's launcher divides the CPU affinity's count, not a container's CPU limit:
    4 ranks under a limit of 8 CPUs on a 64-core host ran 16 threads each. (An empty variable is
    an unset one, and monkeypatch then removes the one the test sets.)"""
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    monkeypatch.setattr(process_state, "usable_cpus", lambda: 8)
    process_state.threads_shared_among_local_ranks(_LaunchingStrategy(object(), 4))
    assert torch.get_num_threads() == 2
    assert process_state.os.environ["OMP_NUM_THREADS"] == "2"   # (the launched ranks' count)
    # more ranks than CPUs: one thread each
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    process_state.threads_shared_among_local_ranks(_LaunchingStrategy(object(), 16))
    assert torch.get_num_threads() == 1


def test_without_a_launcher_or_with_a_users_omp_num_threads_the_count_stands(monkeypatch):
    monkeypatch.setattr(process_state, "usable_cpus", lambda: 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    torch.set_num_threads(2)
    process_state.threads_shared_among_local_ranks(_LaunchingStrategy(None, 1))   # one device
    assert torch.get_num_threads() == 2 and process_state.os.environ["OMP_NUM_THREADS"] == ""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    process_state.threads_shared_among_local_ranks(_LaunchingStrategy(object(), 2))
    assert torch.get_num_threads() == 2
