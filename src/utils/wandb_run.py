"""Who a training run is in wandb: its name, group and tags, and the run a resume continues.

Filled into every WandbLogger node of the logger config whose value is null (an explicit value
in the config or on the command line wins):
- name:  `<model>-<data>[-<overrides>]`, the job's command-line overrides minus those that say
  where rather than what (paths, keys ending in _dir or _path, absolute or ~ paths, ckpt_path,
  init_from, model=, data=): jobs of one sweep differ by name (one over 128 characters is cut and
  ends in a digest of the whole, so they still do);
- group: `<task_name>` for a single run, `<task_name>/<sweep dir name>` for the jobs of a
  multirun, so a sweep's runs sit together and compare side by side;
- tags:  `tags` of the config plus the chosen experiment, hparams_search and debug configs, and
  `multirun` for sweep jobs;
- id:    on resume (`ckpt_path`), the run id stored in the checkpoint (`WandbRunIdCallback`), so
  the resumed run continues the same wandb run (WandbLogger passes `resume="allow"`); but a
  resume that branches off its run folder's later checkpoints (rolling back to an `iter_*.ckpt`)
  starts a new wandb run, `<name>-from-<iteration>` in the same group: wandb cannot cut a run's
  history back (its rewind is a preview feature), so the branch's rows would follow the abandoned
  ones, the charts going back to the branch's iteration;
- mode:  WANDB_MODE as it is when the run starts (wandb reads it once per process, so the jobs
  of a multirun or a notebook would otherwise all keep the first run's mode).
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from src.utils.hydra_runtime import hydra_config, is_multirun, job_overrides, override_key

log = logging.getLogger(__name__)

WANDB_LOGGER_TARGETS = ("pytorch_lightning.loggers.WandbLogger", "pytorch_lightning.loggers.wandb.WandbLogger",
                        "lightning.pytorch.loggers.WandbLogger", "lightning.pytorch.loggers.wandb.WandbLogger")
#: Checkpoint key of the wandb run id.
CHECKPOINT_KEY = "wandb_run_id"
#: the run's name, group and tags, beside its id: a resume keeps them (a sweep's job resumed as a
#: single run derived a plain group and no `multirun` tag, and wandb replaced the run's tags)
IDENTITY_KEY = "wandb_run_identity"
IDENTITY_FIELDS = ("name", "group", "tags")
#: Overrides left out of run names: where things are, not what is trained.
NAME_EXCLUDED_PREFIXES = ("paths.", "ckpt_path", "init_from=", "hydra", "model=", "data=", "logger",
                          "trainer.devices", "trainer.num_nodes")
#: Config groups whose choice becomes a tag.
TAGGED_GROUPS = ("experiment", "hparams_search", "debug")
#: Keys whose overrides are left out of run names wherever they are: folders and files
#: (data.data_dir, data.csv_path), which would fill the name and say nothing about the run.
NAME_EXCLUDED_KEY_SUFFIXES = ("_dir", "_path")
MAX_NAME_LENGTH = 128


def _names_the_run(override: str) -> bool:
    """Whether an override says what is trained rather than where things are."""
    if override.lstrip("+~").startswith(NAME_EXCLUDED_PREFIXES):
        return False
    if override_key(override).endswith(NAME_EXCLUDED_KEY_SUFFIXES):
        return False
    value = override.partition("=")[2].strip("'\"")
    return not (os.path.isabs(value) or value.startswith("~"))   # a path under a key of another name


def run_name(cfg: DictConfig, overrides: list[str]) -> str:
    kept = [o.lstrip("+~") for o in overrides if _names_the_run(o)]
    parts = [str(cfg.get("model_name", "model")), str(cfg.data.get("name", "data"))]
    if kept:
        parts.append(",".join(kept))
    name = "-".join(parts)
    if len(name) <= MAX_NAME_LENGTH:
        return name
    # Cut short, the name lost the overrides at its end, often the swept one (`seed=0,1,2` after
    # the fixed settings), and the sweep's jobs shared one name: a digest of the whole tells them apart.
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[:MAX_NAME_LENGTH - len(digest) - 1]}~{digest}"


def run_group(cfg: DictConfig) -> str:
    task = str(cfg.get("task_name", "train"))
    if is_multirun():
        return f"{task}/{Path(hydra_config().sweep.dir).name}"
    return task


def run_tags(cfg: DictConfig) -> list[str]:
    tags = [str(t) for t in (cfg.get("tags") or [])]
    hydra_cfg = hydra_config()
    if hydra_cfg is not None:
        choices = hydra_cfg.runtime.choices
        tags += [f"{group}:{choices[group]}" for group in TAGGED_GROUPS if choices.get(group) not in (None, "null")]
    if is_multirun():
        tags.append("multirun")
    return list(dict.fromkeys(tags))  # unique, in order


def is_wandb_node(node) -> bool:
    return isinstance(node, DictConfig) and node.get("_target_") in WANDB_LOGGER_TARGETS


def logs_to_wandb(logger_cfg: DictConfig | None) -> bool:
    return bool(logger_cfg) and any(is_wandb_node(node) for node in logger_cfg.values())


def with_wandb_identity(logger_cfg: DictConfig | None, cfg: DictConfig, checkpoint: dict | None = None,
                        branches_at: int | None = None) -> DictConfig | None:
    """A copy of the logger config with name, group, tags and (resuming `checkpoint`) the id of
    the wandb run it was written under filled in for wandb; resuming, the name, group and tags
    are that run's too (a value the logger config sets wins either way). `branches_at`: the
    iteration of a checkpoint the run had trained past (its folder holds later ones), whose
    resume gets a new wandb run of the same group, named for the branch."""
    if not logs_to_wandb(logger_cfg):
        return logger_cfg
    logger_cfg = OmegaConf.create(OmegaConf.to_container(logger_cfg, resolve=True))
    derived = {"name": run_name(cfg, job_overrides(cfg)), "group": run_group(cfg), "tags": run_tags(cfg),
               "id": (checkpoint or {}).get(CHECKPOINT_KEY), "mode": os.environ.get("WANDB_MODE")}
    continued = derived["id"]
    if continued:
        derived.update({key: value for key, value in ((checkpoint or {}).get(IDENTITY_KEY) or {}).items()
                        if key in IDENTITY_FIELDS and value is not None})
        if branches_at is not None:
            derived.update({"id": None, "name": f"{derived['name']}-from-{branches_at}"})
    with open_dict(logger_cfg):
        for node in logger_cfg.values():
            if is_wandb_node(node):
                for key, value in derived.items():
                    if node.get(key) is None and value is not None:
                        node[key] = value
                if continued and branches_at is not None and node.get("id") is None:
                    log.warning("This resume branches off its run at iteration %d, and the wandb run %s logged past "
                                "it: wandb cannot cut a run's history back, so the branch logs into a new wandb run, "
                                "%s, in the same group. logger.wandb.id=%s continues that run instead (its charts "
                                "then go back to iteration %d)", branches_at, continued, node.get("name"), continued,
                                branches_at)
                if node.get("id") and (node.get("offline") or node.get("mode") == "offline"):
                    # wandb ignores `resume` offline: it writes a second offline run of this id,
                    # and a plain `wandb sync` of it replaces the first one's history.
                    log.warning("wandb is offline, so this resume writes a new offline run with the id %s of the run "
                                "it continues: upload the earlier run first, then this one with `wandb sync --append "
                                "<its offline-run folder>`, or resume online (WANDB_MODE=online) to continue that "
                                "run directly", node.id)
    return logger_cfg


def without_unset_anonymous(loggers: list) -> list:
    """`loggers`, each WandbLogger's `anonymous` left out of its wandb.init arguments where unset:
    Lightning passes it as None, and wandb (0.31) warns at every run that the setting has no
    effect, whatever its value."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        init = getattr(logger, "_wandb_init", None) if isinstance(logger, WandbLogger) else None
        if init is not None and "anonymous" in init and init["anonymous"] is None:
            del init["anonymous"]
    return loggers


class WandbRunIdCallback(pl.Callback):
    """Writes the wandb run id, name, group and tags into every checkpoint, for
    `with_wandb_identity` to resume that run as it was."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            # (WANDB_MODE=disabled: a made-up id of a run that never existed, which a later resume
            # with wandb on would have "continued"; the run is read as started, not started here)
            started = getattr(logger, "_experiment", None)
            if isinstance(logger, WandbLogger) and logger.version and not getattr(started, "disabled", False):
                checkpoint[CHECKPOINT_KEY] = str(logger.version)
                # What the logger was made with (Lightning keeps wandb.init's arguments): plain
                # values, so the checkpoint still loads weights-only.
                made_with = getattr(logger, "_wandb_init", {})
                checkpoint[IDENTITY_KEY] = {
                    key: list(map(str, made_with[key])) if key == "tags" else str(made_with[key])
                    for key in IDENTITY_FIELDS if made_with.get(key) is not None}


def current_wandb_run():
    """The process' wandb run in progress (None without one, or where wandb is not loaded)."""
    wandb = sys.modules.get("wandb")
    return wandb.run if wandb is not None else None


def finish_wandb_run(exit_code: int = 0, preempted: bool = False, keep=None) -> None:
    """End the process' wandb run: the next job of a multirun would otherwise be logged into it
    (WandbLogger reuses a run in progress). With the process' exit status, so a run stopped by
    an error is not shown as finished, and one stopped by SIGTERM (a cluster's preemption or
    time limit) is shown as preempted. `keep`: a run the caller had started before the training
    (a notebook's `wandb.init()`), which is the caller's to end."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None and wandb.run is not keep:
        run_folder = getattr(wandb.run, "dir", None)
        try:
            if preempted:
                wandb.run.mark_preempting()
            wandb.finish(exit_code=exit_code)
        except Exception as error:   # (in the run's `finally`: it would replace the run's own error or result)
            log.warning("wandb could not finish its run (%s: %s): the checkpoints and records are written; the "
                        "dashboard may lack the run's end (`wandb sync` its folder, %s)", type(error).__name__, error,
                        run_folder)
