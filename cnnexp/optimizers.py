"""Update rules. An optimizer sees parameters and gradients as dicts under the same keys
(``"<layer>.<param>"``) and updates the parameter arrays in place. Its state is a flat dict
of arrays (``state_dict``), so checkpoints stay plain ``.npz`` data."""

from __future__ import annotations

from functools import partial

import numpy as np

from .registry import OPTIMIZERS


def _check(name, v, lo=0.0, hi=None, lo_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{name} must be a number, got {v!r}")
    if (v <= lo if lo_open else v < lo) or (hi is not None and v >= hi):
        rng = f"{'>' if lo_open else '>='} {lo}" + (f" and < {hi}" if hi is not None else "")
        raise ValueError(f"{name} must be {rng}, got {v!r}")
    return float(v)


class Optimizer:
    def __init__(self, lr: float):
        self.lr = _check("lr", lr, lo_open=True)
        self.state: dict[str, np.ndarray] = {}
        self.t = 0

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], run=None) -> None:
        """Update ``params`` in place from ``grads``. ``run``, when given, calls a list of
        argument-free callables, possibly at the same time on several threads (the engine's
        ``run``); an optimizer may use it for independent parts of its update."""
        self.t += 1
        for k, p in params.items():
            self.update(k, p, grads[k])

    def update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        d = {f"state.{k}": v.copy() for k, v in self.state.items()}  # a snapshot, not the live arrays
        d["t"] = np.array(self.t)
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        self.t = int(d["t"])
        self.state = {k[len("state."):]: np.array(v) for k, v in d.items() if k.startswith("state.")}


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """``p -= lr * (g + weight_decay * p)``, the seed post's rule when weight_decay is 0."""

    def __init__(self, lr: float, weight_decay: float = 0.0):
        super().__init__(lr)
        self.weight_decay = _check("weight_decay", weight_decay)
        self._tmps: dict[int, np.ndarray] = {}  # per flat part: one piece's lr * g
        self._kernel = None  # the compiled flat update once it is used (None: numpy's passes), see ``step``

    def step(self, params, grads, run=None):
        pf, gf = getattr(params, "flat", None), getattr(grads, "flat", None)
        if pf is None or gf is None or pf.shape != gf.shape:
            return super().step(params, grads)
        # a model's params and grads are views of two flat arrays: one update for all of them,
        # in two halves through ``run`` when there are enough values (element-wise: the same numbers)
        self.t += 1
        if self._kernel is None:  # asked again each step until the compiled update is used
            kernels = _kernels(pf.size >= self.load_min)
            self._kernel = kernels["sgd"] if kernels is not None else None
        if run is None or pf.size < self.split_min:
            return self._flat(pf, gf, 0)
        mid = pf.size // 2 // self.chunk * self.chunk
        run([partial(self._flat, pf[:mid], gf[:mid], 0), partial(self._flat, pf[mid:], gf[mid:], 1)])

    #: values per piece of a flat update: ``lr * g`` of one piece is still in cache for the
    #: subtract (measured on keras_mnist's 1.2M parameters: 0.54 ms against 0.87 ms for two
    #: whole-array passes; the same values)
    chunk = 1 << 16
    #: fewest values whose update ``step`` splits in two through ``run``
    split_min = 1 << 18
    #: fewest values for which the update loads the engine's compiled loops itself: numba's
    #: first compiled call in a process has a fixed cost that a smaller update's savings per
    #: step take too many steps to repay; a smaller update uses the compiled loop once the
    #: engine has loaded its loops (benchmarks/NOTES.md, session 13)
    load_min = 1 << 18

    def update(self, key, p, g):
        if self.weight_decay:  # one parameter array (a model without flat buffers)
            g = g + self.weight_decay * p
        tmp = np.empty_like(p)
        np.multiply(g, p.dtype.type(self.lr), out=tmp, casting="unsafe")
        p -= tmp

    def _flat(self, p, g, part: int) -> None:
        """``p -= lr * (g + weight_decay * p)`` on flat arrays: one compiled pass when ``step``
        found the engine's loop (``engine.fused``: the same numbers, each value read and
        written once), else numpy's passes in pieces, with part ``part``'s own temporary (two
        parts may run at once)."""
        if self._kernel is not None:
            return self._kernel(p, g, p.dtype.type(self.lr), p.dtype.type(self.weight_decay))
        if self.weight_decay:
            g = g + self.weight_decay * p
        lr = p.dtype.type(self.lr)
        size = min(p.size, self.chunk)
        tmp = self._tmps.get(part)
        if tmp is None or tmp.size != size or tmp.dtype != p.dtype:
            tmp = self._tmps[part] = np.empty(size, p.dtype)
        if size == p.size:  # one piece (the seed net: no per-piece overhead at batch 1)
            np.multiply(g, lr, out=tmp, casting="unsafe")
            p -= tmp
            return
        for s in range(0, p.size, size):  # p -= lr * g, piece by piece
            t = tmp[:min(size, p.size - s)]
            np.multiply(g[s:s + size], lr, out=t, casting="unsafe")
            p[s:s + size] -= t


_fused = []  # [cnnexp.engine.fused], imported at the first flat update, not with this module


def _kernels(load: bool):
    """The engine's compiled loops (``cnnexp.engine.fused.kernels()``) when the engine has
    loaded them in this process already, or when ``load``; else None (None too without numba
    or with ``CNNEXP_FUSED=0``). The update rules above are numpy."""
    if not _fused:
        from .engine import fused

        _fused.append(fused)
    return _fused[0].kernels() if load or _fused[0].loaded() else None


@OPTIMIZERS.register("momentum")
class Momentum(Optimizer):
    """Heavy-ball momentum (``nesterov=true`` for Nesterov): ``v = m*v - lr*g; p += v``."""

    def __init__(self, lr: float, momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(lr)
        self.momentum = _check("momentum", momentum, 0.0, 1.0)
        if not isinstance(nesterov, bool):
            raise ValueError(f"nesterov must be true or false, got {nesterov!r}")
        self.nesterov = nesterov
        self.weight_decay = _check("weight_decay", weight_decay)

    def update(self, key, p, g):
        if self.weight_decay:
            g = g + self.weight_decay * p
        v = self.state.get(key)
        if v is None:
            v = self.state[key] = np.zeros_like(p)
        v *= self.momentum
        v -= self.lr * g
        if self.nesterov:
            p += self.momentum * v - self.lr * g
        else:
            p += v


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction."""

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        self.beta1 = _check("beta1", beta1, 0.0, 1.0)
        self.beta2 = _check("beta2", beta2, 0.0, 1.0)
        self.eps = _check("eps", eps, lo_open=True)
        self.weight_decay = _check("weight_decay", weight_decay)

    def update(self, key, p, g):
        if self.weight_decay:
            g = g + self.weight_decay * p
        m = self.state.get(key + ".m")
        if m is None:
            m = self.state[key + ".m"] = np.zeros_like(p)
            self.state[key + ".v"] = np.zeros_like(p)
        v = self.state[key + ".v"]
        m *= self.beta1
        m += (1 - self.beta1) * g
        v *= self.beta2
        v += (1 - self.beta2) * (g * g)
        a = self.lr * np.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t)
        p -= (a * m / (np.sqrt(v) + self.eps)).astype(p.dtype, copy=False)


def build_optimizer(spec: dict, lr: float) -> Optimizer:
    """``spec`` is ``{"type": name, **kwargs}`` (the ``optimizer`` config group)."""
    spec = dict(spec)
    name = spec.pop("type", None)
    return OPTIMIZERS.build(name, {"lr": lr, **spec}, where="optimizer")
