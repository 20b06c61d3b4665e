"""The body of a training run, kept apart from the Hydra entry point so tests can call it."""
import copy
import gc
import json
import logging
import os
import traceback
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import CheckpointIO
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.accelerators import CUDAAccelerator
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from src.callbacks.compile_networks import CompileNetworks
from src.callbacks.checkpoint import IterationCheckpoint, latest_checkpoint_path
from src.callbacks.ema import GeneratorEMA
from src.callbacks.final_metrics import FinalMetrics
from src.callbacks.image_budget import ImageBudget
from src.callbacks.image_grid import ImageGridCallback
from src.callbacks.optimized_metric import OptimizedMetricCheck
from src.callbacks.progress import iteration_progress_bar
from src.callbacks.rank_seed import RankSeed
from src.callbacks.stop_signals import RequeueStop, StopSignals
from src.data.download import pasteable_override
from src.data.labelled import check_same_classes
from src.models.checkpoint_fit import (check_resume_seed, check_resume_settings, checkpoint_iteration, first_line,
                                      resumed_checkpoint)
from src.utils.accelerator import is_out_of_memory, resolved_accelerator
from src.utils.auto_resume import (AUTO, checkpoints_further_on, resolve_auto_resume, resume_a_requeued_job,
                                   set_aside_abandoned_checkpoints)
from src.utils.checkpoint_io import DurableCheckpointIO
from src.utils.checkpoint_loading import check_data_loadable, check_loadable, model_for_device
from src.utils.code_version import git_revision
from src.utils.config_checks import (check_argument_types, check_run_folder, check_seed, home_expanded, is_number,
                                     recorded_path, require_int)
from src.utils.ddp_multirun import SIGTERM_EXIT_STATUS, job_shared_with_launched_ranks
from src.utils.hydra_runtime import (RESOLVED_CHECKPOINT_ENV, in_a_sweep, job_overrides, launched_rank,
                                    other_ranks_log_warnings_only, warn_for_every_rank)
from src.utils.loader_failures import loader_failure_hint
from src.utils.ddp_strategy import choose_strategy, process_count
from src.utils.initial_weights import initial_weights_to_load, start_from_checkpoint
from src.utils.instantiate import instantiate_list
from src.utils.library_warnings import silence_known_library_noise
from src.utils.objective import sweeper_direction
from src.utils.process_state import (process_state_restored, threads_shared_among_local_ranks,
                                     threads_within_usable_cpus)
from src.utils.run_record import hydra_files, record_start, run_folder_claimed, run_seed
from src.utils.run_results import FINAL_METRICS, completed_metrics, final_record
from src.utils.tensorboard_logger import purge_step, with_purge_step
from src.utils.training_config import ROOT_DIR
from src.utils.unread_overrides import refuse_unread_overrides
from src.utils.wandb_run import (WandbRunIdCallback, current_wandb_run, finish_wandb_run, logs_to_wandb,
                                  with_wandb_identity, without_unset_anonymous)

log = logging.getLogger(__name__)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_accelerator(trainer_cfg: dict) -> None:
    """A GPU configuration on a machine without one fails with a message that says what to
    pass, instead of Lightning's "No supported gpu backend found!"."""
    if resolved_accelerator(trainer_cfg) == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.accelerator={trainer_cfg['accelerator']}: no CUDA GPU is visible here "
                         f"(torch {torch.__version__}, built {'with' if torch.version.cuda else 'without'} CUDA). "
                         "Use trainer=cpu, or trainer=default (it picks what the machine has: Apple's MPS, a CUDA "
                         "GPU or the CPU); where trainer.accelerator is set on the command line, which wins over "
                         "the trainer group, set trainer.accelerator=cpu (or auto) instead.")


def cpu_computes_bf16() -> bool:
    """Whether oneDNN has bf16 arithmetic on this CPU (AVX-512 BF16, AMX); elsewhere it emulates it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):   # a torch without oneDNN: nothing known, nothing said
        return True


def warn_emulated_cpu_bf16(trainer_cfg: dict) -> None:
    """bf16 autocast on a CPU without bf16 arithmetic is not a little slower but two orders of
    magnitude: a 3x3 256-channel convolution at 32x32 took 1.65 s against 7 ms in fp32 on an
    AVX2-only EPYC. Said at start, not discovered an hour later."""
    on_cpu = resolved_accelerator(trainer_cfg) == "cpu"
    if on_cpu and str(trainer_cfg.get("precision")).startswith("bf16") and not cpu_computes_bf16():
        warn_for_every_rank(log, "trainer.precision=%s on a CPU without bf16 arithmetic (no AVX-512 BF16 or AMX): "
                            "oneDNN emulates it, and convolutions run about 240x slower than in fp32. Use "
                            "trainer.precision=32-true here; bf16 pays on recent GPUs and on CPUs with bf16 "
                            "arithmetic.", trainer_cfg.get("precision"))


def forks_its_ranks(strategy) -> bool:
    """Whether `trainer.strategy` starts its ranks by forking this process (by name, or a
    strategy object's start method)."""
    if isinstance(strategy, str):
        return strategy.startswith(("ddp_fork", "ddp_notebook"))
    return getattr(strategy, "_start_method", None) == "fork"


def warn_bf16_before_ampere(trainer_cfg: dict) -> None:
    """bf16 autocast on a CUDA GPU before Ampere (compute capability 8.0: V100, T4) has no bf16
    arithmetic, and torch's `is_bf16_supported()` counts emulation as support, so nothing else
    stops the run: it crawls, or fails inside cuDNN without naming the setting. Every GPU that
    `trainer.devices` selects is checked, since a machine can mix generations. Not under a
    strategy that forks its ranks (`ddp_fork_*`, `ddp_notebook_*`, a notebook's): reading a GPU's
    properties initialises CUDA, after which Lightning refuses to fork ("Lightning can't create new
    processes if CUDA is already initialized")."""
    if (resolved_accelerator(trainer_cfg) != "cuda" or not torch.cuda.is_available()
            or not str(trainer_cfg.get("precision")).startswith("bf16")
            or forks_its_ranks(trainer_cfg.get("strategy"))):
        return
    devices = trainer_cfg.get("devices", "auto")
    try:
        # Lightning's own reading of `devices` ("auto" is every visible GPU, as its connector takes it).
        indices = CUDAAccelerator.parse_devices(-1 if devices == "auto" else devices) or []
    except MisconfigurationException:
        return  # Lightning refuses the setting itself, naming it, when the trainer is built.
    before_ampere = [(index, torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index))
                     for index in indices if torch.cuda.get_device_capability(index)[0] < 8]
    if before_ampere:
        gpus = ", ".join(f"GPU {index} {name} (compute capability {major}.{minor})"
                         for index, name, (major, minor) in before_ampere)
        warn_for_every_rank(log, "trainer.precision=%s on %s: no bf16 arithmetic before Ampere (8.0); it runs "
                            "emulated, far slower, or fails in cuDNN. Use trainer.precision=16-mixed (fp16 with a "
                            "loss scaler per GAN loss) or 32-true, or leave those GPUs out of trainer.devices.",
                            trainer_cfg.get("precision"), gpus)


# Lightning's precision settings that keep the weights in float32 (the mixed ones autocast the
# forward). The "-true" settings of 64, 16 and bf16 cast the modules' weights, while the batches,
# image pools, sample grids, evaluation callbacks and fast_conv's C kernels stay float32.
FLOAT32_WEIGHT_PRECISIONS = ("32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16")


def check_precision(trainer_cfg: dict) -> None:
    """ValueError at start for a precision this codebase does not train in, instead of a dtype
    mismatch in the first convolution ("Input type (float) and bias type (double)")."""
    precision = trainer_cfg.get("precision")
    if precision is not None and str(precision) not in FLOAT32_WEIGHT_PRECISIONS:
        raise ValueError(
            f"trainer.precision={precision!r} is not supported: the models train float32 weights (their "
            f"batches, image pools, samples and evaluation stay float32). Use trainer.precision=32-true, "
            f"bf16-mixed (CPUs with bf16 arithmetic, Ampere or newer GPUs) or 16-mixed (GPUs).")
    # Lightning has no fp16 autocast on CPUs and would swap in bf16-mixed, unasked, which on a CPU
    # without bf16 arithmetic runs about 240x slower than float32 (warn_emulated_cpu_bf16).
    if str(precision) in ("16-mixed", "16") and resolved_accelerator(trainer_cfg) == "cpu":
        raise ValueError(f"trainer.precision={precision} (fp16 with loss scaling) needs a GPU, and this run trains "
                         f"on the CPU. Use trainer.precision=32-true here (bf16-mixed only on a CPU with bf16 "
                         f"arithmetic), or trainer=gpu on a machine with one.")


OUT_OF_MEMORY_HINT = (
    "Out of memory while training. What fits a run in less: a smaller data.batch_size (now %s; ProGAN and "
    "StyleGAN: model.batch_sizes, per resolution) or data.crop_size; model.generator.light=true (U-GAT-IT, "
    "NICE-GAN: the full gamma/beta MLP holds 268M weights per generator at 256 px); trainer.precision=bf16-mixed "
    "on a recent GPU; model.optimizer.step_in_backward=true (one process in fp32 or bf16, without gradient "
    "clipping: each weight stepped as its gradient is done); more devices (trainer.devices). `make bench` reports "
    "each model's peak memory.")


def build_trainer_kwargs(cfg: DictConfig, model) -> dict:
    """Trainer arguments, with `max_iters` (training iterations) turned into optimizer steps."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    check_accelerator(kwargs)
    choose_strategy(kwargs)
    check_precision(kwargs)
    warn_emulated_cpu_bf16(kwargs)
    warn_bf16_before_ampere(kwargs)
    take_gradient_clipping(kwargs, model)
    use_durable_checkpoints(kwargs)
    refuse_loop_settings(kwargs)
    for key, instead in (("logger", "logger=none, logger=csv or the logger group's entries"),
                         ("callbacks", "the callbacks group (callbacks.<name>)"),
                         ("enable_checkpointing", "callbacks.model_checkpoint, which every run needs")):
        if key in kwargs:   # (Lightning's own: "got multiple values for keyword argument", or a run without checkpoints)
            raise ValueError(f"trainer.{key}={kwargs[key]}: the run builds the trainer's {key.split('_')[-1]} from "
                             f"its own config groups; set {instead}, and remove trainer.{key}")
    if kwargs.get("accumulate_grad_batches", 1) != 1:
        raise ValueError(f"trainer.accumulate_grad_batches={kwargs['accumulate_grad_batches']}: a GAN's players step "
                         f"in turn, each once per iteration, and the next player trains against the one just "
                         f"stepped, so gradients cannot wait for later batches. Raise data.batch_size, or train on "
                         f"more devices (trainer.devices), instead")
    if kwargs.get("benchmark") is None:
        # Lightning's null leaves torch's default, off: GPU runs then train slower than measured.
        kwargs["benchmark"] = not kwargs.get("deterministic")
    max_iters = cfg.get("max_iters")
    # Checked here: Lightning would name max_steps (twice this for a two-player model).
    require_int("max_iters", max_iters, allow_none=True, why=" (training iterations; null: trainer.max_epochs)")
    if max_iters:
        kwargs["max_steps"] = int(cfg.max_iters) * model.optimizer_steps_per_iter
        kwargs["max_epochs"] = -1
        warn_iterations_of_several_processes(max_iters, kwargs, cfg.data.get("batch_size"))
    elif cfg.get("max_kimg") is not None:   # the image budget (ImageBudget) ends the run, not an epoch count
        kwargs["max_epochs"] = -1
    elif kwargs.get("max_epochs") in (-1, None):
        # Lightning's "train until stopped": said at start, since the learning-rate schedules
        # (counted in epochs or iterations) reach their end and stay there, at rate 0 for a decay
        warn_for_every_rank(log, "trainer.max_epochs=%s with neither max_iters nor max_kimg: the run has no end and "
                            "trains until stopped (Ctrl-C or SIGTERM save interrupted.ckpt); a learning-rate decay "
                            "(model.lr_schedule) that reaches 0 keeps it there. Give the run a length to end it",
                            kwargs.get("max_epochs"))
    return kwargs


#: where the evaluations are scheduled instead of Lightning's validation loop
EVALUATION_SCHEDULE = ("callbacks.fid_kid.every_n_iters, callbacks.image_grid.every_n_iters, "
                       "callbacks.latent.every_n_iters (conf/callbacks/default.yaml)")


def raise_stop_left_for_after_the_fit(trainer: pl.Trainer) -> None:
    """The stop a signal at the run's last iteration asked for (StopSignals lets that iteration
    end with its checkpoints first): a job being preempted, or warned of its time limit, stops
    here as it would have (exit 143, or the requeue), not with a multirun's next job."""
    for callback in trainer.callbacks:
        if isinstance(callback, StopSignals) and callback.stop_after_fit is not None:
            stop, callback.stop_after_fit = callback.stop_after_fit, None
            raise stop


def refuse_loop_settings(trainer_kwargs: dict) -> None:
    """ValueError for Lightning loop settings that would do nothing here, or not what they say:
    no model has a validation loop (evaluation runs in callbacks, by iteration), `max_steps`
    counts optimizer steps (several per GAN iteration), and a length of zero trains nothing and
    ends without a checkpoint."""
    for key in ("val_check_interval", "check_val_every_n_epoch", "limit_val_batches", "num_sanity_val_steps"):
        value = trainer_kwargs.get(key)
        if value not in (None, 0) or (key == "check_val_every_n_epoch" and key in trainer_kwargs):
            raise ValueError(f"trainer.{key}={value}: no validation loop runs here (the models have no "
                             f"validation_step); the evaluations run in callbacks, every N iterations: "
                             f"{EVALUATION_SCHEDULE}. Remove trainer.{key}")
    if trainer_kwargs.get("fast_dev_run"):
        raise ValueError(f"trainer.fast_dev_run={trainer_kwargs['fast_dev_run']}: Lightning's quick check turns the "
                         f"checkpoints and loggers off while the evaluation callbacks still run in full. Use "
                         f"debug=smoke (tiny networks, 4 iterations, every callback) or max_iters=1 instead")
    if trainer_kwargs.get("max_steps", -1) not in (-1, None):
        raise ValueError(f"trainer.max_steps={trainer_kwargs['max_steps']} counts optimizer steps, several per GAN "
                         f"iteration (one per player): set the length in iterations with max_iters (or in images "
                         f"with max_kimg) and remove trainer.max_steps")
    for key in ("min_steps", "min_epochs"):
        if trainer_kwargs.get(key) not in (None, 0, -1):
            raise ValueError(f"trainer.{key}={trainer_kwargs[key]}: Lightning would train on past the run's end "
                             f"(max_iters, max_kimg) until it is reached, where every evaluation and stop takes each "
                             f"iteration for the last; set the length with max_iters or max_kimg and remove "
                             f"trainer.{key}")
    for key in ("max_epochs", "limit_train_batches"):
        if trainer_kwargs.get(key) == 0:
            raise ValueError(f"trainer.{key}=0 trains nothing, and the run would end without a checkpoint: "
                             f"set a length (max_iters, trainer.max_epochs) of at least one iteration")


def use_durable_checkpoints(trainer_kwargs: dict) -> None:
    """Checkpoint files written whole, through a synced file beside them (src/utils/checkpoint_io.py),
    unless the config names a CheckpointIO of its own, or on TPUs (whose strategy takes XLA's only)."""
    if str(trainer_kwargs.get("accelerator")) == "tpu":
        return
    plugins = trainer_kwargs.get("plugins") or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        trainer_kwargs["plugins"] = [*plugins, DurableCheckpointIO()]


def take_gradient_clipping(trainer_kwargs: dict, model) -> None:
    """`trainer.gradient_clip_val` / `gradient_clip_algorithm` go to the model, which clips each
    player's gradients before its step (Lightning refuses them under manual optimization)."""
    value = trainer_kwargs.pop("gradient_clip_val", None)
    algorithm = trainer_kwargs.pop("gradient_clip_algorithm", None) or "norm"
    if algorithm not in ("norm", "value"):
        raise ValueError(f"trainer.gradient_clip_algorithm={algorithm!r}: choose norm or value")
    if value is None or value == 0:
        return
    if not is_number(value) or value < 0:
        raise ValueError(f"trainer.gradient_clip_val={value!r} must be a number > 0 (or null: no clipping)")
    model.gradient_clipping = (float(value), algorithm)


@rank_zero_only   # every rank builds the trainer
def warn_iterations_of_several_processes(max_iters: int, trainer_kwargs: dict, batch_size) -> None:
    """`max_iters` counts iterations, and `data.batch_size` is per process: on N processes a run
    of the paper's iterations (U-GAT-IT's and NICE-GAN's 1M at batch 1) trains on N times its
    images, for N times the GPU hours. Said, with the setting that keeps the paper's image count."""
    processes = process_count(trainer_kwargs)
    if processes and processes > 1:
        log.warning("max_iters=%d on %d processes: every iteration trains data.batch_size=%s images on each, %d "
                    "times an iteration on one. For the images of %d iterations on one device, set max_iters=%d",
                    max_iters, processes, batch_size, processes, max_iters, -(-max_iters // processes))




def default_wandb_offline(logger_cfg: DictConfig | None = None) -> None:
    """wandb goes offline unless the user configured it (WANDB_MODE, or an API key), so a run
    never blocks on a missing login or network. Decided afresh for every run of the process (a
    notebook's, a multirun's jobs): the run's end takes the setting away again
    (`process_state_restored`). Said where the run logs to wandb: wandb's own banner then
    suggests `wandb online`, which changes nothing here (a stored login does not either: a
    cluster's compute nodes share it, and many reach no server)."""
    if "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"
        if logs_to_wandb(logger_cfg):
            log.info("wandb logs offline into the run folder's wandb/ (`wandb sync` uploads it): WANDB_MODE=online "
                     "(after `wandb login`) logs to its server as the run goes")


def wandb_failure_hint(error: BaseException) -> str:
    """What to do about an error wandb stopped the run with, which names no setting of ours."""
    said = f"wandb stopped the run ({type(error).__name__}: {first_line(error)}; WANDB_MODE={os.environ.get('WANDB_MODE', 'online')})"
    if "api key" in str(error).lower():
        return (f"{said}. Logging online needs a login: `wandb login` (or WANDB_API_KEY), or leave WANDB_MODE unset "
                f"to log offline (`wandb sync` the run folder's wandb/ later); WANDB_MODE=disabled logs nothing there")
    # (an exported WANDB_API_KEY turns wandb online, also on compute nodes without internet)
    return (f"{said}. Where this machine cannot reach wandb's server, a compute node say, run with WANDB_MODE=offline "
            f"and `wandb sync` the run folder's wandb/ later, or log elsewhere (logger=csv).")


def check_sync_batchnorm(cfg: DictConfig, model) -> None:
    """SyncBatchNorm in train mode all-reduces on every forward. A model that samples with
    batch statistics (pix2pix's test-time default) puts it in train mode while sampling, which
    runs on rank zero alone (image grids) or on uneven shards (evaluation): a deadlock."""
    if cfg.trainer.get("sync_batchnorm") and resolved_accelerator(cfg.trainer) == "cpu":
        # Lightning converts the layers anyway, and torch's first forward stops naming no setting
        raise ValueError("trainer.sync_batchnorm=true needs GPUs: torch's SyncBatchNorm takes no CPU tensors, and "
                         "this run's trainer.accelerator resolves to the CPU; remove the setting")
    if cfg.trainer.get("sync_batchnorm") and model.sampling_options().get("batch_stats"):
        raise ValueError("trainer.sync_batchnorm=true needs model.test_time_batch_stats=false: sampling with batch "
                         "statistics would all-reduce from one rank and hang (see conf/trainer/ddp.yaml)")


def order_callbacks(callbacks: list[pl.Callback]) -> list[pl.Callback]:
    """Callbacks flagged `runs_first` (the EMA, which swaps in the weights the others sample
    with) before the rest, in their own order; the rest keep their config order."""
    return sorted(callbacks, key=lambda cb: not getattr(cb, "runs_first", False))


def build_callbacks(cfg: DictConfig, logger_cfg: DictConfig | None) -> list[pl.Callback]:
    """The configured callbacks, plus those every run needs: distinct random streams per DDP
    rank, SIGTERM and requeue warnings handled by all ranks together at a whole iteration, the
    end state in final_metrics.json, the wandb run id in checkpoints when logging to wandb, the
    image budget of `max_kimg`, the networks compiled with `compile`, and a progress bar
    counting iterations (unless the bar is off, or the config names its own)."""
    callbacks = instantiate_list(cfg.get("callbacks"), "callbacks") + [RankSeed(), StopSignals(),
                                                                       FinalMetrics(cfg.paths.output_dir)]
    # (`logger.csv=null` turns the only logger off too: a node of nulls builds none)
    if not any(node is not None for node in (logger_cfg or {}).values()) \
            and any(isinstance(cb, LearningRateMonitor) for cb in callbacks):
        # Lightning refuses the monitor without a logger; the rates have nowhere to go then.
        log.info("No logger (logger=none): the learning-rate monitor (callbacks.lr_monitor) is off, having no logger "
                 "to write to")
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    if logs_to_wandb(logger_cfg):
        callbacks.append(WandbRunIdCallback())
    if cfg.get("max_kimg") is not None:   # (0 too: ImageBudget refuses it, where it trained by epochs)
        callbacks.append(ImageBudget(cfg.max_kimg))
    if cfg.get("optimized_metric"):
        callbacks.append(OptimizedMetricCheck(cfg.optimized_metric, sweeper_direction()))
    if cfg.get("compile"):
        callbacks.append(CompileNetworks(cfg.compile))
    if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(cb, ProgressBar) for cb in callbacks):
        callbacks.append(iteration_progress_bar())
    return order_callbacks(callbacks)




def resolve_checkpoint(cfg: DictConfig) -> bool:
    """Set `cfg.ckpt_path` to the file the run resumes from (a requeued job's, `auto`'s), before
    the loggers exist (the wandb run id is read from the file); returns whether `auto` chose it.
    A rank Lightning launched takes rank zero's choice, which its environment carries."""
    handed = os.environ.get(RESOLVED_CHECKPOINT_ENV) if launched_rank() else None
    if handed is not None:
        choice = json.loads(handed)
    else:
        resume_a_requeued_job(cfg)
        found_by_auto = cfg.get("ckpt_path") == AUTO
        path = resolve_auto_resume(cfg) if found_by_auto else cfg.get("ckpt_path")
        choice = {"ckpt_path": path, "found_by_auto": found_by_auto}
        os.environ[RESOLVED_CHECKPOINT_ENV] = json.dumps(choice)   # inherited by the ranks launched later
    with open_dict(cfg):
        cfg.ckpt_path = choice["ckpt_path"]
    return choice["found_by_auto"]


def release_failed_run(error: BaseException) -> None:
    """Free what a failed run still holds through its error: the frames of its traceback keep
    the model, trainer, batch and activations (on the GPU) alive, and Hydra's launcher keeps a
    failed job's error until the whole multirun ends, so the next jobs (say `-m
    data.batch_size=8,4,2` after an out-of-memory error) would run beside it. The error still
    prints in full: a traceback needs the frames' code and lines, not their variables."""
    seen = set()
    while error is not None and id(error) not in seen:   # the error and those it was raised from
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__
    release_run_memory()


def build_model(cfg: DictConfig):
    """The run's model, built for the kind of device it trains on (`build_settings`: on a GPU or
    Apple's MPS, `auto` built `model.fast_conv`'s CPU kernels for layers that never run them)."""
    return model_for_device(cfg.model, resolved_accelerator(cfg.trainer))


def release_run_memory() -> None:
    """Free a finished run's objects now: the trainer and the model hold each other (and the
    callbacks their feature extractors, EMA copies, image pools, on the GPU), so they wait for
    Python's full collection, which a multirun's next job (or a notebook's next cell) may not
    trigger for a long time, and the allocator's cache keeps their GPU memory from other
    processes."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if torch.backends.mps.is_available():   # (MPS shares the machine's memory with every other process)
        torch.mps.empty_cache()


def run_code_revision() -> str:
    """The revision of the code's own checkout, not paths.root_dir's (where data and logs go,
    which may be another folder, or another repository)."""
    return git_revision(ROOT_DIR) or "unknown (no git checkout)"


def log_run_config(trainer: pl.Trainer, cfg: DictConfig, code_revision: str) -> None:
    """The run's config, and the code it trained with (`run_code_revision`), to every logger
    (wandb records the code itself; csv and tensorboard would not): "+dirty" says uncommitted
    changes took part."""
    hyperparameters = {**OmegaConf.to_container(cfg, resolve=True), "code_revision": code_revision}
    for logger in trainer.loggers:
        logger.log_hyperparams(hyperparameters)   # a wandb logger starts its run here
        if isinstance(logger, TensorBoardLogger):
            # Its HPARAMS tab lists runs by their metrics only (none here: hparams.yaml holds the
            # config on disk); the TEXT tab shows the config beside the run's charts.
            logger.experiment.add_text("config", "    " + OmegaConf.to_yaml(cfg, resolve=True).replace("\n", "\n    "))


def run_training(cfg: DictConfig) -> dict[str, float]:
    """Train as configured; returns the final metrics. The caller's `cfg` is left as given (the
    run resolves `ckpt_path=auto` in its own copy: a notebook's second call resolves it afresh),
    and torch's global flags and the environment as found (`process_state_restored`)."""
    with process_state_restored():
        metrics = _train(copy.deepcopy(cfg))
    # (A failed run's objects live on in its error's traceback: release_failed_run frees them.)
    release_run_memory()
    return metrics


def _train(cfg: DictConfig) -> dict[str, float]:
    silence_known_library_noise()
    threads_within_usable_cpus()
    if OmegaConf.select(cfg, "paths.output_dir", throw_on_resolution_failure=False) is None:
        # (Hydra's interpolation error said "HydraConfig was not set", naming no fix)
        raise ValueError("paths.output_dir, the run folder, is the one Hydra makes under src/train.py: from Python, "
                         "compose the config with compose_training_config(overrides, output_dir='runs/NAME') "
                         "(README, \"From Python\"), or set cfg.paths.output_dir")
    check_run_folder(cfg.paths.output_dir)
    if OmegaConf.select(cfg, "model_name", default=None) is None:
        # (an added model's config without it failed once the run had started, at the tags'
        # interpolation, naming no file)
        raise ValueError(f"The model config sets no model_name (conf/model/<name>.yaml of {cfg.model.get('_target_')}):"
                         f" add `model_name: <name>` beside model:, as conf/model/cyclegan.yaml does; run names, tags "
                         f"and tables use it")
    cfg = home_expanded(cfg, ("ckpt_path", "init_from"))
    own_hydra_files = hydra_files(cfg)   # as given, before the run fills in its seed and checkpoint
    # (the claim before anything in the folder is read or written)
    with other_ranks_log_warnings_only(), run_folder_claimed(Path(cfg.paths.output_dir)):
        return _train_in_claimed_folder(cfg, own_hydra_files)


def _train_in_claimed_folder(cfg: DictConfig, own_hydra_files: dict[str, str]) -> dict[str, float]:
    found_by_auto = resolve_checkpoint(cfg)
    # Read once, before any work (a missing or damaged file stops the run here), for the settings
    # check and the loggers; Lightning loads it again for the weights.
    resumed = resumed_checkpoint(cfg.get("ckpt_path"))
    init_from = initial_weights_to_load(cfg)
    default_wandb_offline(cfg.get("logger"))
    check_seed("seed", cfg.get("seed"), none_means="a seed drawn and recorded")
    seed_drawn = run_seed(cfg, resumed.get("run_seed") if resumed is not None else None)
    # (its environment variables go with the run: process_state_restored)
    pl.seed_everything(cfg.seed, workers=True, verbose=not seed_drawn)
    run_dir = Path(cfg.paths.output_dir)
    # Before the data is built: a model/data mismatch gets the model's own error, not a
    # constructor's unexpected argument.
    hydra.utils.get_class(cfg.model._target_).check_data_config(cfg.data, cfg.get("model_name", cfg.model._target_))
    check_argument_types(cfg.data, "data")
    check_data_loadable(cfg.data)
    check_argument_types(cfg.model, "model")   # its networks' nodes: build_net
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.run_seed = cfg.seed   # the epoch lists' seed comes from it alone, not the model's draws
    # A dataset not on disk stops the run here, with its folder and download command, instead
    # of in Lightning's setup after the model is built (seconds at full size) and DDP started.
    datamodule.check_present()
    model = build_model(cfg)
    model.model_name = cfg.get("model_name")   # (recorded in its checkpoints: results name the config)
    check_loadable(model)
    refuse_unread_overrides(job_overrides(cfg), model, cfg, in_a_sweep=in_a_sweep())
    conditional_resume = resumed is not None and getattr(model, "num_classes", 0)   # its labels mean classes
    if conditional_resume and not found_by_auto:
        # (before the count: a folder added asks for the trained classes, not a model of more;
        # under auto, after the settings: another run's checkpoint is refused as such first)
        check_same_classes(resumed.get("class_folders"), datamodule, f"ckpt_path={cfg.ckpt_path}")
    if callable(check_class_count := getattr(model, "check_class_count", None)):
        check_class_count(datamodule)   # a conditional model's classes, before the callbacks train on the data's
    for name, child in model.named_children():
        if count := count_parameters(child):   # not the loss modules
            log.info("%s: %s parameters", name, f"{count:,}")
    check_sync_batchnorm(cfg, model)
    # Plain values already (SplitDataModule's save_hyperparameters), as the model's hparams are.
    data_settings = dict(getattr(datamodule, "hparams", {}))
    if init_from is not None:
        start_from_checkpoint(model, init_from, cfg.get("init_from_weights", "trained"), data_settings)
    if resumed is not None:   # (None also for Lightning's keywords and URLs, which it resolves itself)
        changed = check_resume_settings(cfg.ckpt_path, resumed, model, data_settings, must_match=found_by_auto)
        if conditional_resume and found_by_auto:
            check_same_classes(resumed.get("class_folders"), datamodule, f"ckpt_path={cfg.ckpt_path}")
        if not seed_drawn and (other_seed := check_resume_seed(cfg.ckpt_path, resumed, cfg.seed, found_by_auto)):
            rank_zero_warn(other_seed)
        if changed:
            rank_zero_warn(changed)
        saved_dir = (resumed.get("datamodule_hyper_parameters") or {}).get("data_dir")
        # (recorded_path: an older checkpoint recorded the folder as typed, perhaps relative)
        if saved_dir is not None and recorded_path(str(saved_dir)) != str(data_settings.get("data_dir")):
            # A resume may read its data from elsewhere (copied to a node's scratch disk), so
            # this is no error; but another dataset of the same name would resume in silence.
            rank_zero_info(f"The data now comes from {data_settings.get('data_dir')}; the checkpoint's run read "
                           f"{saved_dir}")
    # The run folder's checkpoints past the one resumed: the branch this resume abandons, set aside
    # below once every check passed, and logged to wandb apart. (auto takes the most advanced file.)
    further_on = checkpoints_further_on(cfg) if resumed is not None and not found_by_auto else []
    logger_cfg = with_purge_step(with_wandb_identity(cfg.get("logger"), cfg, resumed,
                                                     checkpoint_iteration(resumed, model) if further_on else None),
                                 purge_step(cfg.get("ckpt_path"), resumed, model))
    # Read memory-mapped: kept through the fit, the mapping held the replaced last.ckpt's disk
    # space (GBs with optimizer moments and EMA) until the run ended, and on NFS a .nfs file in
    # checkpoints/ that `rm -r` calls busy.
    resumed_an_average = resumed is not None and bool(resumed.get("ema"))
    del resumed
    callbacks = build_callbacks(cfg, logger_cfg)
    if resumed_an_average and not any(isinstance(cb, GeneratorEMA) and cb.enabled for cb in callbacks):
        rank_zero_warn(f"ckpt_path={cfg.ckpt_path} holds an EMA of the generators, and this run keeps none "
                       f"(callbacks.ema off or removed): the average is dropped, so later checkpoints, grids and "
                       f"evaluations have the trained weights only, whose FIDs are then compared with the "
                       f"average's best. Pass callbacks.ema.enabled=true to continue it")
    callers_wandb_run = current_wandb_run()   # a notebook's own: not this training's to finish
    if not any(isinstance(cb, ModelCheckpoint) for cb in callbacks):
        # (checked before the Trainer, which would add a ModelCheckpoint of its own: epoch-end
        # files in the logger's folder, no last.ckpt, crash checkpoint or ckpt_path=auto)
        raise ValueError("No checkpoint callback configured: add callbacks.model_checkpoint "
                         "(see conf/callbacks/default.yaml) so the run ends with a checkpoint")
    loggers = without_unset_anonymous(instantiate_list(logger_cfg, "logger"))
    trainer = pl.Trainer(**build_trainer_kwargs(cfg, model), callbacks=callbacks, logger=loggers or False)
    if not found_by_auto:   # (auto took the most advanced file: none is further on) once every check passed
        set_aside_abandoned_checkpoints(cfg, further_on)
    code_revision = run_code_revision()   # (git's answer, asked once for the record and the loggers)
    record_start(run_dir, cfg, own_hydra_files, seed_drawn, cfg.get("ckpt_path"), code_revision)   # once checked
    exit_code = 0
    try:   # from the loggers' first record on: a wandb run started here is finished whatever happens
        log_run_config(trainer, cfg, code_revision)
        threads_shared_among_local_ranks(trainer.strategy)
        for callback in trainer.callbacks:
            if isinstance(callback, IterationCheckpoint):
                callback.resume_path = str(cfg.get("ckpt_path") or "")
        with job_shared_with_launched_ranks(trainer):
            # weights_only: a checkpoint can come from anyone (a URL's, which Lightning would
            # otherwise unpickle in full); ours hold tensors and plain values only.
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
            raise_stop_left_for_after_the_fit(trainer)
    except SIGTERMException as stop:
        exit_code = SIGTERM_EXIT_STATUS
        if isinstance(stop, RequeueStop):
            stop.hand_over(trainer)   # the cluster's requeue, now that the checkpoint is on disk
        # Lightning ends a fit stopped by SIGTERM with SystemExit(None), exit status 0: a job
        # preempted or out of time would look finished to its scheduler, a sweep or a script.
        # 143 = 128 + SIGTERM, the status a shell gives a process SIGTERM ended.
        raise SystemExit(SIGTERM_EXIT_STATUS) from stop
    except SystemExit as stop:
        exit_code = 1
        if not isinstance(stop.__context__, KeyboardInterrupt):
            raise
        # Lightning ends a fit stopped by Ctrl-C with sys.exit(1), which passed a notebook's
        # `except KeyboardInterrupt:` ("train until I stop it, then evaluate") and ended a script
        # there: the interrupt goes on as itself, interrupted.ckpt written.
        raise stop.__context__ from None
    except BaseException as error:
        exit_code = 1
        if is_out_of_memory(error):
            log.error(OUT_OF_MEMORY_HINT, cfg.data.get("batch_size"))
        elif hint := loader_failure_hint(error, "training", cfg.data.get("num_workers"), cfg.data.get("cache_decoded")):
            log.error(hint)
        elif type(error).__module__.startswith("wandb"):
            log.error(wandb_failure_hint(error))
        elif "does not have a deterministic implementation" in str(error):
            log.error("trainer.deterministic=%s stops at an operation torch has no deterministic kernel for on this "
                      "device (above). trainer.deterministic=warn takes the deterministic kernels where there are "
                      "some and warns about the rest.", cfg.trainer.get("deterministic"))
        raise
    finally:
        finish_wandb_run(exit_code, preempted=exit_code == SIGTERM_EXIT_STATUS, keep=callers_wandb_run)

    # A run resumed at its end trains and logs nothing: its checkpoint's metrics, which every rank
    # has (FinalMetrics); under ddp_spawn, whose main process gets no callback state, its record.
    final = next(cb for cb in trainer.callbacks if isinstance(cb, FinalMetrics))
    metrics = final.run_metrics(trainer) or completed_metrics(run_dir) or {}
    if trainer.is_global_zero:
        log_where_the_results_are(trainer, run_dir, cfg.get("max_iters"))
    return metrics


def log_where_the_results_are(trainer: pl.Trainer, run_dir: Path, max_iters: int | None) -> None:
    """The run's end, in train.log and on the console: the iteration it reached, where everything
    went, its best FID and the command that scores it. Read from the run's record, which rank
    zero wrote: under ddp_spawn this process's model and callbacks did not train."""
    record = final_record(run_dir)
    if (iteration := record.get("iteration")) is not None:
        reached = f" (max_iters={max_iters} reached)" if max_iters and iteration >= max_iters else ""
        log.info("Training ended at iteration %d%s", iteration, reached)
    # (the record's: a run resumed at its end names the file it resumed from; ddp_spawn's main
    # process has no callback state of the fit)
    last = record.get("checkpoint") or latest_checkpoint_path(trainer.checkpoint_callback)
    log.info("Run directory: %s", run_dir)
    log.info("Checkpoint to resume from: %s", last or "none (no checkpoint was written)")
    if any(isinstance(cb, ImageGridCallback) for cb in trainer.callbacks):
        log.info("Sample grids: %s", run_dir / "samples")
    log.info("Scores of the run: %s", run_dir / FINAL_METRICS)
    fid = next((cb for cb in trainer.callbacks if hasattr(cb, "best_checkpoint_path")), None)   # FidKidCallback
    if "best_fid" in record:
        best = fid.best_checkpoint_path(trainer) if fid is not None else None
        log.info("Best FID %.4g at iteration %d%s", record["best_fid"], record["best_fid_iteration"],
                 f": {best}" if best is not None and best.is_file() else "")
    if last:
        log.info("Score it on the test split: python src/eval.py %s", pasteable_override("ckpt_path", last, prefix=""))
