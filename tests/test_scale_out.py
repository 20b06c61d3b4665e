"""Scaling out: DDP (2 CPU processes) for every model, multirun with DDP and Optuna, the EMA of
the generators, mixed precision, wandb run identity, and the SLURM launcher config."""
import contextlib
import json
import csv
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict
from PIL import Image
from pytorch_lightning.plugins.precision import MixedPrecision

from conftest import (DATA_OF, MODELS, NO_EVALUATION, finite_train_losses, free_port, generator_output_dtypes,
                      slurm_task_env)
from src.callbacks.ema import GeneratorEMA, averaged_state_dict, ema_update_
from src.callbacks.image_grid import ImageGridCallback
from src.models.loss_scaling import PlayerGradScalers
from src.utils import run as run_module
from src.utils.ddp_multirun import argv_for_launched_rank
from src.utils.hydra_runtime import DDP_JOB_ENV
from src.utils.run import build_callbacks, build_trainer_kwargs, check_sync_batchnorm, order_callbacks, run_training
from src.utils.wandb_run import CHECKPOINT_KEY

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
PROBE = "+callbacks.rank_probe._target_=tests.scripts.ddp_probe.RankProbe"
# `++`: whether or not conf/callbacks/default.yaml includes conf/callbacks/ema.yaml.
EMA = ("++callbacks.ema._target_=src.callbacks.ema.GeneratorEMA", "++callbacks.ema.enabled=true",
       "++callbacks.ema.decay=0.5")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One thread, as the DDP ranks use: on 2 shared cores, two threads per process thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_command(*args: str, cwd: Path, data_dir: Path, wandb_mode: str = "disabled") -> tuple[list[str], dict]:
    """`python src/train.py debug=smoke <args>` as a user runs it, logs under cwd/logs: the
    command line and its environment."""
    env = {**os.environ, "PROJECT_ROOT": str(ROOT), "WANDB_MODE": wandb_mode, "NO_ALBUMENTATIONS_UPDATE": "1",
           "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    env.pop(DDP_JOB_ENV, None)
    flags = [a for a in args if a.startswith("-")]  # Hydra's flags go before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, str(ROOT / "src" / "train.py"), *flags, "debug=smoke", f"paths.log_dir={cwd}/logs",
           f"paths.data_dir={data_dir}", "data.max_dataset_size=4", "max_iters=2", *overrides]
    return cmd, env


def run_in_its_own_group(cmd: list[str], env: dict, cwd: Path, timeout_s: float = 600) -> tuple[int, str]:
    """Run `cmd` to its end in a process group of its own (a hung run leaves no rank behind, all
    are killed after it): its exit status and output."""
    log_path = cwd / "log.txt"
    with log_path.open("w") as log:
        run = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        status = run.wait(timeout=timeout_s)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    return status, log_path.read_text()


def run_train(*args: str, cwd: Path, data_dir: Path, wandb_mode: str = "disabled") -> subprocess.CompletedProcess:
    """`train_command`'s run, which must succeed."""
    cmd, env = train_command(*args, cwd=cwd, data_dir=data_dir, wandb_mode=wandb_mode)
    # 900 s: a four-model sweep of two DDP ranks each on a loaded 2-core machine
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def the_sweep_dir(cwd: Path) -> Path:
    sweeps = list((cwd / "logs" / "smoke" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    assert not (cwd / "logs" / "smoke" / "runs").exists(), "a rank started a run outside the sweep"
    return sweeps[0]


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def rank_probes(job: Path) -> list[dict]:
    files = sorted(job.glob("rank_probe_*.pt"))
    assert [f.name for f in files] == ["rank_probe_0.pt", "rank_probe_1.pt"], f"{job}: {files}"
    return [torch.load(f, weights_only=False) for f in files]


def assert_ranks_agree_on_different_data(probes: list[dict]) -> None:
    first, second = probes
    assert first["world_size"] == second["world_size"] == 2
    assert first["iteration"] == second["iteration"] == 2
    assert first["hparams"] == second["hparams"]
    assert first["run_dir"] == second["run_dir"]
    assert first["params"].keys() == second["params"].keys()
    for key in ("params", "sampled_params"):
        for name, value in first[key].items():
            assert torch.equal(value, second[key][name]), f"{key} {name} differs between the ranks"
    # ... and agree because both trained, not because neither stepped from the seeded start
    assert any(not torch.equal(first["initial_params"][name], value) for name, value in first["params"].items())
    # Lightning's DistributedSampler: each rank its own images; RankSeed: its own random stream.
    assert not {a for a, _ in first["paths"]} & {a for a, _ in second["paths"]}
    assert not torch.equal(first["rng_state_at_first_batch"], second["rng_state_at_first_batch"])


# ----- DDP: every model, through a multirun of `python src/train.py ... trainer=ddp_sim` --------

@pytest.fixture(scope="module")
def ddp_sweep(tmp_path_factory, shared_data_dir) -> Path:
    """One basic-launcher multirun, one job per model, each on 2 CPU processes started by
    Lightning's subprocess launcher (the path `trainer=ddp` takes), with the EMA and every
    configured callback, logging to wandb offline."""
    cwd = tmp_path_factory.mktemp("ddp_sweep")
    run_train("-m", f"model={','.join(MODELS)}", "data=shapes_paired", "trainer=ddp_sim", "logger=wandb", PROBE, *EMA,
              cwd=cwd, data_dir=shared_data_dir, wandb_mode="offline")
    return the_sweep_dir(cwd)


def test_ddp_multirun_runs_each_job_once_in_its_own_dir(ddp_sweep):
    jobs = job_dirs(ddp_sweep)
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert (job / ".hydra" / "overrides.yaml").is_file()
        assert (job / "train_ddp_process_1.log").is_file()  # rank 1 ran in this job's dir
        assert len(rank_probes(job)) == 2
    # one table of the sweep (rank zero's), a completed row per job
    table = (ddp_sweep / "summary.md").read_text()
    assert [f"| {job.name} | model={model}" in table for job, model in zip(jobs, MODELS)] == [True] * len(MODELS)
    assert table.count("| completed |") == len(MODELS)


@pytest.mark.parametrize("index,model_name", list(enumerate(MODELS)))
def test_ddp_ranks_end_identical_after_training_on_different_images(ddp_sweep, index, model_name):
    job = job_dirs(ddp_sweep)[index]
    assert OmegaConf.load(job / ".hydra" / "config.yaml").model_name == model_name
    probes = rank_probes(job)
    assert_ranks_agree_on_different_data(probes)
    # The sampling callbacks saw the EMA; the checkpoint holds it apart from the trained weights.
    checkpoint = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
    for name, value in checkpoint["ema"]["state_dict"].items():
        if not name.endswith((".running_mean", ".running_var")):   # (the probe records parameters)
            assert torch.equal(probes[0]["sampled_params"][name], value), name
    assert any(not torch.equal(value, checkpoint["state_dict"][name])
               for name, value in checkpoint["ema"]["state_dict"].items())
    for name, value in probes[0]["params"].items():
        assert torch.equal(checkpoint["state_dict"][name], value), name


def test_ddp_resume_mid_epoch_continues_each_ranks_share_exactly(tmp_path, shared_data_dir):
    """2 ranks, 8 images: 4 batches per rank per epoch. 4 iterations straight == 2, then resume
    for 2 more: each rank trains on the rest of its share of the same epoch list, and the
    weights come out identical."""
    def run(name: str, *overrides: str) -> Path:
        cwd = tmp_path / name
        cwd.mkdir()
        run_train("model=cyclegan", "data=shapes", "trainer=ddp_sim", "data.max_dataset_size=8", "seed=3", PROBE,
                  *NO_EVALUATION, *overrides, cwd=cwd, data_dir=shared_data_dir)
        (run_dir,) = (cwd / "logs" / "smoke" / "runs").iterdir()
        return run_dir

    straight = rank_probes(run("straight", "max_iters=4"))
    first = run("first", "max_iters=2")
    resumed = rank_probes(run("resumed", "max_iters=4", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"))
    for rank in (0, 1):
        assert len(straight[rank]["paths"]) == 4
        assert resumed[rank]["paths"] == straight[rank]["paths"][2:], f"rank {rank}"
        for name, value in straight[rank]["params"].items():
            assert torch.equal(resumed[rank]["params"][name], value), f"rank {rank}: {name}"


def test_a_run_saved_on_one_device_resumes_mid_epoch_on_two(tmp_path, shared_data_dir):
    """8 images, 2 trained on one device, then resumed on 2 ranks for 3 iterations each: the
    ranks train the epoch's other 6 images between them, none twice, then the epoch ends."""
    common = ("model=cyclegan", "data=shapes", "data.max_dataset_size=8", "seed=3", PROBE, *NO_EVALUATION)
    first_dir, resumed_dir = tmp_path / "first", tmp_path / "resumed"
    for cwd in (first_dir, resumed_dir):
        cwd.mkdir()
    run_train(*common, "max_iters=2", cwd=first_dir, data_dir=shared_data_dir)
    (first,) = (first_dir / "logs" / "smoke" / "runs").iterdir()
    result = run_train(*common, "trainer=ddp_sim", "max_iters=5",
                       f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", cwd=resumed_dir, data_dir=shared_data_dir)
    assert "Resumed on 2 device(s) at batch size 1 a run saved on 1 at batch size 1: epoch 0 goes on after its first 2" in result.stdout + result.stderr
    (resumed,) = (resumed_dir / "logs" / "smoke" / "runs").iterdir()
    trained_first = torch.load(first / "rank_probe_0.pt", weights_only=False)["paths"]
    ranks = rank_probes(resumed)
    assert [len(probe["paths"]) for probe in ranks] == [3, 3]
    domain_a_images = [a for a, _ in trained_first + ranks[0]["paths"] + ranks[1]["paths"]]   # B is a random partner
    assert len(set(domain_a_images)) == 8


def launched_rank_pid(run_dir: Path, rank: int) -> int:
    """The process of a rank Lightning's subprocess launcher started for the run in `run_dir`."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if f"hydra.job.name=train_ddp_process_{rank}".encode() in argv and \
                        f"hydra.run.dir={run_dir}".encode() in argv:
                    return int(proc.name)
    raise AssertionError(f"no process of rank {rank}")


def wait_until_training(run_dir: Path, processes: list[subprocess.Popen], log: Path, timeout_s: float = 240) -> None:
    """Until the run in `run_dir` has saved last.ckpt (training is under way), while its
    processes all run; otherwise the test fails with the end of `log`."""
    deadline = time.monotonic() + timeout_s
    while not (run_dir / "checkpoints" / "last.ckpt").exists():
        assert all(p.poll() is None for p in processes) and time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.5)


def live_members_of_group(pgid: int) -> list[int]:
    """The processes of process group `pgid` that have not exited (zombies left out)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()   # after "pid (comm)": state ppid pgrp
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members


def interrupted_in_whole_iterations(run_dir: Path) -> dict:
    """The run's interrupted.ckpt, which holds whole CycleGAN iterations (two steps each)."""
    saved = torch.load(run_dir / "checkpoints" / "interrupted.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] > 0 and saved["global_step"] % 2 == 0
    return saved


@pytest.mark.parametrize("signalled_rank", [0, 1])
def test_sigterm_under_ddp_stops_every_rank_with_its_checkpoint(tmp_path, shared_data_dir, signalled_rank):
    """SIGTERM to a two-rank run (the subprocess launcher's, as trainer=ddp), to the process the
    user started (rank 0) or to another rank alone: both ranks stop after the same iteration,
    rank zero saves interrupted.ckpt in whole iterations, and the run exits 143. With Lightning's
    handling alone, a signal to rank 1 alone stopped that rank a batch before rank 0, which then
    waited for it in the next gradient all-reduce for good (and a signal to rank 0 could leave
    both ranks idle in mismatched collectives)."""
    run_dir = tmp_path / "run"
    cmd, env = train_command("model=cyclegan", "data=shapes", *NO_EVALUATION, "trainer=ddp_sim",
                             f"hydra.run.dir={run_dir}", "max_iters=100000", cwd=tmp_path, data_dir=shared_data_dir)
    log_path = tmp_path / "log.txt"
    with log_path.open("w") as log:
        run = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        wait_until_training(run_dir, [run], log_path)
        os.kill(run.pid if signalled_rank == 0 else launched_rank_pid(run_dir, 1), signal.SIGTERM)
        assert run.wait(timeout=120) == 143, log_path.read_text()[-4000:]
        # The other rank ended too (in time: its interpreter's shutdown may outlast rank 0's on a
        # loaded machine; an exited rank may stay a zombie where no init process reaps orphans).
        deadline = time.monotonic() + 60
        while live_members_of_group(run.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not live_members_of_group(run.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    interrupted_in_whole_iterations(run_dir)
    assert "SIGTERM: every rank stops after iteration" in log_path.read_text()


def test_a_sigterm_before_training_started_is_decided_on_by_every_rank(monkeypatch):
    """Lightning's own SIGTERM handler runs from the fit's start; a signal it took before the
    training loop set the receiving rank alone to stop after its first batch (the others went on
    into collectives it never joined). StopSignals takes it over, for the ranks' shared decision."""
    import signal as signals
    from types import SimpleNamespace
    from src.callbacks.stop_signals import StopSignals
    monkeypatch.setattr(signals, "signal", lambda signum, handler: None)   # the test process keeps its handlers
    connector = SimpleNamespace(received_sigterm=True)
    trainer = SimpleNamespace(world_size=2, _signal_connector=connector,
                              _accelerator_connector=SimpleNamespace(cluster_environment=None))
    stops = StopSignals()
    stops.on_train_start(trainer, None)
    assert connector.received_sigterm is False and stops.noted == {signals.SIGTERM}


def test_stop_signals_take_sigterm_over_as_soon_as_lightning_installs_its_handler(monkeypatch):
    """Between Lightning installing its handlers and on_train_start the ranks meet in collectives
    (a barrier, the loaders' seed broadcasts); Lightning's SIGTERM handler broadcasts from inside
    the handler and would pair with one of them. The take-over follows the installation, once."""
    import signal as signals
    from types import SimpleNamespace
    from src.callbacks.stop_signals import StopSignals
    installed = {}
    monkeypatch.setattr(signals, "signal", lambda signum, handler: installed.__setitem__(signum, handler))

    class Connector:
        received_sigterm = False

        def register_signal_handlers(self):
            installed[signals.SIGTERM] = "lightning's"
    connector = Connector()
    trainer = SimpleNamespace(world_size=2, _signal_connector=connector,
                              _accelerator_connector=SimpleNamespace(cluster_environment=None))
    stops = StopSignals()
    stops.setup(trainer, None, "fit")
    assert installed == {}
    connector.register_signal_handlers()   # what Lightning's fit calls after the callbacks' setup
    assert installed[signals.SIGTERM] == stops.note
    stops.noted.add(signals.SIGTERM)    # a SIGTERM during the start's collectives
    stops.on_train_start(trainer, None)
    assert stops.noted == {signals.SIGTERM}   # kept, for the ranks' decision after the first iteration
    stops.teardown(trainer, None, "fit")
    connector.register_signal_handlers()
    assert installed[signals.SIGTERM] == "lightning's"
    stops.setup(trainer, None, "fit")   # a fit that fails before installing calls no teardown:
    stops.setup(trainer, None, "validate")   # the trainer's next stage gets Lightning's own
    connector.register_signal_handlers()
    assert installed[signals.SIGTERM] == "lightning's"


def test_the_stop_signals_module_loads_where_there_are_no_user_signals(monkeypatch):
    """Windows' signal module has no SIGUSR1/SIGUSR2: the training entry point imports this
    module, so naming them at import stopped every run there before it began."""
    import runpy

    from src.callbacks import stop_signals
    for name in ("SIGUSR1", "SIGUSR2"):
        monkeypatch.delattr(signal, name)
    loaded = runpy.run_path(stop_signals.__file__)
    assert loaded["REQUEUE_SIGNALS"] == () and loaded["NOTED_SIGNALS"] == (signal.SIGTERM,)


@pytest.mark.parametrize("signalled_ranks", [(1,), (0, 1)])
def test_a_requeue_warning_under_slurm_stops_every_rank_then_lightning_requeues(tmp_path, shared_data_dir,
                                                                               fake_scontrol, signalled_ranks):
    """Two ranks started as srun starts them (SLURM's variables, no launcher), Lightning's SLURM
    auto-requeue on: SIGUSR1 (`#SBATCH --signal=USR1@90`) to rank 1 alone, or to both as SLURM
    sends it. Both ranks finish the same iteration and stop, rank zero saves interrupted.ckpt,
    and only then does Lightning's requeue handler run, on every rank: one `scontrol requeue`
    from rank zero, without its hpc checkpoint (a copy of interrupted.ckpt, which every requeue
    added to the run folder); both exit 143. Lightning's handler
    used to run inside the signal handler, mid-iteration, and its barrier met whatever
    collective the other rank was in (rank 1 alone: a hang every time)."""
    run_dir, port = tmp_path / "run", free_port()
    ranks, logs = [], []
    for rank in (0, 1):
        cmd, env = train_command("model=cyclegan", "data=shapes", *NO_EVALUATION, "trainer=ddp_sim",
                                 f"hydra.run.dir={run_dir}", "max_iters=100000", cwd=tmp_path, data_dir=shared_data_dir)
        env.update(slurm_task_env(rank, tasks=2), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   SCONTROL_WATCH=str(run_dir / "checkpoints"))
        logs.append(tmp_path / f"rank{rank}.txt")
        with logs[-1].open("w") as log:
            ranks.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        wait_until_training(run_dir, ranks, logs[0])
        for rank in signalled_ranks:
            ranks[rank].send_signal(signal.SIGUSR1)
        statuses = [r.wait(timeout=120) for r in ranks]
    finally:
        for r in ranks:
            r.kill()
    assert statuses == [143, 143], logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
    interrupted_in_whole_iterations(run_dir)
    assert not list(run_dir.rglob("hpc_ckpt_*.ckpt"))
    (call,) = fake_scontrol.read_text().splitlines()   # rank zero's alone
    requeue, on_disk = call.split("|")
    assert requeue.split() == ["requeue", "4242"] and "interrupted.ckpt" in on_disk.split()
    assert "SIGUSR1: every rank stops after iteration" in logs[0].read_text()


def test_auto_resume_under_ddp_continues_on_every_rank(tmp_path, shared_data_dir):
    """`ckpt_path=auto` in a fixed run directory under the subprocess DDP launcher, whose rank 1
    re-runs the command: run again, rank 0 resolves `auto` and rank 1 takes its choice (handed
    down in its environment), and both continue at iteration 2, training the epoch's items not
    yet trained."""
    run_dir = tmp_path / "run"
    common = ("model=cyclegan", "data=shapes", "data.max_dataset_size=8", "seed=3", PROBE, *NO_EVALUATION,
              "trainer=ddp_sim", f"hydra.run.dir={run_dir}", "ckpt_path=auto")
    first = run_train(*common, "max_iters=2", cwd=tmp_path, data_dir=shared_data_dir)
    assert "ckpt_path=auto: no checkpoint in" in first.stdout + first.stderr
    trained_first = [probe["paths"] for probe in rank_probes(run_dir)]
    second = run_train(*common, "max_iters=4", cwd=tmp_path, data_dir=shared_data_dir)
    resumed_from = [line.split("resuming from", 1)[1].split()[0] for line in (second.stdout + second.stderr).splitlines()
                    if "ckpt_path=auto: resuming from" in line]
    assert len(resumed_from) == 1, resumed_from   # rank 0's search; rank 1 resumes from its choice
    probes = rank_probes(run_dir)
    assert [probe["iteration"] for probe in probes] == [4, 4]
    assert [len(probe["paths"]) for probe in probes] == [2, 2]
    domain_a_images = [a for paths in trained_first + [probe["paths"] for probe in probes] for a, _ in paths]
    assert len(domain_a_images) == len(set(domain_a_images)) == 8


def test_a_growing_model_resumed_on_more_devices_goes_on_counting_images(tmp_path, shared_data_dir):
    """StyleGAN's smoke schedule (phases of 4 images; 2 a device at 8x8, 4 from 16x16), 2
    iterations on one device, then resumed on 2 ranks: the 8x8 phase is done (4 images), so the
    fade-in of 16x16 takes one iteration of 8 images, as does 16x16 alone; the ranks train the
    epoch's items the first run had not."""
    common = ("model=stylegan", "data.max_dataset_size=20", "seed=3", PROBE, *NO_EVALUATION)
    first_dir, resumed_dir = tmp_path / "first", tmp_path / "resumed"
    for cwd in (first_dir, resumed_dir):
        cwd.mkdir()
    run_train(*common, "max_iters=2", cwd=first_dir, data_dir=shared_data_dir)
    (first,) = (first_dir / "logs" / "smoke" / "runs").iterdir()
    run_train(*common, "trainer=ddp_sim", "max_iters=4", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}",
              cwd=resumed_dir, data_dir=shared_data_dir)
    (resumed,) = (resumed_dir / "logs" / "smoke" / "runs").iterdir()
    checkpoint = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert [(part["first_iteration"], part["world_size"]) for part in checkpoint["schedule_parts"]] == [(0, 1), (2, 2)]
    (loader_state,) = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state["items_done"] == 2 + 8 and loader_state["world_size"] == 2   # each rank's share of 20
    (metrics_file,) = resumed.glob("**/metrics.csv")
    rows = [row for row in csv.DictReader(metrics_file.open()) if row.get("train/kimg")]
    stages = [(float(r["train/level"]), float(r["train/alpha"]), float(r["train/kimg"])) for r in rows]
    assert stages == [(2.0, 0.0, pytest.approx(0.012)), (2.0, 1.0, pytest.approx(0.020))]   # level 2: 16x16
    ranks = rank_probes(resumed)
    assert [len(probe["paths"]) for probe in ranks] == [8, 8]
    trained_first = torch.load(first / "rank_probe_0.pt", weights_only=False)["paths"]
    assert len({a for a, _ in trained_first + ranks[0]["paths"] + ranks[1]["paths"]}) == 20


def test_each_multirun_job_is_its_own_wandb_run(ddp_sweep):
    ids = []
    for job in job_dirs(ddp_sweep):
        runs = list((job / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, runs
        ids.append(runs[0].stem.removeprefix("run-"))
        model_name = OmegaConf.load(job / ".hydra" / "config.yaml").model_name
        record = written_record(runs[0], f"smoke/{ddp_sweep.name}".encode())
        assert f"{model_name}-shapes_paired-".encode() in record  # run name
        assert f"smoke/{ddp_sweep.name}".encode() in record  # group: the sweep
        checkpoint = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint[CHECKPOINT_KEY] == ids[-1]
    assert len(set(ids)) == len(ids)


# (data: both iterations in the first epoch, where the ranks never share an item; RGAN takes 5
# critic batches per iteration)
@pytest.mark.parametrize("model_name,data,metric", [
    ("stylegan", ["data.max_dataset_size=16"], "eval/fid_samples"),
    ("rgan", ["data.max_dataset_size=64", "data.batch_size=2"], "eval/mmd2_samples")])
def test_noise_models_run_under_the_subprocess_ddp_launcher_with_wandb(tmp_path, shared_data_dir, model_name,
                                                                        data, metric):
    """A noise-to-image model and a series model through `trainer=ddp_sim` (Lightning's
    subprocess launcher, as `trainer=ddp`), on their own data, with the EMA and wandb offline:
    both ranks train on their own items to the same weights, the sampling callbacks see the
    EMA, and the run's wandb record holds the sample metric."""
    # StyleGAN's EMA is set by a half-life in images, which a fixed decay would not change
    ema = EMA if model_name != "stylegan" else [setting for setting in EMA if ".decay=" not in setting]
    run_train(f"model={model_name}", "trainer=ddp_sim", "logger=wandb", PROBE, *ema, *data,
              cwd=tmp_path, data_dir=shared_data_dir, wandb_mode="offline")
    (run_dir,) = (tmp_path / "logs" / "smoke" / "runs").iterdir()
    probes = rank_probes(run_dir)
    assert_ranks_agree_on_different_data(probes)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["ema"]["state_dict"]
    for name, value in checkpoint["ema"]["state_dict"].items():
        if not name.endswith((".running_mean", ".running_var")):   # (the probe records parameters)
            assert torch.equal(probes[0]["sampled_params"][name], value), name
    (record,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    assert metric.encode() in written_record(record, metric.encode())


# ----- Optuna under DDP ------------------------------------------------------------------------

def test_optuna_sweep_under_ddp_gives_both_ranks_the_same_trial(tmp_path, shared_data_dir):
    # The truth metric of the config may not be there on every data set: train/G exists always.
    run_train("hparams_search=cyclegan_optuna", "optimized_metric=train/G", "hydra.sweeper.direction=minimize",
              "hydra.sweeper.n_trials=2", "trainer=ddp_sim", PROBE, *NO_EVALUATION,
              cwd=tmp_path, data_dir=shared_data_dir)
    sweep = the_sweep_dir(tmp_path)
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert set(results.best_params) == {"model.optimizer.lr", "loss.weights.cycle", "loss.weights.identity"}
    assert math.isfinite(results.best_value)
    trials = [rank_probes(job) for job in job_dirs(sweep)]
    assert len(trials) == 2
    for probes in trials:
        assert_ranks_agree_on_different_data(probes)
    assert trials[0][0]["hparams"]["optimizer"]["lr"] != trials[1][0]["hparams"]["optimizer"]["lr"]


def test_a_study_kept_in_storage_resumes_with_new_trials_under_its_data_sets_name(tmp_path, shared_data_dir,
                                                                                  compose_with_hydra):
    """`hydra.sweeper.storage=sqlite:///...` keeps a study across sweeps. A seeded sampler would
    start its random draws over in the second sweep and repeat the first one's trial; the study
    is named by model, data and score, so another data set's search does not pool with it."""
    import optuna
    storage = f"sqlite:///{tmp_path}/study.db"
    for sweep in ("first", "second"):
        run_train("hparams_search=cyclegan_optuna", "optimized_metric=train/G", "hydra.sweeper.direction=minimize",
                  "hydra.sweeper.n_trials=1", f"hydra.sweeper.storage={storage}", "max_iters=1",
                  "data.max_dataset_size=4", *NO_EVALUATION, f"hydra.sweep.dir={tmp_path}/{sweep}",
                  cwd=tmp_path, data_dir=shared_data_dir)
    (summary,) = optuna.get_all_study_summaries(storage)
    assert summary.study_name == "smoke_cyclegan_shapes_train/G_iters=1_kimg=None_epochs=200"
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    assert len(trials) == 2 and trials[0].params != trials[1].params
    # Without storage the search stays seeded, and so repeatable.
    assert compose_with_hydra("hparams_search=cyclegan_optuna").hydra.sweeper.sampler.seed == 1234


def test_launched_rank_runs_only_its_own_job():
    job = '{"overrides": ["model.optimizer.lr=0.001", "loss=hinge"], "hydra_overrides": ["hydra.verbose=true"], ' \
          '"run_dir": "/runs/sweep/3"}'
    argv = ["src/train.py", "-m", "--config-name", "train", "loss=lsgan,hinge", 'hydra.run.dir="/runs/x"']
    assert argv_for_launched_rank(argv, {DDP_JOB_ENV: job, "LOCAL_RANK": "1"}) == [
        "src/train.py", "--config-name", "train", "hydra.verbose=true", "model.optimizer.lr=0.001", "loss=hinge",
        "hydra.run.dir='/runs/sweep/3'", "hydra.output_subdir=null", "hydra.job.name=train_ddp_process_1",
        "hydra.mode=RUN"]
    assert argv_for_launched_rank(argv, {DDP_JOB_ENV: job, "LOCAL_RANK": "0"}) is None  # rank 0 runs the sweep
    assert argv_for_launched_rank(argv, {"LOCAL_RANK": "1"}) is None  # torchrun / single runs: untouched


# ----- ddp_spawn pickles the module: the spectral-norm models must survive it --------------------

@pytest.mark.parametrize("model_name", ("ugatit", "nicegan"))
def test_spectral_norm_models_train_under_ddp_spawn(train_cfg, tmp_path, model_name):
    cfg = train_cfg(f"model={model_name}", "max_iters=2", "data.max_dataset_size=4", "trainer=ddp_sim",
                    "trainer.strategy=ddp_spawn_find_unused_parameters_true", PROBE, *NO_EVALUATION)
    run_training(cfg)
    assert_ranks_agree_on_different_data(rank_probes(Path(cfg.paths.output_dir)))


def test_sync_batchnorm_refuses_test_time_batch_statistics_and_the_cpu(train_cfg):
    cfg = train_cfg("model=pix2pix", "data=shapes_paired", "trainer.sync_batchnorm=true",   # a key of every trainer config
                    "++trainer.accelerator=gpu")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    with pytest.raises(ValueError, match="test_time_batch_stats"):
        check_sync_batchnorm(cfg, model)
    # torch's SyncBatchNorm takes no CPU tensor: the first forward stopped, naming no setting
    cfg = train_cfg("model=dcgan", "trainer=ddp_sim", "trainer.sync_batchnorm=true")
    with pytest.raises(ValueError, match=r"trainer.sync_batchnorm=true needs GPUs: .* resolves to the CPU"):
        check_sync_batchnorm(cfg, hydra.utils.instantiate(cfg.model, _recursive_=False))
    cfg = train_cfg("model=dcgan", "trainer=ddp_sim", "trainer.sync_batchnorm=false")
    check_sync_batchnorm(cfg, hydra.utils.instantiate(cfg.model, _recursive_=False))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
@pytest.mark.parametrize("trainer_name", ["gpu", "ddp"])
def test_a_gpu_trainer_without_a_gpu_names_the_trainer_to_use(train_cfg, trainer_name):
    cfg = train_cfg("model=cyclegan", f"trainer={trainer_name}")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    with pytest.raises(ValueError, match=r"trainer.accelerator=gpu: no CUDA GPU is visible here .* Use trainer=cpu"):
        build_trainer_kwargs(cfg, model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_a_gpu_accelerator_set_on_the_command_line_is_told_to_set_it_back(train_cfg):
    """trainer=cpu beside a trainer.accelerator=gpu override keeps the override (a key beats its
    group): the refusal also names the key to set."""
    cfg = train_cfg("model=cyclegan", "trainer=cpu", "trainer.accelerator=gpu")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    with pytest.raises(ValueError, match=r"where trainer.accelerator is set on the command line, .* set "
                                         r"trainer.accelerator=cpu \(or auto\) instead"):
        build_trainer_kwargs(cfg, model)
    build_trainer_kwargs(train_cfg("model=cyclegan", "trainer=cpu", "trainer.accelerator=cpu"), model)


@pytest.mark.parametrize("seed, message", [
    ("abc", r"seed='abc' must be an integer >= 0 or null \(null: a seed drawn and recorded\)"),
    (-1, r"seed=-1 must be an integer >= 0"),
    (2**32, r"seed=4294967296 must be at most 4294967295"),   # Lightning would warn and seed 0
])
def test_a_seed_numpy_cannot_take_is_refused_by_key(train_cfg, seed, message):
    cfg = train_cfg("model=cyclegan", f"seed={seed}")
    with pytest.raises(ValueError, match=message):
        run_training(cfg)
    assert not Path(cfg.paths.output_dir, "checkpoints").exists()


def test_a_model_setting_of_the_wrong_type_is_named_by_key(train_cfg):
    cfg = train_cfg("model=cyclegan", "model.pool_size=abc")   # was: '<' not supported between str and int
    with pytest.raises(ValueError, match=r"model.pool_size='abc' must be an integer \(CycleGAN's pool_size\)"):
        run_training(cfg)


@pytest.mark.parametrize("max_iters", [-1, 0, 1.5, "ten"])
def test_max_iters_must_be_a_positive_integer_named_in_iterations(train_cfg, max_iters):
    cfg = train_cfg("model=cyclegan", f"max_iters={max_iters}")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    with pytest.raises(ValueError, match=rf"max_iters={max_iters!r} must be a positive integer"):
        build_trainer_kwargs(cfg, model)
    cfg.max_iters = 3   # two optimizer steps per CycleGAN iteration
    assert build_trainer_kwargs(cfg, model)["max_steps"] == 6


@pytest.mark.parametrize("precision", ["64-true", 64, "16-true", "bf16-true", "transformer-engine"])
def test_a_precision_that_casts_the_weights_is_refused_by_key(train_cfg, precision):
    cfg = train_cfg("model=cyclegan", "trainer=cpu", f"trainer.precision={precision}")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    with pytest.raises(ValueError, match=rf"trainer.precision={precision!r} is not supported.*Use trainer.precision=32-true"):
        build_trainer_kwargs(cfg, model)
    for supported in ("32-true", 32, "bf16-mixed"):   # on a CPU (16-mixed: next test)
        cfg.trainer.precision = supported
        assert build_trainer_kwargs(cfg, model)["precision"] == supported


@pytest.mark.parametrize("precision", ["16-mixed", 16])
def test_fp16_on_a_cpu_is_refused_rather_than_swapped_for_bf16(train_cfg, monkeypatch, precision):
    """Lightning has no fp16 autocast on CPUs and trains bf16-mixed instead, unasked (about 100x
    slower than float32 on a CPU that emulates bf16): the run stops at start, naming the fix.
    On a GPU the same setting is kept."""
    cfg = train_cfg("model=cyclegan", "trainer=cpu", f"trainer.precision={precision}")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    with pytest.raises(ValueError, match=rf"trainer.precision={precision} \(fp16 with loss scaling\) needs a GPU.*"
                                         rf"Use trainer.precision=32-true here"):
        build_trainer_kwargs(cfg, model)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = train_cfg("model=cyclegan", "trainer=gpu", f"trainer.precision={precision}")
    assert build_trainer_kwargs(cfg, model)["precision"] == precision


def test_the_cpu_bf16_probe_is_torchs_own():
    """cpu_computes_bf16 reads a private op and takes its absence for "supported" (a torch
    without oneDNN): a torch that renamed it would drop the warning below in silence."""
    assert isinstance(torch.ops.mkldnn._is_mkldnn_bf16_supported(), bool)
    assert run_module.cpu_computes_bf16() is torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.parametrize("trainer_settings,computes_bf16,warned", [
    (["trainer=cpu", "trainer.precision=bf16-mixed"], False, True),
    (["trainer=cpu", "trainer.precision=bf16-mixed"], True, False),     # AVX-512 BF16 / AMX: no warning
    (["trainer=cpu", "trainer.precision=32-true"], False, False),
])
def test_bf16_on_a_cpu_that_emulates_it_is_warned_at_start(train_cfg, monkeypatch, caplog, trainer_settings,
                                                           computes_bf16, warned):
    monkeypatch.setattr(run_module, "cpu_computes_bf16", lambda: computes_bf16)
    cfg = train_cfg("model=cyclegan", *trainer_settings)
    with caplog.at_level(logging.WARNING, logger="src.utils.run"):
        build_trainer_kwargs(cfg, hydra.utils.instantiate(cfg.model, _recursive_=False))
    assert ("Use trainer.precision=32-true here" in caplog.text) is warned


@pytest.mark.parametrize("devices, warned_gpus", [
    ("1", ["GPU 0 Tesla V100-SXM2-16GB (compute capability 7.0)"]),
    ("[1]", []),
    ("[1,2]", ["GPU 2 Tesla T4 (compute capability 7.5)"]),
    ("auto", ["GPU 0 Tesla V100-SXM2-16GB (compute capability 7.0)", "GPU 2 Tesla T4 (compute capability 7.5)"]),
])
def test_bf16_on_a_gpu_before_ampere_is_warned_at_start(train_cfg, monkeypatch, caplog, devices, warned_gpus):
    """A V100 or T4 has no bf16 arithmetic: torch's check counts emulation as support, so the run
    would start and crawl or fail inside cuDNN without naming the setting. On a machine of mixed
    generations, the GPUs that trainer.devices selects are the ones that count."""
    gpus = {0: ("Tesla V100-SXM2-16GB", (7, 0)), 1: ("NVIDIA A100-SXM4-40GB", (8, 0)), 2: ("Tesla T4", (7, 5))}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpus[device][0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: gpus[device][1])
    cfg = train_cfg("model=cyclegan", "trainer=gpu", f"trainer.devices={devices}", "trainer.precision=bf16-mixed")
    with caplog.at_level(logging.WARNING, logger="src.utils.run"):
        build_trainer_kwargs(cfg, hydra.utils.instantiate(cfg.model, _recursive_=False))
    expected = (f"trainer.precision=bf16-mixed on {', '.join(warned_gpus)}: no bf16 arithmetic before Ampere (8.0)"
                if warned_gpus else "no bf16 arithmetic")
    assert (expected in caplog.text) is bool(warned_gpus), caplog.text
    # a strategy that forks its ranks: reading the GPUs would initialise CUDA, and the fork is then refused
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: pytest.fail("CUDA initialised"))
    cfg = train_cfg("model=cyclegan", "trainer=gpu", f"trainer.devices={devices}", "trainer.precision=bf16-mixed",
                    "trainer.strategy=ddp_fork_find_unused_parameters_true")
    build_trainer_kwargs(cfg, hydra.utils.instantiate(cfg.model, _recursive_=False))


def test_apple_gpus_are_resolved_as_lightning_resolves_them(train_cfg, monkeypatch):
    """On a Mac with MPS, Lightning trains `auto` and `gpu` there: neither is refused as a missing
    CUDA GPU, and fp16 is not refused as a CPU run."""
    from lightning_fabric.accelerators import MPSAccelerator

    from src.utils.accelerator import resolved_accelerator
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolved_accelerator({"accelerator": "auto"}) == "cpu"
    monkeypatch.setattr(MPSAccelerator, "is_available", staticmethod(lambda: True))
    assert resolved_accelerator({"accelerator": "auto"}) == resolved_accelerator({"accelerator": "gpu"}) == "mps"
    assert resolved_accelerator({}) == "mps" and resolved_accelerator({"accelerator": "cpu"}) == "cpu"
    model = hydra.utils.instantiate(train_cfg("model=cyclegan").model, _recursive_=False)
    for trainer in ("gpu", "default"):
        cfg = train_cfg("model=cyclegan", f"trainer={trainer}", "trainer.precision=16-mixed")
        assert build_trainer_kwargs(cfg, model)["precision"] == "16-mixed"


# ----- EMA of the generators -------------------------------------------------------------------

def with_ema(cfg, **settings):
    """The run with conf/callbacks/ema.yaml's callback enabled (and `settings` applied)."""
    node = OmegaConf.load(CONF_DIR / "callbacks" / "ema.yaml").ema
    node.enabled = True
    for key, value in settings.items():
        node[key] = value
    with open_dict(cfg):
        cfg.callbacks.ema = node
    return cfg


def test_ema_update_is_the_decayed_average_and_copies_before_start_iter(train_cfg):
    model = hydra.utils.instantiate(train_cfg("model=nicegan").model, _recursive_=False)
    ema = GeneratorEMA(decay=0.75, start_iter=2)
    ema.on_train_start(None, model)
    # NICE-GAN translates through encoder and generator: both averaged, the classifier heads not.
    assert any(n.startswith("D_A.encoder.") for n in ema.names) and any(n.startswith("G_AB.") for n in ema.names)
    assert not any(n.startswith(("D_A.classifier.", "D_B.classifier.")) for n in ema.names)

    def move_weights():
        with torch.no_grad():
            for p in ema._tensors:
                p.add_(torch.randn_like(p))

    move_weights()
    ema.update(iteration=1)  # before start_iter: a copy
    assert all(torch.equal(a, p) for a, p in zip(ema.averaged, ema._tensors))
    previous = [a.clone() for a in ema.averaged]
    move_weights()
    ema.update(iteration=2)
    for avg, prev, param in zip(ema.averaged, previous, ema._tensors):
        assert torch.allclose(avg, 0.75 * prev + (1 - 0.75) * param, rtol=1e-6, atol=1e-6)
        assert not torch.equal(avg, param)


def test_the_swap_exchanges_tensors_and_gives_the_training_storage_back(train_cfg):
    """The average goes in as the parameters' tensors, not a copy into them (three copies of the
    sampling networks per iteration), and the training weights come back to their own storage
    (CUDA graphs and the Winograd weight cache key on it), to the same Parameter objects the
    optimizers hold."""
    model = hydra.utils.instantiate(train_cfg("model=cyclegan").model, _recursive_=False)
    ema = GeneratorEMA(decay=0.5)
    ema.on_train_start(None, model)
    params = list(ema._tensors)
    training = [(p.data_ptr(), p.detach().clone()) for p in params]
    with torch.no_grad():
        for a in ema.averaged:
            a.add_(1.0)
    ema.swap_in()
    assert all(p.data_ptr() == a.data_ptr() for p, a in zip(params, ema.averaged))
    ema.swap_out()
    named = dict(model.named_parameters())   # the Parameter objects the optimizers are built on
    assert all(named[name] is p for name, p in zip(ema.names, params))
    for p, (pointer, values) in zip(params, training):
        assert p.data_ptr() == pointer and torch.equal(p, values)


def test_an_interrupted_swap_in_is_undone_whole(train_cfg):
    """A KeyboardInterrupt can land between any two of the swap's assignments: the parameters
    exchanged so far must come back with the interrupt's swap_out. (Here the third assignment
    fails instead: a meta tensor cannot be a CPU parameter's data.)"""
    model = hydra.utils.instantiate(train_cfg("model=cyclegan").model, _recursive_=False)
    ema = GeneratorEMA(decay=0.5)
    ema.on_train_start(None, model)
    training = [p.detach().clone() for p in ema._tensors]
    with torch.no_grad():
        ema.averaged = [a + 1 for a in ema.averaged]
    ema.averaged[2] = ema.averaged[2].to("meta")
    with pytest.raises(RuntimeError):
        ema.swap_in()
    ema.on_exception(None, model, KeyboardInterrupt())
    assert all(torch.equal(p, weights) for p, weights in zip(ema._tensors, training))


def test_ema_update_arithmetic():
    averaged, current = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, -2.0])]
    ema_update_(averaged, current, 0.5)
    assert torch.equal(averaged[0], torch.tensor([2.0, 0.0]))


class SamplingWeights(pl.Callback):
    """After the EMA: records, at every batch end, whether the generator holds the average."""

    def __init__(self, ema: GeneratorEMA):
        self.ema, self.holds_average = ema, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.holds_average.append(all(torch.equal(p, a) for p, a in zip(self.ema._tensors, self.ema.averaged)))


def fit_with_callbacks(cfg, *extra: pl.Callback):
    """run_training's trainer, with test callbacks added to the configured ones."""
    pl.seed_everything(cfg.seed, workers=True)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    datamodule = hydra.utils.instantiate(cfg.data)
    callbacks = order_callbacks(build_callbacks(cfg, None) + list(extra))
    logger = pl.loggers.CSVLogger(cfg.paths.output_dir)  # the LR monitor needs one
    trainer = pl.Trainer(**build_trainer_kwargs(cfg, model), callbacks=callbacks, logger=logger)
    trainer.fit(model, datamodule=datamodule)
    return model, trainer


def test_callbacks_sample_with_the_ema_while_training_never_sees_it(train_cfg, tmp_path):
    common = ["model=cyclegan", "max_iters=3", "data.max_dataset_size=4", *NO_EVALUATION]
    plain, _ = fit_with_callbacks(train_cfg(*common))
    cfg = with_ema(train_cfg(*common), decay=0.5)
    cfg.paths.output_dir = str(tmp_path / "ema")
    ema = hydra.utils.instantiate(cfg.callbacks.ema)
    del cfg.callbacks.ema
    probe = SamplingWeights(ema)
    averaged_run, trainer = fit_with_callbacks(cfg, probe, ema)  # listed last, run first
    assert trainer.callbacks[0] is ema
    assert probe.holds_average == [True, True, True]
    # Training is bit-identical with and without the EMA, and the model leaves fit trained.
    for (name, a), b in zip(plain.state_dict().items(), averaged_run.state_dict().values()):
        assert torch.equal(a, b), name
    checkpoint = torch.load(tmp_path / "ema" / "checkpoints" / "last.ckpt", weights_only=True)
    for name, value in averaged_run.state_dict().items():
        assert torch.equal(checkpoint["state_dict"][name], value), name
    assert set(checkpoint["ema"]["state_dict"]) == set(ema.names)
    assert any(not torch.equal(checkpoint["ema"]["state_dict"][n], checkpoint["state_dict"][n]) for n in ema.names)
    for name, value in zip(ema.names, ema.averaged):
        assert torch.equal(checkpoint["ema"]["state_dict"][name], value)
    averaged_model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    averaged_model.load_state_dict(averaged_state_dict(checkpoint))


def test_ema_must_run_before_the_callbacks_that_sample(train_cfg, tmp_path):
    model = hydra.utils.instantiate(train_cfg("model=cyclegan").model, _recursive_=False)
    ema = GeneratorEMA()
    trainer = pl.Trainer(callbacks=[ImageGridCallback(str(tmp_path)), ema], logger=False)
    with pytest.raises(ValueError, match="must come before"):
        ema.setup(trainer, model, "fit")


def test_ema_averages_the_batch_norm_statistics_a_sampler_in_eval_mode_reads(train_cfg, tmp_path):
    """LSGAN samples in eval mode, normalising by the running statistics: averaged weights with
    the live network's statistics were a network that never existed."""
    common = ["model=lsgan", "data=shapes_labelled", "max_iters=3", "data.max_dataset_size=8", *NO_EVALUATION]
    cfg = with_ema(train_cfg(*common), decay=0.5)
    cfg.paths.output_dir = str(tmp_path / "ema")
    run_training(cfg)
    checkpoint = torch.load(tmp_path / "ema" / "checkpoints" / "last.ckpt", weights_only=True)
    averaged = checkpoint["ema"]["state_dict"]
    statistics = [name for name in averaged if name.endswith((".running_mean", ".running_var"))]
    assert statistics and all(name.startswith("generator.") for name in statistics)
    assert not any(name.endswith("num_batches_tracked") for name in averaged)
    assert all(not torch.equal(averaged[name], checkpoint["state_dict"][name]) for name in statistics)

    # An average saved before the statistics were averaged resumes, saying where they start.
    for name in statistics:
        del checkpoint["ema"]["state_dict"][name]
    torch.save(checkpoint, tmp_path / "older.ckpt")
    resumed = with_ema(train_cfg(*common, "max_iters=4", f"ckpt_path={tmp_path}/older.ckpt"), decay=0.5)
    resumed.paths.output_dir = str(tmp_path / "resumed")
    with pytest.warns(UserWarning, match="holds no batch-norm statistics"):
        run_training(resumed)


def test_the_model_leaves_fit_with_its_trained_statistics_after_a_move_with_the_average_in(train_cfg):
    """Lightning moves the model to the CPU at the end of a GPU fit with the average swapped in: a
    move gives buffers new tensors (parameters keep theirs), and the training batch-norm
    statistics went back into tensors the model no longer held. (.double() moves the same way.)"""
    model = hydra.utils.instantiate(train_cfg("model=lsgan", "data=shapes_labelled").model, _recursive_=False)
    ema = GeneratorEMA(decay=0.5)
    ema.on_train_start(None, model)
    statistics = [n for n in ema.names if n.endswith(".running_mean")]
    trained = {n: model.state_dict()[n].clone() for n in statistics}
    with torch.no_grad():
        for a in ema.averaged:
            a.add_(1.0)
    ema.swap_in()
    model.double()
    ema.teardown(None, model, "fit")
    for name in statistics:
        assert torch.equal(model.state_dict()[name].float(), trained[name]), name
    assert all(any(t is p for t in model.buffers()) for n, p in zip(ema.names, ema._tensors) if n in statistics)


def test_ema_resumes_exactly(train_cfg, tmp_path):
    """4 iterations straight == 2, then resume for 2: the EMA continues like the weights."""
    common = ["model=cyclegan", "data.max_dataset_size=2", "seed=7", *NO_EVALUATION]

    def run(name, *extra):
        cfg = with_ema(train_cfg(*common, *extra), decay=0.6, start_iter=1)
        cfg.paths.output_dir = str(tmp_path / name)
        run_training(cfg)
        return torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)

    straight = run("straight", "max_iters=4")
    run("first", "max_iters=2")
    resumed = run("resumed", "max_iters=4", f"ckpt_path={tmp_path}/first/checkpoints/last.ckpt")
    assert straight["ema"]["updates"] == resumed["ema"]["updates"] == 4
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    for name, value in straight["ema"]["state_dict"].items():
        assert torch.equal(value, resumed["ema"]["state_dict"][name]), name
    # Another decay on resume goes on with it, and says so.
    with pytest.warns(UserWarning, match=r"callbacks.ema.decay=0.9 \(the checkpoint's run: 0.6\)"):
        cfg = with_ema(train_cfg(*common, "max_iters=3", f"ckpt_path={tmp_path}/first/checkpoints/last.ckpt"),
                       decay=0.9, start_iter=1)
        cfg.paths.output_dir = str(tmp_path / "other_decay")
        run_training(cfg)
    # The EMA off on resume dropped the average without a word
    with pytest.warns(UserWarning, match=r"holds an EMA of the generators, and this run keeps none .*"
                                         r"callbacks.ema.enabled=true to continue it"):
        cfg = train_cfg(*common, "max_iters=3", f"ckpt_path={tmp_path}/first/checkpoints/last.ckpt")
        cfg.paths.output_dir = str(tmp_path / "no_ema")
        run_training(cfg)


# ----- mixed precision ---------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", MODELS)
def test_bf16_mixed_trains_every_model(train_cfg, model_name):
    cfg = train_cfg(f"model={model_name}", f"data={DATA_OF[model_name]}", "max_iters=2", "data.max_dataset_size=2",
                    "trainer.precision=bf16-mixed", *NO_EVALUATION)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    dtypes = generator_output_dtypes(model)
    trainer = pl.Trainer(**build_trainer_kwargs(cfg, model), logger=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))
    assert torch.bfloat16 in dtypes
    assert model.grad_scalers is None  # bf16 needs no loss scaling
    finite_train_losses(trainer)


# One scaler per backward: named after the players its optimizers train.
EXPECTED_SCALERS = {"cyclegan": {"generators", "discriminators"}, "pix2pix": {"discriminator", "generator"},
                    "ugatit": {"discriminators", "generators"}, "nicegan": {"heads+encoders", "generators"}}


# fp16 autocast runs on CPU when the plugin is given explicitly (`precision="16-mixed"` on a CPU
# trainer silently becomes bf16), so the per-loss scalers are tested here; speed needs a GPU.
@pytest.mark.parametrize("model_name", MODELS)
def test_fp16_gives_each_loss_its_own_scaler(train_cfg, tmp_path, model_name):
    cfg = train_cfg(f"model={model_name}", f"data={DATA_OF[model_name]}", "max_iters=2", "data.max_dataset_size=2",
                    *NO_EVALUATION)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    dtypes = generator_output_dtypes(model)
    kwargs = {**build_trainer_kwargs(cfg, model), "logger": False, "enable_checkpointing": False}
    del kwargs["precision"]  # given by the plugin
    trainer = pl.Trainer(**{**kwargs, "plugins": [*kwargs["plugins"], MixedPrecision("16-mixed", "cpu")]})
    trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))
    assert torch.float16 in dtypes
    scalers = trainer.precision_plugin.scaler
    assert isinstance(scalers, PlayerGradScalers) and model.grad_scalers is scalers
    assert not model.steps_in_backward  # the inf check needs every gradient before any step
    expected = EXPECTED_SCALERS[model_name]
    assert set(scalers.scalers) == expected
    assert trainer.global_step == 2 * model.optimizer_steps_per_iter  # skipped steps count too
    finite_train_losses(trainer)
    # The scalers' state is checkpointed by Lightning through the precision plugin.
    trainer.save_checkpoint(tmp_path / "fp16.ckpt")
    state = torch.load(tmp_path / "fp16.ckpt", weights_only=True)["MixedPrecision"]
    assert set(state) == expected



def test_one_backward_into_two_optimizers_is_unscaled_with_the_scale_it_was_scaled_with():
    """NICE-GAN's discriminator step, as Lightning drives the scaler: scale, backward, then for
    each optimizer unscale_ / step / update. A shared scaler growing after the first optimizer
    unscales the second one's gradients by the wrong factor; the per-loss scaler does not."""
    settings = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 1,
                "_growth_tracker": 0}

    def second_gradient(scaler, scaling):
        heads, encoder = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
        opts = [torch.optim.SGD([heads], lr=0.0), torch.optim.SGD([encoder], lr=0.0)]
        with scaling():
            scaler.scale((3.0 * heads + 5.0 * encoder).sum()).backward()
            for opt in opts:  # Lightning's MixedPrecision.optimizer_step, once per optimizer
                scaler.unscale_(opt)
                scaler.step(opt)
                scaler.update()
        return float(encoder.grad)

    shared = torch.amp.GradScaler("cpu")
    shared.load_state_dict(settings)
    assert second_gradient(shared, contextlib.nullcontext) == 2.5  # 5 / 2: unscaled by the grown scale
    per_loss = PlayerGradScalers("cpu", settings)
    assert second_gradient(per_loss, lambda: per_loss.scaling("heads+encoders")) == 5.0
    assert per_loss.scalers["heads+encoders"].get_scale() == 2048.0  # one update for the backward


def test_an_overflow_in_one_optimizers_gradients_skips_every_optimizer_of_the_backward():
    """NICE-GAN's discriminator step: inf in the encoders' gradients skips the heads' step too,
    as the authors' single optimizer skips the whole step; finite gradients step both."""
    def stepped(encoder_factor: float) -> tuple[list[bool], float]:
        scalers = PlayerGradScalers("cpu", {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                            "growth_interval": 100, "_growth_tracker": 0})
        heads, encoder = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
        opts = [torch.optim.SGD([heads], lr=0.1), torch.optim.SGD([encoder], lr=0.1)]
        with scalers.scaling("heads+encoders", opts):
            scalers.scale((3.0 * heads + encoder_factor * encoder).sum()).backward()
            for opt in opts:  # Lightning's MixedPrecision.optimizer_step, once per optimizer
                scalers.unscale_(opt)
                scalers.step(opt)
                scalers.update()
        return [p.item() != 1.0 for p in (heads, encoder)], scalers.scalers["heads+encoders"].get_scale()

    assert stepped(float("inf")) == ([False, False], 512.0)
    assert stepped(5.0) == ([True, True], 1024.0)


def test_fused_optimizers_of_one_backward_skip_together_without_a_read_of_the_flag(monkeypatch):
    """Fused Adam reads GradScaler's overflow flag inside its kernel. The flags of one backward's
    optimizers are combined on the device, so no step reads them on the host (.item(), a wait for
    the GPU at every backward), and an overflow in either or both still skips both (a fused kernel
    skips on a flag of exactly 1, not on a sum of 2)."""
    def stepped(encoder_factor: float, heads_factor: float = 3.0) -> tuple[list[bool], float, int]:
        scalers = PlayerGradScalers("cpu", {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                            "growth_interval": 100, "_growth_tracker": 0})
        heads, encoder = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
        opts = [torch.optim.Adam([heads], lr=0.1, fused=True), torch.optim.Adam([encoder], lr=0.1, fused=True)]
        reads, item = [], torch.Tensor.item
        with monkeypatch.context() as patch:
            patch.setattr(torch.Tensor, "item", lambda tensor: reads.append(tensor.shape) or item(tensor))
            with scalers.scaling("heads+encoders", opts):
                scalers.scale((heads_factor * heads + encoder_factor * encoder).sum()).backward()
                for opt in opts:  # Lightning's MixedPrecision.optimizer_step, once per optimizer
                    scalers.unscale_(opt)
                    scalers.step(opt)
                    scalers.update()
        return [p.item() != 1.0 for p in (heads, encoder)], scalers.scalers["heads+encoders"].get_scale(), len(reads)

    assert stepped(float("inf")) == ([False, False], 512.0, 0)
    assert stepped(float("inf"), heads_factor=float("inf")) == ([False, False], 512.0, 0)
    assert stepped(5.0) == ([True, True], 1024.0, 0)


def test_an_overflow_backs_off_only_its_own_loss_scale():
    scalers = PlayerGradScalers("cpu", {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                        "growth_interval": 100, "_growth_tracker": 0})
    for name, value in (("generators", 1.0), ("discriminators", float("inf"))):
        param = torch.nn.Parameter(torch.ones(1))
        opt = torch.optim.SGD([param], lr=0.1)
        with scalers.scaling(name):
            scalers.scale((value * param).sum()).backward()
            scalers.unscale_(opt)
            scalers.step(opt)
            scalers.update()
    assert scalers.scalers["generators"].get_scale() == 1024.0
    assert scalers.scalers["discriminators"].get_scale() == 512.0


# ----- wandb -------------------------------------------------------------------------------------

def written_record(path: Path, expected: bytes, timeout_s: float = 30) -> bytes:
    """An offline run file's bytes once they hold `expected`: wandb's service process writes the
    file on its own schedule, and once (of many runs) it held only its 7-byte header right after
    `wandb.finish()` had returned."""
    deadline = time.monotonic() + timeout_s
    while expected not in (record := path.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return record


def test_wandb_offline_run_is_written_and_a_resume_continues_it(train_cfg, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "offline")
    common = ["model=cyclegan", "logger=wandb", "data.max_dataset_size=2", *NO_EVALUATION]
    first = train_cfg(*common, "max_iters=2")
    first.paths.output_dir = str(tmp_path / "first")
    run_training(first)
    runs = list((tmp_path / "first" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    run_id = runs[0].stem.removeprefix("run-")
    record = written_record(runs[0], b"cyclegan-shapes")
    assert b"cyclegan-shapes" in record and b"smoke" in record and b"debug:smoke" in record  # name, group, tag
    checkpoint = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)[CHECKPOINT_KEY] == run_id

    resumed = train_cfg(*common, "max_iters=4", f"ckpt_path={checkpoint}")
    resumed.paths.output_dir = str(tmp_path / "resumed")
    with caplog.at_level(logging.WARNING, logger="src.utils.wandb_run"):
        run_training(resumed)
    assert [p.stem for p in (tmp_path / "resumed" / "wandb").glob("offline-run-*/run-*.wandb")] == [f"run-{run_id}"]
    # Offline, wandb cannot continue the run: a second offline run of its id, to be appended on upload.
    assert f"this resume writes a new offline run with the id {run_id}" in caplog.text
    assert "wandb sync --append" in caplog.text


def test_a_resume_that_branches_off_its_run_logs_into_a_new_wandb_run(train_cfg, tmp_path, monkeypatch, caplog):
    """Rolling back to an earlier checkpoint of the run folder: wandb cannot cut the run's history
    back, so continuing its id put the branch's rows after the abandoned ones (the charts going
    back to the branch's iteration); the branch gets a wandb run of its own, named for it."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    common = ["model=cyclegan", "logger=wandb", "data.max_dataset_size=2", *NO_EVALUATION,
              "callbacks.model_checkpoint.every_n_iters=2", "callbacks.model_checkpoint.save_top_k=-1"]
    first = train_cfg(*common, "max_iters=4")
    first.paths.output_dir = str(tmp_path / "run")
    run_training(first)
    checkpoints = tmp_path / "run" / "checkpoints"
    (first_id,) = {path.stem.removeprefix("run-") for path in (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")}
    branch_point = next(checkpoints.glob("iter_*2.ckpt"))
    assert torch.load(branch_point, weights_only=True)[CHECKPOINT_KEY] == first_id

    branch = train_cfg(*common, "max_iters=4", f"ckpt_path={branch_point}")
    branch.paths.output_dir = str(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="src.utils.wandb_run"):
        run_training(branch)
    ids = {path.stem.removeprefix("run-") for path in (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")}
    (branch_id,) = ids - {first_id}
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)[CHECKPOINT_KEY] == branch_id
    name = torch.load(checkpoints / "last.ckpt", weights_only=True)["wandb_run_identity"]["name"]
    assert name.endswith("-from-2") and name.startswith("cyclegan-shapes")
    assert f"branches off its run at iteration 2, and the wandb run {first_id} logged past it" in caplog.text
    assert f"logger.wandb.id={first_id} continues that run instead" in caplog.text

    # resuming the branch's own last checkpoint continues the branch's wandb run
    caplog.clear()
    more = train_cfg(*common, "max_iters=6", f"ckpt_path={checkpoints / 'last.ckpt'}")
    more.paths.output_dir = str(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="src.utils.wandb_run"):
        run_training(more)
    assert "branches off" not in caplog.text
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)[CHECKPOINT_KEY] == branch_id


def test_wandb_disabled_runs_and_writes_nothing(train_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = train_cfg("logger=wandb", "max_iters=1", "data.max_dataset_size=2", *NO_EVALUATION)
    run_training(cfg)
    assert not list(Path(cfg.paths.output_dir).glob("wandb/offline-run-*"))
    # no made-up id of a run that never existed, which a later resume with wandb on would "continue"
    assert CHECKPOINT_KEY not in torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("configured, expected_mode", [({}, "offline"), ({"WANDB_API_KEY": "k"}, None),
                                                      ({"WANDB_MODE": "online"}, "online")])
def test_wandb_goes_offline_unless_the_user_configured_it(monkeypatch, caplog, configured, expected_mode):
    """No login and no mode: offline, so a run never waits on a login prompt or the network; an
    API key or a mode the user set is left as it is. A run logging to wandb says how to go online
    (wandb's own banner suggests `wandb online`, which changes nothing here)."""
    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in configured.items():
        monkeypatch.setenv(key, value)
    loggers = OmegaConf.create({"csv": {"_target_": "pytorch_lightning.loggers.CSVLogger"},
                                "wandb": {"_target_": "pytorch_lightning.loggers.WandbLogger"}})
    with caplog.at_level(logging.INFO, logger="src.utils.run"):
        run_module.default_wandb_offline(loggers)
    assert os.environ.get("WANDB_MODE") == expected_mode
    assert ("WANDB_MODE=online (after `wandb login`) logs to its server" in caplog.text) == (expected_mode == "offline")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="src.utils.run"):
        run_module.default_wandb_offline(OmegaConf.create({"csv": loggers.csv}))   # no wandb: nothing said
    assert "WANDB_MODE=online" not in caplog.text


def test_a_run_leaves_the_process_and_the_callers_config_as_it_found_them(train_cfg, monkeypatch, caplog):
    """A notebook trains, then goes on: torch's cuDNN and deterministic-algorithms flags (which
    Lightning's Trainer sets process-wide) and the environment (wandb's offline default: a later
    run with an API key goes online) are as before, and the config still says ckpt_path=auto, so
    the same cell run again resumes the run instead of starting over in its folder."""
    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        cfg = train_cfg("max_iters=1", *NO_EVALUATION, "ckpt_path=auto", "trainer.benchmark=true",
                        "trainer.deterministic=false")
        run_training(cfg)
        assert cfg.ckpt_path == "auto" and "WANDB_MODE" not in os.environ
        assert torch.backends.cudnn.benchmark is False
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        with caplog.at_level("INFO"):
            run_training(cfg)
        assert "ckpt_path=auto: resuming from" in caplog.text
        # and so does a run that stops with an error (pix2pix on unpaired data, refused once the
        # Trainer, which sets the flags, is built)
        with pytest.raises(ValueError, match="paired data"):
            run_training(train_cfg("model=pix2pix", "data=shapes", "max_iters=1", "seed=3",
                                   "trainer.benchmark=true", *NO_EVALUATION))
        assert torch.backends.cudnn.benchmark is False and "PL_GLOBAL_SEED" not in os.environ
        # trainer.deterministic=true: Lightning turns the deterministic kernels on everywhere, with
        # cuBLAS's workspace setting in the environment
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
        torch.use_deterministic_algorithms(False)
        run_training(train_cfg("max_iters=1", *NO_EVALUATION, "trainer.deterministic=true",
                               "callbacks.model_checkpoint.dirpath=${paths.output_dir}/deterministic"))
        assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        assert torch.backends.cudnn.deterministic is False
        # and says what a user can act on: no network's count of 0 parameters, no Lightning ads
        assert "D_A: " in caplog.text and "adversarial: 0" not in caplog.text and "💡 Tip" not in caplog.text
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_an_unseeded_run_after_a_seeded_one_reseeds_ranks_with_its_own_drawn_seed_not_the_earlier_one(train_cfg, monkeypatch):
    """`-m seed=42,null trainer=ddp` in one process: pl.seed_everything leaves PL_GLOBAL_SEED,
    from which Lightning's DDP setup reseeds every rank, so the unseeded job replayed seed 42.
    The seeded run's fit sees it; the unseeded one's sees the seed it drew (and recorded) instead,
    and the process after neither."""
    from omegaconf import OmegaConf
    seen, fit = [], pl.Trainer.fit
    monkeypatch.setattr(pl.Trainer, "fit", lambda self, *args, **kwargs: seen.append(os.environ.get("PL_GLOBAL_SEED"))
                        or fit(self, *args, **kwargs))
    run_module.run_training(train_cfg("model=pix2pix", "data=shapes_paired", "max_iters=1", "seed=42", *NO_EVALUATION))
    unseeded = train_cfg("model=pix2pix", "data=shapes_paired", "max_iters=1", "seed=null",
                         "callbacks.model_checkpoint.dirpath=${paths.output_dir}/again", *NO_EVALUATION)
    run_module.run_training(unseeded)
    (second_start,) = [start for start in Path(unseeded.paths.output_dir, "starts").iterdir()
                       if OmegaConf.load(start / "start.yaml").seed_drawn]
    drawn = OmegaConf.load(second_start / "start.yaml").seed
    assert seen == ["42", str(drawn)] and drawn != 42
    assert not {"PL_GLOBAL_SEED", "PL_SEED_WORKERS"} & set(os.environ)


def test_a_run_gives_back_the_ctrl_c_handler_lightning_left_ignored(train_cfg, monkeypatch):
    """A Ctrl-C that stops a fit makes Lightning ignore SIGINT, and it gives the handler back only
    where the fit had installed its own: a notebook interrupted during setup lost its interrupt
    key for good."""
    before, fit = signal.getsignal(signal.SIGINT), pl.Trainer.fit

    def fit_that_leaves_ctrl_c_ignored(self, *args, **kwargs):
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # what Lightning's KeyboardInterrupt handling does
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "fit", fit_that_leaves_ctrl_c_ignored)
    try:
        run_module.run_training(train_cfg("model=pix2pix", "data=shapes_paired", "max_iters=1", *NO_EVALUATION))
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_run_leaves_the_callers_random_streams_as_it_found_them(train_cfg):
    """seed_everything seeds torch's, Python's and NumPy's streams: after a run, a notebook's
    next draws were the run's seed's, whatever the notebook had seeded before it."""
    import random

    import numpy as np

    def draws() -> tuple:
        return torch.rand(3).tolist(), random.random(), float(np.random.rand())

    def seed_all(seed: int) -> None:
        torch.manual_seed(seed), random.seed(seed), np.random.seed(seed)

    seed_all(7)
    expected = draws()
    seed_all(7)
    run_module.run_training(train_cfg("model=pix2pix", "data=shapes_paired", "max_iters=1", *NO_EVALUATION))
    assert draws() == expected
    # A restore that fails (a GPU an error left unusable) leaves the run's own error to be seen
    from src.utils import rng

    def unusable_gpu(states):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rng, "restore_rng_states", unusable_gpu)
        with pytest.raises(KeyboardInterrupt):
            with rng.callers_rng_restored():
                raise KeyboardInterrupt


def test_a_ddp_launch_leaves_a_multiruns_later_jobs_the_processs_threads(train_cfg, monkeypatch):
    """Lightning's DDP launcher gives rank 0 its share of the cores (torch's threads, and
    OMP_NUM_THREADS where unset: `_set_num_threads_if_needed`); nothing gave them back, and a
    multirun's later jobs, a CPU one say, trained on the share."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # (restored after the test whatever the run leaves)
    monkeypatch.delenv("OMP_NUM_THREADS")
    threads, fit = torch.get_num_threads(), pl.Trainer.fit

    def fit_as_a_launch_shares_the_cores(self, *args, **kwargs):
        torch.set_num_threads(threads + 1)   # (any other count than the process's)
        os.environ["OMP_NUM_THREADS"] = str(threads + 1)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "fit", fit_as_a_launch_shares_the_cores)
    run_module.run_training(train_cfg("model=pix2pix", "data=shapes_paired", "max_iters=1", *NO_EVALUATION))
    assert torch.get_num_threads() == threads and "OMP_NUM_THREADS" not in os.environ


# ----- sweep and cluster configs -----------------------------------------------------------------

@pytest.fixture
def compose_with_hydra():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda *overrides: compose("train", overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("trainer", ("ddp", "gpu"))   # every trainer config has num_nodes
@pytest.mark.parametrize("launcher", ("submitit_slurm", "slurm"))
def test_slurm_launcher_configs_compose(compose_with_hydra, launcher, trainer):
    cfg = compose_with_hydra(f"hydra/launcher={launcher}", "hydra.mode=MULTIRUN", f"trainer={trainer}",
                             "trainer.devices=4", "trainer.num_nodes=2", "hydra.launcher.partition=gpu")
    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher_cfg.partition == "gpu"
    if launcher == "slurm":  # ours: one SLURM task per GPU, as many nodes as the trainer has
        assert (launcher_cfg.nodes, launcher_cfg.tasks_per_node, launcher_cfg.gpus_per_node) == (2, 4, 4)


@pytest.mark.parametrize("job", [None, "4242"])
def test_a_run_folder_in_a_slurm_job_carries_its_job_id(compose_with_hydra, monkeypatch, job):
    """The tasks of a job array start in the same second: their run folders, named by the start
    time, would be one, each task writing over the others' checkpoints; so would runs a shell
    loop starts together, whose folders carry the start's microseconds. The sweep folder is
    named to the microsecond."""
    if job:
        monkeypatch.setenv("SLURM_JOB_ID", job)
    else:
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    hydra_cfg = compose_with_hydra().hydra
    name = Path(hydra_cfg.run.dir).name
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d" + (f"_slurm-{job}" if job else r"-\d{6}"), name), name
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{6}", Path(hydra_cfg.sweep.dir).name)
    if not job:   # two runs started together (within a second: the same stamp to the second)
        assert compose_with_hydra().hydra.run.dir != compose_with_hydra().hydra.run.dir
    if not job:   # the processes torchrun starts for one run share its folder, as before
        monkeypatch.setenv("LOCAL_RANK", "0")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", Path(compose_with_hydra().hydra.run.dir).name)
        monkeypatch.delenv("LOCAL_RANK")
    cfg = compose_with_hydra()   # one run: one folder, however often its config is resolved
    first = cfg.hydra.run.dir
    time.sleep(0.002)
    assert cfg.hydra.run.dir == first


@pytest.mark.parametrize("python", ["python3", "no-python-here"])
def test_the_slurm_launcher_gives_each_job_a_free_rendezvous_port(compose_with_hydra, tmp_path, python):
    """Lightning's port, 15000 + the job id's last 4 digits, is one for jobs 10000 ids apart that
    share a node: the sbatch setup exports a free one (or, without python3, Lightning's own)."""
    import socket
    setup = compose_with_hydra("hydra/launcher=slurm", "hydra.mode=MULTIRUN").hydra.launcher.setup
    (line,) = [line for line in setup if "MASTER_PORT" in line]
    env = {"SLURM_JOB_ID": "123456", "PATH": os.environ["PATH"]}
    if python != "python3":   # a PATH where python3 cannot be found
        env["PATH"] = str(tmp_path)
    port = subprocess.run(["/bin/bash", "-c", f"{line}; echo $MASTER_PORT"], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()
    if python == "python3":
        assert 1024 <= int(port) < 65536 and int(port) != 15000 + 3456
        with socket.socket() as probe:
            probe.bind(("", int(port)))   # free
    else:
        assert int(port) == 15000 + 3456


@pytest.mark.parametrize("model_name", MODELS)
def test_hparams_search_configs_search_keys_the_model_has(compose_with_hydra, model_name):
    cfg = compose_with_hydra(f"hparams_search={model_name}_optuna")
    assert cfg.model_name == model_name and cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.optimized_metric == "truth/iou" and cfg.hydra.sweeper.direction == "maximize"
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key


@pytest.mark.parametrize("model_name", ["cyclegan", "pix2pix"])
def test_a_shortened_search_trial_decays_its_learning_rate_over_its_second_half(train_cfg, model_name):
    """CycleGAN's and pix2pix's 100 + 100 epochs: a trial shortened with max_iters (as the search
    configs say to) trained at the starting rate throughout, its decay 100 epochs away."""
    cfg = train_cfg(f"hparams_search={model_name}_optuna", "max_iters=4", "optimized_metric=null", *NO_EVALUATION)
    run_training(cfg)
    checkpoint = torch.load(Path(cfg.paths.output_dir, "checkpoints", "last.ckpt"), weights_only=True)
    rates = [group["lr"] for state in checkpoint["optimizer_states"] for group in state["param_groups"]]
    assert rates and all(rate == 0.0 for rate in rates)   # iterations 3 and 4 decayed it to 0


@pytest.mark.parametrize("data", ["shapes", "shapes_paired"])
@pytest.mark.parametrize("model_name", MODELS)
def test_each_search_builds_networks_that_run_on_its_default_data(compose_with_hydra, model_name, data):
    """`hparams_search=<model>_optuna` alone trains on the embedded shapes: U-GAT-IT's and
    NICE-GAN's paper-size discriminators cannot run at the data's default 32 px and stopped
    trial 0 at its first batch; their searches compose an image size they accept, on the paired
    shapes too."""
    from src.models.size_check import check_image_size
    if model_name == "pix2pix" and data == "shapes":
        pytest.skip("pix2pix learns from pairs: its search's default data is shapes_paired")
    cfg = compose_with_hydra(f"hparams_search={model_name}_optuna", f"data={data}")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    check_image_size(model, torch.zeros(1, cfg.data.input_nc, cfg.data.size, cfg.data.size))


@pytest.mark.parametrize("data", ["shapes", "shapes_paired"])
@pytest.mark.parametrize("model_name", ["ugatit", "nicegan"])
@pytest.mark.parametrize("experiment, size", [(None, 128), ("quickstart", None)])
def test_a_run_builds_networks_that_run_on_the_embedded_data(compose_with_hydra, model_name, data, experiment, size):
    """`python src/train.py model=ugatit` (the paper-size networks: 96 px and up) and `make train
    ARGS="model=nicegan data=shapes_paired"` (NICE-GAN's quickstart networks: 64 px) were
    refused at their first batch on the embedded data's 32 px. The quickstart keeps its sizes."""
    from src.models.size_check import check_image_size
    cfg = compose_with_hydra(*([f"experiment={experiment}"] if experiment else []), f"model={model_name}",
                             f"data={data}")
    if size is not None:
        assert cfg.data.size == size
    else:   # U-GAT-IT's quickstart networks run at the data's own 32 px, NICE-GAN's at 64
        assert cfg.data.size == {"ugatit": 32, "nicegan": 64}[model_name]
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    check_image_size(model, torch.zeros(1, cfg.data.input_nc, cfg.data.size, cfg.data.size))


@pytest.mark.parametrize("model_name", ["dcgan", "wgangp", "stylegan"])
def test_the_noise_models_search_config_searches_keys_each_has(compose_with_hydra, model_name):
    cfg = compose_with_hydra("hparams_search=noise_optuna", f"model={model_name}")
    assert cfg.model_name == model_name and cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.optimized_metric == "eval/fid_samples" and cfg.hydra.sweeper.direction == "minimize"
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key


def test_a_noise_model_search_minimises_the_sample_fid(tmp_path, shared_data_dir):
    """Two trials of `hparams_search=noise_optuna`: each trial trains with the values it drew
    (the critic steps with as many real batches: setup refuses a mismatch) and returns its
    samples' FID to the sweeper."""
    run_train("hparams_search=noise_optuna", "hydra.sweeper.n_trials=2", "data.max_dataset_size=16",
              cwd=tmp_path, data_dir=shared_data_dir)
    sweep = the_sweep_dir(tmp_path)
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert set(results.best_params) == {"model.optimizer.lr", "model.n_critic"}
    assert math.isfinite(results.best_value)
    learning_rates = []
    for job in job_dirs(sweep):
        drawn = OmegaConf.load(job / ".hydra" / "config.yaml").model
        hparams = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
        assert (hparams["n_critic"], hparams["optimizer"]["lr"]) == (drawn.n_critic, drawn.optimizer.lr)
        learning_rates.append(drawn.optimizer.lr)
    assert len(learning_rates) == 2 and learning_rates[0] != learning_rates[1]


def test_eval_and_translate_load_the_ema_weights(ddp_sweep, tmp_path):
    from src.translate import run_translation
    from src.utils.checkpoint_loading import load_model
    from test_truth_and_translate import translate_cfg, write_noise_image
    ckpt_path = job_dirs(ddp_sweep)[0] / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt_path, weights_only=True)
    averaged, trained = load_model(ckpt_path).state_dict(), load_model(ckpt_path, use_ema=False).state_dict()
    for name, value in checkpoint["ema"]["state_dict"].items():
        assert torch.equal(averaged[name], value), name
    for name, value in checkpoint["state_dict"].items():
        assert torch.equal(trained[name], value), name
    # translate.py (and eval.py) take the average unless use_ema=false, and say which they used
    write_noise_image(tmp_path / "in" / "x.png")
    outputs = {}
    for use_ema in (True, False):
        out = tmp_path / str(use_ema)
        report = run_translation(translate_cfg(ckpt_path=str(ckpt_path), input=str(tmp_path / "in"), output=str(out),
                                               use_ema=use_ema))
        outputs[report["weights"]] = np.asarray(Image.open(out / "x.png"))
    assert set(outputs) == {"ema", "trained"} and not np.array_equal(outputs["ema"], outputs["trained"])


def test_a_player_updated_inside_autocast_is_seen_updated_by_the_next_forward(train_cfg):
    """Autocast caches low-precision weight copies for a whole training step; a forward after
    `update` in the same step must use the new weights, not the cached pre-step copy."""
    model = hydra.utils.instantiate(train_cfg("model=cyclegan").model, _recursive_=False)
    model.manual_backward = lambda loss: loss.backward()  # no trainer here
    discriminator = model.D_A
    optimizer = torch.optim.SGD(discriminator.parameters(), lr=0.5)
    x = torch.randn(1, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = discriminator(x)
        model.update(optimizer, before.float().square().mean())
        after = discriminator(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fresh = discriminator(x)
    assert not torch.equal(before, after)
    assert torch.equal(after, fresh)


def test_a_ddp_multirun_job_whose_launched_rank_fails_fails_alone(tmp_path, shared_data_dir):
    """Lightning's child-process observer SIGKILLed every process once a rank failed, rank 0 too:
    in a multirun rank 0 is the sweep, so one failed job (say out of memory) ended the sweep,
    its later jobs never run and no record written."""
    cmd, env = train_command("-m", "trainer=ddp_sim", "+callbacks.fail._target_=tests.scripts.ddp_probe.FailOnRank",
                             "+callbacks.fail.rank=1,-1", *NO_EVALUATION, cwd=tmp_path, data_dir=shared_data_dir)
    status, output = run_in_its_own_group(cmd, env, tmp_path)
    assert status == 1, output[-4000:]   # Hydra names the failed job at the end
    sweep_dir = the_sweep_dir(tmp_path)
    table = (sweep_dir / "summary.md").read_text()
    assert "| 0 | +callbacks.fail.rank=1 | failed: " in table, table
    assert "| 1 | +callbacks.fail.rank=-1 | completed | 2 |" in table, table
    assert (sweep_dir / "1" / "checkpoints" / "last.ckpt").is_file()


def test_a_single_ddp_run_whose_launched_rank_fails_leaves_its_crash_checkpoint_and_record(tmp_path,
                                                                                          shared_data_dir):
    """Outside a multirun too, Lightning's observer SIGKILLed rank 0 at once when a launched rank
    failed (an out-of-memory error on GPU 1, a bad image in its share): no crash checkpoint, no
    failed record (an earlier start's "completed" stayed), no finished wandb run."""
    cmd, env = train_command("trainer=ddp_sim", "+callbacks.fail._target_=tests.scripts.ddp_probe.FailOnRank",
                             "+callbacks.fail.rank=1", "+callbacks.fail.others_busy_s=8", "max_iters=4",
                             *NO_EVALUATION, cwd=tmp_path, data_dir=shared_data_dir)
    status, output = run_in_its_own_group(cmd, env, tmp_path)
    assert status == 1, output[-4000:]   # failed, not killed (-9)
    (run_dir,) = (tmp_path / "logs" / "smoke" / "runs").iterdir()
    assert json.loads((run_dir / "final_metrics.json").read_text())["status"] == "failed", output[-4000:]
    assert (run_dir / "checkpoints" / "crashed.ckpt").is_file(), output[-4000:]


def test_the_rank_watch_stops_a_failed_jobs_other_ranks_and_then_waits_for_rank_zero(monkeypatch):
    """What stands in for Lightning's observer: a launched rank's failure stops the job's other
    launched ranks; rank 0 is stopped only if it has not ended the job by the timeout."""
    import src.utils.ddp_multirun as ddp_multirun

    def ranks() -> list[subprocess.Popen]:
        return [subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]),
                subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])]

    stops = []

    @contextlib.contextmanager
    def watched(grace_s: float):
        failed, other = ranks()
        # (a stand-in for stopping the sweep: a watch left running by a failure stops nothing)
        watch = ddp_multirun.LaunchedRankWatch([failed, other], poll_s=0.05, grace_s=grace_s,
                                               stop=lambda: stops.append("sweep"))
        watch.start()
        try:
            yield watch, other
        finally:
            watch.job_ended.set()
            other.kill()
            other.wait()

    with watched(grace_s=600) as (watch, other):
        assert other.wait(timeout=30) == -signal.SIGKILL   # stopped: a rank beside a dead one only waits
        watch.job_ended.set()                              # rank 0 ends the job in time
        watch.join(timeout=30)
        assert not watch.is_alive() and stops == []
    # a rank 0 that does not end the job (stuck in a collective) is stopped as Lightning would
    with watched(grace_s=0.2) as (watch, other):
        watch.join(timeout=30)
        assert stops == ["sweep"]
    # a launched rank stopped by SIGTERM (143: every rank stops after the same iteration) is no
    # failure: rank 0, writing interrupted.ckpt, was given two minutes and then killed
    # (nor is a Ctrl-C's 130, which a terminal sends every rank: each writes or waits for the checkpoint)
    for status in (ddp_multirun.SIGTERM_EXIT_STATUS, ddp_multirun.INTERRUPT_EXIT_STATUS):
        stopped = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({status})"])
        watch = ddp_multirun.LaunchedRankWatch([stopped], poll_s=0.05, grace_s=0.2, stop=lambda: stops.append("stop"))
        watch.start()
        stopped.wait()
        time.sleep(1)
        watch.job_ended.set()
        watch.join(timeout=30)
        assert stops == ["sweep"], status


def test_a_job_whose_rank_zero_failed_stops_its_launched_ranks_soon(monkeypatch):
    """A launched rank waits in a collective for a rank 0 that left it (only the process group's
    timeout, 30 minutes, would end it), and has nothing left to save: the job does not wait the
    full timeout for it."""
    from types import SimpleNamespace

    import src.utils.ddp_multirun as ddp_multirun
    waited = []
    monkeypatch.setattr(ddp_multirun, "launches_ranks_for_multirun_job", lambda trainer: True)
    monkeypatch.setattr(ddp_multirun, "_job_spec", dict)
    monkeypatch.setattr(ddp_multirun, "_wait_for_launched_ranks",
                        lambda launcher, timeout_s: waited.append(timeout_s) or {1: None})
    trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=None))
    with pytest.raises(MemoryError):
        with ddp_multirun.job_shared_with_launched_ranks(trainer):
            raise MemoryError("rank 0 out of memory")
    with pytest.raises(RuntimeError, match="exited with codes"):
        with ddp_multirun.job_shared_with_launched_ranks(trainer):
            pass
    assert waited == [ddp_multirun.FAILED_JOB_RANK_EXIT_S, ddp_multirun.RANK_EXIT_TIMEOUT_S]


def test_a_launched_rank_stuck_past_the_timeout_is_stopped_and_fails_the_job(monkeypatch):
    """A multirun job's rank still running after the timeout kept its process (and its GPU
    memory) beside the next job, and the job counted as done."""
    import subprocess
    import sys
    from types import SimpleNamespace

    import src.utils.ddp_multirun as ddp_multirun
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        done.wait()
        codes = ddp_multirun._wait_for_launched_ranks(SimpleNamespace(procs=[done, stuck]), 0.5)
        assert codes == {1: 0, 2: None}
        assert stuck.poll() is not None   # stopped, not left running
    finally:
        stuck.kill()
        stuck.wait()
    # and the job fails, naming the rank
    monkeypatch.setattr(ddp_multirun, "launches_ranks_for_multirun_job", lambda trainer: True)
    monkeypatch.setattr(ddp_multirun, "_job_spec", dict)
    monkeypatch.setattr(ddp_multirun, "_wait_for_launched_ranks", lambda launcher, timeout_s: {1: 0, 2: None})
    with pytest.raises(RuntimeError, match=r"exited with codes \{2: 'stuck, stopped'\}"):
        with ddp_multirun.job_shared_with_launched_ranks(SimpleNamespace(strategy=SimpleNamespace(launcher=None))):
            pass
