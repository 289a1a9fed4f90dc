"""What a killed run or sweep leaves behind, cleaned up by the next start (``cnnexp.preflight``).

* Checkpoint temp files (``.last.npz.<pid>.tmp``) whose writer is no longer running: a run
  killed (SIGKILL) while writing its checkpoint. A temp file whose pid is alive is left alone.
* Joblib workers of a sweep whose main process was killed: every sweep worker records itself
  in ``<outputs>/.workers/<pid>.json`` (its pid and start time, and the main process's) when it
  starts its first job. The next start stops a recorded worker only when it can prove the
  process is that worker (same pid and same start time, from ``/proc``) and the recorded main
  process is gone (no process with that pid and start time). Records of ended workers are deleted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

from .paths import outputs_dir

MAIN_ENV = "CNNEXP_MAIN_PROCESS"  # "<pid>:<start time>" of the process that started the sweep
TMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp$")
TMP_GLOBS = ("runs/*/*/checkpoints/.*.tmp", "multirun/*/*/*/checkpoints/.*.tmp")


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None
    when no such process is running (a zombie, which has exited and awaits its parent, counts as
    gone: stopping it again would only wait for nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]
    except (OSError, IndexError):
        return None


def same_process(pid: int, started: str | None) -> bool:
    return started is not None and start_time(pid) == started


def workers_dir(root: Path | None = None) -> Path:
    return (root or outputs_dir()) / ".workers"


def mark_main() -> None:
    """Called by the process that starts runs: its workers inherit the mark."""
    os.environ[MAIN_ENV] = f"{os.getpid()}:{start_time(os.getpid())}"


def register_worker(root: Path | None = None) -> Path | None:
    """In a sweep's worker process (not the main one): record this worker once."""
    mark = os.environ.get(MAIN_ENV, "")
    pid, _, started = mark.partition(":")
    if not pid.isdigit() or int(pid) == os.getpid():
        return None
    path = workers_dir(root) / f"{os.getpid()}.json"
    me = start_time(os.getpid())
    try:
        if path.is_file() and json.loads(path.read_text()).get("start") == me:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"pid": os.getpid(), "start": me, "main_pid": int(pid), "main_start": started}))
    except (OSError, ValueError):
        return None
    return path


def reap_workers(root: Path | None = None, grace: float = 3.0) -> list[int]:
    """Stop recorded workers whose main process is gone; returns the pids stopped."""
    stopped = []
    for rec_path in sorted(workers_dir(root).glob("*.json")):
        try:
            rec = json.loads(rec_path.read_text())
            pid, started = int(rec["pid"]), rec["start"]
            main_alive = same_process(int(rec["main_pid"]), rec["main_start"])
        except (OSError, ValueError, KeyError, TypeError):
            rec_path.unlink(missing_ok=True)
            continue
        if main_alive:
            continue  # its sweep is still running
        if same_process(pid, started):
            _stop(pid, started, grace)
            stopped.append(pid)
        rec_path.unlink(missing_ok=True)
    return stopped


def _stop(pid: int, started: str, grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except OSError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and same_process(pid, started):
            time.sleep(0.05)
        if not same_process(pid, started):
            return


def remove_stale_tmp(root: Path | None = None) -> list[Path]:
    """Delete checkpoint temp files whose writing process is gone."""
    root = root or outputs_dir()
    removed = []
    for pattern in TMP_GLOBS:
        for p in root.glob(pattern):
            m = TMP_NAME.match(p.name)
            if m and start_time(int(m.group(1))) is None:
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def at_start() -> None:
    mark_main()
    try:
        reap_workers()
        remove_stale_tmp()
    except OSError:  # an unreadable outputs folder is reported by the outputs check
        pass
