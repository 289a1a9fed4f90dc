"""lr schedules and callbacks: formulas, early stopping on crafted runs, the best checkpoint,
exact resume with both."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnexp import checkpoint
from cnnexp.app import prepare, run
from cnnexp.callbacks import EarlyStopping, build_callbacks
from cnnexp.errors import ConfigError
from cnnexp.schedules import build_schedule
from cnnexp.tracking.base import MemoryTracker
from cnnexp.train import StopRequested
from helpers.experiments import StopAt, composed, final_of, quiet

SMALL = ["data=mnist_sample", "data.train_size=300", "data.val_size=100", "data.test_size=100", "log_every=10",
         "batch_size=10", "verbose=0"]


def test_cosine_formula_per_step():
    s = build_schedule({"type": "cosine", "min_lr": 0.001}, 0.1)
    for e, i in [(0, 0), (1, 5), (3, 9)]:
        t = (e + i / 10) / 4
        assert s(e, i, 10, 4) == pytest.approx(0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * t)) / 2, rel=1e-12)


def test_step_one_cycle_and_warmup_shapes():
    st = build_schedule({"type": "step", "step_size": 2, "gamma": 0.5}, 0.1)
    assert [st(e, 0, 5, 6) for e in range(6)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    oc = build_schedule({"type": "one_cycle", "pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0},
                        1.0)
    lrs = [oc(e, i, 10, 4) for e in range(4) for i in range(10)]
    assert lrs[0] == pytest.approx(0.1) and lrs[10] == pytest.approx(1.0) and max(lrs) == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.001, rel=0.05) and lrs[10:] == sorted(lrs[10:], reverse=True)
    wu = build_schedule({"type": "warmup", "warmup_epochs": 0.5, "after": "constant"}, 0.2)
    assert [wu(0, i, 10, 3) for i in range(7)] == pytest.approx([0.04, 0.08, 0.12, 0.16, 0.2, 0.2, 0.2])
    with pytest.raises(ConfigError, match=r"lr_scheduler 'cosine'.*min_lr"):
        build_schedule({"type": "cosine", "min_lr": 5.0}, 0.1)
    with pytest.raises(ConfigError, match="unknown lr scheduler 'cosin'.*did you mean 'cosine'"):
        build_schedule({"type": "cosin"}, 0.1)


def test_early_stopping_waits_patience_epochs_after_the_best():
    es = EarlyStopping(monitor="val/loss", patience=2, min_delta=0.01)
    for epoch, v in enumerate([0.5, 0.4, 0.395, 0.41, 0.38], 1):  # 0.395: not better by more than min_delta
        es.on_epoch_end(epoch, {"val/loss": v})
        if es.stop:
            break
    assert (epoch, es.best_epoch, es.best) == (4, 2, 0.4)
    assert "val/loss has not improved on 0.4000 (epoch 2) for 2 epochs" in es.reason


def test_logged_lr_follows_the_cosine_formula():
    cfg = composed([*SMALL, "epochs=4", "lr=0.05", "lr_scheduler=cosine", "lr_scheduler.min_lr=0.005"])
    t = MemoryTracker()
    run(cfg, tracker=t, log=quiet)
    want = [0.005 + 0.045 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert [s for s, _ in t.metrics["lr"]] == [1, 2, 3, 4]
    assert [v for _, v in t.metrics["lr"]] == pytest.approx(want, rel=1e-12)


def test_early_stopping_stops_at_the_expected_epoch(tmp_path):
    # lr so small that val/acc cannot move: epoch 1 is the best, so patience 2 ends the run after epoch 3
    cfg = composed([*SMALL, "epochs=10", "lr=1e-12", "callbacks=default", "callbacks.early_stopping.monitor=val/acc",
                    "callbacks.early_stopping.patience=2"])
    t = MemoryTracker()
    res = run(cfg, tracker=t, log=quiet, checkpoint_dir=tmp_path)
    st = res["state"]
    assert st.epoch == 3 and len(t.metrics["val/acc"]) == 3
    assert st.stopped.startswith("early stopping: val/acc has not improved") and "(epoch 1)" in st.stopped
    # the best checkpoint: written once (epoch 1 was the only improvement), logged beside last.npz
    assert [a for a, p in t.artifacts if p == "checkpoints"].count(str(tmp_path / "best.npz")) == 1
    assert checkpoint.load(tmp_path / "best.npz").meta["state"]["epoch"] == 1
    with pytest.raises(ConfigError, match="stopped early after epoch 3.*callbacks=none"):
        run(cfg, log=quiet, exp=prepare(cfg), resume=checkpoint.load(tmp_path / "last.npz"))
    more = composed([*SMALL, "epochs=4", "lr=1e-12", "callbacks=none"])  # without early stopping it goes on
    assert run(more, log=quiet, resume=checkpoint.load(tmp_path / "last.npz"))["state"].epoch == 4


def test_val_monitor_without_a_validation_split_is_a_config_error():
    with pytest.raises(ConfigError, match=r"callbacks.early_stopping.monitor=val/loss needs a validation split"):
        prepare(composed([*SMALL, "data.val_size=0", "callbacks=early_stopping"]))
    with pytest.raises(ConfigError, match=r"callbacks.early_stopping 'early_stopping'.*patience"):
        build_callbacks({"early_stopping": {"type": "early_stopping", "patience": -1}})


RESUMABLE = [*SMALL, "epochs=6", "lr=0.05", "lr_scheduler=cosine", "callbacks=default",
             "callbacks.early_stopping.monitor=val/loss", "callbacks.early_stopping.patience=1",
             "callbacks.early_stopping.min_delta=0.02"]


@pytest.mark.parametrize("stop_at", [450, 600])  # mid-epoch 2 / the end of epoch 2 (300 images per epoch)
def test_resume_with_schedule_and_early_stopping_is_exact(tmp_path, stop_at):
    cfg = composed(RESUMABLE)
    ref = run(cfg, log=quiet)
    assert ref["state"].stopped and ref["state"].epoch < 6  # the crafted run does stop early
    with pytest.raises(StopRequested):
        run(cfg, tracker=StopAt(stop_at), log=quiet, checkpoint_dir=tmp_path)
    resumed = run(cfg, log=quiet, exp=prepare(cfg), resume=checkpoint.load(tmp_path / "last.npz"),
                  checkpoint_dir=tmp_path)
    (m, w), (rm, rw) = final_of(resumed), final_of(ref)
    assert m == rm and resumed["state"].epoch == ref["state"].epoch and resumed["state"].stopped == ref["state"].stopped
    assert [h["lr"] for h in resumed["state"].history] == [h["lr"] for h in ref["state"].history]
    assert all(np.array_equal(w[k], rw[k]) for k in rw)
