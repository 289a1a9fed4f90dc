"""Max and average pooling over ``pool x pool`` windows (stride defaults to the pool size)."""

from __future__ import annotations

import numpy as np

from ..registry import LAYERS
from .base import Layer, ShapeError, pair
from .conv import windows


class _Pool2D(Layer):
    def __init__(self, pool=2, stride=None):
        super().__init__()
        self.ph, self.pw = pair(pool, "pool")
        self.sh, self.sw = pair(stride if stride is not None else (self.ph, self.pw), "stride")

    @property
    def _tiled(self) -> bool:
        """Non-overlapping windows: pooling is a reshape, no window view needed."""
        return (self.sh, self.sw) == (self.ph, self.pw)

    def output_shape_for(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"expects an image input (H, W, C), got {input_shape}")
        h, w, c = input_shape
        if self.ph > h or self.pw > w:
            raise ShapeError(f"pool {self.ph}x{self.pw} is larger than its input {h}x{w}")
        return ((h - self.ph) // self.sh + 1, (w - self.pw) // self.sw + 1, c)

    def _blocks(self, x):
        """Tiled case: view (N, OH, PH, OW, PW, C) of the part of x that the windows cover."""
        n, h, w, c = x.shape
        oh, ow = h // self.ph, w // self.pw
        return x[:, :oh * self.ph, :ow * self.pw, :].reshape(n, oh, self.ph, ow, self.pw, c)

    def _unblock(self, dblk, xshape):
        """Tiled case: gradient blocks (N, OH, PH, OW, PW, C) back to an input of ``xshape``."""
        n, oh, ph, ow, pw, c = dblk.shape
        if (oh * ph, ow * pw) == tuple(xshape[1:3]):
            return dblk.reshape(xshape)
        dx = np.zeros(xshape, dtype=dblk.dtype)
        dx[:, :oh * ph, :ow * pw, :] = dblk.reshape(n, oh * ph, ow * pw, c)
        return dx

    def _scatter(self, dwin, xshape):
        """Overlapping case: sum window gradients (N, OH, OW, PH, PW, C) onto ``xshape``."""
        dx = np.zeros(xshape, dtype=dwin.dtype)
        n, oh, ow = dwin.shape[:3]
        for i in range(self.ph):
            for j in range(self.pw):
                dx[:, i:i + self.sh * oh:self.sh, j:j + self.sw * ow:self.sw, :] += dwin[:, :, :, i, j, :]
        return dx


@LAYERS.register("maxpool2d")
class MaxPool2D(_Pool2D):
    """Max pooling. Backward passes the gradient to every input equal to its window's max
    (as the seed post's code does; ties share the full gradient)."""

    def forward(self, x, training=False):
        if self._tiled:
            y = self._blocks(x).max(axis=(2, 4))
        else:
            y = windows(x, self.ph, self.pw, self.sh, self.sw).max(axis=(3, 4))
        self._x, self._y = x, y
        return y

    def backward(self, dy):
        x, y = self._x, self._y
        if self._tiled:
            mask = self._blocks(x) == y[:, :, None, :, None, :]
            return self._unblock(mask * dy[:, :, None, :, None, :], x.shape)
        win = windows(x, self.ph, self.pw, self.sh, self.sw)
        return self._scatter((win == y[:, :, :, None, None, :]) * dy[:, :, :, None, None, :], x.shape)


@LAYERS.register("avgpool2d")
class AvgPool2D(_Pool2D):
    """Average pooling; backward spreads each gradient evenly over its window."""

    def forward(self, x, training=False):
        self._xshape = x.shape
        if self._tiled:
            return self._blocks(x).mean(axis=(2, 4))
        return windows(x, self.ph, self.pw, self.sh, self.sw).mean(axis=(3, 4))

    def backward(self, dy):
        n, oh, ow, c = dy.shape
        g = dy / (self.ph * self.pw)
        if self._tiled:
            return self._unblock(np.broadcast_to(g[:, :, None, :, None, :], (n, oh, self.ph, ow, self.pw, c)),
                                 self._xshape)
        return self._scatter(np.broadcast_to(g[:, :, :, None, None, :], (n, oh, ow, self.ph, self.pw, c)),
                             self._xshape)
