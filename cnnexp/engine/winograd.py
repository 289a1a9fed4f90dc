"""Winograd F(M, R) along the width: the products of a stride-1 conv with R = 3 or 5 kernel
columns with fewer multiplications than the unrolled (im2col) product (per kernel row and group
of M output columns: F(2, 3) 4 where it takes 6, F(4, 3) 6 where it takes 12, F(2, 5) 6 for 10).

M output columns ``Mv + i`` come from the ``M + R - 1`` input columns ``d_j = x[:, Mv + j]`` and
a kernel row's ``R`` taps ``g_j`` (C x F matrices) through three small matrices of
``TRANSFORMS`` (Lavin and Gray's construction, evaluation points 0, +-1 (and +-2 for F(4, 3) and
F(2, 5)), and infinity):

    V_k = sum_j BT[k, j] d_j      U_k = sum_j G[k, j] g_j      m_k = V_k U_k
    y[Mv + i] = sum_k AT[i, k] m_k

For F(2, 3) that is ``m0 = (d0 - d2) g0``, ``m1 = (d1 + d2)(g0 + g1 + g2)/2``,
``m2 = (d2 - d1)(g0 - g1 + g2)/2``, ``m3 = (d3 - d1) g2``, ``y[2v] = m0 + m1 + m2``,
``y[2v + 1] = m1 - m2 + m3``. The kernel rows are summed by the products themselves, as in the
unrolled conv: row ``(n, oh, v)`` of ``V_k`` holds ``KH x C`` values, and ``m_k = V_k @ U_k``
with ``U_k`` the transformed taps of all kernel rows, ``(KH*C, F)``.

Backward is the transpose of each step: ``dm_k = sum_i AT[i, k] dy_i`` (``dy_i`` the gradient of
output column ``Mv + i``), ``dU_k = V_k.T @ dm_k`` and ``dW_j = sum_k G[k, j] dU_k``;
``dV_k = dm_k @ U_k.T`` and ``dx`` gets ``sum_k BT[k, j] dV_k`` added at column ``Mv + j``. The
bias gradient is the column sum of ``dm_1``, the sum of the M outputs' gradients.

Everything runs in chunks of images whose temporaries stay in the core's cache; only ``V``
(the transformed input, read again by ``dW``) is kept for the whole batch. The element-wise
steps run as compiled loops (``fused.py``) or, without them, as numpy passes (``_combine``) that
give the same numbers. Which convs use this path, and the chunk size, come from measurements
(benchmarks/NOTES.md).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import fused
from .buffers import Buffers

#: per (outputs M, kernel width R): (AT (M, M + R - 1), BT (M + R - 1, M + R - 1), G (M + R - 1, R));
#: the compiled loops (``fused.py``) spell out the same sums in the same order. F(4, 3) and
#: F(2, 5) share their evaluation points, so their input transforms (BT) are the same.
_BT6 = np.array([[4, 0, -5, 0, 1, 0], [0, 4, 4, -1, -1, 0], [0, -4, 4, 1, -1, 0],
                 [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], float)
TRANSFORMS = {
    (2, 3): (np.array([[1, 1, 1, 0], [0, 1, -1, 1]], float),
             np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]], float),
             np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])),
    (4, 3): (np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], float),
             _BT6,
             np.array([[1 / 4, 0, 0], [1 / 6, 1 / 6, 1 / 6], [1 / 6, -1 / 6, 1 / 6], [1 / 24, 1 / 12, 1 / 6],
                       [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])),
    (2, 5): (np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1]], float),
             _BT6,
             np.array([[1 / 4, 0, 0, 0, 0], [1 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6], [1 / 6, -1 / 6, 1 / 6, -1 / 6, 1 / 6],
                       [1 / 24, 1 / 12, 1 / 6, 1 / 3, 2 / 3], [1 / 24, -1 / 12, 1 / 6, -1 / 3, 2 / 3], [0, 0, 0, 0, 1]])),
}
#: output positions / 2 per chunk of images
CHUNK_ROWS = 1152
#: per transform: fewest input channels, filters, and channels x filters for which the path is
#: used (it lost where the products are small against the transforms' passes; benchmarks/NOTES.md)
MIN_CHANNELS = {(2, 3): 16, (4, 3): 8, (2, 5): 4}
MIN_FILTERS = {(2, 3): 32, (4, 3): 8, (2, 5): 8}
MIN_CHANNELS_X_FILTERS = {(2, 3): 1024, (4, 3): 256, (2, 5): 64}
#: fewest images in a call (one image: the transforms' many small passes cost more than they save)
MIN_IMAGES = 2
#: F(4, 3) for three kernel columns where the output width allows it (else F(2, 3))
FOUR = True


def variant(kw: int, ow: int) -> tuple | None:
    """``(M, R)``: the transform for a conv of ``kw`` kernel columns and ``ow`` output columns."""
    if kw == 3 and ow % 4 == 0 and FOUR:
        return 4, 3
    return (2, kw) if (2, kw) in TRANSFORMS and ow % 2 == 0 else None


def applies(kw: int, strides: tuple, ow: int, c: int, f: int, blocks) -> bool:
    """Whether a conv with these settings runs on this path."""
    v = variant(kw, ow)
    return (v is not None and strides == (1, 1) and blocks in (None, (2, 2))
            and c >= MIN_CHANNELS[v] and f >= MIN_FILTERS[v] and c * f >= MIN_CHANNELS_X_FILTERS[v])


def _combine(out, terms, tmp):
    """``out = sum(c * s for c, s in terms)`` (no zero ``c``), in order, as the compiled loops
    compute it: a coefficient of +-1 adds or subtracts, another multiplies first (into ``tmp``)."""
    (c, s), rest = terms[0], terms[1:]
    if c == 1:
        np.copyto(out, s)
    elif c == -1:
        np.negative(s, out=out)
    else:
        np.multiply(s, c, out=out)
    for c, s in rest:
        if c == 1:
            out += s
        elif c == -1:
            out -= s
        else:
            out += np.multiply(s, c, out=tmp)
    return out


def _terms(coefs, arrays) -> list:
    return [(c, a) for c, a in zip(coefs, arrays) if c != 0]


class Winograd:
    """The products of one conv stage (KH x R kernel, C -> F channels, output OH x OW, stride 1)
    with their buffers. ``forward`` takes the padded input (N, OH + KH - 1, OW + R - 1, C) and
    weights (KH, R, C, F); ``backward`` reads the transformed input and weights it kept."""

    def __init__(self, kh: int, kw: int, c: int, f: int, oh: int, ow: int, blocks):
        self.kh, self.kw, self.c, self.f, self.oh, self.ow = kh, kw, c, f, oh, ow
        self.m = variant(kw, ow)[0]  # output columns per group
        self.AT, self.BT, self.G = TRANSFORMS[(self.m, kw)]
        self.t = self.m + kw - 1  # products per group of output columns
        self.blocked = blocks is not None
        self.v = ow // self.m
        self.rows = oh * self.v  # product rows per image
        self.k = kh * c
        self.chunk = max(1, 2 * CHUNK_ROWS // (oh * ow))
        self.bufs = Buffers()

    def _inputs(self, xp):
        """``d_j[n, oh, v, i, c] = xp[n, oh + i, Mv + j, c]`` for j = 0..M + R - 2 (views)."""
        n = len(xp)
        s0, s1, s2, s3 = xp.strides
        return [as_strided(xp[:, :, j:], (n, self.oh, self.v, self.kh, self.c), (s0, s1, self.m * s2, s1, s3),
                           writeable=False) for j in range(self.t)]

    def _columns(self, y):
        """The even and odd output columns of ``y`` (plain (N, OH, OW, F) or in 2x2 blocks) as
        views (N, U, A, V, M/2, F): column ``Mv + 2i + {0, 1}`` of row ``2u + a`` (A = 1 and
        row u for a plain output)."""
        n, h, f = len(y), self.m // 2, self.f
        if not self.blocked:
            o = y.reshape(n, self.oh, 1, self.v, h, 2, f)
            return o[..., 0, :], o[..., 1, :]
        o = y.transpose(0, 2, 3, 1, 4, 5)  # (n, b, u, a, w, F): column 2w + b, row 2u + a
        return tuple(o[:, b].reshape(n, self.oh // 2, 2, self.v, h, f) for b in (0, 1))

    def _split(self, ye, yo) -> list:
        """The M output columns' views from ``_columns``' two."""
        return [(ye, yo)[i % 2][..., i // 2, :] for i in range(self.m)]

    def _transform_weights(self, W):
        """``U`` (M + R - 1, KH*C, F) from ``W`` (KH, R, C, F): one product with ``G``."""
        dt = W.dtype
        taps = self.bufs.get("taps", (self.kw, self.kh, self.c, self.f), dt)
        np.copyto(taps, W.transpose(1, 0, 2, 3))
        G = self.bufs.get("G", self.G.shape, dt, fill=lambda a: np.copyto(a, self.G))
        U = self.bufs.get("U", (self.t, self.k * self.f), dt)
        self.U = np.matmul(G, taps.reshape(self.kw, -1), out=U).reshape(self.t, self.k, self.f)

    def _block(self, key, a, e, width, dt, images=None):
        """Rows of images ``a:e`` of an (M + R - 1, rows, width) array kept in a flat buffer (of
        ``images`` images, default a chunk's), as a contiguous array: the compiled loops run
        far faster over contiguous arrays than over strided ones."""
        r, t = self.rows, self.t
        flat = self.bufs.get(key, (t * (images or self.chunk) * r * width,), dt)
        at = t * a * r * width if images else 0
        return flat[at:at + t * (e - a) * r * width].reshape(t, (e - a) * r, width)

    def forward(self, xp, W, b, y, keep: bool = True):
        """``y`` (the conv's output buffer, plain or blocked) from the padded input ``xp``;
        ``keep``: keep ``V`` (the transformed input) of the whole batch for a backward (else
        each chunk's overwrites the last's)."""
        n, t, dt = len(xp), self.t, xp.dtype
        self._transform_weights(W)
        self.n = n if keep else None
        k = fused.kernels()
        d = None if k else self._inputs(xp)  # the numpy passes' views
        for a in range(0, n, self.chunk):
            e = min(n, a + self.chunk)
            Vc, Mc = self._block("V", a, e, self.k, dt, self.n), self._block("M", a, e, self.f, dt)
            v = Vc.reshape(t, e - a, self.oh, self.v, self.kh, self.c)
            if k:
                k["input"](xp[a:e], v, self.m, dt.type(1))
            else:
                tmp = self.bufs.get("tmp", v.shape[1:], dt)
                for j in range(t):
                    _combine(v[j], _terms(self.BT[j], [dk[a:e] for dk in d]), tmp)
            np.matmul(Vc, self.U, out=Mc)
            ye, yo = self._columns(y[a:e])
            shape = ye.shape[:4] + (self.f,)
            if k:
                k["output"](Mc.reshape((t,) + shape), ye, yo, b if b is not None else Mc[0, 0], b is not None, dt.type(1))
                continue
            ms, tmp = [x.reshape(shape) for x in Mc], self.bufs.get("tmpy", shape, dt)
            for i, yi in enumerate(self._split(ye, yo)):
                _combine(yi, _terms(self.AT[i], ms), tmp)
            if b is not None:
                y[a:e] += b
        return y

    def backward(self, dy, gW, gb, dxp):
        """``gW`` (KH, R, C, F) and ``gb`` (F,) or None from ``dy`` (laid out as the output);
        the input gradient into ``dxp`` (the padded input's shape). Never a first stage's, so
        there is always an input gradient to compute."""
        n, r, t, dt = len(dy), self.rows, self.t, dy.dtype
        dU = self.bufs.get("dU", (t, self.k, self.f), dt)
        dUc = self.bufs.get("dUc", (t, self.k, self.f), dt)
        ones = self.bufs.get("ones", (self.chunk * r,), dt, fill=lambda a: a.fill(1))
        if gb is not None:
            gb[...] = 0
        k = fused.kernels()
        for a in range(0, n, self.chunk):
            e = min(n, a + self.chunk)
            de, do = self._columns(dy[a:e])
            shape = de.shape[:4] + (self.f,)
            D = self._block("DM", a, e, self.f, dt)
            if k:
                k["dm"](de, do, D.reshape((t,) + shape), dt.type(1))
            else:
                tmp, dys = self.bufs.get("tmpy", shape, dt), self._split(de, do)
                for j, dj in enumerate(D):
                    _combine(dj.reshape(shape), _terms(self.AT[:, j], dys), tmp)
            np.matmul(self._block("V", a, e, self.k, dt, self.n).transpose(0, 2, 1), D, out=dU if a == 0 else dUc)
            if a:
                dU += dUc
            if gb is not None:
                gb += ones[:(e - a) * r] @ D[1]  # dm_1: the sum of the M outputs' gradients
            self._input_grad(D, self._block("dV", a, e, self.k, dt), dxp[a:e])
        taps = self.bufs.get("dtaps", (self.kw, self.k * self.f), dt)
        np.matmul(self.bufs.get("G", self.G.shape, dt).T, dU.reshape(t, -1), out=taps)
        np.copyto(gW, taps.reshape(self.kw, self.kh, self.c, self.f).transpose(1, 0, 2, 3))

    def _input_grad(self, D, dV, dxp):
        np.matmul(D, self.U.transpose(0, 2, 1), out=dV)
        k, dt = fused.kernels(), dV.dtype
        shape = (self.t, len(dxp), self.oh, self.v, self.kh, self.c)
        if k:
            return k["input_grad"](dV.reshape(shape), dxp, self.m, dt.type(1))
        dxp[...] = 0
        dvs = dV.reshape(shape)
        dd, tmp = self.bufs.get("dd", shape, dt), self.bufs.get("tmp", shape[1:], dt)
        srcs = []  # sum_k BT[k, j] dV_k for every column offset j, then the adds in the loop's order:
        for j in range(self.t):  # kernel row i, then column offset j, both descending
            terms = _terms(self.BT[:, j], dvs)
            srcs.append(terms[0][1] if len(terms) == 1 and terms[0][0] == 1 else _combine(dd[j], terms, tmp))
        for i in reversed(range(self.kh)):
            for j in reversed(range(self.t)):
                dxp[:, i:i + self.oh, j:j + self.ow:self.m] += srcs[j][:, :, :, i]
