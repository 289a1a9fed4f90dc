"""Weight initializers, registered by short name.

Each takes ``(shape, fan_in, fan_out, rng, dtype)`` and returns an array of ``shape``.
``randn_fan_in`` is the seed post's rule: ``randn(...) / fan_in`` (conv: /9 for a 3x3 kernel
on one channel; dense: /input_len).
"""

from __future__ import annotations

import numpy as np

from .registry import INITIALIZERS


def _reg(name):
    return INITIALIZERS.register(name)


@_reg("zeros")
def zeros(shape, fan_in, fan_out, rng, dtype):
    return np.zeros(shape, dtype)


@_reg("ones")
def ones(shape, fan_in, fan_out, rng, dtype):
    return np.ones(shape, dtype)


@_reg("randn_fan_in")
def randn_fan_in(shape, fan_in, fan_out, rng, dtype):
    return (rng.standard_normal(shape) / fan_in).astype(dtype)


@_reg("lecun_normal")
def lecun_normal(shape, fan_in, fan_out, rng, dtype):
    return (rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)).astype(dtype)


@_reg("he_normal")
def he_normal(shape, fan_in, fan_out, rng, dtype):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


@_reg("he_uniform")
def he_uniform(shape, fan_in, fan_out, rng, dtype):
    lim = np.sqrt(6.0 / fan_in)
    return rng.uniform(-lim, lim, shape).astype(dtype)


@_reg("glorot_uniform")
def glorot_uniform(shape, fan_in, fan_out, rng, dtype):
    lim = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-lim, lim, shape).astype(dtype)


@_reg("glorot_normal")
def glorot_normal(shape, fan_in, fan_out, rng, dtype):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / (fan_in + fan_out))).astype(dtype)


def initialize(name: str, shape, fan_in: int, fan_out: int, rng, dtype) -> np.ndarray:
    return np.ascontiguousarray(INITIALIZERS.get(name)(tuple(shape), fan_in, fan_out, rng, dtype))
