"""`ckpt_path=auto`: the same command resumes its run, or starts it when nothing was saved yet.

A job that is preempted or hits a time limit (SLURM requeue, spot instances) is started again
with the same command line. With a fixed run directory (`hydra.run.dir=...`), `auto` picks the
most advanced checkpoint the run left there: the last periodic save, `interrupted.ckpt` /
`crashed.ckpt` written on the way down (they hold the work since `last.ckpt`), or Lightning's
SLURM `hpc_ckpt_*.ckpt`. Lightning's own `ckpt_path="last"` looks at `last*.ckpt` by time only,
and resolves the file after the loggers exist, too late for a wandb run to continue.

A file that cannot be read whole (a copy or sync cut short; the run's own saves go through a
synced file beside the target, src/utils/checkpoint_io.py) is passed over with a warning naming it
and why, and the next most advanced one is taken. A read the system refuses (permissions, an I/O
error) stops the run: the file may be whole, and passing over it would resume from an older one.
A whole file that a weights-only load refuses stops the run, naming it: resuming from it would
fail the same way, and passing it over would train again over the work it holds. Among files of
equal progress an exact one wins over a crash checkpoint taken inside an iteration or inside a
player's optimizer step, then the newest. Where every file is unreadable the run stops, naming
them, rather than train from scratch over them. Without any checkpoint the run starts, saying where
it looked (Hydra's default run directory is new for every run, so there it always starts).
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from src.callbacks.checkpoint import INSIDE_ITERATION_KEY, PARTIAL_STEPS_KEY, TORN_STEP_KEY
from src.models.checkpoint_fit import RefusedByWeightsOnly, UnreadableCheckpoint, load_checkpoint_file
from src.utils.config_resolvers import slurm_job_suffix
from src.utils.hydra_runtime import hydra_config, is_multirun, is_rank_zero, job_overrides
from src.utils.objective import sweeper_direction

log = logging.getLogger(__name__)

AUTO = "auto"


def slurm_restarts() -> int:
    """How often SLURM requeued this job (0: its first start, or no SLURM)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def resume_a_requeued_job(cfg: DictConfig) -> None:
    """A job SLURM requeued (`SLURM_RESTART_COUNT` > 0: preempted, or stopped at its time limit
    and requeued by submitit or Lightning) runs its first start's command line again. Naming no
    checkpoint it resumes as with `auto`: starting over would train from scratch over the
    checkpoints the stopped job saved. Naming one (a job started to continue an earlier one,
    `ckpt_path=<old run>/last.ckpt`) it resumes from its own run's most advanced checkpoint where
    that is further on: the named file would train again over the stopped job's work. Its own
    checkpoints: `own_checkpoint_dirs`."""
    restarts = slurm_restarts()
    named = cfg.get("ckpt_path")
    if restarts == 0 or named == AUTO:
        return
    if named is None:
        log.warning("SLURM_RESTART_COUNT=%d: this job was requeued, so ckpt_path=null resumes as ckpt_path=%s",
                    restarts, AUTO)
        with open_dict(cfg):
            cfg.ckpt_path = AUTO
        return
    named_progress = training_progress(Path(named)) if Path(named).is_file() else None
    found = most_advanced_in(own_checkpoint_dirs(cfg)) if named_progress else None
    if found is not None and found[0][0] > named_progress[0]:
        own = found[1]
        log.warning("SLURM_RESTART_COUNT=%d: this job was requeued and saved %s, further on than ckpt_path=%s it "
                    "was started with: resuming from it", restarts, own, named)
        with open_dict(cfg):
            cfg.ckpt_path = str(own)


def own_checkpoint_dirs(cfg: DictConfig) -> list[tuple[Path, Path]]:
    """(checkpoint folder, run folder) of this run's checkpoints: its own folders, and, for a
    requeued SLURM job whose run folder is named by the start time (Hydra's default, a new one at
    every start), those of every start before it, found by the job id their names carry
    (`${run_dir_suffix:}`): a start stopped before its first save leaves a folder with none, and
    the one before it holds the run. The run goes on in the new folder."""
    dirs = run_checkpoint_dirs(cfg)
    if dirs is None:
        return []
    restarts = slurm_restarts()
    if restarts == 0 or not run_dir_named_by_start_time():
        return [dirs]
    earlier = earlier_starts_of_this_job(*dirs)
    if not earlier:
        # Where Hydra's default puts this task's runs (make train's experiment=quickstart: logs/quickstart/runs)
        log_dir, task = OmegaConf.select(cfg, "paths.log_dir"), cfg.get("task_name")
        runs = Path(log_dir, task, "runs") if log_dir and task else dirs[1].parent
        log.warning("SLURM_RESTART_COUNT=%d: this job was requeued into a new run folder (hydra.run.dir is named by "
                    "the start time), and no run folder beside it records an earlier start of job %s by this command "
                    "(its overrides): nothing to resume from. %s keeps one folder for every start", restarts,
                    os.environ.get("SLURM_JOB_ID"), fixed_slurm_run_dir(runs))
        return [dirs]
    log.info("SLURM_RESTART_COUNT=%d: the earlier starts of this job ran in %s", restarts,
             ", ".join(str(run) for _, run in earlier))
    return [dirs, *earlier]


def earlier_starts_of_this_job(checkpoint_dir: Path, run_dir: Path) -> list[tuple[Path, Path]]:
    """(checkpoint folder, run folder) of every other run folder beside `run_dir` named for this
    SLURM job (`<start time>_slurm-<job id>`), the latest start first."""
    suffix = slurm_job_suffix()
    if not suffix:
        return []
    starts = sorted((folder for folder in run_dir.parent.glob(f"*{suffix}") if folder.is_dir() and folder != run_dir),
                    reverse=True)
    others = [start for start in starts if not started_by_this_command(start)]
    if others:
        # A job script that starts several runs (seeds, say): each resumes its own run only.
        log.info("Passing over %s: run folders of job %s that another command started (their overrides differ)",
                 ", ".join(str(start) for start in others), os.environ.get("SLURM_JOB_ID"))
    starts = [start for start in starts if start not in others]
    # The checkpoint folder where it is inside the run folder; a folder elsewhere is shared already.
    inside = checkpoint_dir.is_relative_to(run_dir)
    return [((start / checkpoint_dir.relative_to(run_dir) if inside else checkpoint_dir), start) for start in starts]


def started_by_this_command(run_dir: Path) -> bool:
    """Whether the run folder `run_dir` records this job's command-line overrides (Hydra's
    overrides.yaml there); True where it records none to compare."""
    hydra_cfg = hydra_config()
    if hydra_cfg is None or not hydra_cfg.get("output_subdir"):
        return True
    recorded = run_dir / hydra_cfg.output_subdir / "overrides.yaml"
    if not recorded.is_file():
        return True
    return list(OmegaConf.load(recorded)) == job_overrides()


def set_aside_abandoned_checkpoints(cfg: DictConfig, further_on: list[Path]) -> Path | None:
    """A run that resumes from a named checkpoint (rolling back to an earlier `iter_*.ckpt` after
    a divergence, or starting over in a folder used before) branches off whatever this run folder
    holds further on. Those files would win `ckpt_path=auto` and a requeued job's choice over the
    new branch's own until it passed them, so the job would go back to the abandoned branch.
    They are moved, not deleted, into a dated `abandoned_*` subfolder of the folder each is in
    (out of auto's sight; a rename within its file system: SLURM's `hpc_ckpt_*` files lie in the
    run folder, the others in the checkpoint folder, which may be on other storage or not made
    yet; `further_on`: `checkpoints_further_on(cfg)`, which the caller read); returns the checkpoint folder's, or the first one made, or None when nothing was moved. Rank 0 only: the other ranks of a
    multi-process launch start after it, or load the named file, which stays.
    A run that starts afresh (no ckpt_path) in a folder that holds checkpoints sets every one of
    them aside: its last.ckpt, periodic files and best_fid.ckpt would replace the earlier run's
    of the same names, and auto would resume whichever run was further on. Its `init_from` among
    them is refused instead: the ranks a DDP launch starts, and a requeued start, read it again."""
    named, dirs = cfg.get("ckpt_path"), run_checkpoint_dirs(cfg)
    if not is_rank_zero() or dirs is None:
        return None
    if named is None:
        moved = checkpoint_candidates([dirs])
        source = cfg.get("init_from")
        if source and Path(source).is_file() and any(path.samefile(source) for path in moved):
            raise ValueError(f"init_from={source} lies in this run's own checkpoint folder, which holds an earlier "
                             f"run's checkpoints that a run starting afresh sets aside (the file would go too, and "
                             f"this run's saves would mix with them): copy it elsewhere and start from the copy, or "
                             f"give this run its own folder (hydra.run.dir=...)")
        if moved and is_multirun() and sweeper_direction() is not None:
            # An Optuna search numbers its jobs' folders from 0 in every sweep, and a study kept
            # in storage continues with new trials: in a fixed hydra.sweep.dir, a trial set aside
            # an earlier sweep's trial's checkpoints and overwrote its results.
            raise ValueError(f"This search's job folder {dirs[1]} holds the checkpoints of an earlier sweep's job: a "
                             f"search numbers its jobs' folders from 0 in every sweep, so its new trials would replace "
                             f"the earlier ones'. Give this search a sweep folder of its own (leave hydra.sweep.dir at "
                             f"its default, named by the time; a study kept in hydra.sweeper.storage continues there)")
        situation = "This run starts afresh in a folder that holds an earlier run's checkpoints"
        purpose = ("they are not mixed with this run's, nor resumed by ckpt_path=auto in its place. To continue that "
                   "run instead, stop this one, move them back and pass ckpt_path=auto")
    else:
        moved = further_on
        situation = f"ckpt_path={named} resumes a run this folder holds further on"
        purpose = "ckpt_path=auto and a requeued job resume the new branch and not the abandoned one"
    if not moved:
        return None
    shelves = set_aside(moved)
    log.warning("%s: moved %s into %s, so that %s", situation, ", ".join(path.name for path in moved),
                " and ".join(map(str, shelves.values())), purpose)
    return shelves.get(dirs[0], next(iter(shelves.values())))


def checkpoints_further_on(cfg: DictConfig) -> list[Path]:
    """The run folder's checkpoints that hold more training than the one `ckpt_path` names: a
    resume from it branches off them."""
    named, dirs = cfg.get("ckpt_path"), run_checkpoint_dirs(cfg)
    return further_on(Path(named), dirs) if named and dirs is not None else []


def further_on(named: Path, dirs: tuple[Path, Path]) -> list[Path]:
    """The run's checkpoints that hold more training than `named` (none where it is no file, or
    not a whole checkpoint: the resume itself names the problem)."""
    named_progress = training_progress(named) if named.is_file() else None
    if named_progress is None:
        return []
    return [path for path in checkpoint_candidates([dirs])
            if not path.samefile(named) and (training_progress(path) or (-1,))[0] > named_progress[0]]


def set_aside(paths: list[Path]) -> dict[Path, Path]:
    """Move each file into a dated `abandoned_*` subfolder of its own folder; folder -> its shelf."""
    name = time.strftime("abandoned_%Y%m%d-%H%M%S")
    shelves = {}
    for path in paths:
        shelf = shelves.setdefault(path.parent, path.parent / name)
        shelf.mkdir(exist_ok=True)
        path.replace(shelf / path.name)
    return shelves


def run_checkpoint_dirs(cfg: DictConfig) -> tuple[Path, Path] | None:
    """The run's checkpoint folder (callbacks.model_checkpoint.dirpath) and run folder, or None
    where no checkpoint folder is configured."""
    checkpointing = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    if not checkpointing.get("dirpath"):
        return None
    return Path(checkpointing.dirpath), Path(cfg.paths.output_dir)


def checkpoint_candidates(folders: list[tuple[Path, Path]]) -> list[Path]:
    """Every checkpoint of the run in these (checkpoint folder, run folder) pairs: the checkpoint
    callback's files and Lightning's SLURM saves, each once (a checkpoint folder may be its run
    folder, or one shared by two starts)."""
    found = []
    for checkpoint_dir, run_dir in folders:
        found += sorted(checkpoint_dir.glob("*.ckpt")) if checkpoint_dir.is_dir() else []
        found += sorted(run_dir.glob("hpc_ckpt_*.ckpt"))
    return list(dict.fromkeys(found))


def read_progress(path: Path) -> tuple[int, bool]:
    """The optimizer steps a checkpoint records and whether it is exact (taken between
    iterations, not inside one); UnreadableCheckpoint for a file that cannot be read whole.
    A read the system refuses (permissions, a network file system's I/O error) is raised as it
    is: passing over a whole last.ckpt would resume from an older file, whose next save would
    overwrite the progress it holds."""
    try:
        checkpoint = load_checkpoint_file(path)
    except RefusedByWeightsOnly as refusal:
        raise ValueError(f"ckpt_path=auto: {refusal}, so the run cannot resume from it safely. Move it out of "
                         f"{path.parent} to resume from the next checkpoint (or to start over)") from refusal
    except OSError as error:   # (UnreadableCheckpoint passes: the caller passes over the file)
        raise OSError(error.errno, f"reading {path} failed ({error.strerror}); the file may be whole, and "
                                   f"passing over it could resume from an older one. Fix the storage or "
                                   f"permissions, or move the file away") from error
    try:
        inexact = (PARTIAL_STEPS_KEY, TORN_STEP_KEY, INSIDE_ITERATION_KEY)
        return int(checkpoint["global_step"]), not any(checkpoint.get(key) for key in inexact)
    except Exception as error:   # a loadable file that is no training checkpoint: reported and passed over
        raise UnreadableCheckpoint(f"{type(error).__name__}: {error}") from error


def training_progress(path: Path) -> tuple[int, bool] | None:
    """`read_progress`, or None for a file that cannot be read whole (a read the system refuses
    is raised, as there)."""
    try:
        return read_progress(path)
    except UnreadableCheckpoint:
        return None


def most_advanced_in(folders: list[tuple[Path, Path]]) -> tuple[tuple[int, bool], Path] | None:
    """(its `training_progress`, path) of the readable checkpoint in these (checkpoint folder, run
    folder) pairs furthest into training; among equals an exact one (not a crash checkpoint
    taken inside an iteration or a step), then the newest file. None where none is readable."""
    readable = []
    for path in checkpoint_candidates(folders):
        try:
            progress = read_progress(path)
        except UnreadableCheckpoint as reason:
            log.warning("ckpt_path=auto: passing over %s, which cannot be read as a checkpoint (%s)", path, reason)
        else:
            readable.append((*progress, path.stat().st_mtime, path))
    if not readable:
        return None
    steps, exact, _, path = max(readable)
    return (steps, exact), path


def run_dir_named_by_start_time() -> bool:
    """Whether this (single, not multirun) job's run folder is named by its start time, as
    Hydra's default `hydra.run.dir` is: every start of the same command gets a new folder."""
    hydra_cfg = hydra_config()
    if hydra_cfg is None or is_multirun():   # a multirun job keeps its folder (submitit pickles it)
        return False
    return "${now:" in str(OmegaConf.to_container(hydra_cfg.run, resolve=False).get("dir", ""))


def fixed_slurm_run_dir(runs: Path) -> str:
    """`hydra.run.dir=<runs>/slurm-$SLURM_JOB_ID` to paste into a job script: a folder Hydra or the
    shell would split (spaces, parentheses, commas, accents) quoted for both, the job id left to
    the shell (inside double quotes it expands it and keeps Hydra's single quotes)."""
    folder = f"{runs}/slurm-"
    if re.fullmatch(r"[A-Za-z0-9_./-]+", folder):
        return f"hydra.run.dir={folder}$SLURM_JOB_ID"
    return f"\"hydra.run.dir='{folder}$SLURM_JOB_ID'\""


def resolve_auto_resume(cfg: DictConfig) -> str | None:
    """The checkpoint `ckpt_path=auto` resumes from, or None to start the run."""
    own = own_checkpoint_dirs(cfg)
    if not own:
        raise ValueError("ckpt_path=auto looks for checkpoints in callbacks.model_checkpoint.dirpath, "
                         "which this config does not set (see conf/callbacks/default.yaml)")
    checkpoint_dir = own[0][0]
    found = most_advanced_in(own)
    unreadable = [] if found is not None else checkpoint_candidates(own)
    if unreadable:
        # Starting here would train from scratch and, save by save, replace what they hold.
        raise ValueError(f"ckpt_path=auto: no checkpoint of this run can be read ({', '.join(map(str, unreadable))}"
                         f"; each is named above). Name one to resume from with ckpt_path=..., or move them out of "
                         f"{checkpoint_dir} to start the run over")
    if found is None:
        log.info("ckpt_path=auto: no checkpoint in %s, starting the run. To resume a stopped job, start it "
                 "again with the same hydra.run.dir.", checkpoint_dir)
        return None
    log.info("ckpt_path=auto: resuming from %s", found[1])
    return str(found[1])
