"""End to end: `python -m cnnexp` runs are read back from the MLflow store through MLflow's API;
the logged model is reloaded, served and compared; failed and interrupted runs end FAILED and
KILLED; a real `mlflow server` on 127.0.0.1 receives a run over HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from cnnexp.tracking.export import load_model_files
from cnnexp.tracking.meta import flatten
from helpers.cli import cli, env_for, start, wait_logged
from helpers.tracking import all_runs, client, free_port, server, stop

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")]
ARGS = ["data=mnist_sample", "data.train_size=200", "data.val_size=50", "data.test_size=100", "epochs=2",
        "log_every=50"]
METRICS = {"train/loss", "train/acc", "train/epoch_loss", "train/epoch_acc", "val/loss", "val/acc",
           "test/loss", "test/acc", "perf/images_per_sec", "perf/epoch_seconds"}


def model_files(out, run) -> Path:
    """The logged model's ``artifacts/`` folder (weights.npz, model_spec.json)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    dst = out.parent / "dl" / run.info.run_id
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model", dst_path=str(dst))) / "artifacts"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One short tracked run, started from a folder that is not the checkout."""
    tmp = tmp_path_factory.mktemp("tracked")
    out = tmp / "outputs"
    p = cli(ARGS, out, cwd=tmp / "elsewhere")
    assert p.returncode == 0, p.stderr[-3000:]
    c = client(out)
    (run,) = all_runs(c)
    return out, c, run


def test_run_is_finished_in_the_default_store_under_outputs(tracked):
    out, c, run = tracked
    assert run.info.status == "FINISHED"
    assert (out / "mlflow.db").is_file()
    assert run.info.artifact_uri.startswith(f"file://{out}/mlartifacts/")
    assert not (out.parent / "elsewhere" / "mlruns").exists()


def test_params_are_the_whole_resolved_config_flattened(tracked):
    out, c, run = tracked
    cfg = yaml.safe_load(Path(c.download_artifacts(run.info.run_id, "config.yaml", str(out.parent))).read_text())
    p = run.data.params
    assert p == flatten(cfg)
    assert p["model.layers.0.filters"] == "8" and p["model.layers.3.units"] == "10" and "model.layers" not in p
    assert p["data.train_size"] == "200" and p["epochs"] == "2"


def test_tags_name_the_run_its_model_data_overrides_and_commit(tracked):
    _, _, run = tracked
    t = run.data.tags
    assert run.info.run_name == ",".join(ARGS)
    assert t["hydra.overrides"] == " ".join(ARGS)
    assert t["model.name"] == "seed" and t["data.source"] == "bundled_sample" and t["data.name"] == "mnist_sample"
    if (Path(__file__).resolve().parents[1] / ".git").exists():
        assert len(t["mlflow.source.git.commit"]) == 40
    assert "sweep.id" not in t and "mlflow.parentRunId" not in t


def test_every_metric_is_logged_at_its_step(tracked):
    _, c, run = tracked
    assert METRICS <= set(run.data.metrics)
    steps = lambda k: [m.step for m in c.get_metric_history(run.info.run_id, k)]  # noqa: E731
    assert steps("train/loss") == [50, 100, 150, 200, 250, 300, 350, 400]  # images seen
    for k in METRICS - {"train/loss", "train/acc"}:
        assert steps(k) == [1, 2], k  # epochs


def test_artifacts_are_all_there(tracked):
    out, c, run = tracked
    found = {a.path for d in ("", "hydra", "plots", "checkpoints") for a in c.list_artifacts(run.info.run_id, d)}
    assert {"config.yaml", "hydra/config.yaml", "hydra/hydra.yaml", "hydra/overrides.yaml", "model_summary.txt",
            "cnnexp.log", "checkpoints/last.npz", "plots/confusion_matrix.png",
            "plots/confusion_matrix.csv", "plots/learning_curves.png", "plots/misclassified.png",
            "plots/conv_filters.png"} <= found
    assert "weights" not in found  # the weights are stored once, inside the model
    assert {"weights.npz", "model_spec.json"} <= {p.name for p in model_files(out, run).iterdir()}


def test_session_from_saved_weights_reproduces_the_runs_test_accuracy(tracked):
    """weights.npz + model_spec.json rebuild the model through the registry; it classifies the
    same test images exactly as the run did (test/acc and the confusion matrix agree)."""
    out, c, run = tracked
    from cnnexp.data import load_dataset, make_splits

    d = model_files(out, run)
    model = load_model_files(d / "weights.npz", d / "model_spec.json")
    splits = make_splits(load_dataset("mnist_sample", dir=None, download=False), 200, 50, 100)
    x, y = splits.test
    pred = model.predict_proba(x).argmax(1)
    assert (pred == y).mean() == run.data.metrics["test/acc"]
    cm = np.loadtxt(c.download_artifacts(run.info.run_id, "plots/confusion_matrix.csv", str(out.parent / "dl")),
                    delimiter=",", skiprows=1, usecols=range(1, 11))
    assert cm.sum() == 100 and np.trace(cm) == (pred == y).sum()


@pytest.fixture(scope="module")
def pyfunc_and_model(tracked):
    import mlflow

    out, c, run = tracked
    mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
    pf = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    d = model_files(out, run)
    return pf, load_model_files(d / "weights.npz", d / "model_spec.json")


def test_pyfunc_model_takes_raw_images_of_any_dtype(pyfunc_and_model):
    import pandas as pd

    pf, model = pyfunc_and_model
    x = np.random.default_rng(0).integers(0, 256, (7, 28, 28))
    expected = model.predict_proba(x.astype(np.uint8))
    assert expected.shape == (7, 10) and np.allclose(expected.sum(1), 1, atol=1e-5)
    for data in (x.astype(np.uint8), x.astype(np.int64), x.astype(np.float32), x.astype(np.float64),
                 pd.DataFrame(x.reshape(7, -1))):
        assert np.array_equal(pf.predict(data), expected)
    assert pf.metadata.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] in ([-1, 10], (-1, 10))
    assert pf.metadata.saved_input_example_info is not None  # an input example was logged


def test_model_serve_answers_invocations(tracked, pyfunc_and_model, tmp_path):
    out, _, run = tracked
    pf, model = pyfunc_and_model
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run.info.run_id}/model",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    env = env_for(out, MLFLOW_TRACKING_URI=f"sqlite:///{out}/mlflow.db")
    x = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    expected = model.predict_proba(x)
    with server(cmd, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", env=env):
        for body in ({"inputs": x.tolist()},
                     {"dataframe_split": {"columns": [str(i) for i in range(784)], "data": x.reshape(3, -1).tolist()}}):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                got = np.array(json.loads(r.read())["predictions"])
            assert got.shape == (3, 10) and np.allclose(got, expected, atol=1e-6)


def test_diverging_run_ends_failed_with_the_error_and_keeps_its_metrics(tmp_path):
    out = tmp_path / "outputs"
    p = cli(["data=mnist_sample", "data.train_size=200", "data.test_size=100", "epochs=1", "log_every=1",
             "lr=1e6"], out)
    assert p.returncode == 5, p.stderr[-2000:]  # TrainingError
    c = client(out)
    (run,) = all_runs(c)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("TrainingError: loss became nan")
    assert "TrainingError" in run.data.tags["mlflow.note.content"]
    assert len(c.get_metric_history(run.info.run_id, "train/loss")) >= 1  # logged before the NaN
    assert "config.yaml" in {a.path for a in c.list_artifacts(run.info.run_id)}


def test_terminated_run_ends_killed(tmp_path):
    out = tmp_path / "outputs"
    p = start(["data=mnist_sample", "data.train_size=4000", "epochs=50"], out, stderr=subprocess.STDOUT,
              new_session=True)
    timer = threading.Timer(120, stop, (p,))  # bounded: never hang the test session
    timer.start()
    try:
        for line in p.stdout:
            if line.startswith("--- Epoch 1 ---"):
                break
        p.send_signal(signal.SIGTERM)
        p.stdout.read()
        assert p.wait(timeout=60) == 130
    finally:
        timer.cancel()
        stop(p)
    wait_logged(out)
    (run,) = all_runs(client(out))
    assert run.info.status == "KILLED" and "interrupted" in run.data.tags["mlflow.note.content"]


def test_run_goes_to_a_real_mlflow_server_over_http(tmp_path):
    from mlflow.tracking import MlflowClient

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
           "--artifacts-destination", str(tmp_path / "server-artifacts")]
    env = env_for(tmp_path / "unused", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with server(cmd, f"{uri}/health", tmp_path / "server.log", env=env):
        out = tmp_path / "outputs"
        p = cli([*ARGS[:1], "data.train_size=100", "data.test_size=50", "epochs=1", "log_every=50"], out,
                MLFLOW_TRACKING_URI=uri)
        assert p.returncode == 0, p.stderr[-3000:]
        c = MlflowClient(uri)
        (run,) = all_runs(c)
        assert run.info.status == "FINISHED" and run.data.metrics["test/acc"] > 0
        assert run.data.params["model.layers.0.filters"] == "8"
        assert "checkpoints" in {a.path for a in c.list_artifacts(run.info.run_id)}
        assert not (out / "mlflow.db").exists()  # nothing went to the local store
        assert any((tmp_path / "server-artifacts").rglob("weights.npz"))
