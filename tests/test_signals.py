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
