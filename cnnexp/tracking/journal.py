"""The journal: every run's record, written by the training process (no MLflow here).

Each run appends JSON lines to ``<root>/<run key>/journal.jsonl``, where ``<root>`` is
``<outputs>/journals`` for a single run and ``<sweep dir>/journals`` for a sweep's job, and the
run key is unique per run (time, pid, random): runs sharing or reusing a run folder never
share a journal. Events: ``start`` (key, writer pid, its start time and host, config, Hydra
job info, the sweep), ``params``, ``tags``, ``dataset``, ``metrics``, ``artifact``, ``text``,
``results``, ``finish``. Each event is one ``write`` of one whole line; a failed write (disk
full) stops the journal, never the training (one warning line).

``cnnexp.tracking.sync`` turns a journal into an MLflow run. A run's folder is listed in
``<outputs>/journals/.pending/`` until it is synced, so any later run can catch it up cheaply.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import TrackingError
from ..paths import outputs_dir
from .base import INTERVAL_KEYS, Tracker

logger = logging.getLogger("cnnexp")
JOURNAL, STATE, SWEEP_FILE = "journal.jsonl", "sync.json", "sweep.json"


# -- who wrote it, and is it still writing? ---------------------------------------------------
def process_start(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22): with the
    pid it names one process, even after the pid is reused."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def identity(pid: int | None = None) -> dict:
    pid = pid or os.getpid()
    return {"pid": pid, "pid_start": process_start(pid), "host": socket.gethostname()}


def alive(who: dict, stale_seconds: float | None = None, heartbeat: Path | None = None) -> bool:
    """Is the process ``who`` (from ``identity``) still running? On another host pids mean
    nothing: it counts as alive while ``heartbeat`` (its journal) changed in the last
    ``stale_seconds`` ($CNNEXP_STALE_SECONDS, default an hour)."""
    if who.get("host") != socket.gethostname():
        stale = stale_seconds or float(os.environ.get("CNNEXP_STALE_SECONDS", 3600))
        try:
            return heartbeat is not None and time.time() - heartbeat.stat().st_mtime < stale
        except OSError:
            return False
    start = process_start(int(who["pid"]))
    if start is None or (who.get("pid_start") is not None and start != who["pid_start"]):
        return False
    try:  # a zombie (exited, not yet reaped) is gone too
        return Path(f"/proc/{who['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- where journals are -----------------------------------------------------------------------
def new_key() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"


def pending_dir(outputs: Path | None = None) -> Path:
    return (outputs or outputs_dir()) / "journals" / ".pending"


def register(folder: Path, outputs: Path | None = None) -> None:
    """List ``folder`` as not synced yet (removed by ``unregister`` once it is)."""
    d = pending_dir(outputs)
    d.mkdir(parents=True, exist_ok=True)
    (d / folder.name).write_text(str(folder.resolve()))


def unregister(folder: Path, outputs: Path | None = None) -> None:
    (pending_dir(outputs) / Path(folder).name).unlink(missing_ok=True)


def pending(outputs: Path | None = None) -> list[Path]:
    """The journal folders (and sweep folders) listed as not synced yet; markers of vanished
    folders are dropped."""
    d = pending_dir(outputs)
    out = []
    for marker in sorted(d.glob("*")) if d.is_dir() else []:
        try:
            folder = Path(marker.read_text().strip())
        except OSError:
            continue
        if (folder / JOURNAL).is_file() or (folder / SWEEP_FILE).is_file():
            out.append(folder)
        else:
            marker.unlink(missing_ok=True)
    return out


def folders(root: Path) -> list[Path]:
    """The journal folders directly under ``root`` (a ``journals`` folder)."""
    return sorted(p.parent for p in Path(root).glob(f"*/{JOURNAL}"))


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict) -> None:
    """Replace ``path`` atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_events(path: Path, offset: int = 0) -> tuple[list[tuple[int, dict]], int]:
    """Whole lines after byte ``offset``: ``[(end offset, event)]`` and the offset reached.
    A last line without its newline (being written, or cut by a full disk) is left."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    out, pos = [], offset
    for line in data.split(b"\n")[:-1]:
        pos += len(line) + 1
        if line.strip():
            out.append((pos, json.loads(line)))
    return out, pos


def first_event(folder: Path) -> dict:
    with open(Path(folder) / JOURNAL, "rb") as f:
        line = f.readline()
    return json.loads(line) if line.endswith(b"\n") else {}


# -- the writer -------------------------------------------------------------------------------
class JournalTracker(Tracker):
    """The training process's tracker: appends events to its journal. ``seconds`` is the time
    it spent doing so (``perf/tracking_seconds``)."""

    FLUSH_POINTS = 1000
    FLUSH_SECONDS = 5.0

    def __init__(self, folder: Path, cfg: dict):
        self.folder, self.cfg = Path(folder), cfg
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.folder / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise TrackingError(f"cannot create the run's journal in {self.folder} ({e.strerror or e}); "
                                f"free some space or set CNNEXP_OUTPUTS to a writable folder") from None
        self._metrics: list[list] = []
        self._last_flush = time.monotonic()
        self.broken: str | None = None  # why the journal stopped (disk full), if it did
        self.status: str | None = None  # the end written by ``finish``
        self.seconds = 0.0

    @classmethod
    def start(cls, cfg: dict, info: dict, root: Path, uri: str | None = None) -> "JournalTracker":
        """A new journal under ``root`` (its folder named by a new run key), with the start event."""
        t0 = time.perf_counter()
        key = new_key()
        self = cls(Path(root) / key, cfg)
        sweep = read_json(Path(info["sweep_dir"]) / SWEEP_FILE) if info.get("sweep_dir") else {}
        self._write({"event": "start", "key": key, **identity(), "time": time.time(), "cfg": cfg,
                     "info": info, "uri": uri, "sweep": sweep.get("key"), "outputs": str(outputs_dir())})
        try:
            register(self.folder)
        except OSError as e:
            self._broke(e)
        self.seconds += time.perf_counter() - t0
        return self

    def _write(self, event: dict) -> None:
        if self.broken:
            return
        data = (json.dumps(event) + "\n").encode()
        try:
            if os.write(self._fd, data) != len(data):
                raise OSError(28, "No space left on device (short write)")
        except OSError as e:
            self._broke(e)

    def _broke(self, e: OSError) -> None:
        if self.broken:
            return
        self.broken = f"{e.strerror or e}"
        logger.warning(f"cnnexp: warning: cannot write the run's journal {self.folder / JOURNAL} "
                       f"({self.broken}); training goes on, tracking stops here")

    def _timed(self, event: dict) -> None:
        t0 = time.perf_counter()
        self._write(event)
        self.seconds += time.perf_counter() - t0

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._timed({"event": "tags", "tags": {k: str(v) for k, v in tags.items() if v is not None}})

    def log_dataset(self, dataset: dict[str, Any]) -> None:
        self._timed({"event": "dataset", **dataset})

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
        """Weights and plot data (numpy only) for the sync to upload and draw."""
        from .artifacts import prepare_results

        t0 = time.perf_counter()
        folder = self.folder / "result"
        try:
            errors = prepare_results(result, self.cfg, folder)
        except OSError as e:
            errors = [f"results: {e.strerror or e}"]
        self._write({"event": "results", "folder": str(folder.resolve()), "errors": errors})
        self.seconds += time.perf_counter() - t0

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Write the end (only the first call counts)."""
        if self.status is not None:
            return
        self.status = status
        t0 = time.perf_counter()
        self.flush()
        for h in logging.getLogger().handlers:  # the job's log file is uploaded at the end
            h.flush()
        self.seconds += time.perf_counter() - t0
        self._write({"event": "finish", "status": status, "error": error, "seconds": self.seconds,
                     "time": time.time()})
        os.close(self._fd)
