"""Config resolvers OmegaConf lacks, registered when `src` is imported, i.e. before any entry
point or test composes a config.

- `${mul:a,b}`: a weight defined relative to another. CycleGAN's identity weight is a fraction
  of the cycle weight in its code (lambda_identity = 0.5, multiplied by lambda_A), so a sweep
  over `loss.weights.cycle` must move it too.
- `${cwd:}`: the working directory, for `paths.root_dir`. Hydra's `${hydra:runtime.cwd}` is
  not set yet when a multirun's sweep folder is resolved (`-m` failed with "HydraConfig was not
  set"), nor outside a Hydra app; the runs never change directory (`hydra.job.chdir: false`),
  so the process's own is the same folder.
"""
import os

from omegaconf import OmegaConf


def multiply(*factors: float) -> float:
    product = 1.0
    for factor in factors:
        product *= float(factor)
    return product


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", multiply)
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", os.getcwd)
