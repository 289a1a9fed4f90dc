"""Softmax output layer with the cross-entropy loss fused in for numerical stability."""

from __future__ import annotations

import math

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
        if getattr(self, "_z", 0) is None:
            self.forward(self._x)
        return (self._logs[:, 0] - self._z[np.arange(len(labels)), labels])

    def loss_backward(self) -> np.ndarray:
        g = self._p.copy()
        n = len(self._labels)
        g[np.arange(n), self._labels] -= 1
        g /= n
        return g

    def forward_loss(self, x, labels, denom: int | None = None):
        """``forward`` + ``loss`` + ``loss_backward`` in one pass, for the training loop.

        ``denom`` is the batch size the mean loss is taken over (default ``len(x)``; a model
        splitting a batch across threads passes the whole batch's size). Returns
        ``(losses, probs, dlogits, loss_sum, correct)``, the last two as Python numbers.
        The same arithmetic as the three separate calls; at batch 1 it is done on Python
        floats (in double precision), which is several times faster than ten numpy calls."""
        n = len(x)
        denom = n if denom is None else denom
        if n == 1:
            row = x[0].tolist()
            label = int(labels[0])
            mx = max(row)
            ez = [math.exp(v - mx) for v in row]
            s = math.fsum(ez)
            logs = math.log(s)
            loss = logs - (row[label] - mx)
            p = np.array([ez], dtype=x.dtype)
            p /= x.dtype.type(s)
            g = p.copy()
            g[0, label] -= 1
            if denom != 1:
                g /= denom
            self._labels, self._p = labels, p
            self._z, self._x = None, x  # loss() recomputes them if it is ever called after this
            return np.array([loss], dtype=x.dtype), p, g, loss, int(row.index(mx) == label)
        p = self.forward(x)
        losses = self.loss(labels)
        g = p.copy()
        g[np.arange(n), labels] -= 1
        g /= denom
        return losses, p, g, float(losses.sum()), int(np.count_nonzero(p.argmax(axis=1) == labels))

    def backward(self, dy):
        p = self._p
        return p * (dy - (dy * p).sum(axis=1, keepdims=True))
