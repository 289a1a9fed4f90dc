"""A sweep's parent run: created before the jobs start, ended after the last one with the best
job and a summary table (``sweep_summary.csv`` / ``.md``). Each job's run names the parent in
its ``mlflow.parentRunId`` tag (the id reaches job processes through ``$CNNEXP_PARENT_RUN_ID``).
"""

from __future__ import annotations

import logging

from ..errors import TrackingError
from .meta import MAX_TAG_VALUE, clip, first_line, run_name
from .mlflow_tracker import common_tags, sweep_id

logger = logging.getLogger("cnnexp")


class SweepRun:
    def __init__(self, client, run_id: str, exp_id: str, uri: str, folder: str | None = None):
        self.client, self.run_id, self.exp_id, self.uri = client, run_id, exp_id, uri
        self.folder = folder  # the sweep's directory: its jobs' background loggers write under it
        self.done = False
        self.failed: list[str] = []  # overrides of the jobs that ended FAILED

    @classmethod
    def start(cls, tracking: dict, info: dict) -> "SweepRun":
        """Create the store (before any job runs: parallel jobs must find the schema ready),
        the experiment and the parent run. ``info``: overrides, sweep_dir, sweeper, launcher."""
        from . import store

        uri = store.resolve_uri(tracking.get("uri"))
        experiment = tracking.get("experiment") or "cnnexp"
        try:
            client = store.client(uri)
            exp_id = store.experiment_id(client, experiment, uri)
            tags = {**common_tags(info), "cnnexp.role": "sweep", "sweep.id": sweep_id(info.get("sweep_dir")),
                    "sweep.dir": info.get("sweep_dir"), "sweep.sweeper": info.get("sweeper"),
                    "sweep.launcher": info.get("launcher"), "sweep.search_space": info.get("search_space")}
            name = "sweep " + (" ".join(info.get("overrides") or []) or run_name(None))
            run = store.retry(client.create_run, exp_id, run_name=name[:250],
                              tags={k: clip(str(v), MAX_TAG_VALUE) for k, v in tags.items() if v})
        except TrackingError:
            raise
        except Exception as e:
            raise TrackingError(f"cannot start the sweep's MLflow run in {uri}: {first_line(e)}") from e
        logger.info(f"MLflow sweep run {run.info.run_id} ({name}) in experiment '{experiment}' at {uri}")
        return cls(client, run.info.run_id, exp_id, uri, info.get("sweep_dir"))

    def end(self, status: str | None = None, note: str | None = None) -> None:
        """Summarise the jobs and end the run: ``status`` None means the sweep completed
        (FINISHED, or FAILED when no job finished); KILLED/FAILED when it was cut short."""
        if self.done:
            return
        self.done = True
        from .. import runs
        from .journal import wait_for_agents
        from .store import retry

        if self.folder:  # the jobs' runs are complete once their background loggers are done
            wait_for_agents(self.folder)
        try:
            kids = runs.children(self.client, self.exp_id, self.run_id)
            if status is not None and self._end_running(kids, note or "the sweep was interrupted"):
                kids = runs.children(self.client, self.exp_id, self.run_id)
            finished = [r for r in kids if r.info.status == "FINISHED"]
            self.failed = [r.data.tags.get("hydra.overrides", r.info.run_name) for r in kids
                           if r.info.status == "FAILED"]
            if status is None:
                status = "FINISHED" if finished else "FAILED"
                if not finished:
                    note = note or f"none of the sweep's {len(kids)} job(s) finished"
            self._summarise(kids, finished)
        except Exception as e:  # noqa: BLE001  (still end the run)
            logger.warning(f"cnnexp: could not summarise the sweep: {first_line(e)}")
            status = status or "FINISHED"
        if note:
            retry(self.client.set_tag, self.run_id, "mlflow.note.content", note)
        retry(self.client.set_terminated, self.run_id, status)

    def _end_running(self, kids: list, note: str) -> int:
        """Parallel jobs are SIGKILLed by joblib when the sweep is interrupted: end their runs
        KILLED. Returns how many there were."""
        from .store import retry

        running = [r for r in kids if r.info.status == "RUNNING"]
        for r in running:
            retry(self.client.set_tag, r.info.run_id, "mlflow.note.content", note)
            retry(self.client.set_terminated, r.info.run_id, "KILLED")
        return len(running)

    def _summarise(self, kids: list, finished: list) -> None:
        from .. import runs
        from .store import retry

        c, rid = self.client, self.run_id
        tags = {"sweep.jobs": str(len(kids)), "sweep.failed_jobs": str(sum(r.info.status == "FAILED" for r in kids))}
        metric = runs.pick_metric(finished) or runs.pick_metric(kids)
        if metric:
            table = runs.rows(kids, metric)
            retry(c.log_text, rid, runs.to_csv(table), "sweep_summary.csv")
            retry(c.log_text, rid, f"Sweep jobs sorted by {metric}\n\n" + runs.to_markdown(table), "sweep_summary.md")
            best = next((r for r in runs.rank(finished, metric) if metric in r.data.metrics), None)
            if best is not None:
                tags.update({"best.run_id": best.info.run_id, "best.run_name": best.info.run_name or "",
                             "best.metric": metric, "best.overrides": best.data.tags.get("hydra.overrides", "")})
                retry(c.log_metric, rid, f"best/{metric}", best.data.metrics[metric])
                logger.info(f"Sweep: best job {best.data.tags.get('sweep.job_num', '?')} "
                            f"({best.info.run_name}) {metric}={best.data.metrics[metric]:.4f}; "
                            f"compare with: python -m cnnexp.runs --metric {metric}")
        from mlflow.entities import RunTag

        retry(c.log_batch, rid, tags=[RunTag(k, v) for k, v in tags.items() if v])
