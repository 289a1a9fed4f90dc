"""The conv stage: ``conv2d``, optionally followed by an activation and a pool, as one stage
with its own buffers.

Forward: unroll the (padded) input into a kept ``cols`` buffer (for one input channel a single
``np.take`` with a precomputed index, else one strided copy), one product into a kept output
buffer (a big one-channel ``cols`` unrolled and multiplied piece by piece), activation and
pooling in place. When the model's flat buffers hold the bias right
after the weights (parameters and gradients alike), ``cols`` ends in a column of ones and the
weight matrix is read with the bias as its last row: the product adds the bias and the
weight-gradient product yields its gradient, with no pass of their own.

Backward: pooling and activation gradients into kept buffers, ``dW = cols.T @ dy`` (in
cache-sized row chunks when ``cols`` is thin), and ``dx`` as one batched product per kernel
offset plus one shifted add per offset (a ``dy`` in blocks is put back in plain order first:
a cheap copy, after which the adds run over rows of ``OW * C`` values rather than ``C``).

A stride-1 conv with three or five kernel columns and enough channels and filters runs all three
products by Winograd F(2, 3), F(4, 3) or F(2, 5) along the width instead (``winograd.py``;
``winograd.applies`` says which).
A relu followed by a max-pool is applied after the pool (the same values and gradients).
In an unsplit training step a big weight gradient runs on the engine's helper thread while
this stage goes on with the input gradient (``helper.py``).
"""

from __future__ import annotations

from functools import partial

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..layers.conv import windows
from . import fused, helper, winograd
from .buffers import Buffers
from .products import thin_matmul_tn

#: ``dx`` pads ``dy``'s rows to the input's width (flat shifted adds, see ``_input_grad``) when
#: that width is at most this times the output's: the product grows by the padding, the adds
#: get far fewer, longer runs (benchmarks/NOTES.md: it paid for a 3x3 kernel on 24 columns,
#: not for 5x5 ones on 10 or 14)
FLAT_MAX_WIDTH = 1.1
#: bytes of ``cols`` per piece of a one-channel forward's unroll and product when its whole ``cols``
#: is over four pieces (a piece just unrolled is still in the core's cache when multiplied; with
#: more channels, or less ``cols``, pieces gained nothing: benchmarks/NOTES.md, session 11)
PIECE_BYTES = 160 << 10


def joined(w: np.ndarray, b) -> np.ndarray | None:
    """``w`` (..., F) and the ``b`` (F,) stored right after it as one (K + 1, F) matrix view,
    or None when they are not laid out that way."""
    if b is None or not (w.flags.c_contiguous and b.flags.c_contiguous) or w.dtype != b.dtype:
        return None
    if b.ctypes.data != w.ctypes.data + w.nbytes or b.shape != w.shape[-1:]:
        return None
    f = b.shape[0]
    return as_strided(w, (w.size // f + 1, f), (f * w.itemsize, w.itemsize))


class ConvStage:
    def __init__(self, conv, grads: dict, act=None, pool=None, first: bool = False, out_hw=None, in_hw=None):
        """``out_hw``: the output rows and columns computed (a top-left part of the layer's,
        when the next stage never reads the rest, see ``compile.crops``); ``in_hw``: the input
        rows and columns received (the previous stage's ``out_hw``)."""
        self.W = conv.params["W"]
        self.kh, self.kw, self.sh, self.sw = conv.kh, conv.kw, conv.sh, conv.sw
        h, w, self.c = conv.input_shape
        (self.pt, pb), (self.pl, pr) = conv.pads(h, w)
        h, w = in_hw or (h, w)
        self.hw, self.hpwp = (h, w), (h + self.pt + pb, w + self.pl + pr)
        self.padded = (self.pt, pb, self.pl, pr) != (0, 0, 0, 0)
        self.oh, self.ow, self.f = conv.output_shape
        self.oh, self.ow = out_hw or (self.oh, self.ow)
        self.k = self.kh * self.kw * self.c
        b, gW, gb = conv.params.get("b"), grads[f"{conv.name}.W"], grads.get(f"{conv.name}.b")
        wb, gwb = joined(self.W, b), joined(gW, gb)
        self.fold = wb is not None and gwb is not None  # the bias as a last row (see above)
        self.Wm = wb if self.fold else self.W.reshape(self.k, self.f)
        self.gWm = gwb if self.fold else gW.reshape(self.k, self.f)
        self.b, self.gb = (None, None) if self.fold else (b, gb)
        self.width = self.k + self.fold
        self.act, self.pool, self.first = act, pool, first
        #: a relu followed by a max-pool runs after the pool: the same values (relu is monotone)
        #: and gradients (0 wherever a window's max is <= 0), on 1/(PH*PW) of the values
        self.act_last = act is not None and act.kind == "relu" and pool is not None and pool.kind == "max"
        # a pool with strides (sh, sw) reads the conv output in blocks (phases): rows of ``cols``
        # (and of the output) are ordered (n, a, b, oh/sh, ow/sw), output position
        # (u * sh + a, v * sw + b) in block (a, b). A window offset of the pool is then a slice
        # of one block whose rows are contiguous runs; for a pool tiling the output exactly
        # it is a whole block, and pooling is an element-wise max/sum of blocks
        self.blocks = pool.phases() if pool is not None else None
        if self.blocks:
            pool.blocked = True
        self.bufs = Buffers()
        self.idx = self._take_index() if self.c == 1 else None
        #: dx by flat shifted adds (see ``_input_grad``)
        self.flat_dx = (self.sh, self.sw) == (1, 1) and self.hpwp[1] <= FLAT_MAX_WIDTH * self.ow
        #: a ``helper.Helper`` the engine gives worker 0's stages: a big weight gradient runs there
        self.helper = None
        #: all three products by Winograd F(M, R) (winograd.py) in place of the unrolled input;
        #: not for a first stage, whose input may arrive unrolled ahead (``cols``)
        self.wino = winograd.Winograd(self.kh, self.kw, self.c, self.f, self.oh, self.ow, self.blocks) \
            if not first and winograd.applies(self.kw, (self.sh, self.sw), self.ow, self.c, self.f, self.blocks) else None
        #: values a forward unrolls per image (none by Winograd)
        self.unrolled = 0 if self.wino is not None else self.oh * self.ow * self.width

    def _windows(self, x):
        """The kernel windows of ``x`` in ``cols`` row order: (N, OH, OW, KH, KW, C), or
        (N, PH, PW, OH/PH, OW/PW, KH, KW, C) in blocks."""
        if self.blocks is None:
            return windows(x, self.kh, self.kw, self.sh, self.sw)[:, :self.oh, :self.ow]
        ph, pw = self.blocks
        n, _, _, c = x.shape
        s0, s1, s2, s3 = x.strides
        sh, sw = self.sh, self.sw
        return as_strided(x, (n, ph, pw, self.oh // ph, self.ow // pw, self.kh, self.kw, c),
                          (s0, s1 * sh, s2 * sw, s1 * sh * ph, s2 * sw * pw, s1, s2, s3), writeable=False)

    def _take_index(self):
        """Flat per-image index of every ``cols`` entry (one channel) into the padded input
        flattened, followed by one cell holding 1 when the bias is folded."""
        hp, wp = self.hpwp
        probe = np.arange(hp * wp, dtype=np.intp).reshape(1, hp, wp, 1)
        idx = np.ascontiguousarray(self._windows(probe)).reshape(-1, self.k)
        if self.fold:
            idx = np.concatenate([idx, np.full((len(idx), 1), hp * wp, np.intp)], axis=1)
        return idx.reshape(-1)

    def _as_windows(self, cols, shape):
        """``cols[:, :K]`` as a writable array of the windows' ``shape`` (no copy)."""
        it, lead = cols.itemsize, shape[:-3]
        strides, acc = [], cols.strides[0]
        for d in reversed(lead):
            strides.append(acc)
            acc *= d
        return as_strided(cols, shape, strides[::-1] + [self.kw * self.c * it, self.c * it, it])

    def _ones(self, a):
        a[:, -1] = 1

    def unroll(self, x):
        """``cols`` (N*OH*OW, K [+ 1]) of NHWC ``x``, in a kept buffer."""
        cols, src = self._cols(len(x), x.dtype), self._source(x)
        self._unroll_rows(src, cols, 0, len(x))
        return cols

    def _cols(self, n, dtype):
        return self.bufs.get("cols", (n * self.oh * self.ow, self.width), dtype, fill=self._ones if self.fold else None)

    def _source(self, x):
        """What ``_unroll_rows`` reads: for one channel the padded images flattened (and a 1 after
        each, for the bias column), else the padded input's kernel windows."""
        if self.idx is None:
            return self._windows(self._padded(x))
        n, (h, w) = len(x), self.hw
        src = x.reshape(n, -1)
        if self.padded or self.fold or not src.flags.c_contiguous:
            hp, wp = self.hpwp
            src = self.bufs.get("src", (n, hp * wp + 1), x.dtype, zero="new", fill=self._ones)
            img = src[:, :hp * wp].reshape(n, hp, wp)
            img[:, self.pt:self.pt + h, self.pl:self.pl + w] = x.reshape(n, h, w)
        return src

    def _unroll_rows(self, src, cols, a, b):
        """The rows of images ``a:b`` of ``cols`` from ``_source``'s ``src``."""
        r = self.oh * self.ow
        if self.idx is not None:
            np.take(src[a:b], self.idx, axis=1, out=cols[a * r:b * r].reshape(b - a, -1), mode="clip")
            return
        v = src[a:b]
        part = cols[a * r:b * r]
        np.copyto(self._as_windows(part, v.shape) if self.fold else part.reshape(v.shape), v)

    def _padded(self, x):
        """``x`` with its zero border (in a kept buffer), or ``x`` when there is none."""
        if not self.padded:
            return x
        h, w = self.hw
        xp = self.bufs.get("xp", (len(x),) + self.hpwp + (self.c,), x.dtype, zero="new")
        xp[:, self.pt:self.pt + h, self.pl:self.pl + w, :] = x
        return xp

    def _layout(self, n: int) -> tuple:
        """The output's shape: (N, OH, OW, F), or in blocks (N, PH, PW, OH/PH, OW/PW, F)."""
        if self.blocks is None:
            return (n, self.oh, self.ow, self.f)
        return (n,) + self.blocks + (self.oh // self.blocks[0], self.ow // self.blocks[1], self.f)

    def forward(self, x, training=False, cols=None):
        """``cols``: this batch's rows of an unrolled input (``unroll`` of a larger block)."""
        self.winograd = self.wino is not None and cols is None and len(x) >= winograd.MIN_IMAGES
        if self.winograd:
            n = len(x)
            y = self.bufs.get("y", (n * self.oh * self.ow, self.f), x.dtype).reshape(self._layout(n))
            self.wino.forward(self._padded(x), self.W, self.Wm[-1] if self.fold else self.b, y, training)
        else:
            if cols is None:  # unrolled here; a big one-channel ``cols`` in pieces (``PIECE_BYTES``)
                n, r = len(x), self.oh * self.ow
                self.cols = cols = self._cols(n, x.dtype)
                y, src = self.bufs.get("y", (len(cols), self.f), x.dtype), self._source(x)
                per = r * self.width * x.itemsize
                step = max(1, PIECE_BYTES // per) if self.idx is not None and n * per > 4 * PIECE_BYTES else n
                for a in range(0, n, step):
                    b = min(n, a + step)
                    self._unroll_rows(src, cols, a, b)
                    np.matmul(cols[a * r:b * r], self.Wm, out=y[a * r:b * r])
            else:
                self.cols, n = cols, len(cols) // (self.oh * self.ow)
                y = self.bufs.get("y", (len(cols), self.f), cols.dtype)
                np.matmul(cols, self.Wm, out=y)
            if self.b is not None:
                y += self.b
            y = y.reshape(self._layout(n))
        if self.act is not None and not self.act_last:
            self.act.forward(y)
        if self.pool is None:
            return y
        out = self.pool.forward(y)
        return self.act.forward(out) if self.act_last else out

    def backward(self, dy):
        if self.pool is not None:
            if self.act_last:
                dy = self.act.backward(dy, self.bufs.get("dpooled", dy.shape, dy.dtype))
            dy = self.pool.backward(dy, None if self.act_last else self.act)  # a buffer of the pool's
        elif self.act is not None:
            dy = self.act.backward(dy, self.bufs.get("dact", dy.shape, dy.dtype))
        dy2 = np.ascontiguousarray(dy).reshape(-1, self.f)
        if self.winograd:
            return self._winograd_backward(dy2)
        helper.hand_over(self.helper, partial(self._weight_grad, self.cols, dy2), self.cols.size * self.f)
        return None if self.first else self._input_grad(dy2)

    def _weight_grad(self, cols, dy2):
        thin_matmul_tn(cols, dy2, self.gWm)
        if self.gb is not None:
            np.matmul(np.ones(len(dy2), dy2.dtype), dy2, out=self.gb)

    def _winograd_backward(self, dy2):
        n = len(dy2) // (self.oh * self.ow)
        gW = self.gWm[:self.k].reshape(self.kh, self.kw, self.c, self.f)
        dxp = self.bufs.get("dxp", (n,) + self.hpwp + (self.c,), dy2.dtype)  # never a first stage
        self.wino.backward(dy2.reshape(self._layout(n)), gW, self.gWm[self.k] if self.fold else self.gb, dxp)
        return self._crop(dxp)

    def _crop(self, dxp):
        """The padded input's gradient without its border (a view)."""
        h, w = self.hw
        return dxp[:, self.pt:self.pt + h, self.pl:self.pl + w, :] if self.padded else dxp

    def _plain(self, dy2, width: int):
        """``dy2`` as (N, OH, width, F) in plain row order (a blocked one put back), each row
        padded with zero columns from OW to ``width``: a kept buffer, or a view of ``dy2``
        when nothing changes."""
        n, (oh, ow, f) = len(dy2) // (self.oh * self.ow), (self.oh, self.ow, self.f)
        if self.blocks is None and width == ow:
            return dy2.reshape(n, oh, ow, f)
        out = self.bufs.get("dyplain", (n, oh, width, f), dy2.dtype, zero="new")  # pad columns stay 0
        if self.blocks is None:
            out[:, :, :ow] = dy2.reshape(n, oh, ow, f)
        else:
            ph, pw = self.blocks
            np.copyto(out[:, :, :ow].reshape(n, oh // ph, ph, ow // pw, pw, f),
                      dy2.reshape(n, ph, pw, oh // ph, ow // pw, f).transpose(0, 3, 1, 4, 2, 5))
        return out

    def _input_grad(self, dy2):
        """dL/dx: ``dy @ W[i, j].T`` for every kernel offset (i, j) in one batched product,
        each added to its shifted window of the padded input. With stride 1 and a kernel
        narrow against the output (``FLAT_MAX_WIDTH``), ``dy``'s rows are first padded to the
        input's width: a window's shift is then one flat offset, and each offset's add is one
        contiguous run per image (the pad columns add zeros)."""
        kk, c, n = self.kh * self.kw, self.c, len(dy2) // (self.oh * self.ow)
        wp, oh, ow, flat = self.hpwp[1], self.oh, self.ow, self.flat_dx
        dy = self._plain(dy2, wp if flat else ow)
        wk = self.bufs.get("wk", (kk, self.f, c), dy2.dtype)
        np.copyto(wk.reshape(self.kh, self.kw, self.f, c), self.W.transpose(0, 1, 3, 2))
        t = self.bufs.get("t", (kk, dy.size // self.f, c), dy2.dtype)
        np.matmul(dy.reshape(1, -1, self.f), wk, out=t)
        dxp = self.bufs.get("dxp", (n,) + self.hpwp + (c,), dy2.dtype, zero=True)
        if flat:
            run, d, t = ((oh - 1) * wp + ow) * c, dxp.reshape(n, -1), t.reshape(kk, n, -1)
            for i in range(self.kh):
                for j in range(self.kw):
                    at = (i * wp + j) * c
                    d[:, at:at + run] += t[i * self.kw + j, :, :run]
        elif (k := fused.kernels()) is not None:  # the same adds in the same order, as one compiled loop
            k["shifted_adds"](t.reshape(kk, n, oh, ow, c), dxp, self.kw, self.sh, self.sw)
        else:
            sh, sw, t = self.sh, self.sw, t.reshape(kk, n, oh, ow, c)
            for i in range(self.kh):
                for j in range(self.kw):
                    dxp[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :] += t[i * self.kw + j]
        return self._crop(dxp)
