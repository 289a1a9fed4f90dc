"""Split training batches in worker processes (cnnexp/engine/procs.py): the same numbers as
threads, dropout included; a worker's error or death is a clear error and the next step
forks afresh; workers end with the engine and die with their parent. No timing here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cnnexp.engine import procs
from cnnexp.errors import ConfigError
from cnnexp.layers.base import Layer
from cnnexp.model import build_model
from cnnexp.registry import LAYERS

pytestmark = pytest.mark.skipif(not procs.available(), reason="worker processes need fork (Linux)")

SPEC = {"input_shape": [10, 10, 1], "layers": [
    {"type": "conv2d", "filters": 4, "kernel_size": 3}, {"type": "relu"}, {"type": "maxpool2d"},
    {"type": "dropout", "rate": 0.3}, {"type": "flatten"}, {"type": "dense", "units": 6}, {"type": "tanh"},
    {"type": "dense", "units": 3}, {"type": "softmax"}]}


def model(monkeypatch, mode, spec=SPEC, threads=3):
    monkeypatch.setenv("CNNEXP_PARALLEL", mode)
    m = build_model(spec, seed=0, dtype="float64", scale=1 / 255, shift=-0.5, threads=threads)
    m.engine.split_min_batch = 2
    return m


def data(n=11, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 10, 10), dtype=np.uint8), rng.integers(0, 3, n)


def steps(m, x, y, k=3):
    out = []
    with m.compute():
        for _ in range(k):
            losses, probs, loss_sum, correct = m.engine.train(x, y, raw=True)
            out.append((losses.copy(), probs.copy(), loss_sum, correct, m.grads.flat.copy()))
            m.params.flat -= 0.1 * m.grads.flat  # the workers read the updated weights
    return out


def test_processes_give_the_numbers_threads_give(monkeypatch):
    x, y = data()
    by_threads = steps(model(monkeypatch, "threads"), x, y)
    m = model(monkeypatch, "processes")
    assert m.engine.processes and m.engine.parts(len(x)) == 3
    by_procs = steps(m, x, y)
    assert len(m.engine.procs.procs) == 2  # parts 1 and 2; part 0 runs in this process
    for a, b in zip(by_procs, by_threads):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)  # the same parts, summed in the same order
    m.engine.procs.stop()


class FailsOnTwoRows(Layer):
    """Raises on a part of exactly two images: part 2 of a batch of 8 split in three."""

    def forward(self, x, training=False):
        if len(x) == 2:
            raise ValueError("two rows are not welcome")
        return x

    def backward(self, dy):
        return dy


def test_inference_on_processes_gives_the_numbers_threads_give(monkeypatch):
    x, y = data(23)
    out = {}
    for mode in ("threads", "processes"):
        m = model(monkeypatch, mode)
        m.engine.infer_chunk = 4  # six chunks over three parts
        out[mode] = (m.predict_proba(x), m.evaluate(x, y))
        if mode == "processes":
            assert len(m.engine.procs.procs) == 2
            arena = m.engine.procs.procs[0].arena
            assert arena.train_rows == 0  # no training buffers for inference
            assert arena.rows == 8 and len(arena.x) == 8 * 10 * 10  # chunks 2-3 and 4-5: 8 uint8 images
            m.engine.procs.stop()
    np.testing.assert_array_equal(out["processes"][0], out["threads"][0])
    assert out["processes"][1] == out["threads"][1]


def test_a_worker_error_names_it_and_the_next_step_forks_afresh(monkeypatch):
    name = "fails_on_two_rows_test"
    LAYERS.register(name)(FailsOnTwoRows)
    try:
        spec = {**SPEC, "layers": [SPEC["layers"][0], {"type": name}] + SPEC["layers"][1:]}
        m = model(monkeypatch, "processes", spec)
        x, y = data(8)
        with m.compute():
            with pytest.raises(RuntimeError, match="engine worker process failed: ValueError: two rows are not welcome"):
                m.engine.train(x, y, raw=True)
            assert m.engine.procs.procs == []  # stopped; forked afresh by the next split step
            m.engine.train(*data(9), raw=True)
            assert len(m.engine.procs.procs) == 2
        m.engine.procs.stop()
    finally:
        LAYERS.unregister(name)


def test_a_killed_worker_is_replaced_and_the_step_made_again(monkeypatch):
    x, y = data()
    undisturbed = model(monkeypatch, "processes")
    with undisturbed.compute():
        undisturbed.engine.train(x, y, raw=True)
        expected = undisturbed.engine.train(x, y, raw=True)
    m = model(monkeypatch, "processes")
    with m.compute():
        m.engine.train(x, y, raw=True)
        victim = m.engine.procs.procs[1].pid
        os.kill(victim, signal.SIGKILL)
        again = m.engine.train(x, y, raw=True)
        assert victim not in [w.pid for w in m.engine.procs.procs]
    np.testing.assert_array_equal(again[0], expected[0])
    np.testing.assert_array_equal(m.grads.flat, undisturbed.grads.flat)
    for e in (m.engine, undisturbed.engine):
        e.procs.stop()


def test_a_worker_dying_twice_in_one_step_is_a_clear_error(monkeypatch):
    m = model(monkeypatch, "processes")
    x, y = data()
    send = procs.Worker.send

    def send_then_die(self, *a, **k):
        send(self, *a, **k)
        os.kill(self.pid, signal.SIGKILL)
    monkeypatch.setattr(procs.Worker, "send", send_then_die)
    with m.compute(), pytest.raises(procs.WorkerExited, match=r"engine worker process \d+ exited"):
        m.engine.train(x, y, raw=True)
    monkeypatch.setattr(procs.Worker, "send", send)
    m.engine.train(x, y, raw=True)  # forked afresh
    m.engine.procs.stop()


def test_workers_leave_stop_signals_to_the_parent(monkeypatch):
    """A signal to the whole process group (scancel, Ctrl-C) reaches the workers too; the
    parent stops the run at the next step, so a worker must not die mid-step."""
    m = model(monkeypatch, "processes")
    x, y = data()
    with m.compute():
        m.engine.train(x, y, raw=True)
        pids = [w.pid for w in m.engine.procs.procs]
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            for p in pids:
                os.kill(p, sig)
        time.sleep(0.2)
        m.engine.train(x, y, raw=True)
        assert [w.pid for w in m.engine.procs.procs] == pids and all(alive(p) for p in pids)
    m.engine.procs.stop()


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = open(f"/proc/{pid}/stat").read() if os.path.exists(f"/proc/{pid}/stat") else ""
    return bool(stat) and stat.split(")")[-1].split()[0] != "Z"


def test_workers_stop_with_the_engine_and_die_with_their_parent(monkeypatch):
    m = model(monkeypatch, "processes")
    x, y = data()
    m.engine.train(x, y, raw=True)
    pids = [w.pid for w in m.engine.procs.procs]
    assert set(pids) <= set(children(os.getpid())) and all(alive(p) for p in pids)
    m.engine.procs.stop()
    assert not any(alive(p) for p in pids)

    code = textwrap.dedent(f"""
        import os, sys, time
        import numpy as np
        from cnnexp.model import build_model
        m = build_model({SPEC!r}, seed=0, threads=3)
        m.engine.split_min_batch = 2
        rng = np.random.default_rng(0)
        m.engine.train(rng.integers(0, 256, (9, 10, 10), dtype=np.uint8), rng.integers(0, 3, 9), raw=True)
        print(" ".join(str(w.pid) for w in m.engine.procs.procs), flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "CNNEXP_PARALLEL": "processes"})
    try:
        pids = [int(s) for s in p.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(q) for q in pids)
        p.kill()  # SIGKILL: no atexit, no finalizer in the parent
        p.wait()
        deadline = time.monotonic() + 10
        while any(alive(q) for q in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(q) for q in pids)
    finally:
        p.kill()
        p.wait()


def test_a_bad_parallel_mode_names_the_value_and_the_valid_ones(monkeypatch):
    monkeypatch.setenv("CNNEXP_PARALLEL", "fibers")
    with pytest.raises(ConfigError, match=r"CNNEXP_PARALLEL='fibers' is invalid: use one of processes, threads"):
        build_model(SPEC, threads=2)


def test_close_stops_the_workers_and_the_model_stays_usable(monkeypatch):
    m = model(monkeypatch, "processes")
    x, y = data()
    m.engine.train(x, y, raw=True)
    pids = [w.pid for w in m.engine.procs.procs]
    m.close()
    assert m.engine.procs.procs == [] and not any(alive(p) for p in pids)
    m.engine.train(x, y, raw=True)  # forks again
    assert len(m.engine.procs.procs) == 2
    m.close()
    build_model(SPEC, engine="reference").close()  # nothing to stop
