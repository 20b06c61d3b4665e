"""Load a model (translator or noise model) from a training checkpoint, for translation,
export and evaluation.

Lightning checkpoints hold the hyperparameters and the weights but not the model class; ours
record it (`checkpoint["model_class"]`, written by the model). For a checkpoint without that
record (written before it existed), the class comes from the run's Hydra config
(`<run_dir>/.hydra/config.yaml`, `model._target_`, two levels above
`<run_dir>/checkpoints/x.ckpt`) when there is one; otherwise every known model class whose
constructor accepts the stored hyperparameters is built and the one whose state dict has
exactly the checkpoint's keys and shapes is taken.

The file is read with `weights_only=True` (a checkpoint may come from anywhere). The model is
built from the hyperparameters and given the weights directly instead of through
`load_from_checkpoint`, whose resume hooks would reset the caller's RNG streams to the training
run's and refill image pools that inference never uses.
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from src.callbacks.ema import averaged_state_dict
from src.utils.hydra_runtime import job_overrides
from src.utils.unread_overrides import refuse_added_keys
from src.utils.config_checks import accepted_arguments, require_bool
from src.models.base import AdversarialModel
from src.models.checkpoint_fit import (check_checkpoint_file, checkpoint_iteration, class_path, read_training_checkpoint,
                                       run_config_path, state_dict_mismatch, upgraded_hparams)

log = logging.getLogger(__name__)


def check_checkpoint_settings(cfg) -> None:
    """eval.py's and translate.py's checkpoint settings, before any work: `ckpt_path` names a
    whole checkpoint file, `use_ema` is true or false (a string like "no" read as true), and no
    `+key` adds a key nothing reads (`+use_emma=false`)."""
    refuse_added_keys(job_overrides(cfg), cfg)
    if not cfg.get("ckpt_path"):
        raise ValueError("ckpt_path is required: ckpt_path=path/to/checkpoints/last.ckpt (written by src/train.py)")
    check_checkpoint_file(cfg.ckpt_path)
    require_bool("use_ema", cfg.get("use_ema", True))


def recorded_checkpoint_path(ckpt_path: str | Path) -> str:
    """How a record of what was evaluated or translated names the checkpoint: absolute (the
    record outlives the directory the command ran in), a URL as given."""
    return str(ckpt_path) if "://" in str(ckpt_path) else str(Path(ckpt_path).resolve())

MODELS_PACKAGE = "src.models."
NETS_PACKAGE = "src.nets."
#: where the DataModule classes a checkpoint may name live
DATA_PACKAGE = "src.data."
#: what a `_target_` in data settings read from a file may name (refuse_foreign_targets' arguments)
DATA_CLASSES = (DATA_PACKAGE, pl.LightningDataModule, "data", "DataModule")
#: the keys Hydra builds a call from, besides `_target_`
HYDRA_CALL_KEYS = ("_args_", "_partial_", "_recursive_", "_convert_")
KNOWN_MODEL_CLASSES = (
    "src.models.cyclegan.CycleGAN",
    "src.models.pix2pix.Pix2Pix",
    "src.models.ugatit.UGATIT",
    "src.models.nicegan.NICEGAN",
    "src.models.infogan.InfoGAN",
    "src.models.progan.ProGAN",
    "src.models.rgan.RGAN",
    "src.models.noise_gan.NoiseGAN",
)


def recorded_class(target: str, where: str, package: str, base: type, kind: str, member: str) -> type:
    """The class named `target` by `where` (a checkpoint, or its run's config), if it is a
    subclass of `base` in `package`: the name travels with the file and is no more trusted than
    it, and naming a class imports its module."""
    if not str(target).startswith(package):
        raise ValueError(f"{where}: its {kind} class {target} is not a {member} of {package[:-1]}")
    cls = hydra.utils.get_class(target)
    # Defined there, not only reached from there: Hydra follows attributes, so
    # src.nets.<module>.nn.<class> names a torch class through a module's import.
    if not (isinstance(cls, type) and issubclass(cls, base) and cls.__module__.startswith(package)):
        raise TypeError(f"{where}: its {kind} class {target} is not a {member} of this codebase")
    return cls


def refuse_foreign_targets(settings, where: str, package: str, base: type, kind: str, member: str,
                           node: str = "") -> None:
    """Every `_target_` in `settings` (nested mappings and lists, read from a checkpoint or its
    run's config) names a `base` subclass in `package` (`recorded_class`), and no other key of
    Hydra's (`_args_`, `_partial_`, ...) is there. Building the settings calls what they name with
    what they hold: a file from elsewhere could otherwise run any function on loading, past
    `weights_only`, which guards the unpickling only."""
    if isinstance(settings, Mapping):
        for key, value in settings.items():
            name = f"{node}.{key}" if node else str(key)
            if key == "_target_":
                recorded_class(value, f"{where} ({name})", package, base, kind, member)
            elif key in HYDRA_CALL_KEYS:
                raise ValueError(f"{where}: its settings hold {name}, which Hydra would build a call from: settings "
                                 f"read from a file may name {kind} classes (_target_) and their arguments only")
            else:
                refuse_foreign_targets(value, where, package, base, kind, member, name)
    elif isinstance(settings, Sequence) and not isinstance(settings, str):
        for index, value in enumerate(settings):
            refuse_foreign_targets(value, where, package, base, kind, member, f"{node}[{index}]")


def model_class(target: str, where: str) -> type[AdversarialModel]:
    """The model class named `target` by `where` (a checkpoint, or its run's config)."""
    return recorded_class(target, where, MODELS_PACKAGE, AdversarialModel, "model", "model")


def model_class_from_run_config(ckpt_path: str | Path) -> type[AdversarialModel] | None:
    """The `model._target_` class of the checkpoint's run, or None without a run config."""
    config_path = run_config_path(ckpt_path)
    if not config_path.is_file():
        return None
    target = OmegaConf.select(OmegaConf.load(config_path), "model._target_")
    return None if target is None else model_class(target, f"{config_path} (model._target_)")


def check_data_loadable(data_cfg) -> None:
    """The run's DataModule is one of src/data/, asked when the run starts: eval.py rebuilds the
    data from the run's config or checkpoint, and builds no other (a class elsewhere trained,
    then every evaluation of the run was refused)."""
    try:
        refuse_foreign_targets(OmegaConf.to_container(data_cfg, resolve=True), "The run's data config", *DATA_CLASSES,
                               "data")
    except (ValueError, TypeError) as error:
        raise ValueError(f"{error}: eval.py could not rebuild the run's data (it builds DataModules of "
                         f"{DATA_PACKAGE[:-1]} only). Move the class there") from error


def check_loadable(model: AdversarialModel) -> None:
    """What eval.py, translate.py, init_from and a resume will ask of this run's checkpoints,
    asked when the run starts, not after its training: the model's class is one of src/models/,
    its networks' of src/nets/ (a checkpoint builds nothing else, `refuse_foreign_targets`), and
    its saved hyperparameters hold every argument its constructor needs (a subclass's own,
    unsaved, made every load fail as "the file was altered")."""
    name = type(model).__name__
    try:
        model_class(class_path(model), "model._target_")
        refuse_foreign_targets(dict(model.hparams), f"{name}'s settings", NETS_PACKAGE, nn.Module, "network",
                               "network")
    except (ValueError, TypeError) as error:
        raise ValueError(f"{error}: the run's checkpoints could not be loaded (eval.py, translate.py and "
                         f"init_from build models of {MODELS_PACKAGE[:-1]} and networks of {NETS_PACKAGE[:-1]} only). "
                         f"Move the class there") from error
    reason = _hparams_mismatch(type(model), dict(model.hparams))
    if reason is not None:
        raise ValueError(f"{name}'s saved hyperparameters cannot build it again ({reason}): its checkpoints are "
                         f"loaded by building it from them. Save every argument of {name}.__init__ "
                         f"(self.save_hyperparameters)")


def _hparams_mismatch(cls: type, hparams: dict) -> str | None:
    """Why `cls` cannot be built from the stored hyperparameters, or None when it can."""
    try:
        inspect.signature(cls.__init__).bind(None, **hparams)
    except TypeError as error:
        return str(error)
    return None


def _build(cls: type[AdversarialModel], hparams: dict, settings: dict) -> AdversarialModel:
    # Building initialises weights randomly (then overwritten): keep the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        return cls(**{**hparams, **settings})


def build_settings(cls: type, device_type: str) -> dict:
    """Settings a checkpoint does not record (speed options) for the kind of device the model will
    run on ("cpu", "cuda", "mps", an accelerator's name): off the CPU, none of `fast_conv`'s
    rewrites, which are CPU convolutions (building them would compile the C kernels, or warn where
    they cannot be, as a Mac's clang, which refuses OpenMP, for layers that then defer to torch's)."""
    if device_type != "cpu" and "fast_conv" in (accepted_arguments(cls) or ()):
        return {"fast_conv": False}
    return {}


def model_for_device(model_cfg, device_type: str):
    """The model a `model` config builds, with the `build_settings` of the kind of device it will
    run on (what a training run and a benchmark row build)."""
    settings = build_settings(hydra.utils.get_class(model_cfg._target_), device_type)
    return hydra.utils.instantiate(model_cfg, _recursive_=False, **settings)


def load_model(ckpt_path: str | Path, map_location: str | torch.device = "cpu", use_ema: bool = True) -> AdversarialModel:
    """The model saved in a Lightning checkpoint, on `map_location`, in eval mode.

    With `use_ema` (the default) and a run that kept an EMA of its generators, the averaged
    weights replace the trained ones: they are what the run sampled and evaluated with.
    `model.loaded_weights` says which came in: "ema" or "trained".
    """
    checkpoint = read_training_checkpoint(ckpt_path)   # as given: a Path would turn a URL's // into /
    path = Path(ckpt_path)
    state_dict = checkpoint["state_dict"]
    averaged = averaged_state_dict(checkpoint) if use_ema else None
    if averaged is not None:
        log.info("Using the EMA weights of %s", path)
        state_dict = averaged

    refuse_foreign_targets(checkpoint["hyper_parameters"], f"ckpt_path={ckpt_path}", NETS_PACKAGE, nn.Module,
                           "network", "network")
    recorded = checkpoint.get("model_class")
    if recorded is not None:
        configured = model_class(recorded, f"ckpt_path={ckpt_path}")
    else:
        configured = model_class_from_run_config(path)
    if configured is not None:
        candidates = [configured]
    else:
        candidates = [hydra.utils.get_class(name) for name in KNOWN_MODEL_CLASSES]
    tried = []
    for cls in candidates:
        hparams = upgraded_hparams(dict(checkpoint["hyper_parameters"]), checkpoint, cls)
        reason = _hparams_mismatch(cls, hparams)
        model = cause = None
        if reason is None:
            try:   # a subclass passing **kwargs on binds anything: its parent's __init__ decides
                model = _build(cls, hparams, build_settings(cls, torch.device(map_location).type))
            except TypeError as error:
                reason, cause = str(error), error   # kept: the error may be a constructor's own bug
        if model is not None and set(model.hparams) != set(hparams):
            # A subclass with settings of its own (ProGAN's phase_images) fills them with its
            # defaults from a parent's checkpoint: not the class that saved it.
            reason = f"its hyperparameters {sorted(set(model.hparams) ^ set(hparams))} differ"
            if added := sorted(set(model.hparams) - set(hparams)):
                # (a setting a researcher added to the class since: every older file of it failed here)
                reason += (f"; the class takes {added}, which the file does not record: a setting added to the class "
                           f"after the file was written loads older files by a rule in upgraded_hparams "
                           f"(src/models/checkpoint_fit.py) giving the value the older code behaved as")
            model = None
        if model is not None:
            reason = state_dict_mismatch(model.state_dict(), state_dict)
        if reason is not None and recorded is not None:
            raise ValueError(f"ckpt_path={ckpt_path}: it records model class {recorded}, but its hyperparameters or weights are not "
                             f"those of that model ({reason}): the file was altered, or the class changed since") from cause
        if reason is not None and configured is not None:
            raise ValueError(f"ckpt_path={ckpt_path}: its run's config {run_config_path(path)} names "
                             f"model._target_={cls.__module__}.{cls.__name__}, but the checkpoint is not one of "
                             f"that model ({reason}). Was it moved into another run's folder? Load it from a "
                             f"folder without .hydra/ to have the class found from its weights") from cause
        if reason is not None:
            tried.append(f"{cls.__name__} (other {'hyperparameters' if model is None else 'weights'})")
            continue
        model.load_state_dict(state_dict, strict=True)
        model.training_data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
        model.training_data_class = checkpoint.get("datamodule_class")
        model.loaded_weights = "ema" if averaged is not None else "trained"
        # Which state of a run this is (last.ckpt moves on while it trains): eval's metrics.json and
        # translate's translation.json say it.
        model.loaded_iteration = checkpoint_iteration(checkpoint, model)
        model.loaded_class_folders = checkpoint.get("class_folders")
        model.model_name = checkpoint.get("model_name")
        log.info("Loaded %s from %s (iteration %s)", model.display_name(), path, model.loaded_iteration)
        return model.to(map_location).eval()
    raise ValueError(f"ckpt_path={ckpt_path}: no model class fits this checkpoint; tried {', '.join(tried)}")
