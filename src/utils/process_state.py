"""What a training run changes in its process beyond its own objects, put back when it ends, so
that a notebook's or script's next call (or its own code) finds torch and the environment as it
left them: Lightning's Trainer sets cuDNN's autotuner and torch's deterministic-algorithms mode
process-wide (`trainer.benchmark`, `trainer.deterministic`, and CUBLAS_WORKSPACE_CONFIG with the
latter), Lightning's DDP launcher shares the cores out among the ranks (rank 0's torch threads
and OMP_NUM_THREADS: a multirun's later jobs, a CPU one say, would run on a share),
`pl.seed_everything` leaves the seed for Lightning's DDP setup in the environment (an
unseeded run after a seeded one would reseed its ranks with it), and a run sets wandb's offline
default and the checkpoint it resolved for its ranks; and the caller's random streams, which it
seeds (`callers_rng_restored`)."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

import torch

from src.utils.environment import environment_restored, usable_cpus
from src.utils.hydra_runtime import RESOLVED_CHECKPOINT_ENV
from src.utils.rng import callers_rng_restored

log = logging.getLogger(__name__)

#: environment variables a run sets for itself and its launched ranks
RUN_SET_ENVIRONMENT = ("CUBLAS_WORKSPACE_CONFIG", "WANDB_MODE", "PL_GLOBAL_SEED", "PL_SEED_WORKERS",
                       "OMP_NUM_THREADS", RESOLVED_CHECKPOINT_ENV)


@contextlib.contextmanager
def process_state_restored():
    """Torch's global backend flags, its thread count, the run's environment variables, the
    random streams and the Ctrl-C handler as they were before. (Lightning ignores SIGINT once a Ctrl-C stops a fit, and
    gives the handler back only where the fit had got as far as installing its own: a notebook
    interrupted during setup lost its interrupt key for good.)"""
    in_main_thread = threading.current_thread() is threading.main_thread()   # (signals live there)
    ctrl_c = signal.getsignal(signal.SIGINT) if in_main_thread else None
    threads = torch.get_num_threads()
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        with environment_restored(RUN_SET_ENVIRONMENT), callers_rng_restored():
            yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.set_num_threads(threads)
        if ctrl_c is not None:
            signal.signal(signal.SIGINT, ctrl_c)


def threads_within_usable_cpus() -> None:
    """torch's threads at most the CPUs this process may use (`usable_cpus`): torch counts the
    machine's cores, not a container's CPU limit (`docker --cpus=4` on a 64-core host), and 32
    threads sharing 4 CPUs' time run many times slower than 4. A user's OMP_NUM_THREADS stands."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    usable = usable_cpus()
    if torch.get_num_threads() > usable:
        log.info("torch's threads lowered from %d to %d, the CPUs this process may use (its CPU affinity and cgroup "
                 "CPU limit; OMP_NUM_THREADS sets another count)", torch.get_num_threads(), usable)
        torch.set_num_threads(usable)


def threads_shared_among_local_ranks(strategy) -> None:
    """Before the fit: the usable CPUs (`usable_cpus`) shared out among this machine's DDP
    ranks. Lightning's DDP launchers give each rank the CPU affinity's count divided by the
    machine's ranks where OMP_NUM_THREADS is unset: in a container limited to 16 CPUs' time on
    a 128-core node, 8 ranks ran 16 threads each. Set here (with torch's count), the variable
    keeps the launcher's hands off and reaches the ranks it starts. A user's OMP_NUM_THREADS (or
    torchrun's) stands; a single-device run has no launcher and keeps `threads_within_usable_cpus`'."""
    if os.environ.get("OMP_NUM_THREADS") or getattr(strategy, "launcher", None) is None:
        return
    share = max(1, usable_cpus() // max(1, getattr(strategy, "num_processes", 1)))
    os.environ["OMP_NUM_THREADS"] = str(share)
    torch.set_num_threads(share)
