"""A diverged run stops, naming the iteration and the loss or tensor, before NaN weights are
trained on or replace its checkpoints; fp16 says when a loss scale has collapsed."""
import math
from pathlib import Path

import hydra
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision

from conftest import NO_EVALUATION, one_torch_thread
from src.models.cyclegan import CycleGAN
from src.models.divergence import TrainingDiverged, first_non_finite
from src.utils.run import build_trainer_kwargs, run_training

COMMON = ("model=cyclegan", "data.max_dataset_size=4", "seed=7", "max_iters=6",
          "callbacks.model_checkpoint.every_n_iters=1", *NO_EVALUATION)


def nan_cycle_weight_from(monkeypatch, global_step: int) -> None:
    """CycleGAN's cycle weight turns NaN once the run has taken `global_step` optimizer steps."""
    original = CycleGAN.weight

    def weight(self, name):
        if name == "cycle" and self._trainer is not None and self.trainer.global_step >= global_step:
            return math.nan
        return original(self, name)

    monkeypatch.setattr(CycleGAN, "weight", weight)


def saved(cfg, name: str) -> dict:
    return torch.load(Path(cfg.paths.output_dir, "checkpoints", name), map_location="cpu", weights_only=True)


def assert_finite(checkpoint: dict) -> None:
    for key, value in checkpoint["state_dict"].items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key


def test_a_nan_loss_stops_the_run_at_its_iteration_and_keeps_the_last_finite_checkpoint(train_cfg, monkeypatch,
                                                                                           caplog):
    cfg = train_cfg(*COMMON)
    nan_cycle_weight_from(monkeypatch, 2 * 3)   # iteration 3 (0-based) goes NaN
    with pytest.raises(TrainingDiverged, match=r"Training diverged at iteration 4: train/cycle_A is nan, "
                                               r"train/cycle_B is nan, train/G is nan"):
        run_training(cfg)
    last = saved(cfg, "last.ckpt")
    assert last["global_step"] == 2 * 3   # iterations 0-2 saved, the NaN one not
    assert_finite(last)
    assert not Path(cfg.paths.output_dir, "checkpoints", "crashed.ckpt").exists()
    assert "no crashed.ckpt written, G_A." in caplog.text   # names a tensor that is not finite


def test_nan_weights_are_not_saved_when_the_losses_did_not_show_them(train_cfg, monkeypatch):
    """The losses are checked only when logged, and weights can turn NaN after the losses were
    computed: the save checks the weights, so last.ckpt and the periodic file keep finite ones."""
    cfg = train_cfg(*COMMON)
    original = CycleGAN.training_step

    def training_step(self, batch, batch_idx):
        out = original(self, batch, batch_idx)
        if self.iteration == 4:   # the 4th iteration's update ends in NaN weights
            with torch.no_grad():
                self.G_A.encoder[1].weight.fill_(math.nan)
        return out

    monkeypatch.setattr(CycleGAN, "training_step", training_step)
    with pytest.raises(TrainingDiverged, match=r"iteration 4: G_A.encoder.1.weight is not finite \(checked before saving a "
                                               r"checkpoint\); the last saved is \S+/checkpoints/last.ckpt"):
        run_training(cfg)
    assert saved(cfg, "last.ckpt")["global_step"] == 2 * 3
    assert_finite(saved(cfg, "iter_0000003.ckpt"))


def test_first_non_finite_names_the_tensor_or_none():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert first_non_finite(net) is None
    with torch.no_grad():
        net[1].bias[1] = math.inf
    assert first_non_finite(net) == "1.bias"


def test_fp16_warns_once_of_a_loss_scale_so_low_that_steps_are_skipped(train_cfg):
    """Under fp16 an inf loss only skips a step (not checked); a scale below 1 is worth a warning."""
    cfg = train_cfg("model=cyclegan", "max_iters=2", "data.max_dataset_size=2", *NO_EVALUATION)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    kwargs = {**build_trainer_kwargs(cfg, model), "logger": False, "enable_checkpointing": False}
    del kwargs["precision"]  # given by the plugin
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=0.25,
                                                                           growth_interval=1000))
    trainer = pl.Trainer(**{**kwargs, "plugins": [*kwargs["plugins"], plugin]})
    with pytest.warns(UserWarning, match=r"Iteration 1: the fp16 loss scale of the generators is down to 0.25") as seen:
        trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))
    low = [w for w in seen if "fp16 loss scale" in str(w.message)]
    assert sorted(str(w.message).split(" of the ")[1].split(" is ")[0] for w in low) == ["discriminators",
                                                                                       "generators"]


def test_under_ddp_every_rank_stops_at_the_same_iteration_when_one_ranks_loss_goes_nan(train_cfg, monkeypatch):
    """Rank 1's loss goes NaN first (rank 0's losses of that iteration are still finite): both
    ranks check the weights, the same on every rank after the averaged step, and stop together.
    A rank stopping alone would leave the other waiting in its next collective (under torchrun
    or SLURM, where no launcher ends it). Forked ranks
    keep this test's patch."""
    cfg = train_cfg(*COMMON, "trainer=ddp_sim", "trainer.strategy=ddp_fork_find_unused_parameters_true")
    original = CycleGAN.weight

    def weight(self, name):
        if name == "cycle" and self._trainer is not None and self.trainer.global_rank == 1 \
                and self.trainer.global_step >= 2 * 2:
            return math.nan
        return original(self, name)

    monkeypatch.setattr(CycleGAN, "weight", weight)
    with one_torch_thread(), pytest.raises(Exception, match=r"Training diverged at iteration 3: G_A\.\S+ is not finite"):
        run_training(cfg)
    assert saved(cfg, "last.ckpt")["global_step"] == 2 * 2


def test_best_fid_is_not_saved_with_a_discriminator_that_went_nan(train_cfg, monkeypatch):
    """The generators can still be finite (and the FID improve) when a discriminator, which
    steps after them, is not: best_fid.ckpt would resume a diverged run."""
    from src.callbacks.fid_kid import FidKidCallback

    cfg = train_cfg("model=cyclegan", "data.max_dataset_size=4", "max_iters=6",
                    "callbacks.model_checkpoint.every_n_iters=100", "++callbacks.latent=null",
                    "++callbacks.shapes_truth=null")   # FID every 2 iterations, no periodic save before
    original_step, original_save = CycleGAN.training_step, FidKidCallback.save_if_best

    def training_step(self, batch, batch_idx):
        out = original_step(self, batch, batch_idx)
        if self.iteration == 4:
            with torch.no_grad():
                next(self.D_A.parameters()).fill_(math.nan)
        return out

    def every_fid_is_a_best(self, trainer, pl_module, fid):
        self.best_fid = math.inf
        original_save(self, trainer, pl_module, fid)

    monkeypatch.setattr(CycleGAN, "training_step", training_step)
    monkeypatch.setattr(FidKidCallback, "save_if_best", every_fid_is_a_best)
    with pytest.raises(TrainingDiverged, match=r"iteration 4: D_A\.\S+ is not finite \(checked before saving a "
                                               r"checkpoint\); the last saved is \S+best_fid.ckpt"):
        run_training(cfg)
    best = saved(cfg, "best_fid.ckpt")
    assert best["global_step"] == 2 * 2
    assert_finite(best)
