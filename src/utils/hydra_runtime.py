"""What the running Hydra job is: its config, its overrides, whether it is one job of a
multirun, and whether this process is the rank that writes.

Imports neither torch nor Lightning at module level: src/train.py loads it before the CUDA
allocator is configured (src/utils/allocator.py), and torch must not load before that.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

#: environment variable carrying a multirun job's spec to the DDP ranks Lightning launches for it
#: (src/utils/ddp_multirun.py): they run Hydra in RUN mode, yet belong to the sweep
DDP_JOB_ENV = "GAN_TRAIN_DDP_JOB"
#: environment variable carrying the checkpoint rank zero resumes from to the ranks Lightning
#: launches (src/utils/run.py): they run with rank zero's run folder named, so a requeued job's
#: ranks would look for the checkpoint in other places
RESOLVED_CHECKPOINT_ENV = "GAN_TRAIN_RESOLVED_CHECKPOINT"


def override_key(override: str) -> str:
    """The config key a command-line override sets, adds or deletes (`+a.b=1`, `~a.b`: `a.b`)."""
    return override.lstrip("+~").split("=", 1)[0]


def hydra_config() -> DictConfig | None:
    """The running job's Hydra config; None outside a Hydra app (a notebook, a test)."""
    return HydraConfig.get() if HydraConfig.initialized() else None


def hydra_run_dir() -> Path | None:
    """The run folder Hydra made for this job; None outside a Hydra job."""
    hydra_cfg = hydra_config()
    if hydra_cfg is None or OmegaConf.is_missing(hydra_cfg.runtime, "output_dir"):
        return None
    return Path(hydra_cfg.runtime.output_dir)


#: the key under which `compose_training_config` records the overrides a config was composed
#: with from Python, where there is no Hydra job to ask
COMPOSED_OVERRIDES_KEY = "overrides"


def job_overrides(cfg: DictConfig | None = None) -> list[str]:
    """The job's command-line overrides of the config (not Hydra's own); outside a Hydra job,
    those `cfg` was composed with from Python (`compose_training_config`), if it says."""
    hydra_cfg = hydra_config()
    if hydra_cfg is not None:
        return list(hydra_cfg.overrides.task)
    recorded = cfg.get(COMPOSED_OVERRIDES_KEY) if cfg is not None else None
    return [str(override) for override in recorded or []]


def is_multirun() -> bool:
    hydra_cfg = hydra_config()
    return hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN


def in_a_sweep() -> bool:
    """A job of a multirun, or a DDP rank Lightning launched for one (which runs Hydra in RUN
    mode): every rank of the job must come to the same decision."""
    return is_multirun() or DDP_JOB_ENV in os.environ


def launched_rank(environ=os.environ) -> bool:
    """Whether this process is a rank Lightning's launcher started (its LOCAL_RANK is not 0)."""
    return environ.get("LOCAL_RANK", "0") != "0"


def is_rank_zero() -> bool:
    """Whether this process is rank zero. The ranks a DDP job launches run the job's Hydra too
    (src/utils/ddp_multirun.py); only rank zero writes. Lightning reads the rank from the
    launcher's environment when it is imported, which is done here, late (module docstring).
    A node other than the first is never rank zero: under Lightning's own launcher on several
    nodes (`NODE_RANK=1 python src/train.py trainer.num_nodes=2`) its first process reads rank 0
    until the Trainer gives it its rank, and took the run folder's claim before that."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only
    first_node = all(os.environ.get(name, "0") in ("", "0") for name in ("NODE_RANK", "GROUP_RANK"))
    return getattr(rank_zero_only, "rank", 0) == 0 and first_node


def warn_for_every_rank(logger: logging.Logger, message: str, *args) -> None:
    """A warning about what every rank shares (the settings, the data's folders), said by rank
    zero alone: other ranks' warnings pass (`other_ranks_log_warnings_only`), so each rank would
    repeat it, eight times over into one train.log on eight GPUs."""
    if is_rank_zero():
        logger.warning(message, *args)


def _warning_or_worse(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


@contextlib.contextmanager
def other_ranks_log_warnings_only():
    """On ranks other than zero, the log handlers take warnings and errors only for the block:
    every rank runs the same setup and says the same things (parameter counts, the seed, the
    data's folders), eight times over on eight GPUs, into files of their own or, under srun and
    torchrun, interleaved into the run's one train.log. Rank zero logs as before."""
    if is_rank_zero():
        yield
        return
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(_warning_or_worse)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(_warning_or_worse)
