"""Winograd F(2, 3) along the width: the products of a stride-1 conv with three-column kernels
with 1.5x fewer multiplications than the unrolled (im2col) product.

For two output columns ``2v, 2v+1``, the input columns ``d_k = x[:, 2v + k]`` (k = 0..3) and a
kernel row's three taps ``g0, g1, g2`` (C x F matrices):

    m0 = (d0 - d2) g0      m1 = (d1 + d2) (g0 + g1 + g2) / 2
    m3 = (d1 - d3) g2      m2 = (d2 - d1) (g0 - g1 + g2) / 2
    y[2v] = m0 + m1 + m2   y[2v + 1] = m1 - m2 - m3

(four products where the direct form has six). The kernel rows are summed by the products
themselves, as in the unrolled conv: row ``(n, oh, v)`` of ``V_k`` holds ``KH x C`` values, and
``m_k = V_k @ U_k`` with ``U_k`` the transformed taps of all kernel rows, ``(KH*C, F)``.

Backward, with ``dy0, dy1`` the gradients of the even and odd output columns: ``dm0 = dy0``,
``dm1 = dy0 + dy1``, ``dm2 = dy0 - dy1``, ``dm3 = -dy1``; ``dU_k = V_k.T @ dm_k`` gives ``dW``
by the filter transform's transpose, and ``dV_k = dm_k @ U_k.T`` gives ``dx`` by the input
transform's transpose (``dd0 = dV0``, ``dd1 = dV1 - dV2 + dV3``, ``dd2 = dV1 + dV2 - dV0``,
``dd3 = -dV3``, each added to its input column). The bias gradient is the column sum of ``dm1``.

Everything runs in chunks of images whose temporaries stay in the core's cache; only ``V``
(the transformed input, read again by ``dW``) is kept for the whole batch. Which convs use this
path, and the chunk size, come from measurements (benchmarks/NOTES.md).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import fused
from .buffers import Buffers

#: product rows (output positions / 2) per chunk of images
CHUNK_ROWS = 1152
#: fewest input channels, filters, and channels x filters for which the path is used (it lost
#: where the products are small against the transforms' array passes)
MIN_CHANNELS, MIN_FILTERS, MIN_CHANNELS_X_FILTERS = 16, 32, 1024
#: fewest images in a call (one image: the transforms' many small passes cost more than they save)
MIN_IMAGES = 2


def applies(kw: int, strides: tuple, ow: int, c: int, f: int, blocks) -> bool:
    """Whether a conv with these settings runs on this path."""
    return (kw == 3 and strides == (1, 1) and ow % 2 == 0 and blocks in (None, (2, 2))
            and c >= MIN_CHANNELS and f >= MIN_FILTERS and c * f >= MIN_CHANNELS_X_FILTERS)


class WinogradF23:
    """The products of one conv stage (KH x 3 kernel, C -> F channels, output OH x OW, stride 1)
    with their buffers. ``forward`` takes the padded input (N, OH + KH - 1, OW + 2, C) and
    weights (KH, 3, C, F); ``backward`` reads the transformed input and weights it kept."""

    def __init__(self, kh: int, c: int, f: int, oh: int, ow: int, blocks):
        self.kh, self.c, self.f, self.oh, self.ow = kh, c, f, oh, ow
        self.blocked = blocks is not None
        self.v = ow // 2
        self.rows = oh * self.v  # product rows per image
        self.k = kh * c
        self.chunk = max(1, CHUNK_ROWS // self.rows)
        self.bufs = Buffers()

    def _inputs(self, xp):
        """``d_k[n, oh, v, i, c] = xp[n, oh + i, 2v + k, c]`` for k = 0..3 (views)."""
        n = len(xp)
        s0, s1, s2, s3 = xp.strides
        return [as_strided(xp[:, :, k:], (n, self.oh, self.v, self.kh, self.c), (s0, s1, 2 * s2, s1, s3),
                           writeable=False) for k in range(4)]

    def _columns(self, y):
        """The even and odd output columns of ``y`` (plain (N, OH, OW, F) or in 2x2 blocks), as
        views shaped like a product's rows reshaped: (N, OH, V, F) or (N, OH/2, 2, V, F)."""
        if not self.blocked:
            o = y.reshape(len(y), self.oh, self.v, 2, self.f)
            return o[:, :, :, 0], o[:, :, :, 1]
        o = y.transpose(0, 2, 3, 1, 4, 5)  # (n, b, u, a, v, F): column 2v + b, row 2u + a
        return o[:, 0], o[:, 1]

    def _transform_weights(self, W):
        """``U`` (4, KH*C, F) from ``W`` (KH, 3, C, F)."""
        U = self.bufs.get("U", (4, self.kh, self.c, self.f), W.dtype)
        g0, g1, g2 = W[:, 0], W[:, 1], W[:, 2]
        np.copyto(U[0], g0)
        np.add(g0, g2, out=U[1])
        np.subtract(U[1], g1, out=U[2])
        U[1] += g1
        U[1:3] *= 0.5
        np.copyto(U[3], g2)
        self.U = U.reshape(4, self.k, self.f)

    def forward(self, xp, W, b, y):
        """``y`` (the conv's output buffer, plain or blocked) from the padded input ``xp``."""
        n, r, dt = len(xp), self.rows, xp.dtype
        self._transform_weights(W)
        # (4, rows, K), kept in a flat buffer (so that fewer rows reuse it, see Buffers)
        self.V = V = self.bufs.get("V", (4 * n * r * self.k,), dt).reshape(4, n * r, self.k)
        M = self.bufs.get("M", (4, self.chunk * r, self.f), dt)
        k = fused.kernels()
        d = None if k else self._inputs(xp)  # the numpy passes' views
        for a in range(0, n, self.chunk):
            e = min(n, a + self.chunk)
            m = (e - a) * r
            Vc = V[:, a * r:e * r]
            v = Vc.reshape(4, e - a, self.oh, self.v, self.kh, self.c)
            if k:
                k["input"](xp[a:e], v)
            else:
                d0, d1, d2, d3 = (dk[a:e] for dk in d)
                np.subtract(d0, d2, out=v[0])
                np.add(d1, d2, out=v[1])
                np.subtract(d2, d1, out=v[2])
                np.subtract(d1, d3, out=v[3])
            Mc = M[:, :m]
            np.matmul(Vc, self.U, out=Mc)
            y0, y1 = self._columns(y[a:e])
            if k:
                y0, y1 = self._five(y0), self._five(y1)
                k["output"](Mc.reshape((4,) + y0.shape), y0, y1, b if b is not None else Mc[0, 0], b is not None)
                continue
            m0, m1, m2, m3 = (x.reshape(y0.shape) for x in Mc)
            np.add(m0, m1, out=y0)
            y0 += m2
            np.subtract(m1, m2, out=y1)
            y1 -= m3
            if b is not None:
                y[a:e] += b
        return y

    def _five(self, c):
        """A column view as (N, U, A, V, F): rows 2u + a of a blocked output, A = 1 for a plain one."""
        return c if c.ndim == 5 else c[:, :, None]

    def backward(self, dy, gW, gb, dxp):
        """``gW`` (KH, 3, C, F) and ``gb`` (F,) or None from ``dy`` (laid out as the output);
        the input gradient into ``dxp`` (the padded input's shape). Never a first stage's, so
        there is always an input gradient to compute."""
        n, r, dt = len(dy), self.rows, dy.dtype
        DM = self.bufs.get("DM", (4, self.chunk * r, self.f), dt)
        dU = self.bufs.get("dU", (4, self.k, self.f), dt)
        dUc = self.bufs.get("dUc", (4, self.k, self.f), dt)
        ones = self.bufs.get("ones", (self.chunk * r,), dt, fill=lambda a: a.fill(1))
        if gb is not None:
            gb[...] = 0
        k = fused.kernels()
        dV = self.bufs.get("dV", (4, self.chunk * r, self.k), dt)
        dd = self.bufs.get("dd", (2, self.chunk * r, self.k), dt)
        for a in range(0, n, self.chunk):
            e = min(n, a + self.chunk)
            m = (e - a) * r
            dy0, dy1 = self._columns(dy[a:e])
            D = DM[:, :m]
            if k:
                dy0, dy1 = self._five(dy0), self._five(dy1)
                k["dm"](dy0, dy1, D.reshape((4,) + dy0.shape))
            else:
                d0, d1, d2, d3 = (x.reshape(dy0.shape) for x in D)
                np.copyto(d0, dy0)
                np.add(dy0, dy1, out=d1)
                np.subtract(dy0, dy1, out=d2)
                np.copyto(d3, dy1)  # dm3 = -dy1: the sign goes to dU3 and dV3 below
            np.matmul(self.V[:, a * r:e * r].transpose(0, 2, 1), D, out=dU if a == 0 else dUc)
            if a:
                dU += dUc
            if gb is not None:
                gb += ones[:m] @ D[1]
            self._input_grad(D, dV[:, :m], dd[:, :m], dxp[a:e])
        dU = dU.reshape(4, self.kh, self.c, self.f)
        s = np.add(dU[1], dU[2], out=dUc.reshape(4, self.kh, self.c, self.f)[0])
        s *= 0.5
        np.add(dU[0], s, out=gW[:, 0])
        np.subtract(s, dU[3], out=gW[:, 2])
        np.subtract(dU[1], dU[2], out=gW[:, 1])
        gW[:, 1] *= 0.5

    def _input_grad(self, D, dV, dd, dxp):
        np.matmul(D, self.U.transpose(0, 2, 1), out=dV)  # dV[3] holds -dV3
        k = fused.kernels()
        if k:
            return k["input_grad"](dV.reshape(4, len(dxp), self.oh, self.v, self.kh, self.c), dxp, dxp.dtype.type(0))
        np.subtract(dV[1], dV[2], out=dd[0])  # dd1 = dV1 - dV2 + dV3
        dd[0] -= dV[3]
        np.add(dV[1], dV[2], out=dd[1])  # dd2 = dV1 + dV2 - dV0
        dd[1] -= dV[0]
        dxp[...] = 0
        shape = (len(dxp), self.oh, self.v, self.kh, self.c)
        for k, src in enumerate((dV[0], dd[0], dd[1], dV[3])):  # dd3 = -dV3
            s = src.reshape(shape)
            for i in range(self.kh):
                dxp[:, i:i + self.oh, k:k + self.ow:2] += s[:, :, :, i]
