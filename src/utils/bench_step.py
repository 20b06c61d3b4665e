"""Time full training iterations of one model configuration, through Lightning's own loop.

The model is built from the training configs (conf/train.yaml + conf/model/<name>.yaml, with
the configuration's overrides), exactly as `src/train.py` builds it, and trained by a real
`pl.Trainer` on a list of pre-generated random batches. So what is timed is what a training run
pays per batch: `training_step` with every optimizer step, the players' toggling, the logging
and Lightning's per-batch bookkeeping; only data loading is left out (the batches already sit
in memory, and Lightning moves them to the device before the batch-start hook that starts the
clock).

Runs in a fresh process per configuration (see `src/utils/bench_worker.py`): peak RSS is a
process-wide high-water mark, so only a new process gives a per-configuration peak.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

import hydra
import pytorch_lightning as pl
import torch
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.utils.data import DataLoader

from src.callbacks.compile_networks import CompileNetworks
from src.nets.spectral_norm import spectral_norm_hooks
from src.utils.bench_ab import make_toggle, setting_is_on, split_times
from src.utils.bench_machine import ForeignCpuMeter, current_rss_bytes, host_speed, peak_rss_bytes
from src.utils.bench_profile import summarise_profile
from src.utils.checkpoint_loading import model_for_device
from src.utils.reference_iterations import reference_for
from src.utils.training_config import compose_training_config

#: bench precision name -> Lightning Trainer precision
TRAINER_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed"}


def compose_model_config(conf_dir: str, model: str, size: int, overrides: list[str]):
    """The model's training config at `size` px, as `src/train.py model=<model> data.size=<size>` composes it."""
    return compose_training_config([f"model={model}", f"data.size={size}", *overrides], conf_dir)


def fill_image_pools(model, batch: dict[str, Any], device: str) -> None:
    """Every image pool of the model full (CycleGAN's two of 50 fakes: 16 MB at 128 px, 66 MB
    at 256), as in a run past its first iterations: the benchmark's few iterations would leave
    them nearly empty and the peak memory low. Random images the shape of the pool's fakes
    (`fake_B`: a B image; pix2pix's `fake_AB`: an A and B pair's channels)."""
    gen = torch.Generator().manual_seed(0)
    for name, pool in getattr(model, "pools", {}).items():
        domains = name.removeprefix("fake_")
        shape = (1, sum(batch[d].size(1) for d in domains), *batch[domains[0]].shape[2:])
        pool.images = [(torch.rand(shape, generator=gen) * 2 - 1).to(device) for _ in range(pool.size)]


def random_batches(n: int, batch_size: int, data_cfg, size: int, seed: int,
                   channels_last: bool) -> list[dict[str, Any]]:
    """`n` distinct batches in the DataModules' format, uniform in [-1, 1] like real images: a
    translator's A and B images, or a noise-to-image model's labelled images (its
    `data.batches_per_iteration` real batches each, one per critic step)."""
    gen = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def images(nc: int, count: int = batch_size) -> torch.Tensor:
        return (torch.rand(count, nc, size, size, generator=gen) * 2 - 1).contiguous(memory_format=fmt)

    if "output_nc" not in data_cfg:   # a labelled dataset
        count = batch_size * int(data_cfg.get("batches_per_iteration", 1))
        return [{"A": images(data_cfg.input_nc, count), "label": torch.zeros(count, dtype=torch.long),
                 "index": torch.arange(i * count, (i + 1) * count),
                 "A_path": [f"random_A_{i}_{k}" for k in range(count)]} for i in range(n)]
    return [{"A": images(data_cfg.input_nc), "B": images(data_cfg.output_nc),
             "A_path": [f"random_A_{i}_{k}" for k in range(batch_size)],
             "B_path": [f"random_B_{i}_{k}" for k in range(batch_size)]} for i in range(n)]


def apply_adam_implementation(model: pl.LightningModule, implementation: str | None) -> None:
    """Make every Adam the model configures use `implementation` ("single", "foreach", "fused").

    None keeps what the model's `configure_optimizers` chose. Adam reads these flags from its
    param groups at every step, so setting them before the first step is enough.
    """
    if implementation is None:
        return
    flags = {"single": (False, False), "foreach": (True, False), "fused": (False, True)}[implementation]
    original = model.configure_optimizers

    def configure_optimizers():
        optimizers, schedulers = original()
        for opt in optimizers:
            for group in opt.param_groups:
                group["foreach"], group["fused"] = flags
        return optimizers, schedulers

    model.configure_optimizers = configure_optimizers


def use_torch_spectral_norm(model: pl.LightningModule) -> None:
    """Swap the models' spectral-norm hooks back to torch's own (to measure what ours saves)."""
    for hook in spectral_norm_hooks(model):
        hook.__class__ = SpectralNorm


class IterationTimer(pl.Callback):
    """Wall time of every training batch (one full GAN iteration), from batch start to batch end.

    The clock starts in the batch-start hook of `starter` (the Trainer's first callback) and stops
    in this callback's batch-end hook (its last), so the training callbacks' per-batch work (the
    EMA's update and swaps) is inside it. On CUDA the clock reads after a synchronize, so queued
    kernels are counted in their batch. Batches `warmup` .. `warmup + repeats - 1` are the timed
    ones; over them it also measures how much CPU other processes took, and after the last of them
    it reads the peak memory. One batch follows them untimed: the run's last, which pays for an
    epoch's end (the losses logged for the end of training, per-epoch schedules), and with
    `profile` runs under torch.profiler (whose overhead and trace would skew the time and memory).
    """

    def __init__(self, device: str, warmup: int, repeats: int, profile: bool = False,
                 toggle: Callable[[bool], None] | None = None):
        self.device = device
        self.toggle = toggle    # `ab`: switched on for even batches, off for odd ones
        self.first_timed, self.last_timed = warmup, warmup + repeats - 1
        self.profile_batch = warmup + repeats if profile else None
        self.times: list[float] = []
        self.profiler = None
        self.foreign = ForeignCpuMeter()
        self.foreign_cores: float | None = None
        self.warmup_peak_cuda_bytes: int | None = None
        self.peak_memory: dict[str, int] = {}
        self._start = 0.0
        self.starter = StartClock(self)

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def start(self, batch_idx: int) -> None:
        if batch_idx == self.first_timed:
            self.foreign.start()
            if self.device == "cuda":
                # cuDNN's algorithm search (cudnn.benchmark) allocates trial workspaces during
                # warm-up, up to tens of GB for fp32 convolutions; the peak that matters is the
                # steady training one, so it is measured over the timed iterations only.
                torch.cuda.synchronize()
                self.warmup_peak_cuda_bytes = torch.cuda.max_memory_allocated()
                torch.cuda.reset_peak_memory_stats()
        if batch_idx == self.profile_batch:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities, record_shapes=True)
            self.profiler.__enter__()
        if self.toggle is not None:
            self.toggle(setting_is_on(batch_idx))
        self._sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync()
        elapsed = time.perf_counter() - self._start
        if batch_idx == self.profile_batch:
            self.profiler.__exit__(None, None, None)
        if batch_idx > self.last_timed:   # the untimed last batch
            return
        self.times.append(elapsed)
        if batch_idx == self.last_timed:
            self.foreign_cores = self.foreign.stop()
            self.peak_memory = {"peak_rss_bytes": peak_rss_bytes()}
            if self.device == "cuda":
                self.peak_memory.update(peak_cuda_allocated_bytes=torch.cuda.max_memory_allocated(),
                                        peak_cuda_reserved_bytes=torch.cuda.max_memory_reserved())


class StartClock(pl.Callback):
    """Starts an `IterationTimer`'s clock at batch start, placed before every other callback."""

    def __init__(self, timer: IterationTimer):
        self.timer = timer

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.timer.start(batch_idx)


def training_callbacks(cfg) -> list[pl.Callback]:
    """The configured callbacks whose work is part of every training iteration: the EMA of the
    generators where the model's config turns it on (ProGAN, StyleGAN). The evaluations and
    logging callbacks run every so many iterations and are left out."""
    ema = cfg.get("callbacks", {}).get("ema")
    return [hydra.utils.instantiate(ema)] if ema is not None and ema.get("enabled") else []


def measure_training_step(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the configured model, train warmup + repeats iterations, return the measurements."""
    device, precision = spec["device"], spec["precision"]
    tweaks = spec.get("tweaks", {})
    torch.set_num_threads(spec["threads"])
    if device == "cuda":
        torch.backends.cudnn.benchmark = bool(tweaks.get("cudnn_benchmark", True))
        torch.cuda.reset_peak_memory_stats()
    cfg = compose_model_config(spec["conf_dir"], spec["model"], spec["size"], list(spec.get("overrides", [])))
    pl.seed_everything(spec.get("seed", 0), verbose=False)
    rss_before_model = current_rss_bytes()
    # (built for the device it is timed on, as a training run's: no fast_conv kernels for a GPU)
    model = model_for_device(cfg.model, device)
    channels_last = bool(tweaks.get("channels_last", False))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    apply_adam_implementation(model, tweaks.get("adam"))
    if tweaks.get("spectral_norm") == "torch":
        use_torch_spectral_norm(model)
    if tweaks.get("step_in_backward") is not None:
        model.optimizer_cfg["step_in_backward"] = bool(tweaks["step_in_backward"])

    warmup, repeats = spec["warmup"], spec["repeats"]
    ab = spec.get("ab")
    if tweaks.get("iteration", "own") == "reference":   # composed with fast_conv off (bench_run)
        model.train_iteration = reference_for(model)      # training_step calls it instead of the model's
        # It steps the public code's own optimizers, which Lightning's global_step does not count.
        model.check_steps_taken = lambda steps: None
    toggle = make_toggle(ab, model) if ab else None
    if ab:   # `repeats` timed iterations of each setting, alternating; an even warm-up warms both
        warmup, repeats = warmup + warmup % 2, 2 * repeats
    profile = bool(spec.get("profile"))
    n_batches = warmup + repeats + 1   # the last one untimed (IterationTimer)
    batches = random_batches(n_batches, spec["batch_size"], cfg.data, spec["size"], spec.get("seed", 0), channels_last)
    fill_image_pools(model, batches[0], device)
    timer = IterationTimer(device, warmup, repeats, profile, toggle)
    compiling = [CompileNetworks(tweaks["compile"], "tweaks.compile")] if tweaks.get("compile") else []
    trainer = pl.Trainer(accelerator=device, devices=1, precision=TRAINER_PRECISION[precision], max_epochs=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[timer.starter, *training_callbacks(cfg), *compiling, timer],
                         default_root_dir=spec.get("work_dir"))
    # batch_size=None: each list item is already a batch.
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False))

    timed = timer.times[warmup:]
    halves = split_times(timer.times, warmup, ab) if ab else None
    if halves:   # the row stands for the setting on; its baseline is the same run's other half
        timed = halves["on_times_s"]
    s_per_iter = statistics.median(timed)
    result = {
        "s_per_iter": s_per_iter,
        "images_per_s": spec["batch_size"] / s_per_iter,
        "iteration_times_s": timer.times,
        "warmup_times_s": timer.times[:warmup],
        "mean_s_per_iter": statistics.fmean(timed),
        "min_s_per_iter": min(timed),
        "max_s_per_iter": max(timed),
        "foreign_cpu_cores": timer.foreign_cores,
        "parameters": sum(p.numel() for p in model.parameters()),
        **timer.peak_memory,   # read after the timed iterations, before the untimed last one
        "rss_before_model_bytes": rss_before_model,
    }
    if halves:
        result["ab"] = halves
    if device == "cpu":
        result["host"] = host_speed()   # after the peak memory was read: its buffers are not the row's
    if device == "cuda":
        result["warmup_peak_cuda_allocated_bytes"] = timer.warmup_peak_cuda_bytes
        result["gpu_name"] = torch.cuda.get_device_name()
    if timer.profiler is not None:
        variant = "".join(f"_{k}-{v}" for k, v in sorted(spec.get("variant", {}).items()))
        table = Path(spec["profile"]["dir"]) / f"{spec['name']}_{device}_b{spec['batch_size']}_{precision}{variant}.txt"
        result["profile"] = summarise_profile(timer.profiler, spec["profile"].get("row_limit", 15), device, table)
    return result
