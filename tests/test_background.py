"""Journals and their sync with real processes: the training process only writes its journal;
a follower (or the command itself with tracking.wait=true) makes it an MLflow run. Runs sharing
a run folder never share a journal; killed writers and killed followers lose no run; the
replay command logs any journal whose writer is gone, idempotently."""

from __future__ import annotations

import re
import signal
import subprocess

import pytest

from cnnexp.tracking import journal
from helpers.cli import TINY, cli, start, wait_logged
from helpers.tracking import all_runs, assert_complete, client, follower_of, journals, replay

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")]
RUN_ID = re.compile(r"MLflow run ([0-9a-f]{32})")


def test_cli_returns_first_and_the_follower_completes_the_run(tmp_path):
    out = tmp_path / "outputs"
    p = cli(TINY, out, wait=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "logged in the background" in p.stdout + p.stderr
    (folder,) = journals(out)
    start = journal.first_event(folder)
    assert start["event"] == "start" and start["cfg"]["data"]["name"] == "mnist_sample"
    assert start["pid_start"] == journal.process_start(start["pid"]) or not journal.alive(start)
    wait_logged(out)
    state = journal.read_json(folder / journal.STATE)
    c = client(out)
    (run,) = all_runs(c)
    assert state["done"] and run.info.run_id == state["run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["cnnexp.job_pid"] != run.data.tags["cnnexp.sync_pid"]  # a follower logged it
    assert run.inputs.dataset_inputs[0].dataset.name == "mnist_sample"  # the Dataset column
    assert_complete(c, run, folder)
    assert not journal.pending(out)  # nothing left to catch up


def test_wait_true_logs_before_returning_and_says_where(tmp_path):
    out = tmp_path / "outputs"
    p = cli([*TINY, "tracking.wait=true", "tracking.log_model=false"], out, wait=False)
    assert p.returncode == 0, p.stderr[-3000:]
    run_id = RUN_ID.search(p.stdout + p.stderr).group(1)
    assert f"mlflow ui --backend-store-uri sqlite:///{out}/mlflow.db" in p.stdout + p.stderr
    (run,) = all_runs(client(out))
    assert run.info.run_id == run_id and run.info.status == "FINISHED" and "test/acc" in run.data.metrics
    assert not (journals(out)[0] / "follower.log").exists()  # no background process


def test_replay_is_idempotent_and_can_log_to_another_store(tmp_path):
    out = tmp_path / "outputs"
    p = cli([*TINY, "tracking.log_model=false", "tracking.wait=true"], out)
    assert p.returncode == 0, p.stderr[-3000:]
    (folder,) = journals(out)
    (first,) = all_runs(client(out))
    q = replay(out, folder)  # done already: the same run
    assert q.returncode == 0 and first.info.run_id in q.stdout, q.stderr
    (folder / journal.STATE).unlink()  # the record is lost: the run is found by its run key
    q = replay(out, out)  # the outputs folder: every journal under it
    assert q.returncode == 0 and first.info.run_id in q.stdout, q.stderr
    assert len(all_runs(client(out))) == 1
    other = tmp_path / "other.db"
    q = replay(out, folder, "--uri", f"sqlite:///{other}")
    assert q.returncode == 0, q.stderr
    from mlflow.tracking import MlflowClient

    c2 = MlflowClient(f"sqlite:///{other}")
    (again,) = all_runs(c2)
    assert again.data.params == first.data.params and again.info.status == "FINISHED"
    assert_complete(c2, again, folder)
    q = replay(out, tmp_path / "nothing")
    assert q.returncode == 2 and "no journal under" in q.stderr


@pytest.mark.parametrize("together", [False, True], ids=["one_after_the_other", "at_the_same_time"])
def test_runs_sharing_a_run_folder_each_get_their_own_run(tmp_path, together):
    out, shared = tmp_path / "outputs", tmp_path / "fixed"
    args = lambda lr: [*TINY, f"lr={lr}", f"hydra.run.dir={shared}", "tracking.log_model=false"]  # noqa: E731
    if together:
        procs = [start(args(lr), out, stderr=subprocess.STDOUT) for lr in (0.001, 0.002)]
        assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stdout.read()[-2000:] for p in procs]
        wait_logged(out)
    else:
        for lr in (0.001, 0.002):
            assert cli(args(lr), out).returncode == 0
    c = client(out)
    runs = all_runs(c)
    assert sorted(r.data.params["lr"] for r in runs) == ["0.001", "0.002"]
    assert all(r.info.status == "FINISHED" and r.data.tags["hydra.output_dir"] == str(shared) for r in runs)
    for folder in journals(out):
        (run,) = [r for r in runs if r.data.tags["cnnexp.run_key"] == folder.name]
        assert_complete(c, run, folder)


def test_a_run_folder_reused_by_a_resume_gets_a_second_run(tmp_path):
    out, shared = tmp_path / "outputs", tmp_path / "fixed"
    base = [*TINY, f"hydra.run.dir={shared}", "tracking.log_model=false"]
    assert cli(base, out).returncode == 0
    p = cli([*base, "epochs=2", f"resume={shared}/checkpoints/last.npz"], out)
    assert p.returncode == 0 and "Resuming from" in p.stdout, p.stderr[-2000:]
    c = client(out)
    first, second = sorted(all_runs(c), key=lambda r: r.info.start_time)
    assert first.data.params["epochs"] == "1" and second.data.params["epochs"] == "2"
    assert "resumed_from" in second.data.tags and "resumed_from" not in first.data.tags
    assert [m.step for m in c.get_metric_history(second.info.run_id, "test/acc")] == [2]
    for run, folder in zip((first, second), sorted(journals(out), key=lambda f: journal.first_event(f)["time"])):
        assert_complete(c, run, folder)


LONG = ["data=mnist_sample", "data.train_size=4000", "epochs=30", "log_every=500", "tracking.log_model=false"]


def start_long(out, *extra):
    p = start([*LONG, *extra], out, stderr=subprocess.STDOUT)
    for line in p.stdout:
        if line.startswith("--- Epoch 2 ---"):  # epoch 1's checkpoint and metrics are journaled
            return p
    raise AssertionError(f"the run ended early ({p.wait()})")


@pytest.mark.parametrize("victim", ["training", "follower", "both"])
def test_sigkill_loses_no_run(tmp_path, victim):
    """SIGKILL the training process, its follower or both: the run ends KILLED with its
    checkpoint and every metric point journaled, by the follower, or by the next run."""
    out = tmp_path / "outputs"
    p = start_long(out)
    (folder,) = journals(out)
    fpid = follower_of(folder)
    if victim in ("follower", "both"):
        subprocess.run(["kill", "-KILL", str(fpid)], check=True)
    if victim in ("training", "both"):
        p.kill()
    else:
        p.send_signal(signal.SIGINT)  # the follower is dead: the run itself ends normally
    p.wait(timeout=60)
    wait_logged(out)
    if victim != "training":  # nobody synced the end: the next run catches up
        assert not journal.read_json(folder / journal.STATE).get("done")
        q = cli([*TINY, "tracking.log_model=false"], out)
        assert q.returncode == 0, q.stderr[-2000:]
    c = client(out)
    run = next(r for r in all_runs(c) if r.data.tags["cnnexp.run_key"] == folder.name)
    assert run.info.status == "KILLED"
    if victim != "follower":
        assert "ended without ending the run" in run.data.tags["mlflow.note.content"]
    assert "checkpoints/last.npz" in [a.path for a in c.list_artifacts(run.info.run_id, "checkpoints")]
    assert_complete(c, run, folder)
    assert len(all_runs(c)) == (1 if victim == "training" else 2)
