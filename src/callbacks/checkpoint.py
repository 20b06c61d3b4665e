"""Checkpointing counted in training iterations, with a checkpoint at the end of every run.

Lightning's `every_n_train_steps` counts optimizer steps, and under manual optimization a GAN
iteration takes several (2 for CycleGAN, 3 for NICE-GAN). This converts `every_n_iters` with
the model's `optimizer_steps_per_iter`, and also saves after the run's last iteration (a run
stopped by `max_iters` mid-epoch would otherwise end without one), on Ctrl-C or SIGTERM and on
a crash.
"""
import logging

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from src.data.download import pasteable_override
from src.models.divergence import first_non_finite, refuse_saving_non_finite
from src.utils.config_checks import require_int

log = logging.getLogger(__name__)

#: in a crash checkpoint taken inside an iteration: the optimizer steps it had taken (rolled back)
PARTIAL_STEPS_KEY = "partial_iteration_steps"
#: in a crash checkpoint taken inside a player's optimizer step: true (some tensors stepped)
TORN_STEP_KEY = "inside_an_optimizer_step"
#: in a crash checkpoint taken inside an iteration's training step, before its first optimizer
#: step: true (the iteration's random draws so far, dropout's, latents', pool picks, are spent)
INSIDE_ITERATION_KEY = "inside_an_iteration"
#: Marks a crash checkpoint taken in an iteration's end work (the evaluations, grids and saves
#: after its last optimizer step): Lightning counts it past that work, so a resume goes on
#: without what was left of it (FinalMetrics names the evaluations missed).
END_WORK_CUT_KEY = "inside_an_iterations_end_work"


def latest_checkpoint_path(callback: ModelCheckpoint) -> str:
    """The file of a checkpoint callback's latest save: last.ckpt, or with `save_last=false` the
    newest periodic file (where last_model_path stays empty); "" before any save."""
    return callback.last_model_path or getattr(callback, "_last_checkpoint_saved", "") or callback.best_model_path


def refuse_different_resumes(trainer: pl.Trainer, own: str) -> None:
    """ValueError on every rank where the ranks would resume from different files (`own`: this
    rank's, "" for none), before Lightning restores one. Under torchrun or srun each rank
    resolves `ckpt_path=auto` itself: on node-local disks a node without rank zero's checkpoints
    started afresh while rank zero resumed, and the ranks' optimizers, schedules and counts went
    apart without an error (DDP aligns the weights alone)."""
    chosen = trainer.strategy.broadcast(own, src=0)
    if trainer.strategy.reduce_boolean_decision(own != chosen, all=False):
        fresh = "none (a fresh start)"
        which = (f"rank {trainer.global_rank} from {own or fresh}" if own != chosen
                 else "another rank from another file (its own error names it)")
        raise ValueError(f"The ranks would resume from different checkpoints: rank 0 from {chosen or fresh}, "
                         f"{which}. Each rank resolves ckpt_path=auto in the run folder it sees: put the run folder "
                         f"(hydra.run.dir) on storage every node shares, or name the checkpoint (ckpt_path=path) on "
                         f"every node")


class IterationCheckpoint(ModelCheckpoint):
    """Files are named by training iteration (`iter_0004000.ckpt`, like the sample grids), not
    by Lightning's default `epoch=0-step=8000` whose step counts optimizer steps. A `filename`
    template can use `{iter}` next to Lightning's `{epoch}`, `{step}` and logged metrics."""

    def __init__(self, every_n_iters: int | None = None, filename: str | None = "iter_{iter:07d}",
                 auto_insert_metric_name: bool = False, **kwargs):
        for unread in ("train_time_interval", "every_n_train_steps"):
            if kwargs.get(unread) is not None:
                # The batch-end saving below replaces the parent's, the one that reads them.
                raise ValueError(f"callbacks.model_checkpoint.{unread} is not used here: checkpoints are written every "
                                 f"callbacks.model_checkpoint.every_n_iters training iterations (and on SIGTERM)")
        if kwargs.get("save_top_k", 1) == 0 and not kwargs.get("save_last"):
            raise ValueError("callbacks.model_checkpoint.save_top_k=0 with save_last=false writes no checkpoint, so the "
                             "run would end without one: keep save_last=true (last.ckpt) or save_top_k >= 1")
        if kwargs.get("save_weights_only"):
            # Every file of the callback would lack the optimizers, schedulers, pools and loop
            # state a resume needs, and `ckpt_path=auto` would pick them all the same.
            raise ValueError("callbacks.model_checkpoint.save_weights_only=true writes checkpoints a run cannot resume "
                             "from (no optimizer, scheduler, image pool or loop state): remove it. src/eval.py and "
                             "src/translate.py load the networks from full checkpoints as they are")
        # (a negative count would turn the periodic saves off in silence)
        require_int("callbacks.model_checkpoint.every_n_iters", every_n_iters, least=0, allow_none=True,
                    why=" (0 or null: only the last and the best checkpoints)")
        # A run folder holds one run (a fresh start sets earlier checkpoints aside), so a file of
        # the same name is this run's, to replace: resumed from a copied or moved folder, whose
        # recorded paths Lightning does not restore, the counter wrote last-v1.ckpt beside a stale
        # last.ckpt, and the README's "resume from last.ckpt" went back to the older state.
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(filename=filename, auto_insert_metric_name=auto_insert_metric_name, **kwargs)
        self.every_n_iters = every_n_iters
        #: the checkpoint this rank's fit resumes from ("" for none), set before the fit: Lightning
        #: knows it only once it restores it, after the setup that compares the ranks'
        self.resume_path = ""
        # Lightning also saves at every epoch end by default; here only `every_n_epochs` asks for that.
        self.epoch_end_saves_asked = kwargs.get("every_n_epochs") is not None
        # Optimizer steps where this fit's training started (None before it does: the callbacks'
        # state is restored by then) and where the current batch started.
        self.started_at_step: int | None = None
        self.batch_started_at_step = 0

    def _monitor_candidates(self, trainer: pl.Trainer) -> dict:
        candidates = super()._monitor_candidates(trainer)
        candidates["iter"] = torch.tensor(trainer.lightning_module.iteration)
        return candidates

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.every_n_iters:
            self._every_n_train_steps = self.every_n_iters * pl_module.optimizer_steps_per_iter
        super().setup(trainer, pl_module, stage)
        self.started_at_step = None
        if stage == "fit" and trainer.world_size > 1:
            refuse_different_resumes(trainer, self.resume_path)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.started_at_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.batch_started_at_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Replaces the parent's manual-optimization branch, which warns on every save.
        step = trainer.global_step
        due = self._every_n_train_steps > 0 and step % self._every_n_train_steps == 0
        # The run's last iteration: by max_iters, or a stop decided by now (max_kimg's, at the
        # batch's start). Saved here, inside its epoch: the epoch end's checkpoint (then skipped,
        # at the same step) would mark an unfinished epoch done, and a resume would skip its rest.
        last_step = 0 < trainer.max_steps <= step or trainer.should_stop
        if due or last_step:
            self.save_now(trainer)

    def save_now(self, trainer: pl.Trainer) -> None:
        """The periodic file and last.ckpt, once per step (a save of this step already made, or a
        sanity check, skips it)."""
        if not self._should_skip_saving_checkpoint(trainer):
            refuse_saving_non_finite(trainer.lightning_module, latest_checkpoint_path(self))
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At the end of the run's last epoch only (a run measured in epochs ends there, after
        no batch-end save), unless `every_n_epochs` is set. Lightning's save at every epoch end
        added one full checkpoint per epoch to the periodic ones: on 8 GPUs a CycleGAN epoch of
        horse2zebra is 167 iterations. A resume from any batch-end checkpoint is exact."""
        if self.epoch_end_saves_asked:
            refuse_saving_non_finite(pl_module, latest_checkpoint_path(self))
            super().on_train_epoch_end(trainer, pl_module)   # its every_n_epochs
        last_epoch = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
        # Saved here whatever every_n_epochs says (an N that does not divide max_epochs, or 0),
        # unless the save above or the last batch's end wrote this step.
        if last_epoch or trainer.should_stop:
            self.save_now(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """No run ends without a checkpoint: Ctrl-C (after which Lightning exits the process) and
        SIGTERM (a cluster's preemption or time limit, `kill`) save `interrupted.ckpt`, any other
        error `crashed.ckpt` (a bad image mid-epoch, an out-of-memory step, a callback failing),
        so the work since last.ckpt is kept.

        Under DDP, SIGTERM stops every rank at the same iteration (StopSignals), so all of them
        are here: the others wait for rank zero's save. One exiting first gets rank zero killed
        mid-save: torchrun stops every worker once one exits, so does srun under KillOnBadExit,
        and torch's spawn terminates the rest of its processes."""
        try:
            self.save_crash_checkpoint(trainer, pl_module, exception)
        finally:
            if isinstance(exception, SIGTERMException) and trainer.world_size > 1:
                trainer.strategy.barrier("interrupted.ckpt saved")

    def save_crash_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                              exception: BaseException) -> None:
        """interrupted.ckpt or crashed.ckpt, by rank zero."""
        if not self.dirpath or self.started_at_step in (None, trainer.global_step):
            # Nothing trained since the fit began (from scratch, or from the checkpoint it resumed,
            # which holds everything: a file written here, perhaps before a resumed run's callbacks
            # have their state back, would lack some, the EMA's, and be newer for ckpt_path=auto).
            log.info("%s before this run took an optimizer step: no checkpoint written (it has trained nothing "
                     "since it started)", type(exception).__name__)
            return
        interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        name = "interrupted.ckpt" if interrupted else "crashed.ckpt"
        path = f"{self.dirpath}/{name}"
        if not trainer.is_global_zero:
            return
        try:
            tensor = first_non_finite(pl_module)
        except Exception:   # a device left unusable by the error: the save below fails, and says so
            tensor = None
        if tensor is not None:   # a diverged run: its last checkpoint holds what is worth keeping
            log.error("%s: no %s written, %s is not finite; the last checkpoint is %s", type(exception).__name__,
                      name, tensor, latest_checkpoint_path(self) or "none")
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        # Inside the training step (its start hooks ran, this callback's too): the resumed run
        # repeats the iteration in whole, also where all of its optimizer steps were taken and
        # what followed them failed (the losses' logging, the schedules).
        in_the_step = progress.started > progress.processed
        partial_steps = (trainer.global_step - self.batch_started_at_step if in_the_step
                         else trainer.global_step % pl_module.optimizer_steps_per_iter)
        # With steps in backward a player's tensors are updated one by one as backward reaches
        # them: an out-of-memory error or Ctrl-C there leaves some updated and the rest not.
        torn = getattr(pl_module, "inside_a_step", False)
        # Inside the training step (started, not processed), before its first optimizer step:
        # the iteration drew random numbers already, and the saved RNG state is after them. (A
        # bad image fails in the loader, before the iteration starts: that checkpoint is exact.)
        drawn = not torn and in_the_step and trainer.global_step == self.batch_started_at_step
        try:
            # Written by rank zero alone: trainer.save_checkpoint ends in a barrier that ranks
            # which crashed elsewhere, or died, would never reach.
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            if progress.ready > progress.processed:   # (also a failure in a batch-start hook)
                unstart_the_batch(checkpoint)
            if partial_steps:
                count_whole_iterations(checkpoint, partial_steps)
            if torn:
                checkpoint[TORN_STEP_KEY] = True
            if drawn:
                checkpoint[INSIDE_ITERATION_KEY] = True
            if not in_the_step and progress.processed > progress.completed:
                checkpoint[END_WORK_CUT_KEY] = True
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, path)
        except Exception as error:   # the run's own error is what must reach the user
            # (with its traceback: a fault of the code here would otherwise cost every crash its checkpoint unseen)
            log.error("Could not save %s after %s (%s: %s); the last checkpoint is %s", name,
                      type(exception).__name__, type(error).__name__, error, latest_checkpoint_path(self) or "none",
                      exc_info=error)
            return
        log.log(logging.WARNING if interrupted else logging.ERROR, "Stopped by %s: saved %s at iteration %d. Resume "
                "with the run's command and %s (or, with %s, ckpt_path=auto)",
                what_stopped(exception), name, pl_module.iteration, pasteable_override("ckpt_path", path, prefix=""),
                pasteable_override("hydra.run.dir", trainer.default_root_dir, prefix=""))
        if partial_steps:
            log.warning("%s was taken inside iteration %d, after %d of its %d optimizer steps: those players keep "
                        "their update and the resumed run repeats the iteration, so it is not bit-identical to an "
                        "uninterrupted run (last.ckpt is)", name, pl_module.iteration + 1, partial_steps,
                        pl_module.optimizer_steps_per_iter)
        if drawn:
            log.warning("%s was taken inside iteration %d, before its first optimizer step: the random numbers it "
                        "had drawn (dropout, latents, image-pool picks) are spent, so the resumed run repeats it "
                        "with others and is not bit-identical to an uninterrupted run (last.ckpt is)", name,
                        pl_module.iteration + 1)
        if torn:
            log.warning("%s was taken inside an optimizer step of iteration %d, with part of a player's tensors "
                        "updated: the resumed run steps them again, so it is not the uninterrupted run (last.ckpt "
                        "is, and ckpt_path=auto prefers it at equal progress)", name, pl_module.iteration + 1)


def what_stopped(exception: BaseException) -> str:
    """A run's stop in a user's words: the signal or key, or the error's type and message."""
    if isinstance(exception, KeyboardInterrupt):
        return "Ctrl-C"
    if isinstance(exception, SIGTERMException):
        return "SIGTERM (a cluster's preemption or time limit, or kill)"
    message = str(exception).splitlines()[0] if str(exception) else ""
    return f"{type(exception).__name__}" + (f" ({message[:200]})" if message else "")


def unstart_the_batch(checkpoint: dict) -> None:
    """Count the batch whose training step was cut short as never started: the resumed run
    trains it again. Lightning reads a batch started and not processed as one whose logging
    step was not counted yet, and counts it on resume: every later loss row would sit one step
    past its iteration, and off the iterations the model logs its losses at."""
    batches = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    for counters in (batches["total"], batches["current"]):
        counters["ready"] = counters["started"] = counters["processed"]


def count_whole_iterations(checkpoint: dict, partial_steps: int) -> None:
    """Roll the optimizer-step counters back to the start of the iteration a checkpoint was
    taken in, so the resumed run repeats that iteration in whole and its step counts (periodic
    checkpoints, max_iters, per-iteration schedules) stay multiples of the steps per iteration.
    The steps taken are recorded (`PARTIAL_STEPS_KEY`): `ckpt_path=auto` prefers an exact
    checkpoint of the same progress."""
    checkpoint[PARTIAL_STEPS_KEY] = partial_steps
    checkpoint["global_step"] -= partial_steps
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.manual_optimization.optim_step_progress"]
    for counters in progress.values():
        for key in ("ready", "completed"):
            counters[key] = max(0, counters[key] - partial_steps)
