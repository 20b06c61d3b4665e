"""Reading a training checkpoint, and whether its weights and settings fit the run.

`read_training_checkpoint` is the one reading of a checkpoint file that resumes, `load_model`
(eval, translate) and `init_from` share: weights-only, mapped, with errors that name the setting
and tell a file cut short from a read the system refused.

Resuming a run with other model settings than the run that wrote the checkpoint (another
model, another width or depth) otherwise fails in `load_state_dict` with a list of hundreds of
missing keys or shape mismatches and no word on the cause. The check runs in the model's
`on_load_checkpoint`, which Lightning calls before it loads the weights.
"""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch

from src.data.download import pasteable_override
from src.utils.config_checks import accepted_arguments, recorded_path, require_path
from src.utils.whole_files import whole_zip_archive
from src.utils.nested import flattened
from src.utils.unread_overrides import unread_because


def class_path(instance) -> str:
    """`module.Class` of an object's class: how a checkpoint names it (`model_class`,
    `datamodule_class`) and how a loaded one is compared with the class a run builds."""
    cls = type(instance)
    return f"{cls.__module__}.{cls.__qualname__}"

#: mismatches named in a message; the rest are counted
SHOWN = 3


def run_config_path(ckpt_path: str | Path) -> Path:
    """Where the Hydra config of the run that wrote `<run_dir>/checkpoints/x.ckpt` lives."""
    return Path(ckpt_path).resolve().parent.parent / ".hydra" / "config.yaml"


#: ckpt_path values Lightning resolves itself instead of reading a file
LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


def resolved_by_lightning(ckpt_path: str | Path) -> bool:
    """A `ckpt_path` that is no local file: one of Lightning's keywords or a URL."""
    return str(ckpt_path) in LIGHTNING_CKPT_KEYWORDS or "://" in str(ckpt_path)


def resumed_checkpoint(ckpt_path: str | Path | None) -> dict | None:
    """The checkpoint a run resumes from, mapped (its settings, step and wandb id are read before
    the fit; Lightning loads it again for the weights); None without one, or for one of
    Lightning's keywords or URLs, which it resolves only as the fit starts."""
    if ckpt_path is None or resolved_by_lightning(ckpt_path):
        return None
    return read_training_checkpoint(ckpt_path)


def checkpoint_iteration(checkpoint: dict, model) -> int:
    """The training iterations a checkpoint of `model` records (its `global_step` counts every
    optimizer step, several per iteration)."""
    return int(checkpoint.get("global_step", 0)) // model.optimizer_steps_per_iter


def refused_by_weights_only(error: BaseException) -> bool:
    """Whether `error` is a weights-only load refusing a whole file's objects (a class, a path),
    not a damaged file failing to unpickle."""
    return isinstance(error, pickle.UnpicklingError) and "weights only load failed" in str(error).lower()


def weights_only_refusal(path: str | Path, error: BaseException) -> str:
    """What a weights-only refusal of a whole file says, for the callers' messages."""
    return f"{path} is whole but holds objects a weights-only load refuses ({str(error).splitlines()[0]})"


def system_refused_read(path: str | Path, error: OSError, key: str = "ckpt_path") -> OSError:
    """The error for a checkpoint read the system refused (`error` has an errno): not the file's fault."""
    return OSError(error.errno, f"{key}={path}: the system refused the read ({error.strerror}); the file may be "
                                f"whole: check its permissions and the storage it is on")


def unreadable_checkpoint(ckpt_path: str | Path, reason: str, key: str = "ckpt_path") -> ValueError:
    """The error for a checkpoint file that does not load, named by its setting `key`."""
    return ValueError(f"{key}={ckpt_path} cannot be read as a checkpoint ({reason}); a copy or save that was "
                      f"cut short leaves such a file: use another checkpoint of the run (last.ckpt, iter_*.ckpt)")


def check_checkpoint_file(ckpt_path: str | Path | None, key: str = "ckpt_path") -> None:
    """Before any work: the checkpoint to resume from or load (the setting `key`) exists and is
    a whole file. torch.save writes a zip archive whose directory comes last, so a truncated file
    shows here without reading the weights (torch's and Lightning's own errors name neither file
    nor fix)."""
    if ckpt_path is None:
        return
    require_path(key, ckpt_path)
    if resolved_by_lightning(ckpt_path):
        return
    if not Path(ckpt_path).is_file():
        if str(ckpt_path) == "auto":   # train.py resolves ckpt_path=auto before this check
            raise ValueError(f"{key}=auto: name a checkpoint file here ({key}=path/to/checkpoints/last.ckpt); "
                             f"auto is src/train.py's ckpt_path=auto, which resumes a run from its own folder")
        raise FileNotFoundError(f"{key}={ckpt_path}: no such checkpoint file")
    try:
        whole = whole_zip_archive(ckpt_path)
    except OSError as error:
        raise system_refused_read(ckpt_path, error, key) from error
    if not whole:
        raise unreadable_checkpoint(ckpt_path, "not a complete zip archive, as torch.save writes", key)


class UnreadableCheckpoint(Exception):
    """A file that cannot be read whole as a checkpoint; the message says why."""


class RefusedByWeightsOnly(Exception):
    """A whole checkpoint holding objects that a weights-only load refuses; the message names them."""


def load_checkpoint_file(path: str | Path) -> dict:
    """torch.load of a checkpoint file, mapped on the CPU, weights only. UnreadableCheckpoint
    for a file that cannot be read whole as one, RefusedByWeightsOnly for one holding objects
    that loading would run code for; a read the system refuses (an OSError with an errno:
    permissions, a network file system's I/O error) is raised as it is, as the file may be whole."""
    try:
        whole = whole_zip_archive(path)   # torch.save writes the zip directory last: a cut file has none
    except OSError as error:
        if error.errno is not None:
            raise
        raise UnreadableCheckpoint(f"{type(error).__name__}: {error}") from error
    if not whole:
        raise UnreadableCheckpoint("not a complete zip archive, as torch.save writes")
    try:
        # Mapped rather than read: the file holds the optimizers' moments and the EMA copies too,
        # which on a GPU could take more memory than the model, and read whole, host memory; only
        # what is used is copied.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        if refused_by_weights_only(error):
            raise RefusedByWeightsOnly(weights_only_refusal(path, error)) from error
        raise UnreadableCheckpoint(f"UnpicklingError: {first_line(error)}") from error
    except Exception as error:   # any other reason a file is not a checkpoint (but the system's refusal)
        if isinstance(error, OSError) and error.errno is not None:
            raise
        raise UnreadableCheckpoint(f"{type(error).__name__}: {first_line(error)}") from error


def first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else "no detail"


def read_training_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict:
    """The training checkpoint at `path` (the setting `key`), mapped on the CPU, read with
    `weights_only=True`; a ValueError naming `key` for a file that is no such checkpoint."""
    if resolved_by_lightning(path):
        raise ValueError(f"{key}={path}: name a checkpoint file here ({key}=path/to/checkpoints/last.ckpt); "
                         f"Lightning's keywords and URLs are for resuming training (src/train.py ckpt_path=...)")
    check_checkpoint_file(path, key)
    try:
        checkpoint = load_checkpoint_file(path)
    except UnreadableCheckpoint as reason:
        raise unreadable_checkpoint(path, str(reason), key) from reason
    except RefusedByWeightsOnly as refusal:
        raise ValueError(f"{key}={refusal}: a checkpoint from elsewhere is not loaded with code execution; "
                         f"checkpoints src/train.py writes hold none") from refusal
    except OSError as error:   # not the file's fault: say so
        raise system_refused_read(path, error, key) from error
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise ValueError(f"{key}={path} is not a training checkpoint of this codebase "
                         f"(needs 'state_dict' and 'hyper_parameters')")
    return checkpoint


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def state_dict_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str | None:
    """What keeps the state dict `found` from loading into a model whose own is `expected`
    (keys and shapes), or None when it loads."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [f"{k} ({list(found[k].shape)} in the checkpoint, {list(expected[k].shape)} here)"
                for k in expected if k in found and found[k].shape != expected[k].shape]
    parts = [f"{len(names)} {what}: {_listed(names)}" for what, names in
             (("tensors of other shapes", reshaped), ("tensors missing", missing),
              ("tensors this model does not have", unexpected)) if names]
    parts += [earlier.hint for earlier in NETWORK_SETTINGS_BEFORE if any(earlier.weight in key for key in unexpected)]
    return "; ".join(parts) or None


def check_resume_fits(model: torch.nn.Module, checkpoint: dict, ckpt_path: str | Path | None) -> None:
    """Raise a ValueError naming `ckpt_path` and the run's own config when the checkpoint's
    weights do not fit `model`."""
    mismatch = state_dict_mismatch(model.state_dict(), checkpoint.get("state_dict", {}))
    if mismatch is None:
        return
    config = run_config_path(ckpt_path) if ckpt_path else None
    where = (f" Its run's settings are in {config} (the command-line overrides beside it, in overrides.yaml)."
             if config is not None and config.is_file() else "")
    raise ValueError(
        f"ckpt_path={ckpt_path}: the checkpoint does not fit the {type(model).__name__} this run builds "
        f"({mismatch}). Resuming continues a run, so it needs the model settings of the run that wrote the "
        f"checkpoint (model=..., {model.network_settings()}, data.input_nc/output_nc).{where}")


#: data settings a resume may change and still continue the same run: where the data lives, how
#: it is loaded and the batch size (README "Resuming"). Each model class lists its own such
#: settings (`resumable_settings`: ProGAN's growth, the image pool's size, logging options).
RESUMABLE_DATA_SETTINGS = ("data_dir", "num_workers", "pin_memory", "persistent_workers", "cache_decoded",
                           "eval_batch_size", "batch_size")
#: data settings added since checkpoints were first written, with what a checkpoint without one
#: did: a resume that changes it says so (an older U-GAT-IT run sampled as CycleGAN's loader),
#: with a warning, never a refusal: nobody changed a setting, the config's default did
DATA_SETTINGS_BEFORE_THEM = {"unpaired_sampling": "cyclegan"}
#: speed options that may sit under a per-player key (model.optimizer.players.G.step_in_backward)
RESUMABLE_LEAVES = ("step_in_backward",)
#: settings read only when the networks are built, before a resume loads its weights over them
RESUMABLE_GROUPS = ("model.init.",)


def changed_settings(checkpoint: dict, model_settings: dict, data_settings: dict,
                     model_resumable: tuple[str, ...] = ()) -> list[str]:
    """`key=<checkpoint's> -> <this run's>` for each model or data setting the two runs both have
    and set differently, beyond those a resume may change (`model_resumable`: the model class's
    `resumable_settings`). A setting added to the code since the checkpoint was written is not
    compared (`defaults_changed_since` says those whose earlier behaviour is known)."""
    saved_data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    if isinstance(saved_data.get("csv_path"), str):   # recorded as typed before it was recorded absolute
        saved_data["csv_path"] = recorded_path(saved_data["csv_path"])
    saved = {**flattened(checkpoint.get("hyper_parameters") or {}, ".", "model"), **flattened(saved_data, ".", "data")}
    here = {**flattened(model_settings, ".", "model"), **flattened(data_settings, ".", "data")}
    resumable = ([f"model.{key}" for key in model_resumable]
                 + [f"data.{key}" for key in RESUMABLE_DATA_SETTINGS])
    return [f"{config_key(key)}={saved[key]!r} -> {here[key]!r}" for key in sorted(saved.keys() & here.keys())
            if saved[key] != here[key] and not any(key == s or key.startswith(s + ".") for s in resumable)
            and key.rsplit(".", 1)[-1] not in RESUMABLE_LEAVES and not key.startswith(RESUMABLE_GROUPS)]


def read_by_this_run(entries: list[str], model: torch.nn.Module, data_settings: dict) -> list[str]:
    """The `key=<checkpoint's> -> <this run's>` entries of settings this run reads: one its
    other settings leave unread (data.load_size under data.preprocess=none) changes nothing,
    so it tells of no other run, and passing the checkpoint's value for it would be refused."""
    settings = {"data": data_settings}
    return [entry for entry in entries if not unread_because(entry.split("=", 1)[0].split("."), model, settings)]


def config_key(key: str) -> str:
    """A model setting's key as an override sets it: the model's loss settings are the top-level
    `loss` group's (`model.loss` interpolates it, and Hydra refuses overrides under it)."""
    return key.removeprefix("model.") if key.startswith("model.loss.") else key


#: settings `upgraded_hparams` gives an older checkpoint only to complete its class's signature,
#: which the earlier behaviour it gives leaves unread (running averages sample without a reference
#: batch): not told as a change, as passing their earlier value would be refused as changing nothing
SIGNATURE_ONLY = ("model.reference_batch_size",)


def defaults_changed_since(checkpoint: dict, data_settings: dict, model: torch.nn.Module) -> list[str]:
    """`key=<what the checkpoint's run did> -> <this run's>` for each setting added since the
    checkpoint was written that this run sets otherwise: data settings (DATA_SETTINGS_BEFORE_THEM)
    and the `model`'s settings whose earlier behaviour `upgraded_hparams` knows (an
    older ProGAN kept its optimizers' state across phases, an older DCGAN sampled with running
    statistics: resumed under today's defaults, each changes mid-run)."""
    saved = checkpoint.get("datamodule_hyper_parameters") or {}
    changed = [f"data.{key}={before!r} -> {data_settings[key]!r}" for key, before in DATA_SETTINGS_BEFORE_THEM.items()
               if saved and key not in saved and key in data_settings and data_settings[key] != before]
    saved_model = checkpoint.get("hyper_parameters") or {}
    recorded = flattened(saved_model, ".", "model")
    before = flattened(upgraded_hparams(saved_model, checkpoint, type(model)), ".", "model")
    here = flattened(dict(model.hparams), ".", "model")
    changed += [f"{config_key(key)}={before[key]!r} -> {here[key]!r}"
                for key in sorted(before.keys() - recorded.keys())
                if key in here and here[key] != before[key] and key not in SIGNATURE_ONLY]
    return changed


def check_resume_settings(ckpt_path: str | Path, checkpoint: dict, model: torch.nn.Module,
                          data_settings: dict, must_match: bool) -> str | None:
    """Compare the settings of the run that wrote `ckpt_path` with this run's (`model`'s
    hyperparameters, `data_settings`). With `must_match`
    (`ckpt_path=auto`: the checkpoint was found, not named) a difference raises: the run folder
    holds another run, as when a sweep started again with other values reuses job folders by
    number, and resuming would credit that run's training to these settings. Otherwise the
    differences are returned for a warning (None when there are none), and so, whatever
    `must_match`, are the settings added since whose new defaults change the run
    (`defaults_changed_since`)."""
    if checkpoint.get("model_class") in (None, class_path(model)):
        # (a checkpoint of another model is refused for its networks, a clearer reason)
        refuse_another_schedule_unit(ckpt_path, checkpoint, dict(model.hparams))
    weights = checkpoint.get("state_dict") or {}
    if any(earlier.weight in name for earlier in NETWORK_SETTINGS_BEFORE for name in weights):
        # Networks of an earlier default: refused here, naming the setting that builds them,
        # rather than after a warning that the run goes on with this run's settings.
        check_resume_fits(model, checkpoint, ckpt_path)
    changed = read_by_this_run(changed_settings(checkpoint, dict(model.hparams), data_settings,
                                                type(model).resumable_settings), model, data_settings)
    defaulted = read_by_this_run(defaults_changed_since(checkpoint, data_settings, model), model, data_settings)
    if not changed:
        if defaulted:
            return (f"ckpt_path={ckpt_path} is of a run from before settings this run sets otherwise than that run did "
                    f"({'; '.join(defaulted)}): the run goes on with this run's values (pass the earlier ones to "
                    "continue as it trained)")
        return None
    listed = "; ".join(changed + defaulted)
    if must_match:
        # (naming it continues it only where it would load: its networks fit this run's, and the
        # model takes its run on under these settings)
        mismatch = state_dict_mismatch(model.state_dict(), weights)
        refusal = model.resume_refusal(checkpoint) if mismatch is None else None
        if mismatch is not None:
            named = f"; its networks do not fit this run's ({mismatch}), so it cannot continue under these settings"
        elif refusal is not None:
            named = f"; named, it is refused too: {refusal}"
        else:
            named = (f", or name the checkpoint ({pasteable_override('ckpt_path', ckpt_path, prefix='')}) to "
                     f"continue it with the new settings")
        raise ValueError(
            f"ckpt_path=auto found {ckpt_path}, written by a run with other settings ({listed}). Resuming would "
            f"continue that run under these settings: this run folder holds another run (a sweep started again with "
            f"other values reuses its job folders by number). Give this run its own folder (hydra.run.dir, "
            f"hydra.sweep.dir){named}. Where instead this code's defaults changed since that run, pass that run's "
            f"values listed above to continue it as it trained")
    return (f"ckpt_path={ckpt_path} was written with other settings ({listed}): the run goes on with this run's "
            f"settings, except that the optimizers and learning-rate schedules continue from their saved states "
            f"(a new model.optimizer.lr scales their restored rates; another model.lr_schedule.policy shapes the "
            f"rate from the saved schedule's count on)")


def refuse_another_schedule_unit(ckpt_path: str | Path, checkpoint: dict, hparams: dict) -> None:
    """A resume restores each schedule's count into the schedule this run builds; counted in
    other units, it means something else (CycleGAN's 120 epochs read as 120 iterations: its
    decay over 80 iterations later, and every rate after that 0)."""
    saved, ours = (checkpoint.get("hyper_parameters") or {}).get("lr_schedule"), hparams.get("lr_schedule")
    if not (isinstance(saved, Mapping) and isinstance(ours, Mapping)):
        return
    before, now = saved.get("unit", "epoch"), ours.get("unit", "epoch")
    if before != now and not saved.get("policy") == ours.get("policy") == "constant":   # (a count read by nothing)
        raise ValueError(f"ckpt_path={ckpt_path} counts its learning-rate schedule in {before}s "
                         f"(model.lr_schedule.unit={before}), and this run in {now}s: its saved count would be read "
                         f"as {now}s. Resume with model.lr_schedule.unit={before}, or start from its weights with a "
                         f"schedule of this run's ({pasteable_override('init_from', ckpt_path, prefix='')}, no ckpt_path)")


def check_resume_seed(ckpt_path: str | Path, checkpoint: dict, seed: int, must_match: bool) -> str | None:
    """`check_resume_settings` for the run's `seed` (a chosen one: a drawn seed differs on every
    start): with `must_match` a checkpoint of another seed's run is refused (a sweep over
    seeds started again reuses job folders by number, and the over-seeds table would credit
    seed 0's run to seed 3); a named one gets a warning, as the resume continues its run's
    random streams and data order whatever the seed says. None where the seeds agree, or the
    checkpoint predates the record."""
    saved = checkpoint.get("run_seed")
    if saved is None or int(saved) == int(seed):
        return None
    if must_match:
        raise ValueError(
            f"ckpt_path=auto found {ckpt_path}, written by the run of seed={saved}, and this run is seed={seed}: "
            f"this run folder holds another run (a sweep over seeds started again reuses its job folders by number). "
            f"Give this run its own folder (hydra.run.dir, hydra.sweep.dir), or pass seed={saved} to continue that run")
    return (f"ckpt_path={ckpt_path} is of the run of seed={saved}: the resume continues its random streams and data "
            f"order, so seed={seed} changes nothing but the record")


class NetworkSettingBefore(NamedTuple):
    """A network setting whose earlier form older checkpoints hold without naming it."""
    weight: str     #: a part of a weight's name that only the earlier form has
    networks: str   #: the `_target_` (or its start) of the networks that take the setting
    setting: str
    earlier: str    #: the setting's value that builds the earlier form
    hint: str       #: what a refused resume says, with the overrides that build it


NETWORK_SETTINGS_BEFORE = (
    # U-GAT-IT's PyTorch port's two CAM classifiers (src/nets/cam.py); the default is now the paper's shared one
    NetworkSettingBefore(".cam.classifier.gap_fc.", "src.nets.ugatit.UGATIT", "cam_classifier", "separate",
                         "its CAM has two classifiers, GAP's and GMP's (U-GAT-IT's PyTorch port): build them with "
                         "model.generator.cam_classifier=separate model.global_discriminator.cam_classifier=separate "
                         "model.local_discriminator.cam_classifier=separate"),
    # NICE-GAN's attention fusion conv spectrally normalised (src/nets/nicegan.py); now the authors' plain one
    NetworkSettingBefore(".attention.fuse.weight_orig", "src.nets.nicegan.NICEGANDiscriminator", "attention",
                         "normalised", "its discriminators' attention fusion conv is spectrally normalised "
                         "(NICE-GAN's attention before the authors' code's became the default): build it with "
                         "model.discriminator.attention=normalised"),
)


def upgraded_hparams(hparams: dict, checkpoint: dict, model_class: type) -> dict:
    """Hyperparameters of an older checkpoint in today's names. A setting is added only for a
    `model_class` that takes it (checkpoints record every setting their class takes, so one
    lacking it is older than the setting), and U-GAT-IT's classifiers only for weights that
    hold two: a newer model that reuses a name (`latent_dim`, `phase_images`, U-GAT-IT's
    networks) without the setting is left as it is.
    - ProGAN/StyleGAN counted their phases in iterations at one batch size (`phase_iters`); the
      same schedule is `phase_images` = phase_iters x the run's data.batch_size, with no
      per-resolution tables.
    - The noise models (`latent_dim`) sampled with their batch norm's running averages before
      `test_time_batch_stats` existed, and keep doing so.
    - ProGAN/StyleGAN (`phase_images`) kept their optimizers' state across phases before
      `reset_optimizers_per_phase` existed.
    - U-GAT-IT's networks had two CAM classifiers (GAP and GMP, the PyTorch port's) before
      `cam_classifier` existed; its default is now the paper's shared one.
    - NICE-GAN's discriminators normalised their attention's fusion conv and rescaled by the
      normalised weight before `attention` existed; its default is now the authors' code's."""
    upgraded = dict(hparams)
    taken = accepted_arguments(model_class)   # None: its arguments cannot be read

    def adds(*keys: str) -> bool:
        return all(key not in upgraded for key in keys) and (taken is None or all(key in taken for key in keys))

    weights = checkpoint.get("state_dict") or {}
    for earlier in NETWORK_SETTINGS_BEFORE:   # (the networks' nodes are the model's hyperparameters)
        if any(earlier.weight in name for name in weights):
            for key, node in upgraded.items():
                if isinstance(node, dict) and str(node.get("_target_", "")).startswith(earlier.networks) \
                        and earlier.setting not in node:
                    upgraded[key] = {**node, earlier.setting: earlier.earlier}
    if "phase_iters" in upgraded and (taken is None or "phase_iters" not in taken):
        batch = int((checkpoint.get("datamodule_hyper_parameters") or {}).get("batch_size", 16))
        upgraded.update({"phase_images": int(upgraded.pop("phase_iters")) * batch, "batch_size": batch,
                         "batch_sizes": {}, "lr_by_resolution": {}, "start_resolution": 4})
    if "phase_images" in upgraded and adds("reset_optimizers_per_phase"):
        upgraded["reset_optimizers_per_phase"] = False
    if "latent_dim" in upgraded and adds("test_time_batch_stats", "reference_batch_size"):
        upgraded.update({"test_time_batch_stats": False, "reference_batch_size": 64})   # (64: SIGNATURE_ONLY)
    return upgraded
