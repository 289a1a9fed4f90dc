"""A plan's first stage when it is a one-channel conv with stride 1 and fewer than
``MAX_FILTERS`` filters (any kernel, padding, bias and activation) into a pool that tiles its
output (pool size = pool stride, max or average), computed as pool-window tiles, channel-first:
``TiledConv``, or ``TiledHead`` when a flatten and a dense layer follow (the seed net's whole body).

A tile is one pool window of the conv's output: PH x PW positions, which read a
(PH + KH - 1) x (PW + KW - 1) patch of the input. The patches are unrolled channel-first
(``cols``: one row per patch offset, one column per tile; see ``_unroll``), and one product
with a tile weight matrix (row (p, f): filter f at window position p, zero where the kernel
does not reach) gives every position's output, one block of F rows per window position.
Pooling is then an element-wise max or sum of PH*PW contiguous blocks. ``TiledConv`` puts the
result back in NHWC order for the next stage; ``TiledHead``'s dense layer reads it channel-first
through its weights regrouped by channel.

Against the conv stage (``conv.py``), which unrolls KH*KW values per output position into rows:
the seed net's 3x3 kernel and 2x2 pool unroll 16 values per 4 positions instead of 36, and the
product is one wide one instead of one with 8 columns, for 1.8x the multiplications
(benchmarks/NOTES.md, session 8). Chunks and training pieces whose tile product reaches
``MIN_MACS`` run tiled; smaller ones, and inputs unrolled ahead (``feed.py``), the conv stage.
"""

from __future__ import annotations

import numpy as np

from .buffers import Buffers
from .conv import ConvStage
from .ops import ActOp, avg_act_backward
from .products import thin_matmul_tn
from .stages import DenseStage, FlattenStage

#: fewest multiply-adds of the tile product (``TiledConv.macs`` x images) a chunk or training
#: piece runs tiled: below it the conv stage was as fast or faster (per-call costs;
#: benchmarks/NOTES.md, session 8)
MIN_MACS = 3e6
#: fewest filters for which the conv stage runs instead: its product is then wide enough (tiles
#: lost in training from 12 filters with 5x5 kernels, and in inference from 16; benchmarks/NOTES.md,
#: session 10)
MAX_FILTERS = 12
#: columns per chunk of the weight-gradient product (``TiledConv._weight_grad``)
CHUNK = 1024


class TiledConv:
    """Stands for a plan's first stage, a conv stage as above, in any plan: its pooled output is
    put back in NHWC order for the stage after it (and that stage's gradient in tile order)."""

    @staticmethod
    def applies(stages: list) -> bool:
        if not stages or not isinstance(stages[0], ConvStage):
            return False
        conv, pool = stages[0], stages[0].pool
        return conv.c == 1 and conv.f < MAX_FILTERS and pool is not None and (conv.sh, conv.sw) == (1, 1) and \
            (pool.sh, pool.sw) == (pool.ph, pool.pw)

    def __init__(self, conv: ConvStage):
        self.conv = conv
        pool = conv.pool
        self.ph, self.pw = pool.ph, pool.pw
        self.qh, self.qw, self.f = pool.out_shape
        self.th, self.tw = self.ph + conv.kh - 1, self.pw + conv.kw - 1
        self.rows = self.th * self.tw + 1  # patch values and a row of ones (the bias)
        self.cw = self.qw + (self.tw - 1) // self.pw  # a phase's width (``_unroll``)
        self.index = self._weight_index()
        self.r = r = self.qh + (self.th - 1) // self.ph  # a phase's rows (``_unroll``)
        #: per patch offset (i, j): its row of ``cols``, its phase, its shift and run (``_unroll``)
        self.shifts = [(i * self.tw + j, i % self.ph, j % self.pw, (i // self.ph) * self.cw + j // self.pw,
                        min(self.qh * self.cw, (r - i // self.ph) * self.cw - j // self.pw))
                       for i in range(self.th) for j in range(self.tw)]
        #: multiply-adds of the tile product per image (``FastEngine._plan`` compares n x this to MIN_MACS)
        self.macs = self.index.size * self.qh * self.cw
        self.unrolled = self.rows * self.qh * self.cw  # values ``_unroll`` writes per image
        # own activation op (an op keeps its forward output for a backward)
        self.act = ActOp(conv.act.kind) if conv.act is not None else None
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
        read past its end (or are zeroed where a shift runs past the last): finite values that
        ``forward`` leaves out and ``TiledHead``'s dense weights multiply by 0."""
        c, n, (ph, pw), (qh, cw, r) = self.conv, len(x), (self.ph, self.pw), (self.qh, self.cw, self.r)
        if not c.padded and c.hw == (r * ph, cw * pw):  # the phases fit the input exactly
            xq = x.reshape(x.shape[:3])
        else:
            xq = self.bufs.get("xq", (n, r * ph, cw * pw), x.dtype, zero="new")
            h, w = min(c.hw[0], r * ph - c.pt), min(c.hw[1], cw * pw - c.pl)
            xq[:, c.pt:c.pt + h, c.pl:c.pl + w] = x[:, :h, :w, 0]
        phases = self._flat("phases", (ph, pw, n, r * cw), x.dtype)
        np.copyto(phases.reshape(ph, pw, n, r, cw), xq.reshape(n, r, ph, cw, pw).transpose(2, 4, 0, 1, 3))
        cols = self._flat("cols", (self.rows, n, qh * cw), x.dtype)
        cols[-1] = 1
        for row, a, b, at, run in self.shifts:
            np.copyto(cols[row, :, :run], phases[a, b, :, at:at + run])
            if run < qh * cw:
                cols[row, :, run:] = 0
        return cols

    def _flat(self, key, shape, dtype):
        """A kept buffer of ``shape`` as the first values of a flat one (whose size is the
        largest asked for): the image axis is not the first, so ``Buffers``' first-rows views
        would not be contiguous, and one buffer per image count would pile up."""
        size = int(np.prod(shape))
        return self.bufs.get(key, (size,), dtype)[:size].reshape(shape)

    def pooled(self, x):
        """The conv, activation and pool of ``x`` (N, H, W, 1), channel-first: (F, N, QH * CW)."""
        n, (qh, cw, f), (ph, pw), c, dt = len(x), (self.qh, self.cw, self.f), (self.ph, self.pw), self.conv, x.dtype
        self.cols = cols = self._unroll(x)
        self.y = y = self._flat("y", (ph * pw * f, n * qh * cw), dt)
        np.matmul(self._weights(dt), cols.reshape(self.rows, -1), out=y)
        if self.act is not None and not c.act_last:
            self.act.forward(y)
        self.out = out = self._flat("pooled", (f, n, qh * cw), dt)
        ufunc = np.maximum if c.pool.kind == "max" else np.add
        ufunc.reduce(y.reshape(ph * pw, -1), axis=0, out=out.reshape(-1))
        if c.pool.kind == "avg":
            out /= ph * pw
        if c.act_last:
            self.act.forward(out)
        return out

    def conv_backward(self, dp):
        """The conv's gradients (into its stage's gradient arrays) from dL/d(pooled) ``dp``
        (F, N, QH * CW, zero in the columns past QW)."""
        c, f, k, dt = self.conv, self.f, self.ph * self.pw, dp.dtype
        if c.act_last:
            self.act.backward(dp, dp)
        dyt = self._flat("dy", (k, dp.size), dt)  # one block per window position
        act_pending = self.act is not None and not c.act_last
        if act_pending and c.pool.kind == "avg" and \
                avg_act_backward(self.y.reshape(1, k, -1), dp.reshape(1, -1), dyt.reshape(1, k, -1), self.act):
            act_pending = False  # the pool's and the activation's gradients in one pass
        elif c.pool.kind == "max":  # every position equal to its window's max gets the gradient
            np.equal(self.y.reshape(k, -1), self.out.reshape(1, -1), out=dyt, casting="unsafe")
            np.multiply(dyt, dp.reshape(1, -1), out=dyt)
        else:
            np.divide(dp.reshape(1, -1), k, out=dyt[:1])
            dyt[1:] = dyt[:1]
        dyt = dyt.reshape(self.y.shape)
        if act_pending:
            self.act.backward(dyt, dyt)
        gt = self._weight_grad(dyt, self.cols.reshape(self.rows, -1))
        # each tile weight's gradient back to the kernel weight (or bias) it came from
        gsrc = np.bincount(self.index.reshape(-1), gt.reshape(-1), minlength=c.W.size + f + 1)
        c.gWm[:c.k] = gsrc[:c.W.size].reshape(c.k, f)
        if c.fold:
            c.gWm[c.k] = gsrc[c.W.size:-1]
        elif c.gb is not None:
            c.gb[...] = gsrc[c.W.size:-1]

    def forward(self, x, training=False):
        """The stage's output (N, QH, QW, F) for input ``x`` (N, H, W, 1)."""
        n, (qh, qw, cw, f) = len(x), (self.qh, self.qw, self.cw, self.f)
        pooled = self.pooled(x).reshape(f, n, qh, cw)
        out = self.bufs.get("nhwc", (n, qh, qw, f), x.dtype)
        np.copyto(out, pooled[..., :qw].transpose(1, 2, 3, 0))
        return out

    def backward(self, dy):
        """Gradients of the conv from ``dy`` (N, QH, QW, F); a first stage: no input gradient."""
        n, (qh, qw, cw, f) = len(dy), (self.qh, self.qw, self.cw, self.f)
        dp = self._flat("dp", (f, n, qh, cw), dy.dtype)
        np.copyto(dp[..., :qw], dy.transpose(3, 0, 1, 2))
        dp[..., qw:] = 0  # the junk columns
        self.conv_backward(dp.reshape(f, n, qh * cw))
        return None

    def _weight_grad(self, dyt, cols):
        """``dyt @ cols.T``: a product with a long inner dimension, in chunks of it (BLAS ran it
        1.8x faster in chunks of 1,024 than whole; benchmarks/NOTES.md, session 8)."""
        return thin_matmul_tn(dyt.T, cols.T, self.bufs.get("gt", self.index.shape, dyt.dtype), CHUNK)


class TiledHead(TiledConv):
    """Stands for a plan's first three stages (conv stage as above, flatten, dense stage): the
    dense layer reads the channel-first pooled values through its weights regrouped by channel."""

    @staticmethod
    def applies(stages: list) -> bool:
        return TiledConv.applies(stages) and len(stages) >= 3 and type(stages[1]) is FlattenStage and \
            type(stages[2]) is DenseStage

    def __init__(self, conv: ConvStage, dense: DenseStage):
        super().__init__(conv)
        self.dense = dense
        self.dense_act = ActOp(dense.act.kind) if dense.act is not None else None

    def forward(self, x, training=False):
        """The dense stage's output (N, units) for input ``x`` (N, H, W, 1)."""
        n, (qh, qw, cw, f), dense, dt = len(x), (self.qh, self.qw, self.cw, self.f), self.dense, x.dtype
        pooled = self.pooled(x)
        units = dense.W.shape[1]
        wd = self.bufs.get("wd", (f, qh * cw, units), dt, zero="new")  # junk columns' rows stay 0
        np.copyto(wd.reshape(f, qh, cw, units)[:, :, :qw], dense.W.reshape(qh, qw, f, units).transpose(2, 0, 1, 3))
        parts = np.matmul(pooled, wd, out=self._flat("parts", (f, n, units), dt))
        out = np.add.reduce(parts, axis=0, out=self.bufs.get("out", (n, units), dt))
        if dense.b is not None:
            out += dense.b
        self.wd = wd
        return self.dense_act.forward(out) if self.dense_act is not None else out

    def backward(self, dy):
        """The conv's and the dense layer's gradients from dL/d(dense output) ``dy`` (N, units)."""
        d, n, dt = self.dense, len(dy), dy.dtype
        (qh, qw, cw, f), units = (self.qh, self.qw, self.cw, self.f), dy.shape[1]
        if self.dense_act is not None:
            dy = self.dense_act.backward(dy, self.bufs.get("dact", dy.shape, dt))
        # the dense layer's weights: per channel pooled[f].T @ dy, put back in (QH, QW, F) row order
        # (a reshape that splits one axis is a view whatever the layout: the copy lands in gW)
        g = np.matmul(self.out.transpose(0, 2, 1), dy, out=self.bufs.get("gwd", (f, qh * cw, units), dt))
        np.copyto(d.gW.reshape(qh, qw, f, units), g.reshape(f, qh, cw, units)[:, :, :qw].transpose(1, 2, 0, 3))
        if d.gb is not None:
            np.matmul(np.ones(n, dt), dy, out=d.gb)
        self.conv_backward(np.matmul(dy, self.wd.transpose(0, 2, 1), out=self._flat("dpooled", self.out.shape, dt)))
        return None
