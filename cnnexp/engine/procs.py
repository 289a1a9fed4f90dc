"""Worker processes: the parts of a split training batch beyond the first run in forked
copies of the engine, not in Python threads, so no part waits for the GIL between numpy calls.

The model's parameters live in shared memory (``shared_zeros``) and are only ever updated in
place, so a worker always reads the current weights. Each worker owns an arena (shared memory
made before its fork) holding its gradients, its part's inputs, labels and dropout masks, and
its losses and probabilities, and a few control words. For a step the parent copies the part
into the arena, writes its shape and a new request number into the control words and one
byte into a pipe; the worker (polling the request number briefly, else asleep on the pipe)
runs the same ``_train_part`` a thread would, so results are the same numbers, and answers
the same way with its loss sum and correct count, or with the error it raised. A worker exits when its pipe closes (the parent ended or died) or
the parent asks; it ignores SIGINT, SIGTERM and SIGHUP (the parent decides how a run stops)
and dies with the parent.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import signal
import threading
import time
import warnings
import weakref

import numpy as np


class WorkerExited(RuntimeError):
    """A worker process died (killed from outside): the engine forks afresh and retries once."""


def shared_zeros(size: int, dtype) -> np.ndarray:
    """A 1-D array of zeros (a fresh anonymous mapping is zero-filled) in shared memory, seen by
    processes forked later."""
    dtype = np.dtype(dtype)
    buf = mmap.mmap(-1, max(1, size * dtype.itemsize))
    return np.frombuffer(buf, dtype, count=size)


def available() -> bool:
    """Worker processes need ``fork`` (Linux)."""
    return hasattr(os, "fork") and os.name == "posix" and os.uname().sysname == "Linux"


#: how long a waiting side polls the shared flag before it sleeps on its pipe (a pipe wake-up
#: costs tens of microseconds on a VM; a small batch's part takes a few hundred)
SPIN_SECONDS = 0.002
#: polling shared memory relies on x86's store order; elsewhere every wait is on the pipe
SPIN = platform.machine().lower() in ("x86_64", "amd64")
#: the control words of an arena: request number, answer number, images, denominator, raw,
#: status (0 ok, 1 error), input dtype index, input rank, kind (0 train, 1 infer; an infer
#: request's DENOM is its chunk size), input shape (from CTL_SHAPE on)
REQ, ANS, N, DENOM, RAW, STATUS, DTYPE, NDIM, KIND, CTL_SHAPE = range(10)
DTYPES = ("|u1", "<f4", "<f8", "<i8", "<i4", "<u2", "<i2", "<f2")
ERR_BYTES = 2048


class Arena:
    """A worker's shared buffers, sized for parts of up to ``rows`` images (``x_bytes`` of
    input), of which up to ``train_rows`` in training (labels, dropout masks, losses)."""

    def __init__(self, engine, rows: int, x_bytes: int, train_rows: int):
        m = engine.model
        self.rows, self.x_bytes, self.train_rows = rows, x_bytes, train_rows
        self.grads = m.new_grads(shared_zeros)
        self.ctl = shared_zeros(16, np.int64)
        self.sums = shared_zeros(2, np.float64)  # loss sum, correct count
        self.err = shared_zeros(ERR_BYTES, np.uint8)
        self.x = shared_zeros(x_bytes, np.uint8)
        self.labels = shared_zeros(train_rows, np.intp)
        self.masks = {i: shared_zeros(train_rows * int(np.prod(engine.groups[i][1][0].input_shape)), m.dtype)
                      for i in engine.dropouts}
        k = int(np.prod(engine.out_shape))
        self.losses, self.probs = shared_zeros(train_rows, m.dtype), shared_zeros(rows * k, m.dtype)

    def size(self) -> tuple[int, int, int]:
        return self.rows, self.x_bytes, self.train_rows


def _wait(ctl, i: int, done, fd: int) -> bytes:
    """Wait until ``done(ctl[i])`` (polling for up to SPIN_SECONDS), then take the byte the
    other side wrote to ``fd`` with it (b"" when that side is gone)."""
    if SPIN:
        end = time.perf_counter() + SPIN_SECONDS
        while not done(ctl[i]) and time.perf_counter() < end:
            pass
    return os.read(fd, 1)


class Worker:
    def __init__(self, engine, arena: Arena, others: list):
        self.arena, self.seq = arena, 0
        req_r, self.req_w = os.pipe()
        self.ans_r, ans_w = os.pipe()
        with warnings.catch_warnings():  # Python >= 3.12 warns on fork() beside other threads;
            warnings.simplefilter("ignore", DeprecationWarning)  # the worker never touches them
            pid = os.fork()
        if pid == 0:  # the worker: never returns
            code = 0
            try:
                for fd in [self.req_w, self.ans_r] + [f for w in others for f in (w.req_w, w.ans_r)]:
                    os.close(fd)  # so a pipe ends when its parent side does
                _serve(engine, arena, req_r, ans_w, threading.current_thread() is threading.main_thread())
            except BaseException:  # noqa: BLE001  (nothing of the parent's may run here)
                code = 1
            finally:
                os._exit(code)
        os.close(req_r)
        os.close(ans_w)
        self.pid = pid

    def send(self, n: int, denom: int, raw: bool, part: np.ndarray, kind: int = 0) -> None:
        c = self.arena.ctl
        self.arena.x[:part.nbytes] = part.reshape(-1).view(np.uint8)
        c[N], c[DENOM], c[RAW], c[DTYPE], c[NDIM] = n, denom, raw, DTYPES.index(part.dtype.str), part.ndim - 1
        c[KIND] = kind
        c[CTL_SHAPE:CTL_SHAPE + part.ndim - 1] = part.shape[1:]
        self.seq += 1
        c[REQ] = self.seq
        os.write(self.req_w, b"g")

    def answer(self):
        """``(loss_sum, correct)``, or ("error", message)."""
        c, seq = self.arena.ctl, self.seq
        while True:  # an answer to an earlier request (one the parent stopped waiting for) is skipped
            try:
                got = _wait(c, ANS, lambda v: v == seq, self.ans_r)
            except OSError:
                got = b""
            if not got:
                return "exited", f"engine worker process {self.pid} exited"
            if c[ANS] == seq:
                break
        if c[STATUS]:
            return "error", bytes(self.arena.err).rstrip(b"\0").decode("utf-8", "replace")
        return float(self.arena.sums[0]), int(self.arena.sums[1])

    def stop(self) -> None:
        for fd, data in ((self.req_w, b"q"), (self.ans_r, None)):
            try:
                if data:
                    os.write(fd, data)
                os.close(fd)
            except OSError:
                pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _serve(engine, arena: Arena, req: int, ans: int, main_thread: bool) -> None:
    # the parent decides how a run stops (a signal to the process group, as scancel or Ctrl-C
    # send, must not kill a worker mid-step); the worker ends with it
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, signal.SIG_IGN)
    for s in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, signal.SIG_DFL)
    if main_thread:  # die with the parent (PR_SET_PDEATHSIG fires when the forking *thread*
        try:         # ends, so only for the main thread; otherwise the closed pipe ends the loop)
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        except Exception:  # noqa: BLE001
            pass
    from .compile import build_stages
    from .threads import blas_threads

    worker = (build_stages(engine.groups, arena.grads), arena.grads)
    c, seq = arena.ctl, 0
    with blas_threads(1):
        while True:
            if _wait(c, REQ, lambda v: v != seq, req) != b"g":
                return
            seq = int(c[REQ])
            try:
                n, dtype, nd = int(c[N]), np.dtype(DTYPES[c[DTYPE]]), int(c[NDIM])
                shape = (n,) + tuple(int(d) for d in c[CTL_SHAPE:CTL_SHAPE + nd])
                x = arena.x[:int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)
                if c[KIND] == 1:
                    logits = arena.probs[:n * int(np.prod(engine.out_shape))].reshape((n,) + tuple(engine.out_shape))
                    engine._infer_part(worker, x, logits, 0, n, int(c[DENOM]))
                else:
                    masks = {i: a[:len(a) // arena.train_rows * n].reshape((n,) + engine.groups[i][1][0].input_shape)
                             for i, a in arena.masks.items()}
                    out = engine._train_part(worker, x, arena.labels[:n], int(c[DENOM]), bool(c[RAW]), masks, 0, n)
                    arena.losses[:n] = out[0]
                    arena.probs[:out[1].size] = out[1].reshape(-1)
                    arena.sums[:] = out[3], out[4]
                c[STATUS] = 0
            except Exception as e:  # noqa: BLE001  (reported to the parent, which raises it)
                msg = f"{type(e).__name__}: {e}".encode("utf-8", "replace")[:ERR_BYTES]
                arena.err[...] = 0
                arena.err[:len(msg)] = np.frombuffer(msg, np.uint8)
                c[STATUS] = 1
            c[ANS] = seq
            os.write(ans, b"k")


class Workers:
    """The engine's worker processes (``k`` of them, forked on first use, re-forked with bigger
    arenas when a part outgrows them), stopped when the engine is collected or Python exits."""

    def __init__(self, engine):
        self.engine = engine
        self.procs: list[Worker] = []
        self._finalizer = weakref.finalize(self, _stop_all, self.procs)

    def get(self, k: int, rows: int, x_bytes: int, train_rows: int = 0) -> list[Worker]:
        need = (rows, x_bytes, train_rows)
        if len(self.procs) < k or any(a < b for w in self.procs[:k] for a, b in zip(w.arena.size(), need)):
            size = [max([v] + [w.arena.size()[i] for w in self.procs]) for i, v in enumerate(need)]
            _stop_all(self.procs)
            self.procs.clear()
            for _ in range(k):
                self.procs.append(Worker(self.engine, Arena(self.engine, *size), list(self.procs)))
        return self.procs[:k]

    def stop(self) -> None:
        _stop_all(self.procs)
        self.procs.clear()


def _stop_all(procs: list) -> None:
    for w in procs:
        w.stop()


def _check(answers: list) -> None:
    for ans in answers:
        if ans[0] == "error":
            raise RuntimeError(f"engine worker process failed: {ans[1]}")
    for ans in answers:
        if ans[0] == "exited":
            raise WorkerExited(ans[1])


def run_on_workers(workers: list[Worker], x, labels, denom, raw, masks, ranges, first):
    """Parts ``ranges[1:]`` on ``workers`` and part 0 through ``first()`` in this process;
    the results in part order, as ``run_parts`` gives them."""
    sent = []
    for w, (lo, hi) in zip(workers, ranges[1:]):
        a, part, n = w.arena, np.ascontiguousarray(x[lo:hi]), hi - lo
        a.labels[:n] = labels[lo:hi]
        for i, m in masks.items():
            a.masks[i][:m[lo:hi].size] = m[lo:hi].reshape(-1)
        w.send(n, denom, raw, part)
        sent.append(w)
    try:
        res = [first()]
    finally:
        answers = [w.answer() for w in sent]
    _check(answers)
    for w, (lo, hi), ans in zip(sent, ranges[1:], answers):
        n, k = hi - lo, res[0][1].shape[1]
        res.append((w.arena.losses[:n].copy(), w.arena.probs[:n * k].reshape(n, k).copy(), None, ans[0], ans[1]))
    return res


def infer_on_workers(workers: list[Worker], images, logits, bounds, step: int, first) -> None:
    """Logits of ``images[a:b]`` for the ``bounds[1:]`` on ``workers`` (chunks of ``step``),
    of ``bounds[0]`` through ``first()`` here, into ``logits``."""
    for w, (a, b) in zip(workers, bounds[1:]):
        w.send(b - a, step, True, np.ascontiguousarray(images[a:b]), kind=1)
    try:
        first()
    finally:
        answers = [w.answer() for w in workers[:len(bounds) - 1]]
    _check(answers)
    for w, (a, b) in zip(workers, bounds[1:]):
        logits[a:b] = w.arena.probs[:logits[a:b].size].reshape(logits[a:b].shape)
