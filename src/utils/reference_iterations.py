"""The public pix2pix and CycleGAN code's training iteration (junyanz/pytorch-CycleGAN-and-pix2pix,
`optimize_parameters` of pix2pix_model.py and cycle_gan_model.py), written out on a model's own
networks.

Two users:
- tests/test_reference_losses.py checks that the models' optimised steps compute the same losses
  and updates as this literal iteration (same weights, same seed);
- the benchmark's `tweaks.iteration=reference` times it on the model's networks with torch's
  layers, so the reference's time and peak memory are measured by the same tool, in the same
  kind of process, on the same day as ours.

What makes it the reference's: its order of passes, its losses and weights as the public code
sets them (the paper defaults, not the model's config), its own Adam optimizers, `zero_grad()`,
one `backward()` per loss as the code builds it, `step()` afterwards, and the idle player frozen
with `requires_grad`. The optimizers are built once and keep their state across iterations.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Builds one Adam optimizer over some networks' parameters. The reference's is torch's default
#: (a per-tensor loop on a CPU); the equality tests pass the model's kernel instead, so that a
#: one-ulp difference between kernels cannot flip an Adam step.
OptimizerFactory = Callable[..., torch.optim.Optimizer]


def default_adam(model: nn.Module) -> OptimizerFactory:
    """torch.optim.Adam as the reference constructs it: the model's lr and betas, torch's kernel."""
    cfg = model.optimizer_cfg

    def build(*nets: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for net in nets for p in net.parameters()], lr=cfg["lr"],
                                betas=tuple(cfg.get("betas", (0.5, 0.999))))
    return build


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def mse_to(x: torch.Tensor, value: float) -> torch.Tensor:
    """GANLoss('lsgan')."""
    return F.mse_loss(x, torch.full_like(x, value))


def bce_to(x: torch.Tensor, value: float) -> torch.Tensor:
    """GANLoss('vanilla'): BCE with logits."""
    return F.binary_cross_entropy_with_logits(x, torch.full_like(x, value))


class Pix2PixReference:
    """pix2pix: G(A) once; D on the detached fake pair then the real pair, loss halved; then G on
    the adversarial term through the updated D plus 100 * L1 (`--lambda_L1`)."""
    lambda_L1 = 100.0

    @staticmethod
    def differences(model: nn.Module) -> list[str]:
        """What `model` is configured to do that this iteration does not."""
        return [text for differs, text in (
            (model.adversarial.mode != "vanilla", f"loss.gan_mode={model.adversarial.mode} (the reference's: vanilla)"),
            (model.use_feature_matching, "feature matching (loss.weights.feature_matching > 0)"),
            (model.pools["fake_AB"].size > 0, "an image pool (model.pool_size > 0; the reference's pix2pix has none)"),
        ) if differs]

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory | None = None):
        optimizer = optimizer or default_adam(model)
        self.model = model
        self.opt_G, self.opt_D = optimizer(model.G), optimizer(model.D)

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        m = self.model
        real_A, real_B = batch["A"], batch["B"]
        fake_B = m.G(real_A)  # forward()
        set_requires_grad([m.D], True)
        self.opt_D.zero_grad()
        fake_AB = torch.cat((real_A, fake_B), 1)
        loss_D_fake = bce_to(m.D(fake_AB.detach()), 0.0)
        loss_D_real = bce_to(m.D(torch.cat((real_A, real_B), 1)), 1.0)
        loss_D = (loss_D_fake + loss_D_real) * 0.5
        loss_D.backward()
        self.opt_D.step()
        set_requires_grad([m.D], False)
        self.opt_G.zero_grad()
        loss_G_GAN = bce_to(m.D(fake_AB), 1.0)
        loss_G_L1 = F.l1_loss(fake_B, real_B) * self.lambda_L1
        loss_G = loss_G_GAN + loss_G_L1
        loss_G.backward()
        self.opt_G.step()
        set_requires_grad([m.D], True)   # as it was found
        return {"D_fake": loss_D_fake, "D_real": loss_D_real, "D": loss_D, "G_adv": loss_G_GAN, "l1": loss_G_L1,
                "G": loss_G}


class CycleGANReference:
    """CycleGAN: both translations and reconstructions, one backward over the whole generator
    objective (LSGAN terms, cycle 10, identity 0.5 * 10), then both discriminators on the real
    and the pooled fake, each loss halved and back-propagated on its own, one D step."""
    lambda_cycle = 10.0       # --lambda_A / --lambda_B
    lambda_identity = 0.5     # --lambda_identity, a fraction of lambda_A / lambda_B

    @staticmethod
    def differences(model: nn.Module) -> list[str]:
        """What `model` is configured to do that this iteration does not."""
        return [text for differs, text in (
            (model.adversarial.mode != "lsgan", f"loss.gan_mode={model.adversarial.mode} (the reference's: lsgan)"),
            (model.weight("identity") == 0, "no identity loss (the reference's: 0.5 * lambda)"),
        ) if differs]

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory | None = None):
        optimizer = optimizer or default_adam(model)
        self.model = model
        self.opt_G, self.opt_D = optimizer(model.G_A, model.G_B), optimizer(model.D_A, model.D_B)

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        m, lam = self.model, self.lambda_cycle
        real_A, real_B = batch["A"], batch["B"]
        fake_B = m.G_A(real_A)  # forward()
        rec_A = m.G_B(fake_B)
        fake_A = m.G_B(real_B)
        rec_B = m.G_A(fake_A)
        set_requires_grad([m.D_A, m.D_B], False)
        self.opt_G.zero_grad()
        loss_idt_A = F.l1_loss(m.G_A(real_B), real_B) * lam * self.lambda_identity
        loss_idt_B = F.l1_loss(m.G_B(real_A), real_A) * lam * self.lambda_identity
        loss_G_A = mse_to(m.D_A(fake_B), 1.0)
        loss_G_B = mse_to(m.D_B(fake_A), 1.0)
        loss_cycle_A = F.l1_loss(rec_A, real_A) * lam
        loss_cycle_B = F.l1_loss(rec_B, real_B) * lam
        loss_G = loss_G_A + loss_G_B + loss_cycle_A + loss_cycle_B + loss_idt_A + loss_idt_B
        loss_G.backward()
        self.opt_G.step()
        set_requires_grad([m.D_A, m.D_B], True)
        self.opt_D.zero_grad()
        losses_D = []
        for D, real, fake, pool in ((m.D_A, real_B, fake_B, "fake_B"), (m.D_B, real_A, fake_A, "fake_A")):
            fake = m.pools[pool].query(fake)
            loss_D = (mse_to(D(real), 1.0) + mse_to(D(fake.detach()), 0.0)) * 0.5
            loss_D.backward()
            losses_D.append(loss_D)
        self.opt_D.step()
        return {"G_A_adv": loss_G_A, "G_B_adv": loss_G_B, "cycle_A": loss_cycle_A, "cycle_B": loss_cycle_B,
                "idt_A": loss_idt_A, "idt_B": loss_idt_B, "G": loss_G, "D_A": losses_D[0], "D_B": losses_D[1]}


def reference_for(model: nn.Module, optimizer: OptimizerFactory | None = None):
    """The reference iteration for `model`, if the public code it follows trains that configuration;
    a ValueError naming the differences otherwise (timing another algorithm says nothing about
    speed)."""
    from src.models.cyclegan import CycleGAN
    from src.models.pix2pix import Pix2Pix

    kinds = {Pix2Pix: Pix2PixReference, CycleGAN: CycleGANReference}
    reference = next((ref for cls, ref in kinds.items() if isinstance(model, cls)), None)
    if reference is None:
        raise ValueError(f"tweaks.iteration=reference: only pix2pix and CycleGAN have the reference's iteration here (the junyanz "
                         f"code's), not {type(model).__name__}; compare it with the reference numbers of conf/bench.yaml")
    differences = reference.differences(model)
    if differences:
        raise ValueError(f"tweaks.iteration=reference: this {type(model).__name__} is configured differently from the "
                         f"reference's: {'; '.join(differences)}")
    return reference(model, optimizer)
