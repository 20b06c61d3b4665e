"""U-GAT-IT (Kim et al., ICLR 2020): CAM attention and AdaLIN, two discriminators per domain.

One iteration, as in the public code but without its waste:
1. both generators run once on the real images (fakes, their CAM logits);
2. discriminator step on the reals and the DETACHED fakes (the port re-runs the generators
   here without detach): LSGAN (the `loss` group) on the global and local discriminators' patch
   logits and CAM logits, adversarial weight 1;
3. generator step through the updated discriminators: adversarial (weight 1, patch and CAM
   logits), cycle L1 (10), identity L1 (10) and the generator CAM loss (1000): BCE on the CAM
   logits, source-domain input -> 1, target-domain input -> 0;
4. rho of every AdaLIN/LIN is clipped to [0, 1] after the generator step.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.models.base import TranslationModel, build_net, sampling_mode, to_plain
from src.nets.adalin import clip_rho_, rho_statistics
from src.utils.config_checks import require_int
from src.utils.heatmap import overlay_heatmap


class UGATIT(TranslationModel):
    optimizer_steps_per_iter = 2
    loss_weights = ("adversarial", "cycle", "identity", "cam", "gp")
    resumable_settings = TranslationModel.resumable_settings + ("log_rho_every_n_iters",)

    def __init__(self, generator: dict, global_discriminator: dict, local_discriminator: dict, loss: dict,
                 optimizer: dict, lr_schedule: dict, init: dict, log_rho_every_n_iters: int = 100,
                 fast_conv: bool | str = "auto"):
        super().__init__(loss=loss, optimizer=optimizer, lr_schedule=lr_schedule, init=init)
        require_int("model.log_rho_every_n_iters", log_rho_every_n_iters, why=" (training iterations)")
        self.save_hyperparameters({"generator": to_plain(generator),
                                   "global_discriminator": to_plain(global_discriminator),
                                   "local_discriminator": to_plain(local_discriminator),
                                   "loss": self.loss_cfg, "optimizer": self.optimizer_cfg,
                                   "lr_schedule": self.lr_schedule_cfg, "init": self.init_cfg,
                                   "log_rho_every_n_iters": log_rho_every_n_iters})
        g_cfg = self.hparams.generator
        a_nc, b_nc = g_cfg["input_nc"], g_cfg["output_nc"]
        g_init, d_init = self.net_init("generators"), self.net_init("discriminators")
        self.G_AB = build_net(g_cfg, g_init, "model.generator")
        self.G_BA = build_net({**g_cfg, "input_nc": b_nc, "output_nc": a_nc}, g_init, "model.generator")
        # D_*A judge domain A (fakes of G_BA); D_*B judge domain B.
        self.D_GA = build_net({**self.hparams.global_discriminator, "input_nc": a_nc}, d_init,
                              "model.global_discriminator")
        self.D_LA = build_net({**self.hparams.local_discriminator, "input_nc": a_nc}, d_init,
                              "model.local_discriminator")
        self.D_GB = build_net({**self.hparams.global_discriminator, "input_nc": b_nc}, d_init,
                              "model.global_discriminator")
        self.D_LB = build_net({**self.hparams.local_discriminator, "input_nc": b_nc}, d_init,
                              "model.local_discriminator")
        for name in ("adversarial", "cycle", "identity", "cam"):
            self.weight(name)  # fail at start on a missing weight
        if a_nc != b_nc:
            # Whatever the identity weight: the generators' CAM loss feeds each generator images
            # of its target domain as well (labelled 0), and the identity term reuses that pass.
            raise ValueError(f"U-GAT-IT needs data.input_nc == data.output_nc (here {a_nc} and {b_nc}): its generator "
                             f"CAM loss runs each generator on images of its target domain too. Convert one domain's "
                             f"images (e.g. data.input_nc={b_nc}), or use model=cyclegan with loss.weights.identity=0")
        self.use_fast_conv(fast_conv)

    def player_modules(self) -> dict[str, list[nn.Module]]:
        return {"discriminators": [self.D_GA, self.D_LA, self.D_GB, self.D_LB], "generators": [self.G_AB, self.G_BA]}

    def generator_for(self, direction: str) -> nn.Module:
        return self.G_AB if direction == "AtoB" else self.G_BA

    def translation_forward(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        return self.generator_for(direction)(x)[0]

    def encode(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """Latent of the generator that reads `domain`: its encoder's feature map."""
        generator = self.G_AB if domain == "A" else self.G_BA
        with sampling_mode([generator]):
            return generator.encode(x)

    def discriminators_of(self, domain: str) -> tuple[nn.Module, nn.Module]:
        return (self.D_GA, self.D_LA) if domain == "A" else (self.D_GB, self.D_LB)

    def adversarial_terms(self, domain: str, images: torch.Tensor, target_is_real: bool,
                          for_discriminator: bool) -> torch.Tensor:
        """Sum over the domain's global and local discriminators of the patch and CAM terms."""
        total = 0.0
        for D in self.discriminators_of(domain):
            logits, cam_logits, _ = D(images)
            total = total + self.adversarial(logits, target_is_real, for_discriminator)
            total = total + self.adversarial(cam_logits, target_is_real, for_discriminator)
        return total

    def discriminator_loss(self, domain: str, real: torch.Tensor, fake: torch.Tensor,
                           penalties: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The domain's critics' terms, plus WGAN-GP's penalties, all weighted by the adversarial
        weight; the penalties' share also in `penalties` as D_<domain>_gp, for the log."""
        loss = self.adversarial_terms(domain, real, True, True) + self.adversarial_terms(domain, fake, False, True)
        if self.adversarial.needs_gradient_penalty:
            penalty = sum(self.weighted_gradient_penalty(lambda x, D=D: D(x)[:2], real, fake)
                          for D in self.discriminators_of(domain))
            if penalties is not None:
                penalties[f"D_{domain}_gp"] = self.weight("adversarial") * penalty.detach()
            loss = loss + penalty
        return self.weight("adversarial") * loss

    def train_iteration(self, batch: dict) -> None:
        real_A, real_B = batch["A"], batch["B"]
        fake_AB, cam_AB_src, _ = self.G_AB(real_A)
        fake_BA, cam_BA_src, _ = self.G_BA(real_B)

        penalties = {}
        with self.players("discriminators") as opt_d:
            loss_d_a = self.discriminator_loss("A", real_A, fake_BA.detach(), penalties)
            loss_d_b = self.discriminator_loss("B", real_B, fake_AB.detach(), penalties)
            loss_d = self.update(opt_d, loss_d_a + loss_d_b)

        terms = {}   # each weighted term, detached, for the log (a CAM term is made of two parts)

        def term(name: str, value: torch.Tensor) -> torch.Tensor:
            terms[name] = terms.get(name, 0) + value.detach()
            return value

        def translate_and_cycle(source: str) -> torch.Tensor:
            """One direction's adversarial, cycle and source-CAM terms, on the translation made
            before the critics' step."""
            target = "B" if source == "A" else "A"
            fake, cam_src = (fake_AB, cam_AB_src) if source == "A" else (fake_BA, cam_BA_src)
            backward = self.G_BA if source == "A" else self.G_AB
            # CAM of a generator: its source domain -> 1, its target domain -> 0 (`identity`).
            loss = term(f"adv_{target}", self.weight("adversarial") * self.adversarial_terms(target, fake, True, False))
            if self.weight("cycle") > 0:   # 0: off, no reconstruction pass (nor 0 x an overflowing term)
                loss = loss + term(f"cycle_{source}", self.weight("cycle") * F.l1_loss(backward(fake)[0], batch[source]))
            return loss + term(f"cam_{target}", self.weight("cam") * cam_bce(cam_src, True))

        def identity() -> torch.Tensor:
            idt_A, cam_BA_tgt, _ = self.G_BA(real_A)
            idt_B, cam_AB_tgt, _ = self.G_AB(real_B)
            return (term("idt_A", self.weight("identity") * F.l1_loss(idt_A, real_A))
                    + term("idt_B", self.weight("identity") * F.l1_loss(idt_B, real_B))
                    + term("cam_A", self.weight("cam") * cam_bce(cam_BA_tgt, False))
                    + term("cam_B", self.weight("cam") * cam_bce(cam_AB_tgt, False)))

        with self.players("generators") as opt_g:
            # Three independent parts of one objective, each back-propagated before the next is
            # built, as CycleGAN's are: the step holds three generator passes' activations at a
            # time instead of six (the gradients are their sum's, added in another order).
            parts = [lambda: translate_and_cycle("A"), lambda: translate_and_cycle("B")]
            if self.weight("identity") > 0 or self.weight("cam") > 0:   # (the target-CAM term needs the same pass)
                parts.append(identity)
            loss_g = self.update(opt_g, *parts)
        losses = {**{name: terms[name] for name in LOGGED_TERMS if name in terms}, **penalties}
        clip_rho_(self.G_AB)
        clip_rho_(self.G_BA)

        batch_size = real_A.size(0)
        self.log_losses(losses, {"G": loss_g, "D": loss_d, "D_A": loss_d_a, "D_B": loss_d_b}, batch_size)
        if self.iteration % self.hparams.log_rho_every_n_iters == 0:
            # Straight to the loggers at this iteration: through self.log, Lightning would send
            # the value again at every later logged iteration until the next one, as if measured there.
            rho = rho_metrics({"G_AB": self.G_AB, "G_BA": self.G_BA})
            self.publish_iteration_metrics(rho)

    def sample_images(self, batch: dict) -> dict[str, torch.Tensor]:
        real_A, real_B = batch["A"], batch["B"]
        rows = {}
        for src, real, direction in (("A", real_A, "AtoB"), ("B", real_B, "BtoA")):
            dst = "B" if src == "A" else "A"
            G, D_global = self.generator_for(direction), self.discriminators_of(dst)[0]
            # Eval mode also keeps spectral norm's power iteration from moving its buffers.
            with sampling_mode([G, D_global]):
                fake, _, g_heat = G(real)
                d_heat = D_global(fake)[2]
            rec = self.translate(fake, "BtoA" if direction == "AtoB" else "AtoB")
            rows.update({f"real_{src}": real, f"G_CAM_{src}": overlay_heatmap(real, g_heat),
                         f"fake_{dst}": fake, f"D_CAM_fake_{dst}": overlay_heatmap(fake, d_heat),
                         f"rec_{src}": rec})
        return rows


#: the generators' weighted terms, in the order they are logged
LOGGED_TERMS = ("adv_A", "adv_B", "cycle_A", "cycle_B", "idt_A", "idt_B", "cam_A", "cam_B")


def cam_bce(logits: torch.Tensor, target_is_source: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if target_is_source else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def rho_metrics(generators: dict[str, nn.Module]) -> dict[str, float]:
    """rho mean/min/max per AdaLIN/LIN layer, as `rho/<net>.<layer>/<stat>` scalars."""
    metrics = {}
    for net_name, net in generators.items():
        for layer, (mean, low, high) in rho_statistics(net).items():
            for stat, value in (("mean", mean), ("min", low), ("max", high)):
                metrics[f"rho/{net_name}.{layer}/{stat}"] = value
    return metrics
