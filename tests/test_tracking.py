"""Tracking, in process and fast: params, names, store resolution, batching, artifacts,
the pyfunc input handling, the runs table. End to end (subprocesses, servers): test_tracking_e2e.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cnnexp.model import build_model
from cnnexp.tracking import meta, plots, store
from cnnexp.tracking.export import load_model_files, model_spec, save_model_files
from helpers.cli import cli, env_for
from helpers.experiments import seed_spec

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")  # inside MLflow
ROOT = Path(__file__).resolve().parents[1]
SEED_SPEC = seed_spec()


def seed_model(seed=0):
    return build_model(SEED_SPEC, seed=seed, dtype="float32", scale=1 / 255, shift=-0.5)


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


# -- params, names, commit -------------------------------------------------------------------
def test_flatten_gives_every_layer_hyperparameter_its_own_param():
    cfg = {"lr": 0.01, "resume": None, "plugins": [], "tracking": {"enabled": True, "uri": None},
           "model": {"input_shape": [28, 28, 1], "layers": [{"type": "conv2d", "filters": 8},
                                                            {"type": "dense", "units": 10}]}}
    p = meta.flatten(cfg)
    assert p["model.layers.0.filters"] == "8" and p["model.layers.1.units"] == "10"
    assert p["model.layers.0.type"] == "conv2d"
    assert p["model.input_shape"] == "[28, 28, 1]"
    assert p["resume"] == "null" and p["plugins"] == "[]" and p["tracking.enabled"] == "true"
    assert "model.layers" not in p  # never the whole layer list as one value
    assert len(p) == 10  # nothing dropped


def test_flatten_respects_mlflow_limits():
    p = meta.flatten({"k" * 300: "v", "long": "x" * 7000})
    assert all(len(k) <= 250 for k in p) and len(p["long"]) == 6000 and p["long"].endswith("...")


def test_run_name_from_overrides():
    assert meta.run_name(["lr=0.01", "epochs=5"]) == "lr=0.01,epochs=5"
    assert meta.run_name([]) == meta.run_name(None) == "default"


def test_git_commit_read_from_dot_git(tmp_path):
    git = tmp_path / ".git"
    (git / "refs/heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs/heads/main").write_text("a" * 40 + "\n")
    assert meta.git_commit(tmp_path) == "a" * 40
    (git / "refs/heads/main").unlink()
    (git / "packed-refs").write_text(f"# pack-refs\n{'b' * 40} refs/heads/main\n")
    assert meta.git_commit(tmp_path) == "b" * 40
    (git / "HEAD").write_text("c" * 40)  # detached
    assert meta.git_commit(tmp_path) == "c" * 40
    assert meta.git_commit(None) is None


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_git_commit_of_this_checkout_matches_git():
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("git not usable here")
    assert meta.git_commit(ROOT) == out.stdout.strip()


# -- the store ------------------------------------------------------------------------------
def test_store_uri_config_key_wins_over_env_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNEXP_OUTPUTS", str(tmp_path / "out"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store.resolve_uri() == f"sqlite:///{tmp_path}/out/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert store.resolve_uri() == "http://127.0.0.1:5999"
    assert store.resolve_uri("http://127.0.0.1:6000") == "http://127.0.0.1:6000"
    monkeypatch.chdir(tmp_path)
    assert store.resolve_uri("sqlite:///rel/m.db") == f"sqlite:///{tmp_path}/rel/m.db"  # absolute


def test_retry_only_retries_a_locked_database():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert store.retry(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        store.retry(lambda: (_ for _ in ()).throw(ValueError("other")))


def test_unreachable_server_is_one_line_tracking_error():
    from cnnexp.errors import TrackingError

    with pytest.raises(TrackingError, match="cannot reach the MLflow server at http://127.0.0.1:9"):
        store.ensure_store("http://127.0.0.1:9")


# -- files ----------------------------------------------------------------------------------
def test_weights_and_spec_rebuild_the_model_exactly(tmp_path):
    m = seed_model(seed=3)
    w, s = save_model_files(m, model_spec(m, [str(i) for i in range(10)]), tmp_path)
    with np.load(w, allow_pickle=False) as z:
        assert set(z.files) == set(m.params) == {"conv2d_0.W", "dense_3.W", "dense_3.b"}
    assert json.loads(s.read_text())["scale"] == pytest.approx(1 / 255)
    x, _ = images(20)
    assert np.array_equal(load_model_files(w, s).predict_proba(x), m.predict_proba(x))


def test_plots_are_written(tmp_path):
    x, y = images(50)
    m = seed_model()
    probs = m.predict_proba(x)
    cm = plots.confusion_matrix(y, probs.argmax(1), 10)
    assert cm.sum() == 50 and np.trace(cm) == (probs.argmax(1) == y).sum()
    names = [str(i) for i in range(10)]
    plots.save_confusion(cm, names, tmp_path)
    rows = (tmp_path / "confusion_matrix.csv").read_text().splitlines()
    assert rows[0].startswith("true\\pred,0,1") and len(rows) == 11
    wrong = np.flatnonzero(probs.argmax(1) != y)
    assert len(wrong), "an untrained model gets some of 50 images wrong"
    plots.save_misclassified(x[wrong[:3]], y[wrong[:3]], probs[wrong[:3]], names, tmp_path / "m.png", len(wrong), 50)
    plots.save_learning_curves({"train/loss": [(10, 2.0), (20, 1.0)], "test/acc": [(1, 0.5)]}, 20, tmp_path / "c.png")
    plots.save_filters(m.params["conv2d_0.W"], tmp_path / "f.png", "filters")
    for f in ("confusion_matrix.png", "m.png", "c.png", "f.png"):
        assert (tmp_path / f).read_bytes()[:4] == b"\x89PNG"


def test_pyfunc_input_forms_become_images():
    from cnnexp.tracking.pyfunc import to_images
    import pandas as pd

    x, _ = images(3)
    assert to_images(pd.DataFrame(x.reshape(3, -1)), (28, 28, 1)).shape == (3, 28, 28, 1)
    assert to_images(x.tolist(), (28, 28, 1)).shape == (3, 28, 28)
    assert to_images({"images": x}, (28, 28, 1)).shape == (3, 28, 28)
    assert to_images(x.astype(object), (28, 28, 1)).dtype == np.float64


# -- the journal and its sync, in process ------------------------------------------------------
@pytest.fixture(scope="module")
def shared_outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("store") / "outputs"  # one SQLite store for these tests (~2 s each)


@pytest.fixture
def local_store(shared_outputs, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNEXP_OUTPUTS", str(shared_outputs))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def small_cfg():
    return {"lr": 0.01, "epochs": 1, "batch_size": 1, "seed": 0, "log_every": 10, "eval_batch_size": 50,
            "plugins": [], "model": {"name": "seed", **SEED_SPEC}, "data": {"name": "synthetic"},
            "tracking": {"enabled": True, "uri": None, "experiment": "unit", "log_artifacts": True,
                         "log_model": False}}


def journal_tracker(folder, overrides=(), output_dir=None):
    from cnnexp.tracking.journal import JournalTracker

    return JournalTracker.start(small_cfg(), {"overrides": list(overrides), "output_dir": output_dir},
                                folder / "journals", store.resolve_uri(None))


def test_journal_batches_metrics_and_sync_ends_failed_runs_with_the_error(local_store):
    from cnnexp.tracking.journal import JOURNAL, read_events
    from cnnexp.tracking.sync import sync

    out = local_store / "job"
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra/overrides.yaml").write_text("- lr=0.01\n")
    t = journal_tracker(local_store, ["lr=0.01"], str(out))
    for step in range(1, 301):  # 300 interval points: not written yet
        t.log_metrics({"train/loss": 1.0 / step, "train/acc": 0.5}, step=step * 10)
    assert [e["event"] for _, e in read_events(t.folder / JOURNAL)[0]] == ["start"]
    t.log_metrics({"train/epoch_loss": 0.1, "test/acc": 0.9}, step=1)  # end of epoch: one event
    assert [len(e.get("metrics", [])) for _, e in read_events(t.folder / JOURNAL)[0]] == [0, 602]
    t.finish("FAILED", "TrainingError: loss became nan")
    t.finish("FINISHED")  # ignored: the first call counts
    state = sync(t.folder)
    c = store.client(state["uri"])
    r = c.get_run(state["run_id"])
    assert state["done"] and r.info.status == "FAILED" and r.data.tags["error"] == "TrainingError: loss became nan"
    assert r.info.run_name == "lr=0.01" and r.data.params["model.layers.0.filters"] == "8"
    assert len(c.get_metric_history(state["run_id"], "train/loss")) == 300
    assert {"config.yaml", "hydra"} <= {a.path for a in c.list_artifacts(state["run_id"])}


def test_sync_uploads_the_results(local_store):
    from cnnexp.tracking.sync import sync

    m = seed_model()
    x, y = images(60)
    splits = SimpleNamespace(train=(x[:40], y[:40]), val=(x[:0], y[:0]), test=(x[40:], y[40:]))
    ds = SimpleNamespace(class_names=tuple(str(i) for i in range(10)))
    t = journal_tracker(local_store)
    t.log_metrics({"train/loss": 2.0, "train/acc": 0.1}, step=10)
    t.log_metrics({"train/epoch_loss": 2.0, "test/acc": 0.1}, step=1)
    t.log_results({"model": m, "splits": splits, "dataset": ds, "metrics": {}})
    t.finish()
    state = sync(t.folder)
    c = store.client(state["uri"])
    found = {a.path for d in ("", "plots", "weights") for a in c.list_artifacts(state["run_id"], d)}
    assert {"model_summary.txt", "weights/weights.npz", "weights/model_spec.json", "plots/confusion_matrix.png",
            "plots/confusion_matrix.csv", "plots/learning_curves.png", "plots/misclassified.png",
            "plots/conv_filters.png"} <= found
    r = c.get_run(state["run_id"])
    assert r.info.status == "FINISHED" and r.info.run_name == "default" and "cnnexp.tracking_errors" not in r.data.tags


def test_a_sync_cut_short_continues_where_it_stopped(local_store, monkeypatch):
    """The store fails in the middle: one TrackingError naming the command that logs the run
    later; the second sync continues the same MLflow run and completes it."""
    import mlflow.tracking

    from cnnexp.errors import TrackingError
    from cnnexp.tracking.journal import STATE, read_json
    from cnnexp.tracking.sync import sync

    t = journal_tracker(local_store)
    for epoch in (1, 2):
        t.log_metrics({"test/acc": 0.5 * epoch}, step=epoch)
    t.finish()
    real = mlflow.tracking.MlflowClient.set_terminated

    def down(*a, **k):
        raise ConnectionError("store went away")

    monkeypatch.setattr(mlflow.tracking.MlflowClient, "set_terminated", down)
    with pytest.raises(TrackingError, match=f"store went away.*python -m cnnexp.tracking sync {t.folder}"):
        sync(t.folder)
    first = read_json(t.folder / STATE)
    assert not first.get("done") and first["run_id"] and first["offset"] > 0
    monkeypatch.setattr(mlflow.tracking.MlflowClient, "set_terminated", real)
    state = sync(t.folder)
    c = store.client(state["uri"])
    assert state["done"] and state["run_id"] == first["run_id"]
    assert [m.value for m in c.get_metric_history(state["run_id"], "test/acc")] == [0.5, 1.0]
    assert sync(t.folder)["run_id"] == first["run_id"]  # done: nothing more to do


def test_a_journal_whose_writer_is_gone_ends_killed_even_if_its_pid_is_reused(local_store, monkeypatch):
    from cnnexp.tracking import journal
    from cnnexp.tracking.sync import sync

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not journal.alive(journal.identity(dead.pid))
    me = journal.identity()
    assert journal.alive(me) and not journal.alive({**me, "pid_start": me["pid_start"] + 1})  # pid reused
    monkeypatch.setattr(journal, "identity", lambda pid=None: {**me, "pid_start": me["pid_start"] + 1})
    t = journal_tracker(local_store)
    t.log_metrics({"test/acc": 0.5}, step=1)  # no finish: as if SIGKILLed
    state = sync(t.folder)
    r = store.client(state["uri"]).get_run(state["run_id"])
    assert r.info.status == "KILLED" and "ended without ending the run" in r.data.tags["mlflow.note.content"]
    assert r.data.metrics["test/acc"] == 0.5


def test_journal_keeps_whole_lines_when_the_disk_is_full(tmp_path, monkeypatch, caplog):
    from cnnexp.tracking import journal

    t = journal.JournalTracker.start(small_cfg(), {"overrides": []}, tmp_path)
    t.log_metrics({"test/acc": 0.5}, step=1)
    real = os.write
    monkeypatch.setattr(journal.os, "write", lambda fd, data: real(fd, data[:7]))  # a short write: disk full
    t.log_metrics({"test/acc": 0.6}, step=2)
    t.log_metrics({"test/acc": 0.7}, step=3)  # not attempted any more
    monkeypatch.setattr(journal.os, "write", real)
    t.finish()
    assert "cannot write the run's journal" in caplog.text and caplog.text.count("cannot write") == 1
    events, _ = journal.read_events(t.folder / journal.JOURNAL)
    assert [e["event"] for _, e in events] == ["start", "metrics"]  # the cut line is not read


# -- the runs table ---------------------------------------------------------------------------
def fake_run(i, status="FINISHED", overrides="epochs=1", **metrics):
    return SimpleNamespace(info=SimpleNamespace(run_id=f"{i:032x}", status=status, run_name=f"r{i}"),
                           data=SimpleNamespace(metrics=metrics, tags={"sweep.job_num": str(i),
                                                                       "hydra.overrides": overrides}))


def test_runs_table_ranks_by_metric_with_varying_overrides():
    from cnnexp import runs

    rs = [fake_run(0, overrides="epochs=1 lr=0.1", **{"test/acc": 0.5, "test/loss": 1.0}),
          fake_run(1, overrides="epochs=1 lr=0.2", **{"test/acc": 0.7, "test/loss": 0.8}),
          fake_run(2, "FAILED", overrides="epochs=1 lr=9")]
    shared = runs.common_overrides(rs)
    assert shared == ["epochs=1"]
    t = runs.rows(rs, "test/acc", drop=shared)
    assert [r["job"] for r in t] == ["1", "0", "2"] and t[0]["overrides"] == "lr=0.2" and t[2]["test/acc"] == "-"
    assert [r["job"] for r in runs.rows(rs, "test/loss")] == ["1", "0", "2"]  # losses ascend
    text = runs.format_table(t)
    assert text.splitlines()[0].split()[:4] == ["rank", "job", "status", "test/acc"]
    assert runs.to_csv(t).count("\n") == 4 and runs.to_markdown(t).count("\n") == 5


def test_unreachable_tracking_server_fails_the_run_in_one_line(tmp_path):
    p = cli(["data=mnist_sample", "tracking.uri=http://127.0.0.1:9"], tmp_path / "out", timeout=120)
    assert p.returncode == 4 and p.stderr.strip().splitlines()[-1].startswith(
        "cnnexp: error: cannot reach the MLflow server at http://127.0.0.1:9")
    assert "Epoch" not in p.stdout  # before any training


def test_runs_cli_without_a_store_is_one_clear_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "cnnexp.runs"], capture_output=True, text=True,
                       env=env_for(tmp_path / "none"), timeout=120)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.strip().count("\n") == 0 and "no runs yet" in p.stderr


def test_no_import_cycles_in_tracking_and_the_entry_modules():
    """Every import between cnnexp modules (lazy ones inside functions too) points one way."""
    import ast

    pkg = ROOT / "cnnexp"
    entry = ("__main__", "cli", "commands", "app", "preflight", "config", "paths", "errors", "registry", "resume",
             "runs", "runstore", "predict", "ui_cmd", "train", "model", "checkpoint", "progress")
    files = [*sorted((pkg / "tracking").glob("*.py")), *(pkg / f"{m}.py" for m in entry if (pkg / f"{m}.py").exists())]
    name = lambda f: ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")  # noqa: E731
    known = {name(g) for g in files}
    graph = {}
    for f in files:
        mod = name(f)
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                package = (mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]).split(".")
                base = package[: len(package) - node.level + 1]  # level 1: this package, 2: its parent
                target = ".".join(base + ([node.module] if node.module else []))
                deps |= {target} | {f"{target}.{a.name}" for a in node.names}
        graph[mod] = {d for d in deps if d in known and d != mod}

    def visit(m, path):
        assert m not in path, "import cycle: " + " -> ".join([*path, m])
        for d in graph[m]:
            visit(d, [*path, m])

    for m in graph:
        visit(m, [])
    assert graph["cnnexp.tracking.journal"] and "cnnexp.tracking.sync" in graph["cnnexp.tracking.sweep"]
    assert {"cnnexp.cli", "cnnexp.commands", "cnnexp.app", "cnnexp.preflight"} <= graph.keys()
    assert "cnnexp.app" in graph["cnnexp.cli"] and "cnnexp.errors" in graph["cnnexp.preflight"]
