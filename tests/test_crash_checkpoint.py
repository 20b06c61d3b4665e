"""No run ends without its checkpoint: an error or Ctrl-C mid-run saves one that resumes."""
import contextlib
import copy
import logging
import os
import re
import shlex
import signal
import sys
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException

from conftest import NO_EVALUATION, last_checkpoint, most_advanced_checkpoint, slurm_task_env
from src.callbacks.checkpoint import INSIDE_ITERATION_KEY, TORN_STEP_KEY
from src.models import step_in_backward
from src.models.cyclegan import CycleGAN
from src.utils.run import run_training

COMMON = ("model=cyclegan", "data.max_dataset_size=4", "seed=7", *NO_EVALUATION)


def fail_at_step(monkeypatch, global_step: int, error: BaseException) -> None:
    """CycleGAN's optimizer steps raise `error` once the run has taken `global_step` of them."""
    original_update = CycleGAN.update

    def update(self, *args, **kwargs):
        if self.trainer.global_step == global_step:
            raise error
        return original_update(self, *args, **kwargs)

    monkeypatch.setattr(CycleGAN, "update", update)


def signal_at_step(patch, global_step: int, signum: int) -> None:
    """CycleGAN's optimizer steps send `signum` to this process once the run has taken
    `global_step` of them (`patch`: a monkeypatch or its context)."""
    original_update = CycleGAN.update

    def update(self, *args, **kwargs):
        if self.trainer.global_step == global_step:
            os.kill(os.getpid(), signum)
        return original_update(self, *args, **kwargs)

    patch.setattr(CycleGAN, "update", update)


def logging_step(checkpoint: dict) -> int:
    """Lightning's step of the loggers' rows (batches that stepped) when `checkpoint` was saved."""
    return checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"]


def crash_file(cfg, name: str) -> dict:
    path = f"{cfg.paths.output_dir}/checkpoints/{name}"
    return torch.load(path, map_location="cpu", weights_only=True)


def test_an_error_before_an_iterations_first_step_saves_a_checkpoint_that_resumes_the_same_run(
        train_cfg, tmp_path, monkeypatch, caplog):
    """Raised in iteration 3's training step before its first optimizer step: the checkpoint
    resumes to the same weights (CycleGAN draws no random numbers before its first step), and
    says it was taken inside an iteration, whose random draws (pix2pix's dropout, a noise
    model's latents) would be spent, so ckpt_path=auto prefers last.ckpt at that progress."""
    straight = last_checkpoint(train_cfg(*COMMON, "max_iters=4"))
    crashing = train_cfg(*COMMON, "max_iters=4")
    crashing.paths.output_dir = str(tmp_path / "my runs" / "crashing")   # (a space: the hint quotes it)
    fail_at_step(monkeypatch, 4, RuntimeError("image 3 is unreadable"))   # at the start of iteration 3
    with pytest.raises(RuntimeError, match="image 3 is unreadable"):
        run_training(crashing)
    monkeypatch.undo()
    saved = crash_file(crashing, "crashed.ckpt")
    assert saved["global_step"] == 4
    assert TORN_STEP_KEY not in saved   # between two players' steps: nothing half-stepped
    assert saved[INSIDE_ITERATION_KEY] and "crashed.ckpt was taken inside iteration 3, before its first" in caplog.text
    # said in the user's words, with both ways to resume it, each override pasteable as it is
    hint = re.search(r"Stopped by RuntimeError \(image 3 is unreadable\): saved crashed.ckpt at iteration 2. Resume "
                     r"with the run's command and (.+) \(or, with (.+), ckpt_path=auto\)", caplog.text)
    pasted = OverridesParser.create().parse_overrides([*shlex.split(hint[1]), *shlex.split(hint[2])])
    assert [(o.key_or_group, o.value()) for o in pasted] == [
        ("ckpt_path", f"{crashing.paths.output_dir}/checkpoints/crashed.ckpt"),
        ("hydra.run.dir", crashing.paths.output_dir)]
    checkpoints = Path(crashing.paths.output_dir, "checkpoints")
    assert crash_file(crashing, "last.ckpt")["global_step"] == 4
    assert most_advanced_checkpoint(checkpoints, checkpoints.parent) == checkpoints / "last.ckpt"

    resumed = train_cfg(*COMMON, "max_iters=4", *shlex.split(hint[1]))   # the hint's override, pasted
    resumed.paths.output_dir = str(tmp_path / "resumed")
    after = last_checkpoint(resumed)
    assert after["global_step"] == straight["global_step"] == 8
    # Lightning counted the cut-short batch's logging step on resume: every later loss row sat one
    # step past its iteration
    assert logging_step(after) == logging_step(straight) == 3
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, after["state_dict"][key]), key


def test_an_error_inside_a_step_in_backward_marks_the_crash_checkpoint_as_not_exact(train_cfg, monkeypatch, caplog):
    """Stepping in backward (the CPU default) updates a player's tensors one by one: an error
    there (out of memory, Ctrl-C) leaves some updated, and crashed.ckpt, at last.ckpt's
    progress, holds that half step. It says so, and ckpt_path=auto takes the exact last.ckpt."""
    cfg = train_cfg(*COMMON, "max_iters=4", "callbacks.model_checkpoint.every_n_iters=2")
    monkeypatch.setattr(step_in_backward, "MIN_ELEMENTS", 0)   # the tiny nets' tensors are stepped in backward too
    original_update, original_step_one = CycleGAN.update, step_in_backward.step_one
    steps_in_iteration_3 = []

    def update(self, *args, **kwargs):
        assert self.steps_in_backward
        if self.trainer.global_step == 4:
            steps_in_iteration_3.append("started")
        return original_update(self, *args, **kwargs)

    def step_one(*args):
        if steps_in_iteration_3:
            steps_in_iteration_3.append("tensor")
            if len(steps_in_iteration_3) == 4:   # two tensors of the generators stepped, not the third
                raise RuntimeError("out of memory")
        original_step_one(*args)

    monkeypatch.setattr(CycleGAN, "update", update)
    monkeypatch.setattr(step_in_backward, "step_one", step_one)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_training(cfg)
    monkeypatch.undo()
    checkpoints = Path(cfg.paths.output_dir, "checkpoints")
    saved, last = crash_file(cfg, "crashed.ckpt"), crash_file(cfg, "last.ckpt")
    assert saved[TORN_STEP_KEY] and saved["global_step"] == last["global_step"] == 4
    changed = [key for key, value in saved["state_dict"].items() if not torch.equal(value, last["state_dict"][key])]
    assert len(changed) == 2 and all(key.startswith("G_") for key in changed)
    assert "crashed.ckpt was taken inside an optimizer step of iteration 3" in caplog.text
    assert most_advanced_checkpoint(checkpoints, checkpoints.parent) == checkpoints / "last.ckpt"


def test_ctrl_c_inside_an_iteration_saves_a_checkpoint_counted_in_whole_iterations(train_cfg, tmp_path, monkeypatch):
    cfg = train_cfg(*COMMON, "max_iters=4", "callbacks.model_checkpoint.every_n_iters=2")
    fail_at_step(monkeypatch, 5, KeyboardInterrupt())   # after the generators' step of iteration 3
    # As itself, for a notebook's `except KeyboardInterrupt:` (Lightning ends the fit with
    # sys.exit(1), which passed it); train.py exits with 130
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg)
    monkeypatch.undo()
    saved = crash_file(cfg, "interrupted.ckpt")
    assert saved["global_step"] == 4   # iteration 3 is repeated in whole on resume
    progress = saved["loops"]["fit_loop"]["epoch_loop.manual_optimization.optim_step_progress"]
    assert progress["total"]["completed"] == 4

    resumed = train_cfg(*COMMON, "max_iters=4", "callbacks.model_checkpoint.every_n_iters=2",
                        f"ckpt_path={cfg.paths.output_dir}/checkpoints/interrupted.ckpt")
    resumed.paths.output_dir = str(tmp_path / "resumed")
    after = last_checkpoint(resumed)
    assert after["global_step"] == 8 and logging_step(after) == 3   # the straight run's, as above
    written = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert written == ["iter_0000004.ckpt", "last.ckpt"]   # the periodic checkpoint stays on its iteration


ROOT = Path(__file__).resolve().parents[1]


def test_a_ctrl_c_ends_train_py_with_the_status_a_shell_gives_sigint(tmp_path):
    """run_training gives a Ctrl-C back as a KeyboardInterrupt; the command ends with 130, as a
    shell reports a process SIGINT stopped, and without a traceback of where it landed."""
    import subprocess
    code = ("import runpy, sys\n"
            "import src.utils.run as run\n"
            "def interrupted(cfg):\n"
            "    raise KeyboardInterrupt\n"
            "run.run_training = interrupted\n"
            f"sys.argv = ['src/train.py', 'hydra.run.dir={tmp_path}/run', 'paths.data_dir={tmp_path}/data']\n"
            "runpy.run_path('src/train.py', run_name='__main__')\n")
    ended = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=300)
    assert ended.returncode == 128 + signal.SIGINT, ended.stderr
    assert "Traceback" not in ended.stderr


@pytest.mark.parametrize("stop", ["raise KeyboardInterrupt", "raise SystemExit(143)"])
def test_a_sweep_stopped_by_a_signal_keeps_its_table_with_the_stopped_job(tmp_path, stop):
    """A Ctrl-C or a SIGTERM ends a sweep's process inside a job, whose after-job hook, which
    writes the sweep's table, then never runs: the stopped job was missing from the table."""
    import subprocess
    code = ("import runpy, sys\n"
            "import src.utils.run as run\n"
            "def stopped(cfg):\n"
            f"    {stop}\n"
            "run.run_training = stopped\n"
            f"sys.argv = ['src/train.py', '-m', 'seed=1,2', 'hydra.sweep.dir={tmp_path}/sweep', "
            f"'paths.data_dir={tmp_path}/data']\n"
            "runpy.run_path('src/train.py', run_name='__main__')\n")
    ended = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=300)
    assert ended.returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM), ended.stderr
    (row,) = [line for line in (tmp_path / "sweep" / "summary.md").read_text().splitlines() if line.startswith("| 0 |")]
    assert "seed=1" in row and row.endswith("| not finished |")


def test_sigterm_saves_an_interrupted_checkpoint_and_exits_with_the_signals_status(train_cfg, tmp_path, monkeypatch):
    """A cluster's preemption or time limit (SIGTERM) saves interrupted.ckpt, and the process
    ends with status 143 as a shell reports a SIGTERMed one: Lightning's own ending (SystemExit
    without a status) exits 0, and a scheduler or sweep would count the run as finished."""
    cfg = train_cfg(*COMMON, "max_iters=4")
    # after iteration 2, to Lightning's own handler (installed for the fit); it stops after the batch
    signal_at_step(monkeypatch, 4, signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        run_training(cfg)
    assert stopped.value.code == 143
    monkeypatch.undo()
    saved = crash_file(cfg, "interrupted.ckpt")
    assert saved["global_step"] == 6   # iteration 3 ended before Lightning looked at the signal
    assert not Path(cfg.paths.output_dir, "checkpoints", "crashed.ckpt").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # Lightning put the handler back

    resumed = train_cfg(*COMMON, "max_iters=4", f"ckpt_path={cfg.paths.output_dir}/checkpoints/interrupted.ckpt")
    resumed.paths.output_dir = str(tmp_path / "resumed")
    assert last_checkpoint(resumed)["global_step"] == 8


@pytest.mark.parametrize("rank", [0, 1])
def test_under_ddp_every_rank_waits_for_rank_zeros_interrupted_checkpoint(rank, tmp_path):
    """SIGTERM stops every rank at one iteration (StopSignals); a rank that then exited at once
    would get rank zero killed mid-save (torchrun, srun under KillOnBadExit, torch's spawn): all
    wait in a barrier after the save. A crash or Ctrl-C, which need not reach every rank, does
    not wait; neither does a single process."""
    from types import SimpleNamespace
    from pytorch_lightning.utilities.exceptions import SIGTERMException
    from src.callbacks.checkpoint import IterationCheckpoint

    events = []
    callback = IterationCheckpoint(dirpath=str(tmp_path))
    callback.save_crash_checkpoint = lambda trainer, module, error: events.append(("save", trainer.is_global_zero))
    for world_size, error, waits in ((2, SIGTERMException(), True), (2, RuntimeError("boom"), False),
                                     (2, KeyboardInterrupt(), False), (1, SIGTERMException(), False)):
        events.clear()
        trainer = SimpleNamespace(world_size=world_size, is_global_zero=rank == 0,
                                  strategy=SimpleNamespace(barrier=lambda name: events.append(("barrier", name))))
        callback.on_exception(trainer, None, error)
        assert events == [("save", rank == 0)] + ([("barrier", "interrupted.ckpt saved")] if waits else []), error


def test_a_failed_runs_error_no_longer_holds_its_model_once_released(train_cfg, monkeypatch):
    """Hydra's launcher keeps a failed job's error until the multirun ends; its traceback's frames
    held the model, trainer and activations (GPU memory an out-of-memory error's later jobs need).
    Released, the error keeps what it prints and nothing else."""
    import gc
    import weakref
    from src.utils.run import release_failed_run
    models = []
    original_update = CycleGAN.update

    def update(self, *args, **kwargs):
        models.append(weakref.ref(self))
        if self.trainer.global_step == 2:
            raise RuntimeError("out of memory at iteration 2")
        return original_update(self, *args, **kwargs)

    monkeypatch.setattr(CycleGAN, "update", update)
    with pytest.raises(RuntimeError) as caught:
        run_training(train_cfg(*COMMON, "max_iters=4"))
    error = caught.value   # kept, as the launcher keeps it
    gc.collect()
    assert models[-1]() is not None   # alive through the error's frames
    release_failed_run(error)
    assert models[-1]() is None
    printed = "".join(traceback.format_exception(error))
    assert "out of memory at iteration 2" in printed and "trainer.fit(" in printed


def test_the_wandb_run_ends_with_the_process_exit_status(train_cfg, tmp_path, monkeypatch):
    """A run stopped by an error or by SIGTERM must not show as finished in wandb: exit codes
    0, 1 and 143 (marked preempted), as the process exits."""
    finished = []
    monkeypatch.setattr("src.utils.run.finish_wandb_run",
                        lambda exit_code=0, preempted=False, keep=None: finished.append((exit_code, preempted)))

    def run(name: str, stopped_by=None) -> None:
        cfg = train_cfg(*COMMON, "max_iters=2")
        cfg.paths.output_dir = str(tmp_path / name)
        with pytest.raises(stopped_by) if stopped_by else contextlib.nullcontext():
            run_training(cfg)

    run("whole")
    with monkeypatch.context() as patch:
        fail_at_step(patch, 2, RuntimeError("image 1 is unreadable"))
        run("failed", RuntimeError)
    with monkeypatch.context() as patch:
        signal_at_step(patch, 0, signal.SIGTERM)   # (in iteration 1: one at the last, 2, lets the run end)
        run("preempted", SystemExit)
    assert finished == [(0, False), (1, False), (143, True)]
    # Also a failure after the loggers' first record (where a wandb run starts) and before the
    # fit: the next run of the process would otherwise log into the open run.
    from pytorch_lightning.loggers import CSVLogger
    finished.clear()
    with monkeypatch.context() as patch:
        patch.setattr(CSVLogger, "log_hyperparams", lambda self, params: (_ for _ in ()).throw(OSError("disk full")))
        run("logging_failed", OSError)
    assert finished == [(1, False)]


def test_a_wandb_run_the_caller_started_is_left_to_the_caller(train_cfg, monkeypatch):
    """A notebook's own `wandb.init()` run was finished by the training (marked failed when
    the training failed); one the training started is still finished."""
    import types

    finished = []
    fake = types.SimpleNamespace(run=object(), finish=lambda exit_code: finished.append(exit_code))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    callers = fake.run
    run_training(train_cfg(*COMMON, "max_iters=1"))
    assert finished == [] and fake.run is callers
    fake.run = None

    def starts_a_run(self, params):
        fake.run = types.SimpleNamespace(mark_preempting=lambda: None)
    monkeypatch.setattr("pytorch_lightning.loggers.CSVLogger.log_hyperparams", starts_a_run)
    run_training(train_cfg(*COMMON, "max_iters=1"))
    assert finished == [0]


def submitit_job_signals(tmp_path: Path) -> None:
    """The signal handlers submitit installs in a SLURM job's process at its start (SIGUSR2:
    requeue the job, then exit), for a job of a plain function with 60 minutes of time left."""
    import submitit
    from submitit.core.utils import DelayedSubmission, JobPaths

    delayed = DelayedSubmission(print)
    delayed.set_timeout(60, 0)
    submitit.JobEnvironment()._handle_signals(JobPaths(tmp_path / "submitit"), delayed)


def test_a_requeue_warning_stops_at_a_whole_iteration_then_submitit_requeues_and_the_job_resumes(
        train_cfg, tmp_path, monkeypatch, fake_scontrol, signal_handlers_kept, caplog):
    """hydra/launcher=slurm: SLURM warns a job of its time limit or preemption with submitit's
    signal (SIGUSR2), whose handler requeues the job and exits. Sent inside iteration 2, the run
    first finishes that iteration and saves interrupted.ckpt, then submitit's handler runs
    (scontrol requeue, exit). The requeued job, started again with the same command line
    (ckpt_path=null), resumes from that checkpoint. Before, submitit's handler ran mid-iteration
    and exited before any checkpoint of the iteration was saved, and the requeued job trained
    from scratch over the run's checkpoints."""
    for name, value in {**slurm_task_env(0, tasks=1), "SUBMITIT_EXECUTOR": "slurm"}.items():
        monkeypatch.setenv(name, value)
    for name in ("MASTER_ADDR", "MASTER_PORT"):   # Lightning's SLURM environment sets them
        monkeypatch.delenv(name, raising=False)
    cfg = train_cfg(*COMMON, "max_iters=6")
    checkpoints = Path(cfg.paths.output_dir, "checkpoints")
    monkeypatch.setenv("SCONTROL_WATCH", str(checkpoints))
    submitit_job_signals(tmp_path)
    original_update = CycleGAN.update
    with monkeypatch.context() as patch:
        signal_at_step(patch, 3, signal.SIGUSR2)   # between iteration 2's discriminator and generator steps
        with pytest.raises(SystemExit) as stopped:
            run_training(cfg)
    assert stopped.value.code == -1   # submitit's own exit, after requeueing
    (call,) = fake_scontrol.read_text().splitlines()
    requeue, on_disk = call.split("|")
    assert requeue.split() == ["requeue", "4242"]
    assert "interrupted.ckpt" in on_disk.split()   # saved before the job asked to be requeued
    assert crash_file(cfg, "interrupted.ckpt")["global_step"] == 4   # iteration 2, whole
    assert not (checkpoints / "crashed.ckpt").exists()

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")   # SLURM starts the same command again
    caplog.clear()
    caplog.set_level(logging.INFO, logger="src.utils.auto_resume")
    steps_taken = []

    def counted_update(self, *args, **kwargs):
        steps_taken.append(self.trainer.global_step)
        return original_update(self, *args, **kwargs)

    monkeypatch.setattr(CycleGAN, "update", counted_update)
    resumed = last_checkpoint(train_cfg(*COMMON, "max_iters=6"))
    assert "SLURM_RESTART_COUNT=1: this job was requeued" in caplog.text
    assert f"resuming from {checkpoints / 'interrupted.ckpt'}" in caplog.text
    assert steps_taken == list(range(4, 12)) and resumed["global_step"] == 12   # iterations 3-6 only


def test_a_requeue_warning_in_the_runs_last_iteration_requeues_after_its_checkpoints(
        train_cfg, tmp_path, monkeypatch, fake_scontrol, signal_handlers_kept):
    """Raised at the last iteration's end, before the checkpoint callbacks, the stop left last.ckpt
    an interval behind; the requeued job's resume from interrupted.ckpt trained nothing and never
    brought last.ckpt up to date. The iteration ends with its checkpoints, then the job is requeued
    (a multirun's next jobs go on after it)."""
    for name, value in {**slurm_task_env(0, tasks=1), "SUBMITIT_EXECUTOR": "slurm"}.items():
        monkeypatch.setenv(name, value)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    cfg = train_cfg(*COMMON, "max_iters=3", "callbacks.model_checkpoint.every_n_iters=2")
    submitit_job_signals(tmp_path)
    with monkeypatch.context() as patch:
        signal_at_step(patch, 4, signal.SIGUSR2)   # inside iteration 3, the last
        with pytest.warns(UserWarning, match="SIGUSR2 at the run's last iteration \\(3\\): it ends with its "
                                             "checkpoints, then stops for it"), pytest.raises(SystemExit) as stopped:
            run_training(cfg)
    assert stopped.value.code == -1   # submitit's own exit, after requeueing
    (call,) = fake_scontrol.read_text().splitlines()
    assert call.split("|")[0].split() == ["requeue", "4242"]
    assert crash_file(cfg, "last.ckpt")["global_step"] == 6
    assert not (Path(cfg.paths.output_dir) / "checkpoints" / "interrupted.ckpt").exists()


def test_a_requeue_warning_during_the_last_checkpoints_write_still_requeues_the_job(
        train_cfg, tmp_path, monkeypatch, fake_scontrol, signal_handlers_kept):
    """The ranks look at their signals once per iteration, before the checkpoint callbacks (which
    Lightning runs last): one arriving while the last checkpoint was written was noted, never
    read, and the job ended with status 0, its requeue handler never run."""
    from src.callbacks.checkpoint import IterationCheckpoint
    for name, value in {**slurm_task_env(0, tasks=1), "SUBMITIT_EXECUTOR": "slurm"}.items():
        monkeypatch.setenv(name, value)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    cfg = train_cfg(*COMMON, "max_iters=3")
    submitit_job_signals(tmp_path)
    original = IterationCheckpoint.on_train_batch_end

    def signalled_save(self, trainer, *args, **kwargs):
        if trainer.global_step == 6:   # the last iteration's save
            os.kill(os.getpid(), signal.SIGUSR2)
        return original(self, trainer, *args, **kwargs)

    monkeypatch.setattr(IterationCheckpoint, "on_train_batch_end", signalled_save)
    with pytest.warns(UserWarning, match="SIGUSR2 after the run's last iteration"), pytest.raises(SystemExit) as stopped:
        run_training(cfg)
    assert stopped.value.code == -1   # submitit's exit, after requeueing
    (call,) = fake_scontrol.read_text().splitlines()
    assert call.split("|")[0].split() == ["requeue", "4242"]
    assert crash_file(cfg, "last.ckpt")["global_step"] == 6


def test_a_sigterm_in_the_runs_last_iteration_stops_a_single_process_after_its_checkpoints(train_cfg, monkeypatch):
    """One process: Lightning's own SIGTERM stop. The last iteration ends with its checkpoints, as
    with several processes, and the process then stops with 143 (a multirun's next job does not
    start in a job being killed)."""
    cfg = train_cfg(*COMMON, "max_iters=3", "callbacks.model_checkpoint.every_n_iters=2")
    signal_at_step(monkeypatch, 4, signal.SIGTERM)   # inside iteration 3, the last
    with pytest.warns(UserWarning, match="SIGTERM at the run's last iteration \\(3\\): it ends with its "
                                         "checkpoints, then stops for it"), pytest.raises(SystemExit) as stopped:
        run_training(cfg)
    assert stopped.value.code == 143
    assert crash_file(cfg, "last.ckpt")["global_step"] == 6
    assert not (Path(cfg.paths.output_dir) / "checkpoints" / "interrupted.ckpt").exists()


@pytest.mark.parametrize("every_n_epochs,saved_at", [(None, [12]), (1, [4, 8, 12]), (2, [8, 12]), (0, [12])])
def test_a_run_in_epochs_saves_at_its_last_epochs_end_not_every_one(train_cfg, monkeypatch, every_n_epochs, saved_at):
    """Lightning saved a full checkpoint at every epoch end besides the periodic ones: on 8 GPUs
    an epoch is a few dozen seconds. The run's end is still saved (a run measured in epochs has
    no batch-end save there); `every_n_epochs` asks for the others."""
    from src.callbacks.checkpoint import IterationCheckpoint
    steps = []
    original = IterationCheckpoint._save_last_checkpoint
    monkeypatch.setattr(IterationCheckpoint, "_save_last_checkpoint",
                        lambda self, trainer, *a: steps.append(trainer.global_step) or original(self, trainer, *a))
    asked = [] if every_n_epochs is None else [f"+callbacks.model_checkpoint.every_n_epochs={every_n_epochs}"]
    cfg = train_cfg(*COMMON, "data.max_dataset_size=2", "max_iters=null", "trainer.max_epochs=3",
                    "callbacks.model_checkpoint.every_n_iters=1000", *asked)
    run_training(cfg)
    assert steps == saved_at
    assert crash_file(cfg, "last.ckpt")["global_step"] == 12


def test_an_error_before_any_step_leaves_no_checkpoint(train_cfg, monkeypatch):
    cfg = train_cfg(*COMMON, "max_iters=4")
    fail_at_step(monkeypatch, 0, RuntimeError("bad first batch"))
    with pytest.raises(RuntimeError, match="bad first batch"):
        run_training(cfg)
    assert not Path(cfg.paths.output_dir, "checkpoints", "crashed.ckpt").exists()   # no empty-handed file


def test_a_failure_at_the_first_iterations_end_saves_that_iteration(train_cfg, monkeypatch):
    """A stop signal (raised at batch end) or a failing callback at the end of a run's first
    iteration: that iteration is trained and saved, whole."""
    from src.callbacks.stop_signals import StopSignals
    cfg = train_cfg(*COMMON, "max_iters=4", "callbacks.model_checkpoint.every_n_iters=1000")
    monkeypatch.setattr(StopSignals, "on_train_batch_end", lambda *args: (_ for _ in ()).throw(RuntimeError("hook")))
    with pytest.raises(RuntimeError, match="hook"):
        run_training(cfg)
    saved = crash_file(cfg, "crashed.ckpt")
    assert saved["global_step"] == 2 and INSIDE_ITERATION_KEY not in saved


def test_an_error_after_an_iterations_last_step_is_not_said_to_come_before_its_first(train_cfg, tmp_path, monkeypatch,
                                                                                     caplog):
    """...and the iteration is repeated in whole on resume: its steps were taken, its losses and
    schedules were not, and Lightning would otherwise count the batch's logging step twice."""
    original = CycleGAN.log_losses

    def log_losses(self, *args, **kwargs):
        if self.trainer.global_step == 6:   # iteration 3's steps all taken
            raise RuntimeError("logging failed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CycleGAN, "log_losses", log_losses)
    cfg = train_cfg(*COMMON, "max_iters=4")
    with pytest.raises(RuntimeError, match="logging failed"):
        run_training(cfg)
    saved = crash_file(cfg, "crashed.ckpt")
    assert INSIDE_ITERATION_KEY not in saved and saved["global_step"] == 4
    assert "before its first optimizer step" not in caplog.text
    monkeypatch.undo()
    resumed = train_cfg(*COMMON, "max_iters=4", f"ckpt_path={cfg.paths.output_dir}/checkpoints/crashed.ckpt")
    resumed.paths.output_dir = str(tmp_path / "resumed")
    after = last_checkpoint(resumed)
    assert after["global_step"] == 8 and logging_step(after) == 3   # a straight run's


def test_a_failure_in_a_batch_start_hook_resumes_at_that_batch_on_the_same_logging_step(train_cfg, tmp_path,
                                                                                         monkeypatch):
    from src.callbacks.stop_signals import StopSignals
    original = StopSignals.on_train_batch_start

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == 4:
            raise RuntimeError("hook")
        return original(self, trainer, *args)

    monkeypatch.setattr(StopSignals, "on_train_batch_start", on_train_batch_start, raising=False)
    cfg = train_cfg(*COMMON, "max_iters=4")
    with pytest.raises(RuntimeError, match="hook"):
        run_training(cfg)
    monkeypatch.undo()
    assert crash_file(cfg, "crashed.ckpt")["global_step"] == 4
    resumed = train_cfg(*COMMON, "max_iters=4", f"ckpt_path={cfg.paths.output_dir}/checkpoints/crashed.ckpt")
    resumed.paths.output_dir = str(tmp_path / "resumed")
    after = last_checkpoint(resumed)
    assert after["global_step"] == 8 and logging_step(after) == 3


def test_a_resumed_run_failing_before_its_first_iteration_ends_writes_no_crash_checkpoint(train_cfg, monkeypatch):
    """Such a file held nothing the checkpoint resumed from lacks, and it could lack what the
    callbacks restore only as training starts (the EMA): at the same progress and newer,
    ckpt_path=auto took it over last.ckpt."""
    cfg = train_cfg(*COMMON, "max_iters=2")
    run_training(cfg)
    fail_at_step(monkeypatch, 2 * 2, RuntimeError("bad batch"))   # the resumed run's first step
    with pytest.raises(RuntimeError, match="bad batch"):
        run_training(train_cfg(*COMMON, "max_iters=4", "ckpt_path=auto"))
    assert not Path(cfg.paths.output_dir, "checkpoints", "crashed.ckpt").exists()


def test_resuming_from_a_cut_short_or_missing_checkpoint_names_it_before_training(train_cfg, tmp_path):
    run_training(train_cfg(*COMMON, "max_iters=1"))
    whole = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[:-100])   # the zip directory at the end is missing
    with pytest.raises(ValueError, match=f"ckpt_path={cut} cannot be read as a checkpoint .*cut short"):
        run_training(train_cfg(*COMMON, "max_iters=2", f"ckpt_path={cut}"))
    with pytest.raises(FileNotFoundError, match=f"ckpt_path={tmp_path}/nope.ckpt: no such checkpoint file"):
        run_training(train_cfg(*COMMON, "max_iters=2", f"ckpt_path={tmp_path}/nope.ckpt"))


def test_a_crash_checkpoint_that_cannot_be_written_leaves_the_runs_own_error(train_cfg, monkeypatch, caplog):
    cfg = train_cfg(*COMMON, "max_iters=4")
    fail_at_step(monkeypatch, 5, RuntimeError("out of memory"))   # inside iteration 3

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("src.callbacks.checkpoint.count_whole_iterations", full_disk)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_training(cfg)
    assert "Could not save crashed.ckpt after RuntimeError (OSError: No space left on device)" in caplog.text
    # with where it failed: a fault of the code there would cost every crash its checkpoint
    (record,) = [r for r in caplog.records if r.getMessage().startswith("Could not save crashed.ckpt")]
    assert record.exc_info and "in full_disk" in "".join(traceback.format_exception(*record.exc_info))


@pytest.mark.parametrize("setting", ["train_time_interval=00:01:00", "every_n_train_steps=10"])
def test_a_time_or_step_interval_for_checkpoints_is_refused_not_ignored(train_cfg, setting):
    """Lightning's train_time_interval and every_n_train_steps are read by the batch-end saving
    IterationCheckpoint replaces: accepted, they would do nothing."""
    key = setting.split("=")[0]
    with pytest.raises(InstantiationException, match=rf"callbacks.model_checkpoint.{key} is not used here"):
        run_training(train_cfg(f"+callbacks.model_checkpoint.{setting}"))


def test_a_config_that_would_write_no_checkpoint_is_refused(train_cfg):
    with pytest.raises(InstantiationException, match=r"save_top_k=0 with save_last=false writes no checkpoint"):
        run_training(train_cfg("callbacks.model_checkpoint.save_top_k=0", "callbacks.model_checkpoint.save_last=false"))
    run_training(train_cfg("callbacks.model_checkpoint.save_top_k=0", "max_iters=1"))   # last.ckpt alone is one
    with pytest.raises(InstantiationException, match=r"save_weights_only=true writes checkpoints a run cannot resume"):
        run_training(train_cfg("+callbacks.model_checkpoint.save_weights_only=true"))


def test_running_out_of_memory_says_what_fits_a_run_in_less(train_cfg, monkeypatch, caplog):
    cfg = train_cfg(*COMMON, "max_iters=4")
    fail_at_step(monkeypatch, 2, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(torch.OutOfMemoryError):
        run_training(cfg)
    assert "Out of memory while training. What fits a run in less: a smaller data.batch_size (now 1;" in caplog.text
    # (the settings that decide where data.batch_size does not, and where step_in_backward applies)
    assert "model.batch_sizes, per resolution" in caplog.text and "one process in fp32 or bf16" in caplog.text
    assert Path(cfg.paths.output_dir, "checkpoints", "crashed.ckpt").exists()


def test_loader_workers_out_of_shared_memory_say_how_to_give_them_more(train_cfg, monkeypatch, caplog):
    """In a container /dev/shm is 64 MB by default: torch's own message names a file in it."""
    cfg = train_cfg(*COMMON, "max_iters=4")
    fail_at_step(monkeypatch, 2, RuntimeError("unable to write to file </torch_2345_3071893456_0>: No space left "
                                              "on device (28)"))
    with pytest.raises(RuntimeError):
        run_training(cfg)
    assert "ran out of shared memory (/dev/shm" in caplog.text and "--shm-size=8g" in caplog.text
    assert "data.num_workers, now 0" in caplog.text


@pytest.mark.parametrize("cache", [True, False])
def test_a_loader_worker_killed_by_the_kernel_says_what_holds_memory_per_worker(train_cfg, monkeypatch, caplog,
                                                                                cache):
    """torch says only that a worker "is killed by signal: Killed": the OOM killer at a container's
    or job's memory limit, hours into a run with the decoded-image cache filling every worker. The
    cache is named where it is on (its key is in few data configs: `++`)."""
    cfg = train_cfg(*COMMON, "max_iters=4", f"++data.cache_decoded={str(cache).lower()}")
    fail_at_step(monkeypatch, 2, RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. "))
    with pytest.raises(RuntimeError):
        run_training(cfg)
    assert "out-of-memory killer" in caplog.text and "data.num_workers, now 0" in caplog.text
    assert ("turn off the decoded-image cache (++data.cache_decoded=false)" in caplog.text) == cache


@pytest.mark.parametrize("error,says", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "a smaller batch_size (now 8)"),
    (RuntimeError("unable to write to file </torch_2345_3071893456_0>: No space left on device (28)"),
     "ran out of shared memory (/dev/shm, where they hand batches over to the evaluation process"),
    (RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. "), "(++data.num_workers), turn off")])
def test_an_evaluation_out_of_memory_says_what_to_change(tmp_path, monkeypatch, caplog, error, says):
    """eval.py's FID of a large split runs the loader's workers and the feature extractor for
    long; torch's words for their memory running out name no setting of eval.py."""
    from omegaconf import OmegaConf

    from src.utils import evaluation

    def fail(*args):
        raise error
    monkeypatch.setattr(evaluation, "evaluate_checkpoint", fail)
    torch.save({}, tmp_path / "last.ckpt")
    cfg = OmegaConf.create({"ckpt_path": str(tmp_path / "last.ckpt"), "output_dir": str(tmp_path / "eval"),
                            "batch_size": 8, "device": "cpu", "seed": 0})
    with pytest.raises(type(error)):
        evaluation.run_evaluation(cfg)
    assert says in caplog.text


def test_a_wandb_error_says_how_to_log_without_its_server(train_cfg, monkeypatch, caplog):
    """An exported WANDB_API_KEY turns wandb online, and on a compute node without internet its
    init gives up after 90 s with an error of its own, naming no setting of ours."""
    from wandb.errors import CommError
    cfg = train_cfg(*COMMON, "max_iters=4")
    fail_at_step(monkeypatch, 2, CommError("Run initialization has timed out after 90.0 sec."))
    with pytest.raises(CommError):
        run_training(cfg)
    assert "WANDB_MODE=offline and `wandb sync`" in caplog.text and "logger=csv" in caplog.text
    assert "wandb stopped the run (CommError: Run initialization has timed out after 90.0 sec.; WANDB_MODE=" in caplog.text


def test_wandb_online_without_a_login_is_told_to_log_in_or_log_offline(monkeypatch):
    """WANDB_MODE=online on a machine without a login: wandb's UsageError, and the hint spoke of
    an unreachable server (and of an error "above", which Hydra prints below it)."""
    from wandb.errors import UsageError

    from src.utils.run import wandb_failure_hint
    monkeypatch.setenv("WANDB_MODE", "online")
    hint = wandb_failure_hint(UsageError("No API key configured. Use `wandb login` to log in."))
    assert hint.startswith("wandb stopped the run (UsageError: No API key configured. Use `wandb login` to log in.; "
                           "WANDB_MODE=online). Logging online needs a login: `wandb login` (or WANDB_API_KEY)")
    assert "cannot reach" not in hint and "above" not in hint


def test_a_cgroup_memory_limit_is_the_memory_a_run_has(tmp_path, monkeypatch):
    """A 16 GB job on a 512 GB node: the decoded cache's warning compared with the node's memory."""
    from src.utils import environment
    membership = tmp_path / "membership"
    membership.write_text("0::/slurm/job_7/step_0\n")   # (cgroup v2; the job's limit above its step's cgroup)
    (tmp_path / "slurm" / "job_7" / "step_0").mkdir(parents=True)
    (tmp_path / "slurm" / "job_7" / "memory.max").write_text(f"{16 << 30}\n")
    (tmp_path / "slurm" / "job_7" / "step_0" / "memory.max").write_text("max\n")
    assert environment.memory_limit(tmp_path, membership) == 16 << 30
    (tmp_path / "slurm" / "job_7" / "memory.max").write_text("max\n")
    assert environment.memory_limit(tmp_path, membership) is None
    membership.write_text("9:memory:/docker/x\n")   # cgroup v1, no limit: a huge number
    (tmp_path / "memory" / "docker" / "x").mkdir(parents=True)
    (tmp_path / "memory" / "docker" / "x" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert environment.memory_limit(tmp_path, membership) is None
    monkeypatch.setattr(environment, "memory_limit", lambda: 1 << 30)
    assert environment.physical_memory_bytes() == 1 << 30


def test_an_operation_without_a_deterministic_kernel_names_the_setting_that_runs_it(train_cfg, monkeypatch, caplog):
    cfg = train_cfg(*COMMON, "max_iters=4", "trainer.deterministic=true")
    fail_at_step(monkeypatch, 2, RuntimeError("reflection_pad2d_backward_cuda does not have a deterministic "
                                              "implementation, but you set 'torch.use_deterministic_algorithms(True)'"))
    try:
        with pytest.raises(RuntimeError, match="reflection_pad2d_backward_cuda"):
            run_training(cfg)
    finally:   # Lightning switches deterministic algorithms on for the whole process
        torch.use_deterministic_algorithms(False)
    assert "trainer.deterministic=True stops at an operation torch has no deterministic kernel for" in caplog.text
    assert "trainer.deterministic=warn takes the deterministic kernels" in caplog.text


def test_without_last_ckpt_the_record_and_the_runs_end_name_the_newest_periodic_file(train_cfg, caplog):
    """With save_last=false (allowed beside save_top_k >= 1) last_model_path stays empty: the
    record's checkpoint was null and the end said "Checkpoint to resume from: " with nothing."""
    import json
    cfg = train_cfg(*COMMON, "max_iters=2", "callbacks.model_checkpoint.save_last=false",
                    "callbacks.model_checkpoint.every_n_iters=1", "callbacks.model_checkpoint.save_top_k=1",
                    "callbacks.image_grid=null")
    with caplog.at_level("INFO"):
        run_training(cfg)
    newest = f"{cfg.paths.output_dir}/checkpoints/iter_0000002.ckpt"
    assert json.loads(Path(cfg.paths.output_dir, "final_metrics.json").read_text())["checkpoint"] == newest
    messages = [r.getMessage() for r in caplog.records]
    assert f"Checkpoint to resume from: {newest}" in messages
    assert not any(m.startswith("Sample grids") for m in messages)   # (no grid callback: no grids to point at)


def run_whose_fid_fails(train_cfg, monkeypatch, *overrides: str):
    """A CycleGAN run, checkpointed every iteration, whose first FID runs out of memory; its config."""
    from src.callbacks.fid_kid import FidKidCallback
    cfg = train_cfg("model=cyclegan", "data.max_dataset_size=4", "seed=7", "++callbacks.latent=null",
                    "++callbacks.shapes_truth=null", "callbacks.model_checkpoint.every_n_iters=1", *overrides)

    def out_of_memory(*args):
        raise RuntimeError("CUDA out of memory")

    with monkeypatch.context() as patch:
        patch.setattr(FidKidCallback, "evaluate", out_of_memory)
        with pytest.raises(RuntimeError, match="CUDA out of memory"):
            run_training(cfg)
    return cfg


def test_a_failure_in_the_last_iterations_evaluation_resumes_to_a_record_of_the_last_state(train_cfg, monkeypatch,
                                                                                            caplog):
    """The last iteration's FID failing saved crashed.ckpt (counted as past that iteration's end
    work, as Lightning counts a checkpoint saved there) before last.ckpt was written. Resumed,
    the finished fit trains and evaluates nothing: its record named last.ckpt, a state one
    periodic save old, and said nothing of the missing evaluation."""
    import json
    cfg = run_whose_fid_fails(train_cfg, monkeypatch, "max_iters=2", "callbacks.fid_kid.every_n_iters=0")
    checkpoints = Path(cfg.paths.output_dir, "checkpoints")
    assert crash_file(cfg, "crashed.ckpt")["global_step"] == crash_file(cfg, "last.ckpt")["global_step"] + 2
    cfg.ckpt_path = "auto"
    with pytest.warns(UserWarning, match=r"FidKidCallback did not evaluate the run's last iteration \(2\).*"
                                         r"python src/eval.py ckpt_path=.*crashed.ckpt"), caplog.at_level("INFO"):
        run_training(cfg)
    record = json.loads(Path(cfg.paths.output_dir, "final_metrics.json").read_text())
    assert record["status"] == "completed" and record["checkpoint"] == str(checkpoints / "crashed.ckpt")
    # and the run's end names the same file (Lightning restored last_model_path, the older last.ckpt)
    assert f"Checkpoint to resume from: {checkpoints / 'crashed.ckpt'}" in [r.getMessage() for r in caplog.records]


def test_a_failure_in_a_mid_run_evaluation_is_named_when_the_run_resumes_past_it(train_cfg, monkeypatch):
    """An FID failing at iteration 2 of 4 saved crashed.ckpt, counted past that iteration's end
    work: the resumed run goes on from iteration 3, and iteration 2's score was missing from the
    run's curve without a word."""
    cfg = run_whose_fid_fails(train_cfg, monkeypatch, "max_iters=6", "callbacks.fid_kid.every_n_iters=2",
                              "callbacks.model_checkpoint.save_top_k=-1")
    cfg.ckpt_path = "auto"
    with pytest.warns(UserWarning, match=r"FidKidCallback did not evaluate iteration 2, where this run resumes: .* "
                                         r"goes on from iteration 3. .*python src/eval.py ckpt_path=.*crashed.ckpt"):
        run_training(cfg)
    # Not cut in its end work, a checkpoint misses nothing, though an evaluation is due at its
    # iteration now (every_n_iters changed, an evaluation turned on since: iteration 3's, here).
    at_3 = copy.deepcopy(cfg)
    at_3.ckpt_path = str(Path(cfg.paths.output_dir, "checkpoints", "iter_0000003.ckpt"))
    at_3.paths.output_dir, at_3.callbacks.fid_kid.every_n_iters = str(Path(cfg.paths.output_dir).parent / "at_3"), 3
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        run_training(at_3)
    assert not [w for w in warned if "did not evaluate" in str(w.message)]
    # From a checkpoint written after its iteration's evaluations (iteration 4's), none is missed.
    cfg.ckpt_path = str(Path(cfg.paths.output_dir, "checkpoints", "iter_0000004.ckpt"))
    cfg.paths.output_dir = str(Path(cfg.paths.output_dir).parent / "again")
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        run_training(cfg)
    assert not [w for w in warned if "did not evaluate" in str(w.message)]


def test_ranks_that_would_resume_from_different_checkpoints_are_refused_before_any_reads():
    """Under torchrun or srun each rank resolves ckpt_path=auto itself: on node-local disks a
    node without rank zero's checkpoints started afresh beside it, and the ranks trained apart."""
    from types import SimpleNamespace

    from src.callbacks.checkpoint import refuse_different_resumes

    def rank(rank_zeros: str, anyone_differs: bool, global_rank: int = 4):
        strategy = SimpleNamespace(broadcast=lambda value, src: rank_zeros,
                                   reduce_boolean_decision=lambda decision, all: decision or anyone_differs)
        return SimpleNamespace(strategy=strategy, global_rank=global_rank)

    with pytest.raises(ValueError, match=r"rank 0 from /runs/a/checkpoints/last.ckpt, rank 4 from none \(a fresh "
                                         r"start\).*storage every node shares"):
        refuse_different_resumes(rank("/runs/a/checkpoints/last.ckpt", anyone_differs=False), "")
    # a rank that agrees with rank zero fails too, where another does not (every rank stops)
    with pytest.raises(ValueError, match=r"rank 0 from /runs/a/last.ckpt, another rank from another file"):
        refuse_different_resumes(rank("/runs/a/last.ckpt", anyone_differs=True, global_rank=0), "/runs/a/last.ckpt")
    refuse_different_resumes(rank("/runs/a/last.ckpt", anyone_differs=False), "/runs/a/last.ckpt")   # all agree


def test_two_ranks_whose_checkpoints_differ_are_both_refused_before_the_fit(train_cfg):
    """Through a real fit on two ranks: the comparison is made in the checkpoint callback's
    setup, with the file each rank was given (Lightning's own ckpt_path is unset there)."""
    from conftest import run_training_on_two_ranks
    cfg = train_cfg("model=cyclegan", "max_iters=1", *NO_EVALUATION, "trainer=ddp_sim",
                    "trainer.strategy=ddp_spawn_find_unused_parameters_true",
                    "callbacks.model_checkpoint._target_=tests.scripts.ddp_probe.ResumingElsewhereOnRankOne")
    # (the error that surfaces is the first rank's to end, either one's)
    with pytest.raises(Exception, match=r"would resume from different checkpoints: rank 0 from none \(a fresh "
                                        r"start\), (rank 1 from /elsewhere/last.ckpt|another rank from another file)"):
        run_training_on_two_ranks(cfg)
