"""Learning-rate factors for LambdaLR, as picklable objects so scheduler state checkpoints.

Each factor is a function of `t`, the number of scheduler steps taken; the model steps the
schedulers once per epoch or once per iteration (`lr_schedule.unit`), so `constant` and
`decay` count epochs or iterations accordingly.
"""
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from src.utils.config_checks import is_number, require_int

POLICIES = ("constant", "linear", "step", "cosine", "exponential")
UNITS = ("epoch", "iteration")


class DecayToZero:
    """Constant for `constant` steps, then down to 0 over `decay` steps. Either may be None
    while it waits for the run's length ("half", filled in by `fill_in_halves` once the
    training loader exists); until then only LambdaLR's initial call, at step 0, is answered."""

    def __init__(self, constant: int | None, decay: int | None):
        self.constant, self.decay = constant, decay if decay is None else max(decay, 1)

    @property
    def waits_for_the_run_length(self) -> bool:
        return self.constant is None or self.decay is None

    def fill_in_halves(self, length: int) -> None:
        """The first half of a `length`-step run for a missing `constant`, the rest for a missing `decay`."""
        first_half = length // 2
        if self.constant is None:
            self.constant = first_half
        if self.decay is None:
            self.decay = max(length - first_half, 1)

    def __call__(self, t: int) -> float:
        if self.waits_for_the_run_length:
            if t:
                raise RuntimeError("model.lr_schedule's 'half' was not filled in with the run's length before "
                                   "the first scheduler step")
            return 1.0   # any constant >= 0 starts at the full rate
        return self.factor(t)

    def factor(self, t: int) -> float:
        raise NotImplementedError


def decay_progress(t: int, constant: int, decay: int) -> float:
    """How far step `t` (0-based: the rate step t trains at) is into the decay, 0 to 1: steps
    0..constant-1 at the full rate, then `decay` steps at 1 - k / (decay + 1), k = 1..decay, and
    0 once the run is over (CycleGAN's and pix2pix's current code: epochs 1-100 at the initial
    rate, 101-200 from 100/101 down to 1/101 of it; its releases have stepped the schedule at
    other points of the epoch, so older ones may be an epoch off. U-GAT-IT's and NICE-GAN's code
    decay per iteration by 1/decay and train their last iteration at 0; the difference is a
    factor of 1/decay)."""
    return min(max(0, t + 1 - constant), decay + 1) / (decay + 1)


class LinearDecay(DecayToZero):
    """Linear to 0 after the constant part (CycleGAN: 100 + 100 epochs)."""

    def factor(self, t: int) -> float:
        return 1.0 - decay_progress(t, self.constant, self.decay)


class StepDecay:
    def __init__(self, step_size: int, gamma: float):
        self.step_size, self.gamma = max(step_size, 1), gamma

    def __call__(self, t: int) -> float:
        return self.gamma ** (t // self.step_size)


class CosineDecay(DecayToZero):
    """Half a cosine to 0 after the constant part."""

    def factor(self, t: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * decay_progress(t, self.constant, self.decay)))


class ExponentialDecay:
    """The rate divided by `rate` at every step, down to `min_factor` of the start (the GAN
    paper's code: pylearn2's ExponentialDecay, 1.000004 per update, down to lr 1e-6)."""

    def __init__(self, rate: float, min_factor: float):
        self.rate, self.min_factor = rate, min_factor

    def __call__(self, t: int) -> float:
        return max(self.rate ** -t, self.min_factor)


class Constant:
    def __call__(self, t: int) -> float:
        return 1.0


def decay_end_mismatch(factor, unit: str, length: int, resumed: bool = False) -> str | None:
    """What goes amiss when a decay to 0 (`factor`, a scheduler's LinearDecay or CosineDecay)
    does not end where the run does: a run shortened with trainer.max_epochs alone (CycleGAN's
    100 + 100 epochs) never reaches the low rates, one lengthened (or `resumed` with a longer
    max_iters: the scheduler keeps the decay of the run it continues, whatever the settings say)
    trains on at a rate of 0. None when they agree, or for other schedules."""
    if not isinstance(factor, DecayToZero):
        return None
    end = factor.constant + factor.decay
    if end == length:
        return None
    outcome = (f"it stops with the rate at {factor(length):.2f} of its start" if length < end
               else f"its last {length - end} {unit}s train at a rate of 0")
    fix = ("A resumed run keeps the schedule of the run it continues, whatever model.lr_schedule says: to train "
           "longer on a schedule of its own, start a new run from its weights (init_from=<its checkpoint>) with "
           "model.lr_schedule.constant and decay that fit" if resumed else
           "Set ++model.lr_schedule.constant=... ++model.lr_schedule.decay=... to fit the run (or both to half)")
    return (f"model.lr_schedule decays the rate to 0 over {unit}s {factor.constant}-{end}, but this run is {length} "
            f"{unit}s long: {outcome}. {fix}, or ignore this if it is meant.")


def check_schedule_settings(policy: str = "linear", unit: str = "epoch", constant=100, decay=100, step_size=50,
                            gamma=0.1, decay_rate=1.0, min_factor=0.0) -> None:
    """ValueError naming the `model.lr_schedule` key of a value build_scheduler cannot use (instead
    of a TypeError at the first scheduler step), or one that silently misbehaves (a negative
    `constant` decays from the start). Checked when a fit configures its optimizers, not when the
    model is built, so a checkpoint of an older run still loads for inference."""
    if policy not in POLICIES:
        raise ValueError(f"Unknown model.lr_schedule.policy '{policy}'; choose one of {POLICIES}")
    if unit not in UNITS:
        raise ValueError(f"Unknown model.lr_schedule.unit '{unit}'; choose one of {UNITS}")
    # `half` has been replaced by the run's length, or by None while it waits for it (DecayToZero).
    for key, value in (("constant", constant), ("decay", decay)):
        if value not in ("half", None):
            require_int(f"model.lr_schedule.{key}", value, least=0, why=f" or half ({unit}s; half: half the run)")
    require_int("model.lr_schedule.step_size", step_size, why=f" ({unit}s between the rate's steps)")
    # Either the other way round grows the rate without bound, to an OverflowError mid-run.
    if not is_number(gamma) or not 0 < gamma <= 1:
        raise ValueError(f"model.lr_schedule.gamma={gamma!r} must be a number in (0, 1]: the rate is multiplied by it "
                         f"every step_size {unit}s")
    if not is_number(decay_rate) or decay_rate < 1:
        raise ValueError(f"model.lr_schedule.decay_rate={decay_rate!r} must be a number >= 1: the rate is divided by "
                         f"it every {unit} (1.000004 in the GAN paper's code; torch's ExponentialLR(gamma) is "
                         f"decay_rate=1/gamma)")
    if not is_number(min_factor) or min_factor < 0:
        raise ValueError(f"model.lr_schedule.min_factor={min_factor!r} must be a number >= 0")


def build_scheduler(optimizer: Optimizer, policy: str = "linear", unit: str = "epoch", constant: int = 100,
                    decay: int = 100, step_size: int = 50, gamma: float = 0.1, decay_rate: float = 1.0,
                    min_factor: float = 0.0) -> LambdaLR:
    check_schedule_settings(policy, unit, constant, decay, step_size, gamma, decay_rate, min_factor)
    factor = {"constant": lambda: Constant(), "linear": lambda: LinearDecay(constant, decay),
              "step": lambda: StepDecay(step_size, gamma), "cosine": lambda: CosineDecay(constant, decay),
              "exponential": lambda: ExponentialDecay(decay_rate, min_factor)}[policy]()
    return LambdaLR(optimizer, factor)


def rescale_schedule(scheduler: LambdaLR, factor: float) -> None:
    """Scale a restored schedule and its optimizer's rates by `factor`, the schedule's shape kept
    (a resume at another learning rate): its bases, the groups' current and initial rates, and
    what `get_last_lr()` hands back until the next step, the schedule's own rate (ProGAN
    multiplies that by its resolution's factor, which the groups' rates hold already)."""
    scheduler.base_lrs = [rate * factor for rate in scheduler.base_lrs]
    for group in scheduler.optimizer.param_groups:
        group["lr"] *= factor
        group["initial_lr"] *= factor   # set by LambdaLR
    scheduler._last_lr = [rate * factor for rate in scheduler.get_last_lr()]
