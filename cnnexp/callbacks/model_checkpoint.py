"""Keep the best model by a monitored metric: after an epoch that improves it, the run writes
``best.npz`` beside ``last.npz`` in its checkpoint folder and logs it (``checkpoints/``)."""

from __future__ import annotations

from ..registry import CALLBACKS
from .base import Monitor

BEST = "best.npz"


@CALLBACKS.register("model_checkpoint")
class ModelCheckpoint(Monitor):
    def __init__(self, monitor: str = "val/acc", mode: str = "auto", min_delta: float = 0.0, filename: str = BEST):
        super().__init__(monitor, mode, min_delta)
        if not isinstance(filename, str) or not filename.endswith(".npz") or "/" in filename:
            raise ValueError(f"filename must be a plain file name ending in .npz, got {filename!r}")
        self.filename = filename
        self.save_now = False  # set after an improving epoch; the run writes the file and clears it

    def on_epoch_end(self, epoch, metrics):
        self.save_now = self.improved(epoch, metrics)
