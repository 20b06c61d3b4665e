"""The DDP strategy a GAN's manual optimization needs, for any run on more than one device.

Each player's step back-propagates its own loss while the other players' parameters get no
gradient, which plain DDP takes for an error at the second backward ("... parameters that were
not used in producing the loss"; conf/trainer/ddp.yaml says more). Lightning's `auto` strategy
picks plain `ddp` as soon as a run has several devices, so `trainer.devices=4` alone would fail
after the ranks have started: here `auto` becomes the DDP that finds the parameters each
backward reached, and a plain DDP strategy named in the config is refused with its fix.
"""
from __future__ import annotations

from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from src.utils.accelerator import resolved_accelerator

FIND_UNUSED = "_find_unused_parameters_true"
#: Lightning's DDP strategies by name, without the parameter search each needs here
PLAIN_DDP = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")
#: sharding strategies, by their names' start: the sample grids, evaluations and translation call
#: the generators outside the wrapped forward (where a sharded model has no whole weights), and
#: the per-player fp16 loss scalers (src/models/loss_scaling.py) bypass their precision plugins
SHARDED = ("fsdp", "deepspeed")


def choose_strategy(trainer_kwargs: dict) -> None:
    """Sets `trainer_kwargs["strategy"]` to DDP with the unused-parameter search where `auto`
    would start several processes; ValueError naming the fix for a plain DDP strategy."""
    strategy = trainer_kwargs.get("strategy", "auto")
    if not isinstance(strategy, str):   # a strategy object or config the user built: theirs
        return
    if strategy.startswith(SHARDED):
        raise ValueError(f"trainer.strategy={strategy} is not supported: the models call their generators outside "
                         f"the sharded forward (sample grids, evaluation), and train each player with its own loss "
                         f"scaler. Use trainer.strategy=ddp{FIND_UNUSED} in its place, as trainer=ddp sets it (a "
                         f"trainer.strategy override beside trainer=ddp wins over it). Each GAN here fits one GPU's "
                         f"memory; for a larger one, lower data.batch_size or use trainer.precision=bf16-mixed")
    plain = strategy.removesuffix("_find_unused_parameters_false")
    if plain in PLAIN_DDP:
        raise ValueError(f"trainer.strategy={strategy} fails at a GAN's second backward: each player's step leaves "
                         f"the other players' parameters without gradients, which this DDP takes for an error. "
                         f"Use trainer.strategy={plain}{FIND_UNUSED} (trainer=ddp sets it)")
    if strategy == "auto" and (processes := process_count(trainer_kwargs) or 1) > 1:
        trainer_kwargs["strategy"] = "ddp" + FIND_UNUSED
        rank_zero_info(f"{processes} processes (trainer.devices x trainer.num_nodes): "
                       f"trainer.strategy=ddp{FIND_UNUSED}, as trainer=ddp sets it")


def process_count(trainer_kwargs: dict) -> int | None:
    """How many processes Lightning would train with on CPUs or CUDA GPUs (None for another
    accelerator, or devices this machine lacks: Lightning's own check names those)."""
    kind = {"cpu": CPUAccelerator, "cuda": CUDAAccelerator}.get(resolved_accelerator(trainer_kwargs))
    if kind is None:
        return None
    devices = trainer_kwargs.get("devices", "auto")
    try:
        per_node = kind.auto_device_count() if devices == "auto" else len(kind.get_parallel_devices(
            kind.parse_devices(devices)))
    except Exception:   # Lightning's MisconfigurationException and its parsers' TypeErrors
        return None
    return per_node * int(trainer_kwargs.get("num_nodes", 1))
