"""Threads: how many the engine uses, the worker pool, BLAS kept single-threaded.

numpy releases the GIL inside its kernels, so Python threads each running part of a batch
through their own copy of the plan use several cores at once.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from ..errors import ConfigError

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()
_BLAS = None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover  (no sched_getaffinity: macOS, Windows)
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads) -> int:
    """``"auto"`` (or None) -> ``$CNNEXP_THREADS`` if set, else ``available_cores()``; an int
    >= 1 as given. Anything else is a ConfigError naming the value."""
    if threads is None or threads == "auto":
        env = os.environ.get("CNNEXP_THREADS")
        if env:
            return resolve_threads(int(env) if env.strip().isdigit() else env)
        return available_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads={threads!r} is invalid: use 'auto' or an integer >= 1")
    return int(threads)


PARALLEL_MODES = ("processes", "threads")


def parallel_mode() -> str:
    """How a split training batch runs its other parts: ``processes`` (forked workers, the
    default where ``fork`` exists) or ``threads``; ``$CNNEXP_PARALLEL`` chooses."""
    mode = os.environ.get("CNNEXP_PARALLEL", "processes").strip() or "processes"
    if mode not in PARALLEL_MODES:
        raise ConfigError(f"CNNEXP_PARALLEL={mode!r} is invalid: use one of {', '.join(PARALLEL_MODES)}")
    return mode


def pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool with at least ``workers`` threads (grown, never shrunk)."""
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < workers:
            old = _POOL
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cnnexp-engine")
            _POOL_SIZE = workers
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


def run_parts(fn, parts: list) -> list:
    """``[fn(*p) for p in parts]``, part 0 in the calling thread and the others on the pool;
    results in part order. Exceptions propagate after every part has finished."""
    if len(parts) == 1:
        return [fn(*parts[0])]
    with fine_switching():
        futs = [pool(len(parts) - 1).submit(fn, *p) for p in parts[1:]]
        try:
            first = fn(*parts[0])
        finally:
            for f in futs:  # every part finishes before any buffer is reused
                f.exception()
        return [first] + [f.result() for f in futs]


def split_rows(n: int, k: int) -> list[tuple[int, int]]:
    """``k`` contiguous ``(lo, hi)`` ranges covering ``range(n)``, sizes differing by at most 1."""
    k = max(1, min(k, n))
    q, r = divmod(n, k)
    out, lo = [], 0
    for i in range(k):
        hi = lo + q + (1 if i < r else 0)
        out.append((lo, hi))
        lo = hi
    return out


def _blas_libs() -> list:
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        except Exception:  # pragma: no cover  (threadpoolctl missing or unsupported BLAS)
            _BLAS = []
    return _BLAS


@contextmanager
def blas_threads(n: int = 1):
    """Run the block with the BLAS library limited to ``n`` threads, then restore it (the
    engine parallelises over the batch itself; see docs/performance.md)."""
    libs = _blas_libs()
    old = [lib.get_num_threads() for lib in libs]
    for lib, o in zip(libs, old):
        if o != n:
            lib.set_num_threads(n)
    try:
        yield
    finally:
        for lib, o in zip(libs, old):
            if o != n:
                lib.set_num_threads(o)


#: Python's thread switch interval while several threads work on one batch: a thread between
#: two numpy kernels hands the GIL over sooner than with the default 5 ms
SPLIT_SWITCH_INTERVAL = 1e-4


@contextmanager
def fine_switching():
    old = sys.getswitchinterval()
    sys.setswitchinterval(SPLIT_SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(old)
