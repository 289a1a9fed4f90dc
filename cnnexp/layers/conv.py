"""2-D convolution, written to be read: one strided window view, one copy into columns
(im2col), one matrix product.

Shapes are channels-last. For an input ``x`` of shape ``(N, H, W, C)`` and weights ``W`` of
shape ``(KH, KW, C, F)``:

* pad ``x`` (``same`` padding only) -> ``xp`` of shape ``(N, HP, WP, C)``;
* ``cols = windows(xp)`` reshaped to ``(N*OH*OW, KH*KW*C)``: one row per output pixel;
* ``y = cols @ W.reshape(KH*KW*C, F) + b``, reshaped to ``(N, OH, OW, F)``.

Backward, for ``dy`` of shape ``(N, OH, OW, F)`` flattened to ``dy2 = (N*OH*OW, F)``:
``dW = cols.T @ dy2``, ``db = dy2.sum(0)`` and ``dcols = dy2 @ W.T``, whose rows are summed
back onto the windows they came from (``col2im``, the adjoint of the window copy).

This file is the readable truth; ``cnnexp.engine`` runs the same maths fast.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..initializers import initialize
from ..registry import INITIALIZERS, LAYERS
from .base import Layer, ShapeError, pair, positive_int


def same_padding(size: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow-style 'same' padding: output size ceil(size / s); extra pixel goes after."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """Read-only view ``(N, OH, OW, KH, KW, C)`` of every ``kh x kw`` window of NHWC ``x``
    taken every ``sh`` rows and ``sw`` columns; no copy."""
    v = sliding_window_view(x, (kh, kw), axis=(1, 2))  # (N, H-kh+1, W-kw+1, C, KH, KW)
    return v[:, ::sh, ::sw].transpose(0, 1, 2, 4, 5, 3)


def scatter_windows(dwin: np.ndarray, xshape: tuple[int, ...], sh: int, sw: int) -> np.ndarray:
    """Adjoint of ``windows``: sum window gradients ``(N, OH, OW, KH, KW, C)`` onto an array
    of ``xshape``, one shifted strided add per kernel offset."""
    dx = np.zeros(xshape, dtype=dwin.dtype)
    _, oh, ow, kh, kw, _ = dwin.shape
    for i in range(kh):
        for j in range(kw):
            dx[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :] += dwin[:, :, :, i, j, :]
    return dx


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

    def pads(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((top, bottom), (left, right))`` zero padding for an ``h x w`` input."""
        if self.padding == "valid":
            return (0, 0), (0, 0)
        return same_padding(h, self.kh, self.sh), same_padding(w, self.kw, self.sw)

    def output_shape_for(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"expects an image input (H, W, C), got {input_shape}")
        h, w, _ = input_shape
        (pt, pb), (pl, pr) = self.pads(h, w)
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
        (pt, pb), (pl, pr) = self.pads(x.shape[1], x.shape[2])
        xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        win = windows(xp, self.kh, self.kw, self.sh, self.sw)  # (N, OH, OW, KH, KW, C)
        n, oh, ow = win.shape[:3]
        cols = win.reshape(n * oh * ow, -1)  # the one copy: (N*OH*OW, KH*KW*C)
        y = cols @ self.params["W"].reshape(-1, self.filters)
        if self.use_bias:
            y += self.params["b"]
        self._cols, self._xp_shape, self._win_shape = cols, xp.shape, win.shape
        self._crop = (pt, pl, x.shape[1], x.shape[2])
        return y.reshape(n, oh, ow, self.filters)

    def backward(self, dy):
        dy2 = dy.reshape(-1, self.filters)
        W2 = self.params["W"].reshape(-1, self.filters)
        self.grads["W"] = (self._cols.T @ dy2).reshape(self.params["W"].shape)
        if self.use_bias:
            self.grads["b"] = dy2.sum(axis=0)
        if not self.needs_input_grad:
            return None
        dcols = (dy2 @ W2.T).reshape(self._win_shape)
        dxp = scatter_windows(dcols, self._xp_shape, self.sh, self.sw)
        pt, pl, h, w = self._crop
        return dxp[:, pt:pt + h, pl:pl + w, :]
