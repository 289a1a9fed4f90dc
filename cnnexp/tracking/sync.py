"""``sync(folder)``: one journal -> one MLflow run, idempotently.

``<folder>/sync.json`` records which MLflow run the journal became, in which store, and how far
(a byte offset into the journal) it has been sent; a second call continues from there. A run
is ``done`` only when the store confirms it: the run exists with the journal's end status and
every metric key has as many points as the journal holds. One process at a time syncs a
folder (an ``flock`` on ``sync.lock``, released by the kernel when that process dies).

The liveness rule: a journal without a ``finish`` event whose writer is gone (pid and process
start time, see ``journal.alive``) ends KILLED, with its checkpoints uploaded once more.

The same function serves the background follower (``follow=True``: wait for the writer),
``tracking.wait=true`` and the stores without a follower (in the training process, at the
end), the sweep follower, the catch-up of earlier runs and ``python -m cnnexp.tracking sync``.
"""

from __future__ import annotations

import fcntl
import logging
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import TrackingError
from . import mlflow_run, store
from .journal import JOURNAL, STATE, alive, first_event, read_events, read_json, unregister, write_json
from .meta import MAX_TAG_VALUE, clip, first_line, flatten

logger = logging.getLogger("cnnexp")
LOCK = "sync.lock"
BATCHED = ("params", "tags", "metrics")


class StoreChanged(Exception):
    """The SQLite file was deleted or replaced while the journal was being sent."""


@contextmanager
def folder_lock(folder: Path, wait: bool):
    """Yield True while holding ``folder``'s sync lock; False at once when another process
    holds it and ``wait`` is false."""
    with open(Path(folder) / LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def replay_command(folder: Path) -> str:
    return f"python -m cnnexp.tracking sync {folder}"


def sync(folder: Path, follow: bool = True, poll: float = 0.25, uri: str | None = None,
         experiment: str | None = None, wait_lock: bool = True) -> dict:
    """Send the journal in ``folder`` to its store and experiment (or ``uri``, ``experiment``);
    returns the sync state (``done`` once the store confirms the ended run). While the writer
    is alive it waits for more with ``follow``, else returns what it sent. ``wait_lock=False``: return at once (``busy``) when
    another process syncs the folder. Raises TrackingError (one line, with the command that
    logs the run later) when the store cannot take it."""
    folder = Path(folder).resolve()
    with folder_lock(folder, wait_lock) as mine:
        if not mine:
            return {**read_json(folder / STATE), "busy": True}
        for _ in range(3):
            try:
                state = _sync(folder, follow, poll, uri, experiment)
                if state.get("done"):
                    unregister(folder, Path(first_event(folder).get("outputs") or store.outputs_dir()))
                return state
            except StoreChanged as e:
                logger.warning(f"cnnexp: {e}; sending the run {folder.name} again from its journal")
                store.forget(e.args[1])
                write_json(folder / STATE, {})
            except TrackingError as e:
                msg = str(e) if "cnnexp.tracking sync" in str(e) else f"{e}; log it later with: {replay_command(folder)}"
                _record_failure(folder, msg)
                raise TrackingError(msg) from None
            except Exception as e:  # noqa: BLE001  (a store error: one line, the journal is kept)
                msg = (f"the run {folder.name} was not logged: {first_line(e)}; log it with: {replay_command(folder)}"
                       f" (--uri / --experiment to log it elsewhere)")
                _record_failure(folder, msg)
                raise TrackingError(msg) from e
        raise TrackingError(f"the MLflow store kept changing while the run {folder.name} was sent; "
                            f"log it with: {replay_command(folder)}")


def _record_failure(folder: Path, msg: str) -> None:
    try:
        write_json(folder / STATE, {**read_json(folder / STATE), "error": msg, "failed_at": time.time()})
    except OSError:
        pass


def _sync(folder: Path, follow: bool, poll: float, uri: str | None, experiment: str | None) -> dict:
    state = read_json(folder / STATE)
    if state.get("done") and uri in (None, state.get("uri")) and experiment in (None, state.get("experiment")):
        return state
    start = first_event(folder)
    if start.get("event") != "start":
        raise TrackingError(f"{folder / JOURNAL} does not begin with a start event; it is not a cnnexp journal")
    cfg = start["cfg"]
    uri = uri or state.get("uri") or start.get("uri") or store.resolve_uri((cfg.get("tracking") or {}).get("uri"))
    c = store.client(uri)
    fid = store.file_id(uri)
    experiment = experiment or (cfg.get("tracking") or {}).get("experiment") or "cnnexp"
    exp_id = store.experiment_id(c, experiment, uri)
    if state.get("run_id") and (state.get("experiment_id") != exp_id or state.get("uri") != uri
                                or not _exists(c, state["run_id"])):
        state = {}  # another store or experiment, or the store lost the run (file deleted): start over
    if not state.get("run_id"):
        parent = _parent(start)
        run_id = mlflow_run.create(c, exp_id, start, parent)
        state = {"run_id": run_id, "uri": uri, "experiment": experiment, "experiment_id": exp_id, "offset": 0,
                 "errors": []}
        mlflow_run.send(c, run_id, params=flatten(cfg))
        state["errors"] += mlflow_run.log_config(c, run_id, cfg, (start.get("info") or {}).get("output_dir"))
        write_json(folder / STATE, state)
    try:
        return _send(c, folder, state, start, follow, poll, fid)
    except Exception as e:
        if fid is not None and store.file_id(uri) != fid:
            raise StoreChanged(f"the MLflow store {store.sqlite_path(uri)} was deleted or replaced", uri) from e
        raise


def _send(c, folder: Path, state: dict, start: dict, follow: bool, poll: float, fid: list | None) -> dict:
    """The journal's events from ``state["offset"]`` on, then the end."""
    journal, uri = folder / JOURNAL, state["uri"]
    end = state.get("end")  # a sync cut short after the end was read
    while end is None:
        if fid is not None and store.file_id(uri) != fid:
            raise StoreChanged(f"the MLflow store {store.sqlite_path(uri)} was deleted or replaced", uri)
        events, _ = read_events(journal, state["offset"])
        for pos, event in _apply(c, state, events, start, folder):
            if event["event"] == "finish":
                end = state["end"] = event
            state["offset"] = pos
        if events:
            write_json(folder / STATE, state)
        elif end is None:
            if not alive(start, heartbeat=journal):
                break  # the liveness rule: no end, writer gone -> KILLED
            if not follow:
                return state  # sent what there is; the writer goes on
            time.sleep(poll)
    return _end(c, folder, state, start, end)


def _exists(c, run_id: str) -> bool:
    try:
        c.get_run(run_id)
        return True
    except Exception as e:  # noqa: BLE001
        if "RESOURCE_DOES_NOT_EXIST" in str(e) or "not found" in str(e).lower():
            return False
        raise


def _parent(start: dict) -> str | None:
    sweep_dir = (start.get("info") or {}).get("sweep_dir")
    if not start.get("sweep") or not sweep_dir:
        return None
    parent = read_json(Path(sweep_dir) / STATE).get("run_id")
    if not parent:
        raise TrackingError(f"the sweep's parent run is not in the store yet; log the sweep with: "
                            f"{replay_command(Path(sweep_dir))}")
    return parent


def _apply(c, state: dict, events: list, start: dict, folder: Path):
    """Send ``events``; yields ``(offset, event)`` once each is in the store. Params, tags and
    metrics go in one batch; of repeated uploads of one file only the last is sent."""
    params, tags, metrics, done = {}, {}, [], []
    last_upload = {(e["path"], e.get("artifact_path")): i for i, (_, e) in enumerate(events) if e["event"] == "artifact"}

    def flush():
        if params or tags or metrics:
            mlflow_run.send(c, state["run_id"], params, tags, metrics)
            params.clear(), tags.clear(), metrics.clear()
        yield from done
        done.clear()

    for i, (pos, e) in enumerate(events):
        kind = e["event"]
        if kind in BATCHED or kind == "start":
            params.update(e.get("params") or {})
            tags.update(e.get("tags") or {})
            metrics.extend(e.get("metrics") or [])
            done.append((pos, e))
            continue
        yield from flush()
        if kind == "artifact" and last_upload[(e["path"], e.get("artifact_path"))] == i:
            _upload(c, state, e)
        elif kind == "text":
            store.retry(c.log_text, state["run_id"], e["text"], e["artifact_file"])
        elif kind == "dataset":
            mlflow_run.log_dataset(c, state["run_id"], e)
        elif kind == "results":
            state["errors"] += e.get("errors") or []
            state["errors"] += mlflow_run.log_results(c, state["run_id"], state["experiment_id"], start["cfg"],
                                                      Path(e["folder"]), _points(folder))
        elif kind == "finish":
            mlflow_run.send(c, state["run_id"], metrics=[["perf/tracking_seconds", e.get("seconds") or 0.0,
                                                          int(1000 * (e.get("time") or time.time())), 0]])
        yield pos, e
    yield from flush()


def _upload(c, state: dict, e: dict) -> None:
    if Path(e["path"]).is_file():
        store.retry(c.log_artifact, state["run_id"], e["path"], e.get("artifact_path"))
    else:
        state["errors"].append(f"artifact {e['path']}: the file is gone")


def _points(folder: Path) -> dict[str, list]:
    """Every metric point of the journal, ``{key: [(step, value)]}`` (for the plots)."""
    out: dict[str, list] = {}
    for _, e in read_events(folder / JOURNAL)[0]:
        for k, v, _ts, step in e.get("metrics") or []:
            out.setdefault(k, []).append((int(step), float(v)))
    return out


def _end(c, folder: Path, state: dict, start: dict, end: dict | None) -> dict:
    """End the run (KILLED when the journal has no end) and check the store has it all."""
    run_id, events = state["run_id"], read_events(folder / JOURNAL)[0]
    tags = {}
    if end is None:
        status = "KILLED"
        error = (f"the training process (pid {start.get('pid')} on {start.get('host')}) ended without ending "
                 f"the run (killed?); its journal: {folder / JOURNAL}")
        for key in {(e["path"], e.get("artifact_path")) for _, e in events if e["event"] == "artifact"}:
            _upload(c, state, {"path": key[0], "artifact_path": key[1]})  # the last checkpoint
    else:
        status, error = end["status"], end.get("error")
    if error:
        tags["mlflow.note.content"] = clip(error, MAX_TAG_VALUE)
        tags["error"] = clip(error.strip().splitlines()[0] if error.strip() else error, 500)
    if state["errors"]:
        tags["cnnexp.tracking_errors"] = clip("; ".join(state["errors"]), MAX_TAG_VALUE)
    info = start.get("info") or {}
    log = Path(info.get("output_dir") or "") / f"{info.get('job_name')}.log"
    if info.get("output_dir") and log.is_file():
        store.retry(c.log_artifact, run_id, str(log))
    mlflow_run.send(c, run_id, tags=tags)
    store.retry(c.set_terminated, run_id, status, end_time=int(1000 * (end or {}).get("time", time.time())))
    expected: dict[str, set] = {}
    for _, e in events:
        for k, v, ts, step in e.get("metrics") or []:
            expected.setdefault(k, set()).add((repr(float(v)), int(ts), int(step)))
    if end is not None:
        expected["perf/tracking_seconds"] = {()}
    run = store.retry(c.get_run, run_id)
    missing = [k for k, pts in expected.items()
               if len(store.retry(c.get_metric_history, run_id, k)) < len(pts)]
    if run.info.status != status or missing:
        raise TrackingError(f"the store does not confirm run {run_id} (status {run.info.status}, expected "
                            f"{status}; metrics short: {', '.join(missing) or 'none'}); log it with: "
                            f"{replay_command(folder)}")
    state.update(done=True, status=status, error=None, synced_at=time.time(),
                 link=store.link(state["uri"], state["experiment_id"], run_id))
    write_json(folder / STATE, state)
    return state


def describe(state: dict) -> str:
    """``MLflow run <id>: <link>`` for a synced state."""
    return f"MLflow run {state['run_id']} ({state.get('status', '?')}): {state.get('link', '')}"

