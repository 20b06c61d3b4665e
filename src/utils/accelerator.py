"""Which accelerator a trainer config trains on here, as Lightning resolves `auto` and `gpu`; and whether
an error is a device or host running out of memory."""
import torch
from lightning_fabric.accelerators import MPSAccelerator


def float64_device(device: torch.device | str) -> torch.device:
    """Where evaluation keeps its float64 values (torchmetrics' FID sums, KID's and the MMDs'
    features): the CPU in place of Apple's MPS, which has no float64; `device` elsewhere."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def resolved_accelerator(trainer_cfg: dict) -> str:
    """"mps", "cuda" or "cpu" for the configured accelerator, in Lightning's order: "gpu" is
    Apple's MPS where the machine has it, else CUDA; auto (or none) is MPS, else CUDA where a GPU
    is visible, else the CPU. Any other accelerator by its own name."""
    accelerator = trainer_cfg.get("accelerator") or "auto"
    if accelerator not in ("auto", "gpu"):
        return str(accelerator)
    if MPSAccelerator.is_available():
        return "mps"
    return "cuda" if accelerator == "gpu" or torch.cuda.is_available() else "cpu"


#: how CUDA's, the CPU's (Linux, Windows) and MPS's allocators word running out of memory
OUT_OF_MEMORY_WORDS = ("can't allocate memory", "not enough memory", "out of memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is a device or host allocator running out of memory (the CPU's and MPS's
    raise plain RuntimeErrors, told apart by their words)."""
    return (isinstance(error, (torch.OutOfMemoryError, MemoryError))
            or any(words in str(error) for words in OUT_OF_MEMORY_WORDS))
