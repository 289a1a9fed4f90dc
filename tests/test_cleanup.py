"""A killed run or sweep leaves nothing behind after the next start: checkpoint temp files of
dead writers are removed, orphaned sweep workers are stopped, and only processes proven ours."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnexp import cleanup
from helpers.cli import env_for

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_checkpoint_temp_files_are_removed_live_ones_kept(tmp_path):
    ck = tmp_path / "runs" / "2026-01-01" / "00-00-00.000000" / "checkpoints"
    ck.mkdir(parents=True)
    stale = ck / f".last.npz.{dead_pid()}.tmp"
    live = ck / f".last.npz.{os.getpid()}.tmp"
    other = ck / "last.npz"
    for p in (stale, live, other):
        p.write_bytes(b"x")
    swept = tmp_path / "multirun" / "2026-01-01" / "00-00-00.000000" / "3" / "checkpoints"
    swept.mkdir(parents=True)
    (swept / f".last.npz.{dead_pid()}.tmp").write_bytes(b"x")
    removed = cleanup.remove_stale_tmp(tmp_path)
    assert len(removed) == 2 and not stale.exists() and live.exists() and other.exists()
    assert not list(swept.iterdir())


def test_interrupted_checkpoint_write_leaves_no_temp_file(tmp_path, monkeypatch):
    import numpy as np

    from cnnexp import checkpoint
    from cnnexp.app import prepare
    from cnnexp.train import TrainState
    from helpers.experiments import composed

    exp = prepare(composed())

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path / "last.npz", exp.model, exp.optimizer, TrainState())
    assert list(tmp_path.iterdir()) == []


def record(root: Path, worker: subprocess.Popen, main_pid: int, main_start: str | None, start=None) -> Path:
    path = cleanup.workers_dir(root) / f"{worker.pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": worker.pid, "start": start or cleanup.start_time(worker.pid),
                                "main_pid": main_pid, "main_start": main_start}))
    return path


def test_orphaned_worker_is_stopped(tmp_path):
    main = subprocess.Popen(SLEEPER)
    worker = subprocess.Popen(SLEEPER)
    try:
        rec = record(tmp_path, worker, main.pid, cleanup.start_time(main.pid))
        assert cleanup.reap_workers(tmp_path) == []  # its sweep is alive: left alone
        assert worker.poll() is None and rec.exists()
        main.kill()
        main.wait()
        assert cleanup.reap_workers(tmp_path) == [worker.pid]
        assert worker.wait(timeout=10) is not None and not rec.exists()
    finally:
        for p in (main, worker):
            p.kill()
            p.wait()


def test_a_process_that_only_reuses_the_pid_is_not_touched(tmp_path):
    worker = subprocess.Popen(SLEEPER)
    try:
        rec = record(tmp_path, worker, dead_pid(), "1", start="1")  # recorded start time differs
        assert cleanup.reap_workers(tmp_path) == []
        assert worker.poll() is None and not rec.exists()
    finally:
        worker.kill()
        worker.wait()


def test_worker_registers_only_in_a_child_of_the_main_process(tmp_path, monkeypatch):
    monkeypatch.setenv(cleanup.MAIN_ENV, f"{os.getpid()}:{cleanup.start_time(os.getpid())}")
    assert cleanup.register_worker(tmp_path) is None  # the main process itself
    monkeypatch.setenv(cleanup.MAIN_ENV, f"1:{cleanup.start_time(1)}")
    path = cleanup.register_worker(tmp_path)
    assert json.loads(path.read_text())["pid"] == os.getpid()


def alive(pid: int) -> bool:
    return cleanup.start_time(pid) is not None


@pytest.mark.slow
def test_killed_parallel_sweep_leaves_no_workers_after_the_next_start(tmp_path):
    env = env_for(tmp_path / "outputs")
    main = subprocess.Popen([sys.executable, "-m", "cnnexp", "-m", "hydra/launcher=parallel", "seed=1,2",
                             "data=mnist_sample", "epochs=100", "tracking.enabled=false"],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers_dir = cleanup.workers_dir(tmp_path / "outputs")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(workers_dir.glob("*.json"))) < 2:
        time.sleep(0.5)
    records = [json.loads(p.read_text()) for p in workers_dir.glob("*.json")]
    main.send_signal(signal.SIGKILL)
    main.wait()
    assert len(records) == 2, "the sweep's workers did not start"
    pids = [r["pid"] for r in records]
    time.sleep(2)
    assert any(alive(p) for p in pids), "the workers ended by themselves: nothing to clean up"
    p = subprocess.run([sys.executable, "-m", "cnnexp", "--cfg", "job"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert not any(alive(p) for p in pids)
    assert not list(workers_dir.glob("*.json"))
