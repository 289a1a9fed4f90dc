"""Softmax + cross-entropy of a batch of logits, with the gradient, in one pass."""

from __future__ import annotations

import math

import numpy as np


def softmax_xent(z: np.ndarray, labels: np.ndarray, denom: int):
    """``(losses, probs, dlogits, loss_sum, correct)`` for logits ``z`` (N, K).

    ``losses[i] = log(sum(exp(z[i] - max))) - (z[i, label] - max)`` (never the log of a
    rounded-to-zero probability), ``dlogits = (probs - onehot) / denom`` (``denom`` is the whole
    batch's size when ``z`` is one thread's part of it). At N = 1 the arithmetic is done on
    Python floats (double precision): fewer calls than the numpy version."""
    n = len(z)
    if n == 1:
        row = z[0].tolist()
        label = int(labels[0])
        mx = max(row)
        ez = [math.exp(v - mx) for v in row]
        s = math.fsum(ez)
        loss = math.log(s) - (row[label] - mx)
        p = np.array([ez], dtype=z.dtype)
        p /= z.dtype.type(s)
        g = p.copy()
        g[0, label] -= 1
        if denom != 1:
            g /= denom
        return np.array([loss], dtype=z.dtype), p, g, loss, int(row.index(mx) == label)
    zz = z - z.max(axis=1, keepdims=True)
    e = np.exp(zz)
    s = e.sum(axis=1, keepdims=True)
    p = e / s
    rows = np.arange(n)
    losses = np.log(s)[:, 0] - zz[rows, labels]
    g = p.copy()
    g[rows, labels] -= 1
    g /= denom
    return losses, p, g, float(losses.sum()), int(np.count_nonzero(p.argmax(axis=1) == labels))


def softmax_probs(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits ``z`` (N, K)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
