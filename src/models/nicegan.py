"""NICE-GAN (Chen et al., CVPR 2020): the discriminators' encoders are the translators' encoders.

Per domain X: D_X = C_X(E_X(.)), and x -> y is G_{x->y}(E_X(x)). Three optimizers (SPEC:
decoupled training): the classifier heads, the encoders, and the generators.

One iteration:
1. discriminator step (heads + encoders, one backward, two optimizer steps): E runs once per real
   image; its latents feed the classifiers AND the generators, which produce the fakes under
   no_grad (they are detached for this step anyway); LSGAN on the local and global heads and
   the CAM logit, reals -> real, fakes -> fake, adversarial weight 1.
2. generator step (generators only): the latents of the reals come from the UPDATED encoders
   under no_grad (the encoders are frozen here and their gradients would be thrown away: the
   public code back-propagates into them for nothing). Fakes go through the (frozen) D of their
   domain: its logits give the adversarial terms and its latent of the fake feeds the cycle
   back; plus cycle L1 (10) and reconstruction L1 `G_{y->x}(E_x(x)) ~ x` (10). No gradient
   reaches an encoder parameter, so the encoders move only in step 1.
3. rho of every AdaLIN/LIN is clipped to [0, 1] (see src/nets/adalin.py for why clipping).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.models.base import TranslationModel, build_net, sampling_mode, to_plain
from src.models.ugatit import rho_metrics
from src.nets.adalin import clip_rho_
from src.utils.config_checks import require_int
from src.utils.heatmap import overlay_heatmap


#: the generators' weighted terms, in the order they are logged
LOGGED_TERMS = ("adv_A", "adv_B", "cycle_A", "cycle_B", "recon_A", "recon_B")


class NICEGAN(TranslationModel):
    optimizer_steps_per_iter = 3
    loss_weights = ("adversarial", "cycle", "reconstruction", "gp")
    resumable_settings = TranslationModel.resumable_settings + ("log_rho_every_n_iters",)

    def __init__(self, generator: dict, discriminator: dict, loss: dict, optimizer: dict, lr_schedule: dict,
                 init: dict, log_rho_every_n_iters: int = 100,
                 fast_conv: bool | str = "auto"):
        super().__init__(loss=loss, optimizer=optimizer, lr_schedule=lr_schedule, init=init)
        require_int("model.log_rho_every_n_iters", log_rho_every_n_iters, why=" (training iterations)")
        self.save_hyperparameters({"generator": to_plain(generator), "discriminator": to_plain(discriminator),
                                   "loss": self.loss_cfg, "optimizer": self.optimizer_cfg,
                                   "lr_schedule": self.lr_schedule_cfg, "init": self.init_cfg,
                                   "log_rho_every_n_iters": log_rho_every_n_iters})
        g_cfg, d_cfg = self.hparams.generator, self.hparams.discriminator
        # Domain A's channels come from the discriminator config, B's from the generator config.
        a_nc, b_nc = d_cfg["input_nc"], g_cfg["output_nc"]
        if split := sorted({"encoders", "heads"} & set(self.init_cfg.get("players", {}))):
            raise ValueError(f"model.init.players.{split[0]}: NICE-GAN initialises each discriminator (its encoder "
                             "and heads) as one network; set model.init for it (and "
                             "+model.init.players.generators.<key>= for the generators alone)")
        self.D_A = build_net({**d_cfg, "input_nc": a_nc}, self.init_cfg, "model.discriminator")
        self.D_B = build_net({**d_cfg, "input_nc": b_nc}, self.init_cfg, "model.discriminator")
        latent_nc = self.D_A.latent_nc
        # G_AB decodes E_A's latent into domain B; G_BA decodes E_B's latent into domain A.
        g_init = self.net_init("generators")
        self.G_AB = build_net({**g_cfg, "output_nc": b_nc, "latent_nc": latent_nc}, g_init, "model.generator")
        self.G_BA = build_net({**g_cfg, "output_nc": a_nc, "latent_nc": latent_nc}, g_init, "model.generator")
        for name in ("adversarial", "cycle", "reconstruction"):
            self.weight(name)
        self.use_fast_conv(fast_conv)

    def player_modules(self) -> dict[str, list[nn.Module]]:
        return {"heads": [self.D_A.classifier, self.D_B.classifier],
                "encoders": [self.D_A.encoder, self.D_B.encoder],
                "generators": [self.G_AB, self.G_BA]}

    def generator_for(self, direction: str) -> nn.Module:
        return self.G_AB if direction == "AtoB" else self.G_BA

    def image_discriminators(self) -> list[nn.Module]:
        return [self.D_A, self.D_B]   # encoder + classifier heads: the players split them

    def discriminator_of(self, domain: str) -> nn.Module:
        return self.D_A if domain == "A" else self.D_B

    def translation_nets(self, direction: str) -> list[nn.Module]:
        return [self.discriminator_of(direction[0]).encoder, self.generator_for(direction)]

    def translation_forward(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        return self.generator_for(direction)(self.discriminator_of(direction[0]).encode(x))

    def encode(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """E_domain(x), the shared latent the paper's t-SNE/MMD analysis reads."""
        encoder = self.discriminator_of(domain).encoder
        with sampling_mode([encoder]):
            return encoder(x)[0]

    def adversarial_terms(self, outputs, target_is_real: bool, for_discriminator: bool) -> torch.Tensor:
        """Local head + global head + CAM logit of one discriminator's outputs."""
        local_logits, global_logits, cam_logit = outputs[:3]
        return (self.adversarial(local_logits, target_is_real, for_discriminator)
                + self.adversarial(global_logits, target_is_real, for_discriminator)
                + self.adversarial(cam_logit, target_is_real, for_discriminator))

    def classify_latent(self, D: nn.Module, latent: torch.Tensor, cam_logit: torch.Tensor):
        return (*D.classify(latent), cam_logit)

    def train_iteration(self, batch: dict) -> None:
        real_A, real_B = batch["A"], batch["B"]

        with self.players("heads", "encoders") as opt_d:
            z_A, cam_A, _ = self.D_A.encoder(real_A)
            z_B, cam_B, _ = self.D_B.encoder(real_B)
            with torch.no_grad():
                fake_AB, fake_BA = self.G_AB(z_A), self.G_BA(z_B)
            loss_d_a = self.adversarial_terms(self.classify_latent(self.D_A, z_A, cam_A), True, True) \
                + self.adversarial_terms(self.D_A(fake_BA), False, True)
            loss_d_b = self.adversarial_terms(self.classify_latent(self.D_B, z_B, cam_B), True, True) \
                + self.adversarial_terms(self.D_B(fake_AB), False, True)
            penalties = {}   # each critic's weighted share of train/D, logged apart from its estimate
            if self.adversarial.needs_gradient_penalty:
                for domain, fake in (("A", fake_BA), ("B", fake_AB)):
                    D, real = self.discriminator_of(domain), batch[domain]
                    penalties[f"D_{domain}_gp"] = self.weighted_gradient_penalty(lambda x, D=D: D(x)[:3], real, fake)
                loss_d_a, loss_d_b = loss_d_a + penalties["D_A_gp"], loss_d_b + penalties["D_B_gp"]
            loss_d = self.weight("adversarial") * (loss_d_a + loss_d_b)
            self.update(opt_d, loss_d)

        with torch.no_grad():  # frozen encoders: the generators' inputs only
            z = {"A": self.D_A.encode(real_A), "B": self.D_B.encode(real_B)}
        losses = {}

        def translate_and_cycle(source: str) -> torch.Tensor:
            """One direction's adversarial and cycle terms: E_source(real) -> fake -> E_target(fake)
            -> reconstruction."""
            target = "B" if source == "A" else "A"
            forward, backward = (self.G_AB, self.G_BA) if source == "A" else (self.G_BA, self.G_AB)
            out_fake = self.discriminator_of(target)(forward(z[source]))
            losses[f"adv_{target}"] = self.weight("adversarial") * self.adversarial_terms(out_fake, True, False)
            if self.weight("cycle") == 0:   # off: no reconstruction pass (nor 0 x an overflowing term)
                return losses[f"adv_{target}"]
            losses[f"cycle_{source}"] = self.weight("cycle") * F.l1_loss(backward(out_fake[4]), batch[source])
            return losses[f"adv_{target}"] + losses[f"cycle_{source}"]

        def reconstruction() -> torch.Tensor:
            losses["recon_A"] = self.weight("reconstruction") * F.l1_loss(self.G_BA(z["A"]), real_A)
            losses["recon_B"] = self.weight("reconstruction") * F.l1_loss(self.G_AB(z["B"]), real_B)
            return losses["recon_A"] + losses["recon_B"]

        with self.players("generators") as opt_g:
            # Three independent parts of one objective, each back-propagated before the next is
            # built, as CycleGAN's are: the step holds two generator passes' activations at a time
            # instead of six (the gradients are their sum's, added in another order).
            parts = [lambda: translate_and_cycle("A"), lambda: translate_and_cycle("B")]
            if self.weight("reconstruction") > 0:
                parts.append(reconstruction)
            loss_g = self.update(opt_g, *parts)
        losses = {**{name: losses[name] for name in LOGGED_TERMS if name in losses},
                  **{name: self.weight("adversarial") * penalty.detach() for name, penalty in penalties.items()}}
        clip_rho_(self.G_AB)
        clip_rho_(self.G_BA)

        batch_size = real_A.size(0)
        self.log_losses(losses, {"G": loss_g, "D": loss_d}, batch_size)
        if self.iteration % self.hparams.log_rho_every_n_iters == 0:
            metrics = rho_metrics({"G_AB": self.G_AB, "G_BA": self.G_BA})
            metrics.update({f"attention_gamma/D_{d}": self.discriminator_of(d).encoder.attention.gamma.item()
                            for d in "AB"})
            self.publish_iteration_metrics(metrics)   # (why not self.log: ugatit.py)

    def sample_images(self, batch: dict) -> dict[str, torch.Tensor]:
        rows = {}
        for src, dst in (("A", "B"), ("B", "A")):
            real = batch[src]
            D_src, D_dst, G = self.discriminator_of(src), self.discriminator_of(dst), self.generator_for(src + "to" + dst)
            G_back = self.generator_for(dst + "to" + src)
            with sampling_mode([D_src, D_dst, G, G_back]):
                z, _, heat_src = D_src.encoder(real)
                fake = G(z)
                z_fake, _, heat_fake = D_dst.encoder(fake)
                rec = G_back(z_fake)
            rows.update({f"real_{src}": real, f"D_CAM_{src}": overlay_heatmap(real, heat_src),
                         f"fake_{dst}": fake, f"D_CAM_fake_{dst}": overlay_heatmap(fake, heat_fake),
                         f"rec_{src}": rec})
        return rows
