"""`cnnexp` as one command: help for people, the package version, subcommands, sweep syntax
the basic sweeper cannot run, the runs table straight from SQLite, predict on IDX/.npy/PNG."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cnnexp import commands, predict, runs
from cnnexp.errors import ConfigError, DataError
from helpers.cli import TINY, cli, env_for
from helpers.tracking import all_runs, client


def test_help_names_groups_experiments_knobs_sweeps_and_where_runs_go(capsys):
    with pytest.raises(SystemExit) as e:
        commands.dispatch(["model=lenet5", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    for needle in ("lr_scheduler  cosine, none, one_cycle, step, warmup", "keras_mnist", "optuna_lr", "verbose=0|1|2|3",
                   "resume=<run id | id prefix | checkpoint | run folder>", "cnnexp -m lr=0.001,0.005,0.01",
                   "mlflow.db", "cnnexp predict", "cnnexp ui", "--hydra-help", "tracking.wait=true waits",
                   "cnnexp sync"):
        assert needle in text, needle


def test_version_is_the_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit):
        commands.dispatch(["--version"])
    assert capsys.readouterr().out == f"cnnexp {version('cnnexp')}\n"


def test_train_is_the_plain_form_and_interval_needs_optuna():
    assert commands.dispatch(["train", "lr=0.1"]) == ["lr=0.1"]
    with pytest.raises(ConfigError, match=r"lr=interval\(0.001,0.1\): interval\(\) is a search range .* "
                                          r"hydra/sweeper=optuna_max"):
        commands.dispatch(["-m", "lr=interval(0.001,0.1)"])
    assert commands.dispatch(["-m", "hydra/sweeper=optuna_max", "lr=interval(0.001,0.1)"])  # fine with Optuna
    assert commands.dispatch(["-m", "experiment=optuna_lr", "lr=tag(log, interval(0.001,0.1))"])


@pytest.mark.slow
def test_interval_without_optuna_is_one_line_and_logs_nothing(tmp_path):
    out = tmp_path / "outputs"
    p = cli(["-m", "lr=interval(0.001,0.1)"], out)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and p.stderr.startswith("cnnexp: error: lr=interval")
    assert not (out / "mlflow.db").exists()  # no empty FAILED parent run


def test_completion_script_covers_both_forms(capsys):
    with pytest.raises(SystemExit):
        commands.dispatch(["completion"])
    script = capsys.readouterr().out
    assert "complete -o nospace -o default -F _cnnexp_complete cnnexp python python3" in script
    assert "-sc query=bash" in script
    r = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert r.returncode == 0, r.stderr


COMPLETE = r"""
eval "$(cnnexp completion)"
for line in "python -m cnnexp model=" "cnnexp train optimizer=" "cnnexp "; do
  COMP_LINE="$line"; COMP_POINT=${#line}; read -a COMP_WORDS <<< "$line"; COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
  [ "${line: -1}" = " " ] && { COMP_WORDS+=(""); COMP_CWORD=$((COMP_CWORD+1)); }
  _cnnexp_complete; echo "$line -> ${COMPREPLY[*]}"
done
"""


@pytest.mark.slow
def test_completion_in_bash_for_both_forms(tmp_path):
    p = subprocess.run(["bash", "-c", COMPLETE], capture_output=True, text=True, env=env_for(tmp_path / "outputs"),
                       timeout=600)
    got = dict(line.split(" -> ") for line in p.stdout.splitlines())
    assert got["python -m cnnexp model="].split() == ["model=keras_mnist", "model=lenet5", "model=seed"], p.stderr
    assert got["cnnexp train optimizer="].split() == ["optimizer=adam", "optimizer=momentum", "optimizer=sgd"]
    assert got["cnnexp "].split()[:4] == ["train", "runs", "predict", "ui"] and "lr_scheduler=" in got["cnnexp "]


def test_read_images_from_npy_png_and_idx(tmp_path):
    import matplotlib.image as mpimg

    from cnnexp.data.idx import write_idx

    imgs = (np.arange(3 * 28 * 28) % 256).reshape(3, 28, 28).astype(np.uint8)
    np.save(tmp_path / "x.npy", imgs)
    mpimg.imsave(tmp_path / "x.png", imgs[1], cmap="gray", vmin=0, vmax=255)
    write_idx(tmp_path / "x-idx3-ubyte", imgs)
    assert np.array_equal(predict.read_images(str(tmp_path / "x.npy")), imgs)
    assert np.array_equal(predict.read_images(str(tmp_path / "x-idx3-ubyte")), imgs)
    png = predict.read_images(str(tmp_path / "x.png"))
    assert png.shape == (1, 28, 28) and np.abs(png[0].astype(int) - imgs[1]).max() <= 1
    assert np.array_equal(predict.read_images(str(tmp_path / "x.npy"), invert=True), 255 - imgs)
    with pytest.raises(DataError, match="unknown image format"):
        (tmp_path / "x.txt").write_text("1")
        predict.read_images(str(tmp_path / "x.txt"))


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "outputs"
    for lr in ("0.01", "0.02"):
        assert cli([*TINY, f"lr={lr}"], out).returncode == 0
    assert cli(["-m", *TINY, "lr=0.001,0.03", "data.val_size=50"], out).returncode == 0
    return out


@pytest.mark.slow
def test_runs_table_ranks_the_sweep_by_its_objective_with_full_ids(logged, capsys, monkeypatch):
    monkeypatch.setenv("CNNEXP_OUTPUTS", str(logged))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert runs.main([]) == 0
    text = capsys.readouterr().out
    jobs = [r for r in all_runs(client(logged)) if r.data.tags.get("mlflow.parentRunId")]
    best = max(jobs, key=lambda r: r.data.metrics["val/acc"])
    assert "2 runs by val/acc, descending" in text
    first_row = text.split("run_id\n", 1)[1].splitlines()[0]
    assert first_row.startswith("1 ") and first_row.endswith(best.info.run_id)
    assert runs.main(["--last", "5"]) == 0
    assert "the 5 latest runs" in capsys.readouterr().out


@pytest.mark.slow
def test_predict_by_id_prefix_and_resume_prefix_errors(logged, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CNNEXP_OUTPUTS", str(logged))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from cnnexp.data import load_dataset

    ds = load_dataset("mnist_sample")
    np.save(tmp_path / "x.npy", ds.test_images[:4])
    rid = next(r.info.run_id for r in all_runs(client(logged)) if "lr=0.02" in r.data.tags.get("hydra.overrides", ""))
    assert predict.main([rid[:8], str(tmp_path / "x.npy"), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["file", "index", "label", "probability", "top"] and len(lines) == 5
    for line in lines[1:]:
        f, i, label, p, top = line.split("\t")
        assert label in "0123456789" and 0 < float(p) <= 1 and top.startswith(f"{label} ")
    assert predict.main(["0", str(tmp_path / "x.npy")]) == 2  # too short to be an id prefix
    assert "is not a run id" in capsys.readouterr().err


@pytest.mark.slow
def test_ui_serves_the_configured_store_on_localhost(logged, tmp_path):
    import json
    import urllib.request

    from helpers.tracking import free_port, server

    port = free_port()
    cmd = [sys.executable, "-m", "cnnexp", "ui", "--port", str(port)]
    env = env_for(logged, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job runner: it only takes CPU here
    with server(cmd, f"http://127.0.0.1:{port}/health", tmp_path / "ui.log", env=env, timeout=180):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name"
                                     f"?experiment_name=cnnexp")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.load(r)["experiment"]["name"] == "cnnexp"  # the store the runs went to
    assert f"MLflow UI for sqlite:///{logged / 'mlflow.db'} on http://127.0.0.1:{port}" in (tmp_path / "ui.log").read_text()
