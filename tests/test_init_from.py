"""`init_from`: a new run that starts from another run's networks (src/utils/initial_weights.py)."""
from __future__ import annotations

import logging
import shutil

import hydra
import pytest
import torch

from src.utils.initial_weights import start_from_checkpoint
from src.utils.run import run_training
from tests.conftest import NO_EVALUATION, last_checkpoint


def build_model(cfg):
    return hydra.utils.instantiate(cfg.model, _recursive_=False)


def save_checkpoint(path, model, **extra) -> str:
    """A file holding what src/train.py's checkpoints hold of the networks."""
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "model_class": f"{type(model).__module__}.{type(model).__qualname__}", "global_step": 6, **extra}, path)
    return str(path)


def test_a_started_run_trains_the_checkpoints_networks_from_iteration_zero(train_cfg, tmp_path):
    source_cfg = train_cfg("max_iters=2", *NO_EVALUATION)
    source_cfg.paths.output_dir = str(tmp_path / "source")
    source = last_checkpoint(source_cfg)
    source_file = tmp_path / "source" / "checkpoints" / "last.ckpt"

    # The command line a requeued job runs again: ckpt_path=auto finds nothing yet, so it starts.
    cfg = train_cfg("max_iters=1", f"init_from={source_file}", "ckpt_path=auto", *NO_EVALUATION)
    started = last_checkpoint(cfg)
    model = build_model(cfg)
    assert started["global_step"] == model.optimizer_steps_per_iter   # iteration 0 on, not the source's 2
    for state in started["optimizer_states"]:   # new optimizers: one Adam step each
        assert state["state"] and all(int(s["step"]) == 1 for s in state["state"].values())
    # One Adam step moves a weight by at most the learning rate: every parameter is the source's
    # plus at most one step (a fresh draw is ~0.02 away), and the step did move them.
    lr = cfg.model.optimizer.lr
    parameters = [name for name, _ in model.named_parameters()]
    moved = {name: float((started["state_dict"][name] - source["state_dict"][name]).abs().max()) for name in parameters}
    assert max(moved.values()) <= lr * 1.001, moved
    assert sum(value > 0 for value in moved.values()) > len(parameters) // 2, moved

    # A requeued job runs the same command line with ckpt_path=auto: it continues its own run
    # and reads nothing of init_from (here deleted since).
    shutil.rmtree(tmp_path / "source")
    resumed = last_checkpoint(train_cfg("max_iters=2", f"init_from={source_file}", "ckpt_path=auto", *NO_EVALUATION))
    assert resumed["global_step"] == 2 * model.optimizer_steps_per_iter
    for state in resumed["optimizer_states"]:
        assert all(int(s["step"]) == 2 for s in state["state"].values())


def test_a_missing_init_from_stops_the_run_before_any_work(train_cfg, tmp_path, monkeypatch):
    import src.utils.run as run_module
    built = []
    monkeypatch.setattr(run_module.hydra.utils, "instantiate", lambda *a, **k: built.append(a) or pytest.fail("built"))
    with pytest.raises(FileNotFoundError, match="init_from=.*nowhere.ckpt: no such checkpoint file"):
        run_training(train_cfg(f"init_from={tmp_path}/nowhere.ckpt"))
    assert not built   # before the data and the model are built
    with pytest.raises(ValueError, match="init_from_weights='best': choose one of trained, ema"):
        run_training(train_cfg(f"init_from={tmp_path}/nowhere.ckpt", "init_from_weights=best"))


def test_a_run_started_from_the_ema_trains_from_the_averaged_generators(train_cfg, tmp_path):
    """init_from_weights=ema through a run: the generators start from the averages, the
    discriminators from the trained weights, and the run's own EMA from what was loaded."""
    cfg = train_cfg()
    source = build_model(cfg)
    averaged = {key: torch.full_like(value, 0.5) for key, value in source.state_dict().items()
                if key.startswith(("G_A.", "G_B.")) and value.is_floating_point()}
    path = save_checkpoint(tmp_path / "ema.ckpt", source, ema={"state_dict": averaged})
    started = last_checkpoint(train_cfg(f"init_from={path}", "init_from_weights=ema", "callbacks.ema.enabled=true",
                                        "max_iters=1", *NO_EVALUATION))
    lr = cfg.model.optimizer.lr
    for key, value in source.state_dict().items():
        expected = averaged.get(key, value)
        if key in dict(source.named_parameters()):
            assert float((started["state_dict"][key] - expected).abs().max()) <= lr * 1.001, key
    run_average = started["ema"]["state_dict"]
    assert run_average and all(float((run_average[key] - averaged[key]).abs().max()) <= lr * 1.001
                               for key in run_average)


def test_the_ema_choice_takes_the_averaged_generators_and_the_trained_discriminators(train_cfg, tmp_path):
    cfg = train_cfg()
    source = build_model(cfg)
    generator_keys = [key for key in source.state_dict() if key.startswith("G_A.")]
    averaged = {key: torch.full_like(source.state_dict()[key], 0.5) for key in generator_keys}
    path = save_checkpoint(tmp_path / "ema.ckpt", source, ema={"state_dict": averaged})

    model = build_model(cfg)
    start_from_checkpoint(model, path, "ema")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], averaged[key]) for key in generator_keys)
    assert all(torch.equal(loaded[key], value) for key, value in source.state_dict().items() if key not in averaged)

    trained = build_model(cfg)
    start_from_checkpoint(trained, path, "trained")
    assert all(torch.equal(trained.state_dict()[key], value) for key, value in source.state_dict().items())


def test_checkpoints_that_do_not_fit_are_refused_naming_the_setting(train_cfg, tmp_path):
    cfg = train_cfg()
    source = build_model(cfg)
    no_ema = save_checkpoint(tmp_path / "plain.ckpt", source)
    with pytest.raises(ValueError, match="init_from_weights=ema: the run that wrote init_from=.*kept no EMA"):
        start_from_checkpoint(build_model(cfg), no_ema, "ema")

    other_class = save_checkpoint(tmp_path / "other.ckpt", source, model_class="src.models.pix2pix.Pix2Pix")
    with pytest.raises(ValueError, match=r"init_from=.*holds a Pix2Pix, and this run builds a CycleGAN"):
        start_from_checkpoint(build_model(cfg), other_class)
    for gone in ("src.models.renamed.Since", "elsewhere.models.Since"):   # a class renamed since, or of elsewhere
        with pytest.raises(ValueError, match=r"init_from=.*holds a Since, and this run builds a CycleGAN"):
            start_from_checkpoint(build_model(cfg), save_checkpoint(tmp_path / "gone.ckpt", source, model_class=gone))

    # A variant of the model (a subclass: another loss, say) starts from the model's networks; a
    # class of another lineage is refused above.
    from src.models.cyclegan import CycleGAN

    class CycleGANVariant(CycleGAN):
        pass

    variant = build_model(cfg)
    variant.__class__ = CycleGANVariant
    start_from_checkpoint(variant, no_ema)
    assert all(torch.equal(variant.state_dict()[key], value) for key, value in source.state_dict().items())
    wider = build_model(train_cfg("model.generator.ngf=8"))
    with pytest.raises(ValueError, match=r"init_from=.*do not fit the CycleGAN.*tensors of other shapes"):
        start_from_checkpoint(wider, no_ema)


def test_a_conditional_checkpoint_that_does_not_fit_names_the_class_count(train_cfg, tmp_path):
    """The class embeddings are network shapes too: the refusal names model.num_classes."""
    conditional = build_model(train_cfg("model=cgan"))
    unconditional = build_model(train_cfg("model=cgan", "model.num_classes=0"))
    with pytest.raises(ValueError, match=r"do not fit the NoiseGAN.*network settings \(model.generator.\*, "
                                         r"model.discriminator.\*, model.num_classes, data.input_nc"):
        start_from_checkpoint(unconditional, save_checkpoint(tmp_path / "cgan.ckpt", conditional))


def test_settings_that_differ_from_the_source_run_are_logged(train_cfg, tmp_path, caplog):
    cfg = train_cfg()
    source = build_model(cfg)
    hparams = dict(source.hparams)
    hparams["loss"] = {**hparams["loss"], "weights": {**hparams["loss"]["weights"], "cycle": 0.123}}
    path = save_checkpoint(tmp_path / "source.ckpt", source, hyper_parameters=hparams)
    with caplog.at_level(logging.INFO, logger="src.utils.initial_weights"):
        start_from_checkpoint(build_model(cfg), path, data_settings={})
    assert " loss.weights.cycle=0.123 ->" in caplog.text and "model.loss." not in caplog.text   # (the override's key)
    assert "its iteration 3" in caplog.text   # global_step 6 at two optimizer steps per iteration


def test_a_default_changed_since_the_checkpoint_is_among_the_settings_that_differ(train_cfg, tmp_path, caplog):
    """A run from before data.unpaired_sampling sampled as CycleGAN's loader: a U-GAT-IT run
    started from it samples balanced, which the list of settings that differ says."""
    model = build_model(train_cfg("model=cyclegan"))
    source = save_checkpoint(tmp_path / "old.ckpt", model, datamodule_hyper_parameters={"crop_size": 32})
    with caplog.at_level(logging.INFO):
        start_from_checkpoint(model, source, data_settings={"crop_size": 32, "unpaired_sampling": "balanced"})
    assert ("Settings that differ from the run that wrote init_from: data.unpaired_sampling='cyclegan' -> "
            "'balanced'") in caplog.text
