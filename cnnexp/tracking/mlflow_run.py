"""What one MLflow run gets from a journal (used by ``sync``): its name and tags, params, tags
and metric points in batches within MLflow's limits, the data set as a dataset input, and the
finished run's files (plots drawn here, weights, summary) and pyfunc model."""

from __future__ import annotations

import getpass
import logging
import os
import socket
from pathlib import Path

from .. import __version__
from ..paths import checkout_root, outputs_dir
from .meta import MAX_PARAM_VALUE, MAX_TAG_VALUE, clip, first_line, git_commit, run_name, scalar
from .store import retry

logger = logging.getLogger("cnnexp")


def sweep_id(sweep_dir: str | None) -> str | None:
    """The sweep's directory relative to the outputs folder, e.g. ``multirun/2025-01-31/12-00-00.123456``."""
    if not sweep_dir:
        return None
    try:
        return str(Path(sweep_dir).resolve().relative_to(outputs_dir()))
    except ValueError:
        return str(sweep_dir)


def common_tags(info: dict, pid: int | None = None) -> dict[str, str]:
    """Tags shared by runs and sweep parents: source, user, host, git commit, overrides."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001  (no user name in some containers)
        user = str(os.getuid())
    tags = {"mlflow.source.name": "cnnexp", "mlflow.source.type": "LOCAL", "mlflow.user": user,
            "mlflow.source.git.commit": git_commit(checkout_root()), "cnnexp.version": __version__,
            "cnnexp.host": socket.gethostname(), "cnnexp.pid": str(pid or os.getpid()),
            "hydra.overrides": " ".join(info.get("overrides") or [])}
    return {k: clip(str(v), MAX_TAG_VALUE) for k, v in tags.items() if v not in (None, "")}


def run_tags(start: dict) -> dict[str, str]:
    cfg, info = start["cfg"], start.get("info") or {}
    tags = common_tags(info, start.get("pid"))
    tags.update({"model.name": str(cfg["model"].get("name", "")), "data.name": str(cfg["data"]["name"]),
                 "cnnexp.job_pid": str(start.get("pid")), "cnnexp.run_key": start["key"],
                 "cnnexp.sync_pid": str(os.getpid()), "hydra.output_dir": str(info.get("output_dir") or "")})
    if info.get("multirun"):
        tags.update({"sweep.id": sweep_id(info.get("sweep_dir")), "sweep.job_num": str(info.get("job_num"))})
    return {k: v for k, v in tags.items() if v not in (None, "")}


def create(c, exp_id: str, start: dict, parent_id: str | None) -> str:
    """The run of journal ``start`` (found by its run key when an earlier sync made it)."""
    found = retry(c.search_runs, [exp_id], f"tags.`cnnexp.run_key` = '{start['key']}'", max_results=1)
    if found:
        return found[0].info.run_id
    tags = run_tags(start)
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    run = retry(c.create_run, exp_id, run_name=run_name((start.get("info") or {}).get("overrides")),
                tags=tags, start_time=int(start.get("time", 0) * 1000) or None)
    return run.info.run_id


def send(c, run_id: str, params: dict | None = None, tags: dict | None = None, metrics: list | None = None) -> None:
    """Params, tags and metric points ``[key, value, ts_ms, step]`` in batches of at most 1,000."""
    from mlflow.entities import Metric, Param, RunTag

    params = [Param(k, clip(v if isinstance(v, str) else scalar(v), MAX_PARAM_VALUE))
              for k, v in (params or {}).items()]
    tags = [RunTag(k, clip(str(v), MAX_TAG_VALUE)) for k, v in (tags or {}).items() if v is not None]
    for i in range(0, len(params), 100):
        retry(c.log_batch, run_id, params=params[i:i + 100])
    for i in range(0, len(tags), 100):
        retry(c.log_batch, run_id, tags=tags[i:i + 100])
    metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in metrics or []]
    for i in range(0, len(metrics), 1000):
        retry(c.log_batch, run_id, metrics=metrics[i:i + 1000])


def log_dataset(c, run_id: str, ds: dict) -> None:
    """The training data as an MLflow dataset input (the Dataset column of the runs list)."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    profile = json.dumps({k: ds[k] for k in ("train", "val", "test", "shape", "classes") if k in ds})
    dataset = Dataset(name=ds["name"], digest=ds["digest"], source_type=ds.get("source_type", "local"),
                      source=json.dumps({"uri": str(ds.get("location", ""))}), profile=profile)
    retry(c.log_inputs, run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])])


def log_results(c, run_id: str, exp_id: str, cfg: dict, folder: Path, points: dict) -> list[str]:
    """Draw the plots, upload ``folder/artifacts`` and log ``runs:/<id>/model``. Returns the
    errors of the steps that failed (each step is tried)."""
    from .artifacts import example_input, model_info, render_plots

    errors: list[str] = []
    tcfg = cfg.get("tracking") or {}
    weights = folder / "artifacts" / "weights"
    with_model = tcfg.get("log_model", True) and (weights / "weights.npz").is_file()

    def attempt(what, fn, *args):
        try:
            return retry(fn, *args)
        except Exception as e:  # noqa: BLE001
            logger.warning(f"cnnexp: could not log the {what}: {first_line(e)}")
            errors.append(f"{what}: {first_line(e)}")

    if tcfg.get("log_artifacts", True):
        errors += render_plots(folder, points)
        for item in sorted((folder / "artifacts").iterdir()):
            if item.name == "weights" and with_model:
                continue  # stored once, inside the model
            if item.is_dir():
                attempt(item.name, c.log_artifacts, run_id, str(item), item.name)
            else:
                attempt(item.name, c.log_artifact, run_id, str(item))
    if with_model:
        from .pyfunc import log_pyfunc

        info = model_info(folder)
        attempt("model", log_pyfunc, run_id, exp_id, weights / "weights.npz", weights / "model_spec.json",
                example_input(folder), info["dtype"], info["num_classes"])
    return errors


def log_config(c, run_id: str, cfg: dict, output_dir: str | None) -> list[str]:
    """The resolved config and Hydra's ``.hydra/`` files."""
    import yaml

    errors = []
    try:
        retry(c.log_text, run_id, yaml.safe_dump(cfg, sort_keys=False), "config.yaml")
        hydra_dir = Path(output_dir or "") / ".hydra"
        if output_dir and hydra_dir.is_dir():
            retry(c.log_artifacts, run_id, str(hydra_dir), "hydra")
    except OSError as e:
        errors.append(f"config: {first_line(e)}")
    return errors
