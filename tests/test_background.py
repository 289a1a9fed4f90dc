"""The background MLflow logger (cnnexp.tracking.journal / .agent): the training process only
writes a journal; a separate process logs it, ends killed runs KILLED, and can replay a
journal by hand. In-process logging (tracking.background=false) still works."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

import pytest

from cnnexp.tracking import journal
from cnnexp.tracking.agent import events
from tracking_helpers import TINY, all_runs, cli, client, env_for, wait_logged

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")]


def tracking_folder(out):
    (folder,) = journal.journals(out)
    return folder


def test_cli_returns_first_and_the_background_logger_completes_the_run(tmp_path):
    out = tmp_path / "outputs"
    p = cli(TINY, out, wait=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "MLflow: logging in the background" in p.stdout + p.stderr
    folder = tracking_folder(out)
    start = json.loads((folder / journal.JOURNAL).read_text().splitlines()[0])
    assert start["event"] == "start" and start["cfg"]["data"]["name"] == "mnist_sample"
    wait_logged(out)
    state = journal.read_status(folder)
    assert state["state"] == "done"
    c = client(out)
    (run,) = all_runs(c)
    assert run.info.run_id == state["run_id"] and run.info.status == "FINISHED"
    m, tags = run.data.metrics, run.data.tags
    assert m["perf/tracking_seconds"] < m["perf/agent_seconds"]  # the training process paid the small part
    assert tags["cnnexp.job_pid"] != tags["cnnexp.pid"] == str(state["pid"])
    events_logged = [json.loads(line)["event"] for line in (folder / journal.JOURNAL).read_text().splitlines()]
    assert events_logged[-2:] == ["results", "finish"] and "metrics" in events_logged
    assert (folder / "result" / "artifacts" / "plots" / "confusion_matrix.png").is_file()  # drawn by the logger


def test_wait_true_returns_after_the_run_is_logged(tmp_path):
    out = tmp_path / "outputs"
    p = cli([*TINY, "tracking.wait=true", "tracking.log_model=false"], out, wait=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert journal.read_status(tracking_folder(out))["state"] == "done"  # no waiting here
    (run,) = all_runs(client(out))
    assert run.info.status == "FINISHED" and "test/acc" in run.data.metrics


def test_in_process_logging_when_background_is_off(tmp_path):
    out = tmp_path / "outputs"
    p = cli([*TINY, "tracking.background=false", "tracking.log_model=false"], out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert journal.journals(out) == []
    (run,) = all_runs(client(out))
    assert run.info.status == "FINISHED" and run.data.tags["cnnexp.job_pid"] == run.data.tags["cnnexp.pid"]
    assert {"plots", "weights", "model_summary.txt"} <= {a.path for a in client(out).list_artifacts(run.info.run_id)}


def test_a_journal_can_be_logged_again_by_hand(tmp_path):
    """As after a logger that failed (store unreachable, say): replaying the journal makes a
    complete new run; replaying a journal already logged is refused."""
    out = tmp_path / "outputs"
    p = cli([*TINY, "tracking.log_model=false"], out)
    assert p.returncode == 0, p.stderr[-3000:]
    folder = tracking_folder(out)
    agent = [sys.executable, "-m", "cnnexp.tracking.agent"]
    q = subprocess.run([*agent, str(folder)], capture_output=True, text=True, env=env_for(out), timeout=120)
    assert q.returncode == 2 and "already logged as MLflow run" in q.stderr

    (folder / journal.STATUS).write_text(json.dumps({"state": "failed", "error": "store unreachable"}))
    q = subprocess.run([*agent, str(folder)], capture_output=True, text=True, env=env_for(out), timeout=120)
    assert q.returncode == 0, q.stderr[-3000:]
    c = client(out)
    first, again = sorted(all_runs(c), key=lambda r: r.info.start_time)
    assert again.info.status == "FINISHED" and journal.read_status(folder)["run_id"] == again.info.run_id
    for key in ("test/acc", "test/loss", "train/epoch_loss"):
        assert again.data.metrics[key] == first.data.metrics[key]
    assert again.data.params == first.data.params
    hist = lambda r: [(m.step, m.value) for m in c.get_metric_history(r.info.run_id, "train/loss")]  # noqa: E731
    assert hist(again) == hist(first)

    q = subprocess.run([*agent, str(tmp_path)], capture_output=True, text=True, env=env_for(out), timeout=60)
    assert q.returncode == 2 and "journal.jsonl does not exist" in q.stderr


def test_journal_reader_waits_for_whole_lines_until_the_writer_is_gone(tmp_path):
    path = tmp_path / journal.JOURNAL
    path.write_text('{"event": "start"}\n{"event": "par')
    gone = threading.Event()
    seen = []

    def read():
        seen.extend(e["event"] for e in events(path, gone, poll=0.01))

    t = threading.Thread(target=read)
    t.start()
    time.sleep(0.2)
    assert seen == ["start"] and t.is_alive()  # half a line: not yet
    with open(path, "a") as f:
        f.write('ams"}\n{"event": "finish"}\n')
    time.sleep(0.2)
    assert seen == ["start", "params", "finish"] and t.is_alive()  # the writer may still add more
    gone.set()
    t.join(5)
    assert not t.is_alive()


def test_spawned_logger_ends_a_journal_without_finish_killed(tmp_path, monkeypatch):
    """The logger's stdin pipe closes when the training process dies: the run ends KILLED."""
    out = tmp_path / "outputs"
    p = cli([*TINY, "tracking.log_model=false", "tracking.wait=true"], out)
    assert p.returncode == 0, p.stderr[-3000:]
    src = tracking_folder(out)
    folder = tmp_path / "cut" / "tracking"
    folder.mkdir(parents=True)
    lines = (src / journal.JOURNAL).read_text().splitlines()
    (folder / journal.JOURNAL).write_text("\n".join(lines[:-1]) + "\n")  # no finish event
    monkeypatch.setenv("CNNEXP_OUTPUTS", str(out))
    launcher = journal.spawn_agent(folder)
    assert journal.pending(folder)
    launcher.stdin.close()  # as when the training process is SIGKILLed
    assert not journal.wait_for_agents(folder.parent, timeout=120)
    state = journal.read_status(folder)
    assert state["state"] == "done" and state["pid"] == int((folder / journal.PID).read_text()) != launcher.pid
    run = client(out).get_run(state["run_id"])
    assert run.info.status == "KILLED" and "ended without ending the run" in run.data.tags["mlflow.note.content"]
    shutil.rmtree(tmp_path / "cut")


def test_a_store_that_cannot_be_created_fails_before_training_in_one_line(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the store's folder should be")
    p = cli([*TINY, f"tracking.uri=sqlite:///{blocker}/mlflow.db"], tmp_path / "outputs", wait=False)
    assert p.returncode == 4
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cnnexp: error: cannot create the folder of the MLflow store")
    assert str(blocker) in lines[0] and "sqlite:///" in lines[0] and "Traceback" not in p.stderr
    assert "--- Epoch 1 ---" not in p.stdout and journal.journals(tmp_path) == []
