"""A sequential model built from a declarative spec through the layer registry.

    spec = {"input_shape": [28, 28, 1], "dtype": "float32",
            "layers": [{"type": "conv2d", "filters": 8, "bias": False}, ..., {"type": "softmax"}]}
    model = build_model(spec, seed=0)

The builder infers every shape from the input shape and fails before any training, with one
line naming the layer and the shapes, when the stack does not fit.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any, Iterable

import numpy as np

from . import layers as _layers  # noqa: F401  (registers the built-in layers)
from .errors import ConfigError
from .layers.activations import Dropout, ReLU
from .layers.base import Layer, ShapeError
from .layers.conv import Conv2D
from .layers.dense import Dense
from .layers.dense import Flatten
from .layers.fused import ConvMaxPool, ConvMaxPoolT, ConvPoolDenseT, can_fuse_conv_pool
from .layers.softmax import Softmax
from .registry import LAYERS

DTYPES = ("float32", "float64")


class ParamDict(dict):
    """A dict of parameter (or gradient) arrays that are all views of one contiguous array,
    ``flat``: an update rule can then touch every parameter with one numpy call."""

    flat: np.ndarray | None = None


def _view_like(flat: np.ndarray, off: int, a: np.ndarray) -> np.ndarray:
    """A view of ``flat[off:off + a.size]`` with ``a``'s shape and memory order."""
    seg = flat[off:off + a.size]
    if a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous:
        return seg.reshape(a.shape[::-1]).T
    return seg.reshape(a.shape)


_EXECUTOR = None
_BLAS = None


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
    """Run the block with the BLAS library limited to ``n`` threads, then restore it.

    cnnexp's fast path runs BLAS single-threaded and uses the second core itself (half a batch
    per thread): for these small products, OpenBLAS's own threading costs more than it gives
    (measured: the seed net at batch 1 trains 40% faster with one BLAS thread)."""
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


def _executor():
    """One persistent worker thread shared by all models (numpy releases the GIL in its
    kernels, so the worker's half of a batch runs on the second core)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        from concurrent.futures import ThreadPoolExecutor

        _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnexp-worker")
    return _EXECUTOR


def default_threads() -> int:
    env = os.environ.get("CNNEXP_THREADS")
    if env:
        return max(1, int(env))
    return 2 if (os.cpu_count() or 1) >= 2 else 1


class Model:
    """Layers applied in order. Inputs are raw images ``(N, H, W)`` or ``(N, H, W, C)`` of any
    numeric dtype; ``preprocess`` casts and normalises them (``x * scale + shift``).

    Two ways through the same layers:

    * ``forward`` / ``backward``: the reference path, layer by layer (each layer keeps its own
      forward state, so a caller may also call the layers' ``backward`` one by one).
    * ``train_batch`` / ``train_step`` / ``predict_proba`` / ``evaluate``: the fast path. It runs
      a *plan* in which some layer runs are fused (``conv2d [-> relu] -> maxpool2d``, see
      ``cnnexp.layers.fused``), with the loss fused into the softmax, and splits large batches
      across two threads (gradients summed) when the model has no random layers. Same values
      as the reference path up to float rounding; ``tests/test_fastpaths.py`` checks it.

    All parameters live in one contiguous array (``params.flat``) and all gradients in another
    (``grads.flat``); ``params`` and ``grads`` map ``"<layer>.<param>"`` to views of them.
    """

    #: smallest batch split across two threads in training (smaller ones lose to the hand-off)
    split_min_batch = 64
    #: ... unless the batch's training work (see ``train_flops``) reaches this: keras_mnist
    #: (~72 MFLOP per image) is split from batch 14 on; the seed net and LeNet-5 only from 64
    split_min_flops = 1e9
    #: images per chunk in inference: keeps temporaries in L2 (measured on the seed net: 115k img/s
    #: on one thread with 64, 94k with 128; before the batch-innermost stage, 2 threads: 140k with
    #: 16-32 against 70k with 128)
    infer_chunk = 64

    def __init__(self, layers: list[Layer], input_shape: tuple[int, ...], dtype, spec: dict,
                 scale: float = 1.0, shift: float = 0.0):
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self.dtype = np.dtype(dtype)
        self.spec = spec
        self.scale, self.shift = self.dtype.type(scale), self.dtype.type(shift)
        self.output_shape = layers[-1].output_shape if layers else self.input_shape
        self.loss_layer = layers[-1] if layers and isinstance(layers[-1], Softmax) else None
        if layers:
            layers[0].needs_input_grad = False
        self.threads = default_threads()
        # flat views of every parameter and gradient, keyed "<layer>.<param>"
        self.params, self._grads, self._grad_slots = self._flatten(layers)
        self._plan = make_plan(layers[:-1] if self.loss_layer is not None else layers)
        # random layers other than dropout (which the split handles) keep batches whole
        self._splittable = all(isinstance(l, Dropout) or not hasattr(l, "rng") for l in layers)
        self._replica = None
        self._train_flops = None
        self._lock = threading.Lock()

    # -- parameters in one buffer ---------------------------------------------------------
    def _flatten(self, layers, grads_only: bool = False):
        entries = [(l, k, v) for l in layers for k, v in l.params.items()]
        params, grads = ParamDict(), ParamDict()
        flat_ok = all(isinstance(v, np.ndarray) and v.dtype == self.dtype for _, _, v in entries) and \
            len({id(v) for _, _, v in entries}) == len(entries)
        total = sum(v.size for _, _, v in entries)
        pflat = np.empty(total, self.dtype) if flat_ok and not grads_only else None
        gflat = np.zeros(total, self.dtype) if flat_ok else None
        slots, off = [], 0
        for l, k, v in entries:
            key = f"{l.name}.{k}"
            if flat_ok:
                if pflat is not None:
                    pv = _view_like(pflat, off, v)
                    pv[...] = v
                    l.params[k] = pv
                g = l.grads.get(k)
                gv = _view_like(gflat, off, v)
                if g is not None and g.shape == v.shape:
                    gv[...] = g
                l.grads[k] = gv
                off += v.size
            else:
                gv = l.grads.setdefault(k, np.zeros_like(v))
            params[key], grads[key] = l.params[k], gv
            slots.append((l.grads, k, gv))
        params.flat, grads.flat = pflat, gflat
        return params, grads, slots

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """Gradients of the last ``train_batch``, keyed like ``params`` (always the same dict:
        a layer that stores a new gradient array has it copied into its slot here)."""
        for d, k, gv in self._grad_slots:
            g = d[k]
            if g is not gv:
                np.copyto(gv, g)
                d[k] = gv
        return self._grads

    # -- data in --------------------------------------------------------------------------
    def preprocess(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim == len(self.input_shape):  # no channel axis (N, H, W) -> (N, H, W, 1)
            x = x.reshape(x.shape + (1,))
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, self.input_shape))}) "
                             f"or (N, {', '.join(map(str, self.input_shape[:-1]))}), got {np.shape(images)}")
        # uint8 images: a cast and two in-place operations (measured 3x faster than a 256-entry
        # table lookup, whose uint8 indices numpy widens first; the values are the same)
        x = x.astype(self.dtype)
        x *= self.scale
        x += self.shift
        return x

    # -- the reference path ---------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    # -- the fast path --------------------------------------------------------------------
    def _check_loss(self):
        if self.loss_layer is None:
            raise ConfigError("the last layer must be 'softmax' to train (it carries the cross-entropy loss)")

    @staticmethod
    def _train_part(plan, loss_layer, x, labels, denom):
        for st in plan:
            x = st.forward(x, True)
        out = loss_layer.forward_loss(x, labels, denom)
        g = out[2]
        for st in reversed(plan):
            g = st.backward(g)
        return out

    def _get_replica(self):
        """Plan stages and loss layer for the worker thread: shared parameters, own gradient
        buffer (``grads.flat`` of the same layout), own forward state."""
        if self._replica is None:
            reps = {}
            for l in self.layers:
                reps[id(l)] = l.replica()
            rlayers = [reps[id(l)] for l in self.layers]
            plan = []
            for st in self._plan:
                if isinstance(st, ConvPoolDenseT):
                    plan.append(st.replica(reps[id(st.conv)], reps[id(st.flatten)], reps[id(st.dense)]))
                elif isinstance(st, ConvMaxPool):
                    plan.append(st.replica(reps[id(st.conv)]))
                else:
                    plan.append(reps[id(st)])
            _, rgrads, rslots = self._flatten(rlayers, grads_only=True)
            self._replica = (plan, reps[id(self.loss_layer)] if self.loss_layer is not None else None,
                             rgrads, rslots)
        return self._replica

    def _dropouts(self):
        """(layer, its replica) for every dropout layer, in order."""
        plan2 = self._get_replica()[0]
        out = []
        for st, st2 in zip(self._plan, plan2):
            if isinstance(st, Dropout):
                out.append((st, st2))
        return out

    def _split(self, n: int) -> bool:
        if self.threads <= 1 or n < 2 or not self._splittable:
            return False
        return n >= self.split_min_batch or n * self.train_flops >= self.split_min_flops

    @property
    def train_flops(self) -> int:
        """Approximate training FLOP per image of the conv and dense layers (forward product
        plus the two backward ones); used only to decide whether to split a batch."""
        if self._train_flops is None:
            total = 0
            for l in self.layers:
                if isinstance(l, Conv2D):
                    oh, ow, f = l.output_shape
                    total += 6 * oh * ow * f * l.kh * l.kw * l.input_shape[2]
                elif isinstance(l, Dense):
                    total += 6 * l.input_shape[0] * l.units
            self._train_flops = total
        return self._train_flops

    def _train(self, x, labels):
        """(losses, probs, loss_sum, correct) of a preprocessed batch; fills the gradients."""
        n = len(x)
        if not self._split(n):
            losses, probs, _, loss_sum, correct = self._train_part(self._plan, self.loss_layer, x, labels, n)
            return losses, probs, loss_sum, correct
        plan2, loss2, rgrads, rslots = self._get_replica()
        h = (n + 1) // 2
        for l, r in self._dropouts():  # whole-batch masks, drawn in layer order as unsplit
            if l.rate:
                mask = l.draw_mask((n,) + l.input_shape, x.dtype)
                l.preset_mask, r.preset_mask = mask[:h], mask[h:]
        fut = _executor().submit(self._train_part, plan2, loss2, x[h:], labels[h:], n)
        a = self._train_part(self._plan, self.loss_layer, x[:h], labels[:h], n)
        b = fut.result()
        if self._grads.flat is not None and rgrads.flat is not None:
            # the replica's layers may have stored new arrays (user layers): sync them first
            for d, k, gv in rslots:
                if d[k] is not gv:
                    np.copyto(gv, d[k])
                    d[k] = gv
            self.grads  # noqa: B018  (syncs this model's slots the same way)
            np.add(self._grads.flat, rgrads.flat, out=self._grads.flat)
        else:
            for (d, k, gv), (rd, rk, _) in zip(self._grad_slots, rslots):
                np.add(d[k], rd[rk], out=gv)
                d[k] = gv
        return (np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), a[3] + b[3], a[4] + b[4])

    def train_batch(self, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward + backward on a preprocessed batch; fills ``grads``.
        Returns per-sample losses and probabilities."""
        self._check_loss()
        losses, probs, _, _ = self._train(x, np.asarray(labels))
        return losses, probs

    def train_step(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
        """``train_batch`` on raw images; returns the batch's summed loss and correct count."""
        self._check_loss()
        _, _, loss_sum, correct = self._train(self.preprocess(images), labels)
        return loss_sum, correct

    def _infer_part(self, plan, loss_layer, images, labels, out, lo, hi, step):
        loss_sum, correct = 0.0, 0
        for i in range(lo, hi, step):
            x = self.preprocess(images[i:i + step])
            for st in plan:
                x = st.forward(x, False)
            if loss_layer is None:
                if out is not None:
                    out[i:i + step] = x
                continue
            p = loss_layer.forward(x)
            if out is not None:
                out[i:i + step] = p
            if labels is not None:
                y = labels[i:i + step]
                loss_sum += float(loss_layer.loss(y).sum())
                correct += int(np.count_nonzero(p.argmax(axis=1) == y))
        return loss_sum, correct

    def compute(self):
        """Context for a stretch of fast-path calls (the training loop wraps its epochs in it):
        BLAS single-threaded, as the fast path expects."""
        return blas_threads(1)

    def _infer(self, images, labels=None, out=None, batch_size=None):
        # the fast path reuses buffers: one inference at a time per model (a scoring server
        # may call predict from several threads)
        with self._lock, self.compute():
            return self._infer_unlimited(images, labels, out, batch_size)

    def _infer_unlimited(self, images, labels=None, out=None, batch_size=None):
        n = len(images)
        step = max(1, min(batch_size or self.infer_chunk, self.infer_chunk))
        if self.threads > 1 and n >= 2 * step:
            plan2, loss2, _, _ = self._get_replica()
            nchunks = -(-n // step)
            h = min(n, ((nchunks + 1) // 2) * step)
            fut = _executor().submit(self._infer_part, plan2, loss2, images, labels, out, h, n, step)
            a = self._infer_part(self._plan, self.loss_layer, images, labels, out, 0, h, step)
            b = fut.result()
            return a[0] + b[0], a[1] + b[1]
        return self._infer_part(self._plan, self.loss_layer, images, labels, out, 0, n, step)

    def predict_proba(self, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """Class probabilities for raw images, in chunks to bound temporaries."""
        out = np.empty((len(images),) + self.output_shape, dtype=self.dtype)
        self._infer(images, None, out, batch_size)
        return out

    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 128) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on raw images."""
        if len(images) == 0:
            return float("nan"), float("nan")
        labels = np.asarray(labels)
        loss_sum, correct = self._infer(images, labels, None, batch_size)
        return loss_sum / len(images), correct / len(images)

    # -- parameters -----------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return sum(l.num_params for l in self.layers)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy arrays into the parameters; names the layer and shapes on any mismatch."""
        missing = [k for k in self.params if k not in state]
        extra = [k for k in state if k not in self.params]
        if missing or extra:
            raise ConfigError(f"weights do not match the model: missing {missing or 'none'}, "
                              f"unexpected {extra or 'none'}")
        for k, p in self.params.items():
            a = np.asarray(state[k])
            if a.shape != p.shape:
                raise ConfigError(f"weights for layer {k.rsplit('.', 1)[0]!r} param {k.rsplit('.', 1)[1]!r} "
                                  f"have shape {a.shape}, the model expects {p.shape}")
            p[...] = a

    def summary(self) -> str:
        rows = [("layer", "output shape", "params")]
        rows.append(("input", str(self.input_shape), "0"))
        rows += [(l.name, str(l.output_shape), f"{l.num_params:,}") for l in self.layers]
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        line = "-" * (sum(w) + 4)
        out = [line] + [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}" for a, b, c in rows[:1]] + [line]
        out += [f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}" for a, b, c in rows[1:]]
        out += [line, f"total params: {self.num_params:,}  dtype: {self.dtype}", line]
        return "\n".join(out)


def _conv_pool_stage(conv, pool, relu=None) -> ConvMaxPool:
    """The fused stage for ``conv [-> relu] -> pool``: batch-innermost layout for one-channel
    inputs (``ConvMaxPoolT``), the pooled row order otherwise."""
    cls = ConvMaxPoolT if conv.input_shape[2] == 1 else ConvMaxPool
    return cls(conv, pool, relu)


def make_plan(layers: list[Layer]) -> list:
    """The stages the fast path runs: the layers, with every ``conv2d [-> relu] -> maxpool2d``
    run that ``can_fuse_conv_pool`` accepts replaced by one ``ConvMaxPool``."""
    plan, i = [], 0
    while i < len(layers):
        l = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        nxt2 = layers[i + 2] if i + 2 < len(layers) else None
        if can_fuse_conv_pool(l, nxt):
            plan.append(_conv_pool_stage(l, nxt))
            i += 2
        elif type(nxt) is ReLU and can_fuse_conv_pool(l, nxt2):
            plan.append(_conv_pool_stage(l, nxt2, relu=nxt))
            i += 3
        else:
            plan.append(l)
            i += 1
        # a one-channel conv stage straight into flatten -> dense: keep its batch-innermost layout
        if len(plan) >= 3 and type(plan[-1]) is Dense and type(plan[-2]) is Flatten and \
                type(plan[-3]) is ConvMaxPoolT:
            cp = plan[-3]
            plan[-3:] = [ConvPoolDenseT(cp.conv, cp.pool, cp.relu, plan[-2], plan[-1])]
    return plan


def _plain(v: Any) -> Any:
    """OmegaConf containers -> plain dict/list, without importing omegaconf here."""
    if hasattr(v, "items"):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)) or (hasattr(v, "__iter__") and not isinstance(v, (str, bytes, np.ndarray))):
        return [_plain(x) for x in v]
    return v


def build_model(spec: dict, seed: int = 0, dtype: str | None = None, scale: float = 1.0,
                shift: float = 0.0, where: str = "model") -> Model:
    """Build a Model from ``spec`` (``input_shape``, ``layers``, optional ``dtype``)."""
    spec = _plain(spec)
    dtype = dtype or spec.get("dtype") or "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"{where}.dtype: {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    shape = spec.get("input_shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ConfigError(f"{where}.input_shape must be a list of positive ints such as [28, 28, 1], got {shape!r}")
    layer_specs = spec.get("layers")
    if not isinstance(layer_specs, list) or not layer_specs:
        raise ConfigError(f"{where}.layers must be a non-empty list of layers, got {layer_specs!r}")
    rng = np.random.default_rng(seed)
    layers, cur = [], tuple(shape)
    for i, ls in enumerate(layer_specs):
        at = f"{where}.layers.{i}"
        if not isinstance(ls, dict) or "type" not in ls:
            raise ConfigError(f"{at} must be a mapping with a 'type' key, got {ls!r}")
        kwargs = {k: v for k, v in ls.items() if k != "type"}
        layer = LAYERS.build(ls["type"], kwargs, where=at)
        if not isinstance(layer, Layer):
            raise ConfigError(f"{at}: {ls['type']!r} did not build a cnnexp Layer (got {type(layer).__name__})")
        layer.name = f"{ls['type']}_{i}"
        try:
            cur = layer.build(cur, rng, dtype)
        except ShapeError as e:
            raise ConfigError(f"{at} ({ls['type']}): {e} (input shape {cur})") from None
        layers.append(layer)
    return Model(layers, tuple(shape), dtype, {**spec, "dtype": dtype}, scale=scale, shift=shift)


def iter_layer_specs(spec: dict) -> Iterable[dict]:
    return iter(_plain(spec).get("layers", []))
