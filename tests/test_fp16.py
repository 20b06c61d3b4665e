"""fp16 mixed precision beyond the translation models' per-loss scalers (test_scale_out.py):
gradient penalties under loss scaling, the noise models, and a resume of the scalers.

fp16 autocast runs on a CPU when the plugin is given explicitly (`precision="16-mixed"` on a
CPU trainer becomes bf16), so these run here; speed needs a GPU."""
import hydra
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision

from conftest import NO_EVALUATION, finite_train_losses
from src.losses import input_gradient
from src.models.loss_scaling import PlayerGradScalers
from src.utils.run import build_trainer_kwargs


def test_a_penalty_gradient_scaled_as_the_loss_keeps_what_fp16_would_flush_to_zero():
    """The critic's backward in fp16 (as a GPU runs it under autocast) starts from the score's
    gradient of 1: input gradients near 1e-9, common once R1 has pushed them down, flush to 0.
    Scaled as the critic's loss is, they come back within fp16's precision. The factor is capped
    inside fp16's range: GradScaler's 65536, applied whole to a sum's outputs, was inf."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)

    def score(dtype):   # an explicit cast stands in for autocast's fp16 layers
        return ((x.to(dtype) * 1e-3).pow(2) * 1e-3).sum()

    exact = input_gradient(score(torch.float32), x)
    unscaled = input_gradient(score(torch.float16), x)
    scaled = input_gradient(score(torch.float16), x, scale=torch.tensor(8192.0))
    assert exact.abs().min() > 0 and unscaled.abs().max() == 0
    assert scaled.dtype == torch.float32
    torch.testing.assert_close(scaled, exact, rtol=2e-3, atol=exact.abs().max().item() * 2e-3)
    at_start = input_gradient(score(torch.float16), x, scale=torch.tensor(65536.0))   # GradScaler's first
    torch.testing.assert_close(at_start, exact, rtol=2e-3, atol=exact.abs().max().item() * 2e-3)


def fp16_trainer(cfg, model, **overrides) -> pl.Trainer:
    kwargs = {**build_trainer_kwargs(cfg, model), "logger": False, "enable_checkpointing": False, **overrides}
    del kwargs["precision"]  # given by the plugin
    return pl.Trainer(**{**kwargs, "plugins": [*kwargs["plugins"], MixedPrecision("16-mixed", "cpu")]})


@pytest.mark.parametrize("name, overrides, penalised", [
    ("stylegan", (), True),                   # R1, minibatch stddev, growth, noise inputs, equalised lr
    ("wgangp", (), True),                     # the gradient penalty, five critic steps per iteration
    ("wgan", (), False),                      # RMSprop (unfused: Lightning unscales), weight clipping
    ("infogan", (), False),                   # the information term through the Q head
])
def test_fp16_trains_the_noise_models_with_a_scaler_per_player(train_cfg, name, overrides, penalised):
    cfg = train_cfg(f"model={name}", "max_iters=2", *overrides, *NO_EVALUATION)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    scales = []
    plain_penalty_scale = model.penalty_scale

    def recorded_penalty_scale():
        scales.append(plain_penalty_scale())
        return scales[-1]
    model.penalty_scale = recorded_penalty_scale
    before = {name: [p.detach().clone() for p in nets[0].parameters()] for name, nets in model.player_modules().items()}
    trainer = fp16_trainer(cfg, model)
    trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))
    scalers = trainer.precision_plugin.scaler
    assert isinstance(scalers, PlayerGradScalers) and set(scalers.scalers) == {"discriminator", "generator"}
    assert trainer.global_step == 2 * model.optimizer_steps_per_iter
    finite_train_losses(trainer)
    # the penalties' inner gradients were scaled by the critic's loss scale
    assert (len(scales) > 0 and all(isinstance(s, torch.Tensor) and s.item() >= 1 for s in scales)) == penalised
    for player, nets in model.player_modules().items():
        moved = any(not torch.equal(a, b) for a, b in zip(before[player], nets[0].parameters()))
        # a step skipped on overflow (the first ones, at fp16's 65536 scale) may leave a player where it was;
        # two iterations of five critic steps move the critic for certain
        if player == "discriminator" and model.n_critic > 1:
            assert moved, player


def test_an_fp16_run_resumes_each_losss_scaler_where_it_stopped(train_cfg, tmp_path):
    cfg = train_cfg("model=pix2pix", "data=shapes_paired", "max_iters=2", *NO_EVALUATION)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    trainer = fp16_trainer(cfg, model)
    trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))
    saved = {name: scaler.state_dict() for name, scaler in trainer.precision_plugin.scaler.scalers.items()}
    trainer.save_checkpoint(tmp_path / "fp16.ckpt")
    # each moved on from a fresh scaler's state (steps counted towards growth, or overflows backed off)
    assert all((state["scale"], state["_growth_tracker"]) != (65536.0, 0) for state in saved.values()), saved

    class ScalersAtStart(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            scalers = trainer.precision_plugin.scaler
            self.seen = {name: scalers._scaler(name).state_dict() for name in saved}

    seen = ScalersAtStart()
    cfg = train_cfg("model=pix2pix", "data=shapes_paired", "max_iters=3", *NO_EVALUATION)
    resumed = hydra.utils.instantiate(cfg.model, _recursive_=False)
    trainer = fp16_trainer(cfg, resumed, callbacks=[seen])
    trainer.fit(resumed, datamodule=hydra.utils.instantiate(cfg.data), ckpt_path=tmp_path / "fp16.ckpt")
    assert seen.seen == saved


def test_log_losses_leaves_an_overflow_out_only_under_loss_scaling(train_cfg):
    """Through the model: with fp16 loss scalers an iteration's inf loss is left out of the
    window's logged mean; without them it is logged, and stops the run."""
    from types import SimpleNamespace

    from src.models.divergence import TrainingDiverged

    for scaled in (True, False):
        model = hydra.utils.instantiate(train_cfg("model=cyclegan").model, _recursive_=False)
        model.grad_scalers = SimpleNamespace(scales=dict) if scaled else None   # no scale low enough to warn of
        logged = {}
        model.log_dict = lambda metrics, **kwargs: logged.update({k: float(v) for k, v in metrics.items()})
        model.log = lambda *args, **kwargs: None
        model.images_seen, model._trainer = 0, SimpleNamespace(global_step=2, world_size=1)
        for value, logs in ((float("inf"), False), (3.0, True)):
            model.logging_losses = logs
            if scaled or not logs:
                model.log_losses({"adv": torch.tensor(value)}, {"G": torch.tensor(value)}, batch_size=1)
            else:
                with pytest.raises(TrainingDiverged, match=r"train/adv is inf, train/G is inf \(means over the 2 "
                                                           r"iterations since the last logged one\)"):
                    model.log_losses({"adv": torch.tensor(value)}, {"G": torch.tensor(value)}, batch_size=1)
        if scaled:
            assert logged == {"train/adv": 3.0, "train/G": 3.0}


def test_under_loss_scaling_an_overflowing_loss_is_left_out_of_its_logged_mean():
    """Under fp16 an overflow only skips its step, now and then: it must not make the whole
    window's logged mean inf. Without loss scaling it stays in, and stops the run."""
    from src.models.loss_window import LossWindow

    def window_of(skip: bool) -> LossWindow:
        window = LossWindow.start(["G", "D"], torch.tensor([1.0, float("inf")]), skip_non_finite=skip)
        for values in ([3.0, 2.0], [2.0, float("nan")]):
            window.add(torch.tensor(values))
        return window

    assert window_of(True).mean().tolist() == [2.0, 2.0] and window_of(True).iterations == 3
    assert window_of(False).mean()[0] == 2.0 and window_of(False).mean()[1].isnan()
    every_one_overflowed = LossWindow.start(["G"], torch.tensor([float("inf")]), skip_non_finite=True)
    assert every_one_overflowed.mean().isnan().all()


def test_a_loss_scale_fallen_past_any_recovery_stops_the_run_as_diverged(train_cfg):
    """Below 1 a player's steps are being skipped (a warning); far below, the player has stopped
    training for good, and the run is stopped as diverged, as an fp32 NaN would be (a sweep
    records the trial so) instead of training on for hours."""
    from types import SimpleNamespace

    from src.models.divergence import TrainingDiverged

    model = hydra.utils.instantiate(train_cfg("model=cyclegan").model, _recursive_=False)
    model._trainer = SimpleNamespace(global_step=8, world_size=1)
    model.grad_scalers = SimpleNamespace(scales=lambda: {"generators": 0.5, "discriminators": 1024.0})
    with pytest.warns(UserWarning, match="the fp16 loss scale of the generators is down to 0.5"):
        model.check_losses_finite(["G"], torch.tensor([float("inf")]))
    model.grad_scalers = SimpleNamespace(scales=lambda: {"generators": 2.0 ** -17, "discriminators": 1024.0})
    with pytest.raises(TrainingDiverged, match=r"Training diverged at iteration 4: the fp16 loss scale of the "
                                               r"generators is 7.62939e-06 \(its gradients overflow fp16"):
        model.check_losses_finite(["G"], torch.tensor([float("inf")]))


@pytest.mark.parametrize("mode", ["wgan", "wgangp", "hinge"])
def test_the_critics_losses_are_float32_from_half_precision_scores(mode):
    """Autocast keeps relu and mean in half precision (not mse_loss or the BCE): an fp16 loss
    turned GradScaler's 65536 into inf, skipping every step at that scale, and the logged
    curves (WGAN's Wasserstein estimate) came rounded to half precision."""
    from src.losses import AdversarialLoss

    loss = AdversarialLoss(mode)
    for dtype in (torch.float16, torch.bfloat16):
        scores = (torch.randn(4, 1) * 40).to(dtype).requires_grad_()
        for value in (loss(scores, True), loss(scores, False), loss(scores, True, for_discriminator=False)):
            assert value.dtype == torch.float32
        (loss(scores, True) * 65536).backward()   # GradScaler's first scale
        assert torch.isfinite(scores.grad).all() and scores.grad.dtype == dtype
