"""Careless or hostile values get one line: non-finite or out-of-range numbers, experiment
names that would leave mlartifacts/, a sqlite store in a folder that does not exist, data the
user may not read, and every malformed field of a checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from cnnexp import checkpoint
from cnnexp.app import prepare
from cnnexp.errors import ConfigError, DataError
from cnnexp.paths import conf_dir
from cnnexp.preflight import check
from cnnexp.train import TrainState
from helpers.cli import cli, env_for
from helpers.experiments import composed

CONF = str(conf_dir())


@pytest.mark.parametrize("argv,needle", [
    (["data.scale=nan"], "data.scale=nan is invalid: must be a finite number"),
    (["data.shift=inf"], "data.shift=inf is invalid"),
    (["data.shift=-inf"], "data.shift=-inf is invalid"),
    (["lr=inf"], "lr=inf is invalid"),
    (["lr=nan"], "lr=nan is invalid"),
    (["optimizer=momentum", "optimizer.momentum=nan"], "optimizer.momentum=nan is invalid"),
    (["optimizer=momentum", "optimizer.momentum=1.0"], "optimizer.momentum=1.0 is invalid: must be a number in [0, 1)"),
    (["optimizer=adam", "optimizer.beta1=nan"], "optimizer.beta1=nan"),
    (["optimizer=adam", "optimizer.beta2=1.5"], "optimizer.beta2=1.5 is invalid"),
    (["optimizer=adam", "optimizer.eps=0"], "optimizer.eps=0"),
    (["optimizer.weight_decay=inf"], "optimizer.weight_decay=inf"),
    (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1 is invalid"),
    (["tracking.experiment=.."], "tracking.experiment='..' is invalid"),
    (["tracking.experiment=a/../../b"], "path separators"),
    (["tracking.experiment=..."], "only dots"),
    (["memory_limit_mb=0"], "memory_limit_mb=0 is invalid"),
])
def test_bad_number_or_name_is_one_line(argv, needle, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNEXP_OUTPUTS", str(tmp_path / "outputs"))
    with pytest.raises(ConfigError) as e:
        check(argv, CONF)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_sqlite_store_in_the_default_outputs_folder_may_be_created(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNEXP_OUTPUTS", str(tmp_path / "outputs"))
    assert check([f"tracking.uri=sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"], CONF) == 1
    assert check([f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"], CONF) == 1


def test_store_in_a_missing_folder_is_refused(tmp_path, monkeypatch):
    from cnnexp.errors import TrackingError

    monkeypatch.setenv("CNNEXP_OUTPUTS", str(tmp_path / "outputs"))
    with pytest.raises(TrackingError, match=r"tracking.uri=.*folder '/no_such_folder_xyz' does not exist"):
        check(["tracking.uri=sqlite:////no_such_folder_xyz/mlflow.db"], CONF)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'typo' / 'mlflow.db'}")
    with pytest.raises(TrackingError, match=r"\$MLFLOW_TRACKING_URI=.*typo.* does not exist"):
        check([], CONF)
    assert not (tmp_path / "typo").exists()


# -- checkpoints -----------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    cfg = composed(["data=mnist_sample", "data.train_size=100", "data.test_size=50"])
    exp = prepare(cfg)
    path = checkpoint.save(tmp_path / "last.npz", exp.model, exp.optimizer, TrainState(epoch=1, step=100), cfg)
    return cfg, exp, path


def with_meta(path: Path, meta) -> Path:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = meta if isinstance(meta, np.ndarray) else np.array(meta)
    out = path.with_name("bad.npz")
    np.savez(out, **arrays)
    return out


def good_meta(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"]))


@pytest.mark.parametrize("edit,needle", [
    (lambda m: "{not json", "'meta' is not JSON"),
    (lambda m: "42", "'meta' is a JSON int, not an object"),
    (lambda m: "[1, 2]", "'meta' is a JSON list"),
    (lambda m: np.array(3.5), "'meta' is a float64 array"),
    (lambda m: np.array(["a", "b"]), "of shape (2,)"),
    (lambda m: json.dumps({**m, "state": None}), "meta.state is None"),
    (lambda m: json.dumps({**m, "state": {**m["state"], "epoch": 1.5}}), "meta.state.epoch=1.5 is not an integer"),
    (lambda m: json.dumps({**m, "state": {**m["state"], "epoch": "2"}}), "meta.state.epoch='2'"),
    (lambda m: json.dumps({**m, "state": {**m["state"], "pos": -1}}), "meta.state.pos=-1"),
    (lambda m: json.dumps({**m, "state": {**m["state"], "step": True}}), "meta.state.step=True"),
    (lambda m: json.dumps({**m, "state": {**m["state"], "history": 3}}), "history is not a list"),
    (lambda m: json.dumps({**m, "state": {**m["state"], "partial": []}}), "partial is not an object"),
    (lambda m: json.dumps({**m, "optimizer": 5}), "meta.optimizer=5"),
    (lambda m: json.dumps({**m, "format": 99}), "has format 99"),
])
def test_malformed_checkpoint_fields_are_one_line(saved, edit, needle):
    _, _, path = saved
    bad = with_meta(path, edit(good_meta(path)))
    with pytest.raises(DataError) as e:
        checkpoint.load(bad)
    assert needle in str(e.value) and str(bad) in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_checkpoint_position_is_checked_against_the_data(saved):
    cfg, exp, path = saved
    m = good_meta(path)
    bad = with_meta(path, json.dumps({**m, "state": {**m["state"], "pos": 100}}))
    splits = type("S", (), {"train": (np.zeros((100, 28, 28)), np.zeros(100))})()
    with pytest.raises(ConfigError, match="stopped at image 100 of epoch 2, but the training set has 100 images"):
        checkpoint.check_fits(checkpoint.load(bad), exp, splits, cfg)
    checkpoint.check_fits(checkpoint.load(path), exp, splits, cfg)  # the good one fits


def test_checkpoint_mismatches_are_found_before_the_run(saved):
    cfg, _, path = saved
    splits = type("S", (), {"train": (np.zeros((100, 28, 28)), np.zeros(100))})()
    other = prepare(composed(["optimizer=adam"]))
    with pytest.raises(ConfigError, match="trained with optimizer 'sgd'"):
        checkpoint.check_fits(checkpoint.load(path), other, splits, cfg)
    with pytest.raises(ConfigError, match="already finished epoch 1"):
        checkpoint.check_fits(checkpoint.load(path), prepare(cfg), splits, {**cfg, "epochs": 1})
    lenet = prepare(composed(["model=lenet5"]))
    with pytest.raises(ConfigError, match="weights do not match"):
        checkpoint.check_fits(checkpoint.load(path), lenet, splits, cfg)


@pytest.mark.slow
def test_resume_mismatch_leaves_no_run(saved, tmp_path):
    _, _, path = saved
    p = cli([f"resume={path}", "optimizer=adam", "data=mnist_sample", "data.train_size=100", "data.test_size=50"],
            tmp_path / "outputs")
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("cnnexp: error:")]
    assert p.returncode == 2 and len(errors) == 1 and "optimizer 'sgd'" in errors[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


# -- permissions, as a user who is not root --------------------------------------------------
def as_nobody(args, cwd: Path):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run as another user")
    env = env_for(cwd / "outputs", HOME=str(cwd))
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                           "cnnexp", *args, "tracking.enabled=false"], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.fixture
def shared_dir():
    d = Path(tempfile.mkdtemp(prefix="cnnexp-perm-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["folder", "file", "parent"])
def test_unreadable_data_is_one_line(shared_dir, what):
    from cnnexp.data.idx import STANDARD_FILES, write_idx

    data = shared_dir / "data"
    data.mkdir()
    for name, arr in zip(STANDARD_FILES, (np.zeros((10, 28, 28), np.uint8), np.zeros(10, np.uint8),
                                          np.zeros((10, 28, 28), np.uint8), np.zeros(10, np.uint8))):
        write_idx(data / name, arr).chmod(0o644)
    (data / STANDARD_FILES[0]).chmod(0o000 if what == "file" else 0o644)
    data.chmod({"file": 0o755, "folder": 0o300, "parent": 0o700}[what])
    target = data / "inner" if what == "parent" else data  # a folder inside one the user may not enter
    p = as_nobody(["data=idx", f"data.dir={target}"], shared_dir)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("cnnexp: error:")]
    assert p.returncode == 3 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "Permission denied" in errors[0] and str(data) in errors[0], errors[0]
