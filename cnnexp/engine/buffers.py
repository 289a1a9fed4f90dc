"""Scratch arrays a stage keeps between calls."""

from __future__ import annotations

import numpy as np


class Buffers:
    """Arrays re-made only when a request does not fit the kept one (no allocation and no page
    faults in the steady state of a training loop). A request for fewer rows (first axis) than
    the kept array has, with the same other dimensions and dtype, gets a view of its first rows:
    the short last batch of an epoch or chunk of an inference does not re-make every buffer
    (twice: for it and for the full-size call after it).

    ``zero="new"`` zeroes an array only when it is made (a padded input whose border is never
    written); ``zero=True`` on every call. ``fill`` is called on an array when it is made (for a
    border or a column set once)."""

    __slots__ = ("_d",)

    def __init__(self):
        self._d = {}

    def get(self, key, shape, dtype, zero=False, fill=None):
        a = self._d.get(key)
        if a is None or a.shape[1:] != shape[1:] or a.shape[0] < shape[0] or a.dtype != dtype:
            a = self._d[key] = np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
            if fill is not None:
                fill(a)
            return a
        if a.shape[0] != shape[0]:
            a = a[:shape[0]]
        if zero is True:
            a.fill(0)
        return a
