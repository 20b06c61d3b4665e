"""The growth schedule of ProGAN and StyleGAN, as their authors' code runs it: phases measured in
real images, a minibatch size and a learning rate per resolution.

Phase 0 trains the start level; then each level above is faded in over one phase (alpha rises
from 0 to 1) and trained alone over the next; after the top level's phase the networks stay at
full size. A phase lasts `phase_images` real images (the papers: 800k for ProGAN, 600k for
StyleGAN), so its length in iterations is set by the batch size of its level: a fading phase
already runs at the new level's resolution and takes that resolution's batch size and learning
rate, as the authors' `TrainingSchedule` does.

Everything is a function of the iteration number, so a resumed run picks its stage, batch size
and rate up from the step count alone. Batch sizes are per device, as `data.batch_size`; a
phase counts the images of all devices, as the papers count them. A run resumed on another
number of devices, or with other batch sizes or phase lengths (`parts`: the iteration from
which each set of settings held), finishes the phase it was in with the images it still lacked
by the new settings, fading on from the alpha it had reached, as the authors' code does when
resumed from a kimg count under a changed configuration.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Part:
    """The settings the phases' lengths follow, from iteration `first_iteration` of the run on
    (the next part's first iteration ends it)."""
    first_iteration: int
    phase_images: int
    batch_size: int                                   # a device's images where batch_sizes lists none
    batch_sizes: dict = field(default_factory=dict)   # resolution -> a device's images
    world_size: int = 1
    # Real batches an iteration loads (model.n_critic): the authors' image count, which sets the
    # phases, grows by every minibatch the critic takes. (Records of parts from before it was
    # counted read as 1: their phases were laid out so.)
    critic_batches: int = 1

    def level_batch_size(self, level: int) -> int:
        """Images per device in one iteration at this level."""
        return self.batch_sizes.get(level_resolution(level), self.batch_size)

    def as_record(self) -> dict:
        """For a checkpoint (plain types: read back with weights_only=True)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Phase:
    """A phase, or the part of one trained under one set of settings."""
    first_iteration: int
    iterations: int      # math.inf for the last phase (full size, for the rest of training)
    level: int
    fading: bool
    alpha_from: float = 0.0   # a fading part's alpha at its first iteration ...
    alpha_to: float = 1.0     # ... and after its last
    world_size: int = 1
    batch_size: int = 1       # images per device in one of its iterations
    critic_batches: int = 1   # batches of it an iteration loads


def level_resolution(level: int) -> int:
    return 4 * 2 ** level


class ProgressiveSchedule:
    def __init__(self, top_level: int, parts: list[Part], lr_by_resolution: dict | None = None,
                 base_lr: float = 1.0, start_level: int = 0, grow: bool = True):
        self.top_level, self.base_lr = top_level, float(base_lr)
        self.parts = [dataclasses.replace(p, batch_sizes={int(k): int(v) for k, v in p.batch_sizes.items()})
                      for p in parts]
        if not self.parts or self.parts[0].first_iteration != 0 or any(
                a.first_iteration >= b.first_iteration for a, b in zip(self.parts, self.parts[1:])):
            raise ValueError(f"the schedule's parts must start at iteration 0 and rise: "
                             f"{[p.first_iteration for p in self.parts]}")
        self.lr_by_resolution = {int(k): float(v) for k, v in (lr_by_resolution or {}).items()}
        levels = range(start_level, top_level + 1) if grow else [top_level]
        self.phases: list[Phase] = []
        first = 0
        for level in levels:
            if level > levels[0]:
                first = self._add(first, level, fading=True)
            first = self._add(first, level, fading=False, last=level == top_level)
        # Looked up every iteration (stage, batch size, rate): the phases' first iterations, once.
        self._starts = [phase.first_iteration for phase in self.phases]

    def _spans(self, first: int):
        """(start, end, part) of each part of the run from iteration `first` on."""
        ends = [part.first_iteration for part in self.parts[1:]] + [math.inf]
        for part, end in zip(self.parts, ends):
            if end > first:
                yield max(part.first_iteration, first), end, part

    def _add(self, first: int, level: int, fading: bool, last: bool = False) -> int:
        """Appends the phase starting at `first` (in pieces where the settings change inside it)
        and returns the iteration after it. A piece takes the iterations that the images its
        part's phase length still lacks need at its batch and device count; each piece's alpha
        goes on from where the one before stopped."""
        images_done, alpha = 0, 0.0
        for start, end, part in self._spans(first):
            batch, world, critics = part.level_batch_size(level), part.world_size, part.critic_batches
            if last:   # the last phase: a piece per part, for the image count
                self.phases.append(Phase(start, end - start, level, fading, world_size=world, batch_size=batch,
                                         critic_batches=critics))
                continue
            images_per_iteration = batch * world * critics
            iterations = math.ceil(max(part.phase_images - images_done, 0) / images_per_iteration)
            if start + iterations <= end:
                if iterations:
                    self.phases.append(Phase(start, iterations, level, fading, alpha, 1.0, world, batch, critics))
                return start + iterations
            done = end - start
            reached = alpha + (1.0 - alpha) * done / iterations
            self.phases.append(Phase(start, done, level, fading, alpha, reached, world, batch, critics))
            images_done, alpha = images_done + done * images_per_iteration, reached
        return math.inf

    def phase(self, iteration: int) -> Phase:
        return self.phases[bisect.bisect_right(self._starts, iteration) - 1]

    def opens_phase(self, iteration: int) -> bool:
        """Whether `iteration` is the first of a fade-in or a stabilising phase (not the run's
        first, nor a piece of one phase where only the settings change)."""
        if iteration == 0:
            return False
        this, before = self.phase(iteration), self.phase(iteration - 1)
        return (this.level, this.fading) != (before.level, before.fading)

    def stage(self, iteration: int) -> tuple[int, float]:
        """(level, alpha) of training iteration `iteration`."""
        phase = self.phase(iteration)
        if not phase.fading:
            return phase.level, 1.0
        progress = (iteration - phase.first_iteration) / phase.iterations
        return phase.level, phase.alpha_from + (phase.alpha_to - phase.alpha_from) * progress

    def batch_size_at(self, iteration: int) -> int:
        return self.phase(iteration).batch_size

    def lr_factor_at(self, iteration: int) -> float:
        """The rate of this iteration's resolution over the base rate (1 where none is listed)."""
        resolution = level_resolution(self.phase(iteration).level)
        return self.lr_by_resolution.get(resolution, self.base_lr) / self.base_lr

    def images_before(self, iteration: int) -> int:
        """Real images all devices have loaded before `iteration`, every critic batch counted
        (the papers' kimg axis)."""
        images = 0
        for phase in self.phases:
            done = min(max(iteration - phase.first_iteration, 0), phase.iterations)
            images += done * phase.batch_size * phase.world_size * phase.critic_batches
        return int(images)
