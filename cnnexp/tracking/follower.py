"""The follower: the one background process that syncs journals while the training goes on,
and the ``python -m cnnexp.tracking`` command.

    python -m cnnexp.tracking sync <folder>     # a journal folder, a sweep folder, an outputs
                                                # or journals folder: logs what is not logged yet
    python -m cnnexp.tracking follow <folder>   # what a run (or a sweep) starts in the background

A single run starts one follower for its journal (unless ``tracking.wait=true``, another kind of
store, or a sweep: then the sweep's one follower does it). A follower retries a store that does
not answer for ``$CNNEXP_SYNC_PATIENCE`` seconds (default 300), then catches up the other
journals under the outputs folder whose writer is gone. Its output goes to
``<folder>/follower.log``.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import TrackingError
from ..paths import outputs_dir
from .journal import (JOURNAL, STATE, SWEEP_FILE, alive, first_event, folders, identity, pending, read_json,
                      write_json)

logger = logging.getLogger("cnnexp")
LOG, FOLLOWER = "follower.log", "follower.json"
NICE = 10


def spawn(folder: Path) -> subprocess.Popen:
    """Start ``python -m cnnexp.tracking follow <folder>`` in its own session (a Ctrl-C meant
    for training does not reach it); nothing waits for it."""
    cmd = [sys.executable, "-m", "cnnexp.tracking", "follow", str(folder)]
    try:
        with open(Path(folder) / LOG, "ab") as log:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 close_fds=True, start_new_session=True)
    except OSError as e:
        raise TrackingError(f"cannot start the tracking follower ({e.strerror or e}); the run is journaled in "
                            f"{folder}: log it with python -m cnnexp.tracking sync {folder}") from None
    try:
        write_json(Path(folder) / FOLLOWER, identity(p.pid))  # for wait_idle
    except OSError:
        pass
    return p


def sync_any(folder: Path, follow: bool = True, uri: str | None = None, experiment: str | None = None,
             wait_lock: bool = True) -> dict:
    """``sync`` a journal folder or ``sync_sweep`` a sweep folder."""
    if (Path(folder) / SWEEP_FILE).is_file():
        from .sweep import sync_sweep

        return sync_sweep(folder, wait_lock=wait_lock)
    from .sync import sync

    return sync(folder, follow=follow, uri=uri, experiment=experiment, wait_lock=wait_lock)


def patiently(folder: Path, patience: float | None = None) -> dict:
    """``sync_any``, retrying with backoff while the store refuses, up to ``patience`` seconds."""
    patience = float(os.environ.get("CNNEXP_SYNC_PATIENCE", 300)) if patience is None else patience
    deadline, pause = time.monotonic() + patience, 1.0
    while True:
        try:
            return sync_any(folder, wait_lock=False)
        except TrackingError as e:
            if time.monotonic() + pause > deadline:
                raise
            logger.warning(f"cnnexp: {e} (retrying in {pause:.0f} s)")
            time.sleep(pause)
            pause = min(pause * 2, 30.0)


def catch_up(outputs: Path | None = None, patience: float = 0.0) -> list[str]:
    """Sync every listed journal or sweep whose writer is gone; returns the errors."""
    errors = []
    for folder in pending(outputs):
        owner = read_json(folder / SWEEP_FILE) if (folder / SWEEP_FILE).is_file() else first_event(folder)
        heartbeat = folder / (SWEEP_FILE if (folder / SWEEP_FILE).is_file() else JOURNAL)
        if not owner or alive(owner, heartbeat=heartbeat):
            continue
        try:
            patiently(folder, patience)
        except TrackingError as e:
            errors.append(str(e))
            logger.error(f"cnnexp: {e}")
    return errors


def unsynced(outputs: Path | None = None) -> list[tuple[Path, str]]:
    """Listed folders whose last sync failed, with the error (cheap: no MLflow)."""
    return [(f, read_json(f / STATE)["error"]) for f in pending(outputs) if read_json(f / STATE).get("error")]


def wait_idle(root: Path, timeout: float = 120.0) -> list[Path]:
    """Wait (bounded) until no process syncs a journal or sweep under ``root``; returns the
    folders still busy at the timeout. For tests and benchmarks."""
    from .sync import folder_lock

    deadline = time.monotonic() + timeout
    while True:
        found = {p.parent for name in (JOURNAL, SWEEP_FILE) for p in Path(root).rglob(name)}
        busy = []
        for folder in sorted(found):
            follower = read_json(folder / FOLLOWER)
            if follower and alive(follower):  # (it may be catching up other folders)
                busy.append(folder)
                continue
            if read_json(folder / STATE).get("done"):
                continue
            with folder_lock(folder, wait=False) as free:
                if not free:
                    busy.append(folder)
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(0.1)


def _follow(folder: Path) -> int:
    os.nice(NICE)  # a background job: training comes first when both want a core
    status = 0
    try:
        state = patiently(folder)
        if state.get("done"):
            logger.info(f"cnnexp: {folder.name}: MLflow run {state['run_id']} ({state.get('status')}): {state['link']}")
    except TrackingError as e:
        logger.error(f"cnnexp: {e}")
        status = 4
    start = read_json(folder / SWEEP_FILE) or first_event(folder)
    catch_up(Path(start["outputs"]) if start.get("outputs") else None)
    return status


def _sync_command(target: Path, uri: str | None, experiment: str | None) -> int:
    """Log every journal found at ``target``; one line per run; 0 when all are logged."""
    if (target / JOURNAL).is_file() or (target / SWEEP_FILE).is_file():
        targets = [target]
    else:
        roots = [target, target / "journals"]
        targets = sorted({*pending(target), *(f for r in roots for f in folders(r))})
        targets += sorted(p.parent for p in target.glob("**/" + SWEEP_FILE) if p.parent not in targets)
    if not targets:
        print(f"cnnexp: error: no journal under {target}; pass a run's journal folder (<outputs>/journals/<run key>), "
              f"a sweep folder or the outputs folder", file=sys.stderr)
        return 2
    failed = 0
    for folder in targets:
        try:
            state = sync_any(folder, uri=uri, experiment=experiment)
            print(f"{folder.name}: MLflow run {state['run_id']} ({state.get('status')}): {state.get('link')}")
        except TrackingError as e:
            print(f"cnnexp: error: {e}", file=sys.stderr)
            failed += 1
    return 4 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cnnexp.tracking",
                                 description="Log cnnexp journals to MLflow (see docs/tracking.md).")
    ap.add_argument("command", choices=["sync", "follow"])
    ap.add_argument("folder", type=Path, nargs="?", default=None,
                    help="a journal folder, a sweep folder, or a folder holding them (default: the outputs folder)")
    ap.add_argument("--uri", help="log to this tracking URI instead of the run's own store (sync only)")
    ap.add_argument("--experiment", help="log into this experiment instead of the run's own (sync only)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(levelname)s] %(message)s")
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    target = (args.folder or outputs_dir()).resolve()
    if args.command == "follow":
        return _follow(target)
    return _sync_command(target, args.uri, args.experiment)
