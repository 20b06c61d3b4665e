"""Progressive GAN (Karras et al., ICLR 2018): generator and discriminator grow from 4x4 to the
image size (src/nets/progan.py), trained with WGAN-GP plus the paper's drift term
0.001 * E[D(real)^2] that keeps the critic's scores near zero.

The growth follows src/models/progressive_schedule.py: phases of `phase_images` real images,
the first training the start level, then each level faded in over one phase (alpha rising
linearly from 0 to 1) and trained alone over the next; a batch size (`batch_sizes`) and a
learning rate (`lr_by_resolution`) per resolution, as the authors' code sets them. The schedule
is a function of the training iteration and of the settings each part of the run trained with
(recorded in its checkpoints), so a resume with other batch sizes, phase length or devices
goes on from the images trained. The real images
the critic sees are brought to the stage's resolution, and faded like the generator's output
(`faded_reals`). The stage is logged as `train/level` and `train/alpha`, the real images seen
so far (all devices) as `train/kimg`.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

from src.callbacks.image_budget import ImageBudget
from src.models.checkpoint_fit import checkpoint_iteration, upgraded_hparams
from src.models.noise_gan import NoiseGAN
from src.models.progressive_schedule import Part, ProgressiveSchedule, level_resolution
from src.nets.progan import GrowingNet, stddev_group
from src.utils.config_checks import is_number, require_bool, require_int


def faded_reals(images: torch.Tensor, level: int, alpha: float, top_level: int) -> torch.Tensor:
    """Real images as the generator makes them at this stage, presented at full size: their
    resolution at `level` and, while the level fades in, blended with the resolution below by
    alpha, as the generator's output is (the authors' code fades the reals the same way)."""
    factor = 2 ** (top_level - level)
    current = F.avg_pool2d(images, factor) if factor > 1 else images
    if level > 0 and alpha < 1.0:
        below = F.interpolate(F.avg_pool2d(current, 2), scale_factor=2, mode="nearest")
        current = torch.lerp(below, current, alpha)
    return F.interpolate(current, scale_factor=factor, mode="nearest") if factor > 1 else current


def resolution_table(key: str, table: dict | None, resolutions: list[int]) -> dict[int, object]:
    """`model.<key>` with its keys as ints (a command line's `++model.<key>.64=...` adds "64").
    Resolutions above the image size may be listed (a paper's table up to 1024 px)."""
    checked = {}
    for resolution, value in dict(table or {}).items():
        side = int(resolution) if str(resolution).isdigit() else None
        if side is None or side < 4 or side & (side - 1):
            raise ValueError(f"model.{key} lists resolution {resolution!r}: the keys are image sides, 4 * 2^k "
                             f"(this model's: {resolutions})")
        checked[side] = value
    return checked


class ProGAN(NoiseGAN):
    """`grow: false` trains at full size from the first iteration (no growth: the networks'
    other levels idle), for ablations and for timing the full-size step.

    `batch_size` is the batch of a resolution `batch_sizes` does not list (data.batch_size);
    `lr_by_resolution` gives rates in place of model.optimizer.lr at the resolutions it lists
    (each player's rate scaled by the same factor). `reset_optimizers_per_phase` clears both
    players' optimizer state (Adam's moments and step count) as each fade-in and each
    stabilising phase begins, as both authors' codes do (`reset_opt_for_new_lod`)."""

    # README "Resuming": StyleGAN's batch per resolution lowered after running out of memory
    resumable_settings = NoiseGAN.resumable_settings + ("batch_size", "batch_sizes", "phase_images", "start_resolution",
                                                        "grow")

    def __init__(self, *args, phase_images: int = 800_000, drift: float = 0.001, grow: bool = True,
                 batch_size: int = 16, batch_sizes: dict | None = None, lr_by_resolution: dict | None = None,
                 start_resolution: int = 4, reset_optimizers_per_phase: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.generator, GrowingNet):
            # A TypeError, as for a wrong argument: checkpoint loading tries the model classes in turn.
            raise TypeError(f"model.generator is a {type(self.generator).__name__}, which does not grow: ProGAN "
                            "and StyleGAN take src.nets.progan.ProGANGenerator or src.nets.stylegan.StyleGANGenerator")
        if getattr(self.generator, "mixing_prob", 0) > 0 and self.latent_distribution != "normal":
            raise ValueError(f"model.latent_distribution={self.latent_distribution!r}: StyleGAN's style mixing draws "
                             f"its second latent from N(0, 1), as its code does; use normal (or turn mixing off with "
                             f"model.generator.mixing_prob=0)")
        require_int("model.phase_images", phase_images, why=" (real images per phase)")
        require_int("model.batch_size", batch_size, why=" (data.batch_size)")
        if drift < 0:
            raise ValueError(f"model.drift={drift!r} must be >= 0")
        if not isinstance(grow, bool):
            raise ValueError(f"model.grow={grow!r} must be true (grow from 4x4) or false (full size throughout)")
        resolutions = self.resolutions()
        batch_sizes = resolution_table("batch_sizes", batch_sizes, resolutions)
        lr_by_resolution = resolution_table("lr_by_resolution", lr_by_resolution, resolutions)
        for resolution, size in batch_sizes.items():
            require_int(f"model.batch_sizes.{resolution}", size, why=" (images per device)")
        for resolution, rate in lr_by_resolution.items():
            if not is_number(rate) or rate <= 0:
                raise ValueError(f"model.lr_by_resolution.{resolution}={rate!r} must be a positive rate")
        if lr_by_resolution and not self.optimizer_cfg.get("lr"):
            # Its rates are applied as factors of the configured one, which 0 cannot carry.
            raise ValueError(f"model.optimizer.lr={self.optimizer_cfg.get('lr')!r} with model.lr_by_resolution: the "
                             f"rate below {min(lr_by_resolution)} px must be > 0 (model.lr_by_resolution=null to train "
                             "at one rate)")
        if start_resolution not in resolutions:
            raise ValueError(f"model.start_resolution={start_resolution!r} must be one of {resolutions}")
        require_bool("model.reset_optimizers_per_phase", reset_optimizers_per_phase)
        settings = {"phase_images": phase_images, "drift": drift, "grow": grow, "batch_size": batch_size,
                    "batch_sizes": batch_sizes, "lr_by_resolution": lr_by_resolution,
                    "start_resolution": start_resolution, "reset_optimizers_per_phase": reset_optimizers_per_phase}
        self.hparams.update(settings)
        self.drift, self.grow = float(drift), grow
        self._schedule: ProgressiveSchedule | None = None
        #: the schedule settings of each part of a resumed run, from its checkpoint
        self._earlier_parts: list[Part] = []
        self._resumed_at = 0

    def _settings_from(self, first_iteration: int) -> Part:
        """This fit's schedule settings, as a part of the run starting at `first_iteration`."""
        h = self.hparams
        world_size = self.trainer.world_size if self._trainer is not None else 1
        return Part(first_iteration, h.phase_images, h.batch_size, dict(h.batch_sizes), world_size, self.n_critic)

    @property
    def parts(self) -> list[Part]:
        """The schedule settings of each part of this run: those its checkpoint recorded, and
        this fit's from the iteration it resumed at where they differ."""
        # A part that would start at the resume trained no iteration: this fit's settings replace it.
        history = [part for part in self._earlier_parts if part.first_iteration < self._resumed_at]
        if not history:
            return [self._settings_from(0)]
        current = self._settings_from(self._resumed_at)
        if dataclasses.replace(history[-1], first_iteration=self._resumed_at) != current:
            history.append(current)
        return history

    @property
    def schedule(self) -> ProgressiveSchedule:
        """The growth schedule of this run (its phases count the images of every device). Read
        several times an iteration, so built once: `setup` (the device count) and
        `on_load_checkpoint` (the run's earlier parts) drop it, the only places its parts change."""
        if self._schedule is None:
            h = self.hparams
            self._schedule = ProgressiveSchedule(
                top_level=self.generator.top_level, parts=self.parts, lr_by_resolution=h.lr_by_resolution,
                base_lr=self.optimizer_cfg["lr"], start_level=self.resolutions().index(h.start_resolution),
                grow=self.grow)
        return self._schedule

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["schedule_parts"] = [part.as_record() for part in self.parts]

    #: settings that shape the growth itself; changed on resume, the phases are laid out anew
    STRUCTURE_SETTINGS = ("start_resolution", "grow")
    #: settings each part of a run records, so that a resume with others goes on from the images trained
    #: (and model.n_critic, as the part's critic_batches: a resume with another n_critic does too)
    PART_SETTINGS = ("phase_images", "batch_size", "batch_sizes")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        # an older run's settings in today's names (phase_iters: its phases in images, at its batch size)
        saved = upgraded_hparams(checkpoint.get("hyper_parameters", {}), checkpoint, type(self))
        changed = {key: f"model.{key}: {saved[key]!r} -> {self.hparams[key]!r}"
                   for key in (*self.STRUCTURE_SETTINGS, *self.PART_SETTINGS)
                   if key in saved and saved[key] != self.hparams[key]}
        if structural := [changed[key] for key in self.STRUCTURE_SETTINGS if key in changed]:
            rank_zero_warn(f"Resuming with another growth structure than the run being continued ({'; '.join(structural)}): "
                           f"the phases are laid out anew, so the resumed iteration may fall in another phase "
                           f"(another resolution or fade-in) than the one the run was training")
        if per_part := [changed[key] for key in self.PART_SETTINGS if key in changed]:
            rank_zero_info(f"Resuming with other schedule settings ({'; '.join(per_part)}): the phase being trained "
                           f"goes on with the images it lacks by them")
        self._resumed_at = checkpoint_iteration(checkpoint, self)
        self._earlier_parts = self._parts_recorded_in(checkpoint, saved)
        self._schedule = None

    def _parts_recorded_in(self, checkpoint: dict, saved: dict) -> list[Part]:
        if "schedule_parts" in checkpoint:
            return [Part(**record) for record in checkpoint["schedule_parts"]]
        # Older checkpoints: the device count of each part (or none: this fit's), the settings
        # of the run as its hyperparameters hold them.
        settings = dataclasses.replace(self._settings_from(0), critic_batches=1,   # not counted then
                                       **{key: saved[key] for key in self.PART_SETTINGS if key in saved})
        counts = checkpoint.get("world_sizes") or [(0, settings.world_size)]
        return [dataclasses.replace(settings, first_iteration=int(first), world_size=int(world))
                for first, world in counts]

    def resolutions(self) -> list[int]:
        """The image side of each level, 4x4 first."""
        return [level_resolution(level) for level in range(self.generator.top_level + 1)]

    def stage(self, iteration: int) -> tuple[int, float]:
        return self.schedule.stage(iteration)

    def on_train_start(self) -> None:
        super().on_train_start()
        if message := self.growth_outlasting_the_run():
            rank_zero_warn(message)
        # The first iteration's rate before it starts, where the learning-rate monitor reads it
        # (each later one is set by the scheduler step before it: `_step_schedulers`).
        self.set_resolution_learning_rates(self.iteration)

    def samples_at_full_size(self, iteration: int | None = None) -> bool:
        if iteration is None:
            return self.generator.level == self.generator.top_level and not self.generator.fading
        level, alpha = self.stage(max(iteration - 1, 0))   # the stage its last iteration trained
        return level == self.generator.top_level and alpha == 1.0

    def growth_outlasting_the_run(self) -> str | None:
        """A warning for a run whose length (`max_iters`, `max_kimg`) ends it before the networks
        reach full size, with the length the growth needs: its last samples, FID and checkpoint
        are then at a lower resolution, upsampled. (Short runs do it on purpose: the smoke tests.)"""
        if not self.grow:
            return None
        top = self.generator.top_level
        full_size = next(p.first_iteration for p in self.schedule.phases if p.level == top and not p.fading)
        resolution = level_resolution(top)
        # What max_kimg counts: every real batch loaded, a critic's several included.
        images = self.schedule.images_before(full_size)
        needed = (f"{full_size} iterations, {images / 1000:g} kimg "
                  f"(model.phase_images={self.hparams.phase_images} real images per fade-in and per stabilising phase)")
        iterations = self.run_length_in("iteration") if self.trainer.max_steps > 0 else None
        if iterations is not None and iterations < full_size:
            return (f"max_iters={iterations} ends the run before the networks reach {resolution}x{resolution}, "
                    f"which takes {needed}")
        budget = next((c for c in self.trainer.callbacks if isinstance(c, ImageBudget)), None)
        if budget is not None and budget.max_images < images:
            return (f"max_kimg={budget.max_images / 1000:g} ends the run before the networks reach "
                    f"{resolution}x{resolution}, which takes {needed}")
        return None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self._schedule = None   # built again with this fit's device count
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if stage != "fit" or datamodule is None:
            return
        self.warn_of_shrunk_stddev_groups()
        if not hasattr(datamodule, "set_batch_size_schedule"):
            if self.hparams.batch_sizes:
                raise ValueError(f"model.batch_sizes sets a batch size per resolution, which "
                                 f"{type(datamodule).__name__} cannot follow: set model.batch_sizes=null")
            return
        loader_batch = getattr(datamodule, "batch_size", None)
        if not self.hparams.batch_sizes and loader_batch is not None and loader_batch != self.hparams.batch_size:
            # Without a table the loader serves data.batch_size, while the phases (their length in
            # images, the kimg axis) count model.batch_size: each phase would train another number.
            raise ValueError(f"model.batch_size={self.hparams.batch_size}, but the loader serves data.batch_size="
                             f"{loader_batch} (model.batch_sizes is null): set data.batch_size="
                             f"{self.hparams.batch_size} instead (model.batch_size follows it), or give model.batch_sizes")
        if self.hparams.batch_sizes and self.trainer.overfit_batches:
            # Lightning's overfit_batches swaps the loader's sampler for a sequential one, which it
            # cannot do around a batch sampler whose sizes follow the growth schedule.
            raise ValueError("trainer.overfit_batches cannot be used with model.batch_sizes (a batch size per "
                             "resolution): set model.batch_sizes=null to overfit at data.batch_size")
        # None without a table: a DataModule used before by a scheduled fit goes back to data.batch_size.
        # Read through the model: a resume on another device count rebuilds the schedule after this.
        datamodule.set_batch_size_schedule(self.loader_batch_size_at if self.hparams.batch_sizes else None)
        # The authors' minibatches are always whole: a short last batch would train fewer images
        # than the phases count, and give the minibatch-stddev layer a group it never sees otherwise.
        if hasattr(datamodule, "keep_whole_batches"):
            datamodule.keep_whole_batches(self.largest_model_batch())

    def trained_level_batches(self) -> dict[int, int]:
        """The per-device batch the growth schedule asks for at each level it trains."""
        settings, start = self._settings_from(0), self.resolutions().index(self.hparams.start_resolution)
        levels = range(start if self.grow else self.generator.top_level, self.generator.top_level + 1)
        return {level: settings.level_batch_size(level) for level in levels}

    def largest_model_batch(self) -> int:
        """The largest per-device batch the growth schedule asks for at the levels it trains."""
        return max(self.trained_level_batches().values())

    def warn_of_shrunk_stddev_groups(self) -> None:
        """The minibatch-stddev group shrinks to the largest size that divides a level's batch:
        a prime batch (5, 7) gives groups of one image, whose spread is 0, so the critic's extra
        channel is a constant there. The authors' reshape would fail instead; said here."""
        wanted = self.discriminator.mbstd_group_size
        shrunk = {level_resolution(level): (batch, group) for level, batch in self.trained_level_batches().items()
                  if (group := stddev_group(batch, wanted)) < min(wanted or batch, batch) or group == 1}
        if shrunk:
            said = ", ".join(f"{resolution} px: batch {batch}, groups of {group}"
                             for resolution, (batch, group) in shrunk.items())
            rank_zero_warn(f"The critic's minibatch standard deviation (model.discriminator.mbstd_group_size="
                           f"{wanted}) takes smaller groups than asked where a level's per-device batch is not a "
                           f"multiple ({said}); a group of one image has no spread, so that feature is a constant "
                           "there. Choose batch sizes (model.batch_sizes per resolution, or data.batch_size) that "
                           "are multiples of it.")

    def loader_batch_size_at(self, iteration: int) -> int:
        return self.schedule.batch_size_at(iteration)

    def train_iteration(self, batch: dict) -> None:
        # Set here, from the iteration, so a resumed run continues at its stage; the sampling
        # callbacks after this iteration see the stage it trained.
        iteration = self.iteration
        level, alpha = self.stage(iteration)
        for net in (self.generator, self.discriminator):
            net.set_stage(level, alpha)
        self.set_resolution_learning_rates(iteration)
        if self.hparams.reset_optimizers_per_phase and self.schedule.opens_phase(iteration):
            # From the iteration, like the stage: a run resumed anywhere resets where it would have.
            for optimizer in self.named_optimizers().values():
                optimizer.optimizer.state.clear()
        super().train_iteration({**batch, "A": faded_reals(batch["A"], level, alpha, self.generator.top_level)})
        if self.logging_losses:
            self.log_dict({"train/level": float(level), "train/alpha": alpha}, batch_size=batch["A"].size(0))

    def estimated_images_before(self, batch: dict) -> int:
        # exact: the growth's batch sizes, and the critic batches each part of the run counted
        return self.schedule.images_before(self.iteration)

    def _step_schedulers(self) -> None:
        # Also the next iteration's rate, set now: the learning-rate monitor reads the optimizers
        # before that iteration starts, and a scheduler step has just set them from its base.
        super()._step_schedulers()
        self.set_resolution_learning_rates(self.iteration)

    def set_resolution_learning_rates(self, iteration: int) -> None:
        """With `lr_by_resolution`, every player's rate at `iteration`: its schedule's current rate
        (model.lr_schedule) times the resolution's factor. Rewritten each iteration, so a
        scheduler step in between (which sets the rate from its own base) loses nothing."""
        if not self.hparams.lr_by_resolution:
            return
        factor = self.schedule.lr_factor_at(iteration)
        for scheduler in self.scheduler_list():
            for group, rate in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
                group["lr"] = rate * factor

    def critic_regularizers(self, scores_real):
        return {"drift": self.drift * scores_real.pow(2).mean()} if self.drift else {}
