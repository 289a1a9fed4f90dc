"""What the run (``cnnexp.app``) needs from the lr schedule and the callbacks: building them
from the config, writing the best checkpoint, refusing to resume a run that stopped early."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def build_extras(cfg: dict) -> tuple:
    """``(schedule, callbacks)`` from ``lr_scheduler`` and ``callbacks`` (config errors surface here)."""
    from ..schedules import build_schedule
    from . import build_callbacks

    callbacks = build_callbacks(cfg.get("callbacks"))
    for name, cb in callbacks.items():
        mon = getattr(cb, "monitor", "")
        if mon.startswith("val/") and not cfg["data"]["val_size"]:
            raise ConfigError(f"callbacks.{name}.monitor={mon} needs a validation split: set data.val_size "
                              f"(e.g. data.val_size=500) or monitor a test/* or train/* metric")
    return build_schedule(cfg.get("lr_scheduler"), cfg["lr"]), callbacks


def save_best(callbacks: dict, folder, model, optimizer, state, cfg: dict) -> list[Path]:
    """Write the checkpoint of every callback that asks for it this epoch (``save_now``)."""
    from .. import checkpoint

    out = []
    for cb in callbacks.values():
        if getattr(cb, "save_now", False):
            out.append(checkpoint.save(Path(folder) / cb.filename, model, optimizer, state, cfg))
            cb.save_now = False
    return out


def check_resumable(state, path: str, callbacks: dict) -> None:
    """A run that early stopping ended resumes only when its early stopping would let it go on
    (``callbacks=none``, a larger patience); then ``state.stopped`` is cleared."""
    if not state.stopped:
        return
    for name, cb in callbacks.items():
        wait = state.callbacks.get(name, {}).get("wait")
        if wait is not None and wait >= getattr(cb, "patience", wait + 1):
            raise ConfigError(f"the run in {path} stopped early after epoch {state.epoch} ({state.stopped}); "
                              f"to train it further resume with callbacks=none or a larger "
                              f"callbacks.{name}.patience")
    state.stopped = ""
