"""Random number generator states: saved in checkpoints, and set aside around evaluations.

Checkpoints keep them in a form `torch.load(weights_only=True)` accepts (tensors, tuples,
ints): Lightning's own collector keeps numpy's state as an ndarray, which weights-only loading
refuses.
"""
import contextlib
import logging
import random
import zlib

import numpy as np
import torch

log = logging.getLogger(__name__)


def collect_rng_states(accelerators: bool = True) -> dict:
    """Every random stream's state; the GPUs' only with `accelerators`."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if accelerators and torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if accelerators and torch.backends.mps.is_available():   # Apple GPUs: the noise models' latents, dropout
        states["mps"] = torch.mps.get_rng_state()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        # One state per GPU the saving process saw; a resume may see fewer (a job saved on 8 GPUs
        # requeued on 4, a one-GPU run of a multi-GPU node resumed on a one-GPU allocation).
        for index, state in enumerate(states["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, index)
    if "mps" in states and torch.backends.mps.is_available():
        torch.mps.set_rng_state(states["mps"])


@contextlib.contextmanager
def callers_rng_restored():
    """The caller's random streams as they were once the block ends: a training run seeds all of
    them (`seed_everything`), and a notebook's next draws would be the run's seed's, whatever the
    notebook had seeded. CUDA's only where the caller already uses CUDA: reading them would
    start CUDA in a process that a fork-based launcher (ddp_notebook) needs without it."""
    states = collect_rng_states(accelerators=False)
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda_states = torch.cuda.get_rng_state_all() if cuda else None
    try:
        yield
    finally:
        try:
            restore_rng_states({**states, **({"cuda": cuda_states} if cuda else {})})
        except Exception as error:   # a GPU an error left unusable: the run's own error is the one to see
            log.warning("The caller's random streams could not be restored (%s: %s)", type(error).__name__, error)


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for one use (`purpose`) fixed by the run's `seed` alone: neither the draws made
    before it (a model of another width initialises other weights) nor the device count
    (Lightning reseeds each DDP process as it starts) moves it."""
    state = np.random.SeedSequence([int(seed), zlib.crc32(purpose.encode())]).generate_state(1)[0]
    return int(state) & 0x7FFFFFFF


def rank_zero_seed(strategy=None) -> int:
    """A seed drawn from torch's global CPU stream without advancing it (no other draw of the run
    moves), rank zero's on every rank where a Lightning `strategy` is given (a broadcast, so a
    collective call under DDP)."""
    with torch.random.fork_rng(devices=[]):
        seed = int(torch.randint(2**31 - 1, ()).item())
    return strategy.broadcast(seed) if strategy is not None else seed


@contextlib.contextmanager
def isolated_rng(device: torch.device, seed: int | None = 0):
    """Torch's RNG (CPU and `device`'s GPU, CUDA or Apple's MPS) seeded with `seed` inside the
    block and restored after it: an evaluation (pix2pix's test-time dropout, KID subsets, noise
    models' latents) is reproducible and leaves its caller's draws (a training run's, a
    notebook's) as they were. `seed=None` leaves the block unseeded: it draws on from the
    caller's state, which is restored all the same."""
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    # fork_rng forks one device type, CUDA here; the MPS generator is set aside by hand
    mps_state = torch.mps.get_rng_state() if device.type == "mps" else None
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            if seed is not None:
                torch.default_generator.manual_seed(seed)
                for index in cuda_devices:
                    with torch.cuda.device(index):
                        torch.cuda.manual_seed(seed)
                if mps_state is not None:
                    torch.mps.manual_seed(seed)
            yield
    finally:
        if mps_state is not None:
            torch.mps.set_rng_state(mps_state)
