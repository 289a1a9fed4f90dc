"""Real signals on real runs: SIGINT/SIGTERM checkpoint and end the MLflow run KILLED;
SIGKILL leaves the last epoch checkpoint, and the next start marks the dead run KILLED.
Every interrupted run, resumed, ends with exactly the weights and metrics of an
uninterrupted run with the same seed."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from cnnexp import checkpoint
from helpers.cli import RESUMABLE as ARGS
from helpers.cli import cli, final, start, wait_for, wait_logged
from helpers.experiments import last_ckpt, weights
from helpers.tracking import all_runs, client

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_checkpoints_ends_killed_and_resumes_exactly(tmp_path, uninterrupted, sig):
    out = tmp_path / "outputs"
    p = start(ARGS, out)
    wait_for(p, r"^\[Step 1000\]")  # inside epoch 1 (of 3,000 images)
    t_sig = time.monotonic()
    p.send_signal(sig)
    rest, err = p.communicate(timeout=60)
    assert time.monotonic() - t_sig < 15, "did not stop promptly"
    assert p.returncode == 130, err
    assert "Traceback" not in err
    ck_path = last_ckpt(out)
    st = checkpoint.load(ck_path).meta["state"]
    assert st["epoch"] < 3
    wait_logged(out)
    runs = all_runs(client(out))
    assert [r.info.status for r in runs] == ["KILLED"]
    assert "checkpoints/last.npz" in [f.path for f in client(out).list_artifacts(runs[0].info.run_id, "checkpoints")]

    q = cli([*ARGS, f"resume={ck_path}"], out)
    assert q.returncode == 0, q.stderr
    assert "Resuming from" in q.stdout
    (ref_final, ref_w) = uninterrupted
    assert final(q.stdout) == ref_final
    w = weights(last_ckpt(out))
    assert all(np.array_equal(w[k], ref_w[k]) for k in ref_w)


def test_sigkill_then_resume_from_the_last_epoch_checkpoint(tmp_path, uninterrupted):
    out = tmp_path / "outputs"
    p = start(ARGS, out)
    wait_for(p, r"^--- Epoch 3 ---")  # epoch 2's checkpoint is on disk by now
    p.kill()  # SIGKILL: no handler runs
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGKILL
    wait_logged(out)  # the background logger sees the pipe from the killed process close
    c = client(out)
    dead = all_runs(c)[0]
    assert dead.info.status == "KILLED" and "ended without ending the run" in dead.data.tags["mlflow.note.content"]
    ck_path = last_ckpt(out)
    assert checkpoint.load(ck_path).meta["state"]["epoch"] == 2

    q = cli([*ARGS, f"resume={dead.info.run_id}"], out)  # by MLflow run id this time
    assert q.returncode == 0, q.stderr
    (ref_final, ref_w) = uninterrupted
    assert final(q.stdout) == ref_final
    w = weights(last_ckpt(out))
    assert all(np.array_equal(w[k], ref_w[k]) for k in ref_w)


def ends_killed_and_resumes_as(ref, args, out, ck_path):
    """The stopped run is KILLED in MLflow, and resumed from ``ck_path`` it ends with the
    final metrics and weights of ``ref``, the uninterrupted run (logged under ``ref/outputs``
    beside ``out``'s parent)."""
    wait_logged(out)
    assert [r.info.status for r in all_runs(client(out))] == ["KILLED"]
    q = cli([*args, f"resume={ck_path}"], out)
    assert q.returncode == 0, q.stderr
    assert final(q.stdout) == final(ref.stdout)
    w, w_ref = weights(last_ckpt(out)), weights(last_ckpt(out.parent / "ref" / "outputs"))
    assert all(np.array_equal(w[k], w_ref[k]) for k in w_ref)


def test_sigterm_to_the_process_group_mid_split_batch_training(tmp_path):
    """Batches of 32 split onto the engine's worker processes; SIGTERM to the whole process
    group (as scancel or a terminal's Ctrl-C send it) reaches the workers too: they finish the
    step, the run checkpoints and ends KILLED, no worker is left, and the resumed run ends with
    the metrics and weights of an uninterrupted one."""
    import os
    import subprocess

    args = [*ARGS[:3], "epochs=12", "batch_size=32", "log_every=40", "seed=7"]  # 32 images: 2 parts
    ref = cli(args, tmp_path / "ref" / "outputs")
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "outputs"
    p = start(args, out, new_session=True)
    wait_for(p, r"^--- Epoch 3 ---")
    os.killpg(p.pid, signal.SIGTERM)
    rest, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err, err
    left = subprocess.run(["ps", "-o", "args=", "-s", str(p.pid)], capture_output=True, text=True).stdout
    assert "batch_size=32" not in left, left  # no engine worker (a fork: the run's command line) outlives the run
    ck_path = last_ckpt(out)
    assert 2 <= checkpoint.load(ck_path).meta["state"]["epoch"] < 12
    ends_killed_and_resumes_as(ref, args, out, ck_path)


def test_sigint_mid_step_with_the_helper_thread_resumes_exactly(tmp_path):
    """keras_mnist at batch 1 on two threads: its weight gradients and half of each update run
    on the engine's helper thread. Ctrl-C mid-run: the step in flight completes (the helper's
    work joined), the run checkpoints and ends KILLED, and the resumed run ends with the
    metrics and weights of an uninterrupted one."""
    args = ["model=keras_mnist", "data=mnist_sample", "data.train_size=600", "data.test_size=100", "epochs=3",
            "batch_size=1", "log_every=100", "seed=7", "threads=2"]
    ref = cli(args, tmp_path / "ref" / "outputs")
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "outputs"
    p = start(args, out)
    wait_for(p, r"^\[Step 300\]")  # inside epoch 1
    p.send_signal(signal.SIGINT)
    rest, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err, err
    ck_path = last_ckpt(out)
    assert checkpoint.load(ck_path).meta["state"]["epoch"] < 3
    ends_killed_and_resumes_as(ref, args, out, ck_path)
