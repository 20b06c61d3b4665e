"""The order and the randomness of training items, as a function of (seed, epoch) only.

A plain shuffled DataLoader draws each epoch's permutation, and every crop, flip and random
partner, from RNG streams that depend on where the process is: the global RNG when the iterator
starts, and each worker's stream, advanced by whichever items that worker happened to load. A
run resumed mid-epoch cannot rebuild that, so Lightning restarts the epoch's order from a fresh
draw (some images twice, some never) and the augmentations change with `num_workers`.

Here an epoch is a list of (item index, item seed) pairs drawn from a generator seeded with
(seed, epoch), split across ranks like DistributedSampler; each item is prepared with torch's
RNG seeded by its own seed. So:
- the items of an epoch and their augmentations do not depend on workers or on the order in
  which workers load them;
- a run resumed from a checkpoint taken after k batches of an epoch starts that epoch at batch
  k + 1 of the same list: the run continues as if it had never stopped.
"""
from __future__ import annotations

import contextlib
import logging
import random
from itertools import islice
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

log = logging.getLogger(__name__)


class SeededItems(Dataset):
    """A dataset indexed by (index, seed): item `index`, prepared with torch's, numpy's and
    python's global RNGs seeded by `seed` (the caller's states are left as they were), so a
    dataset or transform drawing from any of them gets the same item whatever the workers. A
    plain index (Lightning's `overfit_batches` swaps in a sequential sampler) is its own seed:
    those batches too are the same in and out of workers, and draw nothing from training's
    stream."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        index, seed = key if isinstance(key, tuple) else (key, key)
        with seeded_global_rngs(seed):
            return self.dataset[index]


@contextlib.contextmanager
def seeded_global_rngs(seed: int):
    """Torch's CPU generator, numpy's and python's global RNGs seeded with `seed` inside the
    block and restored after it. The CPU generator only: torch.manual_seed would also reseed
    every GPU's, which fork_rng([]) does not restore (an item loaded in the main process would
    set training's CUDA stream to its seed).

    In a loader worker nothing is restored: the worker only prepares items, each seeding the
    streams anew, and saving numpy's and python's states costs ~0.1 ms an item (a WGAN
    iteration on MNIST loads 320)."""
    if torch.utils.data.get_worker_info() is not None:
        seed_global_rngs(seed)
        yield
        return
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            seed_global_rngs(seed)
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def seed_global_rngs(seed: int) -> None:
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class EpochOrderSampler(DistributedSampler):
    """Yields this rank's (index, seed) pairs of the epoch set by `set_epoch`.

    A DistributedSampler, so Lightning keeps it under DDP instead of wrapping it: every rank
    draws the same epoch list and takes every `num_replicas`-th pair from its `rank` (the list
    is padded by wrapping around to a multiple of the ranks, as DistributedSampler pads).
    `resume(epoch, items_done)` makes that epoch start after the first `items_done` of this
    rank's pairs; its length stays the full epoch's, as Lightning counts the batches already
    done.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.resume_epoch: int | None = None
        self.resume_items = 0

    def resume(self, epoch: int, items_done: int) -> None:
        self.resume_epoch, self.resume_items = epoch, items_done

    def epoch_items(self) -> tuple[np.ndarray, np.ndarray]:
        """Every rank's (item indices, item seeds) of the current epoch, in order, padded by
        wrapping around to `total_size`. Arrays, not a list of pairs: a million items' pairs as
        Python objects held ~160 MB in every rank."""
        n = len(self.dataset)
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch)) & (2**63 - 1))
        order = torch.randperm(n, generator=generator).numpy()
        seeds = torch.randint(2**31 - 1, (n,), generator=generator).numpy()
        return np.resize(order, self.total_size), np.resize(seeds, self.total_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self.epoch_items()
        start = self.resume_items if self.epoch == self.resume_epoch else 0
        mine = slice(self.rank + start * self.num_replicas, self.total_size, self.num_replicas)
        return ((int(index), int(seed)) for index, seed in zip(order[mine], seeds[mine]))


def items_done_when_resharded(items_done: int, saved_world: int, world: int, batch_size: int) -> int:
    """Items each rank counts as trained in an epoch resumed on `world` ranks at `batch_size`,
    when the run was saved on `saved_world` ranks (at any batch size) that had each trained
    `items_done` of it.

    The ranks take turns through one epoch list, so the saved run had trained the list's first
    items_done x saved_world items. Each new rank takes its equal share of those as done, rounded
    down to whole batches, since every rank must run the same number of batches: the epoch goes
    on from there, nothing in it is left out, and fewer than world x batch_size items of it train
    a second time."""
    per_rank = items_done * saved_world // world
    return per_rank - per_rank % batch_size


class ScheduledBatches:
    """Batches of this rank's pairs whose size is a function of the training iteration they
    feed (ProGAN's and StyleGAN's batch size per resolution, src/models/progressive_schedule.py).

    `sizes(i)` is the loader batch of iteration i; `first_iteration()` is read when an epoch's
    iterator starts (the iterations trained so far, restored before a resumed epoch starts), so
    the sizes depend on the iteration count alone, not on how far ahead the loader runs. The
    epoch's last batch is dropped when short (`drop_last`) or kept. No length: it depends on
    where the epoch starts, so Lightning runs each epoch until the batches run out.
    """

    def __init__(self, sampler: EpochOrderSampler, sizes: Callable[[int], int], first_iteration: Callable[[], int],
                 drop_last: bool = False) -> None:
        self.sampler, self.sizes, self.first_iteration, self.drop_last = sampler, sizes, first_iteration, drop_last

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self._batches(iter(self.sampler), self.first_iteration())

    def _batches(self, items: Iterator[tuple[int, int]], iteration: int) -> Iterator[list[tuple[int, int]]]:
        while True:
            size = self.sizes(iteration)
            batch = list(islice(items, size))
            if not batch or (self.drop_last and len(batch) < size):
                return
            yield batch
            iteration += 1


class EpochOrderLoader(DataLoader):
    """A DataLoader over an EpochOrderSampler whose place in the epoch Lightning checkpoints
    (as a stateful loader) and restores before the resumed epoch's iterator starts.

    The place is what training has consumed, `position()` -> (epoch, items done by this rank),
    read from the trainer's progress: counting batches as they leave the iterator would count
    the one Lightning prefetches too.
    """

    def __init__(self, dataset: Dataset, *, sampler: EpochOrderSampler, position: Callable[[], tuple[int, int]],
                 reshard: Callable[[int, int, int, int | None], int], batch_sizes: Callable[[int], int] | None = None,
                 first_iteration: Callable[[], int] | None = None, **kwargs: Any) -> None:
        if batch_sizes is None:
            super().__init__(dataset, sampler=sampler, **kwargs)
        else:
            drop_last = kwargs.pop("drop_last", False)
            kwargs.pop("batch_size", None)
            super().__init__(dataset, batch_sampler=ScheduledBatches(sampler, batch_sizes, first_iteration, drop_last),
                             **kwargs)
            # A DataLoader given a batch sampler reports a SequentialSampler as its `sampler`;
            # Lightning reads that attribute to decide whether to put a DistributedSampler in
            # (which it cannot do around a custom batch sampler), and `state_dict` below reads it
            # too, so it names the sampler the batches are drawn from. DataLoader forbids setting
            # it after construction, hence object.__setattr__.
            object.__setattr__(self, "sampler", sampler)
        self.position = position
        #: (epoch, items done per saved rank, saved device count, saved batch size) -> items done
        #: per rank here, for an epoch resumed with another device count or batch size
        self.reshard = reshard

    def state_dict(self) -> dict[str, int]:
        if not isinstance(self.sampler, EpochOrderSampler):  # replaced, e.g. by overfit_batches
            return {}
        epoch, items_done = self.position()
        return {"order_seed": self.sampler.seed, "epoch": epoch, "items_done": items_done,
                "world_size": self.sampler.num_replicas, "batch_size": self.batch_size,
                "dataset_size": len(self.sampler.dataset)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if not state_dict or not isinstance(self.sampler, EpochOrderSampler):
            return
        self.sampler.seed = state_dict["order_seed"]
        epoch, items_done = state_dict["epoch"], state_dict["items_done"]
        # Older checkpoints recorded neither: they resume as saved.
        saved_world = state_dict.get("world_size", self.sampler.num_replicas)
        saved_batch = state_dict.get("batch_size", self.batch_size)
        size = len(self.sampler.dataset)
        saved_size = state_dict.get("dataset_size", size)
        if saved_size != size and items_done:
            log.warning("The training set had %d items when the checkpoint was saved and has %d now (images added or "
                        "removed, or data.max_dataset_size changed): epoch %d resumes in a new order after %d items "
                        "per device, so this epoch some items train twice and others not at all; the epochs after "
                        "it are whole", saved_size, size, epoch, items_done)
        if saved_world != self.sampler.num_replicas or saved_batch != self.batch_size:
            items_done = self.reshard(epoch, items_done, saved_world, saved_batch)
        self.sampler.resume(epoch, items_done)
