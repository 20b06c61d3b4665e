"""Progressive GAN (and StyleGAN's generator, which grows the same way): the growth schedule, fading a level in continuously from the one below, the
paper's building blocks, training across stages with the drift term, and a resume or an
evaluation that picks the stage up from the checkpoint."""
import csv
import json
import logging
import warnings
from pathlib import Path

import hydra
import pytest
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from conftest import NO_EVALUATION, assert_resume_continues_the_run
from src.models.progan import ProGAN
from src.models.progressive_schedule import Part, Phase, ProgressiveSchedule
from src.nets.progan import (EqualizedLinear, ProGANDiscriminator, ProGANGenerator, blur, blur_kernel, minibatch_stddev,
                             pixel_norm)
from src.nets.stylegan import StyleGANGenerator
from src.utils.checkpoint_loading import load_model
from src.utils.run import run_training
from test_models import fit_briefly, record_player_steps


def test_schedule_grows_one_level_per_two_phases_fading_each_in():
    schedule = ProgressiveSchedule(top_level=3, parts=[Part(0, phase_images=10, batch_size=1)])
    stages = [schedule.stage(i) for i in (0, 9, 10, 15, 20, 29, 30, 50, 55, 60, 1000)]
    assert stages == [(0, 1.0), (0, 1.0), (1, 0.0), (1, 0.5), (1, 1.0), (1, 1.0), (2, 0.0), (3, 0.0), (3, 0.5),
                      (3, 1.0), (3, 1.0)]
    assert schedule.images_before(1000) == 1000 and schedule.lr_factor_at(1000) == 1.0


def test_schedule_phases_count_images_at_each_resolutions_batch_and_rate():
    """StyleGAN's code: phases of a number of images, so a level's phases last phase_images /
    (its batch x devices) iterations; a fade-in runs at the new resolution's batch and rate."""
    schedule = ProgressiveSchedule(top_level=3, parts=[Part(0, 12, batch_size=2, batch_sizes={8: 6, 16: 3}, world_size=2)],
                                   lr_by_resolution={16: 2e-3, 32: 3e-3}, base_lr=1e-3, start_level=1)
    # 8x8: 12 / (6 x 2) = 1 iteration; 16x16 fade + alone: 2 each; 32x32 (batch_size 2): fade 3, then on
    assert [(p.first_iteration, p.level, p.fading) for p in schedule.phases] == [
        (0, 1, False), (1, 2, True), (3, 2, False), (5, 3, True), (8, 3, False)]
    assert [schedule.stage(i) for i in (0, 1, 2, 3, 5, 6, 8, 100)] == [
        (1, 1.0), (2, 0.0), (2, 0.5), (2, 1.0), (3, 0.0), (3, 1 / 3), (3, 1.0), (3, 1.0)]
    assert [schedule.batch_size_at(i) for i in range(9)] == [6, 3, 3, 3, 3, 2, 2, 2, 2]
    assert [schedule.lr_factor_at(i) for i in (0, 1, 5)] == [1.0, 2.0, 3.0]
    assert [schedule.images_before(i) for i in (0, 1, 3, 5, 8, 9)] == [0, 12, 24, 36, 48, 52]
    assert ProgressiveSchedule(3, [Part(0, 12, 2, {8: 6})], grow=False).phases == [Phase(0, float("inf"), 3, False,
                                                                                         batch_size=2)]


def test_a_critic_of_several_batches_an_iteration_counts_them_all_in_its_phases():
    """The authors' image count, which sets the phases, grows by every minibatch the critic
    takes: with model.n_critic=2 a phase of 10 images at batch 1 is 5 iterations, not 10 (and the
    kimg axis, which counts every batch loaded, had phases twice the configured length)."""
    twice = ProgressiveSchedule(top_level=1, parts=[Part(0, phase_images=10, batch_size=1, critic_batches=2)])
    assert [(p.first_iteration, p.level, p.fading) for p in twice.phases] == [(0, 0, False), (5, 1, True),
                                                                             (10, 1, False)]
    assert [twice.images_before(i) for i in (5, 10, 12)] == [10, 20, 24]
    # A run resumed at iteration 4 with n_critic=2 from one recorded before the critic's batches
    # counted (its record has no critic_batches: 1): the phase finishes the 6 images it lacks in 3.
    record = {"first_iteration": 0, "phase_images": 10, "batch_size": 1, "batch_sizes": {}, "world_size": 1}
    resumed = ProgressiveSchedule(top_level=1, parts=[Part(**record), Part(4, 10, 1, critic_batches=2)])
    assert [(p.first_iteration, p.level, p.fading) for p in resumed.phases][:3] == [(0, 0, False), (4, 0, False),
                                                                                   (7, 1, True)]


def test_a_phase_opens_where_the_level_or_the_fade_changes_not_where_only_the_settings_do():
    schedule = ProgressiveSchedule(top_level=2, parts=[Part(0, phase_images=4, batch_size=1)])
    # phases: level 0 at 0-3, fade to 1 at 4-7, level 1 at 8-11, fade to 2 at 12-15, level 2 from 16
    assert [i for i in range(30) if schedule.opens_phase(i)] == [4, 8, 12, 16]
    # The batch doubles at iteration 6, inside the fade-in: the same phase, finished in pieces.
    pieces = ProgressiveSchedule(top_level=2, parts=[Part(0, 4, 1), Part(6, 4, 2)])
    assert [p.first_iteration for p in pieces.phases] == [0, 4, 6, 7, 9, 11]
    assert [i for i in range(30) if pieces.opens_phase(i)] == [4, 7, 9, 11]


def adam_steps_after_each_iteration(cfg) -> list[set[int]]:
    """Fit `cfg`'s model, recording after each iteration the step counts its optimizers' state
    holds (one set over both players' parameters)."""
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    counts = []
    train_iteration = model.train_iteration

    def recording(batch):
        train_iteration(batch)
        counts.append({int(state["step"]) for opt in model.optimizers() for state in opt.optimizer.state.values()})

    model.train_iteration = recording
    fit_briefly(cfg, model)
    return counts


def test_the_optimizers_start_afresh_at_each_phase_as_in_the_authors_code(train_cfg):
    """StyleGAN's smoke schedule: two iterations at 8x8, then a fade-in to 16x16 and 16x16 alone,
    one iteration each. Adam's state (moments and step count) is cleared as each phase begins,
    kept inside one; `model.reset_optimizers_per_phase=false` keeps it throughout."""
    cfg = train_cfg("model=stylegan", "max_iters=4", *NO_EVALUATION)
    assert adam_steps_after_each_iteration(cfg) == [{1}, {2}, {1}, {1}]
    cfg = train_cfg("model=stylegan", "max_iters=4", "model.reset_optimizers_per_phase=false", *NO_EVALUATION)
    # (the new level's layers have state only from their first gradient on)
    assert [max(steps) for steps in adam_steps_after_each_iteration(cfg)] == [1, 2, 3, 4]


def test_a_change_of_device_count_finishes_the_phase_with_the_images_it_lacks():
    """Resumed on 2 devices at iteration 4 of a 1-device run (batch 2, 12 images a phase): the
    first phase had 8 images and needs 1 iteration of 4 more; the next take 3 iterations each."""
    schedule = ProgressiveSchedule(top_level=2, parts=[Part(0, 12, 2), Part(4, 12, 2, world_size=2)])
    assert [(p.first_iteration, p.iterations, p.level, p.fading, p.world_size) for p in schedule.phases] == [
        (0, 4, 0, False, 1), (4, 1, 0, False, 2), (5, 3, 1, True, 2), (8, 3, 1, False, 2), (11, 3, 2, True, 2),
        (14, float("inf"), 2, False, 2)]
    assert [schedule.images_before(i) for i in (4, 5, 8, 14, 15)] == [8, 12, 24, 48, 52]
    # A fade-in split by the change goes on from the alpha it had reached.
    split = ProgressiveSchedule(top_level=2, parts=[Part(0, 12, 2), Part(7, 12, 2, world_size=2)])
    assert [split.stage(i) for i in (6, 7, 8, 9, 10)] == [(1, 0.0), (1, pytest.approx(1 / 6)),
                                                          (1, pytest.approx(1 / 6 + 5 / 18)),
                                                          (1, pytest.approx(1 / 6 + 10 / 18)), (1, 1.0)]
    with pytest.raises(ValueError, match="parts must start at iteration 0 and rise"):
        ProgressiveSchedule(top_level=2, parts=[Part(0, 12, 2), Part(0, 12, 2, world_size=2)])


def test_other_batch_sizes_or_phase_lengths_from_a_resume_on_finish_the_phase_by_its_images():
    """Resumed at iteration 4 of batch 2 (8 of 12 images) at batch 4: one iteration finishes the
    phase. A shorter phase from iteration 2 (4 images done, 4 a phase now) ends it there; a
    fade-in cut short goes on from its alpha to 1 over the images it still lacks."""
    bigger = ProgressiveSchedule(top_level=2, parts=[Part(0, 12, 2), Part(4, 12, 4)])
    assert [(p.first_iteration, p.iterations, p.level, p.fading, p.batch_size) for p in bigger.phases] == [
        (0, 4, 0, False, 2), (4, 1, 0, False, 4), (5, 3, 1, True, 4), (8, 3, 1, False, 4), (11, 3, 2, True, 4),
        (14, float("inf"), 2, False, 4)]
    assert [bigger.images_before(i) for i in (4, 5, 8)] == [8, 12, 24]
    assert [bigger.batch_size_at(i) for i in (3, 4)] == [2, 4]
    shorter = ProgressiveSchedule(top_level=2, parts=[Part(0, 12, 2), Part(2, 4, 2)])
    assert [(p.first_iteration, p.level, p.fading) for p in shorter.phases] == [
        (0, 0, False), (2, 1, True), (4, 1, False), (6, 2, True), (8, 2, False)]
    fade_cut = ProgressiveSchedule(top_level=2, parts=[Part(0, 12, 2), Part(8, 6, 2)])
    assert [fade_cut.stage(i) for i in (6, 7, 8, 9)] == [(1, 0.0), (1, pytest.approx(1 / 6)),
                                                          (1, pytest.approx(1 / 3)), (1, 1.0)]


def test_the_loader_follows_the_batch_size_per_resolution_and_the_optimizers_the_rate(train_cfg):
    """model=stylegan's smoke schedule: 2 iterations of 2 images at 8x8, then 4 (a batch-size
    change inside the epoch); a rate per resolution reaches both players' optimizers (`++`
    adds a resolution to the table)."""
    cfg = train_cfg("model=stylegan", "max_iters=4", "++model.lr_by_resolution.16=0.004",
                    "++model.lr_by_resolution.32=0.002", *NO_EVALUATION)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    seen = []
    train_iteration = model.train_iteration

    def recording(batch):
        seen.append((batch["A"].size(0), model.stage(model.iteration)))
        train_iteration(batch)
        seen[-1] += (sorted({g["lr"] for opt in model.optimizers() for g in opt.param_groups}),)

    model.train_iteration = recording
    fit_briefly(cfg, model)
    base = cfg.model.optimizer.lr
    assert seen == [(2, (1, 1.0), [base]), (2, (1, 1.0), [base]), (4, (2, 0.0), [0.004]), (4, (2, 1.0), [0.004])]
    # Between iterations the optimizers already hold the next one's rate (the fade-in of 32x32),
    # where the learning-rate monitor reads it; the scheduler's own step had set it from its base.
    assert {g["lr"] for opt in model.optimizers() for g in opt.param_groups} == {0.002}


def test_the_first_iterations_rate_by_resolution_is_set_before_it_starts(train_cfg):
    """The learning-rate monitor reads the optimizers at a batch's start: the first iteration's
    rate by resolution was set only inside it, so the first row logged the base rate."""
    cfg = train_cfg("model=stylegan", "max_iters=1", "++model.lr_by_resolution.8=0.003", *NO_EVALUATION)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    before = []
    train_iteration = model.train_iteration

    def recording(batch):
        before.append(sorted({g["lr"] for opt in model.optimizers() for g in opt.param_groups}))
        train_iteration(batch)

    model.train_iteration = recording
    fit_briefly(cfg, model)
    assert before == [[0.003]]


def test_a_resume_at_another_rate_keeps_the_rates_a_resolution_names(train_cfg, tmp_path, monkeypatch):
    """model=stylegan's smoke schedule: iterations 1-2 at 8x8 (the base rate), 3-4 fading in
    16x16, whose rate the table gives. Resumed at half the base rate from iteration 1 or 3: 8x8
    trains at the new base, 16x16 at the table's rate (the restored schedule's rate, not the
    optimizers' rate, which holds the resolution's factor already, is what the factor multiplies)."""
    from src.models.progan import ProGAN

    seen = []
    train_iteration = ProGAN.train_iteration

    def recording(self, batch):
        train_iteration(self, batch)
        seen.append((self.iteration, sorted({g["lr"] for opt in self.optimizers() for g in opt.param_groups})))

    monkeypatch.setattr(ProGAN, "train_iteration", recording)
    common = ("model=stylegan", "max_iters=4", "++model.lr_by_resolution.16=0.004", *NO_EVALUATION,
              "callbacks.model_checkpoint.every_n_iters=1", "callbacks.model_checkpoint.save_top_k=-1")
    first = train_cfg(*common)
    run_training(first)
    base = first.model.optimizer.lr
    assert seen == [(1, [base]), (2, [base]), (3, [0.004]), (4, [0.004])]   # (iterations done, rates)
    for resumed_at in (1, 3):
        seen.clear()
        cfg = train_cfg(*common, f"model.optimizer.lr={base / 2}",
                        f"ckpt_path={first.paths.output_dir}/checkpoints/iter_000000{resumed_at}.ckpt")
        cfg.paths.output_dir = str(tmp_path / f"from_{resumed_at}")
        run_training(cfg)
        assert seen == [(i, [base / 2] if i <= 2 else [0.004]) for i in range(resumed_at + 1, 5)]


def test_schedule_settings_are_checked_with_the_key_named(train_cfg):
    for override, message in (("++model.batch_sizes.12=4", "model.batch_sizes lists resolution '12': the keys are image sides"),
                              ("++model.batch_sizes.8=0", r"model.batch_sizes.8=0 must be a positive integer \(images per device\)"),
                              ("++model.lr_by_resolution.128=-1", "model.lr_by_resolution.128=-1 must be a positive rate"),
                              ("++model.lr_by_resolution.128=abc", "model.lr_by_resolution.128='abc' must be a positive rate"),
                              ("model.start_resolution=6", "model.start_resolution=6 must be one of"),
                              # its rates are factors of the configured one: 0 divided by zero
                              ("model.optimizer.lr=0", r"model.optimizer.lr=0 with model.lr_by_resolution: the rate "
                                                       r"below 128 px must be > 0")):
        cfg = train_cfg("model=stylegan", override)   # composed outside: an override Hydra refuses fails here
        with pytest.raises(InstantiationException, match=message):   # Hydra wraps the model's ValueError
            hydra.utils.instantiate(cfg.model, _recursive_=False)


def nets(seed: int = 0):
    torch.manual_seed(seed)
    G = ProGANGenerator(latent_dim=8, output_nc=3, image_size=16, fmap_base=32, fmap_max=8)
    D = ProGANDiscriminator(input_nc=3, image_size=16, fmap_base=32, fmap_max=8)
    return G, D


def test_every_stage_makes_and_takes_full_size_images_and_a_fade_starts_where_the_level_below_ends():
    G, D = nets()
    z = torch.randn(4, 8)
    x = torch.randn(4, 3, 16, 16)
    for level in range(3):
        G.set_stage(level, 1.0)
        out = G(z)
        assert out.shape == (4, 3, 16, 16)
        block = 2 ** (2 - level)   # the current resolution, upsampled: constant blocks
        assert torch.equal(out, out[:, :, ::block, ::block].repeat_interleave(block, 2).repeat_interleave(block, 3))
    for level in (1, 2):
        G.set_stage(level - 1, 1.0), D.set_stage(level - 1, 1.0)
        below_g, below_d = G(z), D(x)
        G.set_stage(level, 0.0), D.set_stage(level, 0.0)
        assert torch.allclose(G(z), below_g, atol=1e-6) and torch.allclose(D(x), below_d, atol=1e-6)
        G.set_stage(level, 0.5)
        assert not torch.allclose(G(z), below_g)


def test_building_blocks():
    layer = EqualizedLinear(50, 3)
    assert layer.weight.std() > 0.5   # N(0, 1) storage, He's constant applied at run time
    x = torch.randn(7, 50)
    assert torch.allclose(layer(x), x @ (layer.weight * (2 / 50) ** 0.5).T)
    normed = pixel_norm(torch.randn(2, 5, 3, 3) * 10)
    assert torch.allclose(normed.pow(2).mean(1), torch.ones(2, 3, 3), atol=1e-4)
    same = minibatch_stddev(torch.ones(4, 2, 3, 3))
    varied = minibatch_stddev(torch.randn(4, 2, 3, 3))
    assert same.shape == (4, 3, 3, 3) and same[:, 2].max() < 1e-3 and varied[:, 2].min() > 0.3


def test_training_grows_through_the_stages_with_the_drift_term(train_cfg):
    cfg = train_cfg("model=progan", "max_iters=4", *NO_EVALUATION)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    stages = []
    set_stage = model.generator.set_stage

    def recording(level, alpha):
        stages.append((level, alpha))
        set_stage(level, alpha)

    model.generator.set_stage = recording
    steps = record_player_steps(model)
    drift = []
    regularizers = model.critic_regularizers

    def checking(scores_real):
        terms = regularizers(scores_real)
        assert torch.allclose(terms["drift"], 0.001 * scores_real.pow(2).mean())
        drift.append(terms["drift"])
        return terms

    model.critic_regularizers = checking
    fit_briefly(cfg, model)
    assert stages == [(0, 1.0), (1, 0.0), (1, 1.0), (2, 0.0)]   # one iteration per phase in the smoke config
    assert len(steps) == 8 and len(drift) == 4
    assert (model.discriminator.level, model.discriminator.alpha) == (2, 0.0)


@pytest.mark.parametrize("length, budget, warned", [
    ("max_iters=4", None, "max_iters=4 ends the run before the networks reach 32x32, which takes 6 iterations, 0.024 kimg"),
    ("max_iters=6", None, None),
    ("max_iters=null", 0.02, "max_kimg=0.02 ends the run before the networks reach 32x32, which takes 6 iterations"),
    ("max_iters=null", 0.024, None)])
def test_a_run_ending_before_the_growth_completes_warns_with_the_length_it_needs(train_cfg, length, budget, warned):
    """The smoke config grows a level per iteration: 32 px from the 7th (6 iterations, 24 images before it)."""
    from src.callbacks.image_budget import ImageBudget
    cfg = train_cfg("model=progan", length, *NO_EVALUATION)
    callbacks = [ImageBudget(budget)] if budget else []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_briefly(cfg, callbacks=callbacks, max_epochs=-1 if budget else None)
    growth = [str(w.message) for w in caught if "before the networks reach" in str(w.message)]
    if warned is None:
        assert growth == []
    else:
        assert len(growth) == 1 and warned in growth[0], growth


def test_resume_across_stages_and_eval_loads_the_stage(train_cfg, tmp_path):
    assert_resume_continues_the_run(train_cfg, tmp_path, ["model=progan", *NO_EVALUATION])
    cfg = train_cfg("model=progan", "max_iters=3", *NO_EVALUATION)
    cfg.paths.output_dir = str(tmp_path / "three")
    run_training(cfg)
    model = load_model(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert (model.generator.level, model.generator.alpha) == (1, 1.0)   # the stage of the third iteration


def styled_generator(**kwargs):
    from src.nets.stylegan import StyleGANGenerator
    torch.manual_seed(0)
    settings = dict(latent_dim=8, output_nc=3, image_size=16, fmap_base=32, fmap_max=8, mapping_layers=2, style_dim=8)
    return StyleGANGenerator(**{**settings, **kwargs})


def test_stylegan_generator_styles_noise_mixing_and_truncation():
    G = styled_generator(mixing_prob=1.0)
    z = torch.randn(3, 8)
    G.set_stage(2, 1.0)
    G.eval()
    out = G(z)
    assert out.shape == (3, 3, 16, 16)
    # Per-pixel noise enters through its learned per-channel scales only (zero at the start).
    assert torch.equal(out, G(z))
    with torch.no_grad():
        for layer in G.modules():
            if hasattr(layer, "noise") and hasattr(layer.noise, "weight"):
                layer.noise.weight.fill_(0.5)
    assert not torch.equal(G(z), G(z))
    # Training mode mixes two latents' styles at a crossover inside the 6 styled layers.
    G.train()
    styles = G.layer_styles(z, None)
    assert len(styles) == 6 and any(not torch.equal(styles[0], s) for s in styles) and G.w_avg.abs().sum() > 0
    # Truncation pulls every sample's w to the running mean.
    G.eval()
    G.truncation_psi = 0.0
    assert all(torch.allclose(w, G.w_avg.expand_as(w)) for w in G.layer_styles(z, None))
    # ... in the layers below the cutoff only (the authors' code: the coarse ones)
    G.truncation_cutoff = 2
    kept = G.layer_styles(z, None)
    assert all(torch.allclose(w, G.w_avg.expand_as(w)) for w in kept[:2])
    assert all(torch.equal(w, G.styles(z, None)) for w in kept[2:])
    # (Its fade-in: test_a_generators_fade_in_starts_from_the_level_below_as_the_reals_do.)


@pytest.mark.parametrize("name", ["stylegan"])
def test_stylegan_trains_across_stages_and_resumes(train_cfg, tmp_path, name):
    assert_resume_continues_the_run(train_cfg, tmp_path, [f"model={name}", *NO_EVALUATION])


def test_reals_are_brought_to_the_stage_and_faded_like_the_fakes():
    from src.models.progan import faded_reals
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(faded_reals(x, 2, 1.0, 2), x)   # full size, faded in: unchanged
    at_8 = faded_reals(x, 1, 1.0, 2)
    assert torch.allclose(at_8[:, :, ::2, ::2], torch.nn.functional.avg_pool2d(x, 2), atol=1e-6)
    assert torch.equal(faded_reals(x, 2, 0.0, 2), at_8)   # a fade starts at the level below
    half = faded_reals(x, 2, 0.5, 2)
    assert torch.allclose(half, (x + at_8) / 2, atol=1e-6)


@pytest.mark.parametrize("generator_class", [ProGANGenerator, StyleGANGenerator])
def test_a_generators_fade_in_starts_from_the_level_below_as_the_reals_do(generator_class):
    """At alpha 0 a new level shows exactly the level below's image, as `faded_reals` shows the
    reals (nearest upsampling, both models): a smoother fade of the fakes alone would be a cue
    for the critic that has nothing to do with quality."""
    torch.manual_seed(0)
    generator = generator_class(latent_dim=8, image_size=16, fmap_base=32, fmap_max=8).eval()
    z = torch.randn(2, 8)

    def image_at(level, alpha):
        generator.set_stage(level, alpha)
        with torch.no_grad():
            return generator(z)

    below, starting, halfway, faded_in = image_at(1, 1.0), image_at(2, 0.0), image_at(2, 0.5), image_at(2, 1.0)
    assert torch.allclose(starting, below, atol=1e-6)
    assert torch.allclose(halfway, (below + faded_in) / 2, atol=1e-5)
    assert not torch.allclose(faded_in, below, atol=1e-3)


def test_stylegan_discriminator_downsamples_through_the_low_pass_filter(train_cfg):
    """StyleGAN's critic blurs before each downsampling (SPEC: bilinear down-sampling); ProGAN's
    does not. The filter keeps flat regions and removes the highest frequency."""
    flat = blur(torch.full((1, 2, 6, 6), 3.0), blur_kernel())
    assert torch.allclose(flat[..., 1:-1, 1:-1], torch.full((1, 2, 4, 4), 3.0))
    checkerboard = (torch.arange(6)[:, None] + torch.arange(6)[None, :]) % 2 * 2.0 - 1
    assert blur(checkerboard[None, None], blur_kernel())[..., 1:-1, 1:-1].abs().max() < 1e-6
    assert hydra.utils.instantiate(train_cfg("model=stylegan").model, _recursive_=False).discriminator.blur
    assert not hydra.utils.instantiate(train_cfg("model=progan").model, _recursive_=False).discriminator.blur
    x = torch.randn(2, 3, 16, 16)
    torch.manual_seed(0)
    box = ProGANDiscriminator(image_size=16, fmap_base=32, fmap_max=8)
    torch.manual_seed(0)
    blurred = ProGANDiscriminator(image_size=16, fmap_base=32, fmap_max=8, blur=True)
    assert not torch.allclose(box(x), blurred(x))
    # The kernel is the network's buffer, moved with it, not a tensor made (and, on a GPU,
    # copied from the host) per call; checkpoints keep their keys.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "new_tensor", lambda *args, **kwargs: pytest.fail("a tensor made per call"))
        assert torch.allclose(blurred.double()(x.double()).float(), blurred.float()(x), atol=1e-5)
    assert box.state_dict().keys() == blurred.state_dict().keys()
    blurred.set_stage(0, 1.0)   # 4x4 alone: no downsampling block runs, so no filter either
    box.set_stage(0, 1.0)
    assert torch.equal(box(x), blurred(x))


@pytest.mark.parametrize("blurs", [False, True])
def test_each_critic_block_activates_where_its_authors_do(blurs):
    """ProGAN's block: conv, LReLU, then the 2x2 average (its paper's table); StyleGAN's:
    blur, conv, the average, then LReLU (the authors' D_basic, `act(conv2d_downscale2d(blur(x)))`)."""
    torch.manual_seed(0)
    critic = ProGANDiscriminator(image_size=8, fmap_base=32, fmap_max=8, blur=blurs)
    critic.set_stage(1, 1.0)
    seen = {}
    (conv2,) = [block[1] for block in critic.blocks]
    conv2.register_forward_hook(lambda module, args, output: seen.update(conv2=output))
    critic.last_conv.register_forward_pre_hook(lambda module, args: seen.update(block=args[0][:, :-1]))
    critic(torch.randn(4, 3, 8, 8))
    pooled_then_activated = F.leaky_relu(F.avg_pool2d(seen["conv2"], 2), 0.2)
    activated_then_pooled = F.avg_pool2d(F.leaky_relu(seen["conv2"], 0.2), 2)
    assert not torch.allclose(pooled_then_activated, activated_then_pooled)
    assert torch.allclose(seen["block"], pooled_then_activated if blurs else activated_then_pooled, atol=1e-6)


@pytest.mark.parametrize("name, length", [("progan", ("max_kimg", 19000)), ("stylegan", ("max_kimg", 25000)),
                                          ("wgangp", ("max_iters", 200000))])
def test_the_growing_models_and_wgangp_train_for_their_codes_length(train_cfg, name, length):
    """Not the noise models' 25 epochs (DCGAN's code default), which end ProGAN inside its first
    phases on CelebA-HQ and give WGAN-GP a fiftieth of its code's 200k generator iterations: the
    budget of the code, and no epoch limit beside it."""
    from src.utils.run import build_trainer_kwargs
    from src.utils.training_config import CONF_DIR
    key, value = length
    assert OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")[key] == value
    if key == "max_kimg":   # composed over the noise models' 25 epochs: the budget alone ends the run
        cfg = train_cfg(f"model={name}", "~max_iters")
        assert cfg.max_kimg == value and cfg.trainer.max_epochs == 25
        assert build_trainer_kwargs(cfg, hydra.utils.instantiate(cfg.model, _recursive_=False))["max_epochs"] == -1


def test_stylegan_refuses_a_latent_its_style_mixing_would_not_draw(train_cfg):
    with pytest.raises(InstantiationException, match=r"model.latent_distribution='uniform': StyleGAN's style mixing draws its "
                                         r"second latent from N\(0, 1\)"):
        hydra.utils.instantiate(train_cfg("model=stylegan", "model.latent_distribution=uniform").model,
                                _recursive_=False)
    hydra.utils.instantiate(train_cfg("model=stylegan", "model.latent_distribution=uniform",
                                      "model.generator.mixing_prob=0").model, _recursive_=False)


def test_stylegan_takes_its_noise_maps_from_the_caller():
    G = styled_generator()
    G.set_stage(1, 0.5)
    with torch.no_grad():
        for name, parameter in G.named_parameters():
            if name.endswith("noise.weight"):
                parameter.fill_(0.5)
    assert G.noise_shapes() == [(1, 4, 4), (1, 4, 4), (1, 8, 8), (1, 8, 8)]
    z = torch.randn(2, 8)
    noise = [torch.randn(2, *shape) for shape in G.noise_shapes()]
    G.eval()
    assert torch.equal(G(z, noise=noise), G(z, noise=noise))
    other = [n.clone() for n in noise]
    other[3][1] += 1   # the last layer's map of the second image
    changed = G(z, noise=other)
    assert torch.equal(changed[0], G(z, noise=noise)[0]) and not torch.equal(changed[1], G(z, noise=noise)[1])
    with pytest.raises(ValueError, match="noise_shapes"):
        G(z, noise=noise[:2])


@pytest.mark.parametrize("name,decay_at_16", [("progan", 0.999), ("stylegan", 0.99889), ("dcgan", None)])
def test_the_growing_gans_sample_from_the_generators_running_average_as_their_papers(train_cfg, name, decay_at_16):
    """ProGAN's code: decay 0.999 per iteration; StyleGAN's: a half-life of 10k images, so the
    decay follows the batch (0.99889 at 16 images, 0.99117 at its 128 at low resolutions)."""
    ema_cfg = train_cfg(f"model={name}").callbacks.ema
    assert ema_cfg.enabled == (decay_at_16 is not None)
    if decay_at_16 is not None:
        ema = hydra.utils.instantiate(ema_cfg)
        assert ema.decay_for(16) == pytest.approx(decay_at_16, abs=5e-6)
        if name == "stylegan":
            assert ema.decay_for(128) == pytest.approx(0.5 ** (128 / 10000))


def test_eval_samples_stylegan_with_the_truncation_it_is_given(train_cfg, tmp_path, shared_data_dir):
    """eval.py truncation_psi=0 samples the loaded generator at the mean w (the generator's own
    truncation is tested above), and the report says so; other models refuse it."""
    import json

    import numpy as np
    from hydra.core.global_hydra import GlobalHydra
    from PIL import Image

    from conftest import compose_train_cfg
    from src.utils.evaluation import apply_truncation, run_evaluation

    cfg = train_cfg("model=stylegan", "max_iters=2", *NO_EVALUATION)
    run_training(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"

    def evaluate(name: str, *overrides: str) -> tuple[np.ndarray, dict]:
        eval_cfg = compose_train_cfg([f"ckpt_path={ckpt}", "data=shapes_labelled", f"data.size={cfg.data.size}",
                                      "data.max_dataset_size=4", "feature_extractor=random_cnn", *overrides],
                                     tmp_path / name, shared_data_dir, config_name="eval")
        try:
            run_evaluation(eval_cfg)
        finally:
            GlobalHydra.instance().clear()
        out = Path(eval_cfg.output_dir)
        images = np.stack([np.asarray(Image.open(p)) for p in sorted((out / "samples").glob("*.png"))])
        return images, json.loads((out / "metrics.json").read_text())

    plain, report = evaluate("plain")
    truncated, truncated_report = evaluate("truncated", "truncation_psi=0")
    assert "truncation_psi" not in report and truncated_report["truncation_psi"] == 0.0
    assert plain.shape == truncated.shape and not np.array_equal(plain, truncated)
    with pytest.raises(ValueError, match="truncation_psi=0.7 is for StyleGAN checkpoints"):
        apply_truncation(hydra.utils.instantiate(train_cfg("model=progan").model, _recursive_=False), 0.7)


@pytest.mark.parametrize("name", ["progan", "stylegan"])
def test_the_quickstart_grows_to_full_size_with_small_nets(tmp_path, shared_data_dir, name):
    """`experiment=quickstart model=progan|stylegan`: through every growth phase within the run,
    on nets a CPU trains in minutes."""
    from hydra.core.global_hydra import GlobalHydra

    from conftest import compose_train_cfg
    cfg = compose_train_cfg(["experiment=quickstart", f"model={name}"], tmp_path / "run", shared_data_dir)
    GlobalHydra.instance().clear()
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    top = model.generator.top_level
    last_fade = model.schedule.phases[-2]
    assert top == 3 and model.stage(cfg.max_iters - 1) == (top, 1.0)
    assert last_fade.level == top and last_fade.fading and last_fade.first_iteration + last_fade.iterations < cfg.max_iters
    assert sum(p.numel() for p in model.parameters()) < 5_000_000   # the papers' widths: 41M at 32 px


def test_without_growth_every_iteration_trains_at_full_size(train_cfg):
    model = hydra.utils.instantiate(train_cfg("model=stylegan", "model.grow=false").model, _recursive_=False)
    assert [model.stage(i) for i in (0, 1, 10 ** 6)] == [(model.generator.top_level, 1.0)] * 3
    assert model.hparams.grow is False
    with pytest.raises(Exception, match="model.grow='yes' must be true"):
        hydra.utils.instantiate(train_cfg("model=progan", "model.grow=yes").model, _recursive_=False)


def test_the_minibatch_stddev_groups_images_as_the_authors_code():
    x = torch.randn(8, 3, 2, 2)
    whole = minibatch_stddev(x)
    assert torch.equal(minibatch_stddev(x, 8), whole) and torch.allclose(whole[:, 3], whole[0, 3].expand(8, 2, 2))
    grouped = minibatch_stddev(x, 4)[:, 3, 0, 0]
    # Groups of 4: image i with the images of the same i mod 2, as the authors' reshape puts them.
    for i in range(8):
        members = x[i % 2::2]
        expected = (members.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        assert torch.allclose(grouped[i], expected), i
    assert not torch.allclose(grouped[0], grouped[1])
    assert minibatch_stddev(torch.randn(6, 3, 2, 2), 4).shape == (6, 4, 2, 2)   # groups of 3 divide 6
    with pytest.raises(ValueError, match="mbstd_group_size=1 must be an integer >= 2"):
        ProGANDiscriminator(image_size=16, fmap_base=32, fmap_max=8, mbstd_group_size=1)


def test_the_minibatch_stddev_of_identical_half_precision_images_has_finite_gradients():
    """fp16 (mixed precision): 1e-8 rounds to 0 there, so a group of identical features (one
    image per group, or a collapsed generator) took sqrt(0) and sent NaN into the critic's grads."""
    x = torch.ones(5, 3, 2, 2, dtype=torch.float16, requires_grad=True)   # 5 images: groups of 1
    out = minibatch_stddev(x, 4)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_stylegan_averages_its_generator_by_the_images_of_each_iteration(train_cfg, monkeypatch):
    """The EMA's decay per update follows the scheduled batch (2, 2, then 4 images)."""
    from src.callbacks.ema import GeneratorEMA

    images_per_update = []
    decay_for = GeneratorEMA.decay_for
    monkeypatch.setattr(GeneratorEMA, "decay_for",
                        lambda self, images: images_per_update.append(images) or decay_for(self, images))
    run_training(train_cfg("model=stylegan", "max_iters=4", *NO_EVALUATION))
    assert images_per_update == [2, 2, 4, 4]


def test_a_datamodule_reused_after_a_scheduled_fit_goes_back_to_its_batch_size(train_cfg):
    import pytorch_lightning as pl

    from src.utils.run import build_trainer_kwargs

    def fit(cfg, datamodule) -> list[int]:
        model = hydra.utils.instantiate(cfg.model, _recursive_=False)
        sizes, train_iteration = [], model.train_iteration
        model.train_iteration = lambda batch: sizes.append(batch["A"].size(0)) or train_iteration(batch)
        kwargs = {**build_trainer_kwargs(cfg, model), "logger": False, "enable_checkpointing": False}
        pl.Trainer(**kwargs).fit(model, datamodule=datamodule)
        return sizes

    scheduled = train_cfg("model=stylegan", "max_iters=3", *NO_EVALUATION)
    datamodule = hydra.utils.instantiate(scheduled.data)
    assert fit(scheduled, datamodule) == [2, 2, 4]
    plain = train_cfg("model=stylegan", "max_iters=2", "model.batch_sizes=null", *NO_EVALUATION)
    assert fit(plain, datamodule) == [plain.data.batch_size] * 2 and datamodule.batch_size_schedule is None


def checkpoint_from_before_the_image_schedule(train_cfg, tmp_path, phase_iters: int) -> tuple[Path, dict]:
    """A 3-iteration ProGAN checkpoint as the code that counted phases in iterations wrote it."""
    cfg = train_cfg("model=progan", "max_iters=3", *NO_EVALUATION)
    run_training(cfg)
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    new_keys = ("phase_images", "batch_size", "batch_sizes", "lr_by_resolution", "start_resolution",
                "reset_optimizers_per_phase")
    checkpoint["hyper_parameters"] = {**{k: v for k, v in checkpoint["hyper_parameters"].items() if k not in new_keys},
                                      "phase_iters": phase_iters}
    for newer in ("model_class", "schedule_parts", "world_sizes"):
        checkpoint.pop(newer, None)
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    return old, checkpoint


def test_a_checkpoint_from_before_the_image_schedule_loads_with_the_same_schedule(train_cfg, tmp_path):
    """ProGAN checkpoints counted phases in iterations (`phase_iters`) at one batch size: they
    load as phase_images = phase_iters x the run's batch size, at the stage they were saved at."""
    old, checkpoint = checkpoint_from_before_the_image_schedule(train_cfg, tmp_path, phase_iters=1)
    model = load_model(old)
    batch = checkpoint["datamodule_hyper_parameters"]["batch_size"]
    assert type(model).__name__ == "ProGAN" and model.hparams.phase_images == batch and model.hparams.batch_size == batch
    assert model.hparams.reset_optimizers_per_phase is False   # as it trained
    assert [model.stage(i) for i in range(4)] == [(0, 1.0), (1, 0.0), (1, 1.0), (2, 0.0)]   # one iteration per phase
    assert (model.generator.level, model.generator.alpha) == (1, 1.0)   # the third iteration's stage


def test_a_run_resumed_from_before_the_image_schedule_goes_on_with_its_own_schedule(train_cfg, tmp_path):
    """A checkpoint counting its phases in iterations (`phase_iters`) was converted for
    load_model only: resumed, its past was laid out with today's settings (here one iteration
    per phase where it trained two), so the run went on at another resolution."""
    old, _ = checkpoint_from_before_the_image_schedule(train_cfg, tmp_path, phase_iters=2)   # two iterations a phase
    resumed = train_cfg("model=progan", "max_iters=4", f"ckpt_path={old}", *NO_EVALUATION)
    resumed.paths.output_dir = str(tmp_path / "resumed")
    run_training(resumed)
    parts = torch.load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["schedule_parts"]
    # Its first three iterations as trained: 8 images (two iterations of 4) a phase; then today's.
    assert [(p["first_iteration"], p["phase_images"]) for p in parts] == [(0, 8), (3, 4)]


def test_growing_models_train_on_whole_batches_only(train_cfg, monkeypatch):
    """The authors' minibatches never fall short: 32 items at batch 5 make 6 batches an epoch,
    the 2 left over are dropped, so 7 iterations all train on 5 images; a split too small for
    the largest batch the schedule asks for is named, with the setting to change."""
    from src.models.progan import ProGAN

    sizes = []
    train_iteration = ProGAN.train_iteration
    monkeypatch.setattr(ProGAN, "train_iteration", lambda self, batch: sizes.append(batch["A"].size(0))
                        or train_iteration(self, batch))
    run_training(train_cfg("model=progan", "data.max_dataset_size=16", "data.batch_size=5", "max_iters=7",
                           *NO_EVALUATION))
    assert sizes == [5] * 7
    with pytest.raises(ValueError, match=r"the largest batch of model.batch_sizes, 40, .* holds only 32"):
        run_training(train_cfg("model=stylegan", "data.max_dataset_size=16", "++model.batch_sizes.32=40",
                               "max_iters=1", *NO_EVALUATION))


def test_overfit_batches_needs_the_fixed_batch_size(train_cfg):
    """Lightning's overfit_batches swaps the loader's sampler, which a batch-size schedule
    cannot take: the run names both keys and the fix, and trains once the table is off."""
    overfit = ("max_iters=2", "+trainer.overfit_batches=1", *NO_EVALUATION)
    with pytest.raises(ValueError, match="trainer.overfit_batches cannot be used with model.batch_sizes"):
        run_training(train_cfg("model=stylegan", *overfit))
    cfg = train_cfg("model=stylegan", "model.batch_sizes=null", *overfit)
    run_training(cfg)
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").exists()


def test_a_resume_at_another_batch_size_finishes_the_phase_by_its_images(train_cfg, tmp_path, caplog, recwarn):
    """ProGAN's smoke schedule (4 images a phase, batch 4: a phase per iteration): after 2
    iterations the 8x8 fade-in is done. Resumed at batch 2, 8x8 alone takes 2 iterations (not a
    fade-in restarted by the new batch), the checkpoint records both parts, and only a change of
    the growth's structure warns."""
    first = train_cfg("model=progan", "max_iters=2", *NO_EVALUATION)
    first.paths.output_dir = str(tmp_path / "first")
    run_training(first)
    resume = (f"ckpt_path={tmp_path}/first/checkpoints/last.ckpt", "max_iters=4", *NO_EVALUATION)
    resumed = train_cfg("model=progan", "data.batch_size=2", *resume)
    resumed.paths.output_dir = str(tmp_path / "resumed")
    with caplog.at_level(logging.INFO):
        run_training(resumed)
    assert "Resuming with other schedule settings (model.batch_size: 4 -> 2)" in caplog.text
    assert not [w for w in recwarn if "growth" in str(w.message)]
    (metrics_file,) = Path(resumed.paths.output_dir).glob("csv/version_*/metrics.csv")
    rows = [row for row in csv.DictReader(metrics_file.open()) if row.get("train/kimg")]
    assert [(float(r["train/level"]), float(r["train/alpha"]), float(r["train/kimg"])) for r in rows] == [
        (1.0, 1.0, pytest.approx(0.010)), (1.0, 1.0, pytest.approx(0.012))]
    checkpoint = torch.load(Path(resumed.paths.output_dir, "checkpoints", "last.ckpt"), weights_only=True)
    assert [(p["first_iteration"], p["batch_size"]) for p in checkpoint["schedule_parts"]] == [(0, 4), (2, 2)]
    with pytest.warns(UserWarning, match=r"another growth structure .*model.start_resolution: 4 -> 8"):
        run_training(train_cfg("model=progan", "model.start_resolution=8", *resume))
    # Checkpoints from before the parts were recorded held each part's device count alone.
    older = {key: value for key, value in checkpoint.items() if key != "schedule_parts"}
    older["world_sizes"] = [[0, 1], [1, 2]]
    model = load_model(Path(resumed.paths.output_dir, "checkpoints", "last.ckpt"))
    model.on_load_checkpoint(older)   # as a resume calls it (with one device here)
    assert model.parts == [Part(0, 4, 2, {}, 1), Part(1, 4, 2, {}, 2), Part(4, 4, 2, {}, 1)]


def test_a_fade_in_does_not_recompile_the_compiled_networks():
    """Under compile the fade-in weight, which moves every iteration, is a tensor the graphs read
    (the stage buffer), not a Python float they are specialised on: a fade-in compiles each
    network once, not once per iteration (torch.compile gives up after 8 and runs eagerly)."""
    import torch._dynamo
    torch._dynamo.reset()
    torch.manual_seed(0)
    generator = ProGANGenerator(latent_dim=8, image_size=16, fmap_base=32, fmap_max=8)
    discriminator = ProGANDiscriminator(image_size=16, fmap_base=32, fmap_max=8, blur=True)
    compiled_generator, compiled_discriminator = (torch.compile(net, backend="eager")
                                                  for net in (generator, discriminator))
    z = torch.randn(2, 8)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for alpha in (0.1, 0.35, 0.6, 0.85):
        for net in (generator, discriminator):
            net.set_stage(2, alpha)
        images = compiled_generator(z)
        assert torch.equal(images, generator(z))   # the weight the eager forward uses too
        assert torch.allclose(compiled_discriminator(images), discriminator(images))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before == 2
    torch._dynamo.reset()


def test_a_model_batch_the_loader_would_not_serve_is_refused(train_cfg):
    """Without model.batch_sizes the loader serves data.batch_size, and model.batch_size (which
    follows it unless set) sizes the phases: set alone, each phase trained another number of
    images than it counted, and train/kimg read double."""
    cfg = train_cfg("model=progan", "model.batch_size=8", *NO_EVALUATION)
    with pytest.raises(ValueError, match=r"model.batch_size=8, but the loader serves data.batch_size=4 \(model."
                                         r"batch_sizes is null\): set data.batch_size=8 instead"):
        run_training(cfg)
    run_training(train_cfg("model=progan", "data.batch_size=8", "max_iters=1", *NO_EVALUATION))   # both follow


def test_the_best_fid_checkpoint_is_chosen_among_full_size_evaluations(train_cfg, caplog):
    """A growing network's earlier stages sample 4-16 px images, upsampled: their FID ranked with
    the full-size network's, and here the 16 px stage's was the best, so best_fid.ckpt (and the
    run's best FID) would have been a network a quarter of the size."""
    cfg = train_cfg("model=progan", "max_iters=8", "++callbacks.latent=null")   # full size from iteration 7
    with caplog.at_level(logging.INFO):
        run_training(cfg)
    passed = [r.getMessage() for r in caplog.records if "not a candidate for best_fid.ckpt" in r.getMessage()]
    assert [message.split(" at iteration ")[1].split()[0] for message in passed] == ["2", "4", "6"]
    best = torch.load(Path(cfg.paths.output_dir, "checkpoints", "best_fid.ckpt"), weights_only=True)
    assert best["global_step"] == 8 * ProGAN.optimizer_steps_per_iter
    record = json.loads(Path(cfg.paths.output_dir, "final_metrics.json").read_text())
    assert record["best_fid_iteration"] == 8


def test_a_resumed_best_fid_of_a_small_stage_starts_over_among_full_size_ones(train_cfg, tmp_path):
    """A checkpoint from before the small stages were left out of the ranking may hold a best
    FID of the 16 px stage, which the full-size network's need not beat: it starts over."""
    first = train_cfg("model=progan", "max_iters=4", "++callbacks.latent=null")
    run_training(first)
    checkpoint_path = Path(first.paths.output_dir, "checkpoints", "last.ckpt")
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    (key,) = [k for k in checkpoint["callbacks"] if k.startswith("FidKidCallback")]
    checkpoint["callbacks"][key].update(best_fid=0.001, best_iteration=2)   # as an earlier version ranked it
    torch.save(checkpoint, tmp_path / "earlier.ckpt")
    resumed = train_cfg("model=progan", "max_iters=8", "++callbacks.latent=null", f"ckpt_path={tmp_path / 'earlier.ckpt'}")
    resumed.paths.output_dir = str(tmp_path / "resumed")
    with pytest.warns(UserWarning, match=r"The best FID so far \(0.0010, iteration 2\) is of a network not at full "
                                         r"size yet: the best starts over"):
        run_training(resumed)
    record = json.loads(Path(resumed.paths.output_dir, "final_metrics.json").read_text())
    assert record["best_fid_iteration"] == 8 and record["best_fid"] > 0.001


@pytest.mark.parametrize("batch, said", [(5, "batch 5, groups of 1"), (6, "batch 6, groups of 3"), (8, None)])
def test_a_batch_that_shrinks_the_stddev_group_is_said_at_the_start(train_cfg, batch, said):
    """The group shrinks to the largest size that divides the batch: a prime batch gave groups of
    one image, whose spread is 0, and the critic's stddev channel became a constant, unsaid."""
    cfg = train_cfg("model=progan", "model.grow=false", f"data.batch_size={batch}",
                    "model.discriminator.mbstd_group_size=4", "max_iters=1", *NO_EVALUATION)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_training(cfg)
    told = [str(w.message) for w in caught if "minibatch standard deviation" in str(w.message)]
    if said is None:
        assert told == []
    else:
        assert len(told) == 1 and f"(32 px: {said});" in told[0] and "mbstd_group_size=4" in told[0]
