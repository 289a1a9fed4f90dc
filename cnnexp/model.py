"""A sequential model built from a declarative spec through the layer registry.

    spec = {"input_shape": [28, 28, 1], "dtype": "float32",
            "layers": [{"type": "conv2d", "filters": 8, "bias": False}, ..., {"type": "softmax"}]}
    model = build_model(spec, seed=0)

The builder infers every shape from the input shape and fails before any training, with one
line naming the layer and the shapes, when the stack does not fit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigError
from .layers.base import Layer, ShapeError
from .layers.softmax import Softmax
from .engine import check_engine, make_engine, resolve_threads
from .engine.feed import Prepared, batches
from .engine.procs import shared_zeros
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


class Model:
    """Layers applied in order. Inputs are raw images ``(N, H, W)`` or ``(N, H, W, C)`` of any
    numeric dtype; ``preprocess`` casts and normalises them (``x * scale + shift``).

    The model holds the layers and the parameters; an engine (``self.engine``, from
    ``cnnexp.engine``) runs them: ``reference`` (the layers one by one) or ``fast`` (a compiled
    plan, data-parallel over ``threads``). ``train_batch`` / ``train_step`` / ``loss_and_grads``
    / ``predict_proba`` / ``evaluate`` go through the engine; ``forward`` / ``backward`` always
    run the layers one by one.

    All parameters live in one contiguous array (``params.flat``) and all gradients in another
    (``grads.flat``); ``params`` and ``grads`` map ``"<layer>.<param>"`` to views of them.
    """

    def __init__(self, layers: list[Layer], input_shape: tuple[int, ...], dtype, spec: dict,
                 scale: float = 1.0, shift: float = 0.0, engine: str = "fast", threads="auto"):
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self.dtype = np.dtype(dtype)
        self.spec = spec
        self.scale, self.shift = self.dtype.type(scale), self.dtype.type(shift)
        self.output_shape = layers[-1].output_shape if layers else self.input_shape
        self.loss_layer = layers[-1] if layers and isinstance(layers[-1], Softmax) else None
        if layers:
            layers[0].needs_input_grad = False
        # flat views of every parameter and gradient, keyed "<layer>.<param>"
        self.params, self._grads, self._grad_slots = self._flatten(layers)
        self.set_engine(engine, threads)

    def set_engine(self, engine: str = "fast", threads="auto") -> None:
        """Run this model with ``engine`` (``reference`` or ``fast``) on ``threads``."""
        self.engine = make_engine(self, engine, threads)

    @property
    def threads(self) -> int:
        return self.engine.threads

    # -- parameters in one buffer ---------------------------------------------------------
    def _flatten(self, layers):
        entries = [(l, k, v) for l in layers for k, v in l.params.items()]
        params, grads = ParamDict(), ParamDict()
        flat_ok = all(isinstance(v, np.ndarray) and v.dtype == self.dtype for _, _, v in entries) and \
            len({id(v) for _, _, v in entries}) == len(entries)
        total = sum(v.size for _, _, v in entries)
        pflat = shared_zeros(total, self.dtype) if flat_ok else None  # engine worker processes read it
        gflat = np.zeros(total, self.dtype) if flat_ok else None
        slots, off = [], 0
        for l, k, v in entries:
            key = f"{l.name}.{k}"
            if flat_ok:
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

    def new_grads(self, alloc=np.zeros) -> ParamDict:
        """Zeroed gradients laid out like ``grads`` (``flat`` by ``alloc``): an engine worker's."""
        out, off = ParamDict(), 0
        gflat = alloc(self._grads.flat.size, self.dtype) if self._grads.flat is not None else None
        for k, p in self.params.items():
            out[k] = _view_like(gflat, off, p) if gflat is not None else np.zeros_like(p)
            off += p.size
        out.flat = gflat
        return out

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """Gradients of the last training step, keyed like ``params`` (always the same dict:
        a layer that stores a new gradient array has it copied into its slot here)."""
        for d, k, gv in self._grad_slots:
            g = d[k]
            if g is not gv:
                np.copyto(gv, g)
                d[k] = gv
        return self._grads

    # -- data in --------------------------------------------------------------------------
    def check_images(self, x: np.ndarray) -> None:
        """Raise ValueError unless ``x`` is ``(N, *input_shape)`` or ``(N, H, W)`` for one channel."""
        shape = x.shape[1:]
        if shape != self.input_shape and not (self.input_shape[-1] == 1 and shape == self.input_shape[:-1]):
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, self.input_shape))}) "
                             f"or (N, {', '.join(map(str, self.input_shape[:-1]))}), got {x.shape}")

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images)
        self.check_images(x)
        if x.ndim == len(self.input_shape):  # no channel axis (N, H, W) -> (N, H, W, 1)
            x = x.reshape(x.shape + (1,))
        # uint8 images: a cast and two in-place operations (measured 3x faster than a 256-entry
        # table lookup, whose uint8 indices numpy widens first; the values are the same)
        x = x.astype(self.dtype)
        x *= self.scale
        x += self.shift
        return x

    # -- training and inference through the engine -------------------------------------------
    def _check_loss(self):
        if self.loss_layer is None:
            raise ConfigError("the last layer must be 'softmax' to train (it carries the cross-entropy loss)")

    def compute(self):
        """Context for a stretch of engine calls (the training loop wraps its epochs in it):
        the fast engine runs BLAS single-threaded inside it."""
        return self.engine.compute()

    def close(self) -> None:
        """Stop the engine's worker processes now; it forks new ones when it next needs them."""
        self.engine.close()

    def train_batch(self, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward + backward on a preprocessed batch; fills ``grads``.
        Returns per-sample losses and probabilities."""
        self._check_loss()
        losses, probs, _, _ = self.engine.train(x, np.asarray(labels))
        return losses, probs

    def train_step(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
        """Forward + backward on raw images; fills ``grads``; returns the batch's summed loss
        and number of correct predictions."""
        self._check_loss()
        if type(images) is not Prepared:  # Prepared: a batch of ``batches``, checked there
            images = np.asarray(images)
            self.check_images(images)  # the engine may preprocess in parts
        _, _, loss_sum, correct = self.engine.train(images, np.asarray(labels), raw=True)
        return loss_sum, correct

    def batches(self, images, labels, order, start: int, batch_size: int):
        """``(position, inputs, labels)`` of the training batches ``order[p:p + batch_size]``
        from ``start`` on, inputs for ``train_step`` (see ``cnnexp.engine.feed``)."""
        self.check_images(images)
        return batches(self.engine, images, np.asarray(labels, np.intp), order, start, batch_size)

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy of the batch ``x`` (raw images of an integer dtype, or already
        preprocessed floats) with labels ``y``, and a copy of its gradients (training mode:
        dropout active)."""
        x = np.asarray(x)
        if x.dtype.kind in "uib":
            x = self.preprocess(x)
        losses, _ = self.train_batch(x, y)
        return float(losses.mean()), {k: v.copy() for k, v in self.grads.items()}

    def predict_proba(self, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """Class probabilities for raw images, in chunks to bound temporaries."""
        out = np.empty((len(images),) + self.output_shape, dtype=self.dtype)
        if len(images):
            self.engine.infer(np.asarray(images), None, out, batch_size)
        return out

    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 128) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on raw images."""
        if len(images) == 0:
            return float("nan"), float("nan")
        labels = np.asarray(labels)
        loss_sum, correct = self.engine.infer(np.asarray(images), labels, None, batch_size)
        return loss_sum / len(images), correct / len(images)

    # -- the layers one by one ------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

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


def _plain(v: Any) -> Any:
    """OmegaConf containers -> plain dict/list, without importing omegaconf here."""
    if hasattr(v, "items"):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)) or (hasattr(v, "__iter__") and not isinstance(v, (str, bytes, np.ndarray))):
        return [_plain(x) for x in v]
    return v


def build_model(spec: dict, seed: int = 0, dtype: str | None = None, scale: float = 1.0,
                shift: float = 0.0, where: str = "model", engine: str | None = None, threads=None) -> Model:
    """Build a Model from ``spec`` (``input_shape``, ``layers``, optional ``dtype`` and
    ``engine``). ``engine`` / ``threads`` override the spec's; the engine is recorded in
    ``model.spec``, so a model rebuilt from a saved spec runs on the same engine."""
    spec = _plain(spec)
    engine = check_engine(engine or spec.get("engine") or "fast")
    threads = resolve_threads(threads if threads is not None else "auto")
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
    return Model(layers, tuple(shape), dtype, {**spec, "dtype": dtype, "engine": engine}, scale=scale, shift=shift,
                 engine=engine, threads=threads)
