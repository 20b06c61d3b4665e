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

import math
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class SeededItems(Dataset):
    """A dataset indexed by (index, seed): item `index`, prepared with torch's RNG seeded by
    `seed` (the caller's RNG state is left as it was). A plain index gives the item as the
    wrapped dataset does (Lightning's `overfit_batches` swaps in a sequential sampler)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


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

    def epoch_items(self) -> list[tuple[int, int]]:
        """Every rank's pairs of the current epoch, in order, padded to `total_size`."""
        n = len(self.dataset)
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch)) & (2**63 - 1))
        order = torch.randperm(n, generator=generator).tolist()
        seeds = torch.randint(2**31 - 1, (n,), generator=generator).tolist()
        items = list(zip(order, seeds))
        return (items * math.ceil(self.total_size / n))[: self.total_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self.epoch_items()[self.rank: self.total_size: self.num_replicas]
        start = self.resume_items if self.epoch == self.resume_epoch else 0
        return iter(mine[start:])


class EpochOrderLoader(DataLoader):
    """A DataLoader over an EpochOrderSampler whose place in the epoch Lightning checkpoints
    (as a stateful loader) and restores before the resumed epoch's iterator starts.

    The place is what training has consumed, `position()` -> (epoch, items done by this rank),
    read from the trainer's progress: counting batches as they leave the iterator would count
    the one Lightning prefetches too.
    """

    def __init__(self, dataset: Dataset, *, sampler: EpochOrderSampler,
                 position: Callable[[], tuple[int, int]], **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.position = position

    def state_dict(self) -> dict[str, int]:
        if not isinstance(self.sampler, EpochOrderSampler):  # replaced, e.g. by overfit_batches
            return {}
        epoch, items_done = self.position()
        return {"order_seed": self.sampler.seed, "epoch": epoch, "items_done": items_done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict and isinstance(self.sampler, EpochOrderSampler):
            self.sampler.seed = state_dict["order_seed"]
            self.sampler.resume(state_dict["epoch"], state_dict["items_done"])
