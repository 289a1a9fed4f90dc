"""Learning-rate schedules (``lr_scheduler`` config group), plain numpy-free Python.

A schedule is a pure function of the training position: ``lr(epoch, i, steps_per_epoch,
epochs)`` for the ``i``-th optimizer step of (0-based) ``epoch``, relative to the configured
``lr``. Having no state, it resumes exactly from any checkpoint (the position is in the
TrainState). ``epochs`` is the run's configured length, so extending a run (``epochs=20`` on
resume) stretches a cosine or one-cycle schedule from there on.

Registered under short ``type`` names in ``SCHEDULES``; register your own the same way.
"""

from __future__ import annotations

import math

from .registry import SCHEDULES


def _frac(x, name: str, lo: float = 0.0, hi: float = 1.0) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not lo <= x <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {x!r}")
    return float(x)


def _pos(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0:
        raise ValueError(f"{name} must be a number > 0, got {x!r}")
    return float(x)


def cosine_factor(t: float, floor: float) -> float:
    """From 1 at t=0 down to ``floor`` at t=1 along half a cosine (clamped outside [0, 1])."""
    t = min(max(t, 0.0), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


class Schedule:
    """``factor(...)`` scales the configured lr; ``constant`` schedules are skipped by the loop."""

    constant = False

    def __init__(self, lr: float):
        self.base = float(lr)

    def factor(self, epoch: int, i: int, steps_per_epoch: int, epochs: int) -> float:
        return 1.0

    def __call__(self, epoch: int, i: int, steps_per_epoch: int, epochs: int) -> float:
        return self.base * self.factor(epoch, i, steps_per_epoch, epochs)


@SCHEDULES.register("none")
class Constant(Schedule):
    """The configured lr throughout."""

    constant = True


@SCHEDULES.register("step")
class StepDecay(Schedule):
    """``lr * gamma ** (epoch // step_size)``: multiplied by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, lr: float, step_size: int = 1, gamma: float = 0.1):
        super().__init__(lr)
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"step_size must be an integer >= 1, got {step_size!r}")
        self.step_size, self.gamma = step_size, _frac(gamma, "gamma")

    def factor(self, epoch, i, steps_per_epoch, epochs):
        return self.gamma ** (epoch // self.step_size)


@SCHEDULES.register("cosine")
class Cosine(Schedule):
    """Per step: ``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2`` with ``t = (epoch + i /
    steps_per_epoch) / t_max`` (``t_max`` null: the run's epochs); ``min_lr`` from ``t_max`` on."""

    def __init__(self, lr: float, min_lr: float = 0.0, t_max: float | None = None):
        super().__init__(lr)
        self.min_lr = _frac(min_lr, "min_lr", 0.0, lr)
        self.t_max = None if t_max is None else _pos(t_max, "t_max")

    def factor(self, epoch, i, steps_per_epoch, epochs):
        t = (epoch + i / steps_per_epoch) / (self.t_max or epochs)
        return cosine_factor(t, self.min_lr / self.base)


@SCHEDULES.register("one_cycle")
class OneCycle(Schedule):
    """Smith's one-cycle policy (as torch's OneCycleLR, cosine annealing): from ``lr /
    div_factor`` up to ``lr`` over the first ``pct_start`` of the run, then down to
    ``lr / (div_factor * final_div_factor)``."""

    def __init__(self, lr: float, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4):
        super().__init__(lr)
        self.pct_start = _frac(pct_start, "pct_start", 0.0, 1.0)
        self.start = 1.0 / _pos(div_factor, "div_factor")
        self.end = self.start / _pos(final_div_factor, "final_div_factor")

    def factor(self, epoch, i, steps_per_epoch, epochs):
        total = epochs * steps_per_epoch
        g = epoch * steps_per_epoch + i
        up = self.pct_start * total
        if g < up:  # rising: cosine from start up to 1
            return 1.0 - (1.0 - self.start) * cosine_factor(g / up, 0.0)
        return cosine_factor((g - up) / max(total - 1 - up, 1), self.end)  # the end at the last step


@SCHEDULES.register("warmup")
class Warmup(Schedule):
    """Linear warm-up over ``warmup_epochs`` (fractional allowed: counted in steps, the first
    step at ``lr / warmup_steps``), then ``after``: ``constant`` or ``cosine`` down to
    ``min_lr`` at the end of the run."""

    def __init__(self, lr: float, warmup_epochs: float = 1.0, after: str = "cosine", min_lr: float = 0.0):
        super().__init__(lr)
        self.warmup_epochs = _pos(warmup_epochs, "warmup_epochs")
        if after not in ("constant", "cosine"):
            raise ValueError(f"after must be 'constant' or 'cosine', got {after!r}")
        self.after, self.min_lr = after, _frac(min_lr, "min_lr", 0.0, lr)

    def factor(self, epoch, i, steps_per_epoch, epochs):
        warm = max(round(self.warmup_epochs * steps_per_epoch), 1)
        g = epoch * steps_per_epoch + i
        if g < warm:
            return (g + 1) / warm
        if self.after == "constant":
            return 1.0
        total = epochs * steps_per_epoch
        return cosine_factor((g - warm) / max(total - warm, 1), self.min_lr / self.base)


def build_schedule(spec: dict | None, lr: float) -> Schedule:
    """``{type: cosine, min_lr: ...}`` (or None: constant) -> a Schedule for base ``lr``."""
    spec = dict(spec or {"type": "none"})
    name = spec.pop("type", "none")
    return SCHEDULES.build(name, {"lr": lr, **spec}, where="lr_scheduler")
