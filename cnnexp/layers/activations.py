"""Element-wise activations and dropout."""

from __future__ import annotations

import numpy as np

from ..registry import LAYERS
from .base import Layer


@LAYERS.register("relu")
class ReLU(Layer):
    def forward(self, x, training=False):
        self._mask = x > 0
        return x * self._mask

    def backward(self, dy):
        return dy * self._mask


@LAYERS.register("tanh")
class Tanh(Layer):
    def forward(self, x, training=False):
        self._y = np.tanh(x)
        return self._y

    def backward(self, dy):
        return dy * (1 - self._y * self._y)


@LAYERS.register("sigmoid")
class Sigmoid(Layer):
    def forward(self, x, training=False):
        # split by sign so exp never overflows
        e = np.exp(-np.abs(x))
        self._y = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
        return self._y

    def backward(self, dy):
        return dy * self._y * (1 - self._y)


@LAYERS.register("dropout")
class Dropout(Layer):
    """Inverted dropout: in training, zero each input with probability ``rate`` and scale the
    rest by 1/(1-rate); identity at evaluation. Draws from the generator the model gives it."""

    def __init__(self, rate: float = 0.5):
        super().__init__()
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"rate must be a number in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.rng = np.random.default_rng(0)

    def build(self, input_shape, rng, dtype=np.float32):
        self.rng = np.random.default_rng(rng.integers(2**63))
        return super().build(input_shape, rng, dtype)

    def draw_mask(self, shape, dtype):
        """The scaled keep-mask the next training forward of a ``shape`` batch would use; it
        advances the generator exactly as that forward would (an engine splitting a batch
        across threads draws the whole batch's mask here and gives each part its rows)."""
        keep = 1.0 - self.rate
        dtype = np.dtype(dtype)
        r = self.rng.random(shape, dtype=np.float32)
        # (r < keep) as 1.0/0.0, divided by keep, in one pass (same values as astype then /)
        out = r if dtype == r.dtype else None
        return np.divide(np.less(r, keep), dtype.type(keep), out=out, dtype=dtype)

    def forward(self, x, training=False):
        if not training or self.rate == 0:
            self._mask = None
            return x
        self._mask = self.draw_mask(x.shape, x.dtype)
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask
