"""The public code's training iteration, written out on a model's own networks: pix2pix and
CycleGAN (junyanz/pytorch-CycleGAN-and-pix2pix, `optimize_parameters`), U-GAT-IT
(znxlwm/UGATIT-pytorch, `train()`) and NICE-GAN (alpc91/NICE-GAN-pytorch, `train()`).

Two users:
- tests/test_reference_losses.py checks that the models' optimised steps compute the same losses
  and updates as this literal iteration (same weights, same seed);
- the benchmark's `tweaks.iteration=reference` times it on the model's networks with torch's
  layers and spectral norm, under glibc's allocator, so the reference's time and peak memory are
  measured by the same tool, in the same kind of process, on the same day as ours.

What makes it the reference's: its order of passes (its redundant ones included), its losses
and weights as the public code sets them (the paper defaults, not the model's config), its own
Adam optimizers, `zero_grad()`, one `backward()` per loss as the code builds it, `step()`
afterwards, and the idle player frozen with `requires_grad` where the public code does so. The
optimizers are built once and keep their state across iterations.
"""
from __future__ import annotations

import itertools
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.models.cyclegan import CycleGAN
from src.models.nicegan import NICEGAN
from src.models.pix2pix import Pix2Pix
from src.models.ugatit import UGATIT

#: Builds one Adam optimizer over some networks' parameters. The reference's is torch's default
#: (a per-tensor loop on a CPU); the equality tests pass the model's kernel instead, so that a
#: one-ulp difference between kernels cannot flip an Adam step.
OptimizerFactory = Callable[..., torch.optim.Optimizer]


def default_adam(model: nn.Module) -> OptimizerFactory:
    """torch.optim.Adam as the reference constructs it, with torch's default kernel: the model's lr,
    betas and weight decay (the papers' values: junyanz passes no weight decay, our pix2pix and
    CycleGAN configs have 0; the U-GAT-IT and NICE-GAN ports 1e-4, as their configs)."""
    cfg = model.optimizer_cfg

    def build(*nets: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for net in nets for p in net.parameters()], lr=cfg["lr"],
                                betas=tuple(cfg.get("betas", (0.5, 0.999))), weight_decay=cfg.get("weight_decay", 0.0))
    return build


def _gan_mode_differences(model: nn.Module, mode: str) -> list[str]:
    actual = model.adversarial.mode
    return [f"loss.gan_mode={actual} (the reference's: {mode})"] if actual != mode else []


@torch.no_grad()
def clip_rho_as_the_port(*nets: nn.Module) -> None:
    """U-GAT-IT's RhoClipper(0, 1): every `rho` in the generators clamped after their step.
    Written out rather than calling the models' `clip_rho_`, so the equality tests check that
    too."""
    for mod in itertools.chain.from_iterable(net.modules() for net in nets):
        if hasattr(mod, "rho"):
            mod.rho.clamp_(0, 1)


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
        return _gan_mode_differences(model, "vanilla") + [text for differs, text in (
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
        return _gan_mode_differences(model, "lsgan") + [text for differs, text in (
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


class UGATITReference:
    """U-GAT-IT (znxlwm/UGATIT-pytorch, `UGATIT.train()`), its waste kept: the D step re-runs both
    generators without detach, the G step leaves the discriminators unfrozen (their gradients are
    discarded by the next D step's zero_grad), then RhoClipper(0, 1). The port's weights:
    adversarial 1, cycle 10, identity 10, CAM 1000."""
    adv_weight, cycle_weight, identity_weight, cam_weight = 1.0, 10.0, 10.0, 1000.0

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory | None = None):
        optimizer = optimizer or default_adam(model)
        self.model = model
        self.opt_G = optimizer(model.G_AB, model.G_BA)
        self.opt_D = optimizer(model.D_GA, model.D_GB, model.D_LA, model.D_LB)

    @staticmethod
    def differences(model: nn.Module) -> list[str]:
        """What `model` is configured to do that this iteration does not."""
        return _gan_mode_differences(model, "lsgan")

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        m = self.model
        adv_weight, cycle_weight = self.adv_weight, self.cycle_weight
        identity_weight, cam_weight = self.identity_weight, self.cam_weight
        genA2B, genB2A, disGA, disLA, disGB, disLB = m.G_AB, m.G_BA, m.D_GA, m.D_LA, m.D_GB, m.D_LB
        G_optim, D_optim = self.opt_G, self.opt_D
        real_A, real_B = batch["A"], batch["B"]

        # Update D: the port re-runs the generators here, without detach.
        D_optim.zero_grad()
        fake_A2B, _, _ = genA2B(real_A)
        fake_B2A, _, _ = genB2A(real_B)
        real_GA_logit, real_GA_cam_logit, _ = disGA(real_A)
        real_LA_logit, real_LA_cam_logit, _ = disLA(real_A)
        real_GB_logit, real_GB_cam_logit, _ = disGB(real_B)
        real_LB_logit, real_LB_cam_logit, _ = disLB(real_B)
        fake_GA_logit, fake_GA_cam_logit, _ = disGA(fake_B2A)
        fake_LA_logit, fake_LA_cam_logit, _ = disLA(fake_B2A)
        fake_GB_logit, fake_GB_cam_logit, _ = disGB(fake_A2B)
        fake_LB_logit, fake_LB_cam_logit, _ = disLB(fake_A2B)
        D_ad_loss_GA = mse_to(real_GA_logit, 1) + mse_to(fake_GA_logit, 0)
        D_ad_cam_loss_GA = mse_to(real_GA_cam_logit, 1) + mse_to(fake_GA_cam_logit, 0)
        D_ad_loss_LA = mse_to(real_LA_logit, 1) + mse_to(fake_LA_logit, 0)
        D_ad_cam_loss_LA = mse_to(real_LA_cam_logit, 1) + mse_to(fake_LA_cam_logit, 0)
        D_ad_loss_GB = mse_to(real_GB_logit, 1) + mse_to(fake_GB_logit, 0)
        D_ad_cam_loss_GB = mse_to(real_GB_cam_logit, 1) + mse_to(fake_GB_cam_logit, 0)
        D_ad_loss_LB = mse_to(real_LB_logit, 1) + mse_to(fake_LB_logit, 0)
        D_ad_cam_loss_LB = mse_to(real_LB_cam_logit, 1) + mse_to(fake_LB_cam_logit, 0)
        D_loss_A = adv_weight * (D_ad_loss_GA + D_ad_cam_loss_GA + D_ad_loss_LA + D_ad_cam_loss_LA)
        D_loss_B = adv_weight * (D_ad_loss_GB + D_ad_cam_loss_GB + D_ad_loss_LB + D_ad_cam_loss_LB)
        (D_loss_A + D_loss_B).backward()
        D_optim.step()

        # Update G (the discriminators are not frozen in the port: their gradients are discarded later)
        G_optim.zero_grad()
        fake_A2B, fake_A2B_cam_logit, _ = genA2B(real_A)
        fake_B2A, fake_B2A_cam_logit, _ = genB2A(real_B)
        fake_A2B2A, _, _ = genB2A(fake_A2B)
        fake_B2A2B, _, _ = genA2B(fake_B2A)
        fake_A2A, fake_A2A_cam_logit, _ = genB2A(real_A)
        fake_B2B, fake_B2B_cam_logit, _ = genA2B(real_B)
        fake_GA_logit, fake_GA_cam_logit, _ = disGA(fake_B2A)
        fake_LA_logit, fake_LA_cam_logit, _ = disLA(fake_B2A)
        fake_GB_logit, fake_GB_cam_logit, _ = disGB(fake_A2B)
        fake_LB_logit, fake_LB_cam_logit, _ = disLB(fake_A2B)
        G_ad_A = (mse_to(fake_GA_logit, 1) + mse_to(fake_GA_cam_logit, 1)
                  + mse_to(fake_LA_logit, 1) + mse_to(fake_LA_cam_logit, 1))
        G_ad_B = (mse_to(fake_GB_logit, 1) + mse_to(fake_GB_cam_logit, 1)
                  + mse_to(fake_LB_logit, 1) + mse_to(fake_LB_cam_logit, 1))
        G_recon_loss_A, G_recon_loss_B = F.l1_loss(fake_A2B2A, real_A), F.l1_loss(fake_B2A2B, real_B)
        G_identity_loss_A, G_identity_loss_B = F.l1_loss(fake_A2A, real_A), F.l1_loss(fake_B2B, real_B)
        G_cam_loss_A = bce_to(fake_B2A_cam_logit, 1) + bce_to(fake_A2A_cam_logit, 0)
        G_cam_loss_B = bce_to(fake_A2B_cam_logit, 1) + bce_to(fake_B2B_cam_logit, 0)
        G_loss_A = (adv_weight * G_ad_A + cycle_weight * G_recon_loss_A + identity_weight * G_identity_loss_A
                    + cam_weight * G_cam_loss_A)
        G_loss_B = (adv_weight * G_ad_B + cycle_weight * G_recon_loss_B + identity_weight * G_identity_loss_B
                    + cam_weight * G_cam_loss_B)
        Generator_loss = G_loss_A + G_loss_B
        Generator_loss.backward()
        G_optim.step()
        clip_rho_as_the_port(genA2B, genB2A)   # RhoClipper(0, 1)
        return {"D_A": D_loss_A, "D_B": D_loss_B, "adv_A": adv_weight * G_ad_A, "adv_B": adv_weight * G_ad_B,
                "cycle_A": cycle_weight * G_recon_loss_A, "cycle_B": cycle_weight * G_recon_loss_B,
                "idt_A": identity_weight * G_identity_loss_A, "idt_B": identity_weight * G_identity_loss_B,
                "cam_A": cam_weight * G_cam_loss_A, "cam_B": cam_weight * G_cam_loss_B, "G": Generator_loss}


class NICEGANReference:
    """NICE-GAN (alpc91/NICE-GAN-pytorch, `NICE.train()`), its waste kept: the G step runs each
    full discriminator on the reals to take the encoder's latent and back-propagates into the
    encoders, whose gradients the next D step discards. The code's weights: adversarial 1, cycle 10,
    reconstruction 10."""
    adv_weight, cycle_weight, recon_weight = 1.0, 10.0, 10.0

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory | None = None):
        optimizer = optimizer or default_adam(model)
        self.model = model
        self.opt_G, self.opt_D = optimizer(model.G_AB, model.G_BA), optimizer(model.D_A, model.D_B)

    @staticmethod
    def differences(model: nn.Module) -> list[str]:
        """What `model` is configured to do that this iteration does not."""
        return _gan_mode_differences(model, "lsgan")

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        m = self.model
        adv_weight, cycle_weight, recon_weight = self.adv_weight, self.cycle_weight, self.recon_weight
        disA, disB, gen2B, gen2A = m.D_A, m.D_B, m.G_AB, m.G_BA
        G_optim, D_optim = self.opt_G, self.opt_D
        real_A, real_B = batch["A"], batch["B"]

        # Update D
        D_optim.zero_grad()
        real_LA_logit, real_GA_logit, real_A_cam_logit, _, real_A_z = disA(real_A)
        real_LB_logit, real_GB_logit, real_B_cam_logit, _, real_B_z = disB(real_B)
        fake_A2B = gen2B(real_A_z).detach()
        fake_B2A = gen2A(real_B_z).detach()
        fake_LA_logit, fake_GA_logit, fake_A_cam_logit, _, _ = disA(fake_B2A)
        fake_LB_logit, fake_GB_logit, fake_B_cam_logit, _, _ = disB(fake_A2B)
        D_ad_loss_GA = mse_to(real_GA_logit, 1) + mse_to(fake_GA_logit, 0)
        D_ad_loss_LA = mse_to(real_LA_logit, 1) + mse_to(fake_LA_logit, 0)
        D_ad_loss_GB = mse_to(real_GB_logit, 1) + mse_to(fake_GB_logit, 0)
        D_ad_loss_LB = mse_to(real_LB_logit, 1) + mse_to(fake_LB_logit, 0)
        D_ad_cam_loss_A = mse_to(real_A_cam_logit, 1) + mse_to(fake_A_cam_logit, 0)
        D_ad_cam_loss_B = mse_to(real_B_cam_logit, 1) + mse_to(fake_B_cam_logit, 0)
        D_loss_A = adv_weight * (D_ad_loss_GA + D_ad_cam_loss_A + D_ad_loss_LA)
        D_loss_B = adv_weight * (D_ad_loss_GB + D_ad_cam_loss_B + D_ad_loss_LB)
        Discriminator_loss = D_loss_A + D_loss_B
        Discriminator_loss.backward()
        D_optim.step()

        # Update G: the encoders run inside the full discriminators and stay in the graph.
        G_optim.zero_grad()
        _, _, _, _, real_A_z = disA(real_A)
        _, _, _, _, real_B_z = disB(real_B)
        fake_A2B = gen2B(real_A_z)
        fake_B2A = gen2A(real_B_z)
        fake_LA_logit, fake_GA_logit, fake_A_cam_logit, _, fake_A_z = disA(fake_B2A)
        fake_LB_logit, fake_GB_logit, fake_B_cam_logit, _, fake_B_z = disB(fake_A2B)
        fake_B2A2B = gen2B(fake_A_z)
        fake_A2B2A = gen2A(fake_B_z)
        G_ad_A = mse_to(fake_GA_logit, 1) + mse_to(fake_A_cam_logit, 1) + mse_to(fake_LA_logit, 1)
        G_ad_B = mse_to(fake_GB_logit, 1) + mse_to(fake_B_cam_logit, 1) + mse_to(fake_LB_logit, 1)
        G_cycle_loss_A, G_cycle_loss_B = F.l1_loss(fake_A2B2A, real_A), F.l1_loss(fake_B2A2B, real_B)
        fake_A2A, fake_B2B = gen2A(real_A_z), gen2B(real_B_z)
        G_recon_loss_A, G_recon_loss_B = F.l1_loss(fake_A2A, real_A), F.l1_loss(fake_B2B, real_B)
        G_loss_A = adv_weight * G_ad_A + cycle_weight * G_cycle_loss_A + recon_weight * G_recon_loss_A
        G_loss_B = adv_weight * G_ad_B + cycle_weight * G_cycle_loss_B + recon_weight * G_recon_loss_B
        Generator_loss = G_loss_A + G_loss_B
        Generator_loss.backward()
        G_optim.step()
        clip_rho_as_the_port(gen2A, gen2B)   # NICE-GAN's rho, kept in [0, 1] as the model does
        return {"D": Discriminator_loss, "adv_A": adv_weight * G_ad_A, "adv_B": adv_weight * G_ad_B,
                "cycle_A": cycle_weight * G_cycle_loss_A, "cycle_B": cycle_weight * G_cycle_loss_B,
                "recon_A": recon_weight * G_recon_loss_A, "recon_B": recon_weight * G_recon_loss_B,
                "G": Generator_loss}


def reference_for(model: nn.Module, optimizer: OptimizerFactory | None = None):
    """The reference iteration for `model`, if the public code it follows trains that configuration;
    a ValueError naming the differences otherwise (timing another algorithm says nothing about
    speed)."""
    kinds = {Pix2Pix: Pix2PixReference, CycleGAN: CycleGANReference, UGATIT: UGATITReference,
             NICEGAN: NICEGANReference}
    # The class itself, not a subclass: a model built on CycleGAN's may train another algorithm.
    reference = kinds.get(type(model))
    if reference is None:
        raise ValueError(f"tweaks.iteration=reference: {type(model).__name__} has no reference iteration here "
                         f"(pix2pix, CycleGAN, U-GAT-IT and NICE-GAN have); compare it with the reference numbers "
                         f"of conf/bench.yaml")
    differences = reference.differences(model)
    if differences:
        raise ValueError(f"tweaks.iteration=reference: this {type(model).__name__} is configured differently from the "
                         f"reference's: {'; '.join(differences)}")
    return reference(model, optimizer)
