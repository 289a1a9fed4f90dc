"""MLflow behind the Tracker interface: one MLflow run per cnnexp run (or sweep job).

Cost: params, tags and metric points are buffered and sent with ``log_batch`` at the end of
each epoch (when a call carries per-epoch metrics), when 1,000 points are waiting, after
30 s, and at ``finish``; one batch costs about as much as one ``log_metric`` call.
``perf/tracking_seconds`` records the time spent in this class (imports included).
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import TrackingError
from ..paths import checkout_root, outputs_dir
from .base import INTERVAL_KEYS, Tracker
from .meta import (MAX_PARAM_VALUE, MAX_TAG_VALUE, PARENT_ENV, clip, first_line, flatten, git_commit,
                   run_name, scalar)

logger = logging.getLogger("cnnexp")


def sweep_id(sweep_dir: str | None) -> str | None:
    """The sweep's directory relative to the outputs folder, e.g. ``multirun/2025-01-31/12-00-00.123456``."""
    if not sweep_dir:
        return None
    try:
        return str(Path(sweep_dir).resolve().relative_to(outputs_dir()))
    except ValueError:
        return str(sweep_dir)


def common_tags(info: dict) -> dict[str, str]:
    """Tags shared by runs and sweep parents: source, user, host, git commit, overrides."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001  (no user name in some containers)
        user = str(os.getuid())
    tags = {"mlflow.source.name": "cnnexp", "mlflow.source.type": "LOCAL", "mlflow.user": user,
            "mlflow.source.git.commit": git_commit(checkout_root()), "cnnexp.version": __version__,
            "cnnexp.host": socket.gethostname(), "cnnexp.pid": str(os.getpid()),
            "hydra.overrides": " ".join(info.get("overrides") or [])}
    return {k: clip(str(v), MAX_TAG_VALUE) for k, v in tags.items() if v not in (None, "")}


def run_tags(cfg: dict, info: dict) -> dict[str, str]:
    tags = common_tags(info)
    tags.update({"model.name": str(cfg["model"].get("name", "")), "data.name": str(cfg["data"]["name"]),
                 "cnnexp.job_pid": str(info.get("job_pid") or os.getpid()),  # the training process
                 "hydra.output_dir": str(info.get("output_dir") or "")})
    if info.get("multirun"):
        tags.update({"sweep.id": sweep_id(info.get("sweep_dir")), "sweep.job_num": str(info.get("job_num"))})
        if os.environ.get(PARENT_ENV):
            tags["mlflow.parentRunId"] = os.environ[PARENT_ENV]
    return {k: v for k, v in tags.items() if v not in (None, "")}


class MlflowTracker(Tracker):
    FLUSH_POINTS = 1000
    FLUSH_SECONDS = 30.0

    def __init__(self, client, run_id: str, experiment_id: str, uri: str, cfg: dict, info: dict):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.uri, self.cfg, self.info = uri, cfg, info
        self.points: dict[str, list[tuple[int, float]]] = {}  # everything logged, for the curves
        self.seconds = 0.0  # time spent tracking
        self.seconds_metric = "perf/tracking_seconds"  # the background logger reports its own time apart
        self._params: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._metrics: list[tuple[str, float, int, int]] = []
        self._last_flush = time.monotonic()
        self._warned = False
        self._done = False
        self.errors: list[str] = []

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    def start(cls, cfg: dict, info: dict) -> "MlflowTracker":
        """Create the run (and the store and experiment when needed); log params, tags, config."""
        t0 = time.perf_counter()
        from . import store

        tcfg = cfg.get("tracking") or {}
        uri = store.resolve_uri(tcfg.get("uri"))
        experiment = tcfg.get("experiment") or "cnnexp"
        name = run_name(info.get("overrides"))
        try:
            client = store.client(uri)
            exp_id = store.experiment_id(client, experiment, uri)
            if store.sqlite_path(uri) is not None:
                store.reap_stale_runs(client, exp_id, socket.gethostname())
            run = store.retry(client.create_run, exp_id, run_name=name, tags=run_tags(cfg, info))
        except TrackingError:
            raise
        except Exception as e:
            raise TrackingError(f"cannot start an MLflow run in {uri}: {first_line(e)}") from e
        self = cls(client, run.info.run_id, exp_id, uri, cfg, info)
        self.log_params(flatten(cfg))
        self._log_config()
        self.flush()
        self.seconds += time.perf_counter() - t0
        logger.info(f"MLflow run {self.run_id} ({name}) in experiment '{experiment}' at {uri}")
        return self

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Flush and end the run (FINISHED, FAILED or KILLED); the error goes to the run's note.
        Safe to call more than once: only the first call counts."""
        if self._done:
            return
        self._done = True
        t0 = time.perf_counter()
        if error:
            self._tags["mlflow.note.content"] = clip(error, MAX_TAG_VALUE)
            self._tags["error"] = clip(error.strip().splitlines()[0] if error.strip() else error, 500)
        if self.errors:
            self._tags["cnnexp.tracking_errors"] = clip("; ".join(self.errors), MAX_TAG_VALUE)
        self._log_job_log()
        self.seconds += time.perf_counter() - t0
        self.log_metrics({self.seconds_metric: self.seconds}, step=0)
        self.flush()
        from .store import retry

        try:
            retry(self.client.set_terminated, self.run_id, status)
        except Exception as e:  # noqa: BLE001
            logger.error(f"cnnexp: could not end MLflow run {self.run_id} as {status}: {first_line(e)}")

    # -- buffered logging -----------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        self._params.update({k: clip(v if isinstance(v, str) else scalar(v), MAX_PARAM_VALUE)
                             for k, v in params.items()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._tags.update({k: clip(str(v), MAX_TAG_VALUE) for k, v in tags.items() if v is not None})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            v = float(v)
            self._metrics.append((k, v, ts, int(step)))
            self.points.setdefault(k, []).append((int(step), v))
        if (len(self._metrics) >= self.FLUSH_POINTS or not set(metrics) <= INTERVAL_KEYS
                or time.monotonic() - self._last_flush >= self.FLUSH_SECONDS):
            self.flush()

    def log_points(self, points: list) -> None:
        """Metric points ``[key, value, timestamp_ms, step]`` recorded elsewhere (the journal),
        sent at once."""
        for key, value, ts, step in points:
            self._metrics.append((key, float(value), int(ts), int(step)))
            self.points.setdefault(key, []).append((int(step), float(value)))
        self.flush()

    def flush(self) -> None:
        """Send what is buffered, in batches within MLflow's limits. A failure is reported once
        and the data kept for the next flush: tracking trouble never stops training."""
        if not (self._params or self._tags or self._metrics):
            return
        from mlflow.entities import Metric, Param, RunTag

        from .store import retry

        t0 = time.perf_counter()
        try:
            while self._params or self._tags:
                params = list(self._params.items())[:100]
                tags = list(self._tags.items())[: 100 - len(params)]
                retry(self.client.log_batch, self.run_id, params=[Param(k, v) for k, v in params],
                      tags=[RunTag(k, v) for k, v in tags])
                for k, _ in params:
                    del self._params[k]
                for k, _ in tags:
                    del self._tags[k]
            while self._metrics:
                chunk = self._metrics[:1000]
                retry(self.client.log_batch, self.run_id, metrics=[Metric(*m) for m in chunk])
                del self._metrics[: len(chunk)]
        except Exception as e:  # noqa: BLE001
            if not self._warned:
                logger.warning(f"cnnexp: MLflow logging failed ({first_line(e)}); will retry")
                self._warned = True
        self._last_flush = time.monotonic()
        self.seconds += time.perf_counter() - t0

    # -- files ----------------------------------------------------------------------------
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        from .store import retry

        retry(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        from .store import retry

        retry(self.client.log_text, self.run_id, text, artifact_file)

    def log_results(self, result: dict[str, Any]) -> None:
        """Weights + spec, model summary, plots and the pyfunc model of a finished run."""
        from .artifacts import prepare_results

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="cnnexp-results-") as tmp:
            self.errors += prepare_results(result, self.cfg, Path(tmp))
            self.seconds += time.perf_counter() - t0
            self.log_result_folder(Path(tmp))

    def log_result_folder(self, folder: Path) -> None:
        """Log what ``artifacts.prepare_results`` wrote into ``folder``: draw the plots, upload
        ``folder/artifacts``, log ``runs:/<id>/model``. A failing step is recorded, not raised."""
        from .artifacts import example_input, model_info, render_plots

        t0 = time.perf_counter()
        tcfg = self.cfg.get("tracking") or {}
        if tcfg.get("log_artifacts", True):
            def draw_and_log():
                self.errors += render_plots(folder, self.points)
                self.client.log_artifacts(self.run_id, str(folder / "artifacts"))

            self.guard("artifacts", draw_and_log)
        weights = folder / "artifacts" / "weights"
        if tcfg.get("log_model", True) and (weights / "weights.npz").is_file():
            from .pyfunc import log_pyfunc

            info = model_info(folder)
            self.guard("model", log_pyfunc, self.run_id, self.experiment_id, weights / "weights.npz",
                        weights / "model_spec.json", example_input(folder), info["dtype"], info["num_classes"])
        self.seconds += time.perf_counter() - t0

    def guard(self, what: str, fn, *args) -> None:
        """Run one logging step; a failure is reported and recorded on the run, not raised."""
        from .store import retry

        try:
            retry(fn, *args)
        except Exception as e:  # noqa: BLE001
            logger.warning(f"cnnexp: could not log the {what}: {first_line(e)}")
            self.errors.append(f"{what}: {first_line(e)}")

    def _log_config(self) -> None:
        """The resolved config and Hydra's ``.hydra/`` files, at the start: failed runs keep them."""
        from omegaconf import OmegaConf

        self.guard("config", self.client.log_text, self.run_id, OmegaConf.to_yaml(self.cfg), "config.yaml")
        hydra_dir = Path(self.info.get("output_dir") or "") / ".hydra"
        if self.info.get("output_dir") and hydra_dir.is_dir():
            self.guard("hydra files", self.client.log_artifacts, self.run_id, str(hydra_dir), "hydra")

    def _log_job_log(self) -> None:
        """The job's log file (the console output, timestamped), as far as it goes."""
        out, job = self.info.get("output_dir"), self.info.get("job_name")
        path = Path(out or "") / f"{job}.log"
        if out and job and path.is_file():
            for h in logging.getLogger().handlers:
                h.flush()
            self.guard("log file", self.client.log_artifact, self.run_id, str(path))
