"""Composing the training config (`conf/train.yaml`) outside a Hydra app, as `src/train.py
<overrides>` composes it: for the tools that read a run's settings (check_images, the benchmark)
and for training from Python (README, "From Python")."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, open_dict

from src.utils.hydra_runtime import COMPOSED_OVERRIDES_KEY, override_key

ROOT_DIR = Path(__file__).resolve().parents[2]   # the repository
CONF_DIR = ROOT_DIR / "conf"


def compose_training_config(overrides: Sequence[str], conf_dir: str | Path = CONF_DIR,
                            output_dir: str | Path | None = None) -> DictConfig:
    """The training config with `overrides`. `paths.root_dir` resolves as in the app
    ($PROJECT_ROOT, else the working directory); `paths.output_dir` (Hydra's run folder) is
    `output_dir`, and with it `paths.root_dir` is the repository unless $PROJECT_ROOT or an
    override says otherwise (a notebook in another folder gets the project's data/ and logs/). Without `output_dir` it is left to Hydra, for tools that do not
    train. Hydra's global state (a caller's own `initialize`) is as it was afterwards."""
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
            cfg = compose(config_name="train", overrides=list(overrides))
    finally:
        restore_gh_from_backup(backup)
    with open_dict(cfg):
        # what run_training checks as src/train.py checks its command line (settings the model
        # would not read), and names the wandb run by
        cfg[COMPOSED_OVERRIDES_KEY] = list(overrides)
    if output_dir is not None:
        with open_dict(cfg):
            if "PROJECT_ROOT" not in os.environ and "paths.root_dir" not in map(override_key, overrides):
                cfg.paths.root_dir = str(ROOT_DIR)
            cfg.paths.output_dir = str(Path(output_dir).resolve())
    return cfg
