"""Which accelerator a trainer config trains on here, as Lightning resolves `auto`."""
import torch


def resolved_accelerator(trainer_cfg: dict) -> str:
    """"cuda" or "cpu" for the configured accelerator ("gpu" is CUDA; auto, or none, is CUDA where
    a GPU is visible, else the CPU); any other accelerator by its own name."""
    accelerator = trainer_cfg.get("accelerator") or "auto"
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator == "gpu" else str(accelerator)
