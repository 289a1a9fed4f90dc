"""Fault injection through the real command line: every bad input gets one clear line on
stderr, a non-zero exit status and no traceback; nothing already on disk is lost."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from cnnexp.data.idx import STANDARD_FILES
from helpers.cli import assert_one_line_error, cli
from helpers.idx import separable_idx

pytestmark = pytest.mark.slow
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = STANDARD_FILES


CONFIG_CASES = [
    (["lrr=0.01"], ["'lrr'", "did you mean 'lr'"]),
    (["epochs=five"], ["epochs=five", "integer"]),
    (["lr=-1"], ["lr=-1.0", "> 0"]),
    (["lr=0"], ["lr=0", "> 0"]),
    (["epochs=0"], ["epochs=0", ">= 1"]),
    (["batch_size=0"], ["batch_size=0", ">= 1"]),
    (["batch_size=1001"], ["batch_size=1001", "1000 images"]),
    (["data=mnist_sample", "data.train_size=4001"], ["4001", "4000"]),
    (["data=mnist_sample", "data.test_size=1001"], ["1001", "1000"]),
    (["data=mnist_sample", "data.train_size=null", "data.val_size=4000"], ["val_size=4000", "4000"]),
    (["model=lenet"], ["'lenet'", "lenet5"]),
    (["model.layers.0.type=conv3d"], ["'conv3d'", "conv2d"]),
    (["optimizer=rmsprop"], ["'rmsprop'", "adam, momentum, sgd"]),
    (["data=cifar10"], ["'cifar10'", "mnist"]),
    (["model.layers.2.type=relu"], ["model.layers.3 (dense)", "(13, 13, 8)"]),
    (["model.layers.0.kernel_size=29"], ["kernel 29x29", "28x28"]),
    (["model.layers.1.pool=27"], ["pool 27x27", "26x26"]),
    (["+model.layers.0._target_=os.system"], ["_target_"]),
]


@pytest.mark.parametrize("args,needles", CONFIG_CASES, ids=[" ".join(a) for a, _ in CONFIG_CASES])
def test_bad_config(tmp_path, args, needles):
    p = cli([*args, "tracking.enabled=false"], tmp_path / "outputs")
    assert_one_line_error(p, *needles)
    assert "Epoch" not in p.stdout  # rejected before any training


def corrupt(folder: Path, how: str) -> Path:
    separable_idx(folder, n_train=40, n_test=20)
    f = folder / TRAIN_IMAGES
    raw = gzip.decompress(f.read_bytes())
    if how == "truncated_gz":
        f.write_bytes(f.read_bytes()[:200])
    elif how == "not_gzip":
        f.write_bytes(b"this is not a gzip file at all" * 10)
    elif how == "wrong_magic":
        f.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + raw[4:]))
    elif how == "wrong_count":
        f.write_bytes(gzip.compress(raw[:-784 * 3]))
    elif how == "length_mismatch":
        lab = gzip.decompress((folder / TRAIN_LABELS).read_bytes())
        (folder / TRAIN_LABELS).write_bytes(gzip.compress(lab[:4] + (30).to_bytes(4, "big") + lab[8:38]))
    elif how == "bad_label":
        lab = bytearray(gzip.decompress((folder / TRAIN_LABELS).read_bytes()))
        lab[8 + 5] = 12
        (folder / TRAIN_LABELS).write_bytes(gzip.compress(bytes(lab)))
    return folder


DATA_CASES = [
    ("truncated_gz", [TRAIN_IMAGES]),
    ("not_gzip", [TRAIN_IMAGES]),
    ("wrong_magic", [TRAIN_IMAGES, "magic"]),
    ("wrong_count", [TRAIN_IMAGES]),
    ("length_mismatch", ["40", "30"]),
    ("bad_label", ["12"]),
]


@pytest.mark.parametrize("how,needles", DATA_CASES, ids=[c for c, _ in DATA_CASES])
def test_bad_data(tmp_path, how, needles):
    d = corrupt(tmp_path / "idx", how)
    p = cli(["data=mnist", f"data.dir={d}", "data.train_size=null", "data.test_size=null",
             "tracking.enabled=false"], tmp_path / "outputs")
    assert_one_line_error(p, *needles)


def test_missing_data_dir(tmp_path):
    p = cli(["data.dir=/no/such/folder", "tracking.enabled=false"], tmp_path / "outputs")
    assert_one_line_error(p, "/no/such/folder")


def test_diverging_run_names_the_step(tmp_path):
    p = cli(["lr=1e6", "data=mnist_sample", "data.train_size=200", "data.test_size=100", "log_every=50",
             "tracking.enabled=false"], tmp_path / "outputs")
    line = assert_one_line_error(p, "step", "lr")
    assert "nan" in line.lower() or "inf" in line.lower()


def test_debug_flag_shows_the_traceback(tmp_path):
    p = cli(["lr=-1", "tracking.enabled=false"], tmp_path / "outputs", CNNEXP_DEBUG="1")
    assert p.returncode != 0
    assert "Traceback" in p.stderr and "ConfigError" in p.stderr


def test_weights_with_wrong_shapes_name_the_layer(tmp_path):
    from cnnexp.errors import ConfigError
    from cnnexp.model import build_model
    from helpers.experiments import composed

    cfg = composed()
    model = build_model(cfg["model"], seed=0)
    state = model.state_dict()
    state["dense_3.W"] = np.zeros((1352, 9), np.float32)
    np.savez(tmp_path / "w.npz", **state)
    with np.load(tmp_path / "w.npz", allow_pickle=False) as z:
        with pytest.raises(ConfigError, match=r"dense_3.*\(1352, 9\).*\(1352, 10\)"):
            model.load_state_dict(dict(z))


def test_outputs_not_writable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    p = cli(["tracking.enabled=false"], tmp_path / "outputs", CNNEXP_OUTPUTS=str(blocker / "outputs"))
    assert_one_line_error(p, str(blocker / "outputs"), "not writable")


def test_outputs_disk_full(tmp_path):
    p = cli(["tracking.enabled=false"], tmp_path / "outputs", CNNEXP_MIN_FREE_MB=str(10**12))
    assert_one_line_error(p, "MB free")


@pytest.mark.parametrize("override", ["+hydra.callbacks.evil._target_=os.system",
                                      "hydra.launcher._target_=builtins.exec",
                                      "+model.layers.0._target_=os.system",
                                      "+optimizer._target_=subprocess.call"])
def test_no_free_target(tmp_path, override):
    p = cli([override, "tracking.enabled=false"], tmp_path / "outputs")
    assert_one_line_error(p, "_target_", "not allowed")


def test_data_errors_come_before_the_mlflow_run(tmp_path):
    """With tracking on, an input error found while loading data leaves no run behind."""
    p = cli(["batch_size=1001"], tmp_path / "outputs")
    assert_one_line_error(p, "batch_size=1001")
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


def test_bad_parallel_mode_is_one_line(tmp_path):
    p = cli(["epochs=1", "tracking.enabled=false"], tmp_path / "outputs", CNNEXP_PARALLEL="fibers")
    assert_one_line_error(p, "CNNEXP_PARALLEL='fibers'", "processes, threads")
    assert p.returncode == 2
