"""Stop signals: SIGTERM under DDP, and a cluster's requeue warning, end training after a whole
iteration on every rank together, with interrupted.ckpt, instead of hanging or stopping inside
an iteration.

SIGTERM under DDP. A cluster's preemption or time limit sends SIGTERM. Lightning's handler
forwards it to the ranks it launched and calls `torch.distributed.broadcast` inside the signal
handler, which runs wherever the main thread was: in the middle of a gradient all-reduce, say.
The ranks' collectives then no longer pair up and the job hangs until the scheduler kills it,
without the interrupted.ckpt that the checkpoint callback would write (measured: two gloo ranks,
both idle after SIGTERM, with trainer=ddp_sim; Lightning issue #20806). Its per-rank check after
each batch can also stop one rank a batch before the others.

Requeue warnings. Before a time limit or a preemption SLURM can send a signal of its own
(`--signal`): SIGUSR1 for Lightning's SLURM auto-requeue, SIGUSR2 for submitit
(hydra/launcher=slurm). Their handlers also run inside the signal handler, mid-iteration:
Lightning's saves its hpc checkpoint there (after a discriminator step and before the
generator's, say) and under DDP ends that save in a barrier that meets whatever collective the
other ranks are in; submitit's requeues the job and exits rank zero on the spot, without a
checkpoint, leaving the other ranks waiting for it.

This callback replaces those handlers for the training loop with ones that only note the
signal. After each iteration the ranks combine their notes in one all-reduce, at the same point
of every rank's loop, and all stop there together (Lightning's SIGTERMException): the checkpoint
callback saves interrupted.ckpt (rank zero; the other ranks wait for it in a barrier). Only then, after the fit, does
`hand_over` run the requeue handler that was noted (`run_training`), so the job is requeued with
its checkpoint on disk (without the second copy Lightning's handler would save); the run exits
with 143. Lightning puts every handler back when the fit
ends. A single process keeps Lightning's SIGTERM handling, which has no collectives.

A signal at the run's last iteration: that iteration ends as any last one, with its evaluations
and checkpoints (last.ckpt), and the stop comes after the fit (`stop_after_fit`, raised by
src/utils/run.py): exit 143, or the requeue. Stopped before the checkpoint callbacks, the run
left last.ckpt an interval behind, which a resume from interrupted.ckpt, training nothing, never
brought up to date. (This callback takes a single process's SIGTERM over there, from Lightning.)
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from unittest import mock

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from src.callbacks.periodic_evaluation import PeriodicEvaluation

log = logging.getLogger(__name__)

#: the signals clusters warn of a requeue with (SLURM's `--signal`); SIGTERM stops a run either way.
#: (Windows has neither: none there.)
REQUEUE_SIGNALS = tuple(getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2") if hasattr(signal, name))
#: every signal whose note the ranks combine, in the order of the all-reduced vector
NOTED_SIGNALS = (signal.SIGTERM, *REQUEUE_SIGNALS)


def requeue_signals(trainer: pl.Trainer) -> set[signal.Signals]:
    """The signals a cluster sends ahead of a requeue, for the job-level tools that handle them:
    Lightning's SLURM auto-requeue (its cluster environment's `requeue_signal`) and submitit
    (`SUBMITIT_EXECUTOR` is set in its jobs; its signal is `JobEnvironment.USR_SIG`)."""
    signals = set()
    # Where Lightning's own signal connector reads it (a single-device strategy has none of its own)
    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
        signals.add(environment.requeue_signal or getattr(signal, "SIGUSR1", None))
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit   # only inside submitit's jobs, which have it
        signals.add(signal.Signals[f"SIG{submitit.JobEnvironment.USR_SIG}"])
    return {s for s in signals if s in REQUEUE_SIGNALS}


class RequeueStop(SIGTERMException):
    """Training stopped at a whole iteration for a requeue warning; `hand_over` then runs the
    handler the warning was meant for (it requeues the job)."""

    def __init__(self, signum: int, handler: Callable):
        super().__init__()
        self.signum, self.handler = signum, handler

    def hand_over(self, trainer: pl.Trainer) -> None:
        log.warning("%s: training stopped at a whole iteration, its checkpoint saved; now running the handler "
                    "the signal was meant for (%s)", signal.Signals(self.signum).name, getattr(
                        self.handler, "__qualname__", type(self.handler).__qualname__))
        # Lightning's SLURM handler saves an hpc_ckpt_N.ckpt before it requeues: interrupted.ckpt
        # holds the same state already, and each requeue's copy stayed, full size, in the run
        # folder, its save delaying the requeue into the scheduler's kill.
        with mock.patch.object(trainer, "save_checkpoint", skipped_save):
            self.handler(self.signum, None)


def skipped_save(filepath, *args, **kwargs) -> None:
    log.info("Not saving %s: interrupted.ckpt holds the same state", filepath)


class StopSignals(pl.Callback):
    def __init__(self):
        self.noted: set[int] = set()
        self.deferred: dict[int, Callable] = {}
        self._taken_over = False
        #: the stop a signal at the run's last iteration asked for, raised once the fit has ended
        #: (src/utils/run.py): that iteration's checkpoints and evaluations come first
        self.stop_after_fit: SIGTERMException | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Take the signals over the moment Lightning installs its handlers (after this hook):
        between then and on_train_start the ranks meet in collectives (a barrier, the training
        loader's and RankSeed's seed broadcasts), and Lightning's SIGTERM handler, broadcasting
        from inside the handler, would pair with one of them and hang the job."""
        self._taken_over = False
        self.give_back_the_installation(trainer)   # one a failed fit left (it calls no teardown)
        connector = getattr(trainer, "_signal_connector", None)
        if stage != "fit" or connector is None:
            return
        install_lightnings = type(connector).register_signal_handlers

        def install_lightnings_then_take_over() -> None:
            self.give_back_the_installation(trainer)   # this fit's only
            install_lightnings(connector)
            self.take_over(trainer)
        connector.register_signal_handlers = install_lightnings_then_take_over

    @staticmethod
    def give_back_the_installation(trainer: pl.Trainer) -> None:
        """Lightning's own handler installation again (a trainer's validate or test next)."""
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None:
            vars(connector).pop("register_signal_handlers", None)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.give_back_the_installation(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._taken_over:   # (a Lightning that installed its handlers some other way)
            self.take_over(trainer)

    def take_over(self, trainer: pl.Trainer) -> None:
        self.noted, self.deferred, self._taken_over = set(), {}, True
        # signal.signal works only in the main thread (a notebook's fit in another keeps Lightning's)
        if threading.current_thread() is not threading.main_thread():
            return
        if trainer.world_size > 1:
            signal.signal(signal.SIGTERM, self.note)
            # A SIGTERM that Lightning's handler took first (a Lightning that installs it earlier
            # than this take-over) is the receiving rank's alone: Lightning would stop that rank
            # after its first batch, the others going on. Noted here, the ranks decide on it together.
            connector = trainer._signal_connector
            if connector.received_sigterm:
                connector.received_sigterm = False
                self.noted.add(signal.SIGTERM)
        for signum in requeue_signals(trainer):
            handler = signal.getsignal(signum)
            if callable(handler):
                self.deferred[signum] = handler
                signal.signal(signum, self.note)

    def note(self, signum: int, frame) -> None:
        # Only a note: a collective or a save here would run in the middle of whatever the main
        # thread is doing.
        self.noted.add(signum)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        arrived = self.noted_on_any_rank(trainer)
        # (a single process leaves SIGTERM to Lightning, which stops after the iteration's checkpoints)
        connector = trainer._signal_connector
        lightnings = trainer.world_size == 1 and bool(getattr(connector, "received_sigterm", False))
        if not arrived and not lightnings:
            return
        names = ", ".join(signal.Signals(s).name for s in arrived or [signal.SIGTERM])
        stop = self.stop_for(arrived)
        if PeriodicEvaluation.training_ends_here(trainer):
            # Raised here, before the checkpoint callbacks (Lightning runs them last), the stop
            # left last.ckpt an interval behind, and a resume from interrupted.ckpt, training
            # nothing, never brought it up to date: the run ends first, then stops for the signal.
            connector.received_sigterm = False
            self.stop_after_the_fit(stop, f"{names} at the run's last iteration ({pl_module.iteration}): it ends "
                                          "with its checkpoints, then stops for it")
            return
        if not arrived:
            return
        rank_zero_warn(f"{names}: every rank stops after iteration {pl_module.iteration}")
        raise stop

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A signal after the last iteration's look (while its checkpoint was written, say): the
        # job stops for it all the same, once the fit has ended. (Every rank gets here.)
        if self.stop_after_fit is None and (arrived := self.noted_on_any_rank(trainer)):
            names = ", ".join(signal.Signals(s).name for s in arrived)
            self.stop_after_the_fit(self.stop_for(arrived), f"{names} after the run's last iteration: the run has "
                                                            "ended with its checkpoints, and stops for it")

    def stop_after_the_fit(self, stop: SIGTERMException, said: str) -> None:
        """Leave `stop` for src/utils/run.py to raise once the fit has ended, saying so."""
        rank_zero_warn(said)
        self.noted.clear()
        self.stop_after_fit = stop

    def stop_for(self, arrived: list[int]) -> SIGTERMException:
        """The stop the signals that arrived ask for: the requeue a warning was meant for, or SIGTERM's."""
        requeue = [s for s in arrived if s in self.deferred]
        return RequeueStop(requeue[0], self.deferred[requeue[0]]) if requeue else SIGTERMException()

    def noted_on_any_rank(self, trainer: pl.Trainer) -> list[int]:
        """The signals any rank noted, in NOTED_SIGNALS' order, on every rank."""
        if trainer.world_size == 1:   # nothing to combine, and no tensor or device sync per iteration
            return [s for s in NOTED_SIGNALS if s in self.noted]
        # One all-reduce, at the same point of every rank's loop. Read on the host, it waits for the
        # GPU's queue; so does Lightning's own SIGTERM broadcast before every batch under DDP
        # (`_broadcast_sigterm_tensor`), so a side group on the CPU would save nothing, and gloo
        # across nodes can fail where NCCL works (its address comes from the host name).
        notes = torch.tensor([float(s in self.noted) for s in NOTED_SIGNALS], device=trainer.strategy.root_device)
        everywhere = trainer.strategy.reduce(notes, reduce_op="sum")
        return [s for s, count in zip(NOTED_SIGNALS, everywhere.tolist()) if count > 0]
