"""The noise-to-image family (GAN, cGAN, DCGAN, WGAN, WGAN-GP, LSGAN): each paper's recipe
composes, each iteration takes n_critic critic steps then one generator step with every player
changing only its own weights, the objectives match their formulas, conditioning reaches both
networks, samples are evaluated with FID/KID, and a run resumes to the same weights."""
import json
import math
import sys
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from PIL import Image

from conftest import (NO_EVALUATION, assert_resume_continues_the_run, run_training_on_two_ranks,
                      single_and_two_rank_metrics)
from src.models.noise_base import REFERENCE_ITEMS_START, NoiseToImageModel
from src.utils.checkpoint_loading import load_model
from src.nets.noise_nets import DCGANDiscriminator, DCGANGenerator, MLPGenerator
from src.utils.run import run_training
from test_models import fit_briefly, record_player_steps
from test_scale_out import PROBE, assert_ranks_agree_on_different_data, rank_probes

NOISE_MODELS = ("gan", "cgan", "dcgan", "wgan", "wgangp", "lsgan", "infogan")
# model -> (objective, critic steps per generator step, optimizer) of its paper
RECIPES = {"gan": ("vanilla", 1, torch.optim.Adam), "cgan": ("vanilla", 1, torch.optim.Adam),
           "dcgan": ("vanilla", 1, torch.optim.Adam), "wgan": ("wgan", 5, torch.optim.RMSprop),
           "wgangp": ("wgangp", 5, torch.optim.Adam), "lsgan": ("lsgan", 1, torch.optim.Adam),
           "infogan": ("vanilla", 1, torch.optim.Adam)}
# model -> the distribution its code draws z from
LATENTS = {"gan": "uniform", "cgan": "uniform", "dcgan": "uniform", "wgan": "normal", "wgangp": "normal",
           "lsgan": "uniform", "infogan": "uniform"}


def build(cfg):
    return hydra.utils.instantiate(cfg.model, _recursive_=False)


@pytest.mark.parametrize("name", NOISE_MODELS)
def test_each_paper_recipe_composes(train_cfg, name):
    cfg = train_cfg(f"model={name}")
    model = build(cfg)
    objective, n_critic, optimizer = RECIPES[name]
    assert isinstance(model, NoiseToImageModel)
    assert model.adversarial.mode == objective and model.n_critic == n_critic
    assert model.optimizer_steps_per_iter == n_critic + 1
    assert cfg.data.batches_per_iteration == n_critic
    z, _ = model.sample_latent(3)
    labels = torch.tensor([0, 1, 0]) if model.num_classes else None
    images = model.generator(z, labels)
    assert images.shape == (3, *model.image_shape) and images.abs().max() <= 1
    assert model.discriminator(images, labels).shape == (3, 1)
    optimizers, _ = model.configure_optimizers()
    assert all(type(opt) is optimizer for opt in optimizers)
    # z from the paper's code's distribution, in training and for the evaluation's item latents
    assert model.latent_distribution == LATENTS[name]
    trained_on, evaluated_on = model.sample_latent(256)[0], model.noise_for(torch.arange(256))
    for latent in (trained_on[:, :model.latent_dim], evaluated_on[:, :model.latent_dim]):
        if LATENTS[name] == "uniform":
            assert latent.abs().max() <= 1 and abs(latent.std() - 3 ** -0.5) < 0.02
        else:
            assert latent.abs().max() > 2.5 and abs(latent.std() - 1) < 0.02


def test_an_unknown_latent_distribution_is_named(train_cfg):
    with pytest.raises(InstantiationException, match="latent_distribution='cauchy' must be one of normal, uniform"):
        build(train_cfg("model=dcgan", "model.latent_distribution=cauchy"))


@pytest.mark.parametrize("name", ["dcgan", "wgangp", "cgan", "infogan"])
def test_iteration_steps_critic_n_times_then_generator(train_cfg, name):
    """n_critic critic steps, each on its own real batch, then one generator step; each step
    changes its own player's weights and nobody else's (record_player_steps)."""
    cfg = train_cfg(f"model={name}", "max_iters=2", *NO_EVALUATION)
    model = build(cfg)
    steps = record_player_steps(model)
    seen_batches = []
    real_chunks = model.discriminator_loss

    def counting(real, fake, labels, codes):
        seen_batches.append(real.size(0))
        return real_chunks(real, fake, labels, codes)

    model.discriminator_loss = counting
    fit_briefly(cfg, model)
    n = model.n_critic
    assert steps == 2 * ([("discriminator",)] * n + [("generator",)])
    assert seen_batches == [cfg.data.batch_size] * (2 * n)   # the loader batch holds n real batches
    assert model.trainer.global_step == 2 * (n + 1) and model.iteration == 2


def test_wgan_clips_the_critic_and_not_the_generator(train_cfg):
    cfg = train_cfg("model=wgan", "max_iters=1", *NO_EVALUATION)
    model = fit_briefly(cfg)
    clip = cfg.loss.clip
    assert all(p.abs().max() <= clip for p in model.discriminator.parameters())
    assert any(p.abs().max() > clip for p in model.generator.parameters())


@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "wgan"])
def test_discriminator_objective_matches_its_formula(train_cfg, mode):
    model = build(train_cfg("model=dcgan", f"loss={mode}"))
    real, fake = torch.rand(4, *model.image_shape) * 2 - 1, torch.rand(4, *model.image_shape) * 2 - 1
    terms = model.discriminator_loss(real, fake, None)
    d_real, d_fake = model.discriminator(real), model.discriminator(fake)
    expected = {
        "vanilla": -F.logsigmoid(d_real).mean() - torch.log1p(-torch.sigmoid(d_fake)).mean(),
        "lsgan": ((d_real - 1) ** 2).mean() + (d_fake ** 2).mean(),
        "wgan": d_fake.mean() - d_real.mean(),
    }[mode]
    assert torch.allclose(terms["D_real"] + terms["D_fake"], expected, atol=1e-5)
    if mode == "wgan":
        assert torch.allclose(terms["wasserstein"], -expected, atol=1e-5)
    # What the critic trains on (and logs as train/D): the estimate of the distance is logged
    # beside it, not added (added, it cancels the WGAN loss: train/D read 0 throughout).
    from src.models.noise_gan import total
    assert torch.allclose(total(terms), expected, atol=1e-5)


def test_conditioning_reaches_both_networks():
    torch.manual_seed(0)
    G = MLPGenerator(latent_dim=8, output_nc=1, image_size=8, hidden=[16], num_classes=3)
    z = torch.randn(2, 8)
    assert not torch.allclose(G(z, torch.tensor([0, 0])), G(z, torch.tensor([2, 2])))
    D = DCGANDiscriminator(input_nc=1, image_size=8, ndf=4, num_classes=3, norm="none")
    x = torch.randn(2, 1, 8, 8)
    assert not torch.allclose(D(x, torch.tensor([0, 0])), D(x, torch.tensor([1, 1])))
    with pytest.raises(ValueError, match="num_classes=3"):
        G(z)


def test_dcgan_sizes_outside_4_times_a_power_of_two_are_refused():
    assert DCGANGenerator(latent_dim=4, output_nc=3, image_size=16, ngf=4)(torch.randn(2, 4)).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"model.image_size=24.*data.crop_size"):
        DCGANGenerator(image_size=24)


def test_samples_get_fid_kid_a_grid_and_a_checkpoint(train_cfg):
    cfg = train_cfg("model=dcgan", "max_iters=2", "++callbacks.latent=null")
    metrics = run_training(cfg)
    assert math.isfinite(metrics["eval/fid_samples"]) and metrics["eval/fid"] == metrics["eval/fid_samples"]
    assert math.isfinite(metrics["eval/kid_x100_samples"])
    assert metrics["eval/is_samples"] >= 1.0 and math.isfinite(metrics["eval/is_std_samples"])
    out = Path(cfg.paths.output_dir)
    grid = np.asarray(Image.open(out / "samples" / "iter_0000002.png"))
    assert grid.shape[0] == 2 * (cfg.data.size + 4)   # two rows: the test images, then samples
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "checkpoints" / "best_fid.ckpt").is_file()


@pytest.mark.parametrize("name", ["cgan", "stylegan"])
def test_evaluation_samples_do_not_depend_on_the_batch(train_cfg, name):
    """Each test item's latent (and StyleGAN's noise maps) come from its index: the same samples
    in any batch."""
    cfg = train_cfg(f"model={name}")
    model, datamodule = build(cfg), hydra.utils.instantiate(cfg.data)
    with torch.no_grad():   # StyleGAN's noise scales start at zero: make its noise count
        for key, parameter in model.generator.named_parameters():
            if key.endswith("noise.weight"):
                parameter.fill_(0.5)
    datamodule.setup("test")
    items = datamodule.collate([datamodule.dataset("test", train=False)[i] for i in (0, 5, 7)])
    _, fakes = model.evaluation_pair(items, "samples")
    single = datamodule.collate([datamodule.dataset("test", train=False)[5]])
    _, fake_5 = model.evaluation_pair(single, "samples")
    # (float rounding differs with the batch's size: StyleGAN's deeper net shows it at 1e-5)
    assert torch.allclose(fakes[1:2], fake_5, atol=1e-4)
    assert not torch.allclose(fakes[0], fakes[1])


@pytest.mark.parametrize("overrides", [["model=dcgan"], ["model=dcgan", "model.num_classes=2"], ["model=infogan"]])
def test_dcgan_samples_with_the_batch_statistics_of_a_fixed_reference_batch(train_cfg, overrides):
    """As the DCGAN code samples (G in training mode: batch norm by the batch's own statistics),
    with the statistics of one fixed reference batch, so that a sample depends on its own latent
    only; the running averages are left as they were."""
    cfg = train_cfg(*overrides)
    model = build(cfg)
    assert model.test_time_batch_stats and model.reference_batch_size == cfg.data.batch_size == 4
    G = model.generator
    with torch.no_grad():   # running averages unlike any batch's statistics, as after training
        for layer in G.modules():   # (InfoGAN's: BatchNorm1d after its FC layers, 2d after the convs)
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                layer.running_mean.uniform_(-1, 1)
                layer.running_var.uniform_(0.5, 2)
    indices = REFERENCE_ITEMS_START + torch.arange(4)
    reference_z = model.noise_for(indices)
    reference_labels = indices % 2 if model.num_classes else None
    with torch.no_grad():
        in_training_mode = G(reference_z, reference_labels)   # the code's sampling of this batch
    buffers = {k: v.clone() for k, v in G.state_dict().items()}
    assert torch.allclose(model.generate(reference_z, reference_labels), in_training_mode, atol=1e-5)
    for key, value in buffers.items():   # sampling moved no running statistic back
        assert torch.equal(G.state_dict()[key], value), key
    assert G.training
    z, labels = model.noise_for(torch.arange(3)), torch.tensor([1, 0, 1]) if model.num_classes else None
    batch = model.generate(z, labels)
    alone = model.generate(z[1:2], labels[1:2] if model.num_classes else None)
    assert torch.allclose(batch[1:2], alone, atol=1e-5) and not torch.allclose(batch[0], batch[1])
    # a notebook's float64 latents (np.random.randn) in the weights' type, and a bfloat16
    # model's reference rows in its own
    assert torch.allclose(model.generate(z.double(), labels), batch, atol=1e-5)
    with pytest.raises(TypeError, match=r"generate takes latents as a torch tensor, got a numpy.ndarray"):
        model.generate(z.numpy(), labels)
    assert model.to(torch.bfloat16).generate(z, labels).dtype == torch.bfloat16
    model.float()
    model.test_time_batch_stats = False   # the running averages: other samples
    assert not torch.allclose(model.generate(z, labels), batch, atol=1e-2)


def test_the_dcgan_family_samples_as_its_code(tmp_path):
    """Batch statistics where the code samples in training mode (DCGAN, WGAN, WGAN-GP, InfoGAN),
    the moving averages where its sampler reads them (LSGAN); the reference batch is the paper's
    batch size."""
    from conftest import compose_train_cfg
    for name, expected in {"dcgan": True, "wgan": True, "wgangp": True, "infogan": True, "lsgan": False}.items():
        cfg = compose_train_cfg([f"model={name}"], tmp_path, tmp_path)
        assert cfg.model.test_time_batch_stats is expected, name
        assert cfg.model.reference_batch_size == cfg.data.batch_size == (128 if name == "dcgan" else 64), name


def test_a_checkpoint_from_before_reference_batch_sampling_samples_as_it_did(train_cfg, tmp_path):
    """A noise model's checkpoint without the setting loads, sampling with the running averages
    as it did; one with it keeps batch statistics."""
    cfg = train_cfg("model=dcgan", "max_iters=1", *NO_EVALUATION)
    run_training(cfg)
    path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert load_model(path).test_time_batch_stats
    checkpoint = torch.load(path, weights_only=True)
    for key in ("test_time_batch_stats", "reference_batch_size"):
        del checkpoint["hyper_parameters"][key]
    del checkpoint["model_class"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    old = load_model(tmp_path / "old.ckpt")
    assert type(old).__name__ == "NoiseGAN" and not old.test_time_batch_stats


@pytest.mark.parametrize("override, message", [
    ("model.test_time_batch_stats=maybe", r"model.test_time_batch_stats='maybe' must be true or false"),
    ("model.reference_batch_size=0", r"model.reference_batch_size=0 must be a positive integer .*data.batch_size"),
])
def test_reference_batch_settings_are_checked_by_key(train_cfg, override, message):
    with pytest.raises(InstantiationException, match=message):
        build(train_cfg("model=dcgan", override))


@pytest.mark.parametrize("name", ["dcgan", "wgangp", "infogan"])
def test_resume_continues_the_run(train_cfg, tmp_path, name):
    assert_resume_continues_the_run(train_cfg, tmp_path, [f"model={name}", *NO_EVALUATION])


def test_a_resume_with_another_critic_step_count_is_refused(train_cfg, tmp_path):
    """An iteration is n_critic + 1 optimizer steps: resumed with another n_critic, 2 WGAN-GP
    iterations (12 steps) would read as 6, and max_iters, schedules and checkpoint names with them."""
    first = train_cfg("model=wgangp", "max_iters=2", *NO_EVALUATION)
    run_training(first)
    resumed = train_cfg("model=wgangp", "model.n_critic=1", "max_iters=4", *NO_EVALUATION,
                        f"ckpt_path={first.paths.output_dir}/checkpoints/last.ckpt")
    resumed.paths.output_dir = str(tmp_path / "resumed")
    with pytest.raises(ValueError, match=r"model.n_critic=1, but the checkpoint's run trained with 5: its 2 iterations "
                                         r"would count as 6 .* Resume with model.n_critic=5"):
        run_training(resumed)
    # ckpt_path=auto in its folder: naming the file is not offered, as its load would be refused
    with pytest.raises(ValueError, match=r"ckpt_path=auto found .*; model.n_critic=5 -> 1\)\. .*; named, it is "
                                         r"refused too: model.n_critic=1, but .* Resume with model.n_critic=5\. "
                                         r"Where instead") as refused:
        run_training(train_cfg("model=wgangp", "model.n_critic=1", "max_iters=4", *NO_EVALUATION, "ckpt_path=auto"))
    assert "name the checkpoint" not in str(refused.value)


def test_translation_data_is_refused_with_the_fix(train_cfg):
    with pytest.raises(ValueError, match=r"model=dcgan .*data=shapes_labelled"):
        run_training(train_cfg("model=dcgan", "data=shapes", *NO_EVALUATION))


def test_critic_steps_and_real_batches_must_agree(train_cfg):
    with pytest.raises(ValueError, match=r"data.batches_per_iteration=5"):
        fit_briefly(train_cfg("model=wgangp", "data.batches_per_iteration=1", "max_iters=1", *NO_EVALUATION))


def test_wrong_class_count_is_named(train_cfg, monkeypatch):
    with pytest.raises(ValueError, match=r"model.num_classes=3.*2 classes"):
        fit_briefly(train_cfg("model=cgan", "model.num_classes=3", "max_iters=1", *NO_EVALUATION))
    # before anything is built: the FID callback's setup (a classifier of the data trained) came first
    from src.callbacks.fid_kid import FidKidCallback
    monkeypatch.setattr(FidKidCallback, "setup", lambda *args: pytest.fail("the callbacks' setup ran first"))
    with pytest.raises(ValueError, match=r"model.num_classes=3, but the data \(.*\) has 2 classes"):
        run_training(train_cfg("model=cgan", "model.num_classes=3", "max_iters=1"))


def test_wgangp_trains_and_evaluates_under_ddp_spawn(train_cfg):
    """Two CPU ranks: each trains on its own images, both end with the same weights, and the
    samples' FID/KID (each rank scores its block of the test set) reach both."""
    # Batches of 1 (x 5 critic steps): both iterations in one epoch, where the ranks never share an image.
    cfg = train_cfg("model=wgangp", "max_iters=2", "data.batch_size=1", "trainer=ddp_sim",
                    "trainer.strategy=ddp_spawn_find_unused_parameters_true", PROBE, "++callbacks.latent=null")
    metrics = run_training_on_two_ranks(cfg)
    assert_ranks_agree_on_different_data(rank_probes(Path(cfg.paths.output_dir)))
    assert math.isfinite(metrics["eval/fid_samples"])
    # The shape classifier's scores of the real test images are gathered from both ranks: one
    # process scoring all of them gets the same values.
    alone = run_training(train_cfg("model=wgangp", "max_iters=1", "data.batch_size=1", "++callbacks.latent=null"))
    for key in ("eval/cls_acc_real_samples", "eval/cls_is_real_samples"):
        assert float(metrics[key]) == pytest.approx(float(alone[key]), rel=1e-4), key
    assert 1.0 <= float(metrics["eval/cls_is_samples"]) <= 2.0 + 1e-6


def test_only_rank_zero_trains_the_classifier_and_the_others_take_its_weights(train_cfg, monkeypatch):
    """Every rank decoded its training images and trained the same classifier, on the node's
    shared CPUs, to replace it with rank zero's: a rank other than zero builds it untrained."""
    from types import SimpleNamespace
    from src.metrics import image_classifier
    cfg = train_cfg("model=cgan")
    model, datamodule = build(cfg), hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    callback = hydra.utils.instantiate(cfg.callbacks.fid_kid)
    rank_zeros = image_classifier.classifier_of_the_data(datamodule, 64, 1).net.state_dict()
    monkeypatch.setattr(image_classifier, "train_image_classifier",
                        lambda *args, **kwargs: pytest.fail("a rank other than zero trained the classifier"))
    rng = torch.get_rng_state()
    rank_one = SimpleNamespace(datamodule=datamodule, world_size=2, is_global_zero=False, local_rank=1,
                               strategy=SimpleNamespace(broadcast=lambda state, src: rank_zeros,
                                                        reduce_boolean_decision=lambda ok, all: ok))
    taken = callback.build_classifier(rank_one, model).net.state_dict()
    assert torch.equal(torch.get_rng_state(), rng)   # training's random stream untouched
    assert taken.keys() == rank_zeros.keys() and all(torch.equal(taken[k], rank_zeros[k]) for k in taken)
    # A rank failing (rank zero on an unreadable image) stops every rank: they decide together,
    # where the others would wait for its weights (or it for theirs) for good.
    def unreadable(*args, **kwargs):
        raise OSError("image 7 is unreadable")

    monkeypatch.setattr(image_classifier, "train_image_classifier", unreadable)
    decided = []

    def together(ok, all):   # what the ranks' all-reduce returns, with rank one fine
        decided.append(ok)
        return ok and True

    rank_zero = SimpleNamespace(datamodule=datamodule, world_size=2, is_global_zero=True, local_rank=0,
                                strategy=SimpleNamespace(reduce_boolean_decision=together))
    with pytest.raises(OSError, match="image 7 is unreadable"):   # rank zero's own error
        callback.build_classifier(rank_zero, model)
    assert decided == [False]
    told = SimpleNamespace(datamodule=datamodule, world_size=2, is_global_zero=False, local_rank=1,
                           strategy=SimpleNamespace(reduce_boolean_decision=lambda ok, all: False))
    with pytest.raises(RuntimeError, match="Another rank could not build the classifier"):
        callback.build_classifier(told, model)


def test_training_scores_samples_with_a_classifier_of_the_datas_classes(train_cfg, tmp_path, monkeypatch):
    """cGAN on the labelled shapes: the FID/KID callback also logs the shape classifier's
    scores, the accuracy on the samples against their classes included; on one class there is
    nothing to classify, and a bad setting names its key. Between evaluations the feature
    network and the classifier wait on the CPU, not on the device training's peak is on."""
    from src.metrics.fid_kid import FidKidScorer
    from src.metrics.image_classifier import ClassifierScorer
    moves = []
    for scorer in (FidKidScorer, ClassifierScorer):
        to = scorer.to
        monkeypatch.setattr(scorer, "to", lambda self, device, to=to: moves.append(
            (type(self).__name__, str(device))) or to(self, device))
    metrics = run_training(train_cfg("model=cgan", "max_iters=2", "++callbacks.latent=null"))
    assert moves[-2:] == [("FidKidScorer", "cpu"), ("ClassifierScorer", "cpu")] and len(moves) == 4   # one evaluation
    monkeypatch.undo()
    assert 1.0 <= float(metrics["eval/cls_is_samples"]) <= 2.0 + 1e-6
    assert 0.0 <= float(metrics["eval/cls_acc_fake_samples"]) <= 1.0
    assert 0.0 <= float(metrics["eval/cls_acc_real_samples"]) <= 1.0
    cfg = train_cfg("model=dcgan", "data.classes=[B]", "max_iters=2", "++callbacks.latent=null")
    cfg.paths.output_dir = str(tmp_path / "one_class")   # its own run folder: its own last.ckpt
    one_class = run_training(cfg)
    assert math.isfinite(float(one_class["eval/fid_samples"])) and not any("cls_" in key for key in one_class)
    # The config's list reaches the checkpoint as a plain list: it loads weights-only (resume, eval).
    checkpoint = torch.load(f"{cfg.paths.output_dir}/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["datamodule_hyper_parameters"]["classes"] == ["B"]
    with pytest.raises(ValueError, match="callbacks.fid_kid.classifier_max_images=1 must be an integer"):
        run_training(train_cfg("model=dcgan", "max_iters=1", "callbacks.fid_kid.classifier_max_images=1"))


def recorded_classifier(ckpt: Path) -> dict:
    (state,) = [state for state in torch.load(ckpt, weights_only=True)["callbacks"].values() if "classifier" in state]
    return state["classifier"]


def test_a_run_keeps_its_classifier_of_the_classes_through_a_resume_and_eval(train_cfg, shared_data_dir, tmp_path,
                                                                           monkeypatch, caplog):
    """The classifier took minutes to decode its images and train at 64 px, at every start,
    resume and eval.py. A checkpoint keeps it, and a resume and eval.py under the same settings
    take it back, so the run's scores are of one classifier; other settings train a new one, and
    say that its scores do not compare."""
    from conftest import run_eval
    from src.metrics import image_classifier
    cfg = train_cfg("model=cgan", "max_iters=2", "++callbacks.latent=null")
    run_training(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    kept = recorded_classifier(ckpt)
    assert kept["settings"] == {"data": "shapes", "classes": ["disc", "triangle"], "channels": 3,
                                "max_images": 10000, "epochs": 10}
    trained, train = [], image_classifier.train_image_classifier
    monkeypatch.setattr(image_classifier, "train_image_classifier",
                        lambda *args, **kwargs: trained.append(kwargs) or train(*args, **kwargs))
    metrics = run_training(train_cfg("model=cgan", "max_iters=4", "++callbacks.latent=null", f"ckpt_path={ckpt}"))
    assert trained == [] and 1.0 <= float(metrics["eval/cls_is_samples"]) <= 2.0 + 1e-6
    again = recorded_classifier(ckpt)   # iteration 4's
    assert again["settings"] == kept["settings"]
    assert all(torch.equal(again["state_dict"][name], value) for name, value in kept["state_dict"].items())
    results, _ = run_eval([f"ckpt_path={ckpt}"], tmp_path / "eval", shared_data_dir)
    assert trained == [] and 1.0 <= results["samples"]["cls_is"] <= 2.0 + 1e-6
    with caplog.at_level("WARNING"):
        run_eval([f"ckpt_path={ckpt}", "classifier_epochs=1"], tmp_path / "eval_other", shared_data_dir)
    assert len(trained) == 1 and "trained under other settings (epochs 10 -> 1)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        run_training(train_cfg("model=cgan", "max_iters=6", "++callbacks.latent=null", f"ckpt_path={ckpt}",
                               "callbacks.fid_kid.classifier_max_images=64"))
    assert len(trained) == 2 and "trained under other settings (max_images 10000 -> 64)" in caplog.text
    assert recorded_classifier(ckpt)["settings"]["max_images"] == 64


def test_infogan_q_recovers_the_codes_it_is_trained_on(train_cfg):
    """The information term is Q's negative log-likelihood of the codes in G's input: it falls
    as Q learns to read them back, and a code's rows in the sample grid differ."""
    cfg = train_cfg("model=infogan", "model.continuous_codes=1", "model.categorical_codes=[3]")
    model = build(cfg)
    torch.manual_seed(0)
    latent, codes = model.sample_latent(64)
    assert latent.shape == (64, model.latent_dim + 3 + 1)
    assert torch.equal(latent[:, model.latent_dim:model.latent_dim + 3].argmax(1), codes["categorical"][0])
    assert torch.equal(latent[:, -1:], codes["continuous"]) and codes["continuous"].abs().max() <= 1
    with torch.no_grad():
        fake = model.generator(latent)
    optimizer = torch.optim.Adam([*model.discriminator.parameters(), *model.q_head.parameters()], lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model.information_loss(model.discriminator.features(fake), codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > math.log(3) * 0.9 and losses[-1] < 0.5 * losses[0]
    batch = {"A": torch.zeros(2, *model.image_shape), "index": torch.tensor([0, 1])}
    rows = model.sample_images(batch)
    assert list(rows) == ["real", "fake", "code0=0", "code0=1", "code0=2",
                          "c0=-2", "c0=-1", "c0=+0", "c0=+1", "c0=+2"]   # the continuous code swept
    assert not torch.allclose(rows["code0=0"], rows["code0=2"])
    assert not torch.allclose(rows["c0=-2"], rows["c0=+2"])


def test_eval_scores_and_writes_samples_and_translate_refuses(train_cfg, tmp_path, shared_data_dir):
    """eval.py on a noise model's checkpoint (its class found from the weights): one sample per
    test image, scored and written; translate.py says it is for the translators."""
    from hydra.core.global_hydra import GlobalHydra

    from conftest import compose_train_cfg
    from src.utils.evaluation import run_evaluation
    from src.utils.translation import check_direction
    from src.utils.checkpoint_loading import load_model

    cfg = train_cfg("model=cgan", "max_iters=2", *NO_EVALUATION)
    run_training(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    data = cfg.data

    def evaluate(name: str, *overrides: str) -> tuple[dict, Path]:
        eval_cfg = compose_train_cfg([f"ckpt_path={ckpt}", "data=shapes_labelled", f"data.size={data.size}",
                                      f"data.max_dataset_size={data.max_dataset_size}", *overrides],
                                     tmp_path / name, shared_data_dir, config_name="eval")
        try:
            return run_evaluation(eval_cfg), Path(eval_cfg.output_dir)
        finally:
            GlobalHydra.instance().clear()

    results, out = evaluate("eval", "batch_size=5")
    assert set(results) == {"samples"} and math.isfinite(results["samples"]["fid"])
    assert results["samples"]["is"] >= 1.0
    # A classifier of the two shapes, trained on the training images, scores the conditional samples.
    assert 1.0 <= results["samples"]["cls_is"] <= 2.0 + 1e-6
    assert 0.0 <= results["samples"]["cls_acc_fake"] <= 1.0 and 0.0 <= results["samples"]["cls_acc_real"] <= 1.0
    written = sorted(p.name for p in (out / "samples").glob("*.png"))
    assert written == [f"{i:06d}.png" for i in range(2 * data.max_dataset_size)]   # two classes
    report = json.loads((out / "metrics.json").read_text())
    assert report["directions"]["samples"]["generated"] == len(written)
    # The papers' protocol: N samples against the training images. Sample i keeps its latent
    # (and here its class: sample 0 is of class 0, as test image 0) whatever the reference split.
    n_train = 2 * data.max_dataset_size
    results, out_train = evaluate("eval_train", "batch_size=5", "real_split=train", f"num_samples={2 * n_train}",
                                  "classifier_score=false")
    assert math.isfinite(results["samples"]["fid"]) and not any(key.startswith("cls_") for key in results["samples"])
    written = sorted(p.name for p in (out_train / "samples").glob("*.png"))
    assert written == [f"{i:06d}.png" for i in range(2 * n_train)]
    report = json.loads((out_train / "metrics.json").read_text())["directions"]["samples"]
    assert (report["real_split"], report["generated"], report["real"]) == ("train", 2 * n_train, n_train)
    same = [np.asarray(Image.open(folder / "samples" / "000000.png"), dtype=int) for folder in (out, out_train)]
    assert np.abs(same[0] - same[1]).max() <= 1   # (rounding may differ with the batch size)
    # The papers' FID 50k takes 50k of a larger training set: num_real caps the reference images.
    # save_images=3: every sample scored, the first 3 written.
    _, out_capped = evaluate("eval_train_capped", "batch_size=5", "real_split=train", "num_real=5",
                             "classifier_score=false", "save_images=3")
    report = json.loads((out_capped / "metrics.json").read_text())["directions"]["samples"]
    assert (report["real"], report["generated"], report["saved"], report["kid_subset_size"]) == (5, 5, 3, 5)
    without_is, _ = evaluate("eval_no_is", "batch_size=5", "inception_score=false", "classifier_score=false")
    assert "is" not in without_is["samples"] and math.isfinite(without_is["samples"]["fid"])
    assert sorted(p.name for p in (out_capped / "samples").glob("*.png")) == [f"{i:06d}.png" for i in range(3)]
    with pytest.raises(ValueError, match=r"num_real=1 must be an integer >= 2 \(FID needs two\), or null"):
        evaluate("eval_bad_real", "num_real=1")
    with pytest.raises(ValueError, match="real_split='val' must be train or test"):
        evaluate("eval_bad", "real_split=val")
    with pytest.raises(ValueError, match="classifier_max_images=1 must be an integer of at least the 2 classes"):
        evaluate("eval_bad_classifier", "classifier_max_images=1")
    with pytest.raises(ValueError, match="segmenter_path=fcn.pt2 scores photos translated from label maps; "
                                         "NoiseGAN generates from noise: leave it unset"):
        evaluate("eval_segmenter", "segmenter_path=fcn.pt2")
    with pytest.raises(ValueError, match=r"last.ckpt generates 2 classes, and the data \(shapes\) has 1: "
                                         "evaluate it on the data it was trained on"):
        evaluate("eval_one_class", "data.classes=[B]")
    # Label i is class i: the same classes read in another order would swap what the labels mean.
    assert torch.load(ckpt, weights_only=True)["class_folders"] == ["A", "B"]
    with pytest.raises(ValueError, match=r"last.ckpt was trained on the classes \['A', 'B'\] \(label i is class i\), "
                                         r"and the data here reads \['B', 'A'\]: .* set \"\+\+data.classes=\[A,B\]\""):
        evaluate("eval_swapped_classes", "data.classes=[B,A]")
    model = load_model(ckpt)
    assert type(model).__name__ == "NoiseGAN" and model.num_classes == 2
    with pytest.raises(ValueError, match="translate.py is for the translation models"):
        check_direction(model, "AtoB")


@pytest.mark.parametrize("name", ["wgangp", "infogan", "rcgan", "rgan"])
def test_bf16_mixed_trains_the_noise_models(train_cfg, name):
    """Under bf16 autocast (the gradient penalty's double backward, the information term, the
    LSTMs) the losses stay finite and every player still moves."""
    cfg = train_cfg(f"model={name}", "max_iters=1", "trainer.precision=bf16-mixed", *NO_EVALUATION)
    model = build(cfg)
    steps = record_player_steps(model)
    fit_briefly(cfg, model)
    assert steps[-1] == ("generator",) and len(steps) == model.optimizer_steps_per_iter


def test_r1_penalises_the_critics_gradient_on_real_images(train_cfg):
    model = build(train_cfg("model=dcgan", "loss.weights.r1=10", "model.discriminator.norm=none"))
    real, fake = torch.rand(3, *model.image_shape) * 2 - 1, torch.rand(3, *model.image_shape) * 2 - 1
    terms = model.discriminator_loss(real, fake, None)
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.discriminator(x).sum(), x)
    assert torch.allclose(terms["r1"], 5 * grad.pow(2).flatten(1).sum(1).mean(), rtol=1e-4)
    terms["r1"].backward()   # it trains the critic (create_graph)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.discriminator.parameters())
    assert "r1" not in build(train_cfg("model=dcgan")).discriminator_loss(real, fake, None)


def test_each_player_can_have_its_own_optimizer(train_cfg):
    """InfoGAN's paper: 2e-4 for D (with Q), 1e-3 for G; RGAN's code: gradient descent for D."""
    infogan = build(train_cfg("model=infogan"))
    (opt_d, opt_g), _ = infogan.configure_optimizers()
    assert opt_d.param_groups[0]["lr"] == 2e-4 and opt_g.param_groups[0]["lr"] == 1e-3
    assert isinstance(opt_d, torch.optim.Adam) and opt_d.param_groups[0]["betas"] == opt_g.param_groups[0]["betas"]
    rgan = build(train_cfg("model=rgan"))
    (opt_d, opt_g), _ = rgan.configure_optimizers()
    assert type(opt_d) is torch.optim.SGD and opt_d.param_groups[0]["lr"] == 0.1 and isinstance(opt_g, torch.optim.Adam)
    with pytest.raises(ValueError, match=r"players has \['critic'\].*\['discriminator', 'generator'\]"):
        build(train_cfg("model=dcgan", "+model.optimizer.players.critic.lr=1")).configure_optimizers()
    with pytest.raises(InstantiationException, match=r"model.optimizer.players.generator.type='lbfgs'"):
        build(train_cfg("model=dcgan", "+model.optimizer.players.generator.type=lbfgs"))


@pytest.mark.parametrize("override, message", [
    ("model.optimizer.betas=[0.5]", r"model.optimizer.betas=\[0.5\] must be two numbers in \[0, 1\)"),
    ("model.optimizer.betas=[0.5,1.5]", r"model.optimizer.betas=\[0.5, 1.5\] must be two numbers"),
    ("model.optimizer.lr=-1", r"model.optimizer.lr=-1 must be a number >= 0"),
    ("model.optimizer.weight_decay=high", r"model.optimizer.weight_decay='high' must be a number >= 0"),
    ("+model.optimizer.players.generator.momentum=1.2", r"model.optimizer.players.generator.momentum=1.2 must be a "
                                                        r"number >= 0 and < 1"),
    ("+model.optimizer.beta=[0.5,0.9]", r"model.optimizer.beta is not a setting there \(they are type, lr, "
                                        r"betas, .*players, step_in_backward\)"),
    ("+model.optimizer.players.generator.step_in_backward=false", r"model.optimizer.players.generator."
                                                                 r"step_in_backward is not a setting there"),
    ("+loss.weight.gp=5", r"loss.weight is not a setting there \(they are gan_mode, labels, weights, clip\)"),
    ("+model.lr_schedule.decya=5", r"model.lr_schedule.decya is not a setting there \(they are policy, unit, "),
    ("+model.init.gian=0.1", r"model.init.gian is not a setting there \(they are type, gain, players\)"),
    ("+model.init.players.generator.players=1", r"model.init.players.generator.players is not a setting there"),
    # a zero spread starts every weight at 0, a dead network
    ("model.init.gain=0", r"model.init.gain=0 must be a number > 0"),
    ("+model.init.players.generator.gain=-0.1", r"model.init.players.generator.gain=-0.1 must be a number > 0"),
    ("model.init.gain=null", r"model.init.gain=None must be a number > 0"),
    # the ramp's faults surfaced only at the first training step, or wrote a momentum >= 1
    ("+model.optimizer.momentum_ramp={final:0.7,start_epoch:1,saturate:250}",
     r"model.optimizer.momentum_ramp.saturate is not a setting there"),
    ("+model.optimizer.momentum_ramp={final:0.7,start_epoch:1}", r"model.optimizer.momentum_ramp lacks saturate_epoch"),
    ("+model.optimizer.momentum_ramp={final:1.2,start_epoch:1,saturate_epoch:250}",
     r"model.optimizer.momentum_ramp.final=1.2 must be a number >= 0 and < 1"),
    ("+model.optimizer.momentum_ramp={final:0.7,start_epoch:5,saturate_epoch:5}",
     r"model.optimizer.momentum_ramp.saturate_epoch=5 must be an integer >= 6 \(after start_epoch=5\)"),
])
def test_model_settings_refused_or_unread_are_named_by_key(train_cfg, override, message):
    with pytest.raises(InstantiationException, match=message):
        build(train_cfg("model=dcgan", override))


def test_a_gain_the_init_draws_without_is_not_checked(train_cfg):
    """Checked at construction, a gain that `pytorch` (NICE-GAN's) or `tflib` never reads would
    stop an older checkpoint carrying one from loading for evaluation."""
    assert build(train_cfg("model=dcgan", "model.init.type=pytorch", "model.init.gain=null")).init_cfg["gain"] is None


@pytest.mark.parametrize("name", ["gan", "dcgan"])
def test_sample_scores_under_ddp_equal_the_single_process_values(train_cfg, tmp_path, name):
    """Each rank samples its block of the test set with latents seeded by item index, and the
    metric states are gathered: two ranks give one process's FID/KID and Inception Score. (Learning rate 0 keeps
    the weights of both runs at the same seeded initialisation. The MLP nets hold no batch
    statistics; DCGAN samples with its reference batch's on every rank.)"""
    single, ddp = single_and_two_rank_metrics(train_cfg, tmp_path, f"model={name}", "max_iters=1",
                                              "model.optimizer.lr=0", "++callbacks.latent=null",
                                              "++callbacks.shapes_truth=null")
    for key in ("eval/fid_samples", "eval/kid_x100_samples", "eval/is_samples", "eval/is_std_samples"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key


def test_the_sample_protocol_settings_are_for_image_noise_models_only(train_cfg):
    from omegaconf import OmegaConf

    from src.utils.evaluation import sample_protocol
    settings = OmegaConf.create({"real_split": "train", "num_samples": 50})
    assert sample_protocol(settings, build(train_cfg("model=dcgan"))) == ("train", 50, None)
    for model_name in ("cyclegan", "rgan"):
        with pytest.raises(ValueError, match=r"real_split=train / num_samples=50 / num_real=None are for the image "):
            sample_protocol(settings, build(train_cfg(f"model={model_name}")))
    with pytest.raises(ValueError, match="num_samples=1 must be an integer >= 2"):
        sample_protocol(OmegaConf.create({"num_samples": 1}), build(train_cfg("model=dcgan")))


def test_samples_of_a_protocol_keep_the_reference_classes_frequencies():
    from src.utils.evaluation import sample_classes
    # 90 + 10 images interleaved as the labelled datasets list them: 10 rounds of both classes,
    # then the big class alone. 10% of the samples are of the small class, however many.
    labels = torch.tensor([0, 1] * 10 + [0] * 80)
    for count in (10, 20, 30, 1000):
        assert torch.bincount(sample_classes(labels, count), minlength=2)[1] == count // 10, count
    assert torch.equal(sample_classes(labels, 100), labels)   # one per image: image i's class
    # In the reference images' order: the first samples (the PNGs save_images=N keeps) show
    # every class, where the label-sorted picks gave the first quarter to class 0 alone.
    assert set(sample_classes(torch.arange(100) % 4, 1000)[:40].tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("name,iterations", [("dcgan", 5000), ("lsgan", 5000), ("infogan", 5000), ("wgan", 1500),
                                             ("wgangp", 1500)])
def test_the_quickstart_runs_the_dcgan_family_on_small_nets(tmp_path, shared_data_dir, name, iterations):
    from conftest import compose_train_cfg
    cfg = compose_train_cfg(["experiment=quickstart", f"model={name}"], tmp_path / "run", shared_data_dir)
    assert cfg.model_name == name and cfg.max_iters == iterations
    assert (cfg.model.generator.ngf, cfg.model.discriminator.ndf, cfg.data.batch_size) == (16, 16, 64)
    if name == "infogan":   # its own networks, at a quarter of the paper's widths
        assert (cfg.model.generator.fc, cfg.model.discriminator.fc) == (256, 256)
    assert cfg.model.n_critic == RECIPES[name][1]   # the paper's recipe otherwise


def test_infogan_trains_both_players_on_the_information_term_of_each_code(train_cfg):
    """Both steps carry Q's term (dropped, InfoGAN would train as a plain GAN and every other
    test would pass); with two categorical codes and no continuous one, each code's logits are
    read from its own slice of Q's output."""
    from src.utils.run import run_training
    cfg = train_cfg("model=infogan", "model.categorical_codes=[3,2]", "model.continuous_codes=0")
    model = build(cfg)
    torch.manual_seed(0)
    latent, codes = model.sample_latent(4)
    real = torch.rand(4, *model.image_shape) * 2 - 1
    fake = model.generator(latent)
    d_terms = model.discriminator_loss(real, fake.detach(), None, codes)
    features = model.discriminator.features(fake.detach())
    assert torch.allclose(d_terms["info_D"], model.information_loss(features, codes))
    predicted = model.q_head(features)
    by_hand = F.cross_entropy(predicted[:, :3], codes["categorical"][0]) + \
        F.cross_entropy(predicted[:, 3:5], codes["categorical"][1])
    assert predicted.shape[1] == 5 and torch.allclose(d_terms["info_D"], model.info_weight * by_hand)
    g_terms = model.generator_loss(fake, None, codes)
    (grad,) = torch.autograd.grad(g_terms["info_G"], next(model.generator.parameters()))
    assert grad.abs().sum() > 0   # the generator is trained to make its codes readable
    metrics = run_training(train_cfg("model=infogan", "max_iters=2", *NO_EVALUATION))
    assert {"train/info_D", "train/info_G"} <= set(metrics)


def test_infogan_runs_on_its_papers_mnist_networks(train_cfg):
    """The paper's MNIST layers: FC 1024 - FC 7x7x128 - upconv 64 - upconv 1 in G; conv 64 -
    conv 128 - FC 1024 in D, whose 1024 features D's output and Q read (Q: FC 128 - batch norm -
    LeakyReLU - FC); other sizes a multiple of 4 keep the layers on quarter-size maps."""
    from src.nets.infogan_nets import InfoGANDiscriminator, InfoGANGenerator

    G, D = InfoGANGenerator(latent_dim=74, output_nc=1, image_size=28), InfoGANDiscriminator(input_nc=1, image_size=28)
    shapes = [tuple(p.shape) for p in G.parameters() if p.dim() > 1]
    assert shapes == [(1024, 74), (7 * 7 * 128, 1024), (128, 64, 4, 4), (64, 1, 4, 4)]
    assert [tuple(p.shape) for p in D.parameters() if p.dim() > 1] == [(64, 1, 4, 4), (128, 64, 4, 4),
                                                                        (1024, 7 * 7 * 128), (1, 1024)]
    images = G(torch.randn(3, 74))
    assert images.shape == (3, 1, 28, 28) and images.abs().max() <= 1
    assert D.features(images).shape == (3, 1024) and D(images).shape == (3, 1)
    with pytest.raises(ValueError, match="model.image_size=30: InfoGAN's networks halve the image twice"):
        InfoGANGenerator(image_size=30)

    model = build(train_cfg("model=infogan"))
    assert isinstance(model.generator, InfoGANGenerator) and isinstance(model.discriminator, InfoGANDiscriminator)
    assert [type(m).__name__ for m in model.q_head] == ["Linear", "BatchNorm1d", "LeakyReLU", "Linear"]
    assert model.q_head[0].in_features == model.discriminator.feature_dim
    # appendix C: "lRELU with leaky rate 0.1" in the discriminator's hidden layers (its code's default: 0.01)
    slopes = {m.negative_slope for net in (model.discriminator, model.q_head) for m in net.modules()
              if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.1}
    assert model.continuous_weight == model.info_weight == 1.0   # lambda = 1 for both codes, as the paper ran
    # a negative weight has both players maximise the information term
    for override, message in (("model.info_weight=-1", r"model.info_weight=-1 must be a number >= 0"),
                              ("model.continuous_weight=much", r"model.continuous_weight='much' must be a number >= 0"),
                              ("model.q_hidden=0", r"model.q_hidden=0 must be a positive integer \(the width of Q's")):
        with pytest.raises(InstantiationException, match=message):
            build(train_cfg("model=infogan", override))


def test_gan_trains_as_its_papers_code_maxout_dropout_sgd_with_a_momentum_ramp_and_decay(train_cfg):
    """experiment=gan_paper_code: maxout units (the largest of 5 linear pieces) behind dropout in
    D, weights drawn uniformly in +-0.05 (G) and +-0.005 (D), SGD lr 0.1 divided by 1.000004
    every update down to 1e-6, momentum 0.5 rising to 0.7 from epoch 1 to 250."""
    from src.models.optimizers import ramped_momentum
    from src.models.lr_schedules import ExponentialDecay
    from src.nets.noise_nets import Maxout

    unit = Maxout(3, units=2, pieces=5)
    x = torch.randn(4, 3)
    assert torch.equal(unit(x), unit.linear(x).view(4, 2, 5).amax(2))
    with pytest.raises(Exception, match="maxout_pieces=1 must be 0"):   # Hydra wraps the ValueError
        build(train_cfg("model=gan", "++model.discriminator.maxout_pieces=1"))

    cfg = train_cfg("model=gan", "experiment=gan_paper_code", "model.generator.hidden=[1200,1200]",
                    "model.discriminator.hidden=[240,240]")   # the smoke config's small nets back to the code's
    model = build(cfg)
    D = model.discriminator
    assert isinstance(D.body[0], torch.nn.Dropout) and D.body[0].p == 0.2
    assert [type(m).__name__ for m in D.body[1:]] == ["Maxout", "Dropout"] * 2 and D.body[2].p == 0.5
    assert D.body[1].linear.out_features == 240 * 5
    g_weight, d_weight = model.generator.net[0].weight, D.body[1].linear.weight
    assert 0.04 < g_weight.abs().max() <= 0.05 and 0.004 < d_weight.abs().max() <= 0.005

    (opt_d, opt_g), (sched_d, _) = model.configure_optimizers()
    assert isinstance(opt_d, torch.optim.SGD) and opt_d.param_groups[0]["momentum"] == 0.5
    assert [ramped_momentum(e, 0.5, 0.7, 1, 250) for e in (0, 1, 125.5, 250, 400)] == [0.5, 0.5, 0.6, 0.7, 0.7]
    decay = ExponentialDecay(1.000004, 1e-5)
    assert decay(1) == pytest.approx(1 / 1.000004) and decay(10 ** 7) == 1e-5
    assert sched_d["name"] == "lr/discriminator" and sched_d["scheduler"].lr_lambdas[0].rate == 1.000004
    # The recipe is GAN's unless the command line names cGAN (nets of the translation default would not take it).
    assert [train_cfg("experiment=gan_paper_code", *model).model_name for model in ([], ["model=cgan"])] == [
        "gan", "cgan"]
    # cGAN's paper on MNIST conditions on its 10 digits (the model config's 2 are the shapes' classes);
    # so does any cGAN run on MNIST or CIFAR-10, which stopped at setup naming model.num_classes
    assert train_cfg("experiment=gan_paper_code", "model=cgan", "data=mnist").model.num_classes == 10
    assert [train_cfg("model=cgan", f"data={data}").model.num_classes for data in ("mnist", "cifar10")] == [10, 10]
    plain = build(train_cfg("model=gan"))   # the default recipe: Adam, LeakyReLU units
    assert isinstance(plain.configure_optimizers()[0][0], torch.optim.Adam)
    assert not any(isinstance(m, Maxout) for m in plain.discriminator.modules())


def test_the_momentum_ramp_reaches_the_optimizers_at_each_epoch(train_cfg):
    """Epochs counted from 1, as pylearn2's MomentumAdjustor counts them (the code's 0.5 -> 0.7 over
    epochs 1-250: the second epoch trains at 0.5 + 0.2/249): here from 0.5 in the first to 0.7 in the third."""
    cfg = train_cfg("model=gan", "experiment=gan_paper_code", "max_iters=null", "trainer.max_epochs=3",
                    "data.max_dataset_size=8", "data.batch_size=4",
                    "model.optimizer.momentum_ramp.start_epoch=1", "model.optimizer.momentum_ramp.saturate_epoch=3",
                    *NO_EVALUATION)
    model = build(cfg)
    seen = {}
    train_iteration = model.train_iteration

    def recording(batch):
        seen.setdefault(model.current_epoch, set()).update(round(g["momentum"], 6) for opt in model.optimizers()
                                                          for g in opt.param_groups)
        train_iteration(batch)

    model.train_iteration = recording
    fit_briefly(cfg, model)
    assert seen == {0: {0.5}, 1: {0.6}, 2: {0.7}}
    with pytest.raises(ValueError, match="momentum_ramp ramps SGD's momentum; model.optimizer.type is adam"):
        build(train_cfg("model=gan", "experiment=gan_paper_code", "model.optimizer.type=adam")).configure_optimizers()


def test_infogan_batch_norm_over_vectors_never_gets_a_batch_of_one(train_cfg):
    """torch's batch norm over vectors stops on a batch of one in training, naming no setting:
    data.batch_size=1 is refused at the start, and an epoch's short last batch is dropped
    (4 images in batches of 3: the last would hold one, at the end of the first epoch)."""
    from conftest import last_checkpoint
    with pytest.raises(ValueError, match=r"data.batch_size=1: InfoGAN's batch norm over vectors \(in .*\) needs two "
                                         r"samples or more per batch in training"):
        run_training(train_cfg("model=infogan", "data.batch_size=1", *NO_EVALUATION))
    cfg = train_cfg("model=infogan", "data.max_dataset_size=2", "data.batch_size=3", "max_iters=null",
                    "trainer.max_epochs=2", *NO_EVALUATION)
    checkpoint = last_checkpoint(cfg)
    steps_per_iter = build(cfg).optimizer_steps_per_iter
    assert checkpoint["global_step"] == 2 * steps_per_iter   # one whole batch per epoch


def test_eval_of_samples_against_one_image_is_refused_before_any_work(train_cfg, tmp_path, shared_data_dir):
    """One reference image: it trained the data's classifier and wrote every sample, then failed
    in KID with an error naming no setting."""
    from conftest import run_eval
    cfg = train_cfg("model=dcgan", "data.classes=[B]", "data.max_dataset_size=1", "max_iters=1", *NO_EVALUATION)
    run_training(cfg)
    with pytest.raises(ValueError, match=r"eval.py scores NoiseGAN's samples against the 1 image\(s\) of the test "
                                         r"split \(real_split=test, num_real=None\), and FID, KID and MMD need at "
                                         r"least 2"):
        run_eval([f"ckpt_path={cfg.paths.output_dir}/checkpoints/last.ckpt"], tmp_path / "eval", shared_data_dir)
    assert not (tmp_path / "eval" / "samples").exists()


FEW_OPEN_FILES_EVALUATION = """
import resource, sys, tempfile
from pathlib import Path
import torch
from src.utils.evaluation import evaluate_samples

class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 300
    def __getitem__(self, i):
        return {"A": torch.zeros(1, 4, 4), "label": torch.tensor(i % 2)}

class Model:
    device = torch.device("cpu")
    def samples_of(self, batch):
        return torch.zeros(len(batch["index"]), 1, 4, 4)

class Scorer:
    def reset(self): pass
    def update(self, real=None, fake=None): pass
    def compute(self): return {}

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
loader = torch.utils.data.DataLoader(Items(), batch_size=1, num_workers=1)
evaluate_samples(Model(), loader, Scorer(), Path(tempfile.mkdtemp()), save_limit=0)
print("scored")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="Linux's file_descriptor sharing; resource; fork")
def test_eval_keeps_no_worker_tensor_alive_past_its_batch(tmp_path):
    """Every label tensor a loader worker sent was kept until the end, each holding an open file
    (torch's file_descriptor sharing): 10k test images at batch 8 outlasted `ulimit -n` 1024, and
    eval.py stopped part-way with "Too many open files". Here: 300 batches under a limit of 128."""
    import subprocess
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", FEW_OPEN_FILES_EVALUATION], cwd=root, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0 and done.stdout.strip() == "scored", done.stderr[-2000:]
