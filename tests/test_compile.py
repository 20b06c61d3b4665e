"""`compile`: torch.compile of the players' networks in training (src/callbacks/compile_networks.py)."""
import os
import re
import shutil
from types import SimpleNamespace

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
import pytest  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from conftest import DATA_OF, MODELS, NO_EVALUATION, snapshot  # noqa: E402
from src.callbacks.compile_networks import CompileNetworks, compile_networks  # noqa: E402
from src.utils.run import build_callbacks, build_trainer_kwargs  # noqa: E402


@pytest.fixture
def compiled_modes(monkeypatch) -> list:
    """torch.compile replaced by a stand-in that returns the function as it is and records the
    mode of each call here (None: torch.compile's default)."""
    modes = []
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None: modes.append(mode) or fn)
    return modes


def test_compile_networks_passes_the_mode_to_every_players_network(compiled_modes):
    modes = compiled_modes

    class Players:
        def player_modules(self):
            return {"G": [nn.Linear(2, 2), nn.Linear(2, 2)], "D": [nn.Linear(2, 1)]}

    compile_networks(Players(), "reduce-overhead")
    assert modes == ["reduce-overhead"] * 3
    modes.clear()
    compile_networks(Players(), True)   # torch.compile's own default mode
    assert modes == [None] * 3


def test_an_unknown_compile_mode_is_refused_with_its_key(train_cfg):
    with pytest.raises(ValueError, match=r"compile='fastest' must be one of false, true, default, reduce-overhead"):
        build_callbacks(train_cfg("compile=fastest"), None)
    assert not any(isinstance(cb, CompileNetworks) for cb in build_callbacks(train_cfg(), None))


@pytest.mark.parametrize("overrides, named", [
    (["model=wgangp", "data=shapes_labelled"], "loss=wgangp's gradient penalty"),
    (["model=cyclegan", "loss=wgangp"], "loss=wgangp's gradient penalty"),
    (["model=dcgan", "data=shapes_labelled", "loss=vanilla", "loss.weights.r1=10"], "the R1 penalty (loss.weights.r1)"),
])
def test_compile_refuses_a_penalty_on_the_discriminators_gradient(train_cfg, overrides, named):
    """torch.compile has no double backward: a gradient penalty would fail at the first step with
    torch's words; the run stops before it, naming the term and the setting."""
    cfg = train_cfg(*overrides, "compile=true", *NO_EVALUATION)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    trainer = compiling_trainer(cfg, model)
    with pytest.raises(ValueError, match=f"compile=true cannot train {re.escape(named)}.*Set compile=false"):
        trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))


def compiling_trainer(cfg, model) -> pl.Trainer:
    """A trainer for `cfg` whose only callback is the compiling one the run builds from it (if any)."""
    compiling = [cb for cb in build_callbacks(cfg, None) if isinstance(cb, CompileNetworks)]
    return pl.Trainer(**build_trainer_kwargs(cfg, model), callbacks=compiling, logger=False,
                      enable_checkpointing=False)


def fit(train_cfg, model_name, *overrides, iterations=2, optimizer=()):
    """A tiny `model_name` trained `iterations` iterations with the compiling callback the run
    builds from the config (if any); its model, trainer, the losses of its last iteration, and
    each player's weights before training."""
    cfg = train_cfg(f"model={model_name}", f"data={DATA_OF[model_name]}", f"max_iters={iterations}",
                    "data.max_dataset_size=4", *optimizer,
                    "model.fast_conv=false", *NO_EVALUATION, *overrides)
    pl.seed_everything(3)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    start = {name: snapshot(modules) for name, modules in model.player_modules().items()}
    trainer = compiling_trainer(cfg, model)
    trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))
    losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    return model, trainer, losses, start


@pytest.mark.parametrize("mode, marked", [("reduce-overhead", True), ("max-autotune", True),
                                           ("max-autotune-no-cudagraphs", False)])
def test_cuda_graph_modes_mark_every_iteration_and_compile_once(train_cfg, monkeypatch, compiled_modes, mode,
                                                                marked):
    """With CUDA graphs (reduce-overhead, and max-autotune, which records them too) each training
    iteration is marked as a new step for them (on a CPU the mark does nothing; here it is
    counted), and the networks are compiled once per fit."""
    compiled, marks = compiled_modes, []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    resets = []
    monkeypatch.setattr(torch.compiler, "reset", lambda: resets.append(1))
    model, *_ = fit(train_cfg, "pix2pix", f"compile={mode}", iterations=3)
    assert len(marks) == (3 if marked else 0)
    assert compiled == [mode] * sum(len(m) for m in model.player_modules().values())
    # The fit's start and end drop compiled code: each run of the process starts afresh.
    assert resets == [1, 1] and not any("forward" in vars(m) for ms in model.player_modules().values() for m in ms)
    compiled.clear()
    compile_networks(model, mode)
    compile_networks(model, mode)   # compiled once, however often asked
    assert compiled == [mode] * sum(len(m) for m in model.player_modules().values())


def test_networks_run_compiled_while_training_and_eagerly_when_sampling(train_cfg, monkeypatch):
    """Training iterations call the compiled forward; translation (eval mode, as the sampling and
    evaluation callbacks call it, here with pix2pix's dropout kept on inside) the networks' own."""
    calls = []

    def recording_compile(fn, mode=None):
        def compiled(*args, **kwargs):
            calls.append(fn)
            return fn(*args, **kwargs)
        return compiled

    monkeypatch.setattr(torch, "compile", recording_compile)
    model, *_ = fit(train_cfg, "pix2pix", "compile=true", iterations=2)
    assert {fn.__self__ for fn in calls} == {model.G, model.D}
    calls.clear()
    compile_networks(model)   # as inside a fit (its end drops the compiled forwards)
    size = train_cfg("model=pix2pix", "data=shapes_paired").data.size
    image = torch.rand(1, 3, size, size) * 2 - 1
    model.translate(image, "AtoB")
    assert calls == []
    model.G.train()
    model.G(image)
    assert [fn.__self__ for fn in calls] == [model.G]


def trainer_on(device: str):
    """What the callback's setup reads of a trainer: the device its strategy trains on."""
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))


@pytest.mark.parametrize("model_name, player", [("ugatit", "discriminators"), ("nicegan", "heads")])
def test_cuda_graphs_refuse_spectral_norm_on_a_gpu(train_cfg, compiled_modes, model_name, player):
    """U-GAT-IT and NICE-GAN trained differently under CUDA graphs than in eager mode (measured on
    an H200): on a GPU the fit stops before compiling, naming the networks and the modes that
    work. On a CPU (no CUDA graphs there) and in a mode without them, the same model compiles."""
    compiled = compiled_modes
    model = hydra.utils.instantiate(train_cfg(f"model={model_name}").model, _recursive_=False)
    for mode in ("reduce-overhead", "max-autotune"):
        with pytest.raises(ValueError, match=rf"compile={mode} records CUDA graphs, and networks with spectral "
                                             rf"norm \({player} of {type(model).__name__}\).*Set compile=true or "
                                             rf"compile=max-autotune-no-cudagraphs"):
            CompileNetworks(mode).setup(trainer_on("cuda"), model, "fit")
    assert compiled == []
    CompileNetworks("reduce-overhead").setup(trainer_on("cpu"), model, "fit")
    assert compiled
    compiled.clear()
    other = hydra.utils.instantiate(train_cfg(f"model={model_name}").model, _recursive_=False)
    CompileNetworks("max-autotune-no-cudagraphs").setup(trainer_on("cuda"), other, "fit")
    assert compiled


def test_cuda_graphs_accept_networks_without_spectral_norm_on_a_gpu(train_cfg, compiled_modes):
    model = hydra.utils.instantiate(train_cfg("model=cyclegan").model, _recursive_=False)
    CompileNetworks("reduce-overhead").setup(trainer_on("cuda"), model, "fit")
    assert compiled_modes == ["reduce-overhead"] * 4


ON_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Inductor compiles CPU kernels with a C++ compiler (and Python's headers); a machine without one
# cannot run these, which is no defect of the code under test.
WITH_CXX = pytest.mark.skipif(not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")),
                              reason="torch.compile on a CPU needs a C++ compiler")
# Why the refusal exists, kept as a test: while it fails, the refusal is needed; an XPASS in the
# report says CUDA graphs (or exact float32, for NICE-GAN's 0.04%) have caught up with eager mode.
REFUSED_CUDA_GRAPHS = pytest.mark.xfail(reason="trained differently under CUDA graphs than in eager mode on an "
                                               "H200, hence the refusal", strict=False)


@pytest.mark.parametrize("model_name, mode, device", [
    *[pytest.param(model_name, "true", "cpu", marks=WITH_CXX) for model_name in MODELS],
    # CUDA graphs for the models without spectral norm; the others compile in the default mode on
    # a GPU, and are refused CUDA graphs (test above) for the failure the last two entries keep
    *[pytest.param(model_name, "reduce-overhead", "cuda", marks=ON_GPU) for model_name in ("cyclegan", "pix2pix")],
    *[pytest.param(model_name, "true", "cuda", marks=ON_GPU) for model_name in ("ugatit", "nicegan")],
    *[pytest.param(model_name, "reduce-overhead", "cuda", marks=[ON_GPU, REFUSED_CUDA_GRAPHS])
      for model_name in ("ugatit", "nicegan")],
])
def test_compiled_networks_train_as_the_eager_ones_do(train_cfg, monkeypatch, model_name, mode, device):
    """Two iterations of a tiny model with its networks compiled (inductor on a CPU; on a GPU, CUDA
    graphs or, with spectral norm, Triton kernels alone) end with the losses of the same run in
    eager mode, to float rounding, and each player's weights moved as in that run: the compiled
    forward is the module's own, so the optimizers update the same parameters with the same
    gradients. (Inductor draws dropout's masks from its own generator unless told to use torch's,
    as here: otherwise the runs differ by their masks, as two seeds would.)"""
    import torch._inductor.config as inductor_config
    # cuDNN's repeatable algorithms, not timed picks; "warn", as reflection padding's CUDA backward
    # has no deterministic kernel and `true` would refuse it
    on_device = ["trainer=gpu", "trainer.deterministic=warn"] if device == "cuda" else []
    # Exact float32 products: TF32 rounds each to ~1e-3, and inductor's layouts (channels-last
    # convolutions) pick other kernels than eager mode, whose TF32 roundings then differ.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    # the refused combinations run all the same, to show whether the refusal is still needed
    monkeypatch.setattr(CompileNetworks, "refuse_spectral_norm_in_cuda_graphs", lambda self, model: None)
    matmul_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    # Plain gradient descent: Adam's first step is +-lr whatever a gradient's size, and turns the
    # rounding of a near-zero gradient (a bias before instance norm) into opposite steps.
    sgd = ("model.optimizer.type=sgd", "~model.optimizer.betas", "model.optimizer.lr=0.01")
    # config.patch, not monkeypatch: deleting a config attribute on undo hides it for good
    with inductor_config.patch(fallback_random=True):
        try:
            eager, _, eager_losses, start = fit(train_cfg, model_name, *on_device, optimizer=sgd)
            graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            compiled, _, compiled_losses, _ = fit(train_cfg, model_name, f"compile={mode}", *on_device,
                                                  optimizer=sgd)
            # the generator and the discriminator were compiled: a graph each at least
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= graphs_before + 2
        finally:
            torch._dynamo.reset()   # later tests build other networks: no compiled code kept for them
            torch.use_deterministic_algorithms(False)   # Lightning set it for the whole process
            torch.set_float32_matmul_precision(matmul_precision)
    assert eager_losses.keys() == compiled_losses.keys() and eager_losses
    for name, value in eager_losses.items():
        assert compiled_losses[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    for name in eager.player_modules():
        # The whole update, not each weight: a bias in front of an instance norm has a true
        # gradient of zero, and its update is rounding noise in both runs (0.4% of CycleGAN's
        # generators' update after two iterations), where a lost or extra gradient term would
        # move the update by its own size.
        eager_update = update_of(start[name], eager.player_modules()[name])
        compiled_update = update_of(start[name], compiled.player_modules()[name])
        assert eager_update.norm() > 0, f"{name} never moved"
        assert (compiled_update - eager_update).norm() <= 1e-2 * eager_update.norm(), name


def update_of(start: dict[str, torch.Tensor], modules) -> torch.Tensor:
    """All of the modules' weights' change since `start`, as one vector."""
    now = snapshot(modules)
    return torch.cat([(now[key] - start[key]).flatten() for key in start])
