"""Exponential moving average (EMA) of the networks a model samples with (translation networks,
or a noise-to-image generator), for sampling and evaluation.

After every training iteration: `ema = decay * ema + (1 - decay) * weights`; before `start_iter`
the average just copies the weights (so it does not drag the random initialisation along).
With `half_life_images` the decay follows the batch: `0.5 ** (images / half_life_images)`, the
images being the iteration's batch over all devices, so the average's memory is a number of
images whatever the batch size (StyleGAN's, whose batch changes with the resolution).

What is averaged: the networks the model samples with (`pl_module.sampling_nets`: for a
translator, those a translation runs through in each direction it translates): the generators, and for NICE-GAN the encoders too (its
translation is G(E(x)), and an averaged G fed by a live E would see latents it was not averaged
for). Discriminators are not averaged. Averaged: the parameters and the batch-norm running
statistics (as timm's ModelEmaV2 averages every float tensor of the state dict): a network that
samples in eval mode normalises by those statistics (LSGAN, pix2pix with
`test_time_batch_stats=false`), and averaged weights normalised by statistics the live weights
gathered would be a network that never existed. Spectral-norm vectors stay the live ones (they
estimate a singular vector, not an average), as do batch-norm step counters.

Which weights who sees:
- every training step runs on the training weights;
- between iterations, where every sampling callback runs (image grids, FID/KID, latent and
  ground-truth evaluations, at batch end, epoch end and train end), the networks hold the
  average. The callback swaps it in right after updating it at the end of each training batch,
  and puts the training weights back before the next batch, on an exception and when fit ends.
  So the callback must run first: src/utils/run.py puts it first (`runs_first`), and `setup`
  refuses an order where a sampling hook of another callback would come before the swap.

Checkpoints: `checkpoint["state_dict"]` always holds the training weights (a checkpoint written
while the average is swapped in is corrected in `on_save_checkpoint`); the average is under
`checkpoint["ema"]["state_dict"]` with the model's own keys, so `averaged_state_dict(checkpoint)`
is a full state dict of the averaged model. Resuming continues the average. (A weights-only
checkpoint, `trainer.save_checkpoint(..., weights_only=True)`, skips callback hooks: saved between
iterations, its `state_dict` holds the average. The run's checkpoint callback refuses
`save_weights_only`.)

Lightning's EMAWeightAveraging is not used: it averages the whole module (discriminators too),
writes the average over `state_dict` and leaves it in the model when fit ends.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.model_helpers import is_overridden

from src.models.reference_batch_norm import tracked_batch_norms
from src.utils.config_checks import require_int


#: Callback hooks that run between iterations: where other callbacks sample.
SAMPLING_HOOKS = ("on_train_batch_end", "on_train_epoch_end", "on_train_end")


def averaged_tensors(pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """By state-dict key, the parameters and batch-norm running statistics of every network the
    model samples with (`sampling_nets`: what a translation runs through, or a noise-to-image
    generator)."""
    nets = pl_module.sampling_nets()
    wanted = {id(p) for net in nets for p in net.parameters()}
    wanted |= {id(statistic) for net in nets for layer in tracked_batch_norms(net)
               for statistic in (layer.running_mean, layer.running_var)}
    named = {**dict(pl_module.named_parameters()), **dict(pl_module.named_buffers())}
    return {name: tensor for name, tensor in named.items() if id(tensor) in wanted}


def is_batch_norm_statistic(name: str) -> bool:
    return name.endswith((".running_mean", ".running_var"))


def ema_update_(averaged: list[torch.Tensor], current: list[torch.Tensor], decay: float) -> None:
    """averaged = decay * averaged + (1 - decay) * current, in place: one fused pass over every
    tensor (torch's own EMA, swa_utils.get_ema_multi_avg_fn, does the same), where a multiply and
    an add per tensor read and write each average twice and launch a GPU kernel each."""
    torch._foreach_lerp_(averaged, current, 1.0 - decay)


def averaged_state_dict(checkpoint: dict) -> dict[str, torch.Tensor] | None:
    """The checkpoint's model state dict with the EMA weights in place of the trained ones;
    None if the run kept no EMA."""
    ema = checkpoint.get("ema")
    if not ema:
        return None
    return {**checkpoint["state_dict"], **ema["state_dict"]}


DEFAULT_DECAY = 0.999


class GeneratorEMA(pl.Callback):
    """EMA of the sampling networks (see the module docstring).

    Args:
        decay: weight of the old average in each update (0.999: an average over ~1000 iterations).
        start_iter: iterations before this one copy the weights instead of averaging them.
        enabled: false leaves training and sampling exactly as without the callback.
        half_life_images: when set, each update's decay is 0.5 ** (images / half_life_images)
            (the iteration's images over all devices), in place of `decay`.
    """

    #: src/utils/run.py puts callbacks with this flag first: the others must see the swap.
    runs_first = True

    def __init__(self, decay: float = DEFAULT_DECAY, start_iter: int = 0, enabled: bool = True,
                 half_life_images: float | None = None):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"callbacks.ema.decay={decay!r} must be in [0, 1)")
        require_int("callbacks.ema.start_iter", start_iter, least=0)
        if half_life_images is not None and not half_life_images > 0:
            raise ValueError(f"callbacks.ema.half_life_images={half_life_images!r} must be a positive number of "
                             "images, or null to use callbacks.ema.decay")
        self.decay, self.start_iter, self.enabled = float(decay), start_iter, enabled
        self.half_life_images = half_life_images
        self.names: list[str] = []
        self.averaged: list[torch.Tensor] = []  # the EMA, in the order of `names`
        self._stash: list[torch.Tensor] = []  # the training weights while the EMA is swapped in
        self._tensors: list[torch.Tensor] = []   # the averaged networks' parameters and batch-norm statistics
        self._swapped_in = False
        self._restored: dict[str, torch.Tensor] | None = None
        self.updates = 0  # iterations folded into the average (copies included)
        self._last_update_iter = -1

    # ----- set-up --------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.enabled or stage != "fit":
            return
        position = trainer.callbacks.index(self)
        before = [type(cb).__name__ for cb in trainer.callbacks[:position]
                  if any(is_overridden(hook, cb, pl.Callback) for hook in SAMPLING_HOOKS)]
        if before:
            raise ValueError(f"GeneratorEMA must come before {before} in the callbacks: they sample at batch end "
                             "and would see the training weights (src/utils/run.py orders callbacks this way)")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, not in setup: a resumed model has its weights only now, on its device.
        if not self.enabled:
            return
        tensors = averaged_tensors(pl_module)
        self.names, self._tensors = list(tensors), list(tensors.values())   # (statistics included)
        if self._restored is not None:
            missing = [n for n in self.names if n not in self._restored]
            if any(not is_batch_norm_statistic(n) for n in missing):
                raise KeyError(f"The checkpoint's EMA lacks {missing[:3]}...: it comes from another model")
            if missing:   # an average saved before the statistics were averaged
                rank_zero_warn(f"The checkpoint's EMA holds no batch-norm statistics ({missing[0]}, ...): their "
                               "average starts from the trained network's")
            self.averaged = [(self._restored[n] if n in self._restored else p).to(p.device, p.dtype).clone()
                             for n, p in zip(self.names, self._tensors)]
            self._restored = None
        else:
            self.averaged = [p.detach().clone() for p in self._tensors]
        self._stash = []
        statistics = sum(is_batch_norm_statistic(name) for name in self.names)
        rank_zero_info(f"EMA of {sum(p.numel() for p in self._tensors):,} sampling-network values "
                       + (f"(weights, and {statistics} batch-norm statistics), " if statistics else "(weights), ")
                       + (f"decay {self.decay}" if self.half_life_images is None
                          else f"half-life {self.half_life_images:g} images")
                       + f", averaging from iteration {self.start_iter}")

    # ----- the average -----------------------------------------------------------------------
    def decay_for(self, images: int) -> float:
        """The decay of an update after an iteration on `images` images (all devices)."""
        return self.decay if self.half_life_images is None else 0.5 ** (images / self.half_life_images)

    @torch.no_grad()
    def update(self, iteration: int, images: int = 1) -> None:
        current = [p.detach() for p in self._tensors]
        if iteration < self.start_iter:
            torch._foreach_copy_(self.averaged, current)
        else:
            ema_update_(self.averaged, current, self.decay_for(images))
        self.updates += 1
        self._last_update_iter = iteration

    # The swaps exchange the parameters' tensors (`p.data`), not their values: copying every
    # averaged weight out, in and back each iteration moved three times the sampling networks'
    # size through memory (CycleGAN's generators: 0.27 GB per iteration) and kept a fourth copy
    # as the stash. The Parameter objects, which the optimizers, their state and the hooks hold,
    # stay the same; the training weights come back to the same storage (what CUDA graphs and
    # the Winograd weight cache key on), and nothing steps while the average is in.
    @torch.no_grad()
    def swap_in(self) -> None:
        """Training weights -> stash, average -> networks."""
        if not self._swapped_in:
            self._stash = [p.data for p in self._tensors]
            # Marked before the exchange: a Ctrl-C (KeyboardInterrupt) among the assignments left
            # some networks holding the average unmarked, so the interrupt's swap_out did nothing
            # and interrupted.ckpt saved them as training weights. Undoing the whole stash is
            # harmless for the parameters the exchange did not reach.
            self._swapped_in = True
            for p, average in zip(self._tensors, self.averaged):
                p.data = average

    @torch.no_grad()
    def swap_out(self, device: torch.device | None = None) -> None:
        """Stash (training weights) -> networks (moved to `device` first, when given)."""
        if self._swapped_in:
            for p, weights in zip(self._tensors, self._stash):
                p.data = weights if device is None else weights.to(device)
            self._stash = []
            self._swapped_in = False

    # ----- when ------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.enabled:
            self.swap_out()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.enabled:
            return
        iteration = pl_module.iteration
        if iteration != self._last_update_iter:
            self.update(iteration, pl_module.images_per_iteration(batch))
        self.swap_in()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # After on_train_end (where callbacks still evaluate): the model leaves fit trained.
        # Lightning's strategy has moved the model to the CPU by then, with the average in: the
        # training weights come back from the stash on the device they trained on, so they (and
        # the average) follow the rest of the model, which would otherwise leave fit split
        # across devices, its generators still holding GPU memory.
        if self.enabled:
            # The move gave every buffer a new tensor (parameters keep theirs, with new data): the
            # batch-norm statistics are found again by name, or the training ones would go into
            # tensors the model no longer holds, and it would leave fit with the averaged ones.
            live = averaged_tensors(pl_module)
            self._tensors = [live[name] for name in self.names]
            self.swap_out(pl_module.device)
            self.averaged = [average.to(pl_module.device) for average in self.averaged]

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.enabled:
            self.swap_out()

    # ----- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if not self.enabled or not self.names:
            return
        state_dict = checkpoint["state_dict"]
        # Copies on the host: torch.save writes from there anyway, and a copy on the GPU could
        # itself run out of memory (a crash checkpoint after an out-of-memory error).
        if self._swapped_in:
            # The model's state dict was read with the average in: give it the training weights.
            for name, weights in zip(self.names, self._stash):
                state_dict[name] = weights.detach().to("cpu", copy=True)
        checkpoint["ema"] = {"decay": self.decay, "half_life_images": self.half_life_images,
                             "start_iter": self.start_iter, "updates": self.updates,
                             "state_dict": {n: t.detach().to("cpu", copy=True)
                                            for n, t in zip(self.names, self.averaged)}}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        ema = checkpoint.get("ema")
        if not self.enabled or not ema:
            return  # without a saved average, on_train_start starts one from the resumed weights
        now = {"decay": self.decay, "half_life_images": self.half_life_images}
        changed = [f"callbacks.ema.{key}={value} (the checkpoint's run: {ema[key]})" for key, value in now.items()
                   if key in ema and ema[key] != value]
        if changed:
            rank_zero_warn(f"Resuming the generators' EMA with other settings: {'; '.join(changed)}. The average "
                           "goes on with this run's; pass the checkpoint's to continue the same run.")
        self._restored = dict(ema["state_dict"])
        self.updates = int(ema.get("updates", 0))
