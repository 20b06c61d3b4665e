"""The small shared bases of every GAN: `AdversarialModel`, and `TranslationModel` on it.

A subclass builds its networks, declares its players (`player_modules`: optimizer name ->
modules, in the order the training step uses them) and writes `train_iteration` with manual
optimization. `AdversarialModel` turns the config into optimizers and LR schedulers, steps the
schedulers per epoch or per iteration, freezes the idle players, keeps image pools and RNG
state in checkpoints. `TranslationModel` adds `translate(x, direction)` for sampling and
evaluation; the noise-to-image family has its own base (src/models/noise_base.py).
"""
import contextlib
from collections import Counter
from collections.abc import Mapping
import inspect
import math

import hydra
from hydra.errors import InstantiationException
import pytorch_lightning as pl
import torch
import torch.nn as nn
from pytorch_lightning.strategies import SingleDeviceStrategy
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

from src.losses import AdversarialLoss, gradient_penalty
from src.models.checkpoint_fit import check_resume_fits, class_path
from src.models.divergence import (DIVERGED_LOSS_SCALE, LOW_LOSS_SCALE, TrainingDiverged, diverged_message,
                                   non_finite_losses, refuse_non_finite_weights)
from src.models.image_pool import ImagePool
from src.models.loss_scaling import PlayerGradScalers
from src.models.loss_window import LossWindow
from src.models.optimizers import (build_optimizer, changed_learning_rates, check_optimizer_settings, ramped_momentum,
                                   with_player_overrides)
from src.models.lr_schedules import DecayToZero, build_scheduler, decay_end_mismatch, rescale_schedule
from src.models.size_check import (check_image_size, check_translation_size, input_channels, output_channels,
                                   size_multiple)
from src.models import step_in_backward
from src.nets.init import init_weights
from src.nets.fast_conv import configure_fast_conv
from src.utils.config_checks import check_argument_types, check_network_sizes, is_number, refuse_unknown_keys, to_plain
from src.utils.directions import DIRECTION_KEYS, DIRECTIONS, translated_directions
from src.utils.image_grid import require_float_images
from src.utils.metric_publishing import publish_metrics
from src.utils.rng import collect_rng_states, restore_rng_states
from src.utils.unread_overrides import INITS_WITH_GAIN


def build_net(net_cfg: dict, init: dict, key: str) -> nn.Module:
    """Instantiate a network from its `_target_` config (the config node `key`, which errors
    name) and initialise its weights."""
    check_argument_types(net_cfg, key)
    check_network_sizes(net_cfg, key)
    try:
        net = hydra.utils.instantiate(net_cfg)
    except InstantiationException as error:
        # A network's own refusal of a setting names the setting, not always the node it sits
        # under (U-GAT-IT's two discriminators share one class): the node goes in front.
        cause = error.__cause__
        if isinstance(cause, ValueError) and key not in str(cause):
            raise ValueError(f"{key} ({str(net_cfg.get('_target_', '')).rsplit('.', 1)[-1]}): {cause}") from cause
        raise
    return init_weights(net, init.get("type", "normal"), init.get("gain", 0.02))


@contextlib.contextmanager
def sampling_mode(nets: list[nn.Module], batch_stats: bool = False, dropout: bool = False):
    """Eval mode under no_grad, optionally with test-time batch statistics and dropout (pix2pix).

    With `batch_stats`, batch-norm layers normalise by the batch's own statistics; their running
    buffers are put back afterwards so sampling never changes the training state.
    """
    was_training = [net.training for net in nets]
    saved = []
    for net in nets:
        net.eval()
        for m in net.modules():
            if batch_stats and isinstance(m, nn.modules.batchnorm._BatchNorm):
                saved.append((m, {k: v.clone() for k, v in m.named_buffers(recurse=False)}))
                m.train()
            if dropout and isinstance(m, nn.Dropout):
                m.train()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, buffers in saved:
            for k, v in buffers.items():
                getattr(m, k).copy_(v)
        for net, mode in zip(nets, was_training):
            net.train(mode)


#: the settings `loss`, `model.init` (its `players.<player>` tables: all but players) and
#: `model.lr_schedule` may hold; any other name is refused rather than ignored
LOSS_KEYS = ("gan_mode", "labels", "weights", "clip")
#: `loss.labels` and their defaults (conf/loss/lsgan.yaml)
LSGAN_LABELS = {"real_label": 1.0, "fake_label": 0.0, "generator_label": None}
INIT_KEYS = ("type", "gain", "players")
SCHEDULE_KEYS = tuple(inspect.signature(build_scheduler).parameters)[1:]   # after the optimizer
def needs_paired_data(model_name: str) -> str:
    return (f"{model_name} needs paired data: choose a paired data config (e.g. data=shapes_paired, data=facades), "
            "not an unpaired one")


def must_define(model, method: str) -> NotImplementedError:
    """The error for a method a model class must provide and does not."""
    return NotImplementedError(f"{type(model).__name__} must define {method} (README, \"Adding a model\")")


#: iterations past which a run's length in epochs is said to be far beyond the papers' (U-GAT-IT:
#: 1M iterations; CycleGAN's 200 epochs of horse2zebra's 1334 zebras: 267k)
LONG_RUN_ITERATIONS = 10_000_000


class AdversarialModel(pl.LightningModule):
    """What every GAN here shares: players, their optimizers and schedules, the training
    iteration's bookkeeping, checkpoint state. Sampling and evaluation are the subclasses'."""

    #: optimizer steps per training iteration; Lightning's global_step counts every one of them.
    optimizer_steps_per_iter: int = 2
    #: the `loss.weights` names the model reads; any other is refused when a fit starts
    loss_weights: tuple[str, ...] = ()
    #: the model's own `loss.` settings beside the shared LOSS_KEYS (a contrastive loss's
    #: `loss.nce`, say); any other key is refused
    loss_settings: tuple[str, ...] = ()
    #: the model's own settings (keys under `model.`, a table's with it) that a resume may change
    #: and still continue the same run: batch sizes, growth, logging options. Subclasses extend
    #: their parent's; the data loading settings and speed options every model shares are in
    #: src/models/checkpoint_fit.py.
    resumable_settings: tuple[str, ...] = ()

    def __init__(self, loss: dict, optimizer: dict, lr_schedule: dict, init: dict):
        super().__init__()
        self.automatic_optimization = False
        self.loss_cfg = to_plain(loss)
        self.optimizer_cfg = to_plain(optimizer)
        self.lr_schedule_cfg = to_plain(lr_schedule)
        self.init_cfg = to_plain(init)
        refuse_unknown_keys("loss", self.loss_cfg, (*LOSS_KEYS, *self.loss_settings))
        refuse_unknown_keys("model.lr_schedule", self.lr_schedule_cfg, SCHEDULE_KEYS)
        for key, settings in (("model.init", self.init_cfg),
                              *((f"model.init.players.{name}", player)
                                for name, player in self.init_cfg.get("players", {}).items())):
            refuse_unknown_keys(key, settings, INIT_KEYS if key == "model.init" else INIT_KEYS[:-1])
            gain = settings.get("gain", 0.02)
            drawn_with_gain = settings.get("type", self.init_cfg.get("type", "normal")) in INITS_WITH_GAIN
            if drawn_with_gain and not (is_number(gain) and gain > 0):
                # 0 starts every weight at zero (a dead network); a negative spread is torch's error
                raise ValueError(f"{key}.gain={gain!r} must be a number > 0 (normal's standard deviation, uniform's "
                                 "half-width, xavier's and orthogonal's scale)")
        if self.optimizer_cfg.get("step_in_backward", "auto") not in (True, False, "auto"):
            raise ValueError(f"model.optimizer.step_in_backward={self.optimizer_cfg['step_in_backward']!r} "
                             "must be true, false or auto")
        # LSGAN's codes by name; the others are refused when a fit starts (check_loss_settings).
        labels = {k: v for k, v in (self.loss_cfg.get("labels") or {}).items() if k in LSGAN_LABELS}
        self.adversarial = AdversarialLoss(self.loss_cfg.get("gan_mode", "lsgan"), **labels)
        self.weight_clip = self.critic_weight_clip()
        for key, settings in [("model.optimizer", self.optimizer_cfg),
                              *((f"model.optimizer.players.{name}", player)
                                for name, player in self.optimizer_cfg.get("players", {}).items())]:
            check_optimizer_settings(key, settings, ("players", "step_in_backward") if key == "model.optimizer" else ())
        self.weights = dict(self.loss_cfg.get("weights", {}))
        self.pools: dict[str, ImagePool] = {}
        self.grad_scalers: PlayerGradScalers | None = None
        self.logging_losses = True   # whether log_losses logs this iteration (training_step decides)
        self.loss_window: LossWindow | None = None   # the losses since the last logged iteration
        # Per player, the factor a resume's new learning rate puts on the restored rates
        # (`rescale_resumed_learning_rates`), read from the checkpoint before the optimizers are.
        self.resumed_lr_factors: dict[str, float] = {}
        self.low_scale_warned: set[str] = set()   # the fp16 losses whose low scale was warned of
        # Real images trained on over all devices, by finished iterations (`loaded_images`):
        # logged as train/kimg, an axis on which runs of other batch sizes or device counts line
        # up. None: resumed from a checkpoint without the count (estimated at the first batch).
        self.images_seen: int | None = 0
        self.iteration_images = 0   # the current iteration's
        # (value, "norm" or "value"): trainer.gradient_clip_val, which Lightning applies under
        # automatic optimization only; update() clips each optimizer's gradients with it.
        self.gradient_clipping: tuple[float, str] | None = None
        # True from a player's first parameter update until its step is whole: an error in
        # between leaves the player half-stepped (the crash checkpoint says so).
        self.inside_a_step = False
        self._idle_parameters: dict[tuple[str, ...], list[nn.Parameter]] = {}   # players(): names -> the others'
        self._loss_in_training: str | None = None   # loss_name of the `players` block being run
        self._image_sizes_checked: set[tuple[int, ...]] = set()   # batch shapes the networks accept
        self._batch_shapes_checked: set[tuple] = set()   # (domain, *shape) whose channels fit the networks
        self._output_channels: dict[str, int | None] = {}   # per direction, found once
        # The DataModule settings it was trained with, and the DataModule's class, once loaded
        # from a checkpoint (src/utils/checkpoint_loading.py); evaluation checks the data
        # direction against them, and rebuilds the data from them without the run's config.
        self.training_data: dict = {}
        self.training_data_class: str | None = None
        self.loaded_weights: str | None = None   # "ema" or "trained": which load_model put in
        self.loaded_class_folders: list[str] | None = None   # the classes its labels mean (load_model)
        # The config's model_name (set by the run, kept in its checkpoints): one class trains
        # several configs (ProGAN: model=stylegan; NoiseGAN: dcgan, lsgan, wgangp ...)
        self.model_name: str | None = None

    def display_name(self) -> str:
        """The model as results name it: `stylegan (ProGAN)`, or the class alone where the config
        is named after it (CycleGAN) or unknown (a model built outside a run)."""
        name, cls = self.model_name, type(self).__name__
        return f"{name} ({cls})" if name and name.lower() != cls.lower() else cls

    def critic_weight_clip(self) -> float | None:
        """WGAN's clipping bound c (`loss.clip`), or None for the objectives without clipping."""
        if self.adversarial.mode != "wgan":
            return None
        clip = self.loss_cfg.get("clip")
        if not is_number(clip) or clip <= 0:
            raise ValueError(f"loss.clip={clip!r}: loss=wgan clips the critic's weights to [-clip, clip] and needs "
                             "a positive number (the paper's 0.01)")
        return float(clip)

    @classmethod
    def data_kind(cls) -> tuple[type | tuple[type, ...], str] | None:
        """The DataModule class(es) this model trains on, and what to pass instead of another
        (None: any)."""
        return None

    @classmethod
    def check_data_config(cls, data_cfg, model_name: str) -> None:
        """Raise a clear error, before anything is built, when `data_cfg` is not a kind of
        data this model trains on (the DataModules' own checks cover the rest): another kind
        fails later with a missing interpolation key or a batch without the model's inputs."""
        kind = cls.data_kind()
        if kind is None:
            return
        required, hint = kind
        target = data_cfg.get("_target_")
        data_class = hydra.utils.get_class(target) if target else None
        if not (isinstance(data_class, type) and issubclass(data_class, required)):
            raise ValueError(f"model={model_name} trains on {hint}; data._target_={target} is not one")

    def setup(self, stage: str) -> None:
        # fp16: one loss scaler per player's loss instead of Lightning's shared one (see
        # src/models/loss_scaling.py). Here, before a resumed run restores the scalers' state.
        if stage == "fit":
            self.check_loss_settings()
            self.grad_scalers = PlayerGradScalers.install(self.trainer)
            self.warn_of_batch_norm_under_gradient_penalty()
            self.check_batches_for_vector_batch_norm()

    def check_batches_for_vector_batch_norm(self) -> None:
        """Batch norm over vectors (InfoGAN's fully connected layers and Q head, an MLP's
        norm=batch) cannot normalise a batch of one sample in training: torch stops inside the
        layer ("Expected more than 1 value per channel"), naming no setting, and a short last
        batch of one does so at the end of an epoch, hours in. So data.batch_size=1 is refused
        here, and every epoch's short last batch is dropped (`keep_whole_batches`)."""
        datamodule = self.trainer.datamodule
        norms = sorted({name.split(".")[0] for name, module in self.named_modules()
                        if isinstance(module, nn.BatchNorm1d)})
        if not norms or datamodule is None or not hasattr(datamodule, "keep_whole_batches"):
            return
        if datamodule.batch_size < 2:
            raise ValueError(f"data.batch_size={datamodule.batch_size}: {type(self).__name__}'s batch norm over vectors "
                             f"(in {', '.join(norms)}) needs two samples or more per batch in training; set "
                             f"data.batch_size=2 or more")
        if datamodule.whole_model_batch is None:
            datamodule.keep_whole_batches(datamodule.batch_size)

    def check_loss_settings(self) -> None:
        """Loss settings that would be ignored in silence, or read only when their term first
        runs: a weight the model never reads (`+loss.weights.cylce=5`), a weight that is not a
        number >= 0 (a negative optional one read as "off"), and `loss.labels`, LSGAN's target
        codes, misspelt or under another objective, whose targets are fixed (LSGAN's default
        codes left over by `loss.gan_mode=vanilla` on loss=lsgan say nothing, and pass).
        Checked when a fit starts, not at construction, so that loading an older checkpoint for
        inference never fails on a setting its run carried."""
        if self.adversarial.needs_gradient_penalty and "gp" not in self.loss_weights:
            # (the unknown-weight advice below, ~loss.weights.gp, would train a critic with no
            # constraint at all: WGAN's scores with neither a penalty nor clipping)
            raise ValueError(f"loss.gan_mode={self.adversarial.mode} needs a gradient penalty, which "
                             f"{type(self).__name__} does not apply (no `gp` in its loss_weights): apply one "
                             f"(self.weighted_gradient_penalty, as the bundled models do) or "
                             f"choose another loss (loss=lsgan, loss=vanilla, ...)")
        unknown = sorted(set(self.weights) - set(self.loss_weights))
        if unknown:
            raise ValueError(f"loss.weights.{unknown[0]} is not a weight {type(self).__name__} reads (its weights: "
                             f"{', '.join(self.loss_weights) or 'none'}): fix the name, or remove it "
                             f"('~loss.weights.{unknown[0]}')")   # (quoted: zsh reads a leading ~ as a home folder)
        for name in self.weights:
            self.weight(name)
        labels = self.loss_cfg.get("labels") or {}
        refuse_unknown_keys("loss.labels", labels, LSGAN_LABELS)
        for name, value in labels.items():
            if not (is_number(value) or (value is None and name == "generator_label")):
                raise ValueError(f"loss.labels.{name}={value!r} must be a number"
                                 + (" (or null: the real label)" if name == "generator_label" else ""))
        if self.adversarial.real_label == self.adversarial.fake_label:
            raise ValueError(f"loss.labels.real_label and fake_label are both {self.adversarial.real_label}: the "
                             "discriminator would have nothing to tell apart (LSGAN's codes: 1 and 0, or 1 and -1)")
        mode = self.adversarial.mode
        changed = {k: v for k, v in labels.items() if v != LSGAN_LABELS[k]}
        if mode != "lsgan" and changed:
            key = next(iter(changed))
            raise ValueError(f"loss.labels.{key}={changed[key]!r}: loss.gan_mode={mode} does not read loss.labels "
                             "(its targets are fixed); they are LSGAN's codes (loss=lsgan), or remove the setting")
        critic_setting = ["loss=wgan's weight clipping"] if self.weight_clip is not None else self.gradient_penalties()
        if critic_setting and not self.image_discriminators():
            # Clipping, and the rewrites a double backward supports, find the critics by name.
            raise ValueError(f"{critic_setting[0]} acts on the critics, which {type(self).__name__} finds among the "
                             f"players named 'discriminator...' (image_discriminators()); its players are "
                             f"{list(self.player_modules())}: name the critic's player so, or override "
                             f"image_discriminators()")

    def warn_of_batch_norm_under_gradient_penalty(self) -> None:
        """WGAN-GP penalises each image's gradient norm; batch norm in the critic makes an
        image's score depend on the rest of its batch (harmless at batch size 1)."""
        if self.adversarial.needs_gradient_penalty and any(
                isinstance(m, nn.modules.batchnorm._BatchNorm) for net in self.image_discriminators()
                for m in net.modules()):
            rank_zero_warn("loss=wgangp with batch norm in the discriminator: its per-image gradient penalty "
                           "then depends on the other images of the batch. WGAN-GP's paper uses layer norm: "
                           "model.discriminator.norm=layer (or instance, none)")

    def gradient_penalties(self) -> list[str]:
        """The loss terms that differentiate the discriminator's gradient (a backward through a
        backward), by config name: WGAN-GP's penalty here; a model with others adds them."""
        return ["loss=wgangp's gradient penalty"] if self.adversarial.needs_gradient_penalty else []

    def use_fast_conv(self, setting: bool | str) -> None:
        """`model.fast_conv`: CPU convolutions rewritten to compute the same result faster
        (src/nets/fast_conv.py). Subclasses call it once their networks exist. Under a gradient
        penalty the discriminators' gradient is differentiated again: they get only the
        rewrites that support it (first, so the whole-model pass finds their layers taken)."""
        counts = Counter()
        if setting is not False and self.gradient_penalties():
            for net in self.image_discriminators():
                counts.update(configure_fast_conv(net, setting, second_order=True))
        counts.update(configure_fast_conv(self, setting))
        self.fast_conv_layers = dict(counts)

    # ----- what subclasses provide -------------------------------------------------------
    def player_modules(self) -> dict[str, list[nn.Module]]:
        """Optimizer name -> the modules it trains, in the order of `self.optimizers()`."""
        raise must_define(self, "player_modules()")

    def sampling_nets(self) -> list[nn.Module]:
        """The networks whose outputs are sampled and evaluated (what an EMA averages)."""
        raise must_define(self, "sampling_nets()")

    def network_settings(self) -> str:
        """The config nodes its networks are built from, for messages: `model.generator.*,
        model.discriminator.*`, or U-GAT-IT's `model.global_discriminator.*` and others by their
        own names."""
        nodes = [key for key, value in self.hparams.items() if isinstance(value, Mapping) and "_target_" in value]
        return ", ".join(f"model.{key}.*" for key in nodes) or "model.*"

    def evaluation_pair(self, batch: dict, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(real images, generated images) of one evaluation stream of a test batch, for FID/KID:
        a translation direction, or the noise-to-image models' samples. The real images are the
        batch's own, never the model's work: the FID/KID callback extracts their features once
        per fit."""
        raise must_define(self, "evaluation_pair(batch, stream)")

    def evaluation_streams(self, configured: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, str]]:
        """The streams FID/KID score, out of the configured directions, and why others are not."""
        raise must_define(self, "evaluation_streams(configured)")

    def sampling_options(self) -> dict:
        """How sampling treats batch norm and dropout (`sampling_mode`'s options): pix2pix
        samples with the batch's statistics and dropout; the rest in plain eval mode."""
        return {}

    def samples_at_full_size(self, iteration: int | None = None) -> bool:
        """Whether the networks sample at the size they are built for (now, or after `iteration`
        iterations): a growing model's (ProGAN's) earlier stages sample smaller images,
        upsampled, whose FID does not rank with the full-size network's."""
        return True

    def image_discriminators(self) -> list[nn.Module]:
        """The networks that judge whole images (input: a batch of images): by default those
        of the players named "discriminator(s)"."""
        return [net for name, nets in self.player_modules().items() if name.startswith("discriminator")
                for net in nets]

    # ----- training length ---------------------------------------------------------------
    @property
    def iteration(self) -> int:
        """Training iterations (batches) done; `global_step` counts every optimizer step."""
        return self.trainer.global_step // self.optimizer_steps_per_iter

    def weight(self, name: str) -> float:
        if name not in self.weights:
            raise ValueError(f"loss.weights.{name} is missing, and {type(self).__name__} needs it: add "
                             f"+loss.weights.{name}=<weight> (0 turns the term off)")
        value = self.weights[name]
        if not is_number(value) or value < 0:
            raise ValueError(f"loss.weights.{name}={value!r} must be a number >= 0 (0 turns the term off)")
        return float(value)

    def optional_weight(self, name: str) -> float:
        """A weight the model may go without (0: the term is off), checked as `weight` checks."""
        return self.weight(name) if name in self.weights else 0.0

    # ----- optimizers and schedules ------------------------------------------------------
    def configure_optimizers(self):
        # `model.optimizer`, with `model.optimizer.players.<player>` overriding it for one player
        # (InfoGAN's and RGAN's papers give each player its own optimizer or rate).
        for key, table in (("model.optimizer.players", self.optimizer_cfg), ("model.init.players", self.init_cfg)):
            unknown = sorted(set(table.get("players", {})) - set(self.player_modules()))
            if unknown:
                raise ValueError(f"{key} has {unknown}, which {type(self).__name__} does not have: "
                                 f"its players are {list(self.player_modules())}")
        self.check_each_parameter_has_one_player()
        optimizers = [build_optimizer([p for m in modules for p in m.parameters()], self.player_optimizer_cfg(name))
                      for name, modules in self.player_modules().items()]
        schedule = self.lr_schedule_of_this_run()
        # Named by player: the learning-rate monitor logs `lr/<player>` (`lr/generators`), not
        # Lightning's `lr-Adam`, `lr-Adam-1`, whose order differs between models.
        schedulers = [{"scheduler": build_scheduler(opt, **schedule), "name": f"lr/{name}"}
                      for name, opt in zip(self.player_modules(), optimizers)]
        return optimizers, schedulers

    def check_each_parameter_has_one_player(self) -> None:
        """Refuse a trainable parameter outside every player's modules (a network a subclass adds
        without listing it in `player_modules()`): no optimizer would hold it, and `players()`
        switches its gradients off, so it would keep its initial values through a run that ends
        without a word. And one that two players hold: both would step it. And a player's module
        that is not a submodule of the model (kept in a plain dict or list): it trains, but
        checkpoints, EMA and devices know only submodules, so its weights were never saved and
        eval.py scored a freshly initialised network."""
        players, registered = self.player_modules(), {id(m) for m in self.modules()}
        unregistered = [f"{type(m).__name__} (player {player})" for player, modules in players.items()
                        for m in modules if id(m) not in registered]
        if unregistered:
            raise ValueError(f"{type(self).__name__}.player_modules() gives modules that are not submodules of the "
                             f"model: {', '.join(unregistered[:5])}. Keep each network in an attribute of the model, "
                             f"or in an nn.ModuleDict / nn.ModuleList (a plain dict or list hides it from torch): its "
                             f"weights would be left out of every checkpoint")
        owners: dict[int, list[str]] = {}
        for player, modules in players.items():
            for parameter in {id(p): p for m in modules for p in m.parameters()}.values():
                owners.setdefault(id(parameter), []).append(player)
        named = list(self.named_parameters())
        orphans = [name for name, p in named if p.requires_grad and id(p) not in owners]
        if orphans:
            raise ValueError(f"{type(self).__name__} has trainable parameters that no player trains: "
                             f"{', '.join(orphans[:5])}{' ...' if len(orphans) > 5 else ''}. Add their modules to a "
                             f"player in {type(self).__name__}.player_modules() (its players: "
                             f"{list(players)}), or freeze them (requires_grad_(False))")
        shared = [f"{name} ({' and '.join(owners[id(p)])})" for name, p in named if len(owners.get(id(p), ())) > 1]
        if shared:
            raise ValueError(f"{type(self).__name__}.player_modules() gives parameters to two players, whose "
                             f"optimizers would both step them: {', '.join(shared[:5])}")

    def net_init(self, player: str) -> dict:
        """`model.init` with the player's overrides (`model.init.players.<player>`: the GAN
        paper's code draws G's weights in +-0.05 and D's in +-0.005), for building its networks."""
        return with_player_overrides(self.init_cfg, player)

    def player_optimizer_cfg(self, name: str) -> dict:
        """`model.optimizer` with the player's overrides (`model.optimizer.players.<name>`)."""
        return with_player_overrides(self.optimizer_cfg, name)

    def ramp_momentum(self) -> None:
        """SGD momentum ramped over epochs (`momentum_ramp`: the GAN paper's code, 0.5 -> 0.7), set
        before every iteration: a run resumed from an epoch's last batch starts the next epoch
        without Lightning's epoch-start hooks."""
        for name, optimizer in self.named_optimizers().items():
            settings = self.player_optimizer_cfg(name)
            if settings.get("momentum_ramp"):
                # Epochs counted from 1, as pylearn2's MomentumAdjustor counts its calls: one before
                # the first epoch, then one after each (so the first epoch trains at count 1).
                momentum = ramped_momentum(self.current_epoch + 1, settings["momentum"], **settings["momentum_ramp"])
                for group in optimizer.param_groups:
                    group["momentum"] = momentum

    def lr_schedule_of_this_run(self) -> dict:
        """`model.lr_schedule` with `constant` / `decay` of "half" replaced by half the run's
        length in the schedule's unit: the U-GAT-IT and NICE-GAN papers decay the rate over the
        second half of training, however long it is (max_iters, or trainer.max_epochs)."""
        schedule = dict(self.lr_schedule_cfg)
        halves = [key for key in ("constant", "decay") if schedule.get(key) == "half"]
        if not halves:   # the run's length can cost a loader built before a resume restores it
            return schedule
        unit = schedule.get("unit", "epoch")
        if self._length_counts_the_loaders_batches(unit):
            # The length needs the loader's batches: Lightning builds the training loader once, and
            # built here, before a resume has restored the loader's place, a resumed epoch would start
            # over. on_train_start fills the halves in; a resumed run's schedulers come back
            # from its checkpoint with them.
            schedule.update({key: None for key in halves})
            return schedule
        length = self.run_length_in(unit)
        self._require_a_length_for_half(length, halves[0], unit)
        first_half = length // 2
        schedule.update({key: first_half if key == "constant" else length - first_half for key in halves})
        return schedule

    def _length_counts_the_loaders_batches(self, unit: str) -> bool:
        """Whether the run's length in `unit` needs the training loader's batches: iterations of
        a run measured in epochs, or epochs of one measured in iterations (as many as they fill)."""
        trainer = self._trainer
        if trainer is None:
            return False
        by_epochs = bool(trainer.max_epochs) and trainer.max_epochs > 0
        if unit == "iteration":
            return trainer.max_steps <= 0 and by_epochs
        return trainer.max_steps > 0 and not by_epochs

    @staticmethod
    def _require_a_length_for_half(length: int | None, key: str, unit: str) -> None:
        if not length:
            raise ValueError(f"model.lr_schedule.{key}=half needs the run's length in "
                             f"{unit}s: set {'max_iters' if unit == 'iteration' else 'trainer.max_epochs'}, or give "
                             f"model.lr_schedule.constant and decay as numbers")

    def on_train_start(self) -> None:
        self.loss_window = None   # a window begins with the fit (a resume's first one is shorter)
        if self.device.type == "cuda":
            # The peaks the logs report (memory/peak_gpu_gb, the progress log) are this fit's:
            # torch keeps one high-water mark per process, which a multirun's jobs share.
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rescale_resumed_learning_rates()
        # After a resume has restored the schedulers: they, not the config, say when the rate
        # reaches 0. The training loader exists by now, so the run's length costs nothing.
        unit = self.lr_schedule_cfg.get("unit", "epoch")
        length = self.run_length_in(unit)
        schedulers = self.scheduler_list()
        for factor in (f for scheduler in schedulers for f in scheduler.lr_lambdas):
            if isinstance(factor, DecayToZero) and factor.waits_for_the_run_length:
                self._require_a_length_for_half(length, "constant" if factor.constant is None else "decay", unit)
                factor.fill_in_halves(length)
        resumed = self.trainer.ckpt_path is not None
        if length and schedulers and (mismatch := decay_end_mismatch(schedulers[0].lr_lambdas[0], unit, length,
                                                                      resumed)):
            rank_zero_warn(mismatch)
        self.warn_of_step_in_backward_turned_off()
        self.warn_of_a_length_in_epochs_past_reason()

    def warn_of_a_length_in_epochs_past_reason(self) -> None:
        """A length in epochs (CycleGAN's and pix2pix's 200) is the papers' for their datasets of a
        thousand images; on a folder of 500k at batch 1 it is 100M iterations, a year on one GPU,
        and nothing would say so."""
        trainer = self.trainer
        if trainer.max_steps > 0 or not trainer.max_epochs or trainer.max_epochs < 0:
            return
        iterations = self.run_length_in("iteration")
        if iterations and iterations > LONG_RUN_ITERATIONS:
            batches = trainer.num_training_batches
            rank_zero_warn(f"trainer.max_epochs={trainer.max_epochs} of {batches} iterations each is {iterations:,} "
                           f"iterations, over {LONG_RUN_ITERATIONS:,}: a length in epochs is the papers' for their "
                           f"small datasets. Give the run a length in iterations (max_iters=, and "
                           f"model.lr_schedule.unit=iteration ++model.lr_schedule.constant=half "
                           f"++model.lr_schedule.decay=half), or cap the data (data.max_dataset_size).")

    def warn_of_step_in_backward_turned_off(self) -> None:
        """`model.optimizer.step_in_backward=true` where the run cannot step in backward (see
        `steps_in_backward`): said once, so a user who set it for its memory saving knows the run
        trains without it."""
        reasons = self.step_in_backward_blockers()
        if self.optimizer_cfg.get("step_in_backward", "auto") is not True or not reasons:
            return
        rank_zero_warn(f"model.optimizer.step_in_backward=true is off in this run: {' and '.join(reasons)} need every "
                       "gradient before the first step. Each player steps after its backward, as with false.")

    def rescale_resumed_learning_rates(self) -> None:
        """A resume with another `model.optimizer.lr` (or a player's own) trains on at the new
        rate: the restored optimizers' rates and their schedules' bases are scaled by new / saved,
        after Lightning has restored both. The run's next checkpoint records the new rate, so a
        requeued job resuming from it scales nothing again (README "Resuming")."""
        factors, self.resumed_lr_factors = self.resumed_lr_factors, {}
        # one scheduler per player, in the players' order (configure_optimizers)
        for name, scheduler in zip(self.player_modules(), self.scheduler_list()):
            if name in factors:
                rescale_schedule(scheduler, factors[name])
        if factors:
            listed = ", ".join(f"{name} x{factor:g}" for name, factor in factors.items())
            rank_zero_info(f"Resumed with another learning rate: the restored rates and their schedules are scaled "
                           f"by new / saved ({listed})")

    def run_length_in(self, unit: str) -> int | None:
        """How long this fit trains, in epochs or iterations; None where the trainer cannot say
        (an image budget, no trainer). A run limited by iterations lasts as many epochs as they
        fill, the last perhaps in part."""
        trainer = self._trainer
        if trainer is None:   # optimizers built outside a fit
            return None
        iterations = trainer.max_steps // self.optimizer_steps_per_iter if trainer.max_steps > 0 else None
        if unit == "epoch":
            if trainer.max_epochs and trainer.max_epochs > 0:
                return trainer.max_epochs
            batches = trainer.num_training_batches
            if iterations and math.isfinite(batches) and batches > 0:
                return math.ceil(iterations / batches)
            return None
        if iterations:   # max_iters (max_steps counts optimizer steps)
            return iterations
        batches = trainer.estimated_stepping_batches   # epochs x batches (manual optimization counts batches)
        return int(batches) if math.isfinite(batches) else None

    def scheduler_list(self) -> list:
        """The players' learning-rate schedulers as a list (Lightning hands back one alone, or
        None when there are none)."""
        schedulers = self.lr_schedulers()
        return schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []

    def named_optimizers(self) -> dict:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        return dict(zip(self.player_modules().keys(), optimizers))

    @contextlib.contextmanager
    def players(self, *names: str):
        """Inside this block only the named players' parameters require grad, so the losses
        computed here build no graph into (and leave no gradients in) anyone else's parameters.
        Yields their optimizers. (Lightning's toggle_optimizer takes one optimizer; NICE-GAN's
        discriminator step trains two, the heads and the encoders.)"""
        optimizers = self.named_optimizers()
        active = [optimizers[n] for n in names]
        if names not in self._idle_parameters:   # walking every module each step costs ~1 ms of CPU
            trained = {id(p) for opt in active for group in opt.param_groups for p in group["params"]}
            self._idle_parameters[names] = [p for p in self.parameters() if id(p) not in trained]
        frozen = [p for p in self._idle_parameters[names] if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        outer, self._loss_in_training = self._loss_in_training, self.loss_name(n for n in optimizers if n in names)
        try:
            yield active
        finally:
            self._loss_in_training = outer
            for p in frozen:
                p.requires_grad_(True)

    def penalty_scale(self) -> torch.Tensor | None:
        """Under fp16 loss scaling, the loss scale of the players being trained (the `players`
        block this is called in), as a device tensor, for a gradient penalty's inner gradient
        (`src.losses.input_gradient`); None otherwise."""
        if self.grad_scalers is None:
            return None
        if self._loss_in_training is None:
            raise RuntimeError("penalty_scale() must be called inside `with self.players(...)`: it is the scale "
                               "of the trained players' loss")
        return self.grad_scalers.scale_tensor(self._loss_in_training, self.device)

    @staticmethod
    def loss_name(players) -> str:
        """The name the loss of these players is scaled under (fp16): their names, given in
        optimizer order, joined."""
        return "+".join(players)

    def weighted_gradient_penalty(self, critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """WGAN-GP's penalty (`src.losses.gradient_penalty`) of the critic being trained, times
        `loss.weights.gp`: the share of the critic's loss every model logs apart. Its inner
        gradient is scaled as the critic's loss is under fp16."""
        return self.weight("gp") * gradient_penalty(critic, real, fake, scale=self.penalty_scale())

    def update(self, optimizers, *losses) -> torch.Tensor:
        """Back-propagate each loss in turn, then step every given optimizer (a list, or one).

        A loss is a tensor, or a function of no arguments that builds one. A function runs only
        after the previous loss's backward has freed that graph, so independent parts of one
        player's objective never hold their activations at the same time; the gradients add up
        to the gradient of their sum. Returns the sum, detached.
        """
        optimizers = optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        total = None
        with self.loss_scaling(optimizers):
            for i, loss in enumerate(losses):
                loss = loss() if callable(loss) else loss
                last = i == len(losses) - 1
                # Only the last backward completes the gradients, so only it may step them.
                stepping = (step_in_backward.stepping_in_backward(optimizers, step_in_backward.MIN_ELEMENTS)
                            if last and self.steps_in_backward else contextlib.nullcontext())
                self.inside_a_step = last and self.steps_in_backward
                with stepping:
                    self.manual_backward(loss)
                total = loss.detach() if total is None else total + loss.detach()
            if self.gradient_clipping is not None:
                self.clip_gradients_of(optimizers)
            self.inside_a_step = True
            for opt in optimizers:
                # Steps what was not stepped in backward (the small tensors, or everything when
                # that is off), and counts the optimizer step for Lightning either way.
                opt.step()
                # Free the gradients now: they are stale once stepped, and holding them through
                # the other players' steps only costs memory.
                opt.zero_grad(set_to_none=True)
        if self.weight_clip is not None:
            self.clip_critic_weights(optimizers)
        self.inside_a_step = False
        # Autocast caches the low-precision copy of each trainable weight for the rest of the
        # training step; those copies are stale now that the weights moved.
        if torch.is_autocast_enabled(self.device.type):
            torch.clear_autocast_cache()
        return total

    @torch.no_grad()
    def clip_gradients_of(self, optimizers) -> None:
        """`trainer.gradient_clip_val` by `trainer.gradient_clip_algorithm`, per optimizer as
        Lightning clips under automatic optimization; under fp16 the gradients are unscaled first
        (the clip value is in the loss's own units)."""
        value, algorithm = self.gradient_clipping
        for opt in optimizers:
            raw = step_in_backward.raw_optimizer(opt)
            if self.grad_scalers is not None:
                self.grad_scalers.unscale_(raw)
            grads = [p for group in raw.param_groups for p in group["params"] if p.grad is not None]
            if algorithm == "value":
                torch.nn.utils.clip_grad_value_(grads, value)
            else:
                torch.nn.utils.clip_grad_norm_(grads, value)

    @torch.no_grad()
    def clip_critic_weights(self, optimizers) -> None:
        """WGAN: the discriminators' parameters these optimizers just stepped, clipped to
        [-c, c] (the generators' steps leave the critic alone)."""
        critic = {id(p) for net in self.image_discriminators() for p in net.parameters()}
        stepped = [p for opt in optimizers for group in step_in_backward.raw_optimizer(opt).param_groups
                   for p in group["params"] if id(p) in critic]
        if stepped:   # two fused passes, not two kernels per tensor
            torch._foreach_clamp_min_(stepped, -self.weight_clip)
            torch._foreach_clamp_max_(stepped, self.weight_clip)

    @property
    def steps_in_backward(self) -> bool:
        """Whether `update` steps each parameter during backward (src/models/step_in_backward.py):
        `model.optimizer.step_in_backward` true, or "auto" on a CPU, and never with fp16 loss
        scaling, gradient clipping or under a multi-process strategy, which need all gradients
        before the first step. "auto" leaves it off on GPUs: there it turns one multi-tensor Adam kernel per
        player into a kernel launch per parameter tensor, and a GPU step at small batches is
        bound by launches (on an H200, batch-1 iterations ran 0.79-0.90x as fast with it on; on
        the CPU it saves memory, at 0.95-1.13x the speed: README, "Speed")."""
        setting = self.optimizer_cfg.get("step_in_backward", "auto")
        wanted = self.device.type == "cpu" if setting == "auto" else setting
        return wanted and not self.step_in_backward_blockers()

    def step_in_backward_blockers(self) -> list[str]:
        """What in this run needs every gradient before the first step, by setting."""
        blockers = []
        if self.grad_scalers is not None:
            blockers.append("fp16 loss scaling (trainer.precision=16-mixed)")
        if self.gradient_clipping is not None:
            blockers.append("gradient clipping (trainer.gradient_clip_val)")
        if self._trainer is not None and not isinstance(self._trainer.strategy, SingleDeviceStrategy):
            blockers.append(f"several processes (trainer.strategy: {type(self._trainer.strategy).__name__})")
        return blockers

    def loss_scaling(self, optimizers):
        """fp16: the loss scaler of the players these optimizers train; otherwise nothing."""
        if self.grad_scalers is None:
            return contextlib.nullcontext()
        names = [name for name, opt in self.named_optimizers().items() if any(opt is o for o in optimizers)]
        return self.grad_scalers.scaling(self.loss_name(names), [step_in_backward.raw_optimizer(o) for o in optimizers])

    def log_losses(self, terms: dict[str, torch.Tensor], totals: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log every weighted loss term as `train/<term>` and the players' totals (also on the
        progress bar) as `train/<total>`, on the iterations `logs_this_iteration` chose: each the
        mean over the iterations since the last logged one and over the DDP ranks (one
        iteration's value of one rank swings too much to read a trend from; StyleGAN's
        training_stats average the same way)."""
        names = [*terms, *totals]
        values = torch.stack([v.detach().float() for v in (*terms.values(), *totals.values())])
        if self.loss_window is None or self.loss_window.names != names:
            self.loss_window = LossWindow.start(names, values, skip_non_finite=self.grad_scalers is not None)
        else:
            self.loss_window.add(values)
        if not self.logging_losses:
            return
        # One reduction for all the losses (Lightning's: a barrier, then an all-reduce), on the
        # logged iterations only, which every rank takes alike. Then on the host, in one copy: Lightning keeps the last logged values until
        # the epoch ends and reads the progress bar's with `.item()` after every batch, which for
        # GPU tensors would wait for the GPU's queue each iteration instead of once per logged one.
        values, iterations = self.loss_window.mean(), self.loss_window.iterations
        if self._trainer is not None and self.trainer.world_size > 1:
            values = self.trainer.strategy.reduce(values, reduce_op="mean")
        values = values.cpu()
        self.loss_window = None
        self.check_losses_finite(names, values, iterations)
        values = values.unbind()
        self.log_dict({f"train/{k}": v for k, v in zip(terms, values)}, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in zip(totals, values[len(terms):])}, prog_bar=True,
                      batch_size=batch_size)
        self.log("train/kimg", self.images_through_iteration / 1000, batch_size=batch_size)

    def check_losses_finite(self, names: list[str], values: torch.Tensor, iterations: int = 1) -> None:
        """Stop a run whose logged losses (host tensor, the means over `iterations`) are NaN or
        infinite (src/models/divergence.py).
        Under DDP the weights are checked instead: they are the same on every rank, so every
        rank stops at the same iteration (a loss can go NaN on one rank first, and a rank that
        stopped alone would leave the others waiting in their next collective). Under fp16 loss
        scaling, where an overflow only skips a step, warn once per loss whose scale has fallen
        so low that its steps are being skipped, and stop the run once it has fallen so far that
        the player no longer trains (DIVERGED_LOSS_SCALE; the scales are the same on every rank)."""
        if self.grad_scalers is None:
            if self._trainer is not None and self.trainer.world_size > 1:
                refuse_non_finite_weights(self, self.iteration)
            elif bad := non_finite_losses(names, values):
                listed = ", ".join(f"train/{name} is {value}" for name, value in bad.items())
                if iterations > 1:
                    listed += f" (means over the {iterations} iterations since the last logged one)"
                raise TrainingDiverged(diverged_message(listed, self.iteration))
            return
        scales = self.grad_scalers.scales()
        if stuck := {name: scale for name, scale in scales.items() if scale < DIVERGED_LOSS_SCALE}:
            listed = ", ".join(f"the fp16 loss scale of the {name} is {scale:g}" for name, scale in stuck.items())
            raise TrainingDiverged(diverged_message(f"{listed} (its gradients overflow fp16 at 2**-16 of their size: "
                                                    f"its steps have been skipped for many iterations)", self.iteration))
        for name, scale in scales.items():
            if scale < LOW_LOSS_SCALE and name not in self.low_scale_warned:
                self.low_scale_warned.add(name)
                rank_zero_warn(f"Iteration {self.iteration}: the fp16 loss scale of the {name} is down to {scale:g}: "
                               f"their gradients overflow fp16 even unscaled, so their steps are being "
                               f"skipped. trainer.precision=bf16-mixed (same range as fp32) or 32 avoids it.")

    def logs_this_iteration(self) -> bool:
        """Whether this iteration's losses are logged (asked before its first step): on the
        iterations whose values Lightning writes to the loggers (every `trainer.log_every_n_steps`
        batches, counted as Lightning does), and on the run's last, whose values
        `trainer.callback_metrics` hands back when training ends. Not on the last of an epoch
        before it: Lightning writes nothing there, so the mean of the epoch's last iterations
        (34 of CycleGAN's 1334 on horse2zebra) reached no logger; they go into the next row. Each `self.log` call costs
        ~1 ms of CPU (Lightning moves its record of the key to the value's device, deep-copying
        its metadata): ~9 ms an iteration for CycleGAN's nine terms, where a batch-1 GPU
        iteration is paced by the CPU issuing its kernels (experiments/bench/README.md, "On a GPU")."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        due = every > 0 and (self.iteration + 1) % every == 0
        return due or self.runs_last_iteration() or trainer.should_stop

    def runs_last_iteration(self) -> bool:
        """Whether this iteration (asked before its first step) is the run's last: by max_iters,
        or the last batch of the last epoch."""
        trainer = self.trainer
        last_epoch = trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1
        return (trainer.is_last_batch and last_epoch) or self.ends_at_max_iters()

    def ends_at_max_iters(self) -> bool:
        """Whether this iteration (asked before its first step) is the last that max_iters allows."""
        return 0 < self.trainer.max_steps <= self.trainer.global_step + self.optimizer_steps_per_iter

    def _step_schedulers(self) -> None:
        for scheduler in self.scheduler_list():
            scheduler.step()

    def train_iteration(self, batch: dict) -> None:
        """One training iteration: every player's step, in the model's order."""
        raise must_define(self, "train_iteration(batch)")

    def batch_images(self, batch: dict) -> int:
        """The minibatch one training iteration learns from on this device."""
        return batch["A"].size(0)

    def images_per_iteration(self, batch: dict) -> int:
        """The images one training iteration's generator step learns from over all devices (what
        the EMA's `half_life_images` counts)."""
        return self.batch_images(batch) * self.trainer.world_size

    def loaded_images(self, batch: dict) -> int:
        """The real images one training iteration loaded over all devices, a WGAN critic's several
        batches included (what `max_kimg` counts, as the ProGAN/StyleGAN codes count every
        minibatch their discriminator sees)."""
        return batch["A"].size(0) * self.trainer.world_size

    def images_before(self, batch: dict) -> int:
        """The real images trained on before this batch's iteration; from a checkpoint without the
        count, estimated (`estimated_images_before`) and said."""
        if self.images_seen is None:
            self.images_seen = self.estimated_images_before(batch)
            rank_zero_warn(f"The checkpoint resumed holds no image count: train/kimg (and max_kimg) take "
                           f"{self.images_seen} images for its {self.iteration} iterations")
        return self.images_seen

    def images_after(self, batch: dict) -> int:
        """The real images trained on once this batch's iteration is done: what its loss row logs
        as train/kimg, and what max_kimg counts."""
        return self.images_before(batch) + self.loaded_images(batch)

    @property
    def images_through_iteration(self) -> int:
        """Inside an iteration, the real images trained on with it included (`images_seen` takes
        it in only once the iteration is done)."""
        return self.images_seen + self.iteration_images

    def publish_iteration_metrics(self, metrics: dict[str, float]) -> None:
        """Send metrics measured inside an iteration, after its steps, at the step and image
        count its evaluations have."""
        publish_metrics(self._trainer, metrics, step=self.iteration, images=self.images_through_iteration)

    def estimated_images_before(self, batch: dict) -> int:
        """As if every earlier iteration had loaded as many images as this one."""
        return self.iteration * self.loaded_images(batch)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        if self.ends_at_max_iters():
            # Lightning writes a step's values to the loggers every log_every_n_steps, or on a
            # stop: without one the run's last row (and every row of a run shorter than that:
            # max_iters=20 at the default 50) reached no logger, only train()'s return. (A run in
            # epochs ends at its last epoch's end, where its last checkpoint is written: a stop
            # would move that save to the batch's end, and a resume of the finished run would
            # start its last epoch's end again.)
            self.trainer.should_stop = True
        self.logging_losses = self.logs_this_iteration()   # before the steps move global_step
        self.check_batch(batch)
        self.ramp_momentum()
        self.iteration_images = self.loaded_images(batch)
        self.images_seen = self.images_before(batch)
        steps_before = self.trainer.global_step
        self.train_iteration(batch)
        self.check_steps_taken(self.trainer.global_step - steps_before)
        # Counted once the iteration is done: a crash checkpoint inside it, which the resumed
        # run repeats, holds the count without it.
        self.images_seen += self.iteration_images
        # Step the schedules here, per-epoch ones after an epoch's last batch, not in the batch-
        # or epoch-end hooks: checkpoint callbacks save before the module's batch-end hook, and a
        # checkpoint at an epoch's last batch precedes the epoch-end hooks, which a run resumed
        # from it never calls (the schedule would stay an epoch behind). A run stopped inside an
        # epoch (max_iters) steps it when the resumed run ends that epoch.
        unit = self.lr_schedule_cfg.get("unit", "epoch")
        if unit == "iteration" or (unit == "epoch" and self.ends_an_epoch(batch_idx)):
            self._step_schedulers()

    def check_steps_taken(self, steps: int) -> None:
        """An iteration must take `optimizer_steps_per_iter` optimizer steps: iterations are
        counted from Lightning's global_step by it (max_iters, checkpoint and evaluation
        schedules, the resume point), and a model that declares another number runs to the
        wrong length without a word."""
        if steps != self.optimizer_steps_per_iter:
            raise RuntimeError(f"{type(self).__name__}.train_iteration took {steps} optimizer steps, but its "
                               f"optimizer_steps_per_iter is {self.optimizer_steps_per_iter}: set it to the steps "
                               f"one iteration takes, the same in every iteration (iterations are counted from "
                               f"global_step by it; a player that learns less often takes several steps in one "
                               f"iteration, as WGAN's critic does, rather than skipping some)")

    def ends_an_epoch(self, batch_idx: int) -> bool:
        """Whether this batch is the epoch's last (its loader is exhausted, or
        `trainer.limit_train_batches` is reached)."""
        trainer = self.trainer
        return trainer.is_last_batch or batch_idx + 1 == trainer.num_training_batches

    def check_batch(self, batch: dict) -> None:
        """A clear error naming the data settings, before the first step, for a batch the
        networks cannot take."""

    def on_fit_end(self) -> None:
        # Lightning moves the networks to the CPU after a GPU fit; the pools are plain lists, and
        # their fakes held GPU memory as long as the model lived (a notebook, a multirun's jobs).
        for pool in self.pools.values():
            pool.to_cpu()

    # ----- checkpoint state beyond the nets and optimizers --------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning stores no class: load_model would have to find it from the hyperparameters.
        checkpoint["model_class"] = class_path(self)
        if self.model_name:
            checkpoint["model_name"] = str(self.model_name)
        # Beside the datamodule's hyperparameters (Lightning's), its class: with both, the
        # checkpoint alone rebuilds the data it was trained on (eval.py away from its run folder).
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is not None:
            checkpoint["datamodule_class"] = class_path(datamodule)
            if callable(getattr(datamodule, "class_folders", None)):
                # What each label means (the data's hyperparameters hold `classes: null` when the
                # folders decide): eval.py and a resume check that their data reads the same.
                checkpoint["class_folders"] = list(datamodule.class_folders())
            if getattr(datamodule, "run_seed", None) is not None:
                # ckpt_path=auto refuses a checkpoint of another seed's run in its folder
                checkpoint["run_seed"] = int(datamodule.run_seed)
        checkpoint["image_pools"] = {name: pool.state_dict() for name, pool in self.pools.items()}
        checkpoint["images_seen"] = self.images_seen
        # Resuming must continue the same run: keep the RNG streams that dropout, the pool and
        # the data pipeline draw from.
        checkpoint["rng_states"] = collect_rng_states()

    def resume_refusal(self, checkpoint: dict) -> str | None:
        """Why this model cannot continue `checkpoint`'s run under its settings, with the fix;
        None where it can (its networks aside: `check_resume_fits`). Asked when the checkpoint
        loads, and before, by ckpt_path=auto's refusal, which offers naming the file only where
        it would load."""
        return None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Called before Lightning loads the weights: a checkpoint of other model settings gets
        # an error that says so, not load_state_dict's list of keys.
        check_resume_fits(self, checkpoint, self.trainer.ckpt_path if self._trainer is not None else None)
        if (refusal := self.resume_refusal(checkpoint)) is not None:
            raise ValueError(refusal)
        for name, state in checkpoint.get("image_pools", {}).items():
            if name in self.pools:
                self.pools[name].load_state_dict(state)
        self.images_seen = checkpoint.get("images_seen")
        self.resumed_lr_factors = changed_learning_rates(
            (checkpoint.get("hyper_parameters") or {}).get("optimizer"), self.optimizer_cfg, list(self.player_modules()))
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if checkpoint.get("run_seed") is not None and getattr(datamodule, "run_seed", None) is not None:
            # The run goes on as the one its first start seeded (ckpt_path=last, hpc and URLs
            # too), and its checkpoints keep saying so.
            datamodule.run_seed = int(checkpoint["run_seed"])
        if "rng_states" in checkpoint and self._trainer is not None:
            # A fit resuming; not Lightning's `load_from_checkpoint`, which calls this hook too
            # and would set a notebook's random streams to the training run's.
            restore_rng_states(checkpoint["rng_states"])


class TranslationModel(AdversarialModel):
    """An image-to-image translator: generators per direction, `translate(x, direction)`."""

    #: whether the method learns from aligned pairs (pix2pix); the unpaired methods' papers and
    #: reference loaders draw each B at random, independently of its A
    learns_from_pairs = False

    @classmethod
    def data_kind(cls) -> tuple[type, str]:
        from src.data.base import TwoDomainDataModule   # keeps data code out of the model import

        return TwoDomainDataModule, (
            "two image domains: use an unpaired data config (data=shapes, horse2zebra, ...) or a paired one "
            "(data=shapes_paired, facades, ...); a DataModule of one's own subclasses "
            "src.data.unpaired.UnpairedDataModule or src.data.paired.PairedDataModule (src.data.base.TwoDomainDataModule)")

    @classmethod
    def check_data_config(cls, data_cfg, model_name: str) -> None:
        """...and, for a method that learns from pairs, data that serves them: refused at
        on_fit_start, it got there after the ranks started and the callbacks' setup (Inception
        built, or downloaded)."""
        super().check_data_config(data_cfg, model_name)
        target = data_cfg.get("_target_")
        data_class = hydra.utils.get_class(target) if target else None
        if cls.learns_from_pairs and getattr(data_class, "paired", None) is False:
            raise ValueError(needs_paired_data(cls.__name__))

    def generator_for(self, direction: str) -> nn.Module:
        raise must_define(self, "generator_for(direction)")

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "paired"):
            return
        name = type(self).__name__
        if self.learns_from_pairs and not datamodule.paired:
            raise ValueError(needs_paired_data(name))
        if not self.learns_from_pairs and datamodule.paired:
            rank_zero_warn(f"{name} is an unpaired method, and data {datamodule.name} serves aligned pairs: every "
                           "batch's B is its A's own partner, where the paper's loader draws B at random. For the "
                           "paper's setting use an unpaired data config (the public paired datasets have one: "
                           "data=cityscapes_unpaired, facades_unpaired, maps_unpaired).")

    def check_batch(self, batch: dict) -> None:
        """A clear error naming the data settings, instead of a tensor-size error deep in a
        forward pass or a loss broadcasting over channels, when the networks cannot run on this
        batch's image size or channels (once per domain and shape; src/models/size_check.py)."""
        for key in ("A", "B"):
            images = batch[key]
            if (key, *images.shape) in self._batch_shapes_checked:
                continue
            self.check_batch_channels(key, tuple(images.shape))
            size = (images.size(0), *images.shape[2:])   # what the size check depends on
            if size not in self._image_sizes_checked:
                check_image_size(self, images)
                self._image_sizes_checked.add(size)
            self._batch_shapes_checked.add((key, *images.shape))

    def check_batch_channels(self, domain: str, shape: tuple[int, ...]) -> None:
        """The networks are built for `model.generator.input_nc` / `output_nc`, the images read for
        `data.input_nc` / `output_nc`: where they differ, say so here rather than in a
        convolution's tensor error, or in a loss that broadcasts one channel over three."""
        channels = shape[1]
        for direction in translated_directions(self)[0]:
            source, target = DIRECTION_KEYS[direction]
            if source == domain:
                found, what = input_channels(self, direction), "reads"
            elif target == domain:
                if self._output_channels.get(direction) is None:   # the same at every size it runs at
                    self._output_channels[direction] = output_channels(self, direction, shape[0], *shape[2:])
                found, what = self._output_channels[direction], "writes"
            else:
                continue
            if found is not None and found != channels:
                raise ValueError(f"The data gives {channels}-channel {domain} images, and {type(self).__name__}'s "
                                 f"{direction} translation {what} {found}: the networks' input_nc/output_nc "
                                 f"(model.generator...) must be data.input_nc/output_nc, as the model configs set them")

    # ----- sampling ----------------------------------------------------------------------
    def translate(self, x: torch.Tensor, direction: str = "AtoB") -> torch.Tensor:
        """Translate a batch (N, C, H, W) of float images in [-1, 1] under no_grad and eval mode,
        on the model's device. The sizes are the caller's to fit: image files of any size go
        through src.utils.translation.translate_images, which pads them.

        A model that samples with the batch's own statistics (pix2pix's test-time batch norm)
        translates one image at a time, as its paper tests: an image's translation must not
        depend on which others share its batch (evaluation, sample grids, translate.py).
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got '{direction}'")
        require_float_images(x, "translate")
        # In the weights' type: a notebook's float64 array (img / 127.5 - 1) stopped in the first
        # convolution ("Input type (double) and bias type (float) should be the same").
        x = x.to(self.device, self.dtype)
        options = self.sampling_options()
        with sampling_mode(self.translation_nets(direction), **options):
            # (in the mode the translation runs in: a train-mode norm refuses sizes eval mode takes)
            self.check_translatable_size(direction, *x.shape[-2:])
            if options.get("batch_stats") and x.size(0) > 1:
                y = torch.cat([self.translation_forward(image, direction) for image in x.split(1)])
            else:
                y = self.translation_forward(x, direction)
        if y.shape[-2:] != x.shape[-2:]:   # a ResNet generator turns 250 px into 252 px without a word
            raise ValueError(f"{type(self).__name__} translated {tuple(x.shape[-2:])} px images into "
                             f"{tuple(y.shape[-2:])} px: pad them to a multiple of "
                             f"{size_multiple(self, direction)} px first (translate_images does)")
        return y

    def check_translatable_size(self, direction: str, height: int, width: int) -> None:
        """Refuse, before the forward pass, a size the translation cannot take: a U-Net's skip
        connections otherwise stop with "Sizes of tensors must match". Checked on the meta
        device once per size (translate runs once per batch of an evaluation)."""
        checked = self.__dict__.setdefault("_translatable_sizes", set())
        if (direction, height, width) not in checked:
            check_translation_size(self, direction, height, width, what="translate",
                                   fix=f"pad them to a multiple of {size_multiple(self, direction)} px first "
                                       "(translate_images does)")
            checked.add((direction, height, width))

    def translation_nets(self, direction: str) -> list[nn.Module]:
        """Every network a translation runs through (NICE-GAN: the source encoder too)."""
        return [self.generator_for(direction)]

    def translation_forward(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        return self.generator_for(direction)(x)

    def sample_images(self, batch: dict) -> dict[str, torch.Tensor]:
        """Rows of the sample grid: each translated direction's source images and translations,
        then the target images (a model's own override adds reconstructions, attention maps)."""
        rows = {}
        for direction in translated_directions(self)[0]:
            source_key, target_key = DIRECTION_KEYS[direction]
            rows[f"real_{source_key}"] = batch[source_key]
            rows[f"fake_{target_key}"] = self.translate(batch[source_key], direction)
        for key in ("A", "B"):
            rows.setdefault(f"real_{key}", batch[key])
        return rows

    def sampling_nets(self) -> list[nn.Module]:
        """Every network a translation of a translated direction runs through."""
        nets = {id(net): net for direction in translated_directions(self)[0]   # pix2pix: AtoB only
                for net in self.translation_nets(direction)}
        return list(nets.values())

    def evaluation_streams(self, configured: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, str]]:
        return translated_directions(self, configured)

    def evaluation_pair(self, batch: dict, stream: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Real target-domain images, and the translations of the source-domain ones."""
        source_key, target_key = DIRECTION_KEYS[stream]
        return batch[target_key].to(self.device), self.translate(batch[source_key].to(self.device), stream)
