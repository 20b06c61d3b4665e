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
number of devices (`world_sizes`: the iteration from which each count held) finishes the phase
it was in with the images it still lacked, fading on from the alpha it had reached.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    """A phase, or the part of one trained on one number of devices."""
    first_iteration: int
    iterations: int      # math.inf for the last phase (full size, for the rest of training)
    level: int
    fading: bool
    alpha_from: float = 0.0   # a fading part's alpha at its first iteration ...
    alpha_to: float = 1.0     # ... and after its last
    world_size: int = 1


def level_resolution(level: int) -> int:
    return 4 * 2 ** level


class ProgressiveSchedule:
    def __init__(self, top_level: int, phase_images: int, batch_size: int, batch_sizes: dict | None = None,
                 lr_by_resolution: dict | None = None, base_lr: float = 1.0, start_level: int = 0,
                 world_sizes: list | None = None, grow: bool = True):
        self.top_level, self.base_lr = top_level, float(base_lr)
        self.batch_size = batch_size
        #: (first iteration, number of devices) of each part of the run; one device by default
        self.world_sizes = [(int(first), int(world)) for first, world in (world_sizes or [(0, 1)])]
        if self.world_sizes[0][0] != 0 or any(a[0] >= b[0] for a, b in zip(self.world_sizes, self.world_sizes[1:])):
            raise ValueError(f"world_sizes must start at iteration 0 and rise: {self.world_sizes}")
        self.batch_sizes = {int(k): int(v) for k, v in (batch_sizes or {}).items()}
        self.lr_by_resolution = {int(k): float(v) for k, v in (lr_by_resolution or {}).items()}
        levels = range(start_level, top_level + 1) if grow else [top_level]
        self.phases: list[Phase] = []
        first = 0
        for level in levels:
            if level > levels[0]:
                first = self._add(first, level, fading=True, images=phase_images)
            first = self._add(first, level, fading=False, images=phase_images if level < top_level else None)
        # Looked up every iteration (stage, batch size, rate): the phases' first iterations, once.
        self._starts = [phase.first_iteration for phase in self.phases]

    def _device_spans(self, first: int):
        """(start, end, devices) of each part of the run from iteration `first` on."""
        ends = [start for start, _ in self.world_sizes[1:]] + [math.inf]
        for (start, world), end in zip(self.world_sizes, ends):
            if end > first:
                yield max(start, first), end, world

    def _add(self, first: int, level: int, fading: bool, images: int | None) -> int:
        """Appends the phase starting at `first` (in parts where the device count changes inside
        it) and returns the iteration after it. A part takes the iterations its images need at
        its device count; each part's alpha goes on from where the one before stopped."""
        batch, alpha = self.level_batch_size(level), 0.0
        for start, end, world in self._device_spans(first):
            if images is None:   # the last phase: a part per device count, for the image count
                self.phases.append(Phase(start, end - start, level, fading, world_size=world))
                continue
            iterations = math.ceil(images / (batch * world))
            if start + iterations <= end:
                self.phases.append(Phase(start, iterations, level, fading, alpha, 1.0, world))
                return start + iterations
            done = end - start
            reached = alpha + (1.0 - alpha) * done / iterations
            self.phases.append(Phase(start, done, level, fading, alpha, reached, world))
            images, alpha = images - done * batch * world, reached
        return math.inf

    def level_batch_size(self, level: int) -> int:
        """Images per device in one iteration at this level."""
        return self.batch_sizes.get(level_resolution(level), self.batch_size)

    def phase(self, iteration: int) -> Phase:
        return self.phases[bisect.bisect_right(self._starts, iteration) - 1]

    def stage(self, iteration: int) -> tuple[int, float]:
        """(level, alpha) of training iteration `iteration`."""
        phase = self.phase(iteration)
        if not phase.fading:
            return phase.level, 1.0
        progress = (iteration - phase.first_iteration) / phase.iterations
        return phase.level, phase.alpha_from + (phase.alpha_to - phase.alpha_from) * progress

    def batch_size_at(self, iteration: int) -> int:
        return self.level_batch_size(self.phase(iteration).level)

    def lr_factor_at(self, iteration: int) -> float:
        """The rate of this iteration's resolution over the base rate (1 where none is listed)."""
        resolution = level_resolution(self.phase(iteration).level)
        return self.lr_by_resolution.get(resolution, self.base_lr) / self.base_lr

    def images_before(self, iteration: int) -> int:
        """Real images all devices have trained on before `iteration` (the papers' kimg axis)."""
        images = 0
        for phase in self.phases:
            done = min(max(iteration - phase.first_iteration, 0), phase.iterations)
            images += done * self.level_batch_size(phase.level) * phase.world_size
        return int(images)
