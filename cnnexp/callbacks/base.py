"""The callback interface and the monitored-metric logic early stopping and the best
checkpoint share."""

from __future__ import annotations

import math


class Callback:
    """``on_epoch_end`` sees the epoch's metrics; setting ``stop`` ends training after it."""

    stop = False
    reason = ""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None: ...


class Monitor(Callback):
    """Tracks the best value of ``monitor``; ``mode`` min or max (auto: min for losses and
    errors, max otherwise). An improvement must beat the best by more than ``min_delta``."""

    def __init__(self, monitor: str = "val/loss", mode: str = "auto", min_delta: float = 0.0):
        if not isinstance(monitor, str) or "/" not in monitor:
            raise ValueError(f"monitor must be a metric name such as val/loss or val/acc, got {monitor!r}")
        if mode == "auto":
            mode = "min" if ("loss" in monitor or "error" in monitor) else "max"
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be min, max or auto, got {mode!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or min_delta < 0:
            raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}")
        self.monitor, self.mode, self.min_delta = monitor, mode, float(min_delta)
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0

    def value(self, metrics: dict[str, float]) -> float:
        if self.monitor not in metrics:
            from ..errors import ConfigError

            raise ConfigError(f"callbacks: monitor={self.monitor!r} is not among this run's metrics "
                              f"({', '.join(sorted(metrics))}); a val/* metric needs data.val_size > 0")
        return float(metrics[self.monitor])

    def improved(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Compare this epoch's value with the best so far; record it when better."""
        v = self.value(metrics)
        better = v < self.best - self.min_delta if self.mode == "min" else v > self.best + self.min_delta
        if better:
            self.best, self.best_epoch = v, epoch
        return better

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, d: dict) -> None:
        self.best, self.best_epoch = float(d["best"]), int(d["best_epoch"])
