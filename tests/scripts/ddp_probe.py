"""Test-only callback: what one DDP rank trained on and ended with, written to the run dir.

Added from the command line (`+callbacks.rank_probe._target_=tests.scripts.ddp_probe.RankProbe`),
so it runs in every rank of a `python src/train.py` subprocess, launched ranks included. Each
rank writes `rank_probe_<global rank>.pt` into its run dir when fit ends: the images it trained
on (series: their indices), its RNG state at the first batch, the weights the sampling
callbacks saw at train end (the EMA when enabled), the weights the fit started from and the
trained weights.
"""
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from src.callbacks.checkpoint import IterationCheckpoint


class RankProbe(pl.Callback):
    def __init__(self):
        self.paths: list[tuple[str, str]] = []
        self.rng_state_at_first_batch: torch.Tensor | None = None
        self.sampled_params: dict[str, torch.Tensor] = {}
        self.initial_params: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial_params = {n: p.detach().cpu().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.rng_state_at_first_batch is None:
            self.rng_state_at_first_batch = torch.get_rng_state()
        # A labelled batch (noise-to-image models) has one image domain; a series batch (RGAN)
        # names its items by index.
        names = batch["A_path"] if "A_path" in batch else batch["index"].tolist()
        self.paths.extend(zip(names, batch.get("B_path", names)))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sampled_params = {n: p.detach().cpu().clone() for n, p in pl_module.named_parameters()}

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        torch.save({
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "run_dir": str(trainer.default_root_dir),
            "iteration": pl_module.iteration,
            "paths": self.paths,
            "rng_state_at_first_batch": self.rng_state_at_first_batch,
            "sampled_params": self.sampled_params,
            "initial_params": self.initial_params,
            "params": {n: p.detach().cpu().clone() for n, p in pl_module.named_parameters()},
            "hparams": OmegaConf.to_container(OmegaConf.create(dict(pl_module.hparams))),
        }, Path(trainer.default_root_dir) / f"rank_probe_{trainer.global_rank}.pt")


class ResumingElsewhereOnRankOne(IterationCheckpoint):
    """The checkpoint callback of a rank 1 given another file to resume from than rank 0's (as a
    node that resolved ckpt_path=auto on its own disk):
    `callbacks.model_checkpoint._target_=tests.scripts.ddp_probe.ResumingElsewhereOnRankOne`."""

    def setup(self, trainer, pl_module, stage) -> None:
        if trainer.global_rank == 1:
            self.resume_path = "/elsewhere/last.ckpt"
        super().setup(trainer, pl_module, stage)


class FailOnRank(pl.Callback):
    """Raises on global rank `rank` (-1: none) at the end of its first batch: a job one of whose
    ranks fails while the others train on (`+callbacks.fail._target_=tests.scripts.ddp_probe.FailOnRank
    +callbacks.fail.rank=1`). The others first spend `others_busy_s` there outside any collective,
    as a rank in a long step or evaluation is (where a collective with the failed rank fails at
    once, as gloo's does, a rank reaches its error before any observer looks)."""

    def __init__(self, rank: int, others_busy_s: float = 0.0):
        self.rank, self.others_busy_s = rank, others_busy_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank:
            raise RuntimeError(f"FailOnRank: rank {self.rank} fails on purpose")
        if batch_idx == 0 and self.others_busy_s:
            time.sleep(self.others_busy_s)
