"""Shared test setup: offline, quiet, tiny; Hydra configs composed with temporary directories."""
import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# A shell inside a cluster job or a launcher (srun, torchrun) sets where a process runs; runs here
# and the scripts the tests start would take them as their own (a rank, a requeue, a seed). Each
# test that needs one sets it.
for _key in [key for key in os.environ if key.startswith(("SLURM_", "TORCHELASTIC_", "PL_", "MASTER_"))
             or key in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")]:
    del os.environ[_key]

import contextlib  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402

import hydra  # noqa: E402
import pytest  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from src.utils.auto_resume import most_advanced_in  # noqa: E402
from src.utils.run import run_training  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
MODELS = ("cyclegan", "pix2pix", "ugatit", "nicegan")
# The embedded dataset each model trains on in tests (pix2pix needs pairs).
DATA_OF = {"cyclegan": "shapes", "pix2pix": "shapes_paired", "ugatit": "shapes", "nicegan": "shapes"}
# The evaluation callbacks have their own tests; runs that do not need them go faster without.
NO_EVALUATION = ("++callbacks.fid_kid=null", "++callbacks.latent=null", "++callbacks.shapes_truth=null")


#: what runs leave in the environment: Lightning's global seed (a later `seed=null` run would be
#: seeded silently), the DDP rendezvous of an in-process spawn (every later DDP run would reuse its
#: port), wandb's service of an in-process run
RUN_ENVIRONMENT = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK",
                   "WORLD_SIZE", "WANDB_SERVICE", "GAN_TRAIN_RESOLVED_CHECKPOINT")


@pytest.fixture(autouse=True)
def no_run_state_left_behind():
    """Each test leaves what a process keeps between runs as a fresh process has it: no Hydra run
    config (code that asks `HydraConfig.initialized()` would read an earlier test's), none of
    RUN_ENVIRONMENT set by it, and torch's thread count as it found it (the benchmark sets its
    own, and later tests would otherwise run on it, or not, by test order), and Python warnings
    shown as warnings (train.py's main, called in-process, routes them into logging)."""
    before = {key: os.environ.get(key) for key in RUN_ENVIRONMENT}
    threads = torch.get_num_threads()
    yield
    HydraConfig.instance().cfg = None
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    torch.set_num_threads(threads)
    logging.captureWarnings(False)


@contextlib.contextmanager
def one_torch_thread():
    """Two ranks on two shared cores run one thread each (two each slow each other many times);
    a single-process run compared with them exactly runs on one too, as a product's rounding
    may depend on how many threads split it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory) -> Path:
    """One data root per test session, so the embedded dataset is generated once."""
    return tmp_path_factory.mktemp("data")


def compose_train_cfg(overrides: list[str], output_dir: Path, data_dir: Path,
                      config_name: str = "train") -> DictConfig:
    """Compose conf/<config_name>.yaml as `python src/<config_name>.py <overrides>` would,
    outside a Hydra run."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        cfg.paths.data_dir = str(data_dir)
        del cfg.hydra
    return cfg


def run_eval(overrides: list[str], output_dir: Path, data_dir: Path) -> tuple[dict, Path]:
    """`python src/eval.py <overrides>` composed and run here: (its scores, its output folder)."""
    from src.utils.evaluation import run_evaluation
    cfg = compose_train_cfg(overrides, output_dir, data_dir, config_name="eval")
    try:
        return run_evaluation(cfg), Path(cfg.output_dir)
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture
def train_cfg(tmp_path, shared_data_dir):
    """`train_cfg(*overrides)` -> a composed smoke config writing into this test's tmp dir."""
    def make(*overrides: str) -> DictConfig:
        return compose_train_cfg(["debug=smoke", *overrides], tmp_path / "run", shared_data_dir)
    yield make
    GlobalHydra.instance().clear()


# ----- runs on two DDP ranks -------------------------------------------------------------------
def run_training_on_two_ranks(cfg: DictConfig) -> dict[str, float]:
    """`run_training` of a two-rank config (`trainer=ddp_sim`, spawned), one torch thread each."""
    with one_torch_thread():
        return run_training(cfg)


def single_and_two_rank_metrics(train_cfg, tmp_path: Path, *overrides: str) -> tuple[dict, dict]:
    """The metrics of one run in a single process and of the same run on two spawned CPU ranks
    (its own run folder), for evaluations that must not depend on how the test set is sharded."""
    with one_torch_thread():
        single = run_training(train_cfg(*overrides))
    cfg = train_cfg(*overrides, "trainer=ddp_sim", "trainer.strategy=ddp_spawn_find_unused_parameters_true")
    cfg.paths.output_dir = str(tmp_path / "ddp")
    return single, run_training_on_two_ranks(cfg)


# ----- shared checks of trained models ---------------------------------------------------------
def last_checkpoint(cfg: DictConfig) -> dict:
    """Train as `src/train.py` would, and load the run's last.ckpt."""
    run_training(cfg)
    return torch.load(f"{cfg.paths.output_dir}/checkpoints/last.ckpt", map_location="cpu", weights_only=True)


def assert_resume_continues_the_run(train_cfg, tmp_path: Path, overrides: list[str],
                                    iterations_per_epoch: int | None = None) -> None:
    """4 iterations straight == 2 iterations, then a resume from last.ckpt for 2 more: the same
    step count, weights and optimizer moments bit for bit, and the same scheduler state.

    With `iterations_per_epoch` (2 or 1) the runs are measured in epochs, as the recipes of
    CycleGAN and pix2pix are (max_iters=null, trainer.max_epochs): the first run's last.ckpt is
    then the one its last epoch's end wrote, from which Lightning restores no loader state."""
    def length(iterations: int) -> list[str]:
        if iterations_per_epoch is None:
            return [f"max_iters={iterations}"]
        # Periodic checkpoints off: one at an epoch's last batch would be last.ckpt, and the
        # epoch end's (the same step) not written.
        return ["max_iters=null", f"trainer.max_epochs={iterations // iterations_per_epoch}",
                "callbacks.model_checkpoint.every_n_iters=1000"]

    straight = last_checkpoint(train_cfg(*overrides, *length(4)))
    first = train_cfg(*overrides, *length(2))
    first.paths.output_dir = str(tmp_path / "first")
    last_checkpoint(first)
    resumed_cfg = train_cfg(*overrides, *length(4), f"ckpt_path={tmp_path}/first/checkpoints/last.ckpt")
    resumed_cfg.paths.output_dir = str(tmp_path / "resumed")
    resumed = last_checkpoint(resumed_cfg)

    steps_per_iter = hydra.utils.instantiate(resumed_cfg.model, _recursive_=False).optimizer_steps_per_iter
    assert straight["global_step"] == resumed["global_step"] == 4 * steps_per_iter
    # Every differing tensor with its largest difference: a resume bug moves weights by about a
    # learning rate, arithmetic in another order by far less; the message tells the two apart.
    differing = {key: float((value.double() - resumed["state_dict"][key].double()).abs().max())
                 for key, value in straight["state_dict"].items() if not torch.equal(value, resumed["state_dict"][key])}
    assert not differing, differing
    assert len(straight["optimizer_states"]) == len(resumed["optimizer_states"])
    for a, b in zip(straight["optimizer_states"], resumed["optimizer_states"]):
        assert a["state"].keys() == b["state"].keys()
        for sa, sb in zip(a["state"].values(), b["state"].values()):   # moments and step counts, bit for bit
            assert sa.keys() == sb.keys()
            assert all(torch.equal(sa[k], sb[k]) if torch.is_tensor(sa[k]) else sa[k] == sb[k] for k in sa), sa.keys()
    assert straight["lr_schedulers"] == resumed["lr_schedulers"]


def snapshot(modules) -> dict[str, torch.Tensor]:
    return {f"{i}.{n}": p.detach().clone() for i, m in enumerate(modules) for n, p in m.named_parameters()}


def changed(before: dict, modules) -> set[str]:
    after = snapshot(modules)
    return {k for k in before if not torch.equal(before[k], after[k])}


def record_generator_outputs(model, describe) -> list:
    """`describe(output)` of each output of the AtoB generator during training (a forward hook
    sees them; its first output where it returns several). The size check's shape-only pass on
    the meta device before the first step is left out."""
    seen = []

    def record(module, inputs, output):
        output = output[0] if isinstance(output, tuple) else output
        if module.training and output.device.type != "meta":
            seen.append(describe(output))

    model.generator_for("AtoB").register_forward_hook(record)
    return seen


def generator_output_dtypes(model) -> list[torch.dtype]:
    """Dtypes of the AtoB generator's outputs during training."""
    return record_generator_outputs(model, lambda output: output.dtype)


def finite_train_losses(trainer) -> dict[str, float]:
    """The logged `train/` losses, asserted present and finite."""
    losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    return losses



def most_advanced_checkpoint(checkpoint_dir: Path, run_dir: Path) -> Path | None:
    """What `ckpt_path=auto` resumes from in one (checkpoint folder, run folder) pair."""
    found = most_advanced_in([(checkpoint_dir, run_dir)])
    return None if found is None else found[1]

# ----- one training iteration outside train.py ----------------------------------------------------
def random_batch(cfg) -> dict:
    """A seeded batch of one random image pair in [-1, 1] at the config's size and channels."""
    gen = torch.Generator().manual_seed(7)
    size = cfg.data.size
    return {"A": torch.rand(1, cfg.data.input_nc, size, size, generator=gen) * 2 - 1,
            "B": torch.rand(1, cfg.data.output_nc, size, size, generator=gen) * 2 - 1}


def fit_one_batch(model, batch: dict) -> pl.Trainer:
    """One training iteration of `model` on `batch` through a bare CPU Trainer."""
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0)
    trainer.fit(model, train_dataloaders=DataLoader([batch], batch_size=None))
    return trainer


def slurm_task_env(rank: int, tasks: int) -> dict[str, str]:
    """The variables SLURM's srun gives task `rank` of a one-node job of `tasks` tasks (job 4242),
    from which Lightning takes its cluster environment and ranks."""
    return {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": str(tasks),
            "SLURM_NTASKS_PER_NODE": str(tasks), "SLURM_NNODES": "1", "SLURM_NODEID": "0",
            "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODELIST": "127.0.0.1",
            "SLURM_JOB_NODELIST": "127.0.0.1"}


@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch) -> Path:
    """An `scontrol` first on PATH that records each call in the returned file: its arguments,
    then `|` and the names in $SCONTROL_WATCH (the run's checkpoint folder), so a test sees
    what was on disk when the job asked to be requeued."""
    bin_dir, record = tmp_path / "fake_bin", tmp_path / "scontrol_calls.txt"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$* |" $(ls "$SCONTROL_WATCH" 2>/dev/null) >> "{record}"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.fixture
def signal_handlers_kept():
    """The process's handlers of the signals a cluster job sees, put back after the test."""
    signums = (signal.SIGTERM, signal.SIGCONT, signal.SIGUSR1, signal.SIGUSR2)
    kept = {signum: signal.getsignal(signum) for signum in signums}
    yield
    for signum, handler in kept.items():
        signal.signal(signum, handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def file_rendezvous(out_dir: str | Path) -> str:
    """A gloo process group's meeting place in a fresh folder: a file, where a port from
    free_port() could be taken by another process between its release and the ranks' bind."""
    return f"file://{Path(out_dir).resolve() / 'rendezvous'}"


def _gloo_rank(rank: int, world_size: int, score, args: tuple, out_dir: str) -> None:
    torch.set_num_threads(1)   # two ranks on two cores
    torch.distributed.init_process_group("gloo", init_method=file_rendezvous(out_dir), rank=rank, world_size=world_size)
    try:
        torch.save(score(*args, rank, world_size), Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def results_of_gloo_ranks(score, args: tuple, world_size: int, out_dir: Path) -> list:
    """`score(*args, rank, world_size)` of each rank of a gloo process group (spawned: the
    subprocess launcher would re-run pytest), in rank order; `score` must be a module-level function."""
    torch.multiprocessing.spawn(_gloo_rank, args=(world_size, score, args, str(out_dir)),
                                nprocs=world_size)
    return [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]
