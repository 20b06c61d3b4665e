"""Command-line settings this run would not read, refused with the setting that leaves them unread.

Each shipped model config carries the settings of every variant it offers (a gradient-penalty
weight for `loss=wgangp`, Adam's betas, the linear schedule's lengths), so their presence means
nothing; but a value given on the command line, or swept (`loss.weights.gp=1,10` under LSGAN),
is meant to change the run, and here it would not: the sweep's jobs would all train the same.
"""
from __future__ import annotations

import difflib
import logging
from pathlib import Path

from src.utils.hydra_runtime import override_key

log = logging.getLogger(__name__)

#: the optimizer settings only some optimizer types read
OPTIMIZER_ONLY = {"momentum": "sgd", "momentum_ramp": "sgd", "betas": "adam"}
#: the schedule settings only some policies read
SCHEDULE_ONLY = {"constant": ("linear", "cosine"), "decay": ("linear", "cosine"), "step_size": ("step",),
                 "gamma": ("step",), "decay_rate": ("exponential",), "min_factor": ("exponential",)}
#: the image-size settings some `data.preprocess` modes do not read (src/data/transforms.py)
PREPROCESS_UNREAD = {"none": ("load_size",), "crop": ("load_size",)}
#: the initialisations that read `gain`
INITS_WITH_GAIN = ("normal", "xavier", "uniform", "orthogonal")   # and kaiming, for batch-norm scales
#: the config groups: `+<group>=<option>` adds a group's option to the defaults, not a key
CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


def refuse_added_keys(overrides: list[str], cfg) -> None:
    """ValueError for `+key=value` adding a key at the config's top level or under `paths`, where
    nothing reads a key the configs do not define. Hydra's own answer to a misspelt key is "to
    append to your config use +key=value": `+max_iter=20000` then trained the config's length
    without a word. (Under a section with `_target_` an added key reaches a constructor, which
    refuses one it does not take; `++key=value` sets a key whether or not the config has it.)"""
    added = [override_key(o) for o in overrides if o.startswith("+") and not o.startswith("++")]
    for key in added:
        path = key.split(".")
        if len(path) == 1 and (CONFIG_DIR / key.split("@")[0]).is_dir():   # a config group's option (@ its package)
            continue
        if len(path) == 1:
            names = [str(name) for name in cfg]
        elif path[0] == "paths" and len(path) == 2:
            names = [f"paths.{name}" for name in cfg.get("paths") or {}]
        else:
            continue
        close = difflib.get_close_matches(key, [name for name in names if name not in added], n=3)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"+{key}=... adds a key nothing reads: the config has no {key}, so the run would go on "
                         f"without it.{hint} Set a key the config has (key=value; --cfg job lists them)")


def refuse_unread_overrides(overrides: list[str], model, cfg, in_a_sweep: bool = False) -> None:
    """ValueError for the first command-line override (`key=value`, Hydra's syntax) the model
    would not read under the rest of its settings. In a sweep, a warning: its other jobs may
    read it (`-m loss=lsgan,wgangp loss.weights.gp=10`), and an error would end the sweep. A key
    added where nothing reads it (`refuse_added_keys`) is refused in a sweep too: no job reads it."""
    refuse_added_keys(overrides, cfg)
    refuse_overridden_length(overrides, cfg.get("max_iters"), cfg.get("max_kimg"), in_a_sweep)
    for override in overrides:
        if override.startswith("~"):   # a deletion reads nothing either way
            continue
        key = override_key(override)
        if key == "data.crop_size" and (cfg.get("data") or {}).get("preprocess") == "none":
            # Read by the networks' sizes only (pix2pix's U-Net depth, U-Gat-IT's full MLP): the
            # images keep theirs, so a run meant to train smaller trains at the data's size.
            log.warning("%s: data.preprocess=none trains on each image at its own size; data.crop_size sizes only "
                        "the networks built for it. data.preprocess=resize_and_crop trains at data.crop_size", override)
        why = unread_because(key.split("."), model, cfg)
        if why:
            refuse_or_warn(f"{override} would change nothing: {why}. Remove it, or change what makes it unread",
                           in_a_sweep)


def refuse_overridden_length(overrides: list[str], max_iters, max_kimg, in_a_sweep: bool = False) -> None:
    """`trainer.max_epochs=N` on the command line of a run whose length
    `max_iters` or `max_kimg` sets (U-GAT-IT's, NICE-GAN's, WGAN-GP's configs, ProGAN's,
    StyleGAN's, the quickstart) would be replaced by it without a word (in a sweep, a warning:
    `-m model=cyclegan,ugatit trainer.max_epochs=10` sets CycleGAN's length)."""
    if not (max_iters or max_kimg):
        return
    # (trainer.max_steps, in optimizer steps, is refused whatever the length: run.refuse_loop_settings)
    for override in overrides:
        key = override_key(override)
        if key == "trainer.max_epochs":
            length = f"max_iters={max_iters}" if max_iters else f"max_kimg={max_kimg}"
            # each length set must go: the other ends the run too (max_kimg beside max_iters)
            unset = " ".join(f"{name}=null" for name, value in (("max_iters", max_iters), ("max_kimg", max_kimg))
                             if value)
            refuse_or_warn(f"{override}: this run's length is {length}, which replaces {key}. Set the length "
                           f"with max_iters or max_kimg, or pass {unset} to train by {key}", in_a_sweep)


def refuse_or_warn(message: str, in_a_sweep: bool) -> None:
    if not in_a_sweep:
        raise ValueError(message)
    log.warning("%s (this sweep job goes on without it)", message)


def unread_because(path: list[str], model, cfg) -> str | None:
    """Why the setting at `path` is not read by `model` and the run's config `cfg`, or None when
    it is (or is not one of the settings checked here)."""
    if path == ["init_from_weights"] and cfg.get("init_from") is None:
        return "init_from is not set (the checkpoint whose weights it chooses)"
    if path[:2] == ["callbacks", "ema"] and len(path) == 3:
        ema = cfg.get("callbacks", {}).get("ema") or {}
        if path[2] in ("decay", "start_iter", "half_life_images") and not ema.get("enabled", True):
            return "the EMA is off (callbacks.ema.enabled=false, the translation models' default)"
        if path[2] == "decay" and ema.get("half_life_images") is not None:
            return (f"callbacks.ema.half_life_images={ema.get('half_life_images')} sets each update's decay "
                    f"(StyleGAN's config sets it; null: a fixed decay)")
    if path[:2] == ["loss", "weights"] and path[2:] == ["gp"] and not model.adversarial.needs_gradient_penalty:
        return f"loss.gan_mode={model.adversarial.mode} has no gradient penalty (loss=wgangp has)"
    if path == ["loss", "clip"] and model.adversarial.mode != "wgan":
        return f"only loss=wgan clips the critic's weights (loss.gan_mode is {model.adversarial.mode})"
    if path[:2] == ["model", "optimizer"] and len(path) >= 3:
        players, name = player_and_setting(path[2:], model)
        kind = OPTIMIZER_ONLY.get(name)
        types = {model.player_optimizer_cfg(p).get("type", "adam") for p in players}
        if kind and kind not in types:
            return f"only model.optimizer.type={kind} reads {name} ({', '.join(players)}: {', '.join(sorted(types))})"
    if path[:2] == ["model", "lr_schedule"] and len(path) == 3:
        policy = model.lr_schedule_cfg.get("policy", "linear")
        if path[2] in SCHEDULE_ONLY and policy not in SCHEDULE_ONLY[path[2]]:
            return (f"model.lr_schedule.policy={policy} does not read {path[2]} "
                    f"(policy {' or '.join(SCHEDULE_ONLY[path[2]])} does)")
    if len(path) == 2 and path[0] == "data" and path[1] in ("load_size", "crop_size"):
        preprocess = (cfg.get("data") or {}).get("preprocess")
        if path[1] in PREPROCESS_UNREAD.get(preprocess, ()):
            does = "uses each image at its own size" if preprocess == "none" else "crops without resizing"
            generated = " (the generated shapes: data.size sets their size)" if "size" in cfg.get("data") else ""
            return (f"data.preprocess={preprocess} {does}; data.preprocess=resize_and_crop resizes to "
                    f"data.load_size and crops data.crop_size{generated}")
    if path in (["data", "batch_size"], ["model", "batch_size"]) and callable(getattr(model, "resolutions", None)):
        # ProGAN/StyleGAN: the training batch of each resolution model.batch_sizes lists
        listed = {int(side) for side in (model.hparams.get("batch_sizes") or {})}
        trained = [side for side in model.resolutions() if side >= model.hparams.get("start_resolution", 0)]
        if trained and set(trained) <= listed:
            return ("model.batch_sizes sets the training batch of every resolution this run trains; set "
                    "model.batch_sizes.<side> (data.eval_batch_size sets the evaluation's)")
    if path[:2] == ["model", "init"] and len(path) >= 3 and not has_initialised_layers(model):
        return ("the networks have no convolution, linear or batch-norm layer for model.init to draw (equalised "
                "layers draw N(0, 1) and scale at run time)")
    if path == ["data", "unpaired_sampling"] and not reads_unpaired_folders(cfg):
        return "the data's items are pairs (or labelled images): only unpaired folders draw their images apart"
    if path == ["trainer", "gradient_clip_algorithm"] and not (cfg.get("trainer") or {}).get("gradient_clip_val"):
        return "trainer.gradient_clip_val is not set (the norm or value it clips at; null or 0: no clipping)"
    if path == ["data", "direction"] and is_noise_to_image(model):
        return (f"{type(model).__name__} samples from noise: data.direction picks a translation's source domain, and "
                f"this data has none")
    if path == ["callbacks", "fid_kid", "directions"] and is_noise_to_image(model):
        return f"{type(model).__name__} is scored on its samples (the directions are a translation model's)"
    if path == ["model", "reference_batch_size"] and is_noise_to_image(model) and not model.test_time_batch_stats:
        return ("model.test_time_batch_stats=false samples with the batch norms' running averages (true: with a "
                "reference batch's statistics)")
    if path[:2] == ["model", "init"] and len(path) >= 3:
        players, name = player_and_setting(path[2:], model)
        types = {model.net_init(p).get("type", "normal") for p in players}
        reading = set(INITS_WITH_GAIN) | ({"kaiming"} if has_batch_norm(model) else set())
        if name == "gain" and not types & reading:
            return f"model.init.type={'/'.join(sorted(types))} draws without a gain (those with one: {INITS_WITH_GAIN})"
    return None


def has_initialised_layers(model) -> bool:
    """Whether the model has layers `model.init` draws (src/nets/init.py)."""
    from src.nets.init import INITIALISED_LAYERS   # torch: loaded by the time a model exists
    return any(isinstance(m, INITIALISED_LAYERS) for m in model.modules())


def reads_unpaired_folders(cfg) -> bool:
    import hydra
    from src.data.unpaired import UnpairedDataModule
    target = (cfg.get("data") or {}).get("_target_")
    return target is None or issubclass(hydra.utils.get_class(target), UnpairedDataModule)


def is_noise_to_image(model) -> bool:
    from src.models.noise_base import NoiseToImageModel
    return isinstance(model, NoiseToImageModel)


def has_batch_norm(model) -> bool:
    """Whether the model has batch norms with a scale, which kaiming's init draws with the gain."""
    from src.nets.init import BATCH_NORMS   # torch: loaded by the time a model exists
    return any(isinstance(m, BATCH_NORMS) and m.weight is not None for m in model.modules())


def player_and_setting(rest: list[str], model) -> tuple[list[str], str]:
    """The players a `model.optimizer...` or `model.init...` path reaches, and its setting's
    name: `players.<p>.<name>` one player, `<name>` every player."""
    if rest[0] == "players" and len(rest) == 3:
        return [rest[1]], rest[2]
    return list(model.player_modules()), rest[-1]
