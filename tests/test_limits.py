"""Work that would not fit is refused before it starts: a model too large for memory, an IDX
header that promises more than its file can hold, and every job of a large sweep is checked
before the first one runs. (Times for these are measured in benchmarks/limits.py.)"""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from cnnexp import estimate
from cnnexp.data.idx import STANDARD_FILES, read_idx, write_idx
from cnnexp.errors import ConfigError, DataError
from cnnexp.paths import conf_dir
from cnnexp.preflight import check
from helpers.cli import cli, env_for

CONF = str(conf_dir())
MAX_RSS_MB = 500


def gzip_bomb(path: Path, images: int = 10**9, size: int = 2 * 2**20) -> Path:
    """A ``size``-byte gzip file of an IDX header promising ``images`` 28x28 images, then zeros."""
    header = struct.pack(">HBB3I", 0, 8, 3, images, 28, 28)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    zeros = bytes(2**20)
    with open(path, "wb") as f:
        written = f.write(comp.compress(header))
        while written < size:
            written += f.write(comp.compress(zeros))
        f.write(comp.flush())
    return path


def test_bomb_is_refused_without_decompressing(tmp_path):
    path = gzip_bomb(tmp_path / "train-images-idx3-ubyte.gz", size=64 * 2**10)
    with pytest.raises(DataError) as e:
        read_idx(path, "images")
    msg = str(e.value)
    assert str(path) in msg and "1000000000 x 28 x 28" in msg and "can hold at most" in msg


def test_header_promising_more_than_memory_is_refused(tmp_path, monkeypatch):
    path = write_idx(tmp_path / "im.gz", np.zeros((100, 28, 28), np.uint8))
    monkeypatch.setattr(estimate, "available_bytes", lambda: 1000)
    with pytest.raises(DataError, match=r"78,400 bytes|0.1 MB of data, more than"):
        read_idx(path, "images")


def test_gzip_longer_than_its_header_is_refused_after_one_extra_byte(tmp_path):
    path = tmp_path / "lb.gz"
    path.write_bytes(gzip.compress(struct.pack(">HBBI", 0, 8, 1, 5) + bytes(5000)))
    with pytest.raises(DataError, match="has trailing bytes: header says 5 = 5 bytes of data, file has more than 5"):
        read_idx(path, "labels")


def test_huge_layer_is_refused_naming_layer_and_size():
    cfg = {"model": {"input_shape": [28, 28, 1], "dtype": "float32",
                     "layers": [{"type": "conv2d", "filters": 100000}, {"type": "flatten"},
                                {"type": "dense", "units": 10}, {"type": "softmax"}]},
           "batch_size": 1, "eval_batch_size": 500, "memory_limit_mb": None}
    with pytest.raises(ConfigError) as e:
        estimate.check_memory(cfg)
    msg = str(e.value)
    assert msg.startswith("model.layers.0 (conv2d) needs") and "[26, 26, 100000]" in msg and "GB" in msg


def test_the_estimate_counts_what_the_model_allocates():
    from cnnexp.app import prepare
    from helpers.experiments import composed

    cfg = composed(["model=lenet5"])
    rows = estimate.estimate(cfg)
    exp = prepare(cfg)
    assert sum(r[3] for r in rows) == exp.model.num_params
    assert [r[2] for r in rows] == [l.output_shape for l in exp.model.layers]


def test_memory_limit_is_configurable():
    with pytest.raises(ConfigError, match=r"more than the 1.0 MB limit \(memory_limit_mb=1\)"):
        check(["memory_limit_mb=1"], CONF)
    assert check(["memory_limit_mb=200"], CONF) == 1


#: the child's own peak RSS: VmHWM starts afresh at exec, while ru_maxrss keeps the peak of the
#: forked copy of this test process (a test worker grown past MAX_RSS_MB failed small children)
PEAK = ("[int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0] / 1024 "
        "if os.path.exists('/proc/self/status') else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024")


def child(code: str, tmp_path: Path) -> dict:
    """Run ``code`` in a fresh interpreter; it prints a JSON dict; its peak RSS (MB) is added."""
    wrapper = (code + "\nimport os, resource, json as _j\n"
               f"print(_j.dumps({{**RESULT, 'maxrss_mb': {PEAK}}}))")
    env = env_for(tmp_path / "outputs")
    p = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


MAIN = """
import sys
from cnnexp.cli import main
try:
    main({argv!r})
    RESULT = {{'exit': 0}}
except SystemExit as e:
    RESULT = {{'exit': e.code}}
"""


@pytest.mark.slow
def test_gzip_bomb_refused_with_little_memory(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    gzip_bomb(data / STANDARD_FILES[0])
    assert (data / STANDARD_FILES[0]).stat().st_size >= 2 * 2**20
    for name, arr in zip(STANDARD_FILES[1:], (np.zeros(10, np.uint8), np.zeros((10, 28, 28), np.uint8),
                                              np.zeros(10, np.uint8))):
        write_idx(data / name, arr)
    r = child(MAIN.format(argv=["data=idx", f"data.dir={data}", "tracking.enabled=false"]), tmp_path)
    assert r["exit"] == 3  # DataError
    assert r["maxrss_mb"] < MAX_RSS_MB, r


@pytest.mark.slow
def test_huge_model_refused_with_little_memory(tmp_path):
    r = child(MAIN.format(argv=["model.layers.0.filters=100000", "tracking.enabled=false"]), tmp_path)
    assert r["exit"] == 2  # ConfigError
    assert r["maxrss_mb"] < MAX_RSS_MB, r


# -- sweeps: every job, before the first ------------------------------------------------------
FILTERS = ",".join(map(str, range(1, 100))) + ",3000"
EVAL_BATCH = ",".join(map(str, range(1, 100))) + ",5000"


def test_10000_job_sweep_with_one_bad_combination_at_the_end_is_refused(tmp_path, monkeypatch):
    """Each value alone fits in 20 GB; only the last combination (3000 filters at batch 5000)
    does not: the keys interact, and the check finds it."""
    monkeypatch.setenv("CNNEXP_OUTPUTS", str(tmp_path / "outputs"))
    argv = ["-m", "memory_limit_mb=20000", f"model.layers.0.filters={FILTERS}", f"eval_batch_size={EVAL_BATCH}"]
    with pytest.raises(ConfigError) as e:
        check(argv, CONF)
    msg = str(e.value)
    assert "model.layers.0 (conv2d)" in msg and "(job: model.layers.0.filters=3000 eval_batch_size=5000)" in msg
    ok = ["-m", "memory_limit_mb=20000", f"model.layers.0.filters={FILTERS.replace('3000', '100')}",
          f"eval_batch_size={EVAL_BATCH}"]
    assert check(ok, CONF) == 10_000


@pytest.mark.parametrize("argv,job", [
    (["-m", "seed=range(0,100)", "lr=" + ",".join(f"0.{i:03d}" for i in range(1, 100)) + ",nan"], "lr=nan"),
    (["-m", "model=seed,lenet5", "model.layers.4.type=softmax"], "model=lenet5"),
    (["-m", "optimizer=sgd,adam", "optimizer.weight_decay=0,inf"], "optimizer.weight_decay=inf"),
    (["-m", "hydra/sweeper=optuna_max", "hydra.sweeper.n_trials=2", "lr=interval(0.001, 2e400)"], "lr=inf"),
])
def test_sweep_values_are_checked(argv, job, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNEXP_OUTPUTS", str(tmp_path / "outputs"))
    with pytest.raises(ConfigError) as e:
        check(argv, CONF)
    assert job in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.slow
def test_refused_sweep_starts_no_job(tmp_path):
    argv = ["-m", "memory_limit_mb=20000", f"model.layers.0.filters={FILTERS}", f"eval_batch_size={EVAL_BATCH}",
            "tracking.enabled=false", "data=mnist_sample"]
    p = cli(argv, tmp_path / "outputs")
    assert p.returncode == 2 and "eval_batch_size=5000" in p.stderr, p.stderr
    assert "Epoch" not in p.stdout and "Launching" not in p.stdout
    assert not (tmp_path / "outputs" / "multirun").exists()
