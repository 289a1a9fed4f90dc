"""How a model's layers are run. Two engines over the same layers and parameters:

* ``reference`` (``reference.py``): the layers of ``cnnexp.layers`` one by one; the readable
  truth every test compares against.
* ``fast`` (``fast.py``): a plan compiled from the layer list (``compile.py``) into stages
  with their own buffers (``conv.py``, ``stages.py``, ``ops.py``), run data-parallel over the
  process's cores (``threads.py``; the other parts of a split batch in forked worker
  processes, ``procs.py``).

``Model`` owns one (``Model.engine``), chosen by ``engine: reference | fast`` in the config.
Only this package reads or writes a layer's private state; the stages read a layer's public
shape attributes and ``params`` and write gradients into the model's gradient arrays.
"""

from __future__ import annotations

from ..errors import ConfigError
from .fast import FastEngine
from .reference import ReferenceEngine
from .threads import available_cores, blas_threads, resolve_threads

ENGINES = {"fast": FastEngine, "reference": ReferenceEngine}


def check_engine(name) -> str:
    if name not in ENGINES:
        raise ConfigError(f"engine={name!r} is invalid: use one of {', '.join(sorted(ENGINES))}")
    return name


def make_engine(model, name: str = "fast", threads="auto"):
    """The engine ``name`` for ``model`` (``threads``: ``"auto"`` or an int >= 1)."""
    return ENGINES[check_engine(name)](model, resolve_threads(threads))


__all__ = ["ENGINES", "FastEngine", "ReferenceEngine", "make_engine", "check_engine", "available_cores",
           "blas_threads", "resolve_threads"]
