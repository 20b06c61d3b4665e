"""Adversarial objectives behind one interface, chosen by the `loss` config group.

`AdversarialLoss(mode)(logits, target_is_real, for_discriminator)` returns a scalar.
`logits` may be one tensor or a list of tensors (a multi-scale discriminator's scales): the
loss is the sum over the list, as pix2pixHD's objective sums its discriminators' terms.

- vanilla: BCE with logits; the generator uses the non-saturating form (-log D(G(z))),
  which is what BCE against the "real" label gives.
- lsgan: MSE to `real_label` (b) / `fake_label` (a); the generator pushes D(G(x)) to
  `generator_label` (c, default b): Mao et al. 2017's codes (a, b, c), (0, 1, 1) by default,
  or (-1, 1, 0), which satisfies their b - c = 1, b - a = 2.
- wgan: -E[D(real)] + E[D(fake)] for the critic, -E[D(fake)] for the generator, no log, no
  sigmoid; the critic's weights are clipped to [-clip, clip] after each of its updates (the
  model does it: `AdversarialModel.update`).
- wgan-gp: the same scores; the gradient penalty is `gradient_penalty()` (the model adds it to
  its critic loss) instead of clipping.
- hinge: relu(1 - D(real)) + relu(1 + D(fake)) for D, -D(fake) for G.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

GAN_MODES = ("vanilla", "lsgan", "wgan", "wgangp", "hinge")


class AdversarialLoss(nn.Module):
    def __init__(self, mode: str = "lsgan", real_label: float = 1.0, fake_label: float = 0.0,
                 generator_label: float | None = None):
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"Unknown adversarial loss '{mode}' (config key loss.gan_mode); choose one of {GAN_MODES} "
                             f"(a new one: add it to GAN_MODES and its terms to AdversarialLoss in {__name__.replace('.', '/')}.py)")
        self.mode, self.real_label, self.fake_label = mode, real_label, fake_label
        self.generator_label = real_label if generator_label is None else generator_label

    def forward(self, logits, target_is_real: bool, for_discriminator: bool = True) -> torch.Tensor:
        if isinstance(logits, (list, tuple)):
            return torch.stack([self(l, target_is_real, for_discriminator) for l in logits]).sum()
        if self.mode == "vanilla":
            target = torch.full_like(logits, 1.0 if target_is_real else 0.0)
            return F.binary_cross_entropy_with_logits(logits, target)
        if self.mode == "lsgan":
            if not for_discriminator:
                self.check_generator_target(target_is_real)
                return F.mse_loss(logits, torch.full_like(logits, self.generator_label))
            target = torch.full_like(logits, self.real_label if target_is_real else self.fake_label)
            return F.mse_loss(logits, target)
        sign = -1.0 if target_is_real else 1.0
        # In float32: under fp16/bf16 autocast the critic's scores are half, and autocast keeps
        # relu and mean there (not mse_loss or the BCE). An fp16 loss turned GradScaler's 65536
        # into inf (every step at that scale skipped), and the logged curves came rounded.
        logits = logits.float()
        if self.mode == "hinge" and for_discriminator:
            return F.relu(1.0 + sign * logits).mean()
        # wgan, wgan-gp (both players) and the hinge generator: the critic's score, signed.
        if not for_discriminator:
            self.check_generator_target(target_is_real)
        return sign * logits.mean()

    @staticmethod
    def check_generator_target(target_is_real: bool) -> None:
        if not target_is_real:
            raise ValueError("A generator loss always targets 'real'")

    @property
    def needs_gradient_penalty(self) -> bool:
        return self.mode == "wgangp"


#: the most a penalty's score is scaled by under fp16 (input_gradient): 2^14, well inside fp16's
#: range, lifts gradients of 1e-9 to 1.6e-5, where fp16 keeps ~10 bits
MAX_INNER_SCALE = 2.0 ** 14


def input_gradient(score: torch.Tensor, inputs: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """d score / d inputs, in float32 or wider, with the graph kept (create_graph) so that a penalty on it
    trains the critic.

    `scale`: under fp16 loss scaling, the scale of the critic's loss (a device tensor; the model's
    `penalty_scale()`). The backward through the critic's fp16 layers starts from the score's
    gradient of 1, where small gradients (R1 drives them to 0) fall below fp16's range and vanish:
    PyTorch's AMP recipe for gradient penalties (and the ProGAN authors' code) scales the score
    as the loss is scaled, then divides the gradient back. The score is a sum, so each critic
    output's gradient is the whole factor, and fp16 holds at most 65504: the factor is capped at
    `MAX_INNER_SCALE` (GradScaler starts at 65536 and grows back to it every 2000 clean steps,
    each time an overflow that would skip a critic step). An inner overflow past that makes the
    penalty inf, and the critic's scaler skips the step and lowers the scale, as for any
    overflow of its loss."""
    factor = None if scale is None else scale.clamp(max=MAX_INNER_SCALE)
    (grad,) = torch.autograd.grad(score if factor is None else score * factor, inputs, create_graph=True)
    grad = grad.to(torch.promote_types(grad.dtype, torch.float32))
    return grad if factor is None else grad / factor


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor,
                     scale: torch.Tensor | None = None) -> torch.Tensor:
    """WGAN-GP: E[(||grad critic(x_hat)||_2 - 1)^2] on random interpolates of real and fake.

    `critic` maps an image batch to logits (or a list of logits, which are summed). `scale`: as
    `input_gradient`'s.
    """
    # One mixing weight per sample, whatever its shape: images (B, C, H, W), series (B, T, C).
    alpha = torch.rand(real.size(0), *[1] * (real.dim() - 1), device=real.device, dtype=real.dtype)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = critic(x_hat)
    outputs = out if isinstance(out, (list, tuple)) else [out]
    score = sum(o.sum() for o in outputs)
    grad = input_gradient(score, x_hat, scale)
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()
