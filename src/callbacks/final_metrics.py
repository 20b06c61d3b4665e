"""`final_metrics.json` in the run directory when a fit ends: where the run got to, for scripts
and for the sweep table (src/utils/sweep_summary.py) without reading the loggers' files.

Written from `on_fit_end` on rank zero of the processes that trained: under `ddp_spawn` the
launching process gets the metrics back but not the model's step count or the callbacks'
state (the best FID), so the file could not be written after `fit` returns there.

Every checkpoint carries the metrics as of its save. A run resumed at its end trains and logs
nothing; where it has no "completed" record (stopped in its last iteration by a preemption or a
failing evaluation, or killed between its last save and the record) it writes one from them,
naming the checkpoint it resumed from and warning of the evaluations the last iteration
missed, so that a search still gets its trial's value. A run resumed mid-run from such a
checkpoint (crashed.ckpt, written when an evaluation failed) warns of the evaluations its
iteration missed, as the resume goes on from the next iteration.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn

from src.callbacks.checkpoint import END_WORK_CUT_KEY, latest_checkpoint_path
from src.data.download import pasteable_override
from src.utils.run_results import completed_metrics, write_final_metrics


class FinalMetrics(pl.Callback):
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.trained = False
        self.trainer: pl.Trainer | None = None
        #: the metrics of the checkpoint the fit resumed from, as of its save
        self.saved_metrics: dict[str, float] = {}
        #: whether that checkpoint was taken in its iteration's end work (a crash there)
        self.resumed_in_end_work = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.trainer = trainer   # for state_dict, which Lightning calls without it
        self.resumed_in_end_work = False

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.resumed_in_end_work = bool(checkpoint.get(END_WORK_CUT_KEY))

    def state_dict(self) -> dict:
        return {"metrics": self.run_metrics(self.trainer) if self.trainer is not None else dict(self.saved_metrics)}

    def run_metrics(self, trainer: pl.Trainer) -> dict[str, float]:
        """The last value of every metric the run logged: this fit's, over those of the
        checkpoint it resumed from (a metric logged before a resume and not since, too)."""
        return {**self.saved_metrics, **{k: float(v) for k, v in trainer.callback_metrics.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.saved_metrics = dict(state_dict.get("metrics", {}))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.trained = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args, **kwargs) -> None:
        self.trained = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only a checkpoint cut in its end work: any other was written after that iteration's
        # evaluations were done or not due (best_fid.ckpt, before the evaluations listed after
        # FID's; one of a run whose evaluations or their interval changed since).
        if self.resumed_in_end_work and trainer.ckpt_path and Path(trainer.ckpt_path).is_file():
            self.warn_of_missed_evaluations(trainer, pl_module, os.path.abspath(trainer.ckpt_path), at_the_end=False)

    @staticmethod
    def warn_of_missed_evaluations(trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: str,
                                   at_the_end: bool = True) -> None:
        """A resume goes on past the iteration its checkpoint holds: where the fit that wrote it
        stopped in that iteration's end work (an evaluation failing), the evaluations left
        undone there are missing from the run's scores, which must say so. A run resumed at its
        end evaluates nothing (Lightning skips a finished fit's loop and its end); one resumed
        mid-run (`at_the_end=False`) goes on to its next iteration, past those due at this one."""
        from src.callbacks.periodic_evaluation import PeriodicEvaluation
        iteration = pl_module.iteration
        missed = [type(cb).__name__ for cb in trainer.callbacks if isinstance(cb, PeriodicEvaluation) and cb.enabled
                  and cb.last_evaluated != iteration and (at_the_end or cb.due_at(iteration))]
        if not missed:
            return
        if at_the_end:
            what = (f"the run's last iteration ({iteration}): the run reached it, but stopped before that evaluation, "
                    f"and a resume of a finished run trains and evaluates nothing")
        else:
            what = (f"iteration {iteration}, where this run resumes: the run stopped in that iteration's end work, "
                    f"and the resume goes on from iteration {iteration + 1}")
        rank_zero_warn(f"{', '.join(missed)} did not evaluate {what}. Score that state with python src/eval.py "
                       f"{pasteable_override('ckpt_path', checkpoint, prefix='')}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if not self.trained and completed_metrics(self.run_dir) is not None:
            # A finished run resumed into its own folder (a sweep's job run again with
            # ckpt_path=auto) trains nothing and logs nothing: its record stays as it was.
            return
        from src.callbacks.fid_kid import FidKidCallback   # imported late: it loads the metrics stack
        fid = next((c for c in trainer.callbacks if isinstance(c, FidKidCallback)), None)
        checkpoint = latest_checkpoint_path(trainer.checkpoint_callback) if trainer.checkpoint_callback else None
        if not self.trained and trainer.ckpt_path and Path(trainer.ckpt_path).is_file():
            # Resumed at its end, the fit trained nothing: the file it resumed from holds the run's
            # last state (crashed.ckpt, written when the last iteration's end work failed, is
            # newer than last.ckpt, which that failure kept from being written).
            checkpoint = os.path.abspath(trainer.ckpt_path)   # (a relative ckpt_path= as typed)
            if self.resumed_in_end_work:
                self.warn_of_missed_evaluations(trainer, pl_module, checkpoint)
        metrics = self.run_metrics(trainer)
        if fid is None:
            write_final_metrics(self.run_dir, metrics, pl_module.iteration, checkpoint or None)
            return
        write_final_metrics(self.run_dir, metrics, pl_module.iteration, checkpoint or None, fid.best_fid,
                            fid.best_iteration, feature_extractor=fid.measured.get("feature_extractor"))
