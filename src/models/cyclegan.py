"""CycleGAN (Zhu et al., ICCV 2017): two generators, two PatchGANs, cycle and identity losses.

One iteration follows the reference code's order: the four generator passes (fake and
reconstruction in both directions) are computed once; the generators step first (adversarial +
cycle + identity) with the discriminators frozen; then the discriminators step on the same
fakes, detached and drawn through the image pools.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.models.base import TranslationModel, build_net, sampling_mode, to_plain
from src.models.image_pool import ImagePool


class CycleGAN(TranslationModel):
    optimizer_steps_per_iter = 2
    loss_weights = ("cycle", "identity", "gp")
    resumable_settings = TranslationModel.resumable_settings + ("pool_size",)   # a new size is warned by the pool

    def __init__(self, generator: dict, discriminator: dict, loss: dict, optimizer: dict, lr_schedule: dict,
                 init: dict, pool_size: int = 50,
                 fast_conv: bool | str = "auto"):
        super().__init__(loss=loss, optimizer=optimizer, lr_schedule=lr_schedule, init=init)
        self.save_hyperparameters({"generator": to_plain(generator),
                                   "discriminator": to_plain(discriminator),
                                   "loss": self.loss_cfg, "optimizer": self.optimizer_cfg,
                                   "lr_schedule": self.lr_schedule_cfg, "init": self.init_cfg,
                                   "pool_size": pool_size})
        g_cfg, d_cfg = self.hparams.generator, self.hparams.discriminator
        # G_A: A -> B and D_A judges domain B (fakes of G_A); G_B: B -> A and D_B judges domain A.
        g_init, d_init = self.net_init("generators"), self.net_init("discriminators")
        self.G_A = build_net(g_cfg, g_init, "model.generator")
        self.G_B = build_net({**g_cfg, "input_nc": g_cfg["output_nc"], "output_nc": g_cfg["input_nc"]}, g_init,
                             "model.generator")
        self.D_A = build_net({**d_cfg, "input_nc": g_cfg["output_nc"]}, d_init, "model.discriminator")
        self.D_B = build_net({**d_cfg, "input_nc": g_cfg["input_nc"]}, d_init, "model.discriminator")
        self.pools = {"fake_A": ImagePool(pool_size), "fake_B": ImagePool(pool_size)}
        self.weight("cycle"), self.weight("identity")  # fail at start on a missing weight
        if self.weights["identity"] > 0 and g_cfg["input_nc"] != g_cfg["output_nc"]:
            raise ValueError("loss.weights.identity > 0 needs data.input_nc == data.output_nc; set it to 0")
        self.use_fast_conv(fast_conv)

    def player_modules(self) -> dict[str, list[nn.Module]]:
        return {"generators": [self.G_A, self.G_B], "discriminators": [self.D_A, self.D_B]}

    def generator_for(self, direction: str) -> nn.Module:
        return self.G_A if direction == "AtoB" else self.G_B

    def has_latent(self) -> bool:
        """Whether both generators have an encoder half to read (a ResNet generator's; a U-Net,
        which CycleGAN's code also takes, has none: its skips pass the bottleneck by)."""
        return all(hasattr(G, "encoder") for G in (self.G_A, self.G_B))

    def encode(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """Latent of the generator that reads `domain`: its encoder half's output."""
        encoder = (self.G_A if domain == "A" else self.G_B).encoder
        with sampling_mode([encoder]):   # as it translates: a batch-norm or dropout generator too
            return encoder(x)

    def discriminator_loss(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                           penalties: dict[str, torch.Tensor] | None = None, name: str = "gp") -> torch.Tensor:
        """0.5 x (real + fake terms), plus WGAN-GP's weighted penalty, also put in `penalties`
        under `name` for the log (the critic's estimate and its penalty read apart)."""
        loss = 0.5 * (self.adversarial(D(real), True) + self.adversarial(D(fake), False))
        if self.adversarial.needs_gradient_penalty:
            penalty = self.weighted_gradient_penalty(D, real, fake)
            if penalties is not None:
                penalties[name] = penalty.detach()
            loss = loss + penalty
        return loss

    def train_iteration(self, batch: dict) -> None:
        real_A, real_B = batch["A"], batch["B"]
        losses, fakes = {}, {}

        def translate_and_cycle(source: str) -> torch.Tensor:
            """One direction's adversarial and cycle terms: real -> fake -> reconstruction."""
            target = "B" if source == "A" else "A"
            forward, backward = (self.G_A, self.G_B) if source == "A" else (self.G_B, self.G_A)
            judge = self.D_A if source == "A" else self.D_B  # D_A judges domain B, as in the paper's code
            real = batch[source]
            fake = forward(real)
            fakes[target] = fake.detach()
            losses[f"G_{source}_adv"] = self.adversarial(judge(fake), True, for_discriminator=False)
            if self.weight("cycle") == 0:   # off: no reconstruction pass (nor 0 x an overflowing term)
                return losses[f"G_{source}_adv"]
            losses[f"cycle_{source}"] = F.l1_loss(backward(fake), real) * self.weight("cycle")
            return losses[f"G_{source}_adv"] + losses[f"cycle_{source}"]

        def identity() -> torch.Tensor:
            losses["idt_A"] = F.l1_loss(self.G_A(real_B), real_B) * self.weight("identity")
            losses["idt_B"] = F.l1_loss(self.G_B(real_A), real_A) * self.weight("identity")
            return losses["idt_A"] + losses["idt_B"]

        with self.players("generators") as opt_g:
            # Three independent parts of one objective, each back-propagated before the next is
            # built: the step holds two generator passes' activations at a time instead of six.
            parts = [lambda: translate_and_cycle("A"), lambda: translate_and_cycle("B")]
            if self.weight("identity") > 0:
                parts.append(identity)
            loss_g = self.update(opt_g, *parts)

        with self.players("discriminators") as opt_d:
            loss_d_a = self.discriminator_loss(self.D_A, real_B, self.pools["fake_B"].query(fakes["B"]), losses, "D_A_gp")
            loss_d_b = self.discriminator_loss(self.D_B, real_A, self.pools["fake_A"].query(fakes["A"]), losses, "D_B_gp")
            loss_d = self.update(opt_d, loss_d_a + loss_d_b)

        # train/D as every model logs it (both discriminators' losses); D_A judges domain B here,
        # as in the authors' code (README, Weights & Biases).
        self.log_losses(losses, {"G": loss_g, "D": loss_d, "D_A": loss_d_a, "D_B": loss_d_b}, real_A.size(0))

    def sample_images(self, batch: dict) -> dict[str, torch.Tensor]:
        fake_B, fake_A = self.translate(batch["A"], "AtoB"), self.translate(batch["B"], "BtoA")
        return {"real_A": batch["A"], "fake_B": fake_B, "rec_A": self.translate(fake_B, "BtoA"),
                "real_B": batch["B"], "fake_A": fake_A, "rec_B": self.translate(fake_A, "AtoB")}
