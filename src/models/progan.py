"""Progressive GAN (Karras et al., ICLR 2018): generator and discriminator grow from 4x4 to the
image size (src/nets/progan.py), trained with WGAN-GP plus the paper's drift term
0.001 * E[D(real)^2] that keeps the critic's scores near zero.

The schedule is a function of the training iteration, so resume needs no state of its own:
phase p = iteration // phase_iters; phase 0 trains 4x4; an odd phase 2k - 1 fades level k in
(alpha rises linearly from 0 to 1 over the phase), the even phase 2k after it trains level k
alone; after the top level's phase the networks stay at full size. The real images the critic
sees are brought to the stage's resolution, and faded like the generator's output
(`faded_reals`). (The paper: 800k real images
per phase, i.e. 50k iterations at batch 16.) The stage is logged as `train/level` and
`train/alpha`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from src.models.noise_gan import NoiseGAN
from src.utils.config_checks import require_int


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


def progressive_stage(iteration: int, phase_iters: int, top_level: int) -> tuple[int, float]:
    """(level, alpha) of training iteration `iteration` (see the module docstring)."""
    phase = iteration // phase_iters
    if phase >= 2 * top_level:
        return top_level, 1.0
    level = (phase + 1) // 2
    alpha = (iteration % phase_iters) / phase_iters if phase % 2 else 1.0
    return level, alpha


class ProGAN(NoiseGAN):
    """`grow: false` trains at full size from the first iteration (no growth: the networks'
    other levels idle), for ablations and for timing the full-size step."""

    def __init__(self, *args, phase_iters: int = 50000, drift: float = 0.001, grow: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        require_int("model.phase_iters", phase_iters, why=" (iterations per phase)")
        if drift < 0:
            raise ValueError(f"model.drift={drift!r} must be >= 0")
        if not isinstance(grow, bool):
            raise ValueError(f"model.grow={grow!r} must be true (grow from 4x4) or false (full size throughout)")
        self.hparams.update({"phase_iters": phase_iters, "drift": drift, "grow": grow})
        self.phase_iters, self.drift, self.grow = phase_iters, float(drift), grow

    def stage(self, iteration: int) -> tuple[int, float]:
        if not self.grow:
            return self.generator.top_level, 1.0
        return progressive_stage(iteration, self.phase_iters, self.generator.top_level)

    def train_iteration(self, batch: dict) -> None:
        # Set here, from the iteration, so a resumed run continues at its stage; the sampling
        # callbacks after this iteration see the stage it trained.
        level, alpha = self.stage(self.iteration)
        for net in (self.generator, self.discriminator):
            net.set_stage(level, alpha)
        super().train_iteration({**batch, "A": faded_reals(batch["A"], level, alpha, self.generator.top_level)})
        if self.logging_losses:
            self.log_dict({"train/level": float(level), "train/alpha": alpha}, batch_size=batch["A"].size(0))

    def critic_regularizers(self, scores_real):
        return {"drift": self.drift * scores_real.pow(2).mean()} if self.drift else {}
