"""Tracking off the training process's critical path.

``JournalTracker`` appends what a run reports to ``<run dir>/tracking/journal.jsonl`` (one
JSON event per line; no MLflow in this process) and starts the background logger,
``python -m cnnexp.tracking.agent``, which imports MLflow, creates the run and replays the
journal into the store while training goes on, then draws the plots and logs the model. The
training process does not wait for it unless ``tracking.wait=true``: importing MLflow and
logging the model and plots take seconds, several times what a small run trains for.

Files in ``<run dir>/tracking/``::

    journal.jsonl   start, params, tags, metrics, artifact, text, results, finish events
    result/         what ``artifacts.prepare_results`` wrote at the end (weights, plot data)
    agent.pid       the background logger's pid (written by the training process)
    agent.json      its state: starting, running, done or failed (+ run_id, error)
    agent.log       its log

The logger watches its stdin, a pipe from the training process: when the pipe closes without
a ``finish`` event (the process was killed), it ends the run KILLED. ``wait_for_agents`` lets
a sweep (or a test) wait until the runs under a folder are all logged.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import TrackingError
from .base import INTERVAL_KEYS, Tracker
from .store import alive

logger = logging.getLogger("cnnexp")
JOURNAL, STATUS, PID, LOG, RESULT = "journal.jsonl", "agent.json", "agent.pid", "agent.log", "result"
LAUNCHER_PID = "launcher.pid"
FINAL_STATES = ("done", "failed")


class JournalTracker(Tracker):
    """Writes a run's events to ``folder/journal.jsonl`` for the background logger."""

    FLUSH_POINTS = 1000
    FLUSH_SECONDS = 5.0

    def __init__(self, folder: Path, cfg: dict, wait: bool = False):
        self.folder, self.cfg, self.wait = Path(folder), cfg, wait
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = open(self.folder / JOURNAL, "a", encoding="utf-8")
        self._metrics: list[list] = []
        self._last_flush = time.monotonic()
        self._done = False
        self._launcher: subprocess.Popen | None = None  # holds the logger's stdin pipe
        self.seconds = 0.0  # time this process spent tracking
        self.errors: list[str] = []

    @classmethod
    def start(cls, cfg: dict, info: dict, folder: Path, wait: bool = False) -> "JournalTracker":
        """Write the start event (config and job info) and start the background logger."""
        t0 = time.perf_counter()
        self = cls(folder, cfg, wait)
        self._write({"event": "start", "cfg": cfg, "info": {**info, "job_pid": os.getpid()}, "pid": os.getpid(),
                     "time": time.time()})
        self._launcher = spawn_agent(self.folder)
        logger.info(f"MLflow: logging in the background (log {self.folder / LOG})")
        self.seconds += time.perf_counter() - t0
        return self

    def _write(self, event: dict) -> None:
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()

    def _timed(self, event: dict) -> None:
        t0 = time.perf_counter()
        self._write(event)
        self.seconds += time.perf_counter() - t0

    # -- the Tracker interface ------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        self._timed({"event": "params", "params": params})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._timed({"event": "tags", "tags": {k: str(v) for k, v in tags.items() if v is not None}})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        self._metrics += [[k, float(v), ts, int(step)] for k, v in metrics.items()]
        if (len(self._metrics) >= self.FLUSH_POINTS or not set(metrics) <= INTERVAL_KEYS
                or time.monotonic() - self._last_flush >= self.FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        if self._metrics:
            self._timed({"event": "metrics", "metrics": self._metrics})
            self._metrics = []
        self._last_flush = time.monotonic()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._timed({"event": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._timed({"event": "text", "text": text, "artifact_file": artifact_file})

    def log_results(self, result: dict[str, Any]) -> None:
        """Write the weights and plot data (numpy only) for the logger to upload and draw."""
        from .artifacts import prepare_results

        t0 = time.perf_counter()
        folder = self.folder / RESULT
        self.errors += prepare_results(result, self.cfg, folder)
        self._write({"event": "results", "folder": str(folder.resolve()), "errors": self.errors})
        self.seconds += time.perf_counter() - t0

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Write the finish event and let the logger go (or wait for it with ``wait``).
        Only the first call counts."""
        if self._done:
            return
        self._done = True
        t0 = time.perf_counter()
        self.flush()
        for h in logging.getLogger().handlers:  # the job's log file is uploaded at the end
            h.flush()
        self.seconds += time.perf_counter() - t0
        self._write({"event": "finish", "status": status, "error": error, "seconds": self.seconds})
        self._file.close()
        if self._launcher is not None:
            self._launcher.stdin.close()  # the logger sees the training process is done
            self._launcher.poll()  # (reap the launcher, long gone by now)
        if self.wait:
            self.wait_for_agent()
        else:
            logger.info(f"MLflow: the run is still being logged in the background (state: {self.folder / STATUS})")

    def wait_for_agent(self, timeout: float = 600.0) -> dict:
        """Block (bounded) until the logger has finished; log its failure, if any. Returns its state."""
        deadline = time.monotonic() + timeout
        while pending(self.folder) and time.monotonic() < deadline:
            time.sleep(0.05)
        state = read_status(self.folder)
        if state.get("state") == "done":
            logger.info(f"MLflow: run {state.get('run_id')} logged")
        else:
            logger.error(f"cnnexp: the background MLflow logger did not finish "
                         f"({state.get('error') or state.get('state') or 'no state'}); see {self.folder / LOG}; "
                         f"log the run again with: python -m cnnexp.tracking.agent {self.folder}")
        return state


# Starts the logger, writes its pid to agent.pid and exits: the logger is thus nobody's child
# (joblib's loky kills a worker's whole process tree when a sweep is interrupted; the logger
# must survive that). Run with -S: it needs nothing beyond the standard library.
_LAUNCH = """import os, subprocess, sys
log, pid_file, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(log, "ab") as f:
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
with open(pid_file + ".tmp", "w") as f:
    f.write(str(p.pid))
os.replace(pid_file + ".tmp", pid_file)
"""


def spawn_agent(folder: Path) -> subprocess.Popen:
    """Start ``python -m cnnexp.tracking.agent --follow <folder>`` in its own session (a Ctrl-C
    in the terminal reaches the training process only, which then ends the run KILLED through
    the journal), through a launcher that exits at once; nothing waits for either. Returns the
    launcher: the write end of its stdin pipe, which the logger inherits, is the logger's sign
    of life from this process (closed at ``finish``, or by the kernel if this process dies).
    The logger's output goes to ``agent.log``."""
    cmd = [sys.executable, "-S", "-c", _LAUNCH, str(folder / LOG), str(folder / PID),
           sys.executable, "-m", "cnnexp.tracking.agent", "--follow", str(folder)]
    try:
        with open(folder / LOG, "ab") as log:
            launcher = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                        close_fds=True, start_new_session=True)  # no Ctrl-C meant for training
    except OSError as e:
        raise TrackingError(f"cannot start the background MLflow logger ({e}); "
                            f"set tracking.background=false to log from this process") from None
    (folder / LAUNCHER_PID).write_text(str(launcher.pid))
    return launcher


def read_status(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / STATUS).read_text())
    except (OSError, ValueError):
        return {}


def write_status(folder: Path, **state) -> None:
    """Replace ``agent.json`` atomically (a reader never sees half a file)."""
    path = Path(folder) / STATUS
    tmp = path.with_name(f".{STATUS}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **state, "updated": time.time()}))
    os.replace(tmp, path)


def pending(folder: Path) -> bool:
    """Is the logger of this run folder still working (or still being started)?"""
    folder = Path(folder)
    if read_status(folder).get("state") in FINAL_STATES:
        return False
    for name in (PID, LAUNCHER_PID):  # the logger's pid, once the launcher has written it
        try:
            return working(int((folder / name).read_text()))
        except (OSError, ValueError):
            continue
    return False


def working(pid: int) -> bool:
    """The process exists and is not a zombie (exited, not yet reaped by its parent)."""
    if not alive(pid):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def journals(root: str | Path) -> list[Path]:
    """The tracking folders (those with a journal) under ``root``."""
    return sorted(p.parent for p in Path(root).rglob(JOURNAL))


def wait_for_agents(root: str | Path, timeout: float = 120.0) -> list[Path]:
    """Wait (bounded) until every background logger under ``root`` has finished. Returns the
    folders whose logger is still working at the timeout."""
    t0 = time.monotonic()
    said = False
    while True:
        busy = [f for f in journals(root) if pending(f)]
        waited = time.monotonic() - t0
        if not busy or waited > timeout:
            if busy:
                logger.warning(f"cnnexp: {len(busy)} background MLflow logger(s) still working after "
                               f"{timeout:.0f} s: " + ", ".join(map(str, busy)))
            return busy
        if not said and waited > 2:
            logger.info(f"Waiting for {len(busy)} background MLflow logger(s) to finish")
            said = True
        time.sleep(0.1)
