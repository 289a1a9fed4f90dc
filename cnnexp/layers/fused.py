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
(exactly the gradient of the unfused layers, ties included). Large unrolled inputs
(keras_mnist's 26x26x32 -> 64 conv: 663 KB per image) run in sub-batches of a few images that
stay in the L2 cache; the unrolled input is then rebuilt in backward instead of kept.

``ConvMaxPoolT``: the same for one-channel inputs (the seed net's first conv), computed with
the batch as the innermost axis, so unrolling is one strided copy of N-long runs instead of a
gather of single floats. ``ConvPoolDenseT``: ``ConvMaxPoolT`` followed by ``flatten -> dense``,
which consumes that layout directly (the dense weight rows are permuted instead).

Measured on this machine (2-core SkylakeX, OpenBLAS) through ``fit`` / ``evaluate`` with the
default two threads, against the previous fast path (medians of 3 alternating A/B runs; the
second core was shared with other work, so these vary): seed net inference +35-48%, training
+15-24% at batch 32-128; keras_mnist training +26% at batch 32, +77% at batch 128.

Checked against the plain layers (forward values, every gradient) and by finite differences
in ``tests/test_fastpaths.py``.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .activations import ReLU
from .base import Buffers
from .conv import Conv2D, column_sums, thin_matmul_tn
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


def can_fuse_conv_relu(conv, relu) -> bool:
    """True when ``conv -> relu`` are the plain layers (no subclass changing the maths)."""
    return isinstance(conv, Conv2D) and type(conv).forward is Conv2D.forward and type(relu) is ReLU


class ConvReLU:
    """One stage computing ``relu(conv(x))`` for a conv not followed by a tiled max-pool
    (keras_mnist's first conv). The conv output goes into a buffer reused between calls and
    the ReLU is applied in place; backward multiplies the gradient by ``output > 0`` (the same
    mask as ``ReLU``: ``relu(y) > 0`` exactly where ``y > 0``) and runs the conv's own backward.
    Input ``(N, H, W, C)``, output ``(N, OH, OW, F)``."""

    def __init__(self, conv: Conv2D, relu: ReLU):
        self.conv, self.relu = conv, relu
        self.layers = [conv, relu]
        self._bufs = Buffers()

    def replica(self, conv_replica):
        r = object.__new__(type(self))
        r.__dict__.update(self.__dict__)
        r.conv, r._bufs = conv_replica, Buffers()
        r.layers = [conv_replica, self.relu]
        return r

    @property
    def needs_input_grad(self) -> bool:
        return self.conv.needs_input_grad

    def forward(self, x, training=False):
        conv = self.conv
        x, conv._pad = conv._pad_input(x)
        conv._xshape = x.shape
        conv._cols, conv._cols_pool = conv.im2col(x), None
        oh, ow, f = conv.output_shape
        y = self._bufs.get("y", (len(x), oh, ow, f), x.dtype)
        y2 = y.reshape(-1, f)
        np.matmul(conv._cols, conv.params["W"].reshape(-1, f), out=y2)
        if conv.use_bias:
            y2 += conv.params["b"]
        self._y = np.maximum(y, 0, out=y)
        return y

    def backward(self, dy):
        y = self._y
        pos = np.greater(y, 0, out=self._bufs.get("pos", y.shape, np.bool_))
        return self.conv.backward(np.multiply(dy, pos, out=self._bufs.get("dy", y.shape, y.dtype)))


class ConvMaxPool:
    """One stage computing ``pool(relu(conv(x)))`` (``relu`` optional).

    Batches whose unrolled input would exceed ``chunk_bytes`` run in sub-batches of whole
    images (``_forward_chunked`` / ``_backward_chunked``): each sub-batch's unrolled input,
    conv output and input-gradient columns stay in the core's L2 cache, and the unrolled input
    is rebuilt in backward instead of being kept (measured on keras_mnist's 26x26x32 -> 64 conv:
    ~40% faster than one whole-batch product; the matmuls run at the same speed, the copies
    and the col2im scatter no longer miss the cache)."""

    #: largest unrolled input + conv output (bytes) processed in one piece; larger batches run
    #: in sub-batches
    chunk_bytes = 2 << 20
    #: ... when one image's unrolled input is at least this large: for small ones (the seed
    #: net's 676 x 9) re-unrolling in backward costs more than the cache misses it saves
    chunk_min_cols_bytes = 128 << 10

    def __init__(self, conv: Conv2D, pool: MaxPool2D, relu: ReLU | None = None):
        self.conv, self.pool, self.relu = conv, pool, relu
        self.layers = [conv] + ([relu] if relu is not None else []) + [pool]
        self._bufs = Buffers()
        self._chunks = {}

    def replica(self, conv_replica):
        r = object.__new__(type(self))
        r.__dict__.update(self.__dict__)
        r.conv, r._bufs = conv_replica, Buffers()
        r.layers = [conv_replica] + r.layers[1:]
        return r

    @property
    def needs_input_grad(self) -> bool:
        return self.conv.needs_input_grad

    def _chunk_images(self, xshape, itemsize) -> int:
        """Images per sub-batch for a padded input of ``xshape`` (the whole batch if it fits);
        cached per shape (it is asked on every forward)."""
        key = (xshape, itemsize, self.chunk_bytes, self.chunk_min_cols_bytes)
        k = self._chunks.get(key)
        if k is None:
            n, h, w, c = xshape
            conv = self.conv
            oh, ow = (h - conv.kh) // conv.sh + 1, (w - conv.kw) // conv.sw + 1
            cols_bytes = oh * ow * conv.kh * conv.kw * c * itemsize
            per_image = cols_bytes + oh * ow * conv.filters * itemsize  # cols + conv output
            k = n if cols_bytes < self.chunk_min_cols_bytes else max(1, min(n, self.chunk_bytes // per_image))
            self._chunks[key] = k
        return k

    # -- forward --------------------------------------------------------------------------
    def _pool_max(self, y, m):
        """``m[:] = max over the ph*pw blocks of y``: y (n, ph*pw, q, f) -> m (n, q, f)."""
        if y.shape[1] == 1:
            return np.copyto(m, y[:, 0])
        np.maximum(y[:, 0], y[:, 1], out=m)
        for k in range(2, y.shape[1]):
            np.maximum(m, y[:, k], out=m)

    def forward(self, x, training=False):
        conv, pool = self.conv, self.pool
        ph, pw = pool.ph, pool.pw
        x, self._pad = conv._pad_input(x)
        self._xshape = x.shape
        n = x.shape[0]
        oh, ow, f = conv.output_shape
        q = (oh // ph) * (ow // pw)
        m = self._bufs.get("m", (n, q, f), x.dtype)
        self._chunk = self._chunk_images(x.shape, x.dtype.itemsize)
        biased = self._chunk < n and conv.use_bias  # the chunked forward adds the bias itself
        if self._chunk < n:
            self._forward_chunked(x, m)
        else:
            cols = conv.im2col(x, pool=(ph, pw))
            y = self._bufs.get("y", (n, ph * pw, q, f), x.dtype)
            np.matmul(cols, conv.params["W"].reshape(-1, f), out=y.reshape(-1, f))
            self._pool_max(y, m)
            self._cols, self._y = cols, y
        out = m
        if conv.use_bias and not biased:
            out = np.add(m, conv.params["b"], out=self._bufs.get("out", m.shape, m.dtype))
        if self.relu is not None:
            out = np.maximum(out, 0, out=out if out is not m else self._bufs.get("out", m.shape, m.dtype))
        self._m, self._out = m, out
        # the conv layer's own backward can follow this forward too (it reorders dy itself;
        # after a chunked forward it rebuilds the unrolled input from the kept padded input)
        conv._cols = self._cols if self._chunk >= n else None
        conv._cols_pool, conv._xshape, conv._pad, conv._xpadded = (ph, pw), self._xshape, self._pad, x
        return out.reshape(n, oh // ph, ow // pw, f)

    def _forward_chunked(self, x, m):
        """Conv (+ bias) and max-pool sub-batch by sub-batch into ``m`` (n, q, f); keeps the
        padded input and a boolean mask of the maxima (n, ph*pw, q, f) for backward.

        The bias is added before pooling, in place: ``max(y + b) == max(y) + b`` exactly
        (rounding is monotonic), and the mask compares ``y + b`` with its window's max, as the
        unfused layers do (same ties)."""
        conv, pool = self.conv, self.pool
        n, f = x.shape[0], m.shape[-1]
        k = self._chunk
        W2 = conv.params["W"].reshape(-1, f)
        self._x = x
        self._mask = mask = self._bufs.get("mask", (n, pool.ph * pool.pw) + m.shape[1:], np.bool_)
        y = self._bufs.get("y", (k,) + mask.shape[1:], x.dtype)
        rows = y[0].size // f
        cols_buf = self._bufs.get("cols", (k * rows, W2.shape[0]), x.dtype)
        for s in range(0, n, k):
            e = min(n, s + k)
            yc, mc = y[:e - s], m[s:e]
            cols = conv.im2col(x[s:e], pool=(pool.ph, pool.pw), out=cols_buf[:(e - s) * rows])
            np.matmul(cols, W2, out=yc.reshape(-1, f))
            if conv.use_bias:
                yc += conv.params["b"]
            self._pool_max(yc, mc)
            np.equal(yc, mc[:, None], out=mask[s:e])
        self._cols = self._y = None

    # -- backward -------------------------------------------------------------------------
    def _pooled_grad(self, dout):
        """dL/d(max-pooled conv output before bias/ReLU), shape (n, q, f)."""
        d = dout.reshape(self._m.shape)
        if self.relu is not None:
            d = np.multiply(d, self._out > 0, out=self._bufs.get("d", d.shape, d.dtype))
        return d

    def backward(self, dout):
        conv = self.conv
        d = self._pooled_grad(dout)
        if self._y is None:
            dx = self._backward_chunked(d)
        else:
            y, m = self._y, self._m
            f = y.shape[-1]
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
        if dx is None:
            return None
        pt, pl, h, w = self._pad
        return dx[:, pt:pt + h, pl:pl + w, :]

    def _backward_chunked(self, d):
        """Backward of a chunked forward, sub-batch by sub-batch: the conv-output gradient is
        written in natural (n, OH, OW, F) order (mask x pooled gradient, one pass), the
        unrolled input is rebuilt in natural order for the weight gradient, and the input
        gradient comes from ``Conv2D.input_grad_by_offsets`` (no col2im scatter). Returns the
        gradient w.r.t. the padded input (or None)."""
        conv, pool = self.conv, self.pool
        ph, pw = pool.ph, pool.pw
        x, mask = self._x, self._mask
        n, f, k = x.shape[0], d.shape[-1], self._chunk
        oh, ow, _ = conv.output_shape
        qh, qw = oh // ph, ow // pw
        rows = oh * ow
        gW = conv.grads["W"].reshape(-1, f)
        gb = conv.grads["b"] if conv.use_bias else None
        tmpb = self._bufs.get("gb", (f,), d.dtype)
        tmpW = self._bufs.get("gW", gW.shape, gW.dtype)
        dyn = self._bufs.get("dyn", (k, oh, ow, f), d.dtype)
        cols_buf = self._bufs.get("cols", (k * rows, gW.shape[0]), x.dtype)
        need_dx = conv.needs_input_grad
        dx = self._bufs.get("dx", x.shape, d.dtype, zero=True) if need_dx else None
        tmp = self._bufs.get("dx_offsets", (conv.kh * conv.kw, k * rows, x.shape[3]), d.dtype) if need_dx else None
        for s in range(0, n, k):
            e = min(n, s + k)
            dyc = dyn[:e - s]
            # dy in natural order, written through its pooled-order view
            pooled_view = dyc.reshape(e - s, qh, ph, qw, pw, f).transpose(0, 2, 4, 1, 3, 5)
            np.multiply(mask[s:e].reshape(e - s, ph, pw, qh, qw, f), d[s:e].reshape(e - s, 1, 1, qh, qw, f),
                        out=pooled_view)
            dy2 = dyc.reshape(-1, f)
            cols = conv.im2col(x[s:e], out=cols_buf[:(e - s) * rows])
            np.matmul(cols.T, dy2, out=gW if s == 0 else tmpW)
            if s:
                gW += tmpW
            if gb is not None:
                if s == 0:
                    column_sums(dy2, gb)
                else:
                    gb += column_sums(dy2, tmpb)
            if need_dx:
                conv.input_grad_by_offsets(dyc, dx[s:e], tmp=tmp[:, :(e - s) * rows])
        return dx


class ConvMaxPoolT(ConvMaxPool):
    """``ConvMaxPool`` for one-channel inputs, computed with the batch as the innermost axis.

    With one channel the usual unrolled input (rows x KH*KW) has rows of only KH*KW values, so
    building it is a gather of single floats. Here the padded input is transposed once to
    ``(H, W, N)`` and the unrolled input is ``colsT`` of shape
    ``(KH, KW, ph, pw, OH/ph, OW/pw, N)``: one strided copy whose inner runs are N contiguous
    values. The conv output is ``yT = W.T @ colsT``, shape ``(F, ph*pw, Q, N)`` (Q = pooled
    positions), so pooling is again a maximum of contiguous blocks, giving ``(F, Q, N)``
    (``forward_t``); ``forward`` transposes it back to ``(N, OH/ph, OW/pw, F)``, or
    ``ConvPoolDenseT`` feeds it to the next dense layer as it is. Same maths and tie rule as
    ``ConvMaxPool``. Batches under ``min_batch`` run as ``ConvMaxPool``.
    """

    #: smaller batches run as ``ConvMaxPool`` (inner runs of a few values do not pay)
    min_batch = 16

    def _unroll(self, xT):
        """Strided view (KH, KW, ph, pw, OH/ph, OW/pw, N) of ``xT`` (H, W, N), no copy."""
        conv, pool = self.conv, self.pool
        oh, ow, _ = conv.output_shape
        s0, s1, s2 = xT.strides
        sh, sw = conv.sh, conv.sw
        shape = (conv.kh, conv.kw, pool.ph, pool.pw, oh // pool.ph, ow // pool.pw, xT.shape[2])
        strides = (s0, s1, sh * s0, sw * s1, sh * pool.ph * s0, sw * pool.pw * s1, s2)
        return as_strided(xT, shape, strides, writeable=False)

    def accepts_raw(self) -> bool:
        """True when ``forward_t`` can take raw images (``pre=``): no padding to apply."""
        (pt, pb), (pl, pr) = self.conv._pads(*self.conv.input_shape[:2])
        return not (pt or pb or pl or pr)

    @staticmethod
    def _preprocess(x, pre):
        """``Model.preprocess`` of raw images (N, H, W[, 1]) with ``pre = (scale, shift)``."""
        scale, shift = pre
        x = x.reshape(x.shape[:3] + (1,)).astype(scale.dtype)
        x *= scale
        x += shift
        return x

    def forward(self, x, training=False, pre=None):
        self._transposed = len(x) >= self.min_batch
        if not self._transposed:
            return super().forward(x if pre is None else self._preprocess(x, pre), training)
        out = self.forward_t(x, pre)
        f, q, n = out.shape
        oh, ow, _ = self.conv.output_shape
        res = self._bufs.get("res", (n, q, f), out.dtype)
        np.copyto(res, out.transpose(2, 1, 0))
        return res.reshape(n, oh // self.pool.ph, ow // self.pool.pw, f)

    #: widest column piece of the conv product ``W.T @ colsT`` (OpenBLAS slows down about 2x on
    #: these 8 x 9 by 9 x P products once P passes ~8k columns)
    max_cols = 8192

    def _conv_pool_t(self, Wt, c3, y3, m2):
        """``y3[:, k] = Wt @ c3[:, k]`` for each pool offset ``k`` and ``m2 = max_k y3[:, k]``,
        in column pieces of at most ``max_cols`` (equal sizes), each piece pooled while it
        is still in cache. Wt (F, K), c3 (K, ph*pw, Q*N), y3 (F, ph*pw, Q*N), m2 (F, Q*N).
        Measured at batch 32-64 on one thread: 85-230 us against 127-345 us for one whole
        product followed by the pooling passes."""
        pp, cols = c3.shape[1], c3.shape[2]
        pieces = -(-cols // self.max_cols)
        step = -(-cols // pieces)
        for s in range(0, cols, step):
            e = min(cols, s + step)
            for j in range(pp):
                np.matmul(Wt, c3[:, j, s:e], out=y3[:, j, s:e])
            mm = m2[:, s:e]
            if pp == 1:
                np.copyto(mm, y3[:, 0, s:e])
                continue
            np.maximum(y3[:, 0, s:e], y3[:, 1, s:e], out=mm)
            for j in range(2, pp):
                np.maximum(mm, y3[:, j, s:e], out=mm)

    def forward_t(self, x, pre=None):
        """``pool(relu(conv(x)))`` of ``x`` (N, H, W, 1) in the layout ``(F, Q, N)``.

        With ``pre = (scale, shift)`` (only when ``accepts_raw()``), ``x`` is raw images
        (N, H, W[, 1]) of any dtype, preprocessed straight into the transposed buffer: the same
        cast, multiply and add as ``Model.preprocess``, so the same values, without a separate
        (N, H, W, 1) array. The conv layer's own backward cannot follow such a forward (this
        stage's backward can)."""
        conv, pool = self.conv, self.pool
        oh, ow, f = conv.output_shape
        q, k = (oh // pool.ph) * (ow // pool.pw), conv.kh * conv.kw
        if pre is not None:
            scale, shift = pre
            n, h, w = x.shape[:3]
            self._pad, self._xshape = (0, 0, h, w), (n, h, w, 1)
            xT = self._bufs.get("xT", (h, w, n), scale.dtype)
            np.copyto(xT, x.reshape(n, h, w).transpose(1, 2, 0), casting="unsafe")
            xT *= scale
            xT += shift
            x = None
        else:
            x, self._pad = conv._pad_input(x)
            self._xshape = x.shape
            n, h, w, _ = x.shape
            xT = self._bufs.get("xT", (h, w, n), x.dtype)
            np.copyto(xT, x[..., 0].transpose(1, 2, 0))
        v = self._unroll(xT)
        colsT = self._bufs.get("colsT", v.shape, xT.dtype)
        np.copyto(colsT, v)
        pp = pool.ph * pool.pw
        y = self._bufs.get("yT", (f, pp, q, n), xT.dtype)
        m = self._bufs.get("mT", (f, q, n), xT.dtype)
        self._conv_pool_t(conv.params["W"].reshape(k, f).T, colsT.reshape(k, pp, q * n),
                          y.reshape(f, pp, q * n), m.reshape(f, q * n))
        out = m
        if conv.use_bias:
            out = np.add(m, conv.params["b"][:, None, None], out=self._bufs.get("outT", m.shape, m.dtype))
        if self.relu is not None:
            out = np.maximum(out, 0, out=out if out is not m else self._bufs.get("outT", m.shape, m.dtype))
        self._colsT, self._y, self._m, self._out = colsT, y, m, out
        # the conv layer's own backward rebuilds its unrolled input from the padded input
        conv._cols, conv._cols_pool, conv._xshape, conv._pad, conv._xpadded = None, (pool.ph, pool.pw), \
            self._xshape, self._pad, x
        return out

    def backward(self, dout):
        if not self._transposed:
            return super().backward(dout)
        f, q, n = self._m.shape
        d = self._bufs.get("dT", (f, q, n), dout.dtype)
        np.copyto(d, dout.reshape(n, q, f).transpose(2, 1, 0))
        return self.backward_t(d)

    def backward_t(self, d):
        """Backward from ``d`` = dL/d(stage output) in the layout ``(F, Q, N)`` (may be
        overwritten). Fills the conv's gradients; returns dL/dx (N, H, W, 1) or None."""
        conv = self.conv
        y, m = self._y, self._m
        f = m.shape[0]
        if self.relu is not None:
            np.multiply(d, self._out > 0, out=d)
        dy = self._bufs.get("dyT", y.shape, y.dtype)
        if conv.use_bias:  # compare as the unfused layers do, after adding the bias (same ties)
            b = conv.params["b"][:, None, None, None]
            np.add(y, b, out=dy)
            np.equal(dy, np.add(m[:, None], b), out=dy, casting="unsafe")
        else:  # 1 where an input equals its window's max
            np.equal(y, m[:, None], out=dy, casting="unsafe")
        np.multiply(dy, d[:, None], out=dy)
        k = conv.kh * conv.kw
        dy2 = dy.reshape(f, -1)
        thin_matmul_tn(self._colsT.reshape(k, -1).T, dy2.T, conv.grads["W"].reshape(k, f))
        if conv.use_bias:
            np.sum(dy2, axis=1, out=conv.grads["b"])
        if not conv.needs_input_grad:
            return None
        # rarely needed (a one-channel conv is usually the first layer): back to the pooled row
        # order of ConvMaxPool and its col2im
        dyn = np.ascontiguousarray(dy.transpose(3, 1, 2, 0)).reshape(-1, f)
        dcols = dyn @ conv.params["W"].reshape(k, f).T
        dx = conv.col2im(dcols, self._xshape, pool=(self.pool.ph, self.pool.pw))
        pt, pl, h, w = self._pad
        return dx[:, pt:pt + h, pl:pl + w, :]


class ConvPoolDenseT(ConvMaxPoolT):
    """``ConvMaxPoolT`` with the following ``flatten -> dense`` folded in:
    ``dense(flatten(pool(relu(conv(x)))))``. The ``(F, Q, N)`` pooled output goes straight
    into the dense product, with the dense weight rows permuted from flatten's ``(Q, F)``
    order to ``(F, Q)`` (a small copy per call), instead of transposing the activations there
    and back. Batches under ``min_batch`` run the three stages one by one. Same gradients as
    the unfused layers (``tests/test_fastpaths.py``)."""

    def __init__(self, conv, pool, relu=None, flatten=None, dense=None):
        super().__init__(conv, pool, relu)
        self.flatten, self.dense = flatten, dense
        self.layers = self.layers + [flatten, dense]

    def replica(self, conv_replica, flatten_replica=None, dense_replica=None):
        r = super().replica(conv_replica)
        r.flatten, r.dense = flatten_replica, dense_replica
        r.layers = r.layers[:-2] + [flatten_replica, dense_replica]
        return r

    #: the permuted dense weights kept across inference chunks (``begin_inference`` drops
    #: them; a training forward never uses them)
    _wfq_frozen = None

    def begin_inference(self):
        """Called before a run of inference chunks: the weights do not change during it."""
        self._wfq_frozen = None

    def _w_fq(self):
        """The dense weights (Q*F, U) with rows in (F, Q) order, as a contiguous copy."""
        f, q, _ = self._m.shape
        W = self.dense.params["W"]
        w = self._bufs.get("w_fq", W.shape, W.dtype)
        np.copyto(w.reshape(f, q, -1), W.reshape(q, f, -1).transpose(1, 0, 2))
        return w

    def forward(self, x, training=False, pre=None):
        if len(x) < self.min_batch:
            self._transposed = False
            h = ConvMaxPool.forward(self, x if pre is None else self._preprocess(x, pre), training)
            return self.dense.forward(self.flatten.forward(h, training), training)
        self._transposed = True
        out = self.forward_t(x, pre)
        self._out2 = out2 = out.reshape(-1, out.shape[2])  # (F*Q, N)
        if training:
            self._wfq = w = self._w_fq()
        else:
            w = self._wfq_frozen
            if w is None:
                w = self._wfq_frozen = self._w_fq().copy()
            self._wfq = w
        y = np.matmul(out2.T, w)
        if self.dense.use_bias:
            y += self.dense.params["b"]
        return y

    def backward(self, dy):
        if not self._transposed:
            g = self.flatten.backward(self.dense.backward(dy))
            return ConvMaxPool.backward(self, g)
        dense, out2, w = self.dense, self._out2, self._wfq
        f, q, n = self._m.shape
        gw = self._bufs.get("gw_fq", w.shape, w.dtype)
        np.matmul(out2, dy, out=gw)
        np.copyto(dense.grads["W"], gw.reshape(f, q, -1).transpose(1, 0, 2).reshape(w.shape))
        if dense.use_bias:
            np.sum(dy, axis=0, out=dense.grads["b"])
        d = self._bufs.get("dT", (f * q, n), dy.dtype)
        np.matmul(w, dy.T, out=d)
        return self.backward_t(d.reshape(f, q, n))

