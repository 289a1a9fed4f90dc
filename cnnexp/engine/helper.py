"""A second thread for a training step that runs unsplit (too few images to cut the batch
across cores, keras_mnist at batch 1): work off the step's critical path runs there while the
calling thread goes on.

Backward has two chains: the input gradients, each stage's needed by the stage before it,
and the weight gradients, which nothing in the step reads. A stage whose weight gradient is
big enough (``worth``) hands it to the helper and goes on with its input gradient; the engine
joins before the step returns, so gradients are complete as before. The optimizer's update,
one pass over every parameter, can also be run in two halves (``run``). Each piece of work is
the same numpy call it would be on the calling thread, so the numbers do not change; numpy
releases the GIL inside its kernels, so the two threads use two cores. The engine keeps
Python's switch interval short while it trains (``threads.fine_switching``), so that a thread
waiting for the GIL between two kernels gets it soon.
"""

from __future__ import annotations

import threading
import time
from queue import SimpleQueue

#: a weight gradient goes to the helper when its estimated time reaches this (seconds): about
#: twice what a hand-off and the join cost here (benchmarks/NOTES.md, session 7) ...
WORTH_SECONDS = 100e-6
#: ... estimated from its multiply-adds and the values it writes, at rates of one core here
#: (a BLAS product of these shapes; an element-wise outer product, bound by writing)
MAC_RATE, WRITE_RATE = 3.5e10, 1e10


def worth(macs: float, writes: float = 0.0) -> bool:
    """Whether a weight gradient of ``macs`` multiply-adds writing ``writes`` values is worth
    handing to the helper."""
    return macs / MAC_RATE + writes / WRITE_RATE >= WORTH_SECONDS


def hand_over(h, fn, macs: float, writes: float = 0.0) -> None:
    """Call ``fn()`` on the helper ``h`` when it is active and the work is ``worth`` it (the
    engine joins before the step returns), else here. ``h`` may be None (no helper)."""
    if h is not None and h.active and worth(macs, writes):
        h.submit(fn)
    else:
        fn()


class Helper:
    """One daemon thread running submitted callables in order. ``active`` says whether the
    current step may use it: the engine sets it per training call (``step``), only for an
    unsplit batch (the cores are busy with the parts of a split one) and only while steps with
    the helper run faster than without.

    That last check is a guard: on this VM a full benchmark once measured keras_mnist at batch 1
    at 271-291 img/s with the helper in two of three rounds (727 in the third; 600-800 in every
    run before and after, alone or beside a busy core), which two cores that hand work to each
    other every few hundred microseconds can suffer when the host is busy. So ``step`` times
    every unsplit step (start to next start: the update and the loop included) and, every
    ``PROBE_EVERY`` steps, runs ``PROBE_STEPS`` in the other mode; the next stretch uses
    whichever mode had the lower median. The numbers are the same either way."""

    PROBE_EVERY, PROBE_STEPS = 400, 20

    def __init__(self, clock=time.perf_counter):
        self.active = False
        self.use = True  # the mode the guard prefers now
        self._clock, self._last, self._n = clock, None, 0
        self._times: dict[bool, list] = {True: [], False: []}
        self.jobs = 0  # callables run so far (tests read it)
        self._todo: SimpleQueue = SimpleQueue()
        self._done = threading.Semaphore(0)
        self._pending = 0
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None  # started at the first submit

    def step(self, unsplit: bool) -> None:
        """Called at the start of every training step: set ``active`` for it."""
        now = self._clock()
        if not unsplit:
            self.active, self._last = False, None
            return
        if self._last is not None:  # the previous unsplit step's time, to its mode
            t = self._times[self.active]
            t.append(now - self._last)
            del t[:-self.PROBE_STEPS]
        self._last = now
        k = self._n % (self.PROBE_EVERY + self.PROBE_STEPS)
        if k == 0 and self._n:  # the preferred mode ran, then a probe of the other: choose
            on, off = (sorted(self._times[m]) for m in (True, False))
            if len(on) == len(off) == self.PROBE_STEPS:
                self.use = on[len(on) // 2] <= off[len(off) // 2]
        self._n += 1
        self.active = self.use if k < self.PROBE_EVERY else not self.use

    def _loop(self) -> None:
        while True:
            fn = self._todo.get()
            if fn is None:  # stop()
                return
            try:
                fn()
            except BaseException as e:  # handed to the caller by join()
                if self._error is None:
                    self._error = e
            self.jobs += 1
            self._done.release()

    def submit(self, fn) -> None:
        """Run ``fn()`` on the helper; ``join`` waits for it."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="cnnexp-helper", daemon=True)
            self._thread.start()
        self._pending += 1
        self._todo.put(fn)

    def join(self) -> None:
        """Wait for everything submitted; raise the first error one of them raised."""
        while self._pending:
            self._done.acquire()
            self._pending -= 1
        err, self._error = self._error, None
        if err is not None:
            raise err

    def stop(self) -> None:
        """End the thread (started again by the next ``submit``)."""
        if self._thread is not None:
            self.join()
            self._todo.put(None)
            self._thread.join()
            self._thread = None

    def run(self, fns: list) -> None:
        """Call every one of ``fns`` (no arguments), the first here and the rest on the helper
        when it is active; return when all have finished."""
        if not self.active or len(fns) < 2:
            for fn in fns:
                fn()
            return
        try:
            for fn in fns[1:]:
                self.submit(fn)
            fns[0]()
        finally:
            self.join()
