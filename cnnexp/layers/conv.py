"""2-D convolution as one strided window view plus one matrix multiply (im2col)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..initializers import initialize
from ..registry import INITIALIZERS, LAYERS
from .base import Layer, ShapeError, pair, positive_int


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

    def forward(self, x, training=False):
        n, h, w, c = x.shape
        (pt, pb), (pl, pr) = self._pads(h, w)
        if pt or pb or pl or pr:
            x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        self._xshape = x.shape
        win = windows(x, self.kh, self.kw, self.sh, self.sw)
        _, oh, ow = win.shape[:3]
        cols = win.reshape(n * oh * ow, self.kh * self.kw * c)  # the one copy
        y = cols @ self.params["W"].reshape(-1, self.filters)
        if self.use_bias:
            y += self.params["b"]
        self._cols, self._pad = cols, (pt, pl, h, w)
        return y.reshape(n, oh, ow, self.filters)

    def backward(self, dy):
        n, oh, ow, f = dy.shape
        dy2 = dy.reshape(-1, f)
        W = self.params["W"]
        self.grads["W"] = (self._cols.T @ dy2).reshape(W.shape)
        if self.use_bias:
            self.grads["b"] = dy2.sum(axis=0)
        if not self.needs_input_grad:
            return None
        dcols = (dy2 @ W.reshape(-1, f).T).reshape(n, oh, ow, self.kh, self.kw, W.shape[2])
        dx = np.zeros(self._xshape, dtype=dy.dtype)
        for i in range(self.kh):  # loop over kernel offsets only: scatter-add each offset's slab
            for j in range(self.kw):
                dx[:, i:i + self.sh * oh:self.sh, j:j + self.sw * ow:self.sw, :] += dcols[:, :, :, i, j, :]
        pt, pl, h, w = self._pad
        return dx[:, pt:pt + h, pl:pl + w, :]
