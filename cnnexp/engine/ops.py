"""Element-wise activations and pooling as in-place operations on buffers a stage owns.

``ActOp`` and ``PoolOp`` compute what ``cnnexp.layers`` ReLU/Tanh/Sigmoid and
MaxPool2D/AvgPool2D compute (same values, same tie rule for max pooling: the gradient goes to
every input equal to its window's max), without temporaries per call.
"""

from __future__ import annotations

import numpy as np

from ..layers.activations import ReLU, Sigmoid, Tanh
from ..layers.pool import AvgPool2D, MaxPool2D
from . import fused
from .buffers import Buffers


class ActOp:
    """``forward(y)`` applies the activation to ``y`` in place and keeps it; ``backward(dy,
    out)`` writes ``dy * f'(.)`` into ``out`` (which may be ``dy``)."""

    KINDS = {ReLU: "relu", Tanh: "tanh", Sigmoid: "sigmoid"}

    def __init__(self, kind: str):
        self.kind = kind
        self.bufs = Buffers()

    @classmethod
    def of(cls, layer):
        """The op for a built-in activation layer (exact type), else None."""
        kind = cls.KINDS.get(type(layer))
        return cls(kind) if kind else None

    def forward(self, y):
        if self.kind == "relu":
            k = fused.kernels() if y.size >= fused.MIN_SIZE and y.flags.c_contiguous else None
            if k:
                k["relu"](y.reshape(-1), y.dtype.type(1))
            else:
                np.maximum(y, 0, out=y)
        elif self.kind == "tanh":
            np.tanh(y, out=y)
        else:  # sigmoid as 0.5 * tanh(y / 2) + 0.5 (the same function; numpy's tanh costs less
            # than exp plus a division): four in-place passes, no overflow
            np.multiply(y, 0.5, out=y)
            np.tanh(y, out=y)
            np.multiply(y, 0.5, out=y)
            np.add(y, 0.5, out=y)
        self.y = y
        return y

    def backward(self, dy, out):
        y = self.y
        k = fused.kernels() if self.kind == "relu" and y.size >= fused.MIN_SIZE else None
        if k and y.flags.c_contiguous and dy.flags.c_contiguous and out.flags.c_contiguous:
            k["relu_backward"](dy.reshape(-1), y.reshape(-1), out.reshape(-1), y.dtype.type(1))
            return out
        if self.kind == "relu":
            return np.multiply(dy, np.greater(y, 0, out=self.bufs.get("m", y.shape, np.bool_)), out=out)
        t = self.bufs.get("t", y.shape, y.dtype)
        if self.kind == "tanh":
            np.multiply(y, y, out=t)
            np.subtract(1, t, out=t)
        else:
            np.subtract(1, y, out=t)
            t *= y
        return np.multiply(dy, t, out=out)


def avg_act_backward(y, g, d, act) -> bool:
    """``d = (g / K) * act'`` for an average pool over K blocks, ``y`` and ``d`` (N, K, rest),
    ``g`` (N, rest), when ``act`` (the ``ActOp`` whose output ``y`` is) is a tanh or sigmoid and
    the compiled loops run: one pass, the same numbers as the pool's and activation's passes.
    False (nothing written) otherwise."""
    f = fused.kernels() if act.kind != "relu" and d.size >= fused.MIN_SIZE else None
    if not (f and y.flags.c_contiguous and d.flags.c_contiguous):
        return False
    g = np.ascontiguousarray(g)  # a loop over a strided view runs without SIMD
    f["avg_act_backward"](y, g, d, y.dtype.type(y.shape[1]), 1 if act.kind == "tanh" else 2, y.dtype.type(1))
    return True


class PoolOp:
    """Max or average pooling of NHWC arrays: one view per window offset (an element-wise
    maximum or sum of ``PH*PW`` views, never a reduction over a short strided axis). For input
    a conv stage lays out in blocks (see ``phases``) each view is a slice of one block, made of
    contiguous runs; for a pool tiling its input exactly it is a whole block, and pooling is
    one reduction over the block axis."""

    def __init__(self, layer, blocked: bool = False):
        self.kind = "max" if type(layer) is MaxPool2D else "avg"
        #: input laid out in blocks (N, SH, SW, H/SH, W/SW, C) by a conv stage (``phases``)
        self.blocked = blocked
        self.ph, self.pw, self.sh, self.sw = layer.ph, layer.pw, layer.sh, layer.sw
        self.in_shape, self.out_shape = layer.input_shape, layer.output_shape
        h, w, _ = self.in_shape
        qh, qw, _ = self.out_shape
        # every input read exactly once: backward can assign instead of accumulate
        self.exact = (self.sh, self.sw) == (self.ph, self.pw) and (qh * self.ph, qw * self.pw) == (h, w)
        self.bufs = Buffers()

    @staticmethod
    def accepts(layer) -> bool:
        return type(layer) in (MaxPool2D, AvgPool2D)

    def phases(self) -> tuple[int, int] | None:
        """The blocks ``(SH, SW)`` a conv stage should lay out its output (this pool's input) in:
        input position (u * SH + a, v * SW + b) goes to block (a, b), row (u, v). None when
        blocks do not pay (stride 1) or do not fit (sides not multiples of the strides)."""
        h, w, _ = self.in_shape
        if (self.sh, self.sw) == (1, 1) or h % self.sh or w % self.sw:
            return None
        return self.sh, self.sw

    def _slices(self, a):
        """The window offsets' views: strided slices of an (N, H, W, C) array, or slices of
        one block each of a blocked one."""
        qh, qw, _ = self.out_shape
        sh, sw = self.sh, self.sw
        for i in range(self.ph):
            for j in range(self.pw):
                if self.blocked:
                    u, v = i // sh, j // sw
                    yield a[:, i % sh, j % sw, u:u + qh, v:v + qw, :]
                else:
                    yield a[:, i:i + sh * qh:sh, j:j + sw * qw:sw, :]

    def forward(self, y):
        n = len(y)
        out = self.bufs.get("out", (n,) + self.out_shape, y.dtype)
        ufunc = np.maximum if self.kind == "max" else np.add
        if self.blocked and self.exact:  # one reduction over the (PH*PW) blocks, the long axis innermost
            ufunc.reduce(y.reshape(n, self.ph * self.pw, -1), axis=1, out=out.reshape(n, -1))
        else:
            views = self._slices(y)
            np.copyto(out, next(views))
            for v in views:
                ufunc(out, v, out=out)
        if self.kind == "avg":
            out /= self.ph * self.pw  # mean = sum / count, as the layer's mean
        self.y, self.out = y, out
        return out

    def backward(self, dout, then=None):
        """The gradient of the pool's input, in a buffer of the pool's; ``then``: the ``ActOp``
        before the pool, whose gradient is applied to it too (one compiled pass for a tanh or
        sigmoid before an average pool in blocks, else the activation's own passes)."""
        y = self.y
        dy = self.bufs.get("dy", y.shape, y.dtype, zero=not self.exact)
        if then is not None and self.kind == "avg" and self.blocked and self.exact:
            n, k = len(y), self.ph * self.pw
            if avg_act_backward(y.reshape(n, k, -1), dout.reshape(n, -1), dy.reshape(n, k, -1), then):
                return dy
        dy = self._backward(y, dy, dout)
        return dy if then is None else then.backward(dy, dy)

    def _backward(self, y, dy, dout):
        if self.blocked and self.exact:
            return self._blocked_backward(y, dy, dout)
        if self.kind == "avg":
            g = np.divide(dout, self.ph * self.pw, out=self.bufs.get("g", dout.shape, dout.dtype))
            for d in self._slices(dy):
                if self.exact:
                    np.copyto(d, g)
                else:
                    d += g
            return dy
        m = self.bufs.get("m", dout.shape, np.bool_)
        t = None if self.exact else self.bufs.get("t", dout.shape, dout.dtype)
        for v, d in zip(self._slices(y), self._slices(dy)):
            np.equal(v, self.out, out=m)
            if self.exact:
                np.multiply(m, dout, out=d)
            else:
                d += np.multiply(m, dout, out=t)
        return dy

    def _blocked_backward(self, y, dy, dout):
        """Backward over the (N, PH*PW, rest) block view: two whole-array passes."""
        n, k = len(y), self.ph * self.pw
        d3, g = dy.reshape(n, k, -1), dout.reshape(n, 1, -1)
        if self.kind == "avg":
            np.divide(g, k, out=d3[:, :1])
            d3[:, 1:] = d3[:, :1]
            return dy
        f = fused.kernels() if dy.size >= fused.MIN_SIZE else None
        if f and y.flags.c_contiguous and self.out.flags.c_contiguous and dout.flags.c_contiguous:
            f["max_pool_backward"](y.reshape(n, k, -1), self.out.reshape(n, -1), dout.reshape(n, -1), d3, y.dtype.type(1))
            return dy
        m = self.bufs.get("m3", d3.shape, np.bool_)
        np.equal(y.reshape(n, k, -1), self.out.reshape(n, 1, -1), out=m)
        np.multiply(m, g, out=d3)
        return dy
