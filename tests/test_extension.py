"""Adding a model is one module and one config file (README: "Adding a model"): the example in
tests/extension/ trains through the whole stack (every callback of the default config, the
checkpoints, resuming), and eval.py and translate.py load it from its checkpoint, with nothing
registered anywhere else."""
import json
import math
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from conftest import assert_resume_continues_the_run, compose_train_cfg
from src.data.shapes import ShapesDataModule
from src.models.cyclegan import CycleGAN
from src.utils.checkpoint_loading import load_model
from src.utils.run import run_training

EXTENSION_CONF = Path(__file__).parent / "extension" / "conf"
ADDED = ["model=one_way_gan", f"hydra.searchpath=[file://{EXTENSION_CONF}]"]


@pytest.fixture
def added_model_cfg(tmp_path, shared_data_dir, monkeypatch):
    # The example lives in tests/, so its package stands in for src.models/, the one package
    # whose classes a checkpoint may name (naming a class imports its module), as its config's
    # folder, found through hydra.searchpath, stands in for conf/.
    monkeypatch.setattr("src.utils.checkpoint_loading.MODELS_PACKAGE", "tests.extension.")

    def make(*overrides: str, name: str = "run"):
        return compose_train_cfg(["debug=smoke", *ADDED, *overrides], tmp_path / name, shared_data_dir)
    yield make
    GlobalHydra.instance().clear()


def test_an_added_model_trains_with_every_callback_and_is_loaded_by_eval_and_translate(added_model_cfg, tmp_path,
                                                                                       shared_data_dir):
    cfg = added_model_cfg()
    before = load_initial_weights(cfg)
    metrics = run_training(cfg)
    # evaluated in the direction it translates; its losses logged
    assert math.isfinite(metrics["eval/fid_AtoB"]) and "eval/fid_BtoA" not in metrics
    assert all(math.isfinite(metrics[key]) for key in ("train/G", "train/D", "train/identity"))
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    model = load_model(ckpt)
    assert type(model).__name__ == "OneWayGAN"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 4 * 2
    moved = {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}
    assert any(n.startswith("G.") for n in moved) and any(n.startswith("D.") for n in moved)

    from src.translate import run_translation
    from src.utils.evaluation import run_evaluation
    (tmp_path / "in").mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "in" / "red.png")
    translate_cfg = compose_train_cfg([f"ckpt_path={ckpt}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}"],
                                      tmp_path / "translate", shared_data_dir, config_name="translate")
    written = run_translation(translate_cfg)["written"]
    assert [Path(p).name for p in written] == ["red.png"]
    eval_cfg = compose_train_cfg([f"ckpt_path={ckpt}", "feature_extractor=random_cnn",
                                  "kid_subset_size=2"], tmp_path / "eval", shared_data_dir, config_name="eval")
    run_evaluation(eval_cfg)
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(report["metrics"]) == ["AtoB"] and math.isfinite(report["metrics"]["AtoB"]["fid"])


def load_initial_weights(cfg) -> dict[str, torch.Tensor]:
    """The weights the run starts from (seeded as run_training seeds them)."""
    import hydra
    import pytorch_lightning as pl
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    return {name: value.clone() for name, value in model.state_dict().items()}


def test_an_added_model_resumes_to_the_same_weights(added_model_cfg, tmp_path):
    assert_resume_continues_the_run(lambda *o: added_model_cfg(*o), tmp_path,
                                    ["++callbacks.fid_kid=null", "++callbacks.latent=null",
                                     "++callbacks.shapes_truth=null", "seed=7"])


def test_an_added_model_is_told_what_it_declares_wrong(added_model_cfg, monkeypatch):
    """What an added model must get right, said when its fit starts or at its first iteration,
    not found later: iterations are counted from global_step by `optimizer_steps_per_iter` (a
    wrong count ran to the wrong length, checkpoints off schedule), and WGAN's clipping finds the
    critics among the players named "discriminator..." (another name clipped nothing)."""
    from tests.extension.one_way_gan import OneWayGAN

    monkeypatch.setattr(OneWayGAN, "optimizer_steps_per_iter", 3)
    with pytest.raises(RuntimeError, match=r"OneWayGAN.train_iteration took 2 optimizer steps, but its "
                                           r"optimizer_steps_per_iter is 3"):
        run_training(added_model_cfg("max_iters=2", name="steps"))
    monkeypatch.undo()
    monkeypatch.setattr("src.utils.checkpoint_loading.MODELS_PACKAGE", "tests.extension.")
    monkeypatch.setattr(OneWayGAN, "player_modules", lambda self: {"critic": [self.D], "generator": [self.G]})
    with pytest.raises(ValueError, match=r"loss=wgan's weight clipping acts on the critics.*its players are "
                                         r"\['critic', 'generator'\]"):
        run_training(added_model_cfg("loss=wgan", name="critic"))
    monkeypatch.undo()
    monkeypatch.setattr("src.utils.checkpoint_loading.MODELS_PACKAGE", "tests.extension.")
    # a model without a gradient penalty under WGAN-GP (leaving out loss.weights.gp, which it
    # does not read, would train a critic with no constraint at all)
    with pytest.raises(ValueError, match=r"loss.gan_mode=wgangp needs a gradient penalty, which OneWayGAN does not "
                                         r"apply \(no `gp` in its loss_weights\)"):
        run_training(added_model_cfg("loss=wgangp", name="gp"))


def test_a_trainable_parameter_that_no_player_trains_or_that_two_do_is_refused(train_cfg, monkeypatch):
    """A network a subclass adds without listing it in player_modules() would keep its initial
    weights through the whole run (no optimizer holds it, players() freezes it); one listed by
    two players would be stepped by both."""
    import hydra

    model = hydra.utils.instantiate(train_cfg("model=cyclegan").model, _recursive_=False)
    model.check_each_parameter_has_one_player()
    model.projection = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match=r"no player trains: projection\.weight, projection\.bias\. Add their "
                                         r"modules to a player in CycleGAN\.player_modules\(\)"):
        model.configure_optimizers()
    model.projection.requires_grad_(False)   # a frozen network is no player's
    model.check_each_parameter_has_one_player()
    players = model.player_modules()
    monkeypatch.setattr(type(model), "player_modules",
                        lambda self: {**players, "discriminators": [*players["discriminators"], model.G_A]})
    with pytest.raises(ValueError, match=r"two players.*G_A\.\S+ \(generators and discriminators\)"):
        model.check_each_parameter_has_one_player()


def test_a_player_network_that_is_no_submodule_is_refused(train_cfg, monkeypatch):
    """Networks kept in a plain dict train (their optimizer holds them), but checkpoints, the
    EMA and device moves see submodules only: the run saved no weights of them, and eval.py
    scored a freshly initialised network without a word."""
    import hydra

    model = hydra.utils.instantiate(train_cfg("model=cyclegan").model, _recursive_=False)
    players = model.player_modules()
    hidden = {"head": torch.nn.Linear(4, 4)}   # a plain dict: not registered
    monkeypatch.setattr(type(model), "player_modules",
                        lambda self: {**players, "discriminators": [*players["discriminators"], hidden["head"]]})
    with pytest.raises(ValueError, match=r"CycleGAN\.player_modules\(\) gives modules that are not submodules of the "
                                         r"model: Linear \(player discriminators\)\. Keep each network in an attribute"):
        model.configure_optimizers()
    model.heads = torch.nn.ModuleDict(hidden)   # registered: accepted
    model.check_each_parameter_has_one_player()


class CycleGANWithContrast(CycleGAN):   # an argument of its own, not saved
    def __init__(self, contrast_weight: float, **settings):
        super().__init__(**settings)
        self.contrast_weight = contrast_weight


def test_a_model_its_checkpoints_could_not_rebuild_is_refused_when_its_run_starts(train_cfg, monkeypatch):
    """eval.py, translate.py and init_from build a checkpoint's model from its saved settings:
    a network class outside src/nets/, or a subclass's own argument left unsaved, made every
    load fail after the training ("the file was altered"); the run now stops at its start."""
    import hydra

    from src.utils.checkpoint_loading import check_loadable

    cfg = train_cfg("model=cyclegan")
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    check_loadable(model)
    model.hparams["generator"]["_target_"] = "torch.nn.Identity"
    with pytest.raises(ValueError, match=r"CycleGAN's settings \(generator._target_\): its network class "
                                         r"torch.nn.Identity is not a network of src.nets: .*Move the class there"):
        check_loadable(model)

    plain = {k: v for k, v in cfg.model.items() if k != "_target_"}
    with pytest.raises(ValueError, match=r"CycleGANWithContrast.* is not a model of src.models"):
        check_loadable(CycleGANWithContrast(contrast_weight=1.0, **plain))
    monkeypatch.setattr("src.utils.checkpoint_loading.model_class", lambda target, where: CycleGANWithContrast)
    with pytest.raises(ValueError, match=r"CycleGANWithContrast's saved hyperparameters cannot build it again "
                                         r"\(missing a required argument: 'contrast_weight'\).*self.save_hyperparameters"):
        check_loadable(CycleGANWithContrast(contrast_weight=1.0, **plain))


def test_an_added_models_own_loss_settings_are_declared_not_patched_in(added_model_cfg, monkeypatch):
    """`loss.` takes the shared keys and those a model names in `loss_settings`; any other is refused."""
    from omegaconf import OmegaConf, open_dict

    from tests.extension.one_way_gan import OneWayGAN

    cfg = added_model_cfg()
    with open_dict(cfg):
        cfg.loss.nce = {"tau": 0.07}
    settings = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "_target_"}
    with pytest.raises(ValueError, match=r"loss.nce is not a setting there"):
        OneWayGAN(**settings)
    monkeypatch.setattr(OneWayGAN, "loss_settings", ("nce",))
    assert OneWayGAN(**settings).loss_cfg["nce"] == {"tau": 0.07}


def test_an_added_models_sample_grid_shows_each_direction_it_translates(added_model_cfg, monkeypatch):
    """The default grid's rows follow the directions the model translates: a BtoA-only model's
    first grid raised in mid-run (it translated AtoB), a two-way one showed half its work."""
    import hydra

    from tests.extension.one_way_gan import OneWayGAN

    model = hydra.utils.instantiate(added_model_cfg().model, _recursive_=False).eval()
    batch = {"A": torch.rand(2, 3, 32, 32) * 2 - 1, "B": torch.rand(2, 3, 32, 32) * 2 - 1}
    assert list(model.sample_images(batch)) == ["real_A", "fake_B", "real_B"]

    def only(direction):
        def generator_for(self, asked):
            if asked != direction:
                raise ValueError(f"translates {direction} only")
            return self.G
        return generator_for

    monkeypatch.setattr(OneWayGAN, "generator_for", only("BtoA"))
    rows = model.sample_images(batch)
    assert list(rows) == ["real_B", "fake_A", "real_A"] and rows["real_B"] is batch["B"]
    monkeypatch.setattr(OneWayGAN, "generator_for", lambda self, direction: self.G)
    assert list(model.sample_images(batch)) == ["real_A", "fake_B", "real_B", "fake_A"]


def test_a_generator_with_several_outputs_is_told_to_override_translation_forward(train_cfg, monkeypatch):
    """A generator returning (image, mask), as attention GANs' do: the first batch stopped with
    "'tuple' object has no attribute 'shape'" deep in the size check."""
    import hydra

    from src.models.size_check import meta_translation
    model = hydra.utils.instantiate(train_cfg("model=cyclegan").model, _recursive_=False)
    plain = type(model).translation_forward
    monkeypatch.setattr(type(model), "translation_forward", lambda self, x, d: (plain(self, x, d), x))
    with pytest.raises(TypeError, match=r"CycleGAN\.translation_forward\(x, 'AtoB'\) returns a tuple, not the "
                                        r"translated images: .*needs translation_forward overridden"):
        meta_translation(model, "AtoB", 1, 32, 32)
    monkeypatch.undo()
    assert tuple(meta_translation(model, "AtoB", 1, 32, 32).shape) == (1, 3, 32, 32)


def test_a_model_config_without_model_name_is_refused_before_the_run_starts(train_cfg):
    """It failed once the data and model were built, at the tags' interpolation, with an
    InterpolationKeyError naming neither the file nor the key to add, and left a start record."""
    from omegaconf import open_dict
    cfg = train_cfg("model=cyclegan", "max_iters=1")
    with open_dict(cfg):
        del cfg["model_name"]
    with pytest.raises(ValueError, match=r"The model config sets no model_name \(conf/model/<name>\.yaml of "
                                         r"src\.models\.cyclegan\.CycleGAN\): add `model_name: <name>`"):
        run_training(cfg)
    assert not (Path(cfg.paths.output_dir) / "starts").exists()


class CycleGANWithMode(CycleGAN):   # a setting added to a model after some of its runs
    def __init__(self, distance_mode: str = "self", **settings):
        super().__init__(**settings)
        self.save_hyperparameters()


def test_a_setting_added_to_a_class_says_how_its_older_checkpoints_load(train_cfg, tmp_path, monkeypatch):
    """A researcher adds a defaulted setting to their model: every older checkpoint of it failed
    to load with "the file was altered, or the class changed since", naming neither the setting
    nor upgraded_hparams, the one place that loads them."""
    import hydra

    from src.utils.checkpoint_loading import load_model
    model = hydra.utils.instantiate(train_cfg("model=cyclegan").model, _recursive_=False)
    ckpt = tmp_path / "older.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict(), "global_step": 0,
                "model_class": "src.models.cyclegan.CycleGANWithMode"}, ckpt)
    monkeypatch.setattr("src.utils.checkpoint_loading.model_class", lambda target, where: CycleGANWithMode)
    with pytest.raises(ValueError, match=r"the class takes \['distance_mode'\], which the file does not record: .*"
                                         r"a rule in upgraded_hparams \(src/models/checkpoint_fit.py\)"):
        load_model(ckpt)


class ShapesElsewhere(ShapesDataModule):   # a researcher's DataModule outside src/data/
    pass


def test_a_datamodule_outside_src_data_is_refused_when_its_run_starts(train_cfg):
    """It trained, then eval.py refused every checkpoint of the run: it rebuilds the data from the
    run's config and builds DataModules of src.data only."""
    cfg = train_cfg("model=cyclegan", "max_iters=1")
    cfg.data._target_ = f"{__name__}.ShapesElsewhere"
    with pytest.raises(ValueError, match=r"The run's data config \(data._target_\): its data class (tests\.)?test_extension\."
                                         r"ShapesElsewhere is not a DataModule of src.data: eval.py could not rebuild "
                                         r"the run's data .*Move the class there"):
        run_training(cfg)
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))
