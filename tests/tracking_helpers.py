"""Helpers for the end-to-end tracking tests: run the CLI against a store in a temp folder,
read it back, start and stop servers on 127.0.0.1 with bounded waits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in test output
TINY = ["data=mnist_sample", "data.train_size=200", "data.test_size=100", "epochs=1", "log_every=50"]


def env_for(out: Path, **extra) -> dict:
    env = {**os.environ, "CNNEXP_OFFLINE": "1", "CNNEXP_OUTPUTS": str(out), **extra}
    # the venv's scripts first (mlflow models serve execs `uvicorn`), as in an activated venv
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID",
              "CNNEXP_PARENT_RUN_ID"):
        if k not in extra:
            env.pop(k, None)
    return env


def cli(args, out: Path, timeout: float = 300, cwd: Path | None = None, wait: bool = True,
        **env) -> subprocess.CompletedProcess:
    """``python -m cnnexp *args`` with its outputs (and MLflow store) in ``out``; with ``wait``,
    also wait until the tracking followers under ``out`` are done."""
    cwd = cwd or out.parent
    cwd.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, "-m", "cnnexp", *args], capture_output=True, text=True,
                       env=env_for(out, **env), cwd=cwd, timeout=timeout)
    if wait:
        wait_logged(out)
    return p


def wait_logged(out: Path, timeout: float = 120) -> None:
    """Wait until every tracking follower under ``out`` has finished."""
    from cnnexp.tracking.follower import wait_idle

    busy = wait_idle(out, timeout=timeout)
    assert not busy, f"tracking followers still working after {timeout} s: {busy}"


def client(out: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{out}/mlflow.db")


def all_runs(c, experiment="cnnexp") -> list:
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], max_results=5000) if exp else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(cmd: list[str], url: str, log: Path, env: dict | None = None, timeout: float = 90):
    """Start ``cmd`` in its own process group, wait (bounded) until ``url`` answers 200, yield;
    always stop the whole group."""
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if p.poll() is not None:
                raise RuntimeError(f"server exited with {p.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield p
    finally:
        stop(p)


def stop(p: subprocess.Popen, grace: float = 15) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if p.poll() is not None:
            return
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
