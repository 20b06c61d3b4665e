"""GAN, cGAN, DCGAN, WGAN, WGAN-GP and LSGAN: one noise-to-image model, the papers told apart
by their networks (`model.generator` / `model.discriminator`), objective (the `loss` group),
conditioning (`model.num_classes`) and critic steps (`model.n_critic`); conf/model/<name>.yaml
holds each paper's recipe. InfoGAN, ProGAN (and StyleGAN) and RGAN/RCGAN are subclasses that
add their codes, growth or sequence shape (src/models/{infogan,progan,rgan}.py).

One iteration: `n_critic` discriminator steps, each on its own real batch (the loader batch
holds `n_critic` of them: `data.batches_per_iteration` follows `model.n_critic`) and fresh
noise, then one generator step on fresh noise. The generator step takes the last real batch's
labels (a conditional model so trains on the data's class frequencies) and size.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from src.losses import input_gradient
from src.models.base import build_net, to_plain
from src.models.noise_base import LATENT_DISTRIBUTIONS, NoiseToImageModel
from src.utils.config_checks import require_bool, require_int


class NoiseGAN(NoiseToImageModel):
    loss_weights = ("gp", "r1")
    #: the hyperparameter that stores a sample's size, under the name the subclass's constructor
    #: takes it by (a checkpoint rebuilds the model from its hyperparameters): an image's side
    #: here, a series' length in RGAN
    SIZE_HPARAM = "image_size"

    def __init__(self, generator: dict, discriminator: dict, loss: dict, optimizer: dict, lr_schedule: dict,
                 init: dict, latent_dim: int = 100, num_classes: int = 0, n_critic: int = 1, image_size: int = 64,
                 channels: int = 3, latent_distribution: str = "normal", test_time_batch_stats: bool = False,
                 reference_batch_size: int = 64):
        super().__init__(loss=loss, optimizer=optimizer, lr_schedule=lr_schedule, init=init)
        for key, value, least in (("latent_dim", latent_dim, 1), ("num_classes", num_classes, 0),
                                  ("n_critic", n_critic, 1), ("channels", channels, 1)):
            require_int(f"model.{key}", value, least)
        require_bool("model.test_time_batch_stats", test_time_batch_stats)
        require_int("model.reference_batch_size", reference_batch_size,
                    why=" (the latents whose batch statistics normalise every sample; DCGAN's config takes "
                        "data.batch_size)")
        if latent_distribution not in LATENT_DISTRIBUTIONS:
            raise ValueError(f"model.latent_distribution={latent_distribution!r} must be one of "
                             f"{', '.join(LATENT_DISTRIBUTIONS)}")
        self.save_hyperparameters({"generator": to_plain(generator), "discriminator": to_plain(discriminator),
                                   "loss": self.loss_cfg, "optimizer": self.optimizer_cfg,
                                   "lr_schedule": self.lr_schedule_cfg, "init": self.init_cfg,
                                   "latent_dim": latent_dim, "num_classes": num_classes, "n_critic": n_critic,
                                   self.SIZE_HPARAM: image_size, "channels": channels,
                                   "latent_distribution": latent_distribution,
                                   "test_time_batch_stats": test_time_batch_stats,
                                   "reference_batch_size": reference_batch_size})
        self.latent_dim, self.num_classes, self.n_critic = latent_dim, num_classes, n_critic
        self.latent_distribution = latent_distribution
        self.test_time_batch_stats, self.reference_batch_size = test_time_batch_stats, reference_batch_size
        self.image_shape = self.sample_shape(image_size, channels)
        # The critic's steps and the generator's: Lightning's global_step counts each.
        self.optimizer_steps_per_iter = n_critic + 1
        self.generator = self.build_generator(latent_dim + self.latent_code_dim())
        self.discriminator = self.build_discriminator()
        if self.adversarial.needs_gradient_penalty:
            self.weight("gp")   # fail at start on a missing weight

    def latent_code_dim(self) -> int:
        """Numbers the generator reads beside the noise (InfoGAN's codes)."""
        return 0

    def sample_shape(self, size: int, channels: int) -> tuple[int, ...]:
        """The shape of one sample: (C, H, W) images here, (T, C) series for the recurrent GAN."""
        return channels, size, size

    def build_generator(self, input_dim: int) -> nn.Module:
        """`model.generator` for inputs of `input_dim` numbers, making images of this model's shape."""
        channels, image_size, _ = self.image_shape
        return build_net({**self.hparams.generator, "latent_dim": input_dim, "output_nc": channels,
                          "image_size": image_size, "num_classes": self.num_classes}, self.net_init("generator"),
                         "model.generator")

    def build_discriminator(self) -> nn.Module:
        channels, image_size, _ = self.image_shape
        return build_net({**self.hparams.discriminator, "input_nc": channels, "image_size": image_size,
                          "num_classes": self.num_classes}, self.net_init("discriminator"), "model.discriminator")

    def player_modules(self) -> dict[str, list[nn.Module]]:
        return {"discriminator": [self.discriminator], "generator": [self.generator]}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        per_iteration = getattr(datamodule, "batches_per_iteration", 1)
        if stage == "fit" and datamodule is not None and per_iteration != self.n_critic:
            raise ValueError(f"model.n_critic={self.n_critic} critic steps take {self.n_critic} real batches per "
                             f"iteration, but data.batches_per_iteration={per_iteration}: set "
                             f"data.batches_per_iteration={self.n_critic}")

    def sample_latent(self, n: int) -> tuple[torch.Tensor, dict | None]:
        """The generator's input for n images, and the codes in it a model must recover (InfoGAN)."""
        return self.noise(n, self.latent_dim), None

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None,
                           codes: dict | None = None) -> dict:
        """The critic's terms: its loss on real and fake images, WGAN-GP's penalty, and the R1
        penalty when `loss.weights.r1` > 0 (Mescheder et al. 2018, StyleGAN's FFHQ setup:
        r1 / 2 * E ||grad D(real)||^2, on the real images' own pass). (The vanilla objective
        sums the two BCE terms, as Goodfellow's minimax value does.)"""
        D = self.discriminator
        r1 = self.optional_weight("r1")
        real = real.detach().requires_grad_(True) if r1 > 0 else real
        scores_real = D(real, labels)
        scores_fake, same_pass = self.judge(fake, labels, codes)
        terms = {"D_real": self.adversarial(scores_real, True), "D_fake": self.adversarial(scores_fake, False),
                 **{f"{name}_D": term for name, term in same_pass.items()}}
        if r1 > 0:
            grad = input_gradient(scores_real.sum(), real, self.penalty_scale())
            terms["r1"] = r1 / 2 * grad.pow(2).flatten(1).sum(1).mean()
        terms.update(self.critic_regularizers(scores_real))
        if self.adversarial.needs_gradient_penalty:
            terms["gp"] = self.weighted_gradient_penalty(lambda x: D(x, labels), real, fake)
        if self.adversarial.mode in ("wgan", "wgangp"):
            # The critic's estimate of the Wasserstein distance, the curve the WGAN papers plot.
            # (in float32: a difference of two half-precision means is mostly rounding)
            terms["wasserstein"] = (scores_real.float().mean() - scores_fake.float().mean()).detach()
        return terms

    def gradient_penalties(self) -> list[str]:
        r1 = ["the R1 penalty (loss.weights.r1)"] if self.optional_weight("r1") > 0 else []
        return super().gradient_penalties() + r1

    def critic_regularizers(self, scores_real: torch.Tensor) -> dict:
        """Terms a model adds to its critic's loss on the real scores (ProGAN's drift)."""
        return {}

    def judge(self, fake: torch.Tensor, labels: torch.Tensor | None, codes: dict | None) -> tuple[torch.Tensor, dict]:
        """The critic's scores of generated samples, and the loss terms a model computes on the
        same pass through the critic (InfoGAN's information term), named without a player."""
        return self.discriminator(fake, labels), {}

    def generator_loss(self, fake: torch.Tensor, labels: torch.Tensor | None, codes: dict | None = None) -> dict:
        scores, same_pass = self.judge(fake, labels, codes)
        return {"G_adv": self.adversarial(scores, True, for_discriminator=False),
                **{f"{name}_G": term for name, term in same_pass.items()}}

    def resume_refusal(self, checkpoint: dict) -> str | None:
        # Lightning counts optimizer steps; an iteration is n_critic + 1 of them. Another n_critic
        # would read the saved steps as another iteration count (max_iters, schedules, growth).
        saved = (checkpoint.get("hyper_parameters") or {}).get("n_critic")
        if saved is not None and saved != self.n_critic:
            steps = int(checkpoint.get("global_step", 0))
            return (f"model.n_critic={self.n_critic}, but the checkpoint's run trained with {saved}: its "
                    f"{steps // (saved + 1)} iterations would count as {steps // (self.n_critic + 1)} (an "
                    f"iteration is n_critic + 1 optimizer steps). Resume with model.n_critic={saved}")
        return super().resume_refusal(checkpoint)

    def batch_images(self, batch: dict) -> int:
        return batch["A"].size(0) // self.n_critic   # the loader batch holds the critic's n_critic batches

    def train_iteration(self, batch: dict) -> None:
        images = batch["A"]
        if images.size(0) % self.n_critic:
            raise ValueError(f"A batch of {images.size(0)} images does not split into model.n_critic={self.n_critic} "
                             "real batches: data.batches_per_iteration must equal model.n_critic")
        reals = images.chunk(self.n_critic)
        labels = (batch["label"].chunk(self.n_critic) if self.num_classes
                  else [None] * self.n_critic)
        for real, y in zip(reals, labels):
            with self.players("discriminator") as opt_d:
                latent, codes = self.sample_latent(real.size(0))
                with torch.no_grad():
                    fake = self.generator(latent, y)
                d_terms = self.discriminator_loss(real, fake, y, codes)
                loss_d = self.update(opt_d, total(d_terms))

        with self.players("generator") as opt_g:
            y = labels[-1]
            latent, codes = self.sample_latent(reals[-1].size(0))
            g_terms = self.generator_loss(self.generator(latent, y), y, codes)
            loss_g = self.update(opt_g, total(g_terms))

        self.log_losses({**d_terms, **g_terms}, {"G": loss_g, "D": loss_d}, reals[-1].size(0))


def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of a player's loss terms (the Wasserstein estimate is logged, not trained on)."""
    return sum(value for name, value in terms.items() if name != "wasserstein")
