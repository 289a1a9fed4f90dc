"""MLflow-side helpers: read a temp store back, replay journals, start and stop servers on
127.0.0.1 with bounded waits."""

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

from helpers.cli import env_for


def client(out: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{out}/mlflow.db")


def all_runs(c, experiment="cnnexp") -> list:
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], max_results=5000) if exp else []


def journals(out: Path) -> list:
    from cnnexp.tracking import journal

    return journal.folders(out / "journals")


def replay(out: Path, *args, **env) -> subprocess.CompletedProcess:
    """``python -m cnnexp.tracking sync *args`` in the environment :func:`helpers.cli.cli` uses."""
    return subprocess.run([sys.executable, "-m", "cnnexp.tracking", "sync", *map(str, args)], capture_output=True,
                          text=True, env=env_for(out, **env), timeout=300)


def assert_complete(c, run, folder) -> None:
    """The run has its journal's params and every metric point of it."""
    from cnnexp.tracking import journal

    start = journal.first_event(folder)
    assert run.data.tags["cnnexp.run_key"] == start["key"] == folder.name
    assert run.data.params["lr"] == str(start["cfg"]["lr"])
    counts = {}
    for _, e in journal.read_events(folder / journal.JOURNAL)[0]:
        for k, *_ in e.get("metrics") or []:
            counts[k] = counts.get(k, 0) + 1
    assert counts and all(len(c.get_metric_history(run.info.run_id, k)) == n for k, n in counts.items()), counts


def follower_of(folder: Path, timeout: float = 60) -> int:
    """The pid of the follower of the journal ``folder``, once it has created its MLflow run."""
    from cnnexp.tracking import journal

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = journal.read_json(folder / "follower.json")
        if f and journal.read_json(folder / journal.STATE).get("run_id"):
            return f["pid"]
        time.sleep(0.2)
    raise AssertionError("the follower never created the run")


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
