"""The team tracking server on a real PostgreSQL server, and one Optuna study in PostgreSQL
searched by two sweep processes at once (issue 11). Both servers are started here, on 127.0.0.1."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

import pytest

from helpers.scaling import postgres, team_server  # noqa: F401  (fixtures)
from helpers.cli import TINY, cli, start, wait_logged
from helpers.tracking import all_runs

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")]


def children_of(runs, parent):
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def test_parallel_sweep_logs_to_the_team_server_with_artifacts_through_it(team_server, postgres, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    url, artifacts = team_server
    out, cwd = tmp_path / "outputs", tmp_path / "client"
    lrs = ["0.001", "0.005", "0.01", "0.02"]
    p = cli(["-m", "hydra/launcher=parallel", *TINY, "tracking.log_model=false", f"tracking.uri={url}",
             "lr=" + ",".join(lrs)], out, cwd=cwd)
    assert p.returncode == 0, p.stderr[-3000:]
    c = MlflowClient(url)
    runs = all_runs(c)
    (parent,) = [r for r in runs if r.data.tags.get("cnnexp.role") == "sweep"]
    kids = children_of(runs, parent)
    assert sorted(r.data.params["lr"] for r in kids) == lrs  # no run lost
    assert parent.info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in kids)
    # the runs are in PostgreSQL, not in a file next to the client
    assert int(postgres.psql("SELECT count(*) FROM runs", db="mlflow")) == 5
    assert not (out / "mlflow.db").exists() and not list(cwd.glob("ml*"))
    # artifacts went through the server: proxied URIs, files in the server's folder, downloadable over HTTP
    for r in kids:
        assert r.info.artifact_uri.startswith("mlflow-artifacts:/"), r.info.artifact_uri
        got = mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="checkpoints/last.npz",
                                                  tracking_uri=url, dst_path=str(tmp_path / r.info.run_id))
        stored = list(artifacts.rglob(f"{r.info.run_id}/artifacts/checkpoints/last.npz"))
        assert len(stored) == 1 and filecmp.cmp(got, stored[0], shallow=False)


def sweep_process(out: Path, url: str, storage: str, seed: int, password: str) -> subprocess.Popen:
    args = ["-m", "hydra/sweeper=optuna", *TINY, "epochs=2", "data.val_size=100", "tracking.log_model=false",
            f"tracking.uri={url}", "lr=choice(0.02,0.00001)", "hydra.sweeper.n_trials=3",
            f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=shared",
            "hydra.sweeper.sampler.type=random", f"hydra.sweeper.sampler.seed={seed}",
            # a trial stuck near chance (lr 1e-05: val/acc about 0.1) is pruned after epoch 1
            "~hydra.sweeper.pruner", "+hydra.sweeper.pruner={type: threshold, lower: 0.3}"]
    return start(args, out, stderr=subprocess.STDOUT, PGPASSWORD=password)


def test_two_sweep_processes_search_one_postgres_study(team_server, postgres, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    url, _ = team_server
    storage = postgres.url("optuna")
    procs = [sweep_process(tmp_path / f"machine{i}" / "outputs", url, storage, seed, postgres.password)
             for i, seed in enumerate((0, 1))]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    for i in range(2):
        wait_logged(tmp_path / f"machine{i}" / "outputs")
    study = optuna.load_study(study_name="shared", storage=postgres.url("optuna", password=True))
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(6))  # every trial of both processes, none repeated
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned and all(t.params["lr"] == 1e-05 and list(t.intermediate_values) == [1] for t in pruned)
    runs = all_runs(MlflowClient(url))
    parents = [r for r in runs if r.data.tags.get("cnnexp.role") == "sweep"  # (the server is shared)
               and r.data.tags["sweep.dir"].startswith(str(tmp_path))]
    assert len(parents) == 2
    per_process = [sorted(int(r.data.params["trial.number"]) for r in children_of(runs, p)) for p in parents]
    assert all(len(n) == 3 for n in per_process) and sorted(per_process[0] + per_process[1]) == numbers
    by_number = {int(r.data.params["trial.number"]): r for p in parents for r in children_of(runs, p)}
    for t in study.trials:
        r = by_number[t.number]
        assert float(r.data.params["lr"]) == t.params["lr"] and r.info.status == "FINISHED"
        assert (r.data.tags.get("cnnexp.outcome") == "pruned") == (t.state.name == "PRUNED")
