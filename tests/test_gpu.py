"""CUDA checks, run on GPU machines (skipped elsewhere): every model trains in each precision,
fp16 keeps one finite loss scale per player, bf16 computes in bf16, a resumed GPU run continues
bit for bit, and FID/KID on the GPU agree with the CPU on the same images."""
import math

import hydra
import pytest
import pytorch_lightning as pl
import torch

from conftest import (DATA_OF, MODELS, NO_EVALUATION, assert_resume_continues_the_run, changed, finite_train_losses,
                      generator_output_dtypes, record_generator_outputs, snapshot)
from src.metrics.features import build_feature_extractor
from src.metrics.fid_kid import FidKidScorer
from src.models.loss_scaling import PlayerGradScalers
from src.utils.run import build_trainer_kwargs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("model_name", MODELS)
def test_every_model_trains_on_cuda(train_cfg, model_name, precision):
    cfg = train_cfg(f"model={model_name}", f"data={DATA_OF[model_name]}", "trainer=gpu",
                    f"trainer.precision={precision}", "max_iters=3", "data.max_dataset_size=3", *NO_EVALUATION)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    start = {name: snapshot(modules) for name, modules in model.player_modules().items()}
    output_dtypes = generator_output_dtypes(model)
    # Read during training: Lightning moves the model back to the CPU when fit ends.
    seen = record_generator_outputs(model, lambda output: (output.device.type, model.steps_in_backward))
    trainer = pl.Trainer(**build_trainer_kwargs(cfg, model), logger=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))

    assert set(seen) == {("cuda", False)}   # "auto": steps after backward on a GPU
    assert trainer.global_step == 3 * model.optimizer_steps_per_iter
    finite_train_losses(trainer)
    scalers = trainer.precision_plugin.scaler if precision == "16-mixed" else None
    for name, modules in model.player_modules().items():
        assert all(torch.isfinite(p).all() for m in modules for p in m.parameters()), f"{name} has non-finite weights"
        moved = bool(changed(start[name], modules))
        # fp16: a step whose scaled gradients overflowed is skipped by design and backs its
        # player's scale off from the initial 2**16; every other step must move the player.
        backed_off = scalers is not None and any(
            name in key.split("+") and s.get_scale() < 2.0 ** 16 for key, s in scalers.scalers.items())
        assert moved or backed_off, f"{name} never moved"
    expected_dtype = {"32-true": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[precision]
    assert expected_dtype in output_dtypes
    if precision == "16-mixed":
        assert isinstance(scalers, PlayerGradScalers) and len(scalers.scalers) == 2
        assert all(math.isfinite(s.get_scale()) and s.get_scale() > 0 for s in scalers.scalers.values())
    else:
        assert model.grad_scalers is None


def test_resume_on_cuda_continues_the_same_run(train_cfg, tmp_path):
    """pix2pix on the GPU, resumed mid-epoch, ends on the same weights as the straight run. Its
    dropout draws from the CUDA generator, so the checkpoint must bring that state back too.
    `trainer.deterministic` makes cuDNN's arithmetic repeatable (pix2pix has no layer without a
    deterministic CUDA kernel; CycleGAN's reflection padding has none)."""
    common = ["model=pix2pix", "data=shapes_paired", "data.max_dataset_size=4", "seed=7", "trainer=gpu",
              "trainer.deterministic=true", "model.lr_schedule.unit=iteration", "model.lr_schedule.constant=1",
              "model.lr_schedule.decay=4", *NO_EVALUATION]
    try:
        assert_resume_continues_the_run(train_cfg, tmp_path, common)
    finally:   # Lightning switches deterministic algorithms on for the whole process
        torch.use_deterministic_algorithms(False)


def test_fid_kid_on_cuda_match_the_cpu(monkeypatch):
    # TF32 convolutions would move the features by ~1e-3 relative: compare exact arithmetic.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(24, 3, 32, 32, generator=generator) * 2 - 1
    fake = (0.5 * real + 0.4 + 0.2 * torch.randn(24, 3, 32, 32, generator=generator)).clamp(-1, 1)
    scores = {}
    for device in ("cpu", "cuda"):
        scorer = FidKidScorer(build_feature_extractor("random_cnn"), kid_subset_size=12).to(device)
        for start in range(0, 24, 8):
            scorer.update(real=real[start:start + 8].to(device), fake=fake[start:start + 8].to(device))
        scores[device] = scorer.compute()
    assert scores["cpu"]["fid"] > 1.0 and scores["cpu"]["kid_x100"] > 1.0  # sets that really differ
    assert scores["cuda"]["fid"] == pytest.approx(scores["cpu"]["fid"], rel=1e-3)
    assert scores["cuda"]["kid_x100"] == pytest.approx(scores["cpu"]["kid_x100"], rel=1e-3)


@pytest.mark.parametrize("penalty", [("loss=wgangp",), ("loss.weights.r1=10",)])
def test_recurrent_critics_take_their_gradient_penalties_on_cuda(train_cfg, penalty):
    """A penalty differentiates the critic's input gradient; cuDNN's LSTM has no double backward
    ("Double backwards is not supported for CuDNN RNNs"), so RGAN's penalised critic steps run
    the native CUDA kernels."""
    cfg = train_cfg("model=rgan", *penalty, "trainer=gpu", "max_iters=2", *NO_EVALUATION)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    trainer = pl.Trainer(**build_trainer_kwargs(cfg, model), logger=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))
    finite_train_losses(trainer)
    assert any(name.endswith(("gp", "r1")) for name in trainer.callback_metrics)


def test_a_gpu_models_export_passes_its_check_with_tf32_on(train_cfg, tmp_path, monkeypatch):
    """The exported graph runs on the CPU; the reference it is checked against was the GPU's,
    whose TF32 convolutions (torch's default for cuDNN) differ by ~1e-3 at a paper-size
    generator: the export is traced and checked on the CPU."""
    from src.utils.export import export_translation
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    cfg = train_cfg("model=cyclegan", "model.generator.ngf=64", "model.generator.n_blocks=9")
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False).cuda()
    report = export_translation(model, "AtoB", "torchscript", tmp_path, size=256)
    # fp32 on both sides: reorderings only (the CPU's Winograd layers against the graph's
    # convolutions: 3e-5 on this model), where TF32's are ~1e-3
    assert report["checked"] and report["max_difference"] < 2e-4
    assert "cuda" not in str(torch.jit.load(report["path"], map_location="cpu").inlined_graph)
    assert next(model.G_A.parameters()).is_cuda   # given back where it was


def test_the_logged_peak_gpu_memory_is_the_runs_own(train_cfg):
    """torch keeps one high-water mark per process: a multirun's later jobs (or a notebook's next
    run) reported an earlier job's larger peak."""
    earlier = torch.empty(2**30, dtype=torch.uint8, device="cuda")   # an earlier job's 1 GiB
    del earlier
    cfg = train_cfg("model=cyclegan", "data=shapes", "trainer=gpu", "max_iters=2", *NO_EVALUATION)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    throughput = hydra.utils.instantiate(cfg.callbacks.throughput)
    trainer = pl.Trainer(**{**build_trainer_kwargs(cfg, model), "logger": False, "enable_checkpointing": False,
                            "callbacks": [throughput], "log_every_n_steps": 1})
    trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))
    assert 0 < float(trainer.callback_metrics["memory/peak_gpu_gb"]) < 0.5


def test_the_ema_leaves_the_whole_model_on_the_cpu_after_a_gpu_fit(train_cfg):
    """Lightning moves the model to the CPU before the callbacks' teardown, while the average is
    swapped in: the training weights came back from the stash on the GPU, and the model left
    fit split across devices, its generators holding GPU memory."""
    from src.callbacks.ema import GeneratorEMA
    cfg = train_cfg("model=cyclegan", "data=shapes", "trainer=gpu", "max_iters=2", *NO_EVALUATION)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    ema = GeneratorEMA(decay=0.5)
    trainer = pl.Trainer(**{**build_trainer_kwargs(cfg, model), "logger": False, "enable_checkpointing": False,
                            "callbacks": [ema]})
    trainer.fit(model, datamodule=hydra.utils.instantiate(cfg.data))
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert {a.device.type for a in ema.averaged} == {"cpu"}
    # the image pools' fakes too: plain lists, which Lightning's move skips
    assert model.pools and {image.device.type for pool in model.pools.values() for image in pool.images} == {"cpu"}
