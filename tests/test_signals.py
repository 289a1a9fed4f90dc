"""Real signals on real runs: SIGINT/SIGTERM checkpoint and end the MLflow run KILLED;
SIGKILL leaves the last epoch checkpoint, and the next start marks the dead run KILLED.
Every interrupted run, resumed, ends with exactly the weights and metrics of an
uninterrupted run with the same seed."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnexp import checkpoint
from tracking_helpers import all_runs, cli, client, env_for, wait_logged

pytestmark = pytest.mark.slow
ARGS = ["data=mnist_sample", "data.train_size=3000", "data.test_size=500", "epochs=3", "log_every=500", "seed=7"]


def start(out: Path, args=()):
    return subprocess.Popen([sys.executable, "-u", "-m", "cnnexp", *ARGS, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env_for(out), cwd=out.parent)


def wait_for(p, pattern: str, timeout=120) -> list[str]:
    seen, t0 = [], time.monotonic()
    while time.monotonic() - t0 < timeout:
        line = p.stdout.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return seen
    p.kill()
    raise AssertionError(f"never saw {pattern!r}; got: {''.join(seen)[-2000:]}")


def final(out_text: str):
    loss = re.search(r"^Test Loss: (\S+)$", out_text, re.M).group(1)
    acc = re.search(r"^Test Accuracy: (\S+)$", out_text, re.M).group(1)
    return loss, acc


def weights(ckpt_path) -> dict:
    return checkpoint.load(ckpt_path).weights


def last_ckpt(out: Path) -> Path:
    paths = sorted(out.glob("runs/*/*/checkpoints/last.npz"), key=lambda p: p.stat().st_mtime)
    return paths[-1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "outputs"
    p = cli(ARGS, out)
    assert p.returncode == 0, p.stderr
    return final(p.stdout), weights(last_ckpt(out))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_checkpoints_ends_killed_and_resumes_exactly(tmp_path, reference, sig):
    out = tmp_path / "outputs"
    p = start(out)
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
    (ref_final, ref_w) = reference
    assert final(q.stdout) == ref_final
    w = weights(last_ckpt(out))
    assert all(np.array_equal(w[k], ref_w[k]) for k in ref_w)


def test_sigkill_then_resume_from_the_last_epoch_checkpoint(tmp_path, reference):
    out = tmp_path / "outputs"
    p = start(out)
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
    (ref_final, ref_w) = reference
    assert final(q.stdout) == ref_final
    w = weights(last_ckpt(out))
    assert all(np.array_equal(w[k], ref_w[k]) for k in ref_w)
