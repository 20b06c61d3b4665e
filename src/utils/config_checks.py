"""Checks of config values that name the key and what it needs, and their plain form."""
from __future__ import annotations

import collections.abc
import inspect
import os
import types
import typing
from pathlib import Path

import hydra
import numpy as np
from omegaconf import Container, ListConfig, OmegaConf

from src.data.download import pasteable_override
from src.utils.hydra_runtime import hydra_config, hydra_run_dir, is_multirun


def recorded_path(path: str) -> str:
    """A file or folder setting as records keep it: absolute, `~` expanded (a record outlives
    the directory its command ran in)."""
    return os.path.abspath(os.path.expanduser(path))


def to_plain(value: typing.Any) -> typing.Any:
    """A value as the types a `weights_only=True` load takes, which every checkpoint must (its
    hyperparameters go into it): an OmegaConf container (DictConfig, ListConfig) as a plain dict
    or list, a path (a config or DataModule built in Python: `data_dir=Path(...)`) as a string, a
    numpy scalar as a Python number, inside dicts, lists and tuples too; anything else as it is."""
    if isinstance(value, Container):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(to_plain(item) for item in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def is_number(value) -> bool:
    """An int or float, not a bool (YAML's `true` is an int to Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value) -> bool:
    """An int, not a bool (YAML's `true` is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def require_int(key: str, value, least: int = 1, allow_none: bool = False, why: str = "") -> None:
    """ValueError unless `value` is an int >= `least` (a bool is not: YAML's `true` would pass
    as 1), or None when `allow_none`; `why` is appended to the message."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        need = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise ValueError(f"{key}={value!r} must be {need}{' or null' if allow_none else ''}{why}")


def require_path(key: str, value) -> None:
    """ValueError unless `value` is a file or folder name: Hydra reads `output=2024` as a number
    and `input=true` as a boolean, which Path() then refused with a TypeError naming no setting."""
    if not isinstance(value, (str, os.PathLike)):
        kind = "true or false" if isinstance(value, bool) else "a number"
        raise ValueError(f"{key}={value!r}: Hydra read the name as {kind}; quote it to keep it a name, as "
                         f"{pasteable_override(key, str(value), prefix='')} (the name as you wrote it)")


def home_expanded(cfg, keys) -> typing.Any:
    """`cfg` with a leading `~` of each file setting in `keys` expanded (a copy where one was): a
    `~` that reaches the setting as typed (quoted for Hydra, `ckpt_path='~/runs/...'`, as zsh users
    must, whose shell does not expand it; an experiment file's `init_from: ~/runs/...`; a config
    built in Python) would be looked for as a folder named `~`."""
    tilde = [key for key in keys if isinstance(cfg.get(key), str) and cfg.get(key).startswith("~")]
    if not tilde:
        return cfg
    cfg = cfg.copy()
    for key in tilde:
        cfg[key] = os.path.expanduser(cfg[key])
    return cfg


def require_bool(key: str, value) -> None:
    """ValueError unless `value` is true or false (a string like "maybe" would read as true)."""
    if not isinstance(value, bool):
        raise ValueError(f"{key}={value!r} must be true or false.")


#: numpy's seeds, and so Lightning's seed_everything's, which would warn and use 0 for any other
MAX_SEED = 2**32 - 1


def check_seed(key: str, value, allow_none: bool = True, none_means: str = "unseeded") -> None:
    """ValueError unless `value` is an integer seed in 0..MAX_SEED (or None: `none_means`)."""
    require_int(key, value, least=0, allow_none=allow_none, why=f" (null: {none_means})" if allow_none else "")
    if value is not None and value > MAX_SEED:
        raise ValueError(f"{key}={value!r} must be at most {MAX_SEED} (numpy's largest seed)")


def refuse_unknown_keys(key: str, settings: dict, known, where: str = "there") -> None:
    """ValueError for a name under the config node `key` that nothing reads: a misspelt setting
    (`+model.optimizer.beta=...`) would otherwise be ignored in silence."""
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"{key}.{unknown[0]} is not a setting {where} (they are {', '.join(known)}): fix the name, "
                         f"or remove it")


def refuse_job_chdir() -> None:
    """ValueError under `hydra.job.chdir=true` (train.py, eval.py, translate.py): paths.root_dir
    defaults to the working directory (${cwd:}), so inside the run folder the data would be
    looked for, and the logs written, under the run folder itself, and a relative `ckpt_path`,
    `input` or `output` would be read from there."""
    hydra_cfg = hydra_config()
    if hydra_cfg is not None and OmegaConf.select(hydra_cfg, "job.chdir"):
        raise ValueError("hydra.job.chdir=true: the commands keep the working directory, which paths.root_dir "
                         "(data and logs) defaults to; remove the override (relative paths given on the command "
                         "line are read from where the command runs)")


def check_run_folder(output_dir: str | Path) -> None:
    """ValueError when `paths.output_dir` names another folder than the one Hydra made for the
    run: the checkpoints and samples would go there while `.hydra/config.yaml` and `train.log`
    (what eval.py, translate.py and a resumed job read beside the checkpoints) stayed behind in
    Hydra's folder, splitting the run in two. Outside a Hydra run (a config composed with
    Hydra's compose API, as the tests and notebooks do) the config's own value is the run folder."""
    if (run_dir := hydra_run_dir()) is None:
        return
    hydra_cfg = hydra_config()
    refuse_job_chdir()
    if Path(output_dir).resolve() != run_dir.resolve():
        choose = ("hydra.sweep.dir=DIR (each job runs in DIR/<job number>)" if is_multirun()
                  else pasteable_override("hydra.run.dir", output_dir, prefix=""))
        raise ValueError(f"paths.output_dir={output_dir} is not the run folder Hydra made "
                         f"({hydra_cfg.runtime.output_dir}), which holds the run's .hydra/config.yaml and "
                         f"train.log: choose the run folder with {choose} and leave paths.output_dir as it is")


#: the annotations `check_argument_types` checks, and what a value needs to pass as each
_SCALAR_CHECKS = {
    int: ("an integer", is_int),
    float: ("a number", is_number),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
    Path: ("a path", lambda v: isinstance(v, (str, Path))),   # a config writes paths as strings
}


#: what a list of each scalar type needs to be, in the words of the errors
_LISTS_OF = {int: "a list of integers", float: "a list of numbers", bool: "a list of true/false values",
             str: "a list of strings"}


def _type_check(annotation) -> tuple[str, typing.Callable] | None:
    """(what a value needs, its test) for a scalar annotation or a list of one (`list[int]`,
    `tuple[str, ...]`, `Sequence[float]`); None for any other annotation."""
    if annotation in _SCALAR_CHECKS:
        return _SCALAR_CHECKS[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return None   # a fixed-length tuple: left to the constructor
    if origin in (list, tuple, collections.abc.Sequence) and args and args[0] in _SCALAR_CHECKS:
        accepts_element = _SCALAR_CHECKS[args[0]][1]
        return _LISTS_OF[args[0]], lambda v: (isinstance(v, (list, tuple, ListConfig))
                                              and all(accepts_element(x) for x in v))
    return None


def check_argument_types(node: dict, key: str) -> None:
    """ValueError naming the setting when a value of a `_target_` config node does not have the
    type its constructor's annotation asks for (`n_res: int` given 'abc', `hidden: list[int]`
    given [a, b]), instead of the TypeError deep in the network that the value would cause.
    Only int / float / bool / str / Path annotations and lists of them, optionally `| None` /
    `Optional`, are checked; anything else is left to the constructor. A name the constructor
    does not take (a misspelt `+model.n_blocs=6`) is named with the settings it does take."""
    target = hydra.utils.get_object(node["_target_"])
    refuse_unknown_arguments(target, node, key)
    # The bases' constructors too, the class's own annotations over theirs: a subclass may pass
    # **kwargs on (IterationCheckpoint to Lightning's ModelCheckpoint).
    hints = {}
    for owner in reversed(target.__mro__) if inspect.isclass(target) else (target,):
        try:
            hints.update(typing.get_type_hints(owner.__init__ if inspect.isclass(owner) else owner))
        except Exception:   # an annotation that does not resolve: nothing to check against
            pass
    for name, value in node.items():
        hint = hints.get(name)
        if name.startswith("_") or hint is None:
            continue
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        options = typing.get_args(hint) if union else (hint,)
        if Path in options:   # `str | Path` takes a path: say so once
            options = tuple(t for t in options if t is not str)
        if value is None and type(None) in options:
            continue
        checks = [_type_check(t) for t in options if t is not type(None)]
        if None in checks:
            continue   # a type this check does not know
        if not any(accepts(value) for _, accepts in checks):
            need = " or ".join(what for what, _ in checks) + (" or null" if type(None) in options else "")
            raise ValueError(f"{key}.{name}={value!r} must be {need} ({getattr(target, '__name__', target)}'s "
                             f"{name})")


def accepted_arguments(target) -> list[str] | None:
    """The keyword arguments `target` takes, or None where that cannot be known. A class whose
    constructor passes **kwargs on to its bases' (the shapes DataModules, ProGAN) takes theirs
    too: the constructors along its MRO up to the first without **kwargs."""
    inits = [vars(c)["__init__"] for c in target.__mro__ if "__init__" in vars(c)] if inspect.isclass(target) \
        else [target]
    known: list[str] = []
    for init in inits:
        try:
            parameters = inspect.signature(init).parameters
        except (TypeError, ValueError):   # a builtin without a signature: left to the call
            return None
        known += [name for name, p in parameters.items() if p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                            inspect.Parameter.VAR_KEYWORD)
                  and name != "self" and name not in known]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return known
        if not getattr(init, "__module__", "").startswith("src."):
            return None   # another library's (or a test's stand-in's) **kwargs: where they go is its own business
    return None


def refuse_unknown_arguments(target, node: dict, key: str) -> None:
    """ValueError for a setting of `node` that `target` takes no argument for (it would fail as
    Hydra's "unexpected keyword argument"), unless where its **kwargs go cannot be known."""
    known = accepted_arguments(target)
    if known is None:
        return
    settings = {name: value for name, value in node.items() if not str(name).startswith("_")}
    refuse_unknown_keys(key, settings, known, where=f"of {getattr(target, '__name__', target)}")


#: network settings that are sizes: a width, a channel count, an image side or a length. Zero
#: builds a layer of no units, which fails later as a shape error far from the setting.
POSITIVE_NETWORK_SETTINGS = frozenset({
    "ngf", "ndf", "fc", "hidden", "latent_dim", "style_dim", "fmap_base", "fmap_max", "input_nc", "output_nc",
    "channels", "image_size", "img_size", "seq_len", "num_scales", "num_layers"})


def check_network_sizes(node: dict, key: str) -> None:
    """ValueError naming the setting when a network's integer setting is negative (no network
    setting is: widths, depths and counts start at 0), or 0 where it is a size
    (POSITIVE_NETWORK_SETTINGS): torch would report a negative dimension or a zero-size tensor
    somewhere inside the network instead."""
    for name, value in node.items():
        if name.startswith("_"):
            continue
        least = 1 if name in POSITIVE_NETWORK_SETTINGS else 0
        if isinstance(value, (list, tuple, ListConfig)):   # hidden: [256, 512]
            if any(is_int(item) and item < least for item in value):
                raise ValueError(f"{key}.{name}={list(value)} must hold "
                                 f"{'positive integers' if least else 'integers >= 0'}")
        elif is_int(value) and value < least:
            require_int(f"{key}.{name}", value, least=least)
