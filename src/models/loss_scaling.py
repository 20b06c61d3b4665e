"""fp16 loss scaling with one GradScaler per GAN loss (generator, discriminator) under Lightning.

With `precision="16-mixed"` Lightning owns ONE GradScaler: `manual_backward` scales every loss
with it, and every `optimizer.step()` runs `scaler.step(optimizer)` then `scaler.update()`. The
per-optimizer inf checks are right, but for a GAN two things are not:

- one scale serves losses of very different size: an overflow in the discriminator's gradients
  halves the generator's scale too (its small gradients then underflow), and the growth counter
  counts G and D steps alike. One scaler per loss lets each find its own range (as in
  NVlabs/imaginaire).
- NICE-GAN's discriminator step is ONE backward into TWO optimizers (heads, encoders). The
  `update()` after the first step changes the scale before the second optimizer's gradients are
  unscaled, so they come out wrong by the update's factor (x2 after an overflow or a growth).
  And GradScaler checks each optimizer's gradients for inf on its own: an overflow in the
  encoders' gradients skipped their step but not the heads', where the authors' one optimizer
  skips the whole step. The optimizers of one backward are checked together, and skip together.

`PlayerGradScalers` takes the place of Lightning's scaler inside its precision plugin. Lightning
keeps calling scale / unscale_ / step / update exactly as before, so a step skipped on inf still
counts as an optimizer step and `global_step` stays a whole number of iterations. The model says
which loss it back-propagates (`with scalers.scaling("generators"): ...`): that picks the loss's
own scaler, and its `update()` is held until every optimizer fed by that backward has stepped.
Lightning saves and restores the plugin's state, so the scalers resume with the run.
"""
from __future__ import annotations

import contextlib

import torch
from pytorch_lightning.plugins.precision import MixedPrecision


class PlayerGradScalers:
    """A GradScaler per loss name, behind the GradScaler methods Lightning's MixedPrecision calls."""

    def __init__(self, device: str, settings: dict | None = None):
        self.device = device
        # Init scale, growth and backoff of the scaler this replaces: every loss starts from them.
        self.settings = dict(settings or {})
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self._restored: dict[str, dict] = {}
        self._active: str | None = None
        self._fed: list = []          # the optimizers the active backward feeds
        self._unscaled: set[int] = set()
        self._shared = False          # whether the active backward's overflow flags are combined

    @classmethod
    def install(cls, trainer) -> PlayerGradScalers | None:
        """Replace the trainer's fp16 GradScaler by per-loss scalers; None without fp16 scaling
        (32-bit, bf16-mixed: nothing to scale)."""
        plugin = trainer.precision_plugin
        scaler = getattr(plugin, "scaler", None)
        if isinstance(scaler, cls):
            return scaler
        if not isinstance(plugin, MixedPrecision) or scaler is None or not scaler.is_enabled():
            return None
        scalers = cls(plugin.device, scaler.state_dict())
        plugin.scaler = scalers
        return scalers

    @contextlib.contextmanager
    def scaling(self, loss_name: str, optimizers=()):
        """Backward and optimizer steps of one loss: they use its scaler, updated once at the end.
        `optimizers` (torch optimizers) are those its backward feeds: none steps unless all of
        their gradients are finite."""
        if self._active is not None:
            raise RuntimeError(f"Loss '{loss_name}' scaled while '{self._active}' is still being stepped")
        scaler = self._scaler(loss_name)
        self._active, self._fed = loss_name, list(optimizers)
        try:
            yield scaler
        finally:
            self._active, self._fed, self._shared = None, [], False
            self._unscaled.clear()
        scaler.update()

    def scale_tensor(self, loss_name: str, device: torch.device) -> torch.Tensor:
        """The current scale of this loss's scaler, as a tensor on `device` (no wait for the
        device: a copy, which the scaler's update after the backward leaves as it was)."""
        return self._scaler(loss_name).scale(torch.ones((), device=device))

    def _scaler(self, name: str) -> torch.amp.GradScaler:
        if name not in self.scalers:
            scaler = torch.amp.GradScaler(self.device)
            state = self._restored.pop(name, None) or self.settings
            if state:
                scaler.load_state_dict(state)
            self.scalers[name] = scaler
        return self.scalers[name]

    @property
    def active(self) -> torch.amp.GradScaler:
        if self._active is None:
            raise RuntimeError("fp16 backward or optimizer step outside `PlayerGradScalers.scaling(...)`: "
                               "models must back-propagate through AdversarialModel.update")
        return self.scalers[self._active]

    # ----- the GradScaler surface Lightning's MixedPrecision plugin uses ------------------
    def scale(self, outputs):
        return self.active.scale(outputs)

    def unscale_(self, optimizer) -> None:
        # Once per optimizer and backward: `step` may have unscaled it before Lightning asks.
        if id(optimizer) not in self._unscaled:
            self.active.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def step(self, optimizer, *args, **kwargs):
        if not self._shared:   # every gradient of the backward is checked before its first step
            for fed in self._fed:
                self.unscale_(fed)
            self._share_overflow(self._fed)
            self._shared = True
        return self.active.step(optimizer, *args, **kwargs)

    def _share_overflow(self, optimizers) -> None:
        """Give every optimizer of the backward the overflow flag of all of them, their maximum on
        the device (1 or 0: fused kernels skip on exactly 1): GradScaler then skips each one where
        any overflowed. What GradScaler.step reads
        is its per-optimizer record of unscale_; a fused optimizer (Adam's on CUDA and CPU) reads
        the flag inside its kernel, so nothing waits for the GPU, where reading it on the host
        here would, every backward."""
        records = [self.active._per_optimizer_states[id(opt)]["found_inf_per_device"] for opt in optimizers]
        flags = [flag for record in records for flag in record.values()]
        if not flags:
            return
        combined = torch.stack([flag.to(flags[0].device, non_blocking=True).reshape(()) for flag in flags]).amax()
        for record in records:
            for device in record:
                record[device] = combined.to(device, non_blocking=True)

    def update(self, new_scale=None) -> None:
        """Lightning calls this after every optimizer step; the real update waits for the end of
        `scaling`, when all optimizers of the backward have stepped."""

    def is_enabled(self) -> bool:
        return True

    def get_scale(self) -> float:
        return self.active.get_scale()

    def scales(self) -> dict[str, float]:
        """Every loss's current scale (a wait for the device each: ask on logged iterations)."""
        return {name: scaler.get_scale() for name, scaler in self.scalers.items()}

    def state_dict(self) -> dict:
        return {**self._restored, **{name: s.state_dict() for name, s in self.scalers.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        if "scale" in state_dict:
            # A checkpoint of Lightning's single scaler: every loss continues from its state.
            self.settings = dict(state_dict)
            return
        self.scalers.clear()
        self._restored = {name: dict(state) for name, state in state_dict.items()}
