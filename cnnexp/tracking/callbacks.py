"""Hydra callback (``hydra.callbacks`` in conf/config.yaml): a sweep's one follower.

on_multirun_start writes ``<sweep dir>/sweep.json`` (the jobs find it there, whatever launcher
runs them, as long as they see the sweep folder) and starts the sweep's follower, which makes
the parent run and the jobs' runs as their journals grow. on_multirun_end marks the sweep
ended, waits for the follower (it summarises the jobs into the parent and ends it), says where
the sweep is and exits 1 when a job failed. A sweep cut short needs nothing here: the follower
sees the sweep's process gone and ends the parent KILLED.

Importing this module is cheap (Hydra instantiates the callback for single runs too).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

logger = logging.getLogger("cnnexp")


def _target(node: Any) -> str | None:
    t = OmegaConf.select(node, "_target_", default=None) if node is not None else None
    return str(t).rsplit(".", 1)[-1] if t else None


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.folder: Path | None = None
        self.follower: int | None = None  # its pid (the callback is pickled to joblib's workers: no Popen)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracking = OmegaConf.to_container(config.tracking, resolve=True) if "tracking" in config else {}
        if not tracking.get("enabled", True):
            return
        from ..errors import CnnexpError
        from . import follower, store, sweep

        hydra = config.hydra
        space = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        info = {"overrides": list(hydra.overrides.task), "sweeper": _target(hydra.get("sweeper")),
                "launcher": _target(hydra.get("launcher")),
                "search_space": OmegaConf.to_container(space) if space else None}
        try:
            background = store.precheck(store.resolve_uri(tracking.get("uri")))
            self.folder = Path(str(hydra.sweep.dir)).resolve()
            sweep.begin(self.folder, tracking, info)
            self.follower = follower.spawn(self.folder).pid if background else None
        except CnnexpError as e:  # (Hydra turns a callback's exception into a warning)
            print(f"cnnexp: error: {e}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.folder is None:
            return
        from ..errors import TrackingError
        from .journal import STATE, read_json
        from .sweep import end, sync_sweep

        end(self.folder)
        if self.follower is not None:
            try:
                os.waitpid(self.follower, 0)  # bounded by the follower's patience with the store
            except ChildProcessError:
                pass
        try:
            state = read_json(self.folder / STATE)
            if not state.get("done"):  # no follower (another kind of store), or it died
                state = sync_sweep(self.folder)
        except TrackingError as e:
            print(f"cnnexp: error: {e}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)
        logger.info(f"MLflow sweep run {state['run_id']} ({state.get('status')}): {state.get('link')}")
        if state.get("failed"):
            print(f"cnnexp: {len(state['failed'])} job(s) failed: " + "; ".join(state["failed"]), file=sys.stderr)
            sys.exit(1)
