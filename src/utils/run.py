"""The body of a training run, kept apart from the Hydra entry point so tests can call it."""
import logging
import os
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from src.utils.instantiate import instantiate_list

log = logging.getLogger(__name__)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_trainer_kwargs(cfg: DictConfig, model) -> dict:
    """Trainer arguments, with `max_iters` (training iterations) turned into optimizer steps."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if cfg.get("max_iters"):
        kwargs["max_steps"] = int(cfg.max_iters) * model.optimizer_steps_per_iter
        kwargs["max_epochs"] = -1
    return kwargs


def default_wandb_offline() -> None:
    """wandb goes offline unless the user configured it (WANDB_MODE, or an API key), so a run
    never blocks on a missing login or network."""
    if "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"


def run_training(cfg: DictConfig) -> dict[str, float]:
    default_wandb_offline()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    for name, child in model.named_children():
        log.info("%s: %s parameters", name, f"{count_parameters(child):,}")
    callbacks = instantiate_list(cfg.get("callbacks"), "callbacks")
    loggers = instantiate_list(cfg.get("logger"), "logger")
    trainer = pl.Trainer(**build_trainer_kwargs(cfg, model), callbacks=callbacks, logger=loggers or False)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if trainer.checkpoint_callback is None:
        raise ValueError("No checkpoint callback configured: add callbacks.model_checkpoint "
                         "(see conf/callbacks/default.yaml) so the run ends with a checkpoint")
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        log.info("Run directory: %s", run_dir)
        log.info("Checkpoint to resume from: %s", trainer.checkpoint_callback.last_model_path)
        log.info("Sample grids: %s", run_dir / "samples")
    return metrics
