"""A plan's head, a one-channel conv with stride 1 (any kernel, padding, bias, and
activation) into a pool that tiles its output (pool size = pool stride, max or average), then a
flatten and a dense layer: the seed net's whole body. Computed as pool-window tiles, channel-first.

A tile is one pool window of the conv's output: PH x PW positions, which read a
(PH + KH - 1) x (PW + KW - 1) patch of the input. The patches are unrolled channel-first
(``cols``: one row per patch offset, one column per tile; see ``_unroll``), and one product
with a tile weight matrix (row (p, f): filter f at window position p, zero where the kernel
does not reach) gives every position's output, one block of F rows per window position.
Pooling is then an element-wise max or sum of PH*PW contiguous blocks, and the dense layer
reads the channel-first result through its weights regrouped by channel.

Against the conv stage (``conv.py``), which unrolls KH*KW values per output position into rows:
the seed net's 3x3 kernel and 2x2 pool unroll 16 values per 4 positions instead of 36, and the
product is one wide one instead of one with 8 columns, for 1.8x the multiplications
(benchmarks/NOTES.md, session 8). Chunks and training pieces of at least ``MIN_IMAGES`` images
run the head; smaller ones, and inputs unrolled ahead (``feed.py``), the conv stage.
"""

from __future__ import annotations

import numpy as np

from .buffers import Buffers
from .conv import ConvStage
from .ops import ActOp
from .stages import DenseStage, FlattenStage

#: fewest images a head runs tiled: below it the conv stage was as fast or faster (per-call
#: costs; benchmarks/NOTES.md, session 8)
MIN_IMAGES = 32
#: columns per chunk of the weight-gradient product (``TiledHead._weight_grad``)
CHUNK = 1024


class TiledHead:
    """Stands for a plan's first three stages (conv stage, flatten, dense stage)."""

    @staticmethod
    def applies(stages: list) -> bool:
        if len(stages) < 3 or not isinstance(stages[0], ConvStage):
            return False
        conv, pool = stages[0], stages[0].pool
        return (type(stages[1]) is FlattenStage and type(stages[2]) is DenseStage and conv.c == 1
                and pool is not None and (conv.sh, conv.sw) == (1, 1) and (pool.sh, pool.sw) == (pool.ph, pool.pw))

    def __init__(self, conv: ConvStage, dense: DenseStage):
        self.conv, self.dense = conv, dense
        pool = conv.pool
        self.ph, self.pw = pool.ph, pool.pw
        self.qh, self.qw, self.f = pool.out_shape
        self.th, self.tw = self.ph + conv.kh - 1, self.pw + conv.kw - 1
        self.rows = self.th * self.tw + 1  # patch values and a row of ones (the bias)
        self.cw = self.qw + (self.tw - 1) // self.pw  # a phase's width (``_unroll``)
        self.index = self._weight_index()
        # own activation ops (an op keeps its forward output for a backward)
        self.act = ActOp(conv.act.kind) if conv.act is not None else None
        self.dense_act = ActOp(dense.act.kind) if dense.act is not None else None
        self.bufs = Buffers()

    def _weight_index(self) -> np.ndarray:
        """Where each tile weight comes from in [W.ravel(), b, 0]: W[i, j, 0, f] at row
        (p, f) of window position p = (u, v), column (u + i, v + j) of the patch."""
        c, f = self.conv, self.f
        size = c.kh * c.kw * f
        zero = size + f
        idx = np.full((self.ph, self.pw, f, self.rows), zero, np.intp)
        fs = np.arange(f)
        for u in range(self.ph):
            for v in range(self.pw):
                for i in range(c.kh):
                    for j in range(c.kw):
                        idx[u, v, :, (u + i) * self.tw + v + j] = (i * c.kw + j) * f + fs
                idx[u, v, :, -1] = size + fs
        return idx.reshape(self.ph * self.pw * f, self.rows)

    def _weights(self, dtype) -> np.ndarray:
        c, size = self.conv, self.index.size
        src = self.bufs.get("src", (c.W.size + self.f + 1,), dtype, zero="new")
        np.copyto(src[:c.W.size].reshape(c.W.shape), c.W)
        b = c.Wm[-1] if c.fold else c.b
        if b is not None:
            src[c.W.size:-1] = b
        wt = self.bufs.get("wt", (size,), dtype)
        np.take(src, self.index.reshape(-1), out=wt)
        return wt.reshape(self.index.shape)

    def _unroll(self, x):
        """``cols`` (rows, N, QH * CW) of ``x`` (N, H, W, 1). The padded input is first split
        into its PH x PW phases (input row r * PH + a, column c * PW + b in phase (a, b), at
        (r, c)), each CW columns wide; a patch offset (i, j) is then, for every tile (r, c), the
        value at (r + i // PH, c + j // PW) of phase (i % PH, j % PW): a shift of the flat
        phase by one offset, one contiguous copy per image. Columns c >= QW of each tile row
        read past its end: finite values (the buffers start zeroed) that the dense weights
        multiply by 0."""
        c, n, (ph, pw), (qh, cw) = self.conv, len(x), (self.ph, self.pw), (self.qh, self.cw)
        r = qh + (self.th - 1) // ph
        if not c.padded and c.hw == (r * ph, cw * pw):  # the phases fit the input exactly
            xq = x.reshape(x.shape[:3])
        else:
            xq = self.bufs.get(("xq", n), (n, r * ph, cw * pw), x.dtype, zero="new")
            h, w = min(c.hw[0], r * ph - c.pt), min(c.hw[1], cw * pw - c.pl)
            xq[:, c.pt:c.pt + h, c.pl:c.pl + w] = x[:, :h, :w, 0]
        phases = self.bufs.get(("phases", n), (ph, pw, n, r * cw), x.dtype)
        np.copyto(phases.reshape(ph, pw, n, r, cw), xq.reshape(n, r, ph, cw, pw).transpose(2, 4, 0, 1, 3))
        cols = self.bufs.get(("cols", n), (self.rows, n, qh * cw), x.dtype, zero="new", fill=lambda a: a[-1].fill(1))
        for i in range(self.th):
            for j in range(self.tw):
                at = (i // ph) * cw + j // pw
                run = min(qh * cw, r * cw - at)
                np.copyto(cols[i * self.tw + j, :, :run], phases[i % ph, j % pw, :, at:at + run])
        return cols

    def forward(self, x, training=False):
        """Logits-side output of the dense stage (N, units) for input ``x`` (N, H, W, 1)."""
        n, (qh, qw, cw, f), (ph, pw) = len(x), (self.qh, self.qw, self.cw, self.f), (self.ph, self.pw)
        c, dense, dt = self.conv, self.dense, x.dtype
        cols = self._unroll(x)
        y = self.bufs.get(("y", n), (ph * pw * f, n * qh * cw), dt)
        np.matmul(self._weights(dt), cols.reshape(self.rows, -1), out=y)
        if self.act is not None and not c.act_last:
            self.act.forward(y)
        pooled = self.bufs.get(("pooled", n), (f, n, qh * cw), dt)
        ufunc = np.maximum if c.pool.kind == "max" else np.add
        ufunc.reduce(y.reshape(ph * pw, -1), axis=0, out=pooled.reshape(-1))
        if c.pool.kind == "avg":
            pooled /= ph * pw
        if c.act_last:
            self.act.forward(pooled)
        units = dense.W.shape[1]
        wd = self.bufs.get("wd", (f, qh * cw, units), dt, zero="new")  # junk columns' rows stay 0
        np.copyto(wd.reshape(f, qh, cw, units)[:, :, :qw], dense.W.reshape(qh, qw, f, units).transpose(2, 0, 1, 3))
        parts = np.matmul(pooled, wd, out=self.bufs.get(("parts", n), (f, n, units), dt))
        out = np.add.reduce(parts, axis=0, out=self.bufs.get(("out", n), (n, units), dt))
        if dense.b is not None:
            out += dense.b
        self.cols, self.y, self.pooled, self.wd = cols, y, pooled, wd
        return self.dense_act.forward(out) if self.dense_act is not None else out

    def backward(self, dy):
        """The conv's and the dense layer's gradients (into the stages' gradient arrays) from
        dL/d(dense output) ``dy`` (N, units). The head is a plan's first stage: no input gradient."""
        c, d, n, dt = self.conv, self.dense, len(dy), dy.dtype
        (qh, qw, cw, f), (ph, pw), units = (self.qh, self.qw, self.cw, self.f), (self.ph, self.pw), dy.shape[1]
        if self.dense_act is not None:
            dy = self.dense_act.backward(dy, self.bufs.get(("dact", n), dy.shape, dt))
        # the dense layer's weights: per channel pooled[f].T @ dy, put back in (QH, QW, F) row order
        g = np.matmul(self.pooled.transpose(0, 2, 1), dy, out=self.bufs.get("gwd", (f, qh * cw, units), dt))
        np.copyto(d.gW.reshape(qh, qw, f, units), g.reshape(f, qh, cw, units)[:, :, :qw].transpose(1, 2, 0, 3))
        if d.gb is not None:
            np.matmul(np.ones(n, dt), dy, out=d.gb)
        dp = np.matmul(dy, self.wd.transpose(0, 2, 1), out=self.bufs.get(("dpooled", n), self.pooled.shape, dt))
        if c.act_last:
            self.act.backward(dp, dp)
        dyt = self.bufs.get(("dy", n), (ph * pw, dp.size), dt)  # one block per window position
        if c.pool.kind == "max":  # every position equal to its window's max gets the gradient
            np.equal(self.y.reshape(ph * pw, -1), self.pooled.reshape(1, -1), out=dyt, casting="unsafe")
            np.multiply(dyt, dp.reshape(1, -1), out=dyt)
        else:
            np.divide(dp.reshape(1, -1), ph * pw, out=dyt[:1])
            dyt[1:] = dyt[:1]
        dyt = dyt.reshape(self.y.shape)
        if self.act is not None and not c.act_last:
            self.act.backward(dyt, dyt)
        gt = self._weight_grad(dyt, self.cols.reshape(self.rows, -1))
        # each tile weight's gradient back to the kernel weight (or bias) it came from
        gsrc = np.bincount(self.index.reshape(-1), gt.reshape(-1), minlength=c.W.size + f + 1)
        c.gWm[:c.k] = gsrc[:c.W.size].reshape(c.k, f)
        if c.fold:
            c.gWm[c.k] = gsrc[c.W.size:-1]
        elif c.gb is not None:
            c.gb[...] = gsrc[c.W.size:-1]
        return None

    def _weight_grad(self, dyt, cols):
        """``dyt @ cols.T``: a product with a long inner dimension, in chunks of it (BLAS ran it
        1.8x faster in chunks of 1,024 than whole; benchmarks/NOTES.md, session 8)."""
        out = self.bufs.get("gt", self.index.shape, dyt.dtype)
        np.matmul(dyt[:, :CHUNK], cols[:, :CHUNK].T, out=out)
        tmp = self.bufs.get("gtmp", out.shape, out.dtype)
        for s in range(CHUNK, dyt.shape[1], CHUNK):
            np.add(out, np.matmul(dyt[:, s:s + CHUNK], cols[:, s:s + CHUNK].T, out=tmp), out=out)
        return out
