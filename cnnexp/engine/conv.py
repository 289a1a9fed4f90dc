"""The conv stage: ``conv2d``, optionally followed by an activation and a pool, as one stage
with its own buffers.

Forward: pad into a kept zero-bordered buffer, unroll into a kept ``cols`` buffer (for one
input channel a single ``np.take`` with a precomputed index, else one strided copy), one
product into a kept output buffer, bias, activation and pooling in place. Backward: pooling
and activation gradients into kept buffers, ``dW = cols.T @ dy`` (in row chunks: thin products
slow down past a few thousand rows), ``db`` as a matrix-vector product, and ``dx`` as one
batched product per kernel offset plus one shifted add of whole rows per offset.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..layers.conv import windows
from .buffers import Buffers

#: rows per chunk of the thin weight-gradient product
CHUNK_ROWS = 8192


def thin_matmul_tn(a: np.ndarray, b: np.ndarray, out: np.ndarray, chunk: int = CHUNK_ROWS) -> np.ndarray:
    """``out[...] = a.T @ b`` for tall ``a`` (rows x K) and ``b`` (rows x F), in row chunks."""
    rows = a.shape[0]
    if rows <= chunk or min(a.shape[1], b.shape[1]) > 32:
        return np.matmul(a.T, b, out=out)
    tmp = np.empty_like(out)
    np.matmul(a[:chunk].T, b[:chunk], out=out)
    for s in range(chunk, rows, chunk):
        np.matmul(a[s:s + chunk].T, b[s:s + chunk], out=tmp)
        out += tmp
    return out


class ConvStage:
    def __init__(self, conv, grads: dict, act=None, pool=None, first: bool = False):
        self.W, self.b = conv.params["W"], conv.params.get("b")
        self.gW, self.gb = grads[f"{conv.name}.W"], grads.get(f"{conv.name}.b")
        self.kh, self.kw, self.sh, self.sw = conv.kh, conv.kw, conv.sh, conv.sw
        h, w, self.c = conv.input_shape
        (self.pt, pb), (self.pl, pr) = conv.pads(h, w)
        self.hw, self.hpwp = (h, w), (h + self.pt + pb, w + self.pl + pr)
        self.padded = (self.pt, pb, self.pl, pr) != (0, 0, 0, 0)
        self.oh, self.ow, self.f = conv.output_shape
        self.act, self.pool, self.first = act, pool, first
        # a pool tiling the conv output exactly reads it in blocks: rows of ``cols`` (and of the
        # output) are ordered (n, a, b, oh/ph, ow/pw), so window offset (a, b) of every pooling
        # tile is one contiguous block and pooling is an element-wise max/sum of blocks
        self.blocks = (pool.ph, pool.pw) if pool is not None and pool.exact else None
        if self.blocks:
            pool.blocked = True
        self.bufs = Buffers()
        self.idx = self._take_index() if self.c == 1 else None

    def _windows(self, x):
        """The kernel windows of ``x`` in ``cols`` row order: (N, OH, OW, KH, KW, C), or
        (N, PH, PW, OH/PH, OW/PW, KH, KW, C) in blocks."""
        if self.blocks is None:
            return windows(x, self.kh, self.kw, self.sh, self.sw)
        ph, pw = self.blocks
        n, _, _, c = x.shape
        s0, s1, s2, s3 = x.strides
        sh, sw = self.sh, self.sw
        return as_strided(x, (n, ph, pw, self.oh // ph, self.ow // pw, self.kh, self.kw, c),
                          (s0, s1 * sh, s2 * sw, s1 * sh * ph, s2 * sw * pw, s1, s2, s3), writeable=False)

    def _take_index(self):
        """Flat per-image index into the padded input of every ``cols`` entry (one channel)."""
        hp, wp = self.hpwp
        probe = np.arange(hp * wp, dtype=np.intp).reshape(1, hp, wp, 1)
        return np.ascontiguousarray(self._windows(probe)).reshape(-1)

    def _unroll(self, x):
        n = len(x)
        if self.padded:
            h, w = self.hw
            xp = self.bufs.get("xp", (n,) + self.hpwp + (self.c,), x.dtype, zero="new")
            xp[:, self.pt:self.pt + h, self.pl:self.pl + w, :] = x
            x = xp
        cols = self.bufs.get("cols", (n * self.oh * self.ow, self.kh * self.kw * self.c), x.dtype)
        if self.idx is not None and x.flags.c_contiguous:
            np.take(x.reshape(n, -1), self.idx, axis=1, out=cols.reshape(n, -1), mode="clip")
        else:
            v = self._windows(x)
            np.copyto(cols.reshape(v.shape), v)
        return cols

    def forward(self, x, training=False):
        n = len(x)
        self.cols = cols = self._unroll(x)
        y = self.bufs.get("y", (n * self.oh * self.ow, self.f), x.dtype)
        np.matmul(cols, self.W.reshape(-1, self.f), out=y)
        if self.b is not None:
            y += self.b
        y = y.reshape((n, self.oh, self.ow, self.f) if self.blocks is None else
                      (n,) + self.blocks + (self.oh // self.blocks[0], self.ow // self.blocks[1], self.f))
        if self.act is not None:
            self.act.forward(y)
        return self.pool.forward(y) if self.pool is not None else y

    def backward(self, dy):
        if self.pool is not None:
            dy = self.pool.backward(dy)  # a buffer of the pool's: the activation may write into it
            if self.act is not None:
                dy = self.act.backward(dy, dy)
        elif self.act is not None:
            dy = self.act.backward(dy, self.bufs.get("dact", dy.shape, dy.dtype))
        dy2 = np.ascontiguousarray(dy).reshape(-1, self.f)
        thin_matmul_tn(self.cols, dy2, self.gW.reshape(-1, self.f))
        if self.gb is not None:
            np.matmul(np.ones(len(dy2), dy2.dtype), dy2, out=self.gb)
        return None if self.first else self._input_grad(dy2)

    def _input_grad(self, dy2):
        """dL/dx: ``dy2 @ W[i, j].T`` for every kernel offset in one batched product, each
        added to its shifted window of the padded input (whole rows at a time)."""
        kk, c, n = self.kh * self.kw, self.c, len(dy2) // (self.oh * self.ow)
        wk = self.bufs.get("wk", (kk, self.f, c), dy2.dtype)
        np.copyto(wk.reshape(self.kh, self.kw, self.f, c), self.W.transpose(0, 1, 3, 2))
        t = self.bufs.get("t", (kk, len(dy2), c), dy2.dtype)
        np.matmul(dy2[None], wk, out=t)
        dxp = self.bufs.get("dxp", (n,) + self.hpwp + (c,), dy2.dtype, zero=True)
        sh, sw = self.sh, self.sw
        if self.blocks is None:
            t = t.reshape(kk, n, self.oh, self.ow, c)
            oh, ow = self.oh, self.ow
            for i in range(self.kh):
                for j in range(self.kw):
                    dxp[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :] += t[i * self.kw + j]
        else:
            ph, pw = self.blocks
            qh, qw = self.oh // ph, self.ow // pw
            t = t.reshape(kk, n, ph, pw, qh, qw, c)
            for a in range(ph):
                for b in range(pw):
                    for i in range(self.kh):
                        for j in range(self.kw):
                            r, q = a * sh + i, b * sw + j
                            dxp[:, r:r + sh * ph * qh:sh * ph, q:q + sw * pw * qw:sw * pw, :] += t[i * self.kw + j, :, a, b]
        h, w = self.hw
        return dxp[:, self.pt:self.pt + h, self.pl:self.pl + w, :] if self.padded else dxp
