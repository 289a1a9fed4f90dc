"""The background logger: replays a run's journal (see ``cnnexp.tracking.journal``) into MLflow.

    python -m cnnexp.tracking.agent --follow <run dir>/tracking   # started by the training process
    python -m cnnexp.tracking.agent <run dir>/tracking            # log a journal again by hand

With ``--follow`` it tails the journal while its stdin (a pipe from the training process) is
open; a journal that stops without a ``finish`` event ends the run KILLED. Without it, the
journal is replayed as it stands, into a new run (for a logger that failed, e.g. because the
store was unreachable). Exit status: 0 logged, 4 tracking error, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from ..errors import TrackingError
from .journal import FINAL_STATES, JOURNAL, read_status, write_status
from .meta import first_line

logger = logging.getLogger("cnnexp")
NICE = 10


def events(path: Path, writer_gone: threading.Event, poll: float = 0.1) -> Iterator[dict]:
    """The journal's events as they are appended; ends once the writer is gone and the file is
    drained. A partly written last line waits for its newline."""
    with open(path, "rb") as f:
        pending = b""
        while True:
            chunk = f.read()
            if chunk:
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
                continue
            if writer_gone.is_set():
                return
            writer_gone.wait(poll)


def watch_stdin(gone: threading.Event) -> None:
    """Set ``gone`` when stdin (the training process's pipe) reaches end of file."""
    def read():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            gone.set()

    threading.Thread(target=read, name="stdin-watch", daemon=True).start()


def apply(tracker, event: dict) -> None:
    """One journal event -> the MlflowTracker call that logs it."""
    kind = event["event"]
    if kind == "params":
        tracker.log_params(event["params"])
    elif kind == "tags":
        tracker.set_tags(event["tags"])
    elif kind == "metrics":
        tracker.log_points(event["metrics"])
    elif kind == "artifact":
        tracker.guard(f"artifact {event['path']}", tracker.log_artifact, event["path"], event["artifact_path"])
    elif kind == "text":
        tracker.guard(f"text {event['artifact_file']}", tracker.log_text, event["text"], event["artifact_file"])
    elif kind == "results":
        tracker.errors += event.get("errors") or []
        tracker.log_result_folder(Path(event["folder"]))
    else:
        raise TrackingError(f"unknown journal event {kind!r}")


def replay(folder: Path, follow: bool) -> int:
    """Log the journal in ``folder`` as one MLflow run; returns the exit status."""
    from .mlflow_tracker import MlflowTracker

    t0 = time.perf_counter()
    gone = threading.Event()
    if follow:
        watch_stdin(gone)
    else:
        gone.set()
    write_status(folder, state="starting")
    tracker, ended = None, False
    try:
        stream = events(folder / JOURNAL, gone)
        start = next(stream, None)
        if not start or start.get("event") != "start":
            raise TrackingError(f"{folder / JOURNAL} does not begin with a start event")
        tracker = MlflowTracker.start(start["cfg"], start["info"])
        write_status(folder, state="running", run_id=tracker.run_id)
        for event in stream:
            if event["event"] == "finish":
                tracker.log_metrics({"perf/tracking_seconds": event.get("seconds", 0.0)}, step=0)
                tracker.seconds_metric = "perf/agent_seconds"
                tracker.seconds = time.perf_counter() - t0  # this process's time so far
                tracker.finish(event["status"], event.get("error"))
                ended = True
                break
            apply(tracker, event)
        if not ended:
            tracker.finish("KILLED", f"the training process (pid {start.get('pid')}) ended without "
                                     f"ending the run (killed?); its journal: {folder / JOURNAL}")
        write_status(folder, state="done", run_id=tracker.run_id, seconds=round(time.perf_counter() - t0, 3))
        return 0
    except BaseException as e:  # noqa: BLE001  (record why, end the run, exit non-zero)
        msg = first_line(e)
        if tracker is not None and not ended:
            tracker.finish("FAILED", f"the background MLflow logger failed: {msg}")
        write_status(folder, state="failed", error=msg, run_id=getattr(tracker, "run_id", None))
        logger.exception(f"cnnexp: background MLflow logger failed: {msg}")
        return 4


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cnnexp.tracking.agent",
                                 description="Log a cnnexp run's journal (<run dir>/tracking) to MLflow.")
    ap.add_argument("folder", type=Path, help="the run's tracking folder, with journal.jsonl")
    ap.add_argument("--follow", action="store_true", help="tail the journal while stdin is open")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    folder = args.folder.resolve()
    if not (folder / JOURNAL).is_file():
        print(f"cnnexp: error: {folder / JOURNAL} does not exist; pass a run's tracking folder "
              f"(<run dir>/tracking)", file=sys.stderr)
        return 2
    state = read_status(folder)
    if not args.follow and state.get("state") == "done":
        print(f"cnnexp: error: {folder} is already logged as MLflow run {state.get('run_id')}", file=sys.stderr)
        return 2
    if not args.follow and state.get("state") not in (None, *FINAL_STATES):
        print(f"cnnexp: error: a logger (pid {state.get('pid')}) is working on {folder} "
              f"(state {state.get('state')})", file=sys.stderr)
        return 2
    if args.follow:
        os.nice(NICE)  # a background job: training comes first when both want a core
    return replay(folder, args.follow)

if __name__ == "__main__":
    sys.exit(main())
