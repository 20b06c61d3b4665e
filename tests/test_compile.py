"""`compile`: torch.compile of the players' networks in training (src/callbacks/compile_networks.py)."""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
import pytest  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from conftest import NO_EVALUATION, snapshot  # noqa: E402
from src.callbacks.compile_networks import CompileNetworks, compile_networks  # noqa: E402
from src.utils.run import build_callbacks, build_trainer_kwargs  # noqa: E402


def test_compile_networks_passes_the_mode_to_every_players_network(monkeypatch):
    modes = []
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None: modes.append(mode) or fn)

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


def fit_pix2pix(train_cfg, *overrides, iterations=2):
    """A tiny pix2pix trained `iterations` iterations with the compiling callback the run builds
    from the config (if any); its model, trainer and the losses of its last iteration."""
    cfg = train_cfg("model=pix2pix", "data=shapes_paired", f"max_iters={iterations}", "data.max_dataset_size=4",
                    "model.fast_conv=false", *NO_EVALUATION, *overrides)
    pl.seed_everything(3)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    compiling = [cb for cb in build_callbacks(cfg, None) if isinstance(cb, CompileNetworks)]
    trainer = pl.Trainer(**build_trainer_kwargs(cfg, model), callbacks=compiling, logger=False,
                         enable_checkpointing=False)
    trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))
    losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    return model, trainer, losses


def test_reduce_overhead_marks_every_iteration_and_compiles_once(train_cfg, monkeypatch):
    """With CUDA graphs each training iteration is marked as a new step for them (on a CPU the
    mark does nothing; here it is counted), and the networks are compiled once per fit."""
    compiled, marks = [], []
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None: compiled.append(mode) or fn)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    model, trainer, _ = fit_pix2pix(train_cfg, "compile=reduce-overhead", iterations=3)
    assert len(marks) == 3
    assert compiled == ["reduce-overhead"] * sum(len(m) for m in model.player_modules().values())


@pytest.mark.parametrize("mode, device", [
    ("true", "cpu"),
    pytest.param("reduce-overhead", "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                       reason="CUDA graphs need a CUDA GPU")),
])
def test_compiled_networks_train_as_the_eager_ones_do(train_cfg, mode, device):
    """Two iterations of a tiny pix2pix with its networks compiled (inductor on a CPU, CUDA
    graphs on a GPU) end with the losses and weights of the same run in eager mode, to float
    rounding: the compiled forward is the module's own, so the optimizers update the same
    parameters. (Inductor draws dropout's masks from its own generator unless told to use
    torch's, as here: otherwise the runs differ by their masks, as two seeds would.)"""
    import torch._inductor.config as inductor_config
    on_device = ["trainer=gpu", "trainer.deterministic=true"] if device == "cuda" else []
    # config.patch, not monkeypatch: deleting a config attribute on undo hides it for good
    with inductor_config.patch(fallback_random=True):
        eager, _, eager_losses = fit_pix2pix(train_cfg, *on_device)
        graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        try:
            compiled, _, compiled_losses = fit_pix2pix(train_cfg, f"compile={mode}", *on_device)
            # the generator and the discriminator were compiled: a graph each at least
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= graphs_before + 2
        finally:
            torch._dynamo.reset()   # later tests build other networks: no compiled code kept for them
    assert eager_losses.keys() == compiled_losses.keys() and eager_losses
    for name, value in eager_losses.items():
        assert compiled_losses[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    for name in eager.player_modules():
        before, after = snapshot(eager.player_modules()[name]), snapshot(compiled.player_modules()[name])
        for key in before:
            torch.testing.assert_close(after[key], before[key], rtol=1e-4, atol=1e-5, msg=f"{name} {key}")
