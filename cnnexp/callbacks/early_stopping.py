"""Stop training when a monitored metric has not improved for ``patience`` epochs (Keras'
EarlyStopping: the run ends after epoch ``best_epoch + patience``)."""

from __future__ import annotations

from ..registry import CALLBACKS
from .base import Monitor


@CALLBACKS.register("early_stopping")
class EarlyStopping(Monitor):
    def __init__(self, monitor: str = "val/loss", mode: str = "auto", patience: int = 3, min_delta: float = 0.0):
        super().__init__(monitor, mode, min_delta)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        self.patience, self.wait = patience, 0

    def on_epoch_end(self, epoch, metrics):
        if self.improved(epoch, metrics):
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stop = True
            self.reason = (f"early stopping: {self.monitor} has not improved on {self.best:.4f} (epoch "
                           f"{self.best_epoch}) for {self.wait} epochs (patience {self.patience})")

    def state_dict(self):
        return {**super().state_dict(), "wait": self.wait}

    def load_state_dict(self, d):
        super().load_state_dict(d)
        self.wait = int(d["wait"])
