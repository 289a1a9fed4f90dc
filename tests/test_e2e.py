"""End to end: `python -m cnnexp` in a subprocess, reproducibility, and the packaged configs."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cnnexp.app import run
from cnnexp.tracking.base import MemoryTracker
from helpers.cli import cli, env_for
from helpers.experiments import composed
from helpers.idx import separable_idx

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cli_trains_on_a_tiny_idx_data_set(tmp_path):
    d = separable_idx(tmp_path / "idx")
    p = cli(["data=idx", f"data.dir={d}", "epochs=2", "log_every=200", "tracking.enabled=false"],
            tmp_path / "outputs", timeout=600)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "--- Epoch 1 ---" in out and "--- Epoch 2 ---" in out
    assert re.search(r"\[Step 200\] Past 200 steps: Average Loss \d+\.\d{3} \| Accuracy: \d+%", out)
    acc = float(re.search(r"^Test Accuracy: ([0-9.]+)$", out, re.M).group(1))
    loss = float(re.search(r"^Test Loss: ([0-9.]+)$", out, re.M).group(1))
    assert acc >= 0.95, out  # stated target for this separable set
    assert loss < 0.5


@pytest.mark.slow
def test_cli_default_run_offline_reaches_the_post_range(tmp_path):
    """The default experiment, offline: falls back to the bundled MNIST sample, 1k/1k, 3 epochs."""
    p = cli(["tracking.enabled=false"], tmp_path / "outputs", timeout=600)
    assert p.returncode == 0, p.stderr
    assert "using the 5,000-image MNIST sample" in p.stderr
    assert "MNIST CNN initialized!" in p.stdout
    assert p.stdout.count("[Step ") == 30
    acc = float(re.search(r"^Test Accuracy: ([0-9.]+)$", p.stdout, re.M).group(1))
    assert acc >= 0.78, p.stdout  # the post: 0.78 after 3 epochs on 1k/1k


def test_same_config_and_seed_give_identical_metrics():
    cfg = composed(["data=mnist_sample", "data.train_size=300", "data.test_size=200", "epochs=2",
                    "model=keras_mnist", "model.layers.0.filters=4", "model.layers.2.filters=4",
                    "model.layers.7.units=16", "batch_size=8", "optimizer=adam", "lr=0.001",
                    "log_every=10"])
    runs = []
    for _ in range(2):
        t = MemoryTracker()
        r = run(cfg, tracker=t, log=lambda s: None)
        runs.append((r["state"].history, r["model"].state_dict(), t.metrics))
    (h1, w1, m1), (h2, w2, m2) = runs
    strip = lambda h: [{k: v for k, v in e.items() if not k.startswith("perf/")} for e in h]  # noqa: E731
    assert strip(h1) == strip(h2)
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    assert m1["train/loss"] == m2["train/loss"]
    # and a different seed gives a different run
    t = MemoryTracker()
    r3 = run({**cfg, "seed": 1}, tracker=t, log=lambda s: None)
    assert strip(r3["state"].history) != strip(h1)


def test_tracker_receives_the_metrics():
    cfg = composed(["data=mnist_sample", "data.train_size=200", "data.val_size=100", "data.test_size=100",
                    "epochs=2", "log_every=50"])
    t = MemoryTracker()
    run(cfg, tracker=t, log=lambda s: None)
    assert [s for s, _ in t.metrics["train/loss"]] == [50, 100, 150, 200, 250, 300, 350, 400]
    for k in ("train/epoch_loss", "train/epoch_acc", "val/loss", "val/acc", "test/loss", "test/acc",
              "perf/images_per_sec", "perf/epoch_seconds"):
        assert [s for s, _ in t.metrics[k]] == [1, 2], k
    assert t.tags["data.source"] == "bundled_sample"


@pytest.mark.slow
def test_wheel_carries_the_configs(tmp_path):
    """A wheel install has no checkout around it: conf/ must travel inside the package."""
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    whl = next((tmp_path / "dist").glob("cnnexp-*.whl"))
    names = zipfile.ZipFile(whl).namelist()
    for f in ("cnnexp/conf/config.yaml", "cnnexp/conf/model/seed.yaml", "cnnexp/conf/data/mnist.yaml",
              "cnnexp/conf/optimizer/adam.yaml", "cnnexp/conf/hydra/job_logging/cnnexp.yaml"):
        assert f in names, f
    site = tmp_path / "site"
    zipfile.ZipFile(whl).extractall(site)
    env = env_for(tmp_path / "out", PYTHONPATH=str(site))
    q = subprocess.run([sys.executable, "-c", "import cnnexp, cnnexp.paths as p; print(cnnexp.__file__); "
                        "print(p.conf_dir())"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert q.returncode == 0, q.stderr
    assert q.stdout.splitlines() == [str(site / "cnnexp" / "__init__.py"), str(site / "cnnexp" / "conf")]
    r = subprocess.run([sys.executable, "-m", "cnnexp", "data=mnist_sample", "data.train_size=100",
                        "data.test_size=50", "epochs=1", "tracking.enabled=false"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Test Accuracy:" in r.stdout
