"""Progress output by verbose level: the live bar only on a terminal (redrawn in place with
\\r), plain lines elsewhere, and no control characters in the run's log file."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import time

import pytest

from cnnexp.progress import Progress, resolve
from helpers.cli import env_for


class Tty(io.StringIO):
    def isatty(self):
        return True


def drive(p: Progress, n=1000, batch=100):
    p.epoch_start(0, 2, n)
    for done in range(batch, n + 1, batch):
        p.update(done, 0.5 * done, done // 2, done, final=done == n)
        p.step_line(done // batch, 1, 0.5, 0.5)
    p.epoch_end("Epoch 1/2: summary")


def test_levels_resolve_from_the_stream():
    assert resolve(None, Tty()) == 2 and resolve(None, io.StringIO()) == 1
    assert resolve(0, Tty()) == 0 and resolve(3, io.StringIO()) == 3


@pytest.mark.parametrize("verbose,lines", [(0, []), (1, ["Epoch 1/2: summary"]),
                                           (3, ["--- Epoch 1 ---"] + [f"[Step {i}] Past 1 steps: Average Loss "
                                                                      f"0.500 | Accuracy: 50%" for i in range(1, 11)]
                                            + ["Epoch 1/2: summary"])])
def test_lines_by_level_and_no_bar_off_a_terminal(verbose, lines):
    out, logged = io.StringIO(), []
    drive(Progress(verbose, logged.append, stream=out))
    assert logged == lines
    assert out.getvalue() == ""  # not a terminal: the bar never draws


def test_bar_redraws_in_place_and_clears_before_lines(monkeypatch):
    monkeypatch.setattr("cnnexp.progress.REDRAW_SECONDS", 0.0)
    # a known width: the bar shrinks to fit, and at 80 columns a fast machine's rate (tens of
    # millions of img/s in this synthetic drive) leaves it no room
    monkeypatch.setenv("COLUMNS", "160")
    tty, logged = Tty(), []
    p = Progress(2, lambda s: logged.append((s, tty.getvalue())), stream=tty)
    drive(p)
    text = logged[0][1]
    frames = [f for f in text.split("\r") if f.strip()]
    assert len(frames) == 10 and all(f.startswith("Epoch 1/2 [") for f in frames)
    assert "100/1,000" in frames[0] and "1,000/1,000" in frames[-1] and "ETA" in frames[0] and " in " in frames[-1]
    assert re.search(r"img/s loss 0\.500 acc 50\.0%", frames[-1])
    assert text.endswith("\r") and text.split("\r")[-2].strip() == ""  # cleared before the summary line
    assert logged[0][0] == "Epoch 1/2: summary"


def run_in_pty(args, cwd, env, timeout=240) -> str:
    """Run ``python -m cnnexp args`` with a pseudo-terminal as stdout/stderr; return what it wrote."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "cnnexp", *args], stdin=slave, stdout=slave, stderr=slave,
                         cwd=cwd, env=env, close_fds=True)
    os.close(slave)
    chunks, t0 = [], time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    p.wait(timeout=30)
    os.close(master)
    assert p.returncode == 0, b"".join(chunks).decode(errors="replace")[-2000:]
    return b"".join(chunks).decode()


@pytest.mark.slow
def test_terminal_gets_a_live_bar_and_the_log_file_stays_plain(tmp_path):
    run_dir = tmp_path / "run"
    out = run_in_pty(["experiment=keras_mnist", "data=mnist_sample", "data.train_size=600", "data.val_size=100",
                      "data.test_size=100", "epochs=2", "model.layers.0.filters=4", "model.layers.2.filters=4",
                      "tracking.enabled=false", f"hydra.run.dir={run_dir}"], tmp_path, env_for(tmp_path / "outputs"))
    frames = re.findall(r"\r(Epoch 1/2 \[[=.]+\][^\r\n]*)", out)
    assert len(frames) >= 2, out[-2000:]  # drawn, then redrawn in place (at least the first and the last state)
    assert "600/600" in frames[-1] and "img/s" in frames[0]
    assert re.search(r"\rEpoch 1/2: train loss .* img/s\)\r?\n", out)  # the summary line, over the cleared bar
    log = (run_dir / "cnnexp.log").read_text()
    assert "Epoch 2/2: train loss" in log
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", log), "control characters in cnnexp.log"
    assert "[====" not in log and "ETA" not in log
