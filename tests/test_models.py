"""Translation models: players update only their own parameters, losses are finite and move,
every model x loss composes, and a seeded run resumes to the same weights."""
import csv
import json
import math
import warnings
from pathlib import Path

import hydra
import pytest
import pytorch_lightning as pl
import torch

from conftest import (DATA_OF, MODELS, NO_EVALUATION, assert_resume_continues_the_run, changed, compose_train_cfg, fit_one_batch,
                      random_batch, snapshot)
from src.models.base import sampling_mode
from src.utils.run import build_trainer_kwargs, run_training

UNPAIRED_MODELS = ("cyclegan", "ugatit", "nicegan")
LOSSES = ("vanilla", "lsgan", "wgan", "wgangp", "hinge")


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("loss_name", LOSSES)
def test_every_model_and_loss_composes(train_cfg, model_name, loss_name):
    cfg = train_cfg(f"model={model_name}", f"loss={loss_name}")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    assert model.adversarial.mode == loss_name
    assert model.adversarial.generator_label == model.adversarial.real_label   # LSGAN's c = b unless set
    assert set(model.player_modules()) and model.optimizer_steps_per_iter == len(model.player_modules())


@pytest.mark.parametrize("overrides,message", [
    # one-sided label smoothing on the BCE objective: its targets are fixed, the setting did nothing
    (["loss=vanilla", "+loss.labels.real_label=0.9"],
     r"loss.labels.real_label=0.9: loss.gan_mode=vanilla does not read loss.labels"),
    (["loss=lsgan", "+loss.labels.real_lable=0.9"], r"loss.labels.real_lable is not a setting there \(they are "
                                                    r"real_label, fake_label, generator_label\)"),
    # a null target reached torch.full_like at the first step; equal targets teach D nothing
    (["loss=lsgan", "loss.labels.real_label=null"], r"loss.labels.real_label=None must be a number$"),
    (["loss=lsgan", "loss.labels.fake_label=high"], r"loss.labels.fake_label='high' must be a number$"),
    (["loss=lsgan", "loss.labels.fake_label=1"], r"loss.labels.real_label and fake_label are both 1.0: the "
                                                  r"discriminator would have nothing to tell apart"),
])
def test_loss_labels_another_objective_ignores_or_misspelt_are_refused(train_cfg, overrides, message):
    """When a fit starts: the model still builds, as a checkpoint of a run that carried them loads."""
    model = hydra.utils.instantiate(train_cfg("model=cyclegan", *overrides).model, _recursive_=False)
    with pytest.raises(ValueError, match=message):
        model.check_loss_settings()
    # LSGAN's default codes left over under another objective say nothing, and pass
    model = hydra.utils.instantiate(train_cfg("model=cyclegan", "loss=lsgan", "loss.gan_mode=hinge").model,
                                    _recursive_=False)
    model.check_loss_settings()
    assert model.adversarial.mode == "hinge"


@pytest.mark.parametrize("model_name,weight", [("pix2pix", "feature_matching"), ("dcgan", "r1")])
def test_a_negative_optional_weight_is_refused_not_read_as_off(train_cfg, model_name, weight):
    """When the fit starts, not at the term's first use (R1's: the first critic step)."""
    model = hydra.utils.instantiate(train_cfg(f"model={model_name}", f"loss.weights.{weight}=-1.0").model,
                                    _recursive_=False)
    with pytest.raises(ValueError, match=rf"loss.weights.{weight}=-1.0 must be a number >= 0"):
        model.check_loss_settings()


def test_ugatit_refuses_domains_of_different_channel_counts_even_without_identity(train_cfg):
    """Its generator CAM loss runs each generator on its target domain's images: the identity
    weight at 0 would still fail in a convolution at the first step."""
    cfg = train_cfg("model=ugatit", "data.input_nc=1", "loss.weights.identity=0")
    with pytest.raises(Exception, match=r"U-GAT-IT needs data.input_nc == data.output_nc \(here 1 and 3\)"):
        hydra.utils.instantiate(cfg.model, _recursive_=False)


def record_player_steps(model) -> list[tuple[str, ...]]:
    """Wrap `model.update` to check every optimizer step as it happens: the stepped players'
    parameters all change, nobody else's do, and the idle players hold no gradients (they were
    frozen, and no graph from this step's loss reached them). Returns the players stepped."""
    players = model.player_modules()
    steps = []
    original_update = model.update

    def checked_update(opts, *losses):
        names = tuple(n for n, o in model.named_optimizers().items() if any(o is x for x in opts))
        others = [m for n, ms in players.items() if n not in names for m in ms]
        before_mine = {n: snapshot(players[n]) for n in names}
        before_others = snapshot(others)
        loss = original_update(opts, *losses)
        assert torch.isfinite(loss), f"{names} loss is not finite"
        for n in names:
            assert changed(before_mine[n], players[n]), f"{n} step changed none of its parameters"
        assert not changed(before_others, others), f"{names} step changed another player's parameters"
        assert all(p.grad is None for m in others for p in m.parameters()), f"{names} step left gradients elsewhere"
        steps.append(names)
        return loss

    model.update = checked_update
    return steps


def fit_briefly(cfg, model=None, **trainer_kwargs):
    model = model or hydra.utils.instantiate(cfg.model, _recursive_=False)
    datamodule = hydra.utils.instantiate(cfg.data)
    kwargs = {**build_trainer_kwargs(cfg, model), "logger": False, "enable_checkpointing": False, **trainer_kwargs}
    pl.Trainer(**kwargs).fit(model, datamodule=datamodule)
    return model


EXPECTED_STEPS = {"cyclegan": [("generators",), ("discriminators",)],
                  "pix2pix": [("discriminator",), ("generator",)],
                  "ugatit": [("discriminators",), ("generators",)],
                  # NICE-GAN's discriminator step trains heads and encoders together; the
                  # generator step leaves every encoder parameter bit-identical.
                  "nicegan": [("heads", "encoders"), ("generators",)]}


@pytest.mark.parametrize("model_name", MODELS)
def test_each_step_moves_only_its_player(train_cfg, model_name):
    cfg = train_cfg(f"model={model_name}", "max_iters=2")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    steps = record_player_steps(model)
    fit_briefly(cfg, model)
    assert steps == EXPECTED_STEPS[model_name] * 2


@pytest.mark.parametrize("model_name", UNPAIRED_MODELS)
def test_encode_gives_a_latent_per_image(train_cfg, model_name):
    cfg = train_cfg(f"model={model_name}")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    size = cfg.data.size
    for domain in "AB":
        z = model.encode(torch.rand(3, 3, size, size) * 2 - 1, domain)
        assert z.dim() == 4 and z.size(0) == 3 and z.shape[-1] == size // 4 and not z.requires_grad


def test_the_latent_callbacks_encoding_leaves_the_training_state_alone(train_cfg):
    """A batch-norm CycleGAN with dropout: encoding for the t-SNE/MMD callback (mid-training, in
    train mode) reads the running statistics without updating them, and draws no dropout."""
    cfg = train_cfg("model=cyclegan", "model.generator.norm=batch", "model.generator.use_dropout=true")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False).train()
    buffers = {k: v.clone() for k, v in model.G_A.state_dict().items() if "running" in k}
    x = torch.rand(2, 3, cfg.data.size, cfg.data.size) * 2 - 1
    z = model.encode(x, "A")
    assert all(torch.equal(model.G_A.state_dict()[k], v) for k, v in buffers.items()) and model.G_A.training
    assert torch.equal(z, model.encode(x, "A"))
    with torch.no_grad():
        assert torch.equal(z, model.G_A.encoder.eval()(x))


@pytest.mark.parametrize("model_name", ("ugatit", "nicegan"))
def test_rho_stays_in_unit_interval_under_a_large_learning_rate(train_cfg, model_name):
    from src.nets.adalin import rho_statistics
    cfg = train_cfg(f"model={model_name}", "max_iters=3", "model.optimizer.lr=1.0")
    pl.seed_everything(0)  # the initial weights decide which rho reach a bound within 3 steps
    model = fit_briefly(cfg)
    stats = {**rho_statistics(model.G_AB), **rho_statistics(model.G_BA)}
    assert stats and all(0.0 <= low and high <= 1.0 for _, low, high in stats.values())
    # and the large steps did push some rho against a bound (the clipping was exercised)
    assert any(low == 0.0 or high == 1.0 for _, low, high in stats.values())


@pytest.mark.parametrize("model_name,data_name", [("cyclegan", "shapes"), ("cyclegan", "shapes_paired"),
                                                   ("pix2pix", "shapes_paired"), ("ugatit", "shapes"),
                                                   ("nicegan", "shapes")])
def test_smoke_run_writes_checkpoint_samples_and_finite_metrics(train_cfg, model_name, data_name):
    cfg = train_cfg(f"model={model_name}", f"data={data_name}")
    metrics = run_training(cfg)
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    assert {"train/G", "train/D"} <= set(metrics)   # every model's totals, for one chart across models
    run_dir = cfg.paths.output_dir
    # the periodic checkpoint is named by iteration (4), not by optimizer steps (8-12)
    assert sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("*.ckpt")) == ["best_fid.ckpt", "iter_0000004.ckpt", "last.ckpt"]
    assert sorted(p.name for p in (Path(run_dir) / "samples").glob("*.png")) == ["iter_0000002.png", "iter_0000004.png"]


@pytest.mark.parametrize("override, message", [
    ("model=nicegan model.generator.n_res=abc", r"model.generator.n_res='abc' must be an integer \(NICEGANGenerator's"),
    ("model=ugatit model.local_discriminator.n_layers=2.5", r"model.local_discriminator.n_layers=2.5 must be an integer"),
    ("model=cyclegan model.generator.use_dropout=1", r"model.generator.use_dropout=1 must be true or false"),
    ("model=cyclegan model.discriminator.ndf=true", r"model.discriminator.ndf=True must be an integer"),
    # sizes: a width of 0 or a negative count would end in a shape error inside the network
    ("model=cyclegan model.generator.ngf=0", r"model.generator.ngf=0 must be a positive integer"),
    ("model=cyclegan model.discriminator.ndf=-4", r"model.discriminator.ndf=-4 must be a positive integer"),
    ("model=ugatit model.generator.n_res=-1", r"model.generator.n_res=-1 must be an integer >= 0"),
    ("model=rgan data=sines model.discriminator.hidden=0", r"model.discriminator.hidden=0 must be a positive integer"),
    ("model=gan model.generator.hidden=[256,abc]",
     r"model.generator.hidden=\[256, 'abc'\] must be a list of integers \(MLPGenerator's hidden\)"),
    ("model=gan model.discriminator.hidden=[1024,0]", r"model.discriminator.hidden=\[1024, 0\] must hold positive integers"),
])
def test_network_settings_of_the_wrong_type_are_named_by_key(train_cfg, override, message):
    with pytest.raises(hydra.errors.InstantiationException, match=message):
        hydra.utils.instantiate(train_cfg(*override.split()).model, _recursive_=False)


@pytest.mark.parametrize("override, message", [
    ("model.lr_schedule.decay=abc", r"model.lr_schedule.decay='abc' must be an integer >= 0 or half \(epochs"),
    ("model.lr_schedule.constant=-1", r"model.lr_schedule.constant=-1 must be an integer >= 0 or half"),
    ("model.lr_schedule.policy=step ++model.lr_schedule.step_size=0",
     r"model.lr_schedule.step_size=0 must be a positive integer"),
    ("model.lr_schedule.policy=step ++model.lr_schedule.gamma=-0.5", r"model.lr_schedule.gamma=-0.5 must be a number in \(0, 1\]"),
    # the rate would grow without bound, to an OverflowError mid-run
    ("model.lr_schedule.policy=step ++model.lr_schedule.gamma=2", r"model.lr_schedule.gamma=2 must be a number in \(0, 1\]"),
    ("model.lr_schedule.policy=exponential ++model.lr_schedule.decay_rate=0.99999",
     r"model.lr_schedule.decay_rate=0.99999 must be a number >= 1: .* ExponentialLR\(gamma\) is decay_rate=1/gamma"),
    ("model.lr_schedule.unit=step", r"Unknown model.lr_schedule.unit 'step'"),
])
def test_a_schedule_setting_it_cannot_use_stops_the_fit_at_start(train_cfg, override, message):
    cfg = train_cfg("model=cyclegan", *override.split(), "max_iters=1")
    hydra.utils.instantiate(cfg.model, _recursive_=False)   # the model builds: an old checkpoint still loads
    with pytest.raises(ValueError, match=message):
        run_training(cfg)
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))   # refused before the first step


def player_weights(model, *players: str) -> list[torch.Tensor]:
    """The players' conv and linear weights (what `model.init` draws; spectral norm's are `weight_orig`)."""
    layers = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)
    return [getattr(layer, "weight_orig", layer.weight).detach().clone() for name in players
            for net in model.player_modules()[name] for layer in net.modules() if isinstance(layer, layers)]


@pytest.mark.parametrize("model_name, player, others", [
    ("pix2pix", "discriminator", ["generator"]), ("cyclegan", "discriminators", ["generators"]),
    ("ugatit", "discriminators", ["generators"]), ("nicegan", "generators", ["encoders", "heads"]),
    ("rgan", "generator", ["discriminator"]), ("infogan", "discriminator", ["generator"])])
def test_a_players_own_init_reaches_its_networks_and_no_others(train_cfg, model_name, player, others):
    """`model.init.players.<player>` draws that player's weights (here uniform in +-0.5, far
    wider than the shared N(0, 0.02)); the other players' are the shared init's, draw for draw."""
    def build(*overrides):
        torch.manual_seed(0)
        cfg = train_cfg(f"model={model_name}", "model.init.type=normal", "model.init.gain=0.02", *overrides)
        return hydra.utils.instantiate(cfg.model, _recursive_=False)

    default = build()
    own = build(f"+model.init.players.{player}.type=uniform", f"+model.init.players.{player}.gain=0.5")
    drawn = player_weights(own, player)
    assert all(w.abs().max() <= 0.5 for w in drawn)
    # every network of the player drawn from it (InfoGAN's Q head too, trained in D's step)
    for net in own.player_modules()[player]:
        layers = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)
        assert max(getattr(m, "weight_orig", m.weight).abs().max() for m in net.modules() if isinstance(m, layers)) > 0.3
    assert max(w.abs().max() for w in player_weights(default, player)) < 0.3
    assert all(torch.equal(a, b) for a, b in zip(player_weights(own, *others), player_weights(default, *others)))


def test_an_init_for_a_player_the_model_lacks_is_refused(train_cfg):
    cfg = train_cfg("model=cyclegan", "+model.init.players.critic.gain=1", "max_iters=1")
    with pytest.raises(ValueError, match=r"model.init.players has \['critic'\], which CycleGAN does not have: its "
                                         r"players are \['generators', 'discriminators'\]"):
        run_training(cfg)
    with pytest.raises(hydra.errors.InstantiationException, match=r"model.init.players.encoders: NICE-GAN "
                                                                  r"initialises each discriminator.*set model.init "
                                                                  r"for it \(and \+model.init.players.generators.<key>= "
                                                                  r"for the generators alone\)"):
        hydra.utils.instantiate(train_cfg("model=nicegan", "+model.init.players.encoders.gain=1").model,
                                _recursive_=False)
    # (the override it names, as written: the generators' own init)
    hydra.utils.instantiate(train_cfg("model=nicegan", "+model.init.players.generators.gain=1").model,
                            _recursive_=False)


@pytest.mark.parametrize("override, message", [
    ("loss.weights.cam=abc", r"loss.weights.cam='abc' must be a number >= 0"),
    ("loss.weights.cycle=-1", r"loss.weights.cycle=-1 must be a number >= 0"),
])
def test_loss_weights_must_be_non_negative_numbers(train_cfg, override, message):
    with pytest.raises(hydra.errors.InstantiationException, match=message):
        hydra.utils.instantiate(train_cfg("model=ugatit", override).model, _recursive_=False)


@pytest.mark.parametrize("model_name, typo", [("cyclegan", "cylce"), ("ugatit", "identy"), ("dcgan", "r_1")])
def test_a_loss_weight_the_model_never_reads_stops_the_fit(train_cfg, model_name, typo):
    """A misspelt weight would be ignored: refused when the fit starts, naming the weights the
    model reads; the model itself still builds (an older checkpoint loads for inference)."""
    cfg = train_cfg(f"model={model_name}", f"+loss.weights.{typo}=5", "max_iters=1")
    hydra.utils.instantiate(cfg.model, _recursive_=False)
    with pytest.raises(ValueError, match=rf"loss.weights.{typo} is not a weight \w+ reads \(its weights: .*\): fix "
                                         rf"the name, or remove it \('~loss.weights.{typo}'\)"):
        run_training(cfg)


def test_pix2pix_refuses_unpaired_data(train_cfg):
    cfg = train_cfg("model=pix2pix", "data=shapes")
    with pytest.raises(ValueError, match="paired data"):
        run_training(cfg)


def test_pix2pix_l1_falls_on_a_fixed_pair(train_cfg):
    """Losses move: on one repeated pair the reconstruction term must drop."""
    torch.manual_seed(0)
    cfg = train_cfg("model=pix2pix", "data=shapes_paired")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = datamodule.sample_batch(1, split="train")
    l1 = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, b, i):
            l1.append(float(trainer.callback_metrics["train/l1"]))

    loader = torch.utils.data.DataLoader([{k: v[0] for k, v in batch.items()}] * 40, batch_size=1)
    trainer = pl.Trainer(max_epochs=1, logger=True, log_every_n_steps=1, enable_checkpointing=False,
                         callbacks=[Record()], default_root_dir=cfg.paths.output_dir)
    trainer.fit(model, train_dataloaders=loader)
    assert len(l1) == 40 and sum(l1[-5:]) < 0.9 * sum(l1[:5])


@pytest.mark.parametrize("model_name,data_name,images,unit,by_epochs", [
    ("cyclegan", "shapes", 4, "iteration", False), ("pix2pix", "shapes_paired", 4, "iteration", False),
    ("ugatit", "shapes", 4, "iteration", False), ("nicegan", "shapes", 4, "iteration", False),
    ("cyclegan", "shapes", 2, "iteration", False), ("cyclegan", "shapes", 2, "epoch", False),
    ("pix2pix", "shapes_paired", 4, "epoch", False), ("pix2pix", "shapes_paired", 2, "epoch", True)])
def test_resume_gives_the_same_weights(train_cfg, tmp_path, model_name, data_name, images, unit, by_epochs):
    """4 iterations straight == 2 iterations, then resume from last.ckpt for 2 more (seeded).

    With 4 images per epoch the resume point is in the middle of an epoch: the resumed run must
    train on the rest of that epoch's items, in the same order with the same augmentations
    (src/data/epoch_order.py); with 2 it is on an epoch boundary. The image pools, optimizer
    moments, schedulers and RNG streams must all come back for the weights to match bit for bit.
    A per-epoch schedule (CycleGAN's and pix2pix's) steps after an epoch's last batch: a
    checkpoint there holds the stepped schedule, and a run stopped inside an epoch has not
    stepped it yet. `by_epochs`: the run's length in epochs, as the recipes give it, resumed
    from the checkpoint an epoch's end wrote, where Lightning restores no loader state (the
    data's order seed comes back with the DataModule's own state).
    """
    length = {"constant": 1, "decay": 4 if unit == "iteration" else 2}
    # The evaluations (FID/KID, latent, ground truth, grids, best-FID checkpoint) run at iterations
    # 2 and 4 of the first case only: they draw nothing from the run's streams in any model (their
    # own tests), and here they would cost a minute of the suite.
    evaluations = [] if (model_name, images, unit) == ("cyclegan", 4, "iteration") else list(NO_EVALUATION)
    common = [f"model={model_name}", f"data={data_name}", f"data.max_dataset_size={images}", "seed=7",
              f"model.lr_schedule.unit={unit}", *(f"model.lr_schedule.{k}={v}" for k, v in length.items()),
              *evaluations]
    assert_resume_continues_the_run(train_cfg, tmp_path, common, iterations_per_epoch=images if by_epochs else None)


def test_resuming_with_other_model_settings_says_so_before_loading_the_weights(train_cfg, tmp_path):
    first = train_cfg("model=cyclegan", "max_iters=1", *NO_EVALUATION)
    run_training(first)
    run_dir = Path(first.paths.output_dir)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("model: {}\n")   # where a Hydra run keeps its config
    wider = train_cfg("model=cyclegan", "model.generator.ngf=6", "max_iters=2", *NO_EVALUATION,
                      f"ckpt_path={run_dir}/checkpoints/last.ckpt")
    wider.paths.output_dir = str(tmp_path / "resumed")
    with pytest.raises(ValueError) as error:
        run_training(wider)
    message = str(error.value)
    assert message.startswith(f"ckpt_path={run_dir}/checkpoints/last.ckpt: the checkpoint does not fit the CycleGAN")
    assert "G_A.encoder.1.weight ([4, 3, 7, 7] in the checkpoint, [6, 3, 7, 7] here)" in message
    assert str(run_dir / ".hydra" / "config.yaml") in message
    other_model = train_cfg("model=ugatit", "max_iters=2", *NO_EVALUATION, f"ckpt_path={run_dir}/checkpoints/last.ckpt")
    with pytest.raises(ValueError, match=r"does not fit the UGATIT this run builds \(\d+ tensors missing: G_AB"):
        run_training(other_model)


def test_losses_are_logged_when_lightning_writes_them_and_at_the_end(train_cfg, tmp_path):
    """Losses are logged on the iterations Lightning writes to the loggers (every
    log_every_n_steps batches) and on the last one, whose values training hands back and the
    loggers get too; the CSV logger receives one row of them per write. Each is the mean over the
    iterations since the last logged one."""
    cfg = train_cfg("max_iters=5", "trainer.log_every_n_steps=2", *NO_EVALUATION)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    logged = []   # (batch index, train/G) at each log of the losses
    batch_index = []
    original_log_dict, original_training_step = model.log_dict, model.training_step

    def recording_training_step(batch, batch_idx):
        batch_index[:] = [batch_idx]
        return original_training_step(batch, batch_idx)

    def recording_log_dict(metrics, **kwargs):
        if "train/G" in metrics:
            logged.append((batch_index[0], float(metrics["train/G"])))
        original_log_dict(metrics, **kwargs)
    model.training_step, model.log_dict = recording_training_step, recording_log_dict
    each_iteration = []   # train/G as each iteration computed it
    original_log_losses = model.log_losses

    def recording_log_losses(terms, totals, batch_size):
        each_iteration.append(float(totals["G"]))
        original_log_losses(terms, totals, batch_size)
    model.log_losses = recording_log_losses
    trainer = pl.Trainer(**build_trainer_kwargs(cfg, model), logger=pl.loggers.CSVLogger(tmp_path),
                         enable_checkpointing=False)
    trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))

    assert [i for i, _ in logged] == [1, 3, 4]
    assert each_iteration[0] != each_iteration[1]
    windows = [each_iteration[0:2], each_iteration[2:4], each_iteration[4:5]]
    assert [g for _, g in logged] == pytest.approx([sum(w) / len(w) for w in windows], rel=1e-6)
    assert float(trainer.callback_metrics["train/G"]) == logged[-1][1]
    header, *rows = Path(trainer.logger.log_dir, "metrics.csv").read_text().splitlines()
    column = header.split(",").index("train/G")
    written = [float(r.split(",")[column]) for r in rows if r.split(",")[column]]
    assert written == [g for _, g in logged]


def test_epochs_shorter_than_the_logging_interval_are_logged_without_lightnings_false_warning(train_cfg):
    """Lightning warns that an epoch shorter than log_every_n_steps logs nothing for it; its
    interval counts over epochs, so rows come all the same (every 4 iterations of 3-iteration
    epochs here): the warning is not shown."""
    cfg = train_cfg("data.max_dataset_size=3", "max_iters=8", "trainer.log_every_n_steps=4", *NO_EVALUATION)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_training(cfg)
    assert not [w for w in caught if "smaller than the logging interval" in str(w.message)]
    (metrics,) = Path(cfg.paths.output_dir).glob("csv/version_*/metrics.csv")
    logged = [row for row in csv.DictReader(metrics.open()) if row.get("train/G")]
    assert len(logged) >= 2   # a row at iterations 4 and 8, across the epochs


def test_an_epochs_last_iterations_go_into_the_next_row_not_nowhere(train_cfg, tmp_path):
    """3 iterations an epoch, a row every 2, 2 epochs: Lightning writes rows at iterations 2, 4
    and 6 only. The losses of the first epoch's last iteration were averaged alone at its end and
    reached no logger; they are in the next row's mean now, and the run's last iteration is still
    logged (what training hands back)."""
    cfg = train_cfg("data.max_dataset_size=3", "max_iters=null", "trainer.max_epochs=2", "trainer.log_every_n_steps=2",
                    "model.lr_schedule.unit=epoch", "model.lr_schedule.constant=1", "model.lr_schedule.decay=1",
                    *NO_EVALUATION)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    each_iteration, logged = [], []
    original_log_losses, original_log_dict = model.log_losses, model.log_dict

    def recording_log_losses(terms, totals, batch_size):
        each_iteration.append(float(totals["G"]))
        original_log_losses(terms, totals, batch_size)

    def recording_log_dict(metrics, **kwargs):
        if "train/G" in metrics:
            logged.append((model.iteration, float(metrics["train/G"])))
        original_log_dict(metrics, **kwargs)
    model.log_losses, model.log_dict = recording_log_losses, recording_log_dict
    trainer = pl.Trainer(**build_trainer_kwargs(cfg, model), logger=pl.loggers.CSVLogger(tmp_path),
                         enable_checkpointing=False)
    trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))
    assert len(each_iteration) == 6 and [i for i, _ in logged] == [2, 4, 6]   # (iterations done)
    windows = [each_iteration[0:2], each_iteration[2:4], each_iteration[4:6]]
    assert [g for _, g in logged] == pytest.approx([sum(w) / len(w) for w in windows], rel=1e-6)
    header, *rows = Path(trainer.logger.log_dir, "metrics.csv").read_text().splitlines()
    column = header.split(",").index("train/G")
    assert [float(r.split(",")[column]) for r in rows if r.split(",")[column]] == [g for _, g in logged]


def test_under_ddp_the_logged_losses_are_the_mean_over_the_ranks(train_cfg, tmp_path, monkeypatch):
    """Each rank trains on its own shard, so its losses differ: the logged value is their mean,
    not rank zero's (forked ranks keep this test's patch and write what they computed)."""
    from conftest import one_torch_thread
    from src.models.base import AdversarialModel

    original = AdversarialModel.log_losses

    def recording_log_losses(self, terms, totals, batch_size):
        with open(tmp_path / f"rank{self.trainer.global_rank}.txt", "a") as f:
            f.write(f"{float(totals['G'])!r}\n")
        original(self, terms, totals, batch_size)

    monkeypatch.setattr(AdversarialModel, "log_losses", recording_log_losses)
    cfg = train_cfg("model=cyclegan", "data.max_dataset_size=4", "max_iters=2", "trainer.log_every_n_steps=2",
                    *NO_EVALUATION, "trainer=ddp_sim", "trainer.strategy=ddp_fork_find_unused_parameters_true")
    with one_torch_thread():
        metrics = run_training(cfg)
    per_rank = [[float(v) for v in (tmp_path / f"rank{r}.txt").read_text().split()] for r in (0, 1)]
    assert all(len(values) == 2 for values in per_rank) and per_rank[0] != per_rank[1]
    assert metrics["train/G"] == pytest.approx(sum(map(sum, per_rank)) / 4, rel=1e-6)


def test_the_learning_rate_is_logged_at_every_logged_iteration(train_cfg):
    """U-GAT-IT decays its rate per iteration over the second half of the run: the monitor logs
    the rate each logged iteration trains at, not one value per epoch."""
    cfg = train_cfg("model=ugatit", "max_iters=4", *NO_EVALUATION)   # smoke: log_every_n_steps=1
    run_training(cfg)
    with open(next(Path(cfg.paths.output_dir).glob("csv/version_*/metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    assert all(row["lr/discriminators"] == row["lr/generators"] for row in rows)   # one per player, by name
    rates = [float(row["lr/generators"]) for row in rows if row.get("lr/generators")]
    base = cfg.model.optimizer.lr
    # iterations 1-2 at the rate, 3 and 4 decaying (to 1/(decay + 1) at the last: lr_schedules.py)
    assert rates == pytest.approx([base, base, base * 2 / 3, base / 3])


def test_logged_losses_reach_the_host_in_one_copy(train_cfg, monkeypatch):
    """Lightning keeps the last logged values and reads the progress bar's with .item() after
    every batch: device tensors there would make each GPU iteration wait for the GPU's queue.
    log_losses copies an iteration's values to the host at once and logs those copies."""
    model = hydra.utils.instantiate(train_cfg("model=cyclegan").model, _recursive_=False)
    model.logging_losses = True
    copies, original_cpu = [], torch.Tensor.cpu

    def counted_cpu(tensor, *args, **kwargs):
        copies.append(tuple(tensor.shape))
        return original_cpu(tensor, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "cpu", counted_cpu)
    logged = {}
    model.log_dict = lambda metrics, prog_bar=False, **kwargs: logged.update(
        {name: (value, prog_bar) for name, value in metrics.items()})
    weight = torch.tensor(1.5, requires_grad=True)
    model.log_losses({"adv": weight * 2, "cycle": torch.tensor(0.25)},
                     {"G": weight * 2 + 0.25, "D": torch.tensor(0.5, dtype=torch.float64)}, batch_size=1)
    assert copies == [(4,)]
    assert {name: (float(value), bar) for name, (value, bar) in logged.items()} == {
        "train/adv": (3.0, False), "train/cycle": (0.25, False), "train/G": (3.25, True), "train/D": (0.5, True)}
    assert not any(value.requires_grad for value, _ in logged.values())


def loggers_built_by_runs(monkeypatch) -> list:
    """The list that the loggers of the runs that follow are appended to as they are built."""
    import src.utils.run as run_module
    built = []
    original = run_module.instantiate_list

    def recording(*args, **kwargs):
        built.extend(made := original(*args, **kwargs))
        return made
    monkeypatch.setattr(run_module, "instantiate_list", recording)
    return built


def test_tensorboard_shows_the_config_and_wandb_keeps_the_best_fid(train_cfg, monkeypatch):
    """TensorBoard lists hyperparameters only beside metrics given with them (none here): the
    config goes to its TEXT tab. wandb's summary holds last values; the best FID is added."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    built = loggers_built_by_runs(monkeypatch)
    monkeypatch.setenv("WANDB_MODE", "disabled")   # a summary kept in memory, readable here
    cfg = train_cfg("model=cyclegan", "logger=many", "max_iters=4", "++callbacks.latent=null",
                    "++callbacks.shapes_truth=null")
    run_training(cfg)
    (events,) = Path(cfg.paths.output_dir).glob("tensorboard/**/events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    (config,) = [e for e in accumulator.Tensors("config/text_summary")]
    assert "model_name: cyclegan" in config.tensor_proto.string_val[0].decode()
    wandb_logger = next(logger for logger in built if isinstance(logger, pl.loggers.WandbLogger))
    record = json.loads(Path(cfg.paths.output_dir, "final_metrics.json").read_text())
    assert wandb_logger.experiment.summary["best_fid"] == record["best_fid"]
    assert wandb_logger.experiment.summary["best_fid_iteration"] == record["best_fid_iteration"] in (2, 4)


def test_wandb_has_the_best_fid_as_soon_as_it_improves_not_only_at_a_clean_end(train_cfg, monkeypatch):
    """A run still training, preempted or crashed showed no best_fid in the runs table: it was
    put in the summary by the end-of-fit record only (stood in for here by one that never runs)."""
    from src.callbacks.final_metrics import FinalMetrics

    built = loggers_built_by_runs(monkeypatch)
    monkeypatch.setattr(FinalMetrics, "on_fit_end", lambda self, trainer, pl_module: None)
    monkeypatch.setenv("WANDB_MODE", "disabled")   # a summary kept in memory, readable here
    run_training(train_cfg("model=cyclegan", "logger=wandb", "max_iters=2", "++callbacks.latent=null",
                           "++callbacks.shapes_truth=null"))
    wandb_logger = next(logger for logger in built if isinstance(logger, pl.loggers.WandbLogger))
    # Lightning's unset `anonymous` is not passed on: wandb warned at every run that it has no effect
    assert "anonymous" not in wandb_logger._wandb_init
    assert math.isfinite(wandb_logger.experiment.summary["best_fid"])
    assert wandb_logger.experiment.summary["best_fid_iteration"] in (1, 2)


def test_the_loggers_record_the_code_revision_the_run_trained_with(train_cfg, tmp_path):
    """Beside the config: the commit (and "+dirty" with uncommitted changes), which csv's and
    tensorboard's records lacked; the code's own, whatever folder paths.root_dir names."""
    import shutil
    import subprocess

    import yaml
    if shutil.which("git") is None or not (Path(__file__).parents[1] / ".git").exists():
        pytest.skip("not a git checkout")
    cfg = train_cfg("model=cyclegan", "max_iters=1", *NO_EVALUATION)
    cfg.paths.root_dir = str(tmp_path)   # data and logs elsewhere (paths set already), not a checkout
    run_training(cfg)
    (hparams,) = Path(cfg.paths.output_dir).glob("csv/version_*/hparams.yaml")
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parents[1], capture_output=True,
                         text=True)
    if git.returncode != 0:   # a checkout git refuses (another owner's, "dubious ownership")
        pytest.skip(f"git rev-parse failed: {git.stderr.strip()}")
    head = git.stdout.strip()
    revision = yaml.safe_load(hparams.read_text())["code_revision"]
    assert revision in (head, head + "+dirty")


def test_all_loggers_write_offline(train_cfg, monkeypatch):
    """csv, tensorboard and wandb (offline: no login, no network) all receive the run."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = train_cfg("logger=many", "max_iters=2")
    run_training(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert list(run_dir.glob("csv/version_*/metrics.csv"))
    assert list(run_dir.glob("tensorboard/**/events.out.tfevents.*"))
    assert list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.mark.parametrize("no_logger", ["logger=none", "logger.csv=null"])
def test_a_run_without_logger_trains_and_checkpoints(train_cfg, no_logger):
    """logger=none: Lightning refuses its learning-rate monitor without a logger, so the default
    callbacks drop it; the run still ends with its checkpoint and final metrics. (The only logger
    turned off by its null, as every config group's item, kept the monitor: Lightning refused it
    at the training's start.)"""
    cfg = train_cfg(no_logger, "max_iters=2")
    metrics = run_training(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "final_metrics.json").is_file()
    assert math.isfinite(metrics["train/G"]) and not list(run_dir.glob("csv"))


@pytest.mark.parametrize("model_name", MODELS)
def test_gradient_penalty_objective_trains_every_model(train_cfg, model_name):
    """WGAN-GP differentiates the critic's input gradient: the penalty path (double backward
    through spectral norm for the attention models) must train, with finite losses."""
    data = "data=shapes_paired" if model_name == "pix2pix" else "data=shapes"
    cfg = train_cfg(f"model={model_name}", data, "loss=wgangp", "max_iters=1")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    steps = record_player_steps(model)
    fit_briefly(cfg, model)
    assert steps == EXPECTED_STEPS[model_name]
    # the penalty's weighted share of train/D is logged apart, as the noise models' train/gp
    metrics = model.trainer.callback_metrics
    penalties = {"train/gp"} if model_name == "pix2pix" else {"train/D_A_gp", "train/D_B_gp"}
    assert {name for name in metrics if name.endswith("gp")} == penalties
    assert all(math.isfinite(float(metrics[name])) and float(metrics[name]) > 0 for name in penalties)


def test_pix2pixhd_multiscale_discriminator_with_feature_matching_trains(train_cfg):
    cfg = train_cfg("model=pix2pix", "data=shapes_paired", "max_iters=2",
                    "model.discriminator._target_=src.nets.discriminators.MultiscaleDiscriminator",
                    "+model.discriminator.num_scales=2", "loss.weights.feature_matching=10")
    metrics = run_training(cfg)
    assert math.isfinite(metrics["train/feature_matching"]) and metrics["train/feature_matching"] > 0


def test_feature_matching_pulls_the_fakes_features_toward_the_reals(train_cfg, monkeypatch):
    """pix2pixHD's term: the L1 between D's features of the fake pair (through which the
    generator learns) and of the real pair (a fixed target, no gradient), every scale's layers."""
    from src.models import pix2pix
    cfg = train_cfg("model=pix2pix", "data=shapes_paired",
                    "model.discriminator._target_=src.nets.discriminators.MultiscaleDiscriminator",
                    "+model.discriminator.num_scales=2", "loss.weights.feature_matching=10")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    seen = []
    matching = pix2pix.feature_matching_loss
    monkeypatch.setattr(pix2pix, "feature_matching_loss",
                        lambda fake, real: seen.append((fake, real)) or matching(fake, real))
    batch = random_batch(cfg)
    fit_one_batch(model, batch)
    ((fake, real),) = seen
    flat = [(f, r) for fake_scale, real_scale in zip(fake, real) for f, r in zip(fake_scale, real_scale)]
    assert len(fake) == 2 and len(flat) > 2
    assert all(f.requires_grad and not r.requires_grad for f, r in flat)
    # the real features are D's of the real pair (input, target), the fake ones of (input, G(input))
    real_pair = torch.cat([batch["A"], batch["B"]], 1)
    with torch.no_grad():
        _, expected = model.D.train()(real_pair, return_features=True)   # the step's D: stepped already
    assert all(torch.allclose(e, r, atol=1e-6) for e, (_, r) in zip([x for s in expected for x in s], flat))


def test_pix2pix_translates_each_image_alone_with_test_time_batch_statistics(train_cfg):
    """pix2pix samples with its batch norm's batch statistics (as its paper tests, at batch 1):
    an image's translation must not depend on the other images of the batch it comes in."""
    cfg = train_cfg("model=pix2pix", "data=shapes_paired", "model.test_time_dropout=false")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    images = torch.rand(3, 3, cfg.data.size, cfg.data.size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    alone = torch.cat([model.translate(image) for image in images.split(1)])
    assert torch.allclose(model.translate(images), alone, atol=1e-6)
    with sampling_mode([model.G], batch_stats=True), torch.no_grad():
        assert not torch.allclose(model.G(images), alone, atol=1e-3)   # statistics of the whole batch differ


def test_the_default_pix2pix_run_trains_on_the_embedded_data(tmp_path, shared_data_dir):
    """`python src/train.py model=pix2pix`: the U-Net's depth follows the crop size (5 levels at
    the embedded 32 px, unet_256's 8 on the 256 px crops of the real datasets)."""
    cfg = compose_train_cfg(["model=pix2pix", "max_iters=1", "data.n_train=4", "data.n_test=4", *NO_EVALUATION],
                            tmp_path / "run", shared_data_dir)
    metrics = run_training(cfg)
    assert math.isfinite(metrics["train/G"])
    assert hydra.utils.instantiate(cfg.model.generator).size_multiple == 32   # 5 levels
    facades = compose_train_cfg(["model=pix2pix", "data=facades"], tmp_path / "f", shared_data_dir)
    generator = hydra.utils.instantiate(facades.model.generator)
    assert generator.size_multiple == 256   # unet_256, the paper's


@pytest.mark.parametrize("model_name", ("ugatit", "nicegan"))
def test_attention_models_decay_the_rate_over_the_second_half_of_any_run_length(train_cfg, model_name):
    """The papers decay linearly to 0 over the second half of training: with max_iters=6 the
    rate stays for iterations 1-3, falls over 4-6 and is 0 once the run is over."""
    model = fit_briefly(train_cfg(f"model={model_name}", "max_iters=6", *NO_EVALUATION))
    factor = model.lr_schedulers()[0].lr_lambdas[0]
    assert (factor.constant, factor.decay) == (3, 3)
    assert [factor(t) for t in range(7)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    assert model.optimizers()[0].param_groups[0]["lr"] == 0.0   # stepped 6 times: the end of the decay
    # A run measured in epochs: its iterations are epochs x batches (4 items per epoch here).
    by_epochs = fit_briefly(train_cfg(f"model={model_name}", "max_iters=null", "trainer.max_epochs=1",
                                      "data.max_dataset_size=4", *NO_EVALUATION))
    assert by_epochs.lr_schedulers()[0].lr_lambdas[0].constant == 2
    with pytest.raises(ValueError, match="model.lr_schedule.constant=half needs the run's length in iterations: "
                                         "set max_iters"):
        fit_briefly(train_cfg(f"model={model_name}", "max_iters=null", "trainer.max_epochs=-1", *NO_EVALUATION))
    # Halves in epochs of a run measured in iterations: as many epochs as they fill (5 of 2 batches: 3).
    in_epochs = fit_briefly(train_cfg(f"model={model_name}", "max_iters=5", "data.max_dataset_size=2",
                                      "model.lr_schedule.unit=epoch", *NO_EVALUATION))
    factor = in_epochs.lr_schedulers()[0].lr_lambdas[0]
    assert (factor.constant, factor.decay) == (1, 2)


def test_a_run_shorter_than_its_decay_warns_and_one_that_fits_does_not(train_cfg, recwarn):
    """CycleGAN's 100 + 100 epochs with trainer.max_epochs=1 alone, or max_iters=3: the rate would
    never decay."""
    epoch_run = ("model=cyclegan", "max_iters=null", "trainer.max_epochs=1", "data.max_dataset_size=2", *NO_EVALUATION)
    with pytest.warns(UserWarning, match="decays the rate to 0 over epochs 100-200, but this run is 1 epochs long"):
        fit_briefly(train_cfg(*epoch_run))
    recwarn.clear()
    fit_briefly(train_cfg(*epoch_run, "model.lr_schedule.constant=0", "model.lr_schedule.decay=1"))
    assert not [w for w in recwarn if "lr_schedule" in str(w.message)]
    # Limited by max_iters instead: as many epochs as the iterations fill (3 of 2 batches: 2).
    iteration_run = ("model=cyclegan", "max_iters=3", "data.max_dataset_size=2", *NO_EVALUATION)
    with pytest.warns(UserWarning, match="decays the rate to 0 over epochs 100-200, but this run is 2 epochs long"):
        fit_briefly(train_cfg(*iteration_run))
    recwarn.clear()
    fit_briefly(train_cfg(*iteration_run, "model.lr_schedule.constant=0", "model.lr_schedule.decay=2"))
    assert not [w for w in recwarn if "lr_schedule" in str(w.message)]


def test_a_run_resumed_with_a_longer_max_iters_warns_that_its_decay_ended(train_cfg, tmp_path):
    """U-GAT-IT decays over the second half of max_iters=4; resumed to 6 iterations, the restored
    scheduler (the same run's) has reached 0 at 4, which the run says instead of training on silently."""
    first = train_cfg("model=ugatit", "max_iters=4", *NO_EVALUATION)
    first.paths.output_dir = str(tmp_path / "first")
    run_training(first)
    resumed = train_cfg("model=ugatit", "max_iters=6", f"ckpt_path={tmp_path}/first/checkpoints/last.ckpt",
                        *NO_EVALUATION)
    with pytest.warns(UserWarning, match="over iterations 2-4, but this run is 6 iterations long: its last 2"):
        run_training(resumed)


def test_wgangp_warns_of_a_batch_norm_critic_and_trains_with_layer_norm(train_cfg, recwarn):
    common = ("model=pix2pix", "data=shapes_paired", "loss=wgangp", "max_iters=1", *NO_EVALUATION)
    with pytest.warns(UserWarning, match="loss=wgangp with batch norm in the discriminator.*norm=layer"):
        fit_briefly(train_cfg(*common))
    recwarn.clear()
    model = fit_briefly(train_cfg(*common, "model.discriminator.norm=layer"))
    assert not [w for w in recwarn if "batch norm in the discriminator" in str(w.message)]
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.D.modules())


@pytest.mark.parametrize("model_name", ("cyclegan", "nicegan"))
def test_wgan_clips_the_critic_after_its_updates_and_nothing_else(train_cfg, model_name):
    cfg = train_cfg(f"model={model_name}", "loss=wgan", "loss.clip=0.005", "model.optimizer.type=rmsprop",
                    "max_iters=2", *NO_EVALUATION)
    model = fit_briefly(cfg)
    assert all(isinstance(o.optimizer, torch.optim.RMSprop) for o in model.optimizers())
    critic = [p for net in model.image_discriminators() for p in net.parameters()]
    assert max(float(p.abs().max()) for p in critic) <= 0.005
    generators = [p for name, nets in model.player_modules().items() if name == "generators"
                  for net in nets for p in net.parameters()]
    assert max(float(p.abs().max()) for p in generators) > 0.005
    with pytest.raises(Exception, match=r"loss.clip=0: loss=wgan clips the critic's weights"):
        hydra.utils.instantiate(train_cfg(f"model={model_name}", "loss=wgan", "loss.clip=0").model, _recursive_=False)


@pytest.mark.parametrize("model_name", MODELS)
def test_data_of_the_wrong_kind_for_the_method_is_named_at_fit_start(train_cfg, model_name, tmp_path):
    """pix2pix refuses unpaired data; an unpaired method on an aligned config is warned that its
    paper draws each B at random."""
    from types import SimpleNamespace
    from src.data.paired import PairedDataModule
    from src.data.unpaired import UnpairedDataModule
    model = hydra.utils.instantiate(train_cfg(f"model={model_name}").model, _recursive_=False)
    paired = PairedDataModule(data_dir=tmp_path, name="facades")
    unpaired = UnpairedDataModule(data_dir=tmp_path, name="horse2zebra")
    if model_name == "pix2pix":
        model.trainer = SimpleNamespace(datamodule=unpaired)
        with pytest.raises(ValueError, match="Pix2Pix needs paired data"):
            model.on_fit_start()
        # and before anything is built, from the data config (it came after the ranks started
        # and the callbacks' setup)
        with pytest.raises(ValueError, match="Pix2Pix needs paired data"):
            type(model).check_data_config(train_cfg("model=pix2pix", "data=horse2zebra").data, "pix2pix")
        type(model).check_data_config(train_cfg("model=pix2pix", "data=facades").data, "pix2pix")
        model.trainer = SimpleNamespace(datamodule=paired)
        model.on_fit_start()
        return
    model.trainer = SimpleNamespace(datamodule=paired)
    with pytest.warns(UserWarning, match=r"is an unpaired method, and data facades serves aligned pairs.*"
                                         r"data=cityscapes_unpaired, facades_unpaired, maps_unpaired"):
        model.on_fit_start()
    model.trainer = SimpleNamespace(datamodule=unpaired)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.on_fit_start()
    assert not [w for w in caught if "unpaired method" in str(w.message)]


@pytest.mark.parametrize("model", ["ugatit", "nicegan"])
def test_a_rho_logging_interval_below_one_is_refused_by_its_key(train_cfg, model):
    """0 divided by zero after the first iteration's steps; a negative one logged as its absolute value."""
    for value in ("0", "-4", "true"):
        with pytest.raises(hydra.errors.InstantiationException, match=rf"model.log_rho_every_n_iters={value.title()} must be a "
                                                         r"positive integer \(training iterations\)"):
            hydra.utils.instantiate(train_cfg(f"model={model}", f"model.log_rho_every_n_iters={value}").model,
                                    _recursive_=False)


@pytest.mark.parametrize("model", ["ugatit", "nicegan"])
def test_rho_is_logged_at_the_iterations_it_was_measured_at_only(train_cfg, model):
    """Through self.log, Lightning sent the AdaLIN/LIN rho of iteration 4 again at every logged
    iteration until the next measure (at 5 and 7 here), as if measured there."""
    cfg = train_cfg(f"model={model}", "max_iters=9", "model.log_rho_every_n_iters=4", "trainer.log_every_n_steps=2",
                    *NO_EVALUATION)
    run_training(cfg)
    rows = list(csv.DictReader(open(Path(cfg.paths.output_dir, "csv", "version_0", "metrics.csv"))))
    rho = next(column for column in rows[0] if column.startswith("rho/"))
    # (measured after an iteration's steps: at the count of iterations done, as the evaluations are)
    assert sorted(int(row["step"]) for row in rows if row[rho] != "") == [4, 8]
    assert [int(row["step"]) for row in rows if row.get("train/G", "") != ""] == [1, 3, 5, 7, 8]   # and the last
    # with the image count of the iteration measured, as its loss row (one step before: Lightning's;
    # at step 8 the CSV merges the rho row with iteration 9's loss row)
    kimg = {int(row["step"]): float(row["train/kimg"]) for row in rows if row["train/kimg"] != ""}
    assert kimg[4] == pytest.approx(kimg[3]) and kimg[3] > 0


def test_pix2pix_trains_edges2shoes_for_the_papers_15_epochs_not_facades_200():
    """The data config promised a shorter schedule nothing applied: 200 epochs of 50k pairs."""
    from src.utils.training_config import compose_training_config
    shoes = compose_training_config(["model=pix2pix", "data=edges2shoes"])
    assert shoes.trainer.max_epochs == 15 and shoes.data.batch_size == 4
    # the appendix's jitter and mirroring are for facades, maps and Cityscapes, not for shoes
    assert (shoes.data.preprocess, shoes.data.flip) == ("none", False)
    assert (shoes.model.lr_schedule.constant, shoes.model.lr_schedule.decay) == ("half", "half")
    facades = compose_training_config(["model=pix2pix", "data=facades"])
    assert facades.trainer.max_epochs == 200 and facades.model.lr_schedule.constant == 100
    # the command line still wins
    assert compose_training_config(["model=pix2pix", "data=edges2shoes", "trainer.max_epochs=5"]).trainer.max_epochs == 5


@pytest.mark.parametrize("model_name", MODELS)
def test_every_network_of_a_sample_grid_runs_in_eval_mode(train_cfg, model_name):
    """NICE-GAN's grid ran the reconstructing generator in training mode: the sampling rule
    (eval mode, eager under compile) broke, and a compiled run recompiled for it."""
    cfg = train_cfg(f"model={model_name}", f"data={DATA_OF[model_name]}")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False).train()
    ran_in = {}

    def record(name):
        def hook(module, inputs):
            ran_in.setdefault(name, module.training)   # (a pre-hook's return value replaces the inputs)
        return hook

    # (pix2pix's batch norms and dropout run in training mode on purpose: its test-time statistics)
    for name, module in model.named_modules():
        if module is not model and not isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout)):
            module.register_forward_pre_hook(record(name))
    model.sample_images(random_batch(cfg))
    assert ran_in and not [name for name, training in ran_in.items() if training]
    assert all(module.training for module in model.modules())   # and training mode comes back


def test_cyclegan_on_cityscapes_takes_the_papers_128_px_and_6_blocks():
    """The CycleGAN paper's Cityscapes results are at 128 px; the data config's 256 px built the
    9-block generator, a recipe and scores the paper's tables do not compare with."""
    from src.nets.generators import resnet_blocks_for
    from src.utils.training_config import compose_training_config
    cycle = compose_training_config(["model=cyclegan", "data=cityscapes_unpaired"])
    assert (cycle.data.load_size, cycle.data.crop_size) == (143, 128)
    assert resnet_blocks_for(cycle.model.generator.image_size) == 6
    # pix2pix's own Cityscapes recipe stays at 256, and the command line still wins
    assert compose_training_config(["model=pix2pix", "data=cityscapes"]).data.crop_size == 256
    assert compose_training_config(["model=cyclegan", "data=cityscapes_unpaired",
                                    "data.crop_size=256"]).data.crop_size == 256


def test_a_length_in_epochs_far_past_the_papers_runs_is_said_with_the_fix(train_cfg, monkeypatch):
    """CycleGAN's 200 epochs on a folder of 500k images at batch 1 are 100M iterations: said at
    the start (the threshold lowered here, on 8 images), and not for a length in iterations."""
    from src.models import base
    monkeypatch.setattr(base, "LONG_RUN_ITERATIONS", 5)
    for length, said in ((["max_iters=null", "trainer.max_epochs=1"], True), (["max_iters=8"], False)):
        cfg = train_cfg("model=cyclegan", *length, "data.max_dataset_size=8", *NO_EVALUATION)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_training(cfg)
        told = [str(w.message) for w in caught if "a length in epochs is the papers'" in str(w.message)]
        assert told == ([("trainer.max_epochs=1 of 8 iterations each is 8 iterations, over 5: a length in epochs is "
                          "the papers' for their small datasets. Give the run a length in iterations (max_iters=, and "
                          "model.lr_schedule.unit=iteration ++model.lr_schedule.constant=half "
                          "++model.lr_schedule.decay=half), or cap the data "
                          "(data.max_dataset_size).")] if said else [])
    # (the fix as written composes, for a model whose config holds the keys and for one whose lacks two)
    for model in ("cyclegan", "dcgan"):
        fixed = train_cfg(f"model={model}", "max_iters=8", "model.lr_schedule.unit=iteration",
                          "++model.lr_schedule.constant=half", "++model.lr_schedule.decay=half")
        assert (fixed.model.lr_schedule.constant, fixed.model.lr_schedule.decay) == ("half", "half")


@pytest.mark.parametrize("model_name, off, passes_saved", [
    ("cyclegan", ["loss.weights.cycle=0"], 4),   # (its identity weight is a share of the cycle's: off too)
    ("ugatit", ["loss.weights.cycle=0"], 2), ("nicegan", ["loss.weights.cycle=0"], 2),
    ("nicegan", ["loss.weights.reconstruction=0"], 2), ("ugatit", ["loss.weights.identity=0", "loss.weights.cam=0"], 2),
])
def test_a_term_weighted_zero_costs_no_generator_pass_and_leaves_the_others(train_cfg, model_name, off, passes_saved):
    """A weight of 0 turns a term off (its error message says so), but the reconstructions were
    still made and back-propagated: two generator passes each, and 0 x an overflowing term is NaN."""
    def one_iteration(*overrides):
        torch.manual_seed(0)
        cfg = train_cfg(f"model={model_name}", f"data={DATA_OF[model_name]}", *overrides)
        model = hydra.utils.instantiate(cfg.model, _recursive_=False)
        passes, logged = [], {}
        for name in ("G_A", "G_B", "G_AB", "G_BA"):
            if hasattr(model, name):
                getattr(model, name).register_forward_hook(lambda *_: passes.append(1))
        original = model.log_losses
        model.log_losses = lambda terms, totals, n: (logged.update(terms), original(terms, totals, n))
        fit_one_batch(model, random_batch(cfg))
        return len(passes), {k: float(v) for k, v in logged.items()}

    passes_on, terms_on = one_iteration()
    passes_off, terms_off = one_iteration(*off)
    assert passes_off == passes_on - passes_saved
    assert set(terms_off) < set(terms_on)   # the turned-off terms are not logged as if computed
    adversarial = [name for name in terms_on if "adv" in name]
    assert adversarial and all(terms_off[name] == pytest.approx(terms_on[name]) for name in adversarial)
