"""Submit a sweep's jobs through submitit (SLURM or local processes) and collect how each ended.

``launch`` mirrors hydra-submitit-launcher's own (one job array per batch, ``array_parallelism``
at a time) but collects each job on its own: a job that left no result is reported with the
state SLURM gives it and does not stop the sweep. ``resume_overrides`` runs in the job: a job
started again (requeued) continues from the checkpoint of its earlier attempt.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from .. import checkpoint

log = logging.getLogger(__name__)
INIT_KEYS = ("submitit_folder", "max_num_timeout")
LOST: list[str] = []  # jobs that ended without a result (cnnexp.cli exits 1 after the sweep when any did)


def settings(launcher) -> dict[str, Any]:
    """hydra.launcher's keys with the top-level ``cluster:`` block (the resources) over them.
    (The preset cannot interpolate ``${cluster.x}`` into hydra.launcher: Hydra instantiates
    launchers detached from the root config.)"""
    from omegaconf import OmegaConf

    params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
              for k, v in launcher.params.items()}
    cluster = OmegaConf.select(launcher.config, "cluster", default=None)
    if cluster is not None:
        params.update({k: v for k, v in OmegaConf.to_container(cluster, resolve=True).items() if v is not None})
    if launcher._EXECUTOR == "local":  # no partition or job arrays on a local executor
        params = {k: v for k, v in params.items() if k not in ("partition", "array_parallelism")}
    return params


def executor_params(params: dict[str, Any], executor: str) -> dict[str, Any]:
    """Launcher settings as submitit parameters (non-generic keys get the executor's prefix)."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    return {k if k in generic else f"{executor}_{k}": v for k, v in params.items() if k not in INIT_KEYS}


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    import submitit
    from hydra.core.singleton import Singleton
    from hydra.core.utils import filter_overrides

    assert launcher.config is not None and len(job_overrides) > 0
    p = settings(launcher)
    init = {"folder": p["submitit_folder"]}
    if "max_num_timeout" in p:
        init[f"{launcher._EXECUTOR}_max_num_timeout"] = p["max_num_timeout"]
    executor = submitit.AutoExecutor(cluster=launcher._EXECUTOR, **init)
    executor.update_parameters(**executor_params(p, launcher._EXECUTOR))
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info(f"Submitit '{launcher._EXECUTOR}' sweep output dir : {sweep_dir}")
    params = []
    for i, overrides in enumerate(job_overrides):
        idx = initial_job_idx + i
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    jobs = executor.map_array(launcher, *zip(*params))
    return [collect(job, idx, list(o)) for job, (o, _, idx, _, _) in zip(jobs, params)]


def collect(job, idx: int, overrides: list[str]):
    """The job's own JobReturn; for a job that left none, a JobReturn with no value (the sweep
    goes on; Optuna tells the trial FAILED) and the job listed in ``LOST``."""
    from hydra.core.utils import JobReturn, JobStatus

    try:
        return job.results()[0]
    except Exception as e:  # noqa: BLE001  (submitit's UncompletedJobError / FailedJobError)
        state = job.state
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.warning(f"cnnexp: job {idx} (submitit job {job.job_id}) ended without a result, state {state}: {why}")
        LOST.append(f"{' '.join(overrides)} [{state}; log: {job.paths.stdout}]")
        return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=None)  # as cnnexp's
        # own failed jobs: completed for Hydra, the value None marks the failure


def job_dir(config, config_loader, overrides: list[str], job_num: int) -> Path:
    """The run folder Hydra gives this job (``hydra.sweep.dir``/``hydra.sweep.subdir``)."""
    from omegaconf import open_dict

    cfg = config_loader.load_sweep_config(config, list(overrides))  # keeps the sweep's ${now:} values
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.num = job_num
    return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


def resume_overrides(config, config_loader, overrides: list[str], job_num: int, singleton_state) -> list[str]:
    """In the job: when an earlier attempt of this job left a checkpoint, continue from it."""
    from hydra.core.singleton import Singleton

    Singleton.set_state(singleton_state)
    last = job_dir(config, config_loader, overrides, job_num) / "checkpoints" / checkpoint.LAST
    if not last.exists():
        return overrides
    print(f"cnnexp: this job ran before (requeued); resuming from {last}", flush=True)
    return [o for o in overrides if not o.startswith("resume=")] + [f"resume={os.path.abspath(last)}"]
