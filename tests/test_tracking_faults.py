"""Tracking faults with real processes: the SQLite file deleted mid-run, a server stopped past
MLflow's retries and restarted, a full disk, stores that are not databases, a name the store
refuses. Each time every run ends in the store complete, or the user is told in one line with
the command that logs it, and that command logs it completely."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from cnnexp.tracking import journal
from helpers.cli import TINY, cli, env_for, start, wait_logged
from helpers.tracking import all_runs, assert_complete, client, follower_of, free_port, journals, replay, server

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")]
REPLAY = re.compile(r"log it with: (python -m cnnexp\.tracking sync \S+)")


def one_error_line(p) -> str:
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("cnnexp: error:")]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    return errors[0]


def run_replay(out, line, **env):
    cmd = REPLAY.search(line).group(1).split()
    return subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True, env=env_for(out, **env),
                          timeout=300)


def test_sqlite_file_deleted_mid_run_ends_in_the_new_store_complete(tmp_path):
    out = tmp_path / "outputs"
    p = start(["data=mnist_sample", "data.train_size=2000", "epochs=4", "log_every=100", "tracking.log_model=false"],
              out, stderr=subprocess.STDOUT)
    for line in p.stdout:
        if line.startswith("--- Epoch 2 ---"):
            break
    (folder,) = journals(out)
    follower_of(folder)
    first = journal.read_json(folder / journal.STATE)["run_id"]
    for f in out.glob("mlflow.db*"):
        f.unlink()
    assert p.wait(timeout=300) == 0, p.stdout.read()[-2000:]
    wait_logged(out)
    c = client(out)
    (run,) = all_runs(c)
    assert run.info.run_id != first and run.info.status == "FINISHED"
    assert_complete(c, run, folder)
    assert "was deleted or replaced" in (folder / "follower.log").read_text()


@contextmanager
def mlflow_server(tmp_path: Path, port: int):
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
           "--artifacts-destination", str(tmp_path / "server-artifacts")]
    env = env_for(tmp_path / "unused", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with server(cmd, f"http://127.0.0.1:{port}/health", tmp_path / f"server-{time.time()}.log", env=env,
                timeout=240) as s:
        yield s


def test_server_down_past_the_retries_then_back(tmp_path):
    from mlflow.tracking import MlflowClient

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    out = tmp_path / "outputs"
    quick = dict(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5", CNNEXP_SYNC_PATIENCE="2")
    with mlflow_server(tmp_path, port):
        p = start(["data=mnist_sample", "data.train_size=2000", "epochs=3", "log_every=100",
                   "tracking.log_model=false", f"tracking.uri={uri}"], out, stderr=subprocess.STDOUT, **quick)
        for line in p.stdout:
            if line.startswith("--- Epoch 2 ---"):
                break
        (folder,) = journals(out)
        follower_of(folder)
    assert p.wait(timeout=300) == 0  # the server is down from epoch 2 on: training is not affected
    wait_logged(out, timeout=300)
    state = journal.read_json(folder / journal.STATE)
    assert not state.get("done") and "python -m cnnexp.tracking sync" in state["error"]
    with mlflow_server(tmp_path, port):
        q = cli([*TINY, "tracking.log_model=false", f"tracking.uri={uri}"], out, **quick)  # the next run
        assert q.returncode == 0, q.stderr[-3000:]
        warnings = [ln for ln in (q.stdout + q.stderr).splitlines() if "an earlier run is not in the store" in ln]
        assert len(warnings) == 1 and folder.name in warnings[0]
        c = MlflowClient(uri)
        runs = all_runs(c)
        (run,) = [r for r in runs if r.data.tags["cnnexp.run_key"] == folder.name]
        assert len(runs) == 2 and run.info.run_id == state["run_id"] and run.info.status == "FINISHED"
        assert_complete(c, run, folder)  # caught up by the next run's follower
        r = replay(out, folder)  # and the replay finds it done
        assert r.returncode == 0 and state["run_id"] in r.stdout, r.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs (root only)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({p.stderr.strip() or p.returncode}): needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_store_on_a_full_disk_is_one_line_and_the_command_logs_it_later(tmp_path, small_disk):
    out = tmp_path / "outputs"
    uri = f"sqlite:///{small_disk}/mlflow.db"
    args = [*TINY, "tracking.log_model=false", "tracking.wait=true", f"tracking.uri={uri}"]
    assert cli(args, out).returncode == 0  # the store exists
    filler = fill(small_disk)
    p = cli(args, out)
    assert p.returncode == 4 and "Test Accuracy" in p.stdout
    line = one_error_line(p)
    assert "full" in line.lower() and "python -m cnnexp.tracking sync" in line, line
    assert list(out.glob("runs/*/*/checkpoints/last.npz"))  # training kept its results
    filler.unlink()
    r = run_replay(out, line)
    assert r.returncode == 0, r.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    runs = all_runs(c)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for folder in journals(out):
        (run,) = [r for r in runs if r.data.tags["cnnexp.run_key"] == folder.name]
        assert_complete(c, run, folder)


def test_journal_on_a_full_disk_warns_once_and_training_finishes(tmp_path, small_disk):
    out = small_disk / "outputs"
    (out / "journals").mkdir(parents=True)
    fill(small_disk)
    p = cli([*TINY, "tracking.log_model=false", f"hydra.run.dir={tmp_path / 'run'}",
             f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"], out, cwd=tmp_path, CNNEXP_MIN_FREE_MB="0")
    text = p.stdout + p.stderr
    assert "Test Accuracy" in text and "Traceback" not in text, text[-3000:]
    assert text.count("cannot write the run's journal") == 1 and "No space left" in text
    assert (tmp_path / "run" / "checkpoints" / "last.npz").is_file()


@pytest.mark.parametrize("kind", ["folder", "not_a_database"])
def test_a_store_that_is_not_a_database_fails_before_training_in_one_line(tmp_path, kind):
    path = tmp_path / "store.db"
    if kind == "folder":
        path.mkdir()
    else:
        path.write_text("these are my notes, not an SQLite database\n" * 20)
    p = cli([*TINY, f"tracking.uri=sqlite:///{path}"], tmp_path / "outputs", wait=False)
    line = one_error_line(p)
    assert p.returncode == 4 and str(path) in line and "sqlite:///" in line
    assert "--- Epoch 1 ---" not in p.stdout and not journals(tmp_path / "outputs")
    assert kind == "folder" or path.read_text().startswith("these are my notes")  # nothing overwritten


def test_an_experiment_name_the_store_refuses_is_one_line_and_the_command_logs_it(tmp_path):
    out = tmp_path / "outputs"
    p = cli([*TINY, "tracking.log_model=false", "tracking.wait=true", "tracking.experiment=" + "x" * 600], out)
    assert p.returncode == 4 and "Test Accuracy" in p.stdout
    line = one_error_line(p)
    assert "500" in line and "--experiment" in line, line
    cmd = REPLAY.search(line).group(1).split()
    r = subprocess.run([sys.executable, *cmd[1:], "--experiment", "short"], capture_output=True, text=True,
                       env=env_for(out), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    c = client(out)
    (run,) = all_runs(c, "short")
    assert run.info.status == "FINISHED"
    assert_complete(c, run, journals(out)[0])


def test_resume_and_runs_take_a_unique_run_id_prefix(tmp_path):
    out = tmp_path / "outputs"
    p = cli([*TINY, "tracking.log_model=false", "tracking.wait=true"], out)
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", p.stdout + p.stderr).group(1)
    q = cli([*TINY, "epochs=2", "tracking.log_model=false", "tracking.wait=true", f"resume={run_id[:8]}"], out)
    assert q.returncode == 0 and "Resuming from" in q.stdout, q.stderr[-2000:]
    q = cli([*TINY, "epochs=2", "tracking.enabled=false", "resume=ffffffff"], out)
    assert q.returncode != 0 and "no run with id 'ffffffff'" in one_error_line(q)
    assert os.path.isdir(out)
