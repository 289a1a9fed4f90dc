"""Fast paths that run several layers as one stage. They are an execution detail of
``Model``: the layers stay in the model (summary, parameter names, ``Model.forward`` and
``Model.backward`` use them one by one) and the stages compute the same values.

``ConvMaxPool``: ``conv2d [-> relu] -> maxpool2d`` with non-overlapping pooling tiles that
cover the conv output exactly. The conv's unrolled input is laid out with rows in
``(n, pool_dy, pool_dx, oh/ph, ow/pw)`` order, so the conv output of each image is ``ph * pw``
contiguous blocks and max-pooling is an element-wise ``np.maximum`` of those blocks (a
reduction over a short middle axis is many times slower). The bias and ReLU are applied after
pooling (both commute with max: ``max(y) + b = max(y + b)``, ``max(relu(y)) = relu(max(y))``),
on a quarter of the values. Backward follows the maxpool layer's rule: the gradient goes to
every input equal to its window's max, and through the ReLU only where the pooled value is > 0
(exactly the gradient of the unfused layers, ties included).

Checked against the plain layers (forward values, every gradient) and by finite differences
in ``tests/test_fastpaths.py``.
"""

from __future__ import annotations

import numpy as np

from .activations import ReLU
from .base import Buffers
from .conv import Conv2D
from .pool import MaxPool2D


def can_fuse_conv_pool(conv, pool) -> bool:
    """True when ``pool`` tiles ``conv``'s output exactly with the all-maxima gradient rule."""
    if not (isinstance(conv, Conv2D) and isinstance(pool, MaxPool2D)):
        return False
    if type(conv).forward is not Conv2D.forward or type(pool).forward is not MaxPool2D.forward:
        return False  # a subclass that changes the maths
    if not pool._tiled or getattr(pool, "ties", "all") not in ("all", "every", "post"):
        return False
    oh, ow, _ = conv.output_shape
    return oh % pool.ph == 0 and ow % pool.pw == 0


class ConvMaxPool:
    """One stage computing ``pool(relu(conv(x)))`` (``relu`` optional)."""

    def __init__(self, conv: Conv2D, pool: MaxPool2D, relu: ReLU | None = None):
        self.conv, self.pool, self.relu = conv, pool, relu
        self.layers = [conv] + ([relu] if relu is not None else []) + [pool]
        self._bufs = Buffers()

    def replica(self, conv_replica):
        r = object.__new__(ConvMaxPool)
        r.__dict__.update(self.__dict__)
        r.conv, r._bufs = conv_replica, Buffers()
        r.layers = [conv_replica] + r.layers[1:]
        return r

    @property
    def needs_input_grad(self) -> bool:
        return self.conv.needs_input_grad

    def forward(self, x, training=False):
        conv, pool = self.conv, self.pool
        ph, pw = pool.ph, pool.pw
        x, self._pad = conv._pad_input(x)
        self._xshape = x.shape
        n = x.shape[0]
        oh, ow, f = conv.output_shape
        q = (oh // ph) * (ow // pw)
        cols = conv.im2col(x, pool=(ph, pw))
        y = self._bufs.get("y", (n, ph * pw, q, f), x.dtype)
        np.matmul(cols, conv.params["W"].reshape(-1, f), out=y.reshape(-1, f))
        m = self._bufs.get("m", (n, q, f), x.dtype)
        np.maximum(y[:, 0], y[:, 1], out=m) if ph * pw > 1 else np.copyto(m, y[:, 0])
        for k in range(2, ph * pw):
            np.maximum(m, y[:, k], out=m)
        out = m
        if conv.use_bias:
            out = np.add(m, conv.params["b"], out=self._bufs.get("out", m.shape, m.dtype))
        if self.relu is not None:
            out = np.maximum(out, 0, out=out if out is not m else self._bufs.get("out", m.shape, m.dtype))
        self._cols, self._y, self._m, self._out = cols, y, m, out
        # the conv layer's own backward can follow this forward too (it reorders dy itself)
        conv._cols, conv._cols_pool, conv._xshape, conv._pad = cols, (ph, pw), self._xshape, self._pad
        return out.reshape(n, oh // ph, ow // pw, f)

    def backward(self, dout):
        conv = self.conv
        n = dout.shape[0]
        y, m = self._y, self._m
        f = y.shape[-1]
        d = dout.reshape(m.shape)
        if self.relu is not None:
            d = np.multiply(d, self._out > 0, out=self._bufs.get("d", m.shape, m.dtype))
        dy = self._bufs.get("dy", y.shape, y.dtype)
        if conv.use_bias:  # compare as the unfused layers do, after adding the bias (same ties)
            np.add(y, conv.params["b"], out=dy)
            np.equal(dy, np.add(m, conv.params["b"])[:, None], out=dy, casting="unsafe")
        else:  # 1 where an input equals its window's max
            np.equal(y, m[:, None], out=dy, casting="unsafe")
        np.multiply(dy, d[:, None], out=dy)
        dy2 = dy.reshape(-1, f)
        conv.weight_grad(self._cols, dy2)
        if not conv.needs_input_grad:
            return None
        dcols = dy2 @ conv.params["W"].reshape(-1, f).T
        dx = conv.col2im(dcols, self._xshape, pool=(self.pool.ph, self.pool.pw))
        pt, pl, h, w = self._pad
        return dx[:, pt:pt + h, pl:pl + w, :]
