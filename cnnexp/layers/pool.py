"""Max and average pooling over ``pool x pool`` windows (stride defaults to the pool size).

Input ``(N, H, W, C)`` -> output ``(N, OH, OW, C)`` with ``OH = (H - PH) // SH + 1`` (and the
same for widths). When the windows tile the input (stride == pool) pooling is a reshape to
``(N, OH, PH, OW, PW, C)`` and a reduction; otherwise it reduces a strided window view
``(N, OH, OW, PH, PW, C)`` and backward sums the window gradients back (``scatter_windows``).
"""

from __future__ import annotations

import numpy as np

from ..registry import LAYERS
from .base import Layer, ShapeError, pair
from .conv import scatter_windows, windows


class _Pool2D(Layer):
    def __init__(self, pool=2, stride=None):
        super().__init__()
        self.ph, self.pw = pair(pool, "pool")
        self.sh, self.sw = pair(stride if stride is not None else (self.ph, self.pw), "stride")

    @property
    def tiled(self) -> bool:
        """Non-overlapping windows with no gaps: pooling is a reshape, no window view needed."""
        return (self.sh, self.sw) == (self.ph, self.pw)

    def output_shape_for(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"expects an image input (H, W, C), got {input_shape}")
        h, w, c = input_shape
        if self.ph > h or self.pw > w:
            raise ShapeError(f"pool {self.ph}x{self.pw} is larger than its input {h}x{w}")
        return ((h - self.ph) // self.sh + 1, (w - self.pw) // self.sw + 1, c)

    def _view(self, x):
        """The windows of ``x`` and the axes to reduce: tiled ``(N, OH, PH, OW, PW, C)`` over
        axes (2, 4), otherwise ``(N, OH, OW, PH, PW, C)`` over axes (3, 4)."""
        if self.tiled:
            n, h, w, c = x.shape
            oh, ow = h // self.ph, w // self.pw
            return x[:, :oh * self.ph, :ow * self.pw, :].reshape(n, oh, self.ph, ow, self.pw, c), (2, 4)
        return windows(x, self.ph, self.pw, self.sh, self.sw), (3, 4)

    def _back(self, dwin, xshape):
        """Window gradients (shaped like ``_view``'s) back onto an input of ``xshape``."""
        if self.tiled:
            n, oh, ph, ow, pw, c = dwin.shape
            dx = np.zeros(xshape, dtype=dwin.dtype)
            dx[:, :oh * ph, :ow * pw, :] = dwin.reshape(n, oh * ph, ow * pw, c)
            return dx
        return scatter_windows(dwin, xshape, self.sh, self.sw)

    def _expand(self, a):
        """Output-shaped ``a`` broadcastable against ``_view``'s windows."""
        return a[:, :, None, :, None, :] if self.tiled else a[:, :, :, None, None, :]


@LAYERS.register("maxpool2d")
class MaxPool2D(_Pool2D):
    """Max pooling. Backward passes the gradient to every input equal to its window's max
    (as the seed post's code does; ties share the full gradient)."""

    def forward(self, x, training=False):
        win, axes = self._view(x)
        y = win.max(axis=axes)
        self._x, self._y = x, y
        return y

    def backward(self, dy):
        win, _ = self._view(self._x)
        mask = win == self._expand(self._y)
        return self._back(mask * self._expand(dy), self._x.shape)


@LAYERS.register("avgpool2d")
class AvgPool2D(_Pool2D):
    """Average pooling; backward spreads each gradient evenly over its window."""

    def forward(self, x, training=False):
        self._xshape = x.shape
        win, axes = self._view(x)
        return win.mean(axis=axes)

    def backward(self, dy):
        n, oh, ow, c = dy.shape
        win_shape = (n, oh, self.ph, ow, self.pw, c) if self.tiled else (n, oh, ow, self.ph, self.pw, c)
        g = self._expand(dy / (self.ph * self.pw))
        return self._back(np.broadcast_to(g, win_shape), self._xshape)
