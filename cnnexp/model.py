"""A sequential model built from a declarative spec through the layer registry.

    spec = {"input_shape": [28, 28, 1], "dtype": "float32",
            "layers": [{"type": "conv2d", "filters": 8, "bias": False}, ..., {"type": "softmax"}]}
    model = build_model(spec, seed=0)

The builder infers every shape from the input shape and fails before any training, with one
line naming the layer and the shapes, when the stack does not fit.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from . import layers as _layers  # noqa: F401  (registers the built-in layers)
from .errors import ConfigError
from .layers.base import Layer, ShapeError
from .layers.softmax import Softmax
from .registry import LAYERS

DTYPES = ("float32", "float64")


class Model:
    """Layers applied in order. Inputs are raw images ``(N, H, W)`` or ``(N, H, W, C)`` of any
    numeric dtype; ``preprocess`` casts and normalises them (``x * scale + shift``)."""

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
        # flat views of every parameter and gradient, keyed "<layer>.<param>"
        self.params = {f"{l.name}.{k}": v for l in layers for k, v in l.params.items()}

    # -- data in --------------------------------------------------------------------------
    def preprocess(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim == len(self.input_shape):  # no channel axis (N, H, W) -> (N, H, W, 1)
            x = x[..., None]
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, self.input_shape))}) "
                             f"or (N, {', '.join(map(str, self.input_shape[:-1]))}), got {np.shape(images)}")
        x = x.astype(self.dtype)
        x *= self.scale
        x += self.shift
        return x

    # -- computation ----------------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def train_batch(self, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward + backward on a preprocessed batch; fills every layer's grads.
        Returns per-sample losses and probabilities."""
        if self.loss_layer is None:
            raise ConfigError("the last layer must be 'softmax' to train (it carries the cross-entropy loss)")
        probs = self.forward(x, training=True)
        losses = self.loss_layer.loss(labels)
        dy = self.loss_layer.loss_backward()
        for layer in reversed(self.layers[:-1]):
            dy = layer.backward(dy)
        return losses, probs

    @property
    def grads(self) -> dict[str, np.ndarray]:
        return {f"{l.name}.{k}": v for l in self.layers for k, v in l.grads.items()}

    def predict_proba(self, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """Class probabilities for raw images, in chunks to bound temporaries."""
        n = len(images)
        out = np.empty((n,) + self.output_shape, dtype=self.dtype)
        for i in range(0, n, batch_size):
            out[i:i + batch_size] = self.forward(self.preprocess(images[i:i + batch_size]))
        return out

    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 128) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on raw images."""
        if len(images) == 0:
            return float("nan"), float("nan")
        loss_sum, correct = 0.0, 0
        for i in range(0, len(images), batch_size):
            y = labels[i:i + batch_size]
            p = self.forward(self.preprocess(images[i:i + batch_size]))
            if self.loss_layer is not None:
                loss_sum += float(self.loss_layer.loss(y).sum())
            correct += int((p.argmax(axis=1) == y).sum())
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
