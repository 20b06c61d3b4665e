"""pix2pix (Isola et al., CVPR 2017): conditional GAN + L1, with pix2pixHD options.

One iteration: G(x) is computed once; the conditional discriminator steps on
(x, y) vs (x, G(x).detach()) with its loss halved; then G steps on the adversarial term through
the updated D plus lambda * L1 (and, with pix2pixHD feature matching, the L1 between D's
features of the real and the fake pair).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.losses import feature_matching_loss
from src.models.base import TranslationModel, build_net, to_plain
from src.models.image_pool import ImagePool
from src.utils.config_checks import is_number
from src.utils.directions import trained_domains


class Pix2Pix(TranslationModel):
    optimizer_steps_per_iter = 2
    learns_from_pairs = True
    loss_weights = ("l1", "feature_matching", "gp")
    resumable_settings = TranslationModel.resumable_settings + ("pool_size",)   # a new size is warned by the pool

    def __init__(self, generator: dict, discriminator: dict, loss: dict, optimizer: dict, lr_schedule: dict,
                 init: dict, pool_size: int = 0, test_time_batch_stats: bool = True, test_time_dropout: bool = True,
                 fast_conv: bool | str = "auto"):
        super().__init__(loss=loss, optimizer=optimizer, lr_schedule=lr_schedule, init=init)
        self.save_hyperparameters({"generator": to_plain(generator), "discriminator": to_plain(discriminator),
                                   "loss": self.loss_cfg, "optimizer": self.optimizer_cfg,
                                   "lr_schedule": self.lr_schedule_cfg, "init": self.init_cfg,
                                   "pool_size": pool_size, "test_time_batch_stats": test_time_batch_stats,
                                   "test_time_dropout": test_time_dropout})
        g_cfg = self.hparams.generator
        self.G = build_net(g_cfg, self.net_init("generator"), "model.generator")
        # Conditional D: it sees the input and the (real or fake) output stacked on channels.
        self.D = build_net({**self.hparams.discriminator, "input_nc": g_cfg["input_nc"] + g_cfg["output_nc"]},
                           self.net_init("discriminator"), "model.discriminator")
        self.pools = {"fake_AB": ImagePool(pool_size)}
        self.weight("l1")
        # Read leniently here (a checkpoint loads whatever its run carried); a fit checks the value.
        matching = self.weights.get("feature_matching", 0.0)
        self.use_feature_matching = is_number(matching) and matching > 0
        self.use_fast_conv(fast_conv)

    def player_modules(self) -> dict[str, list[nn.Module]]:
        return {"discriminator": [self.D], "generator": [self.G]}

    def generator_for(self, direction: str) -> nn.Module:
        if direction != "AtoB":
            # (a loaded model knows the way round it was trained: translate.py's user did not set it)
            trained = self.training_data.get("direction")
            if trained is None:   # (a model in training: its data's way round is not its to say)
                raise ValueError("pix2pix translates one way only, direction=AtoB; for the other way, train one "
                                 "with the other data.direction")
            source, target = trained_domains(self, "AtoB")
            flipped = ", as trained with data.direction=BtoA" if trained == "BtoA" else ""
            raise ValueError(f"pix2pix translates one way only, direction=AtoB (its generator's: the dataset's "
                             f"{source} -> {target}{flipped}); for the other way, train one with "
                             f"data.direction={'AtoB' if flipped else 'BtoA'}")
        return self.G

    def sampling_options(self) -> dict:
        # The paper keeps dropout and uses batch statistics at test time.
        return {"batch_stats": self.hparams.test_time_batch_stats, "dropout": self.hparams.test_time_dropout}

    def train_iteration(self, batch: dict) -> None:
        real_A, real_B = batch["A"], batch["B"]
        fake_B = self.G(real_A)
        real_AB = torch.cat([real_A, real_B], 1)
        fake_AB = torch.cat([real_A, fake_B], 1)

        with self.players("discriminator") as opt_d:
            pooled_fake_AB = self.pools["fake_AB"].query(fake_AB)
            loss_d_real = self.adversarial(self.D(real_AB), True)
            loss_d_fake = self.adversarial(self.D(pooled_fake_AB), False)
            loss_d = 0.5 * (loss_d_real + loss_d_fake)
            penalties = {}   # (logged apart: the critic's estimate and its penalty read apart)
            if self.adversarial.needs_gradient_penalty:
                penalties["gp"] = self.weighted_gradient_penalty(self.D, real_AB, pooled_fake_AB)
                loss_d = loss_d + penalties["gp"]
            self.update(opt_d, loss_d)

        with self.players("generator") as opt_g:
            losses = {"l1": F.l1_loss(fake_B, real_B) * self.weight("l1")}
            if self.use_feature_matching:
                pred_fake, fake_features = self.D(fake_AB, return_features=True)
                with torch.no_grad():
                    _, real_features = self.D(real_AB, return_features=True)
                losses["feature_matching"] = (feature_matching_loss(fake_features, real_features)
                                              * self.weight("feature_matching"))
            else:
                pred_fake = self.D(fake_AB)
            losses["G_adv"] = self.adversarial(pred_fake, True, for_discriminator=False)
            loss_g = sum(losses.values())
            self.update(opt_g, loss_g)

        self.log_losses({**losses, **penalties}, {"G": loss_g, "D": loss_d, "D_real": loss_d_real,
                                                  "D_fake": loss_d_fake}, real_A.size(0))
