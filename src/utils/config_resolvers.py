"""Config resolvers OmegaConf lacks, registered when `src` is imported, i.e. before any entry
point or test composes a config.

- `${mul:a,b}`: a weight defined relative to another. CycleGAN's identity weight is a fraction
  of the cycle weight in its code (lambda_identity = 0.5, multiplied by lambda_A), so a sweep
  over `loss.weights.cycle` must move it too.
- `${add:a,b}`: a size defined relative to another. U-GAT-IT's and NICE-GAN's code resize to
  the image size + 30 before the random crop, whatever the image size, so `data.load_size`
  follows `data.crop_size` there.
- `${cwd:}`: the working directory, for `paths.root_dir`. Hydra's `${hydra:runtime.cwd}` is
  not set yet when a multirun's sweep folder is resolved (`-m` failed with "HydraConfig was not
  set"), nor outside a Hydra app; the runs never change directory (`hydra.job.chdir: false`),
  so the process's own is the same folder.
- `${run_dir_suffix:}`: what makes a run folder named by its start time its own:
  `_slurm-<job id>` inside a SLURM job (the tasks of a job array start in the same second; the
  tasks of one srun, one run's ranks, share the folder; so do two runs one job script starts
  together: give them their own hydra.run.dir), nothing in a process torchrun started (its
  ranks share the folder as before), else `-<microseconds>` (runs a script
  or a shell loop starts together, `for lr in ...; do python src/train.py ... & done`, would
  otherwise share one, each writing over the others' checkpoints and configs). `${slurm_job_suffix:}`,
  its SLURM part, stays registered for the run configs of older runs.
- `${seed_unless_stored:storage,seed}`: an Optuna sampler's seed, or None where the study is kept
  in `storage`. A seeded sampler starts its random draws over in every process, so a study
  resumed from its storage (or shared by two machines) would repeat its first trials.
"""
import os
from datetime import datetime

from omegaconf import OmegaConf


def multiply(*factors: float) -> float:
    product = 1.0
    for factor in factors:
        product *= float(factor)
    return product


def add(*terms: float) -> float:
    """The sum, an int when every term is one (an image size stays an int)."""
    return sum(terms) if all(isinstance(term, int) for term in terms) else sum(float(term) for term in terms)


def slurm_job_suffix() -> str:
    job = os.environ.get("SLURM_JOB_ID")
    return f"_slurm-{job}" if job else ""


#: set in each process torchrun (torch.distributed.run) starts: the ranks of one run, which
#: compose their configs apart and share the folder named to the second (README: fix
#: hydra.run.dir for them)
TORCHRUN_VARIABLES = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")


def run_dir_suffix() -> str:
    if slurm := slurm_job_suffix():
        return slurm
    if any(name in os.environ for name in TORCHRUN_VARIABLES):
        return ""
    return f"-{datetime.now():%f}"


def seed_unless_stored(storage, seed):
    return seed if storage is None else None


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", multiply)
    if not OmegaConf.has_resolver("add"):
        OmegaConf.register_new_resolver("add", add)
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", os.getcwd)
    if not OmegaConf.has_resolver("slurm_job_suffix"):
        OmegaConf.register_new_resolver("slurm_job_suffix", slurm_job_suffix)
    if not OmegaConf.has_resolver("run_dir_suffix"):
        # cached: the folder is named once, however often the config is resolved
        OmegaConf.register_new_resolver("run_dir_suffix", run_dir_suffix, use_cache=True)
    if not OmegaConf.has_resolver("seed_unless_stored"):
        OmegaConf.register_new_resolver("seed_unless_stored", seed_unless_stored)
