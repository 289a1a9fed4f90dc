"""Training callbacks (``callbacks`` config group): plain classes the loop calls after every
epoch's evaluation. Their state goes into the checkpoint's TrainState, so they resume exactly."""

from __future__ import annotations

from ..registry import CALLBACKS
from .base import Callback, Monitor
from .early_stopping import EarlyStopping
from .model_checkpoint import ModelCheckpoint

__all__ = ["Callback", "Monitor", "EarlyStopping", "ModelCheckpoint", "build_callbacks"]


def build_callbacks(spec: dict | None) -> dict[str, Callback]:
    """``{name: {type: early_stopping, monitor: ...}, ...}`` -> ``{name: Callback}`` (null entries skipped)."""
    out = {}
    for name, c in (spec or {}).items():
        if c is None:
            continue
        c = dict(c)
        kind = c.pop("type", name)
        out[name] = CALLBACKS.build(kind, c, where=f"callbacks.{name}")
    return out
