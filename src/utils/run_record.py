"""What each start of a training run was: kept in the run folder, one folder per start.

Hydra rewrites `.hydra/config.yaml` and `overrides.yaml` at every start, and the loggers'
`hparams.yaml` is rewritten too, so after a resume (a requeued job, `ckpt_path=auto`) they
describe only the latest start: a resume may change `max_iters`, trainer settings or callbacks,
and the code may change while a job waits in the queue. Each start therefore leaves
`starts/<n>_<time>/` in the run folder, never rewritten:

- `.hydra`'s files as Hydra wrote them for this start (`config.yaml`, `overrides.yaml`,
  `hydra.yaml`, written from the run's own configs, not copied: another command into the folder
  has its Hydra write them there too, before it is refused), and `resolved.yaml`: the config as the run used it (interpolations resolved,
  `ckpt_path=auto` and `seed=null` replaced by the checkpoint and the seed they became);
- `start.yaml`: when, where and how it ran (host, command line, SLURM job), the seed and whether
  it was drawn, the checkpoint it resumed from, the code revision, the versions of the libraries
  that shape the results, and the torch build and GPUs;
- `code.patch` where the code had uncommitted changes: `git diff HEAD`, and the code files git
  does not track yet (under src/ and conf/: a new model, its config) as new files, so `git apply
  code.patch` on the recorded revision gives the code the run ran (binary files and those over
  1 MB are only named).

The run folder's lock (src/utils/folder_lock.py) is taken before, so two starts never number
themselves alike. When the record is written, `.hydra/` gets the run's own files back too.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import platform
import secrets
import socket
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from src.utils.code_version import uncommitted_changes
from src.utils.config_checks import MAX_SEED
from src.utils.folder_lock import FolderInUse, FolderLock
from src.utils.hydra_runtime import hydra_config, hydra_run_dir, is_rank_zero, launched_rank
from src.utils.training_config import ROOT_DIR
from src.utils.whole_files import write_text_whole

log = logging.getLogger(__name__)

STARTS_DIR = "starts"
HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")
#: the libraries whose versions change a run's numbers or behaviour
RECORDED_PACKAGES = ("torch", "pytorch-lightning", "torchmetrics", "hydra-core", "omegaconf", "numpy", "pillow",
                     "albumentations", "torch-fidelity", "scikit-learn", "wandb", "onnx", "onnxruntime")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def torch_build() -> dict:
    """The torch build and the GPUs it sees, without initialising CUDA (a fork strategy refuses
    to start after that): the GPUs' names are in train.log, from Lightning."""
    import torch
    from lightning_fabric.accelerators.cuda import num_cuda_devices
    return {"version": str(torch.__version__), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cuda_devices": num_cuda_devices(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "threads": torch.get_num_threads()}


def run_seed(cfg: DictConfig, resumed_seed: int | None = None) -> bool:
    """Make `cfg.seed` the seed the run uses; returns whether it was drawn. `seed: null` draws one
    from the system's entropy, so an unseeded run can still be repeated (the log and the start's
    record name it); a resume takes its checkpoint's run's (`resumed_seed`), whose random
    streams and data order it continues: a new draw was logged and recorded as the seed that
    repeats the run, and it repeated nothing (passed back, ckpt_path=auto refused it as
    another run's). A rank Lightning launched takes rank zero's, which its launcher passes on in
    PL_GLOBAL_SEED (the data order is rank zero's anyway; the weights are broadcast)."""
    if cfg.get("seed") is not None:
        return False
    if resumed_seed is not None:
        with open_dict(cfg):
            cfg.seed = int(resumed_seed)
        if is_rank_zero():
            log.info("seed=null: this run resumes the run of seed=%d, its checkpoint's", cfg.seed)
        return False
    inherited = os.environ.get("PL_GLOBAL_SEED") if launched_rank() else None
    seed = int(inherited) if inherited is not None else secrets.randbelow(MAX_SEED + 1)
    with open_dict(cfg):
        cfg.seed = seed
    if inherited is None and is_rank_zero():   # (srun's or torchrun's other ranks draw their own: RankSeed)
        log.info("seed=null: this run draws seed=%d (pass seed=%d to repeat it; the run folder's starts/ records it)",
                 seed, seed)
    return True


def hydra_files(task_cfg: DictConfig) -> dict[str, str]:
    """The text of Hydra's three files for this job, as Hydra writes them (its run_job), from the
    configs in memory: `task_cfg`, the config the task was given; empty outside Hydra."""
    hydra_cfg = hydra_config()
    if hydra_run_dir() is None:
        return {}
    return {"config.yaml": OmegaConf.to_yaml(task_cfg), "hydra.yaml": OmegaConf.to_yaml({"hydra": hydra_cfg}),
            "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task)}


def hydra_output_dir() -> Path | None:
    """Where Hydra wrote this job's config files (`.hydra` of the run folder); None outside Hydra."""
    run_dir = hydra_run_dir()
    if run_dir is None or hydra_config().output_subdir is None:
        return None
    return run_dir / hydra_config().output_subdir


def earlier_starts(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / STARTS_DIR
    return sorted(start for start in folder.iterdir() if start.is_dir()) if folder.is_dir() else []


def record_start(run_dir: Path, cfg: DictConfig, own_hydra_files: dict[str, str], seed_drawn: bool,
                 resumed_from: str | None, code_revision: str) -> Path | None:
    """Write this start's folder under `run_dir/starts/` (module docstring) and put
    `own_hydra_files` (`hydra_files` of the config the run was given) back in `.hydra/`; returns
    the folder. Rank zero only (None elsewhere): the other ranks of a run are the same start."""
    if not is_rank_zero():
        return None
    number = len(earlier_starts(run_dir)) + 1
    start = Path(run_dir) / STARTS_DIR / f"{number:03d}_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    start.mkdir(parents=True, exist_ok=True)
    hydra_dir = hydra_output_dir()   # (None where Hydra keeps no files: hydra.output_subdir=null)
    for name, text in own_hydra_files.items():
        for folder in (start, hydra_dir) if hydra_dir is not None else (start,):
            write_text_whole(folder / name, text)
    write_text_whole(start / "resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    changes = uncommitted_changes(ROOT_DIR)
    if changes is not None and any(changes):
        diff, untracked = changes
        listed = "".join(f"# not tracked by git and not kept (binary, or over 1 MB): {name}\n" for name in untracked)
        write_text_whole(start / "code.patch", listed + diff)
    record = {
        "start": number, "time": time.strftime("%Y-%m-%d %H:%M:%S %z"), "host": socket.gethostname(),
        "pid": os.getpid(), "command": [sys.executable, *sys.argv], "working_dir": os.getcwd(),
        "slurm": {key: os.environ[key] for key in ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
                  if key in os.environ} or None,
        "seed": cfg.get("seed"), "seed_drawn": seed_drawn, "resumed_from": resumed_from,
        "code_revision": code_revision,
        "python": platform.python_version(), "platform": platform.platform(), "packages": package_versions(),
        "torch": torch_build(),
    }
    write_text_whole(start / "start.yaml", OmegaConf.to_yaml(OmegaConf.create(record)))
    log.info("This start's record: %s", start)
    return start


@contextlib.contextmanager
def run_folder_claimed(run_dir: Path):
    """Hold the run folder's lock for the block (rank zero; the other ranks of the run share its
    claim). A second run into the folder is refused, naming the first; Hydra has replaced the first
    run's `.hydra` files by then, so they are put back from its latest start's record (and the
    first run writes its own there again when it records its start). Under srun or torchrun the
    refused command's other ranks wait for its rank zero at the rendezvous, until its timeout:
    `srun --kill-on-bad-exit=1` ends them with it."""
    if not is_rank_zero():
        yield
        return
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(FolderLock(
                run_dir, "a training run's folder", "Give this run its own folder (hydra.run.dir=..., or Hydra's "
                "dated default), or start it again once that run has ended (a run that was killed holds nothing)."))
        except FolderInUse as refused:
            raise FolderInUse(f"{refused} {restore_hydra_files(run_dir)}".strip()) from None
        yield


def restore_hydra_files(run_dir: Path) -> str:
    """Put the running run's `.hydra` files back from its latest start's record (Hydra wrote this
    refused command's over them); says what was done, for the refusal's message."""
    folder = hydra_output_dir()
    starts = earlier_starts(run_dir)
    if folder is None:
        return ""
    if not starts:
        return f"Its {folder} files hold this command's config until that run records its start."
    for name in HYDRA_FILES:
        if (starts[-1] / name).is_file():   # whole: the running run's files are never seen half-written
            write_text_whole(folder / name, (starts[-1] / name).read_text(encoding="utf-8"))
    return f"Its {folder} files, which Hydra had replaced with this command's, were put back from {starts[-1]}."
