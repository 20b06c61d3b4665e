"""`compile`: torch.compile every network the players train, for the run (and the benchmark).

Off by default. Where it pays: on a GPU, a batch-1 GAN iteration is paced by the CPU launching
its thousands of small kernels, and `compile=reduce-overhead` records them as CUDA graphs that
replay with one launch (pix2pix unet_256 on an H200: 0.009 s against 0.017 s eager,
experiments/bench/README.md). On a CPU it costs 50-80 s of compilation per input shape and was
slower than eager for a ResNet generator; there the convolution rewrites of `model.fast_conv`
are what speeds training up (inside a compiled graph they run torch's own operators).

Spectral norm's power iteration runs outside the graphs (src/nets/spectral_norm.py), a graph
break per layer in U-GAT-IT's and NICE-GAN's discriminators. With CUDA graphs those two models
trained differently from eager mode (an H200: U-GAT-IT's adversarial loss 8% off after two
iterations, NICE-GAN's 0.04%, where CycleGAN and pix2pix agree to float rounding; the cause is not
found), so a CUDA-graphs mode refuses networks with spectral norm on a GPU.

Only training runs compiled: in eval mode (sampling, evaluation) a network runs its own forward.
The networks are compiled in `setup`, in each process (a `ddp_spawn` worker pickles the model,
and a compiled forward would not pickle). Their forward is replaced on the module itself, so
state dicts, checkpoints and the optimizers' parameters stay those of the plain networks, and
forward hooks still run.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from src.nets.spectral_norm import has_spectral_norm

#: `compile`: off, on (torch.compile's default mode) or one of its modes by name;
#: "reduce-overhead" records CUDA graphs, for GPU steps bound by kernel launches.
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: the modes that record CUDA graphs on a GPU (max-autotune too, by torch.compile's documentation)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def as_written(mode) -> str:
    """A mode as the config writes it (YAML's true and false)."""
    return str(mode).lower() if isinstance(mode, bool) else str(mode)


def check_compile_mode(key: str, mode) -> None:
    """ValueError naming `key` unless `mode` is one of COMPILE_MODES."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"{key}={mode!r} must be one of {', '.join(map(as_written, COMPILE_MODES))}")


def compile_networks(model: pl.LightningModule, mode: bool | str = True) -> None:
    """torch.compile every network the players train (parameters stay shared with the optimizers),
    once: a network compiled already holds its compiled forward as an attribute of its own, where
    a plain one has its class's."""
    for modules in model.player_modules().values():
        for module in modules:
            if "forward" not in vars(module):
                module.forward = compiled_while_training(
                    module, torch.compile(module.forward, mode=None if mode is True else mode))


def compiled_while_training(module: torch.nn.Module, compiled):
    """A forward for `module` that runs `compiled` while the module trains and its own (eager) one
    in eval mode. Sampling and evaluation (image grids, FID/KID, translate) call the networks in
    eval mode, a few times per epoch at other batch sizes: compiled, each would be another graph
    (50-80 s per shape on a CPU), and CUDA graphs would write one call's outputs over the memory
    of the outputs a sampling callback still holds, as no iteration mark separates its calls."""
    eager = module.forward

    def forward(*args, **kwargs):
        return (compiled if module.training else eager)(*args, **kwargs)
    return forward


class CompileNetworks(pl.Callback):
    """Compiles the model's networks when a fit starts; with CUDA graphs, marks where each
    training iteration starts."""

    def __init__(self, mode: bool | str = True, key: str = "compile"):
        check_compile_mode(key, mode)
        self.mode, self.key = mode, key

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.mode:
            return
        penalties = pl_module.gradient_penalties()
        if penalties:   # torch.compile's autograd has no double backward: it fails at the first step
            raise ValueError(f"{self.key}={as_written(self.mode)} cannot train {' and '.join(penalties)}: it "
                             f"differentiates the discriminator's gradient, which torch.compile does not "
                             f"support. Set {self.key}=false")
        if self.mode in CUDA_GRAPH_MODES and trainer.strategy.root_device.type == "cuda":
            self.refuse_spectral_norm_in_cuda_graphs(pl_module)
        torch.compiler.reset()   # also after an earlier fit that failed, whose teardown did not run
        compile_networks(pl_module, self.mode)

    def refuse_spectral_norm_in_cuda_graphs(self, pl_module: pl.LightningModule) -> None:
        for player, modules in pl_module.player_modules().items():
            if any(has_spectral_norm(module) for module in modules):
                raise ValueError(
                    f"{self.key}={self.mode} records CUDA graphs, and networks with spectral norm ({player} of "
                    f"{type(pl_module).__name__}) trained differently under them than in eager mode. Set "
                    f"{self.key}=true or {self.key}=max-autotune-no-cudagraphs (compiled, without CUDA graphs)")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """The fit's compiled code goes with it. torch keeps compiled graphs, and which input sizes
        varied, per network class for the whole process: the next run of a multirun (or a
        notebook), with new networks of the same classes, would compile them for varying sizes,
        and after 8 recompilations of a forward run it uncompiled without a word. (Lightning
        skips teardown when a fit fails: `setup` resets the caches too.)"""
        if stage != "fit" or not self.mode:
            return
        for modules in pl_module.player_modules().values():
            for module in modules:
                vars(module).pop("forward", None)   # the class's own forward again
        torch.compiler.reset()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # A replay writes its outputs into the memory of the previous replay's. Without the mark,
        # the graphs cannot tell a GAN iteration's several forward and backward passes from the
        # next iteration's, and a pass reads an output that a later replay has overwritten.
        if self.mode in CUDA_GRAPH_MODES:
            torch.compiler.cudagraph_mark_step_begin()
