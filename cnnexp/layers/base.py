"""The layer interface every cnnexp layer implements.

Shapes are channels-last. A layer sees batches: images are ``(N, H, W, C)``, vectors ``(N, D)``.
``input_shape`` / ``output_shape`` are per-sample shapes, without the batch axis.

A layer keeps its trainable arrays in ``params`` and, after ``backward``, their gradients in
``grads`` under the same keys. It never updates its own parameters: optimizers do.
"""

from __future__ import annotations

import numpy as np


class ShapeError(ValueError):
    """The layer cannot accept the given input shape."""


class Layer:
    #: set False by the model for the first layer: the gradient w.r.t. the data is never needed
    needs_input_grad: bool = True

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.name: str = type(self).__name__.lower()
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None

    # -- construction -------------------------------------------------------------------------
    def output_shape_for(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape for ``input_shape``; raise ShapeError if it does not fit."""
        return tuple(input_shape)

    def init_params(self, rng: np.random.Generator, dtype: np.dtype) -> None:
        """Create ``self.params`` (and zeroed ``self.grads``) once shapes are known."""

    def build(self, input_shape: tuple[int, ...], rng: np.random.Generator, dtype=np.float32) -> tuple[int, ...]:
        self.input_shape = tuple(int(d) for d in input_shape)
        self.output_shape = tuple(int(d) for d in self.output_shape_for(self.input_shape))
        self.dtype = np.dtype(dtype)
        self.init_params(rng, self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        return self.output_shape

    @property
    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    # -- computation --------------------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray | None:  # pragma: no cover
        """Given dL/dy, store dL/dparam in ``grads`` and return dL/dx (None if not needed)."""
        raise NotImplementedError

    def replica(self) -> "Layer":
        """A shallow copy sharing ``params`` but with its own zeroed ``grads`` and forward
        state: an engine runs part of a batch through it on another thread. A layer holding
        other mutable per-call state overrides this."""
        r = object.__new__(type(self))
        r.__dict__.update(self.__dict__)
        r.grads = {k: np.zeros_like(v) for k, v in self.grads.items()}
        return r

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, out={self.output_shape})"


def pair(v, what: str) -> tuple[int, int]:
    """Accept an int or a 2-sequence of positive ints (kernel sizes, strides)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (int(v), int(v))
    try:
        a, b = (int(t) for t in v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}") from None
    if a < 1 or b < 1:
        raise ValueError(f"{what} must be >= 1, got {v!r}")
    return a, b


def positive_int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{what} must be a positive int, got {v!r}")
    return int(v)
