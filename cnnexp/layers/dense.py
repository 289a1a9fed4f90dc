"""Fully connected layer and the flatten that feeds it."""

from __future__ import annotations

import numpy as np

from ..initializers import initialize
from ..registry import INITIALIZERS, LAYERS
from .base import Layer, ShapeError, positive_int


@LAYERS.register("flatten")
class Flatten(Layer):
    """``(N, *dims)`` -> ``(N, prod(dims))``, in C order (H, W, C for images, as the seed post)."""

    def output_shape_for(self, input_shape):
        size = 1
        for d in input_shape:
            size *= d
        return (size,)

    def forward(self, x, training=False):
        self._xshape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._xshape)


@LAYERS.register("dense")
class Dense(Layer):
    """``y = x @ W + b``: input ``(N, D)``, ``W`` of shape ``(D, units)``, ``b`` of shape ``(units,)``,
    output ``(N, units)``. Backward: ``dW = x.T @ dy``, ``db = dy.sum(0)``, ``dx = dy @ W.T``."""

    def __init__(self, units: int, bias: bool = True, init: str = "glorot_uniform", bias_init: str = "zeros"):
        super().__init__()
        self.units = positive_int(units, "units")
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be true or false, got {bias!r}")
        self.use_bias = bias
        self.init, self.bias_init = INITIALIZERS.get(init) and init, INITIALIZERS.get(bias_init) and bias_init

    def output_shape_for(self, input_shape):
        if len(input_shape) != 1:
            raise ShapeError(f"expects a flat input (D,), got {input_shape}; add a flatten layer before it")
        return (self.units,)

    def init_params(self, rng, dtype):
        d = self.input_shape[0]
        # stored column-major (W.T contiguous): the same values; a batch's weight gradient
        # dy.T @ x is then written contiguously
        self.params["W"] = np.asfortranarray(initialize(self.init, (d, self.units), d, self.units, rng, dtype))
        if self.use_bias:
            self.params["b"] = initialize(self.bias_init, (self.units,), d, self.units, rng, dtype)

    def forward(self, x, training=False):
        self._x = x
        y = x @ self.params["W"]
        if self.use_bias:
            y = y + self.params["b"]
        return y

    def backward(self, dy):
        self.grads["W"] = self._x.T @ dy
        if self.use_bias:
            self.grads["b"] = dy.sum(axis=0)
        return dy @ self.params["W"].T if self.needs_input_grad else None
