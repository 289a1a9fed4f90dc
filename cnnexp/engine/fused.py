"""Compiled loops (numba) for the array passes of Winograd F(2, 3) (``winograd.py``), the conv
stage's input-gradient adds (``conv.py``), and relu's and the max-pool's gradients (``ops.py``).

numpy runs each transform as several passes over whole arrays (four for the input transform,
five for the output transform and bias, four for the backward's ``dm``, four plus twelve shifted
adds for the input gradient), each reading and writing every value again. Here each group is one
loop doing, for every element, the same float operations in the same order as the passes, so
the results are the same numbers (``tests/test_engines.py`` checks it), with each value read and
written once (``benchmarks/fusion_probe.py``, ``benchmarks/NOTES.md``, session 9).

The input gradient keeps the passes' order of adds (offset k, then kernel row i, each over all
values), computing the transformed values as it adds them instead of storing them first.

``kernels()`` compiles on first use (cached on disk by numba) and returns None when numba is
missing or ``CNNEXP_FUSED=0``: the numpy passes then run (``enabled`` refuses other values).
"""

from __future__ import annotations

import os

from ..errors import ConfigError

_KERNELS: list = []  # [kernels or None], filled on first use
#: fewest values for which the element-wise backward passes (``ops.py``) call a compiled loop
#: (a call has a fixed cost of its own: small arrays keep numpy's passes)
MIN_SIZE = 1 << 14


def enabled() -> bool:
    """``$CNNEXP_FUSED``: 1 (the default) for the compiled loops, 0 for numpy's passes; anything
    else is a ConfigError naming the value (the engine asks when it is built)."""
    v = os.environ.get("CNNEXP_FUSED", "1").strip() or "1"
    if v not in ("0", "1"):
        raise ConfigError(f"CNNEXP_FUSED={v!r} is invalid: use 1 (compiled loops, the default) or 0 (numpy's passes)")
    return v == "1"


def kernels():
    """The compiled loops by name (see ``_compile``), or None."""
    if not _KERNELS:
        _KERNELS.append(_compile() if enabled() else None)
    return _KERNELS[0]


def _probe():  # a function to try numba's on-disk cache with
    return 0


def _compile():
    try:
        import numba
    except ImportError:
        return None
    try:  # compiled once per machine (numba's cache: next to this file, or the user's cache dir)
        jit = numba.njit(cache=True, boundscheck=False, nogil=True)
        jit(_probe)
    except RuntimeError:  # no writable cache location: compiled in every process
        jit = numba.njit(cache=False, boundscheck=False, nogil=True)

    @jit
    def input_t(xp, v):
        """``v`` (4, N, OH, V, KH, C): ``d0 - d2, d1 + d2, d2 - d1, d1 - d3`` with
        ``d_k = xp[n, oh + i, 2v + k, c]``."""
        _, n, oh, nv, kh, c = v.shape
        for a in range(n):
            for h in range(oh):
                for u in range(nv):
                    for i in range(kh):
                        for ch in range(c):
                            d0 = xp[a, h + i, 2 * u, ch]
                            d1 = xp[a, h + i, 2 * u + 1, ch]
                            d2 = xp[a, h + i, 2 * u + 2, ch]
                            d3 = xp[a, h + i, 2 * u + 3, ch]
                            v[0, a, h, u, i, ch] = d0 - d2
                            v[1, a, h, u, i, ch] = d1 + d2
                            v[2, a, h, u, i, ch] = d2 - d1
                            v[3, a, h, u, i, ch] = d1 - d3

    @jit
    def output_t(m, y0, y1, b, bias):
        """``y0 = m0 + m1 + m2 (+ b)``, ``y1 = m1 - m2 - m3 (+ b)``; ``m`` and the two column
        views shaped (N, U, A, V, F) (rows 2u + a; A = 1 for a plain output)."""
        n, nu, na, nv, f = y0.shape
        for a in range(n):
            for u in range(nu):
                for r in range(na):
                    for w in range(nv):
                        for k in range(f):
                            m1, m2 = m[1, a, u, r, w, k], m[2, a, u, r, w, k]
                            e = m[0, a, u, r, w, k] + m1
                            e += m2
                            o = m1 - m2
                            o -= m[3, a, u, r, w, k]
                            if bias:
                                e += b[k]
                                o += b[k]
                            y0[a, u, r, w, k] = e
                            y1[a, u, r, w, k] = o

    @jit
    def dm_t(dy0, dy1, d):
        """``d`` (4, N, U, A, V, F): ``dy0, dy0 + dy1, dy0 - dy1, dy1``."""
        n, nu, na, nv, f = dy0.shape
        for a in range(n):
            for u in range(nu):
                for r in range(na):
                    for w in range(nv):
                        for k in range(f):
                            g0, g1 = dy0[a, u, r, w, k], dy1[a, u, r, w, k]
                            d[0, a, u, r, w, k] = g0
                            d[1, a, u, r, w, k] = g0 + g1
                            d[2, a, u, r, w, k] = g0 - g1
                            d[3, a, u, r, w, k] = g1

    @jit
    def input_grad_t(dv, dxp, zero):
        """``dxp`` (N, OH + KH - 1, 2V + 2, C) from ``dv`` (4, N, OH, V, KH, C) (``dv[3]`` holding
        -dV3): sources dV0, dV1 - dV2 + dV3, dV1 + dV2 - dV0, dV3 at columns 2v + k, k = 0..3;
        ``zero`` a 0 of the arrays' type (the sums stay in it)."""
        _, n, oh, nv, kh, c = dv.shape
        dxp[...] = zero
        for k in range(4):  # the passes' order: offset k, then kernel row i, each over all values
            for i in range(kh):
                for a in range(n):
                    for h in range(oh):
                        for u in range(nv):
                            col = 2 * u + k
                            if k == 0:
                                for ch in range(c):
                                    dxp[a, h + i, col, ch] += dv[0, a, h, u, i, ch]
                            elif k == 1:
                                for ch in range(c):
                                    s = dv[1, a, h, u, i, ch] - dv[2, a, h, u, i, ch]
                                    s -= dv[3, a, h, u, i, ch]
                                    dxp[a, h + i, col, ch] += s
                            elif k == 2:
                                for ch in range(c):
                                    s = dv[1, a, h, u, i, ch] + dv[2, a, h, u, i, ch]
                                    s -= dv[0, a, h, u, i, ch]
                                    dxp[a, h + i, col, ch] += s
                            else:
                                for ch in range(c):
                                    dxp[a, h + i, col, ch] += dv[3, a, h, u, i, ch]

    @jit
    def shifted_adds(t, dxp, kw, sh, sw):
        """``dxp[:, i + sh * h, j + sw * w] += t[i * kw + j, :, h, w]`` for every kernel offset
        (i, j) in order (``conv.ConvStage._input_grad``'s adds, one loop)."""
        kk, n, oh, ow, c = t.shape
        for o in range(kk):
            i, j = o // kw, o % kw
            for a in range(n):
                for h in range(oh):
                    for w in range(ow):
                        r, q = i + sh * h, j + sw * w
                        for ch in range(c):
                            dxp[a, r, q, ch] += t[o, a, h, w, ch]

    @jit
    def relu_backward(dy, y, out, one):
        """``out = dy * (y > 0)`` over flat arrays, as ``ops.ActOp.backward``'s two passes give
        it (``one`` a 1 of the arrays' type). Not for tanh and sigmoid: their numpy passes ran
        faster than one loop (benchmarks/NOTES.md, session 9)."""
        zero = one - one
        for e in range(out.size):
            out[e] = dy[e] * (one if y[e] > zero else zero)

    @jit
    def max_pool_backward(y, o, g, d, one):
        """``d[n, b] = (y[n, b] == o[n]) * g[n]`` for the (N, PH*PW, rest) block view."""
        n, k, r = y.shape
        zero = one - one
        for a in range(n):
            for b in range(k):
                for e in range(r):
                    t = one if y[a, b, e] == o[a, e] else zero
                    d[a, b, e] = t * g[a, e]

    return {"input": input_t, "output": output_t, "dm": dm_t, "input_grad": input_grad_t,
            "shifted_adds": shifted_adds, "relu_backward": relu_backward, "max_pool_backward": max_pool_backward}
