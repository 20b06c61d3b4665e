"""SIGTERM under DDP: every rank stops after the same iteration, with its checkpoint, instead of
hanging.

A cluster's preemption or time limit sends SIGTERM. Lightning's handler forwards it to the ranks
it launched and calls `torch.distributed.broadcast` inside the signal handler, which runs
wherever the main thread was: in the middle of a gradient all-reduce, say. The ranks' collectives
then no longer pair up and the job hangs until the scheduler kills it, without the
interrupted.ckpt that the checkpoint callback would write (measured: two gloo ranks, both idle
after SIGTERM, with trainer=ddp_sim). Its per-rank check after each batch can also stop one rank
a batch before the others.

Under DDP this callback replaces that handler for the training loop with one that only notes the
signal. After each iteration the ranks combine their notes in one all-reduce, at the same point
of every rank's loop, and all raise Lightning's SIGTERMException there together. The checkpoint
callback then saves interrupted.ckpt (rank zero, no collectives) and the run exits with 143.
Lightning puts its own handler back when the fit ends.
"""
from __future__ import annotations

import signal
import threading

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_warn


class DistributedSigterm(pl.Callback):
    def __init__(self):
        self.received = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.received = False
        # signal.signal works only in the main thread (a notebook's fit in another keeps Lightning's)
        if trainer.world_size > 1 and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.note_sigterm)

    def note_sigterm(self, signum, frame) -> None:
        # Only a note: a collective here would meet whatever collective the main thread is in.
        self.received = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        # Any rank's note, on every rank (one all-reduce under DDP; a single process has none to make)
        if trainer.strategy.reduce_boolean_decision(self.received, all=False):
            rank_zero_warn(f"SIGTERM: every rank stops after iteration {pl_module.iteration}")
            raise SIGTERMException()
