"""Hydra callback (``hydra.callbacks`` in conf/config.yaml): a parent MLflow run per sweep.

on_multirun_start creates the store, the experiment and the parent run before any job runs
and exports the parent's id as ``$CNNEXP_PARENT_RUN_ID`` (job processes, also joblib's, inherit
it); on_multirun_end records the best job and a summary table and ends the parent. A sweep cut
short (Ctrl-C, SIGTERM, a crash) ends its parent KILLED or FAILED: ``cnnexp.cli.main`` calls
``close_open_sweeps``, and an atexit hook covers other entry points.

Importing this module is cheap (Hydra instantiates the callback for single runs too).
"""

from __future__ import annotations

import atexit
import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .meta import PARENT_ENV

OPEN: list = []  # SweepRuns not ended yet
FAILED_JOBS: list[str] = []  # overrides of the jobs that failed, from the store (joblib jobs run elsewhere)
_atexit = False


def close_open_sweeps(exc: BaseException | None = None) -> None:
    """End every sweep still open: KILLED after an interrupt, else FAILED."""
    interrupted = isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code == 130)
    while OPEN:
        sweep = OPEN.pop()
        os.environ.pop(PARENT_ENV, None)
        try:
            sweep.end("KILLED" if interrupted else "FAILED",
                      "the sweep was interrupted" if interrupted else
                      f"the sweep stopped before it finished: {exc!r}" if exc else "the sweep did not finish")
        except Exception:  # noqa: BLE001  (exiting anyway)
            pass


def _target(node: Any) -> str | None:
    t = OmegaConf.select(node, "_target_", default=None) if node is not None else None
    return str(t).rsplit(".", 1)[-1] if t else None


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.sweep = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracking = OmegaConf.to_container(config.tracking, resolve=True) if "tracking" in config else {}
        if not tracking.get("enabled", True):
            return
        from .sweep import SweepRun

        hydra = config.hydra
        space = OmegaConf.select(config, "hydra.sweeper.params", default=None)
        info = {"overrides": list(hydra.overrides.task), "sweep_dir": str(hydra.sweep.dir),
                "sweeper": _target(hydra.get("sweeper")), "launcher": _target(hydra.get("launcher")),
                "search_space": OmegaConf.to_container(space) if space else None}
        global _atexit
        self.sweep = SweepRun.start(tracking, info)
        OPEN.append(self.sweep)
        os.environ[PARENT_ENV] = self.sweep.run_id
        if not _atexit:
            atexit.register(close_open_sweeps)
            _atexit = True

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep is None:
            return
        if self.sweep in OPEN:
            OPEN.remove(self.sweep)
        os.environ.pop(PARENT_ENV, None)
        self.sweep.end()
        FAILED_JOBS.extend(self.sweep.failed)
        self.sweep = None
