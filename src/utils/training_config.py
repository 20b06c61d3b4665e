"""Composing the training config (`conf/train.yaml`) outside a Hydra app, as `src/train.py
<overrides>` composes it: for the tools that read a run's settings (check_images, the benchmark)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_training_config(overrides: Sequence[str], conf_dir: str | Path = CONF_DIR) -> DictConfig:
    """The training config with `overrides`; `paths.root_dir` resolves as in the app ($PROJECT_ROOT,
    else the working directory), `paths.output_dir` (Hydra's run folder) does not."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg
