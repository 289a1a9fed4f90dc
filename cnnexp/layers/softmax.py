"""Softmax output layer with the cross-entropy loss fused in for numerical stability."""

from __future__ import annotations

import numpy as np

from ..registry import LAYERS
from .base import Layer, ShapeError


@LAYERS.register("softmax")
class Softmax(Layer):
    """Input logits ``(N, K)`` -> probabilities ``(N, K)``.

    ``loss(labels)`` returns per-sample cross-entropy ``-log p[label]`` computed from the
    log-sum-exp of the logits (never log of a rounded-to-zero probability), and
    ``loss_backward()`` returns dL/dlogits of the batch-mean loss, ``(p - onehot) / N``.
    ``backward(dy)`` is the plain softmax Jacobian-vector product, for use mid-network.
    """

    def output_shape_for(self, input_shape):
        if len(input_shape) != 1:
            raise ShapeError(f"expects a flat input (K,), got {input_shape}")
        return tuple(input_shape)

    def forward(self, x, training=False):
        z = x - x.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        self._z, self._logs = z, np.log(s)
        self._p = e / s
        return self._p

    def loss(self, labels: np.ndarray) -> np.ndarray:
        """Per-sample cross-entropy of the last forward pass, shape (N,)."""
        self._labels = labels
        return (self._logs[:, 0] - self._z[np.arange(len(labels)), labels])

    def loss_backward(self) -> np.ndarray:
        g = self._p.copy()
        n = len(self._labels)
        g[np.arange(n), self._labels] -= 1
        g /= n
        return g

    def backward(self, dy):
        p = self._p
        return p * (dy - (dy * p).sum(axis=1, keepdims=True))
