"""2-D convolution as one unrolling copy (im2col) plus one matrix multiply.

Performance notes (measured on a 2-core SkylakeX with OpenBLAS, numpy 2.4):

* The unrolled input ``cols`` is built into a buffer the layer keeps between calls (no
  allocation and no page faults per step). For one input channel it is a single ``np.take``
  with a precomputed index; otherwise one strided copy whose inner runs are ``kw * C``
  contiguous values.
* ``cols`` rows can be ordered ``(n, pool_dy, pool_dx, oh/ph, ow/pw)`` (see ``pool_order``)
  so that a following tiled max-pool is an element-wise maximum of ``ph * pw`` contiguous
  blocks (``cnnexp.layers.fused.ConvMaxPool``); the plain layer uses the natural
  ``(n, oh, ow)`` order.
* The weight gradient ``cols.T @ dy`` is a thin product (``K x rows`` by ``rows x F``, K and F
  small); OpenBLAS slows down several times once ``rows`` passes ~8-16k, so it runs in chunks
  of at most ``CHUNK_ROWS`` rows.
* ``input_grad_by_offsets`` computes dL/dx as one batched product per kernel offset plus
  KH*KW shifted adds of whole rows (the sub-batched ``ConvMaxPool`` uses it); ``col2im``
  scatters C values at a time.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..initializers import initialize
from ..registry import INITIALIZERS, LAYERS
from .base import Buffers, Layer, ShapeError, pair, positive_int

#: rows per chunk of the thin weight-gradient product (see module doc)
CHUNK_ROWS = 8192


def same_padding(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow-style 'same' padding: output size ceil(size / s); extra pixel goes after."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """Read-only view (N, OH, OW, KH, KW, C) of every kernel window of NHWC ``x``; no copy."""
    n, h, w, c = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    s0, s1, s2, s3 = x.strides
    return as_strided(x, (n, oh, ow, kh, kw, c), (s0, s1 * sh, s2 * sw, s1, s2, s3), writeable=False)


def pooled_windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int) -> np.ndarray:
    """Read-only view (N, PH, PW, OH/PH, OW/PW, KH, KW, C) of the kernel windows of ``x``,
    grouped by their position inside non-overlapping ``ph x pw`` pooling tiles of the conv
    output (the conv output size must be a multiple of the pool size)."""
    n, h, w, c = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    s0, s1, s2, s3 = x.strides
    return as_strided(x, (n, ph, pw, oh // ph, ow // pw, kh, kw, c),
                      (s0, s1 * sh, s2 * sw, s1 * sh * ph, s2 * sw * pw, s1, s2, s3), writeable=False)


def thin_matmul_tn(a: np.ndarray, b: np.ndarray, out: np.ndarray, chunk: int = CHUNK_ROWS) -> np.ndarray:
    """``out[...] = a.T @ b`` for tall ``a`` (rows x K) and ``b`` (rows x F), in row chunks."""
    rows = a.shape[0]
    if rows <= chunk or min(a.shape[1], b.shape[1]) > 32:  # only thin products slow down
        return np.matmul(a.T, b, out=out)
    tmp = np.empty_like(out)
    np.matmul(a[:chunk].T, b[:chunk], out=out)
    for s in range(chunk, rows, chunk):
        np.matmul(a[s:s + chunk].T, b[s:s + chunk], out=tmp)
        out += tmp
    return out


def column_sums(a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = a.sum(axis=0)`` for ``a`` (rows x F), as one matrix-vector product (a
    bias gradient; measured ~6x faster than numpy's reduction over the long axis on
    keras_mnist's 1152 x 64 pieces)."""
    return np.matmul(np.ones(a.shape[0], a.dtype), a, out=out)


@LAYERS.register("conv2d")
class Conv2D(Layer):
    """Convolution with ``filters`` output channels.

    Input ``(N, H, W, C)`` -> output ``(N, OH, OW, filters)``; weights ``W`` have shape
    ``(KH, KW, C, filters)``, bias ``b`` shape ``(filters,)`` (absent when ``bias=False``).
    ``padding``: ``valid`` (no padding) or ``same`` (output = ceil(input / stride)).
    """

    def __init__(self, filters: int, kernel_size=3, stride=1, padding: str = "valid", bias: bool = True,
                 init: str = "he_normal", bias_init: str = "zeros"):
        super().__init__()
        self.filters = positive_int(filters, "filters")
        self.kh, self.kw = pair(kernel_size, "kernel_size")
        self.sh, self.sw = pair(stride, "stride")
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be true or false, got {bias!r}")
        self.padding, self.use_bias = padding, bias
        self.init, self.bias_init = INITIALIZERS.get(init) and init, INITIALIZERS.get(bias_init) and bias_init
        self._bufs = Buffers()
        self._index_cache = {}

    def _pads(self, h, w):
        if self.padding == "valid":
            return (0, 0), (0, 0)
        return same_padding(h, self.kh, self.sh), same_padding(w, self.kw, self.sw)

    def output_shape_for(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"expects an image input (H, W, C), got {input_shape}")
        h, w, _ = input_shape
        (pt, pb), (pl, pr) = self._pads(h, w)
        hp, wp = h + pt + pb, w + pl + pr
        if self.kh > hp or self.kw > wp:
            raise ShapeError(f"kernel {self.kh}x{self.kw} is larger than its input {h}x{w}")
        return ((hp - self.kh) // self.sh + 1, (wp - self.kw) // self.sw + 1, self.filters)

    def init_params(self, rng, dtype):
        c = self.input_shape[2]
        fan_in, fan_out = self.kh * self.kw * c, self.kh * self.kw * self.filters
        self.params["W"] = initialize(self.init, (self.kh, self.kw, c, self.filters), fan_in, fan_out, rng, dtype)
        if self.use_bias:
            self.params["b"] = initialize(self.bias_init, (self.filters,), fan_in, fan_out, rng, dtype)

    # -- the unrolled input ---------------------------------------------------------------
    def _pad_input(self, x):
        n, h, w, c = x.shape
        (pt, pb), (pl, pr) = self._pads(h, w)
        if pt or pb or pl or pr:
            xp = self._bufs.get("xpad", (n, h + pt + pb, w + pl + pr, c), x.dtype, zero=True)
            xp[:, pt:pt + h, pl:pl + w, :] = x
            x = xp
        return x, (pt, pl, h, w)

    def _take_index(self, shape, pool):
        """Flat per-image input index of every cols entry (single-channel inputs)."""
        key = (shape, pool)
        idx = self._index_cache.get(key)
        if idx is None:
            _, h, w, c = shape
            probe = np.arange(h * w * c, dtype=np.intp).reshape(1, h, w, c)
            if pool is None:
                v = windows(probe, self.kh, self.kw, self.sh, self.sw)
            else:
                v = pooled_windows(probe, self.kh, self.kw, self.sh, self.sw, *pool)
            idx = self._index_cache[key] = np.ascontiguousarray(v).reshape(-1)
        return idx

    def im2col(self, x, pool=None, out=None):
        """Unroll padded ``x`` into ``cols`` (rows x KH*KW*C): ``out`` if given (C-contiguous,
        that shape), else a buffer reused between calls. Rows are ordered (n, oh, ow), or
        (n, ph, pw, oh/ph, ow/pw) when ``pool=(ph, pw)``."""
        n, h, w, c = x.shape
        oh, ow = (h - self.kh) // self.sh + 1, (w - self.kw) // self.sw + 1
        k = self.kh * self.kw * c
        cols = self._bufs.get("cols", (n * oh * ow, k), x.dtype) if out is None else out
        if c == 1 and x.flags.c_contiguous:
            idx = self._take_index(x.shape, pool)
            np.take(x.reshape(n, h * w), idx, axis=1, out=cols.reshape(n, idx.size), mode="clip")
        else:
            if pool is None:
                v = windows(x, self.kh, self.kw, self.sh, self.sw)
            else:
                v = pooled_windows(x, self.kh, self.kw, self.sh, self.sw, *pool)
            np.copyto(cols.reshape(v.shape), v)
        return cols

    def col2im(self, dcols, xshape, pool=None, out=None):
        """Sum the gradient of every unrolled entry back onto the (padded) input: the adjoint
        of ``im2col``. A loop over kernel offsets (and pool positions), never over pixels.
        Accumulates into ``out`` (``xshape``, zeroed by the caller) when given."""
        n, h, w, c = xshape
        oh, ow = (h - self.kh) // self.sh + 1, (w - self.kw) // self.sw + 1
        dx = np.zeros(xshape, dtype=dcols.dtype) if out is None else out
        sh, sw = self.sh, self.sw
        if pool is None:
            d = dcols.reshape(n, oh, ow, self.kh, self.kw, c)
            for i in range(self.kh):
                for j in range(self.kw):
                    dx[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :] += d[:, :, :, i, j, :]
            return dx
        ph, pw = pool
        qh, qw = oh // ph, ow // pw
        d = dcols.reshape(n, ph, pw, qh, qw, self.kh, self.kw, c)
        for a in range(ph):
            for b in range(pw):
                for i in range(self.kh):
                    for j in range(self.kw):
                        r0, c0 = a * sh + i, b * sw + j
                        dx[:, r0:r0 + sh * ph * qh:sh * ph, c0:c0 + sw * pw * qw:sw * pw, :] += d[:, a, b, :, :, i, j, :]
        return dx

    def input_grad_by_offsets(self, dy, out, tmp=None):
        """``out`` (the padded input's shape, zeroed by the caller) += dL/dx for the output
        gradient ``dy`` (N, OH, OW, F) in natural order. One batched product gives
        ``dy @ W[i, j].T`` for every kernel offset, shape (KH*KW, N, OH, OW, C); each is added to
        its shifted window of ``out``. The same sums as ``col2im(dy @ W.T)``, but the adds run
        over whole image rows instead of C values at a time (measured ~2x faster on
        keras_mnist's 24x24x64 -> 26x26x32). ``tmp`` is an optional scratch buffer of the
        product's shape."""
        n, oh, ow, f = dy.shape
        c, kk = out.shape[3], self.kh * self.kw
        wk = self._bufs.get("w_offsets", (kk, f, c), dy.dtype)
        np.copyto(wk.reshape(self.kh, self.kw, f, c), self.params["W"].transpose(0, 1, 3, 2))
        if tmp is None:
            tmp = self._bufs.get("dx_offsets", (kk, n * oh * ow, c), dy.dtype)
        np.matmul(dy.reshape(1, -1, f), wk, out=tmp)
        t = tmp.reshape(kk, n, oh, ow, c)
        sh, sw = self.sh, self.sw
        for i in range(self.kh):
            for j in range(self.kw):
                out[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :] += t[i * self.kw + j]
        return out

    def weight_grad(self, cols, dy2):
        """Fill ``grads`` from the unrolled input and the output gradient (rows x F), rows in
        the same order. Writes into the existing gradient arrays."""
        gW = self.grads["W"]
        thin_matmul_tn(cols, dy2, gW.reshape(-1, self.filters))
        if self.use_bias:
            column_sums(dy2, self.grads["b"])

    # -- layer interface ------------------------------------------------------------------
    def forward(self, x, training=False):
        x, self._pad = self._pad_input(x)
        n = x.shape[0]
        self._xshape = x.shape
        cols = self.im2col(x)
        self._cols, self._cols_pool = cols, None
        oh, ow, f = self.output_shape
        y = np.matmul(cols, self.params["W"].reshape(-1, f))
        if self.use_bias:
            y += self.params["b"]
        return y.reshape(n, oh, ow, f)

    def backward(self, dy):
        n, oh, ow, f = dy.shape
        pool = self._cols_pool
        if pool is None:
            dy2 = np.ascontiguousarray(dy).reshape(-1, f)
        else:  # the last forward ran fused with a max-pool (ConvMaxPool): cols rows are in pooled order
            ph, pw = pool
            dy2 = np.ascontiguousarray(dy.reshape(n, oh // ph, ph, ow // pw, pw, f).transpose(0, 2, 4, 1, 3, 5))
            dy2 = dy2.reshape(-1, f)
        if self._cols is None:  # a chunked fused forward kept only the padded input
            self._cols = self.im2col(self._xpadded, pool)
        self.weight_grad(self._cols, dy2)
        if not self.needs_input_grad:
            return None
        W = self.params["W"]
        dcols = dy2 @ W.reshape(-1, f).T
        dx = self.col2im(dcols, self._xshape, pool)
        pt, pl, h, w = self._pad
        return dx[:, pt:pt + h, pl:pl + w, :]
