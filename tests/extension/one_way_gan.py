"""A model added the way the README's "Adding a model" says: this module (which would be
src/models/one_way_gan.py) and one config file (tests/extension/conf/model/one_way_gan.yaml,
which would be conf/model/one_way_gan.yaml), nothing else in the codebase. The test that trains,
evaluates, resumes and translates with it (tests/test_extension.py) checks that promise.

The model: one generator A -> B against one discriminator of B images, plus an L1 term that
keeps the translation near its input (a toy, not a paper's method).
"""
import torch.nn as nn
import torch.nn.functional as F

from src.models.base import TranslationModel, build_net, to_plain


class OneWayGAN(TranslationModel):
    optimizer_steps_per_iter = 2          # one optimizer step per player per iteration
    loss_weights = ("identity",)          # the loss.weights names it reads (others are refused)

    def __init__(self, generator: dict, discriminator: dict, loss: dict, optimizer: dict, lr_schedule: dict,
                 init: dict):
        super().__init__(loss=loss, optimizer=optimizer, lr_schedule=lr_schedule, init=init)
        # Checkpoints rebuild the model from these (eval.py, translate.py, resuming).
        self.save_hyperparameters({"generator": to_plain(generator), "discriminator": to_plain(discriminator),
                                   "loss": self.loss_cfg, "optimizer": self.optimizer_cfg,
                                   "lr_schedule": self.lr_schedule_cfg, "init": self.init_cfg})
        self.G = build_net(self.hparams.generator, self.net_init("generator"), "model.generator")
        self.D = build_net(self.hparams.discriminator, self.net_init("discriminator"), "model.discriminator")

    def player_modules(self) -> dict[str, list[nn.Module]]:
        # One optimizer per player, built from model.optimizer (and model.optimizer.players.<name>).
        return {"discriminator": [self.D], "generator": [self.G]}

    def generator_for(self, direction: str) -> nn.Module:
        if direction != "AtoB":
            raise ValueError("OneWayGAN translates AtoB only")
        return self.G

    def train_iteration(self, batch: dict) -> None:
        real_A, real_B = batch["A"], batch["B"]
        fake_B = self.G(real_A)
        # `players` freezes everyone else and hands over this player's optimizers.
        with self.players("discriminator") as opt_d:
            loss_d = 0.5 * (self.adversarial(self.D(real_B), True) + self.adversarial(self.D(fake_B.detach()), False))
            self.update(opt_d, loss_d)
        with self.players("generator") as opt_g:
            losses = {"G_adv": self.adversarial(self.D(fake_B), True, for_discriminator=False),
                      "identity": F.l1_loss(fake_B, real_A) * self.weight("identity")}
            loss_g = sum(losses.values())
            self.update(opt_g, loss_g)
        self.log_losses(losses, {"G": loss_g, "D": loss_d}, real_A.size(0))
