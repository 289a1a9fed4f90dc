"""A sweep in the store: a parent run and one child run per job, made by the sweep's one follower.

The sweep (``callbacks.py``, in the sweep's main process) writes ``<sweep dir>/sweep.json``
(its key, its process, the overrides, the search space) before any job runs, and marks it
``ended`` after the last one. Jobs read the key from that file and write their journals into
``<sweep dir>/journals/``; no job starts a process of its own (under SLURM a job's processes
die with it). ``sync_sweep`` (the follower, started at the sweep's start, or any later catch-up)
creates the parent, syncs every job's journal, and once the sweep has ended (or its process is
gone: KILLED) summarises the jobs into the parent: best job, a table, the params all jobs
share, a description. Its state is ``<sweep dir>/sync.json``; the jobs' runs name the parent
in ``mlflow.parentRunId``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..errors import TrackingError
from ..paths import outputs_dir
from . import mlflow_run, store
from .journal import (JOURNAL, STATE, SWEEP_FILE, alive, first_event, folders, identity, new_key, read_json,
                      register, unregister, write_json)
from .meta import MAX_TAG_VALUE, clip, flatten
from .sync import folder_lock, sync

logger = logging.getLogger("cnnexp")


def begin(sweep_dir: Path, tracking: dict, info: dict) -> dict:
    """Write ``sweep.json`` (called by the sweep before its jobs); returns it."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sw = {"key": new_key(), **identity(), "time": time.time(), "uri": store.resolve_uri(tracking.get("uri")),
          "tracking": tracking, "info": info, "sweep_dir": str(sweep_dir.resolve()), "ended": False,
          "outputs": str(outputs_dir())}
    write_json(sweep_dir / SWEEP_FILE, sw)
    register(sweep_dir)
    return sw


def end(sweep_dir: Path) -> None:
    write_json(sweep_dir / SWEEP_FILE, {**read_json(sweep_dir / SWEEP_FILE), "ended": True})


def sync_sweep(sweep_dir: Path, poll: float = 0.5, wait_lock: bool = True) -> dict:
    """Parent run, every job's run, and (once the sweep is over) the summary. Returns the
    sweep's state: run_id, link, failed (the overrides of failed jobs), done."""
    sweep_dir = Path(sweep_dir).resolve()
    with folder_lock(sweep_dir, wait_lock) as mine:
        if not mine:
            return {**read_json(sweep_dir / STATE), "busy": True}
        state = read_json(sweep_dir / STATE)
        if state.get("done"):
            return state
        sw = read_json(sweep_dir / SWEEP_FILE)
        c = store.client(sw["uri"])
        exp_id = store.experiment_id(c, sw["tracking"].get("experiment") or "cnnexp", sw["uri"])
        if not state.get("run_id"):
            state = {"run_id": _create_parent(c, exp_id, sw), "uri": sw["uri"], "experiment_id": exp_id}
            write_json(sweep_dir / STATE, state)
        while True:
            over = read_json(sweep_dir / SWEEP_FILE).get("ended") or not alive(sw, heartbeat=sweep_dir / SWEEP_FILE)
            jobs, errors = folders(sweep_dir / "journals"), []
            for f in jobs:
                try:
                    if not read_json(f / STATE).get("done"):
                        sync(f, follow=False, wait_lock=False)
                except TrackingError as e:
                    errors.append(str(e))
            if over and (errors or all(read_json(f / STATE).get("done") for f in jobs)):
                break
            time.sleep(poll)
        if errors:  # the jobs' journals are kept; the parent stays open for the next try
            raise TrackingError(f"{len(errors)} job(s) of the sweep were not logged ({errors[0]}); log the sweep "
                                f"with: python -m cnnexp.tracking sync {sweep_dir}")
        interrupted = not read_json(sweep_dir / SWEEP_FILE).get("ended")
        state.update(_summarise(c, exp_id, state["run_id"], jobs, interrupted), done=True,
                     link=store.link(sw["uri"], exp_id, state["run_id"]))
        write_json(sweep_dir / STATE, state)
        unregister(sweep_dir)
        return state


def _create_parent(c, exp_id: str, sw: dict) -> str:
    found = store.retry(c.search_runs, [exp_id], f"tags.`cnnexp.run_key` = '{sw['key']}'", max_results=1)
    if found:
        return found[0].info.run_id
    info = sw["info"]
    tags = {**mlflow_run.common_tags(info, sw["pid"]), "cnnexp.role": "sweep", "cnnexp.run_key": sw["key"],
            "sweep.id": mlflow_run.sweep_id(sw["sweep_dir"]), "sweep.dir": sw["sweep_dir"],
            "sweep.sweeper": info.get("sweeper"), "sweep.launcher": info.get("launcher"),
            "sweep.search_space": info.get("search_space")}
    name = "sweep " + (" ".join(info.get("overrides") or []) or "default")
    run = store.retry(c.create_run, exp_id, run_name=name[:250], start_time=int(1000 * sw["time"]),
                      tags={k: clip(str(v), MAX_TAG_VALUE) for k, v in tags.items() if v})
    return run.info.run_id


def _shared_params(jobs: list[Path]) -> dict[str, str]:
    """The flattened config values every job has in common."""
    params = [flatten(first_event(f).get("cfg") or {}) for f in jobs if (f / JOURNAL).is_file()]
    if not params:
        return {}
    return {k: v for k, v in params[0].items() if all(p.get(k) == v for p in params[1:])}


def _summarise(c, exp_id: str, parent: str, jobs: list[Path], interrupted: bool) -> dict:
    """Best job, summary table, shared params, description; end the parent. Returns
    ``{"status", "failed"}``."""
    from .. import runs

    kids = runs.children(c, exp_id, parent)
    finished = [r for r in kids if r.info.status == "FINISHED"]
    failed = [r.data.tags.get("hydra.overrides", r.info.run_name) for r in kids if r.info.status == "FAILED"]
    status = "KILLED" if interrupted else "FINISHED" if finished else "FAILED"
    tags = {"sweep.jobs": str(len(kids)), "sweep.failed_jobs": str(len(failed))}
    metric = runs.pick_metric(finished) or runs.pick_metric(kids)
    best = None
    if metric:
        table = runs.rows(kids, metric)
        store.retry(c.log_text, parent, runs.to_csv(table), "sweep_summary.csv")
        store.retry(c.log_text, parent, f"Sweep jobs sorted by {metric}\n\n" + runs.to_markdown(table),
                    "sweep_summary.md")
        best = next((r for r in runs.rank(finished, metric) if metric in r.data.metrics), None)
    if best is not None:
        tags.update({"best.run_id": best.info.run_id, "best.run_name": best.info.run_name or "",
                     "best.metric": metric, "best.overrides": best.data.tags.get("hydra.overrides", "")})
        mlflow_run.send(c, parent, metrics=[[f"best/{metric}", best.data.metrics[metric], int(time.time() * 1000), 0]])
    what = (f"the sweep was interrupted after {len(kids)} job(s) started" if interrupted else
            f"{len(kids)} job(s), {len(finished)} finished, {len(failed)} failed")
    best_text = (f"; best: job {best.data.tags.get('sweep.job_num', '?')} ({best.info.run_name}) "
                 f"{metric}={best.data.metrics[metric]:.4f}" if best is not None else "")
    tags["mlflow.note.content"] = f"Sweep: {what}{best_text}. The jobs are this run's children; " \
                                  f"compare them with `python -m cnnexp.runs --sweep {parent[:8]}`."
    mlflow_run.send(c, parent, params=_shared_params(jobs), tags=tags)
    store.retry(c.set_terminated, parent, status)
    return {"status": status, "failed": failed, "best": best.info.run_id if best is not None else None}
