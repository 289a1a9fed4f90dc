"""Checkpoints resume exactly: stopping mid-epoch or at an epoch end and resuming gives the
same final weights and metrics as the uninterrupted run (in process; the subprocess versions
with real signals are in test_signals.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnexp import checkpoint
from cnnexp.app import prepare, run
from cnnexp.errors import ConfigError, DataError
from cnnexp.tracking.base import MemoryTracker
from cnnexp.train import StopRequested, TrainState
from helpers.experiments import StopAt, composed, final_of, quiet

ARGS = ["data=mnist_sample", "data.train_size=400", "data.val_size=100", "data.test_size=100", "epochs=3",
        "log_every=5", "model=keras_mnist", "model.layers.0.filters=4", "model.layers.2.filters=4",
        "model.layers.7.units=16", "batch_size=8", "optimizer=adam", "lr=0.002"]


@pytest.fixture(scope="module")
def reference():
    cfg = composed(ARGS)
    return cfg, final_of(run(cfg, log=quiet))


@pytest.mark.parametrize("stop_at", [650, 800])  # mid-epoch 2 / exactly at the end of epoch 2
def test_stop_and_resume_is_exact(tmp_path, reference, stop_at):
    cfg, (ref_metrics, ref_weights) = reference
    with pytest.raises(StopRequested):
        run(cfg, tracker=StopAt(stop_at), log=quiet, checkpoint_dir=tmp_path)
    ck = checkpoint.load(tmp_path / "last.npz")
    st = ck.meta["state"]
    assert (st["epoch"], st["pos"]) == ((1, 280) if stop_at == 650 else (2, 0))
    resumed = run(cfg, log=quiet, checkpoint_dir=tmp_path, exp=prepare(cfg), resume=ck)
    metrics, weights = final_of(resumed)
    assert metrics == ref_metrics
    assert weights.keys() == ref_weights.keys()
    for k in weights:
        assert np.array_equal(weights[k], ref_weights[k]), k


def test_epoch_checkpoints_are_written_and_plain(tmp_path, reference):
    cfg, _ = reference
    t = MemoryTracker()
    run(cfg, tracker=t, log=quiet, checkpoint_dir=tmp_path)
    assert [a for a, p in t.artifacts if p == "checkpoints"] == [str(tmp_path / "last.npz")] * 3
    with np.load(tmp_path / "last.npz", allow_pickle=False) as z:  # no pickles inside
        assert "model/conv2d_0.W" in z.files and "meta" in z.files
        assert any(k.startswith("optim/") for k in z.files)
    ck = checkpoint.load(tmp_path)  # a folder works too
    assert ck.meta["state"]["epoch"] == 3


def test_resume_of_a_finished_run_says_so(tmp_path, reference):
    cfg, _ = reference
    run(cfg, log=quiet, checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="already finished epoch 3"):
        run(cfg, log=quiet, resume=checkpoint.load(tmp_path / "last.npz"))


def test_resume_with_another_architecture_names_the_layer(tmp_path, reference):
    cfg, _ = reference
    with pytest.raises(StopRequested):
        run(cfg, tracker=StopAt(100), log=quiet, checkpoint_dir=tmp_path)
    other = composed(ARGS + ["model.layers.0.filters=6"])
    with pytest.raises(ConfigError, match=r"conv2d_0.*\(3, 3, 1, 4\).*\(3, 3, 1, 6\)"):
        run(other, log=quiet, resume=checkpoint.load(tmp_path / "last.npz"))


def test_resume_with_another_optimizer_is_refused(tmp_path, reference):
    cfg, _ = reference
    with pytest.raises(StopRequested):
        run(cfg, tracker=StopAt(100), log=quiet, checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="'adam'.*'sgd'"):
        run(composed(ARGS + ["optimizer=sgd"]), log=quiet, resume=checkpoint.load(tmp_path / "last.npz"))


def test_broken_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.npz")
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="unreadable or truncated"):
        checkpoint.load(tmp_path / "trunc.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(DataError, match="not a cnnexp checkpoint"):
        checkpoint.load(tmp_path / "foreign.npz")


def test_checkpoint_write_is_atomic(tmp_path, reference, monkeypatch):
    """A failure while writing leaves the previous checkpoint intact and no temp file."""
    cfg, _ = reference
    exp = prepare(cfg)
    good = checkpoint.save(tmp_path / "last.npz", exp.model, exp.optimizer, TrainState(epoch=1))
    before = good.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(DataError, match="No space left"):
        checkpoint.save(tmp_path / "last.npz", exp.model, exp.optimizer, TrainState(epoch=2))
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.npz"]
