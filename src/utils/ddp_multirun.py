"""Hydra multirun jobs trained with Lightning's subprocess DDP launcher (`trainer=ddp`, `ddp_sim`).

Lightning starts ranks 1..N-1 of a job by re-running this script's command line: `sys.argv`
plus `hydra.run.dir=<run.dir>`, `hydra.job.name=...`, `hydra.output_subdir=null` (see
`_hydra_subprocess_cmd` in lightning_fabric/strategies/launchers/subprocess_script.py). In a
multirun that command line still holds `-m` and the sweep, so every launched rank would start a
sweep of its own: a different run dir (the multirun job's is a sweep subdir, not `run.dir`),
jobs racing each other, and under Optuna parameters sampled independently on each rank (seen
crashing). And rank 0, which runs every job of the sweep in one process, would find the
previous job's `LOCAL_RANK`/`MASTER_PORT` and process group still set, and not launch the next
job's ranks at all.

So, on rank 0 of a multirun job (`job_shared_with_launched_ranks`):
- before fit, the job's own overrides (sweep values and Optuna samples included, as Hydra
  resolved them for this job) and its run dir go into an environment variable that Lightning
  copies into the launched ranks;
- during fit, `LaunchedRankWatch` stands in for Lightning's child-process observer, which
  SIGKILLs every process, rank 0 included, once a rank exits with an error, and goes on watching
  after the job: rank 0 is the sweep, so one failed job (an out-of-memory error in `-m
  data.batch_size=8,4,2`) ended the whole sweep with no record of it. The watch stops the job's
  other launched ranks and leaves rank 0 to fail the job itself: under gloo its next collective
  with a dead rank raises. Only a rank 0 still in the job FAILED_RANK_GRACE_S later, stuck in a
  collective, is stopped as Lightning would, and the sweep with it. (Under NCCL a collective
  with a dead rank waits for the process group's timeout, unless torch's NCCL watchdog takes
  the process down first: there a failing launched rank still ends the sweep, as before. A job
  whose rank 0 fails first fails alone under either backend.);
- after fit, it waits for those ranks (one still running after RANK_EXIT_TIMEOUT_S, or
  FAILED_JOB_RANK_EXIT_S after rank 0 itself failed, is stopped, and the job fails), destroys the
  process group and restores the launcher's environment variables, so the next job starts clean.
A launched rank (`argv_for_launched_rank`, called by src/train.py before Hydra parses the
command line) replaces its command line by that one job's, as a single run in the same run dir.

A single run (no multirun) whose Trainer launches its ranks gets the watch and the wait too:
Lightning's observer SIGKILLed its rank 0 within seconds of a launched rank's failure (an
out-of-memory error on GPU 1, a bad image in that rank's share), before it could write its crash
checkpoint and failure record or finish its wandb run.

Ranks started by an external launcher (torchrun, SLURM's srun) do not go through this: each
process runs the command it was given, so there a sweep must not sample per process (use the
submitit launcher, which runs every job as one SLURM job of N tasks; see README).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
from unittest import mock

from src.utils.environment import environment_restored
from src.utils.hydra_runtime import (DDP_JOB_ENV, hydra_config, is_multirun, job_overrides, launched_rank,
                                     override_key)

log = logging.getLogger(__name__)

#: What Lightning's launcher sets in rank 0's own environment for its children.
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
#: Seconds rank 0 waits for a job's other ranks to exit before stopping them and failing the job.
RANK_EXIT_TIMEOUT_S = 600
#: Seconds a rank 0 is given to end a job whose launched rank failed (under gloo it does in
#: seconds, its next collective raising); still in the job then, it is stuck in a collective.
FAILED_RANK_GRACE_S = 120
#: The same wait after rank 0 itself failed: a launched rank then waits in a collective for a rank
#: 0 that left it (only the process group's timeout, 30 minutes, would end it) and has nothing
#: left to save (rank 0 writes the checkpoints).
FAILED_JOB_RANK_EXIT_S = 30


def quote_override_value(value: str) -> str:
    """A string as a quoted Hydra override value (paths may hold '=', ',' or spaces)."""
    return "'" + value.replace("'", "\\'") + "'"


# Hydra command-line flags followed by a separate value (`--config-name other`).
_FLAGS_WITH_VALUE = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-p", "--package",
                     "--experimental-rerun")
_MULTIRUN_FLAGS = ("-m", "--multirun")


def hydra_flags(argv: list[str]) -> list[str]:
    """The Hydra flags of a command line (config name, dir...) without -m and without overrides."""
    flags, tokens = [], iter(argv)
    for token in tokens:
        if token in _MULTIRUN_FLAGS or not token.startswith("-"):
            continue
        flags.append(token)
        if token in _FLAGS_WITH_VALUE:
            flags.append(next(tokens, ""))
    return flags


def argv_for_launched_rank(argv: list[str], environ=os.environ) -> list[str] | None:
    """For a process Lightning launched as rank > 0 of a multirun job: the command line of that
    single job (same flags and overrides, same run dir, Hydra in run mode). None for any other
    process."""
    job = environ.get(DDP_JOB_ENV)
    if not job or not launched_rank(environ):
        return None
    spec = json.loads(job)
    return [argv[0], *hydra_flags(argv[1:]), *spec["hydra_overrides"], *spec["overrides"],
            f"hydra.run.dir={quote_override_value(spec['run_dir'])}",
            "hydra.output_subdir=null",  # rank 0 wrote the job's .hydra/ already
            f"hydra.job.name=train_ddp_process_{environ['LOCAL_RANK']}",  # its own log file in the run dir
            "hydra.mode=RUN"]  # also when the config itself asks for a sweep (hparams_search)


# Hydra overrides rank 0 sets for a launched rank itself, or that only matter to a sweep.
_REPLACED_HYDRA_KEYS = ("hydra.run.dir", "hydra.output_subdir", "hydra.job.name", "hydra.mode")


def _job_spec() -> dict:
    hydra_cfg = hydra_config()
    hydra_overrides = [o for o in hydra_cfg.overrides.hydra
                       if not override_key(o).startswith(_REPLACED_HYDRA_KEYS)]
    return {"overrides": job_overrides(), "hydra_overrides": hydra_overrides,
            "run_dir": hydra_cfg.runtime.output_dir}


def launches_ranks_for_multirun_job(trainer) -> bool:
    """True on rank 0 of a Hydra multirun job whose Trainer will launch the other ranks itself."""
    return is_multirun() and launches_ranks_itself(trainer)


def launches_ranks_itself(trainer) -> bool:
    """True on rank 0 of a run whose Trainer will launch the other ranks itself (Lightning's
    subprocess launcher; not ranks that srun or torchrun started)."""
    launcher = getattr(trainer.strategy, "launcher", None)
    # Imported here, as torch.distributed below: src/train.py imports this module before torch,
    # which must not load until the allocator is configured (src/utils/allocator.py).
    from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    return (isinstance(launcher, _SubprocessScriptLauncher)
            and not trainer.strategy.cluster_environment.creates_processes_externally)


@contextlib.contextmanager
def job_shared_with_launched_ranks(trainer):
    """Around `trainer.fit` (see the module docstring); outside a multirun job, the watch alone
    (where the Trainer launches its ranks itself), nothing else."""
    multirun = launches_ranks_for_multirun_job(trainer)
    if not multirun and not launches_ranks_itself(trainer):
        yield
        return
    from pytorch_lightning.strategies.launchers import subprocess_script

    watches: list[LaunchedRankWatch] = []

    def watch_launched_ranks(child_processes: list[subprocess.Popen]) -> None:
        watches.append(LaunchedRankWatch(child_processes, multirun=multirun))
        watches[-1].start()

    with environment_restored((DDP_JOB_ENV, *LAUNCHER_ENV)):
        if multirun:
            os.environ[DDP_JOB_ENV] = json.dumps(_job_spec())
        failed = False
        try:
            # Lightning's launcher starts its observer through this module-level name.
            with mock.patch.object(subprocess_script, "_launch_process_observer", watch_launched_ranks):
                yield
        except BaseException:
            failed = True
            raise
        finally:
            for watch in watches:
                watch.job_ended.set()
            codes = _wait_for_launched_ranks(trainer.strategy.launcher,
                                             FAILED_JOB_RANK_EXIT_S if failed else RANK_EXIT_TIMEOUT_S)
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
    bad = {rank: "stuck, stopped" if code is None else code for rank, code in codes.items() if code != 0}
    if bad and not failed:
        raise RuntimeError(f"Ranks launched beside rank 0 exited with codes {bad}")


#: the exit status of a rank SIGTERM stopped (128 + SIGTERM, as a shell gives): StopSignals stops
#: every rank after the same iteration, so a launched rank's 143 is the job's stop, not a failure
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM
#: the exit status of a command a Ctrl-C stopped, as a shell reports one SIGINT ended
INTERRUPT_EXIT_STATUS = 128 + signal.SIGINT


def stop_this_process() -> None:
    """What Lightning's observer does at once: only a kill ends a process stuck in a collective
    (Windows has no SIGKILL; Lightning sends SIGTERM there)."""
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


class LaunchedRankWatch(threading.Thread):
    """Watches one job's launched ranks while rank 0 trains (see the module docstring): once one
    exits with an error, stops the others and gives rank 0 `grace_s` to end the job
    (`job_ended`), then calls `stop` (this process, the sweep's in a `multirun`, as Lightning's
    observer would at once)."""

    def __init__(self, child_processes: list[subprocess.Popen], poll_s: float = 1.0,
                 grace_s: float = FAILED_RANK_GRACE_S, stop=stop_this_process, multirun: bool = True):
        super().__init__(daemon=True, name="launched-rank-watch")
        self.child_processes, self.poll_s, self.grace_s, self.stop = child_processes, poll_s, grace_s, stop
        self.multirun = multirun
        self.job_ended = threading.Event()

    def run(self) -> None:
        while not self.job_ended.wait(self.poll_s):
            codes = {rank: proc.poll() for rank, proc in enumerate(self.child_processes, start=1)}
            # (a stop, 143 or a Ctrl-C's 130: rank 0 is writing interrupted.ckpt, however long that takes)
            failed = {rank: code for rank, code in codes.items()
                      if code not in (None, 0, SIGTERM_EXIT_STATUS, INTERRUPT_EXIT_STATUS)}
            if not failed:
                continue
            log.error("Rank(s) of this job exited with codes %s: stopping its other ranks; the job fails%s", failed,
                      " and the sweep goes on" if self.multirun else " (rank 0 saves its crash checkpoint and record)")
            for proc in self.child_processes:
                if proc.poll() is None:
                    proc.kill()
            if not self.job_ended.wait(self.grace_s):
                log.error("Rank 0 is still in the job %d s after its other ranks ended: stuck in a collective with "
                          "them; stopping %s", self.grace_s,
                          "the sweep (its later jobs do not run)" if self.multirun else "it")
                self.stop()
            return


def _wait_for_launched_ranks(launcher, timeout_s: float) -> dict[int, int | None]:
    """Local rank -> exit code (None: still running after `timeout_s`, then stopped)."""
    codes = {}
    # Lightning's subprocess launcher's own list (job_shared_with_launched_ranks runs only under
    # it): read without a default, so a renamed attribute fails here rather than waiting for no rank.
    for local_rank, proc in enumerate(launcher.procs, start=1):
        try:
            codes[local_rank] = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # A stuck rank must not stall the rest of the sweep, nor keep its device (memory) from
            # the next job: it is stopped (rank 0 has saved the job's checkpoints; a rank
            # launched beside it writes none), and the job counts as failed.
            log.warning("Rank %d (pid %d) still running after %d s; stopping it before the next job",
                        local_rank, proc.pid, timeout_s)
            proc.kill()
            proc.wait()
            codes[local_rank] = None
    return codes
