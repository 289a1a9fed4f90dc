"""Scratch arrays a stage keeps between calls."""

from __future__ import annotations

import numpy as np


class Buffers:
    """Arrays re-made only when the requested shape or dtype changes (no allocation and no
    page faults in the steady state of a training loop). ``zero="new"`` zeroes an array only
    when it is made (a padded input whose border is never written); ``zero=True`` every call.
    ``fill`` is called on an array when it is made (for a border or column set once)."""

    __slots__ = ("_d",)

    def __init__(self):
        self._d = {}

    def get(self, key, shape, dtype, zero=False, fill=None):
        a = self._d.get(key)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = self._d[key] = np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
            if fill is not None:
                fill(a)
        elif zero is True:
            a.fill(0)
        return a
