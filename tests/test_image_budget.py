"""max_kimg: a run's length in real images (the ProGAN/StyleGAN papers' unit), counted over the
batches actually trained on, ending with its checkpoint and resuming to the same stop."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import NO_EVALUATION, last_checkpoint
from src.callbacks.image_budget import ImageBudget

STATE_KEY = "ImageBudget"


def test_the_budget_counts_every_devices_images_and_stops_once_reached():
    budget = ImageBudget(max_kimg=0.02)
    trainer = SimpleNamespace(should_stop=False)
    # the model's count over 2 devices of 4 images each
    module = SimpleNamespace(loaded_images=lambda batch: batch["A"].size(0) * 2, iteration=0, images_seen=0)
    module.images_after = lambda batch: module.images_seen + module.loaded_images(batch)
    stops = []
    batch = {"A": torch.zeros(4, 1)}
    for _ in range(3):
        budget.on_train_batch_start(trainer, module, batch, 0)
        stops.append(trainer.should_stop)   # known before the iteration runs
        module.images_seen += module.loaded_images(batch)   # the training step
        budget.on_train_batch_end(trainer, module, None, batch, 0)
    assert module.images_seen == 24 and stops == [False, False, True]   # 8, 16, 24 >= 20
    for bad in (0, -1, "10", True):
        with pytest.raises(ValueError, match="max_kimg=.* must be a positive number"):
            ImageBudget(bad)


def test_the_last_iteration_logs_its_own_losses(train_cfg, monkeypatch):
    """The model chooses before its steps whether an iteration logs; a stop decided after them
    left the loggers the previous logged iteration's losses under the last step."""
    from src.models.progan import ProGAN
    chosen = []
    original = ProGAN.logs_this_iteration
    monkeypatch.setattr(ProGAN, "logs_this_iteration", lambda self: chosen.append(original(self)) or chosen[-1])
    cfg = train_cfg("model=stylegan", "max_iters=null", "max_kimg=0.008", "trainer.log_every_n_steps=50",
                    *NO_EVALUATION)
    last_checkpoint(cfg)
    assert chosen == [False, False, True]   # 2, 2, 4 images: the budget of 8 ends iteration 3


def test_a_critics_several_batches_count_as_the_images_they_are(train_cfg):
    """WGAN-GP's iteration loads model.n_critic real batches, all of which its critic sees: the
    budget counts them (it counted the generator step's one batch, 1/n_critic of them)."""
    cfg = train_cfg("model=wgangp", "max_iters=null", "max_kimg=0.01", "data.batch_size=1", *NO_EVALUATION)
    checkpoint = last_checkpoint(cfg)
    assert cfg.model.n_critic == 5 and checkpoint["global_step"] == 2 * 6   # 2 iterations of 5 images
    assert checkpoint["images_seen"] == 10


def test_stylegan_stops_after_the_iteration_that_reaches_the_budget(train_cfg, tmp_path):
    """The smoke schedule's batches are 2, 2, 4, 4 images: 8 images end the run after iteration
    3, mid-epoch, with last.ckpt there (max_iters unset); a run resumed from iteration 2 stops
    at the same place with the same weights."""
    common = ["model=stylegan", "max_iters=null", "max_kimg=0.008", *NO_EVALUATION]
    whole = last_checkpoint(train_cfg(*common))
    assert whole["global_step"] == 3 * 2
    assert whole["images_seen"] == 8

    first = train_cfg("model=stylegan", "max_iters=2", "max_kimg=0.008", *NO_EVALUATION)
    first.paths.output_dir = str(tmp_path / "first")
    last_checkpoint(first)
    resumed_cfg = train_cfg(*common, f"ckpt_path={tmp_path}/first/checkpoints/last.ckpt")
    resumed_cfg.paths.output_dir = str(tmp_path / "resumed")
    resumed = last_checkpoint(resumed_cfg)
    assert resumed["global_step"] == whole["global_step"]
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert not (Path(resumed_cfg.paths.output_dir) / "checkpoints" / "crashed.ckpt").exists()


def test_a_budget_reached_mid_epoch_and_raised_continues_that_epoch(train_cfg, tmp_path):
    """The run stopped by max_kimg=0.008 after iteration 3, mid-epoch, wrote its last.ckpt at the
    epoch's end, as a finished epoch: resumed with a larger budget, it skipped the rest of that
    epoch. Saved at the stopping batch's end, it resumes inside the epoch, as the longer run."""
    common = ["model=stylegan", "max_iters=null", *NO_EVALUATION]
    longer = last_checkpoint(train_cfg(*common, "max_kimg=0.012"))
    first = train_cfg(*common, "max_kimg=0.008")
    first.paths.output_dir = str(tmp_path / "first")
    last_checkpoint(first)
    resumed_cfg = train_cfg(*common, "max_kimg=0.012", f"ckpt_path={tmp_path}/first/checkpoints/last.ckpt")
    resumed_cfg.paths.output_dir = str(tmp_path / "resumed")
    resumed = last_checkpoint(resumed_cfg)
    assert resumed["global_step"] == longer["global_step"] == 4 * 2
    assert resumed["epoch"] == longer["epoch"]
    for key, value in longer["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


def test_a_checkpoint_written_at_batch_end_holds_the_count_with_that_batch(train_cfg):
    """best_fid.ckpt is saved by the FID callback at batch end: its count must include the
    batch it follows, or a run resumed from it trains one batch more than the budget."""
    # At full size from the start: a growing network's smaller stages are no candidates for the best.
    cfg = train_cfg("model=stylegan", "model.grow=false", "max_iters=null", "max_kimg=0.012", "++callbacks.latent=null")
    last_checkpoint(cfg)
    best = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "best_fid.ckpt", weights_only=True)
    batch = cfg.model.batch_sizes[cfg.data.size] if cfg.data.size in cfg.model.batch_sizes else cfg.data.batch_size
    assert best["images_seen"] == batch * (best["global_step"] // 2)


def test_a_budget_counts_the_images_before_it_was_set_and_in_older_checkpoints(train_cfg, tmp_path):
    """The model keeps the count (train/kimg's), budget or not: a run given max_kimg on a resume
    counts the images already trained on. A checkpoint from before the model kept it gives the
    budget's own count; one with neither, an estimate from its iterations, said."""
    first = train_cfg("model=stylegan", "max_iters=2", "max_kimg=null", *NO_EVALUATION)   # a run with no budget
    first.paths.output_dir = str(tmp_path / "first")
    saved = last_checkpoint(first)
    assert saved["images_seen"] == 4   # the smoke schedule's batches: 2, 2
    older = {k: v for k, v in saved.items() if k != "images_seen"}
    older["callbacks"] = {**older["callbacks"], STATE_KEY: {"images": 4}}   # the callback's state then
    torch.save(older, tmp_path / "older.ckpt")
    oldest = {k: v for k, v in saved.items() if k != "images_seen"}
    torch.save(oldest, tmp_path / "oldest.ckpt")
    for name, path in (("resumed", f"{tmp_path}/first/checkpoints/last.ckpt"), ("older", tmp_path / "older.ckpt"),
                       ("oldest", tmp_path / "oldest.ckpt")):
        resumed = train_cfg("model=stylegan", "max_iters=null", "max_kimg=0.008", *NO_EVALUATION, f"ckpt_path={path}")
        resumed.paths.output_dir = str(tmp_path / name)
        if name == "oldest":
            with pytest.warns(UserWarning, match=r"holds no image count: train/kimg \(and max_kimg\) take 4 images "
                                                 r"for its 2 iterations"):
                checkpoint = last_checkpoint(resumed)
        else:
            checkpoint = last_checkpoint(resumed)
        assert checkpoint["global_step"] == 3 * 2 and checkpoint["images_seen"] == 8, name   # 4 + iteration 3's 4


def test_image_counts_are_over_every_device(train_cfg):
    """max_kimg, train/kimg and the EMA's half-life count the images of all devices: each
    device's batch times the world size (dropped, a run on 8 GPUs would train 8 times longer)."""
    import hydra
    model = hydra.utils.instantiate(train_cfg("model=wgangp").model, _recursive_=False)
    model._trainer = SimpleNamespace(world_size=2)
    batch = {"A": torch.zeros(5 * 3, *model.image_shape)}   # n_critic=5 real batches of 3
    assert model.loaded_images(batch) == 2 * 15          # every real image the critic saw
    assert model.images_per_iteration(batch) == 2 * 3    # the generator step's batch, per device


def test_a_budget_of_no_images_is_refused_not_ignored(train_cfg):
    """max_kimg=0 read as false: the run trained by its epochs instead (200, or none at all)."""
    from src.utils.run import run_training
    with pytest.raises(ValueError, match=r"max_kimg=0 must be a positive number of thousands of images, or null"):
        run_training(train_cfg("model=progan", "max_kimg=0"))
