"""InfoGAN (Chen et al., NeurIPS 2016): the generator's input is noise z and a latent code c
(categorical variables, one-hot, and continuous ones, uniform in [-1, 1]); an auxiliary head Q,
reading the discriminator's body, predicts c from an image, and the lower bound of the mutual
information I(c; G(z, c)), as -(log-likelihood of c under Q), is added with weight lambda to
both players' losses, as the authors' code does: the discriminator's step trains D's body and
Q on the fakes' codes, the generator's step trains G to make its codes recoverable.

Q: a categorical distribution per categorical variable (cross-entropy), and a unit-variance
Gaussian per continuous one (0.5 * squared error, the paper's fixed-variance factored Gaussian),
the continuous part weighted by `continuous_weight` on top of lambda: 1 as in the paper's
experiments and code (its text suggests a smaller lambda for continuous codes, without a value).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.models.noise_gan import NoiseGAN
from src.nets.infogan_nets import LEAKY_SLOPE
from src.nets.init import init_weights
from src.utils.config_checks import is_number, require_int

#: sample-grid rows of the first categorical code's values, at most
MAX_CODE_ROWS = 10
#: sample-grid rows sweeping the first continuous code over [-2, 2]
CONTINUOUS_STEPS = 5


class InfoGAN(NoiseGAN):
    def __init__(self, *args, categorical_codes: list[int] = (10,), continuous_codes: int = 2,
                 info_weight: float = 1.0, continuous_weight: float = 1.0, q_hidden: int = 128, **kwargs):
        categorical_codes = [int(k) for k in categorical_codes]
        if any(k < 2 for k in categorical_codes) or continuous_codes < 0 or not (categorical_codes or continuous_codes):
            raise ValueError(f"model.categorical_codes={categorical_codes} (each >= 2 values) and "
                             f"model.continuous_codes={continuous_codes} (>= 0) must give InfoGAN at least one code")
        # Set before the parent builds the generator, which reads z and the codes (latent_code_dim).
        self.categorical_codes, self.continuous_codes = categorical_codes, continuous_codes
        super().__init__(*args, **kwargs)
        self.hparams.update({"categorical_codes": categorical_codes, "continuous_codes": continuous_codes,
                             "info_weight": info_weight, "continuous_weight": continuous_weight,
                             "q_hidden": q_hidden})
        for key, weight in (("model.info_weight", info_weight), ("model.continuous_weight", continuous_weight)):
            if not (is_number(weight) and weight >= 0):
                # a negative weight would have both players maximise the information term
                raise ValueError(f"{key}={weight!r} must be a number >= 0")
        require_int("model.q_hidden", q_hidden, why=" (the width of Q's hidden layer)")
        self.info_weight, self.continuous_weight = float(info_weight), float(continuous_weight)
        # The paper's Q: FC 128 - batch norm - LeakyReLU - FC, on D's features; initialised as
        # the player it trains with (model.init.players.discriminator).
        q_init = self.net_init("discriminator")
        self.q_head = init_weights(nn.Sequential(
            nn.Linear(self.discriminator.feature_dim, q_hidden), nn.BatchNorm1d(q_hidden),
            nn.LeakyReLU(LEAKY_SLOPE, True),
            nn.Linear(q_hidden, sum(categorical_codes) + continuous_codes)), q_init.get("type", "normal"),
            q_init.get("gain", 0.02))

    def latent_code_dim(self) -> int:
        return sum(self.categorical_codes) + self.continuous_codes

    def player_modules(self) -> dict[str, list[nn.Module]]:
        # Q shares D's body and is trained in D's step, as the authors' code trains it.
        return {"discriminator": [self.discriminator, self.q_head], "generator": [self.generator]}

    def image_discriminators(self) -> list[nn.Module]:
        return [self.discriminator]

    # ----- the latent codes ----------------------------------------------------------------
    def latent_with_codes(self, z: torch.Tensor, categorical: list[torch.Tensor],
                          continuous: torch.Tensor) -> torch.Tensor:
        one_hots = [F.one_hot(c, k).to(z.dtype) for c, k in zip(categorical, self.categorical_codes)]
        return torch.cat([z, *one_hots, continuous.to(z.dtype)], dim=1)

    def sample_latent(self, n: int) -> tuple[torch.Tensor, dict]:
        codes = {"categorical": [torch.randint(k, (n,), device=self.device) for k in self.categorical_codes],
                 "continuous": torch.rand(n, self.continuous_codes, device=self.device) * 2 - 1}
        z = self.noise(n, self.latent_dim)
        return self.latent_with_codes(z, codes["categorical"], codes["continuous"]), codes

    def latent_of_item(self, rng: torch.Generator) -> torch.Tensor:
        z = self.noise(1, self.latent_dim, rng=rng)
        categorical = [torch.randint(k, (1,), generator=rng) for k in self.categorical_codes]
        continuous = torch.rand(1, self.continuous_codes, generator=rng) * 2 - 1
        return self.latent_with_codes(z, categorical, continuous)[0]

    # ----- the mutual-information term -----------------------------------------------------
    def information_loss(self, features: torch.Tensor, codes: dict) -> torch.Tensor:
        """-(log Q(c | x)) up to a constant, weighted: cross-entropy of each categorical code,
        0.5 * squared error of the continuous ones (summed over them) x continuous_weight."""
        predicted = self.q_head(features)
        logits = predicted[:, :sum(self.categorical_codes)].split(self.categorical_codes, dim=1)
        loss = sum((F.cross_entropy(l, c) for l, c in zip(logits, codes["categorical"])), predicted.new_zeros(()))
        if self.continuous_codes:
            means = predicted[:, sum(self.categorical_codes):]
            loss = loss + self.continuous_weight * 0.5 * ((means - codes["continuous"]) ** 2).sum(1).mean()
        return self.info_weight * loss

    def judge(self, fake, labels, codes):
        """D's score and Q's information term from one pass through D's body (logged as info_D
        in the critic's step, info_G in the generator's)."""
        features = self.discriminator.features(fake, labels)
        return self.discriminator.score(features), {"info": self.information_loss(features, codes)}

    # ----- samples -------------------------------------------------------------------------
    def sample_images(self, batch: dict) -> dict[str, torch.Tensor]:
        """The test images, samples of their latents, then rows that vary one code with the rest
        of each latent kept, what the code has learnt to mean: one per value of the first
        categorical code, and the first continuous code swept from -2 to 2 (the paper's figures
        go beyond the training range [-1, 1] to show it generalises)."""
        latent = self.noise_for(batch["index"])
        rows = {"real": batch["A"], "fake": self.samples_of(batch, latent)}
        start = self.latent_dim
        for value in range(min(self.categorical_codes[0], MAX_CODE_ROWS) if self.categorical_codes else 0):
            varied = latent.clone()
            varied[:, start:start + self.categorical_codes[0]] = F.one_hot(
                torch.tensor(value), self.categorical_codes[0]).to(latent)
            rows[f"code0={value}"] = self.samples_of(batch, varied)
        first_continuous = self.latent_dim + sum(self.categorical_codes)
        for value in (torch.linspace(-2, 2, CONTINUOUS_STEPS).tolist() if self.continuous_codes else []):
            varied = latent.clone()
            varied[:, first_continuous] = value
            rows[f"c0={value:+.0f}"] = self.samples_of(batch, varied)
        return rows
