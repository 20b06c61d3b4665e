"""trainer.gradient_clip_val under manual optimization: each player's gradients are clipped
before its step (Lightning clips automatic optimization's only, and refuses the setting here);
gradient accumulation, which a GAN's alternating steps cannot do, is refused with the fix."""
import contextlib

import hydra
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from conftest import NO_EVALUATION
from src.utils.run import build_trainer_kwargs, run_training

COMMON = ("model=cyclegan", "data.max_dataset_size=2", "max_iters=2", *NO_EVALUATION)


@contextlib.contextmanager
def gradients_at_each_step():
    """The gradients every optimizer step sees, as (norm, largest magnitude) per step."""
    seen = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            seen.append((float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))),
                         max(float(g.abs().max()) for g in grads)))

    handle = register_optimizer_step_pre_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize("algorithm,bound", [("norm", 0), ("value", 1)])
def test_each_players_gradients_are_clipped_before_its_step(train_cfg, algorithm, bound):
    cfg = train_cfg(*COMMON, "+trainer.gradient_clip_val=0.001", f"+trainer.gradient_clip_algorithm={algorithm}")
    with gradients_at_each_step() as seen:
        run_training(cfg)
    assert len(seen) == 2 * 2   # both players, both iterations, every gradient there at the step
    assert all(step[bound] <= 0.001 * (1 + 1e-5) for step in seen)
    with gradients_at_each_step() as unclipped:
        run_training(train_cfg(*COMMON, "model.optimizer.step_in_backward=false"))
    assert all(step[bound] > 0.01 for step in unclipped)   # what the clip cut


def test_a_clipped_runs_losses_are_finite(train_cfg):
    cfg = train_cfg(*COMMON, "model=nicegan", "+trainer.gradient_clip_val=1.0", "model.optimizer.step_in_backward=true")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    kwargs = build_trainer_kwargs(cfg, model)
    assert "gradient_clip_val" not in kwargs and model.gradient_clipping == (1.0, "norm")
    with pytest.warns(UserWarning, match=r"step_in_backward=true is off in this run: gradient clipping "
                                         r"\(trainer.gradient_clip_val\) need"):
        metrics = run_training(cfg)
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("train/"))


@pytest.mark.parametrize("override,message", [
    ("+trainer.accumulate_grad_batches=4", r"trainer.accumulate_grad_batches=4: a GAN's players step in turn"),
    ("+trainer.gradient_clip_algorithm=l2", r"trainer.gradient_clip_algorithm='l2': choose norm or value"),
    ("+trainer.gradient_clip_val=-1", r"trainer.gradient_clip_val=-1 must be a number > 0"),
])
def test_settings_a_gan_cannot_take_are_refused_naming_the_key(train_cfg, override, message):
    cfg = train_cfg(*COMMON, override)
    with pytest.raises(ValueError, match=message):
        build_trainer_kwargs(cfg, hydra.utils.instantiate(cfg.model, _recursive_=False))


def test_under_fp16_the_gradients_are_unscaled_before_the_clip(train_cfg):
    """The loss scaler multiplies the gradients by its scale (256 here): clipped before
    unscaling, they would step at clip / scale."""
    import pytorch_lightning as pl
    from pytorch_lightning.plugins.precision import MixedPrecision

    cfg = train_cfg(*COMMON, "+trainer.gradient_clip_val=0.001")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    kwargs = {**build_trainer_kwargs(cfg, model), "logger": False, "enable_checkpointing": False}
    del kwargs["precision"]  # given by the plugin
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)   # no overflow: every step taken
    fp16 = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    trainer = pl.Trainer(**{**kwargs, "plugins": [*kwargs["plugins"], fp16]})
    with gradients_at_each_step() as seen:
        trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))
    assert model.grad_scalers is not None and len(seen) == 2 * 2
    assert all(0.0009 <= norm <= 0.001 * (1 + 1e-3) for norm, _ in seen)   # clipped, and not to clip / scale
