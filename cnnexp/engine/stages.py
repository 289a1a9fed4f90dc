"""The plan's other stages. Each has ``forward(x, training)`` and ``backward(dy)`` (which
returns dL/dx, or None for the first stage) and writes its parameter gradients into the
arrays of the worker's gradient dict it was given."""

from __future__ import annotations

from functools import partial

import numpy as np

from . import helper
from .buffers import Buffers
from .ops import ActOp


class DenseStage:
    """``dense``, optionally followed by an activation (in place on the product's buffer)."""

    def __init__(self, dense, grads: dict, act=None, first: bool = False):
        self.W, self.b = dense.params["W"], dense.params.get("b")
        self.gW, self.gb = grads[f"{dense.name}.W"], grads.get(f"{dense.name}.b")
        self.act, self.first = act, first
        self.helper = None  # as ConvStage.helper
        self.bufs = Buffers()

    def forward(self, x, training=False):
        self.x = x
        y = np.matmul(x, self.W, out=self.bufs.get("y", (len(x), self.W.shape[1]), x.dtype))
        if self.b is not None:
            y += self.b
        return self.act.forward(y) if self.act is not None else y

    def backward(self, dy):
        if self.act is not None:
            dy = self.act.backward(dy, self.bufs.get("dact", dy.shape, dy.dtype))
        helper.hand_over(self.helper, partial(self._weight_grad, self.x, dy), self.gW.size * len(dy),
                         self.gW.size if len(dy) == 1 else 0)  # batch 1: an outer product, bound by writing
        return None if self.first else np.matmul(dy, self.W.T)

    def _weight_grad(self, x, dy):
        gWt = self.gW.T  # C-contiguous when W is stored column-major
        if len(dy) == 1:  # an outer product: cheaper than a BLAS call
            np.multiply(dy.T, x, out=gWt)
            if self.gb is not None:
                np.copyto(self.gb, dy[0])
        else:
            np.matmul(dy.T, x, out=gWt)
            if self.gb is not None:
                np.matmul(np.ones(len(dy), dy.dtype), dy, out=self.gb)


class OpStage:
    """A standalone activation or pool (one not fused into a conv or dense stage)."""

    def __init__(self, op, first: bool = False):
        self.op, self.first = op, first
        self.bufs = Buffers()

    def forward(self, x, training=False):
        if isinstance(self.op, ActOp):  # not in place on the previous stage's kept output
            y = self.bufs.get("y", x.shape, x.dtype)
            np.copyto(y, x)
            return self.op.forward(y)
        return self.op.forward(x)

    def backward(self, dy):
        if self.first:
            return None
        if isinstance(self.op, ActOp):
            return self.op.backward(dy, self.bufs.get("dx", dy.shape, dy.dtype))
        return self.op.backward(dy)


class FlattenStage:
    def forward(self, x, training=False):
        self.shape = x.shape
        return x.reshape(len(x), -1)

    def backward(self, dy):
        return dy.reshape(self.shape)


class DropoutStage:
    """Inverted dropout with a mask the engine sets (``mask``) before each training forward:
    the rows of a mask drawn for the whole batch (``Dropout.draw_mask``)."""

    def __init__(self, layer):
        self.layer = layer
        self.mask = None

    def forward(self, x, training=False):
        if not training or self.layer.rate == 0:
            self.mask = None
            return x
        return x * self.mask

    def backward(self, dy):
        return dy if self.mask is None else dy * self.mask


class LayerStage:
    """Any other layer (a user-registered one, softmax mid-network...) run as itself: a
    replica with its own forward state and gradients, copied into the worker's slots."""

    def __init__(self, layer, grads: dict, first: bool = False):
        self.layer = layer.replica()
        self.layer.needs_input_grad = not first
        self.slots = [(k, grads[f"{layer.name}.{k}"]) for k in layer.params]

    def forward(self, x, training=False):
        return self.layer.forward(x, training)

    def backward(self, dy):
        dx = self.layer.backward(dy)
        for k, g in self.slots:
            np.copyto(g, self.layer.grads[k])
        return dx
