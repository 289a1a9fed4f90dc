"""Sweeps end to end: one parent run per sweep and one child per job, sequential and parallel
(joblib) on one SQLite store, Optuna, interrupted sweeps, and the `cnnexp.runs` table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from helpers.cli import TINY, cli, env_for, start, wait_logged
from helpers.tracking import all_runs, client, stop

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")]


def parents_and_children(runs):
    parents = [r for r in runs if r.data.tags.get("cnnexp.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "outputs"
    p = cli(["-m", *TINY, "lr=0.001,0.005,0.01"], out)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, client(out)


def test_sweep_makes_one_parent_and_one_child_per_job(sweep):
    out, c = sweep
    runs = all_runs(c)
    (parent,), children = parents_and_children(runs)
    assert len(runs) == 4 and len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert sorted(r.data.tags["sweep.job_num"] for r in children) == ["0", "1", "2"]
    assert sorted(r.data.params["lr"] for r in children) == ["0.001", "0.005", "0.01"]
    assert {r.data.tags["sweep.id"] for r in children} == {parent.data.tags["sweep.id"]}
    assert parent.data.tags["sweep.id"].startswith("multirun/")
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.info.run_name for r in children} == {",".join(TINY) + f",lr={lr}" for lr in ("0.001", "0.005", "0.01")}
    assert parent.data.params["epochs"] == "1" and parent.data.params["data.name"] == "mnist_sample"
    assert "lr" not in parent.data.params  # the params every job shares, not the swept one
    assert "3 job(s), 3 finished" in parent.data.tags["mlflow.note.content"]


def test_the_sweep_has_one_follower_and_its_jobs_none(sweep):
    out, _ = sweep
    (sweep_dir,) = [p.parent for p in out.glob("multirun/*/*/sweep.json")]
    jobs = sorted((sweep_dir / "journals").glob("*/journal.jsonl"))
    assert len(jobs) == 3 and (sweep_dir / "follower.json").is_file()
    assert not any((j.parent / "follower.json").exists() for j in jobs)
    assert not (out / "journals").exists() or not list((out / "journals").glob("*/journal.jsonl"))


def test_parent_records_the_best_child_and_a_summary_table(sweep):
    out, c = sweep
    (parent,), children = parents_and_children(all_runs(c))
    best = max(children, key=lambda r: r.data.metrics["test/acc"])
    t = parent.data.tags
    assert t["best.run_id"] == best.info.run_id and t["best.metric"] == "test/acc"
    assert parent.data.metrics["best/test/acc"] == best.data.metrics["test/acc"]
    assert {"sweep_summary.csv", "sweep_summary.md"} <= {a.path for a in c.list_artifacts(parent.info.run_id)}
    csv = (c.download_artifacts(parent.info.run_id, "sweep_summary.csv", str(out.parent)))
    lines = open(csv).read().splitlines()
    assert len(lines) == 4 and lines[1].split(",")[-1] == best.info.run_id


def test_runs_table_lists_the_latest_sweep_best_first(sweep):
    out, c = sweep
    _, children = parents_and_children(all_runs(c))
    p = subprocess.run([sys.executable, "-m", "cnnexp.runs"], capture_output=True, text=True,
                       env=env_for(out), timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("rank"))
    table = [ln.split() for ln in lines[head + 1:] if ln.strip()]
    accs = [float(r[3]) for r in table]
    assert len(table) == 3 and accs == sorted(accs, reverse=True)
    assert {r[-2] for r in table} == {"lr=0.001", "lr=0.005", "lr=0.01"}  # the overrides that differ
    p = cli(["runs", "--metric", "test/loss"], out)  # the `cnnexp runs` spelling
    assert p.returncode == 0 and "ascending" in p.stdout


def test_parallel_joblib_sweeps_lose_no_runs(tmp_path):
    """4 jobs on 2 worker processes against one SQLite store, three times (the first on a
    store that does not exist yet): every run is there, finished, with its metrics."""
    out = tmp_path / "outputs"
    for i in range(3):
        p = cli(["-m", "hydra/launcher=parallel", *TINY, "tracking.log_model=false",
                 "lr=0.001,0.002,0.005,0.01"], out)
        assert p.returncode == 0, p.stderr[-3000:]
        parents, children = parents_and_children(all_runs(client(out)))
        assert len(parents) == i + 1 and len(children) == 4 * (i + 1)
    runs = all_runs(client(out))
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all("test/acc" in r.data.metrics and r.data.params["model.layers.0.filters"] == "8" for r in children)
    for parent in parents:
        kids = [r for r in children if r.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert sorted(r.data.tags["sweep.job_num"] for r in kids) == ["0", "1", "2", "3"]
        assert len({r.data.tags["cnnexp.job_pid"] for r in kids} | {parent.data.tags["cnnexp.pid"]}) >= 2


def test_optuna_search_maximises_validation_accuracy(tmp_path):
    out = tmp_path / "outputs"
    p = cli(["-m", "experiment=optuna_lr", "hydra.sweeper.n_trials=3", "epochs=1", "data.train_size=200",
             "data.val_size=100", "data.test_size=100", "tracking.log_model=false"], out)
    assert p.returncode == 0, p.stderr[-3000:]
    (parent,), children = parents_and_children(all_runs(client(out)))
    assert len(children) == 3 and parent.data.tags["sweep.sweeper"] == "OptunaSweeper"
    assert "interval(0.001, 0.03)" in parent.data.tags["sweep.search_space"]
    best = max(children, key=lambda r: r.data.metrics["val/acc"])
    assert parent.data.tags["best.metric"] == "val/acc" and parent.data.tags["best.run_id"] == best.info.run_id
    assert f"Best value: {best.data.metrics['val/acc']}" in p.stdout + p.stderr
    from cnnexp.tracking.meta import short_value

    for r in children:  # Optuna's floats, 4 significant digits in the run name, in full in the params
        lr = dict(o.split("=", 1) for o in r.info.run_name.split(","))["lr"]
        assert lr == short_value(lr) == f"{float(r.data.params['lr']):.4g}", (lr, r.data.params["lr"])


def test_failed_job_fails_alone_and_the_sweep_exits_non_zero(tmp_path):
    out = tmp_path / "outputs"  # a job of a worker process: the parent knows it failed from the store
    p = cli(["-m", "hydra/launcher=parallel", *TINY, "tracking.log_model=false", "lr=0.01,1e6"], out)
    assert p.returncode == 1 and "1 job(s) failed" in p.stderr
    (parent,), children = parents_and_children(all_runs(client(out)))
    assert sorted(r.info.status for r in children) == ["FAILED", "FINISHED"]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.failed_jobs"] == "1"


@pytest.mark.parametrize("launcher, how", [("basic", "SIGTERM to the main process"),
                                            ("parallel", "Ctrl-C: SIGINT to the whole process group")])
def test_interrupted_sweep_ends_parent_and_jobs_killed(tmp_path, launcher, how):
    out = tmp_path / "outputs"
    p = start(["-m", f"hydra/launcher={launcher}", "data=mnist_sample", "data.train_size=4000", "epochs=50",
               "lr=0.001,0.01"], out, stderr=subprocess.STDOUT, new_session=True)
    timer = threading.Timer(120, stop, (p,))
    timer.start()
    try:
        for line in p.stdout:
            if line.startswith("--- Epoch 1 ---"):
                break
        if launcher == "basic":
            p.send_signal(signal.SIGTERM)
        else:
            os.killpg(p.pid, signal.SIGINT)
        rest = p.stdout.read()
        assert p.wait(timeout=60) == 130 and "Traceback" not in rest, rest[-3000:]
    finally:
        timer.cancel()
        stop(p)
    wait_logged(out)
    (parent,), children = parents_and_children(all_runs(client(out)))
    assert children and all(r.info.status == "KILLED" for r in children)
    assert parent.info.status == "KILLED" and "interrupted" in parent.data.tags["mlflow.note.content"]
