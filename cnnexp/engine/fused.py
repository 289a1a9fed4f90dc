"""Compiled loops (numba) for the array passes of Winograd F(2, 3), F(4, 3) and F(2, 5) (``winograd.py``),
the conv stage's input-gradient adds (``conv.py``), relu and its gradient, the max-pool's gradient and
the average pool's with a tanh's or sigmoid's before it (``ops.py``), and SGD's update over a
model's flat parameters (``optimizers.SGD``: one pass where numpy needs a temporary).

numpy runs each transform as several passes over whole arrays (for F(2, 3): four for the input
transform, five for the output transform and bias, four for the backward's ``dm``, four plus
twelve shifted adds for the input gradient), each reading and writing every value again. Here
each group is one loop doing, for every element, the same float operations in the same order as
the passes (``winograd._combine`` over ``winograd.TRANSFORMS``), so the results are the same
numbers (``tests/test_engines.py`` checks it), with each value read and written once
(``benchmarks/fusion_probe.py``, ``benchmarks/NOTES.md``, sessions 9 and 10). The loops index
arrays element by element: a view made per inner loop cost more than the loop's work.

The input gradient computes the transformed values as it adds them instead of storing them first,
in one pass over ``dv``; the numpy passes add in the order that pass gives every value.

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


def loaded() -> bool:
    """Whether ``kernels()`` has given the compiled loops in this process (the engine asks for
    them just before their first call, which pays numba's fixed cost of loading them)."""
    return bool(_KERNELS) and _KERNELS[0] is not None


def _probe():  # a function to try numba's on-disk cache with
    return 0


def _compile():
    try:
        import numba
        import numpy as np
    except ImportError:
        return None
    try:  # compiled once per machine (numba's cache: next to this file, or the user's cache dir)
        jit = numba.njit(cache=True, boundscheck=False, nogil=True)
        jit(_probe)
    except RuntimeError:  # no writable cache location: compiled in every process
        jit = numba.njit(cache=False, boundscheck=False, nogil=True)

    @jit
    def input_t(xp, v, step, one):
        """``v`` (M + R - 1, N, OH, V, KH, C): ``V_k = sum_j BT[k, j] d_j`` (``winograd.TRANSFORMS``:
        4 products for F(2, 3), 6 for F(4, 3) and F(2, 5), which share BT) with ``d_j = xp[n, oh + i,
        step * v + j, c]`` (``step`` = M); ``one`` a 1 of the arrays' type."""
        t, n, oh, nv, kh, c = v.shape
        two = one + one
        four, five = two + two, two + two + one
        for a in range(n):
            for h in range(oh):
                for u in range(nv):
                    q = np.uint64(step) * np.uint64(u)  # unsigned: no wraparound test
                    for i in range(kh):
                        r = h + i
                        if t == 4:
                            for ch in range(c):
                                d0, d1, d2, d3 = xp[a, r, q, ch], xp[a, r, q + 1, ch], xp[a, r, q + 2, ch], xp[a, r, q + 3, ch]
                                v[0, a, h, u, i, ch] = d0 - d2
                                v[1, a, h, u, i, ch] = d1 + d2
                                v[2, a, h, u, i, ch] = -d1 + d2
                                v[3, a, h, u, i, ch] = -d1 + d3
                        else:
                            for ch in range(c):
                                d0, d1, d2, d3 = xp[a, r, q, ch], xp[a, r, q + 1, ch], xp[a, r, q + 2, ch], xp[a, r, q + 3, ch]
                                d4, d5 = xp[a, r, q + 4, ch], xp[a, r, q + 5, ch]
                                v[0, a, h, u, i, ch] = four * d0 - five * d2 + d4
                                v[1, a, h, u, i, ch] = four * d1 + four * d2 - d3 - d4
                                v[2, a, h, u, i, ch] = -four * d1 + four * d2 + d3 - d4
                                v[3, a, h, u, i, ch] = -two * d1 - d2 + two * d3 + d4
                                v[4, a, h, u, i, ch] = two * d1 - d2 - two * d3 + d4
                                v[5, a, h, u, i, ch] = four * d1 - five * d3 + d5

    @jit
    def output_t(m, ye, yo, b, bias, one):
        """``y_i = sum_k AT[i, k] m_k (+ b)``; ``m`` (M + R - 1, N, U, A, V, F) and the even and
        odd columns' views (N, U, A, V, M/2, F) (rows 2u + a; A = 1 for a plain output)."""
        t, two = m.shape[0], one + one
        four = two + two
        eight = four + four
        n, nu, na, nv, h, f = ye.shape
        for a in range(n):
            for u in range(nu):
                for r in range(na):
                    for w in range(nv):
                        for k in range(f):
                            m0, m1, m2, m3 = m[0, a, u, r, w, k], m[1, a, u, r, w, k], m[2, a, u, r, w, k], m[3, a, u, r, w, k]
                            if t == 4:  # F(2, 3)
                                e, o = m0 + m1 + m2, m1 - m2 + m3
                            else:
                                m4, m5 = m[4, a, u, r, w, k], m[5, a, u, r, w, k]
                                e = m0 + m1 + m2 + m3 + m4
                                if h == 1:  # F(2, 5)
                                    o = m1 - m2 + two * m3 - two * m4 + m5
                                else:  # F(4, 3): two more columns
                                    o = m1 - m2 + two * m3 - two * m4
                                    e2 = m1 + m2 + four * m3 + four * m4
                                    o2 = m1 - m2 + eight * m3 - eight * m4 + m5
                                    if bias:
                                        e2 += b[k]
                                        o2 += b[k]
                                    ye[a, u, r, w, 1, k] = e2
                                    yo[a, u, r, w, 1, k] = o2
                            if bias:
                                e += b[k]
                                o += b[k]
                            ye[a, u, r, w, 0, k] = e
                            yo[a, u, r, w, 0, k] = o

    @jit
    def dm_t(de, do, d, one):
        """``d`` (M + R - 1, N, U, A, V, F): ``dm_k = sum_i AT[i, k] dy_i`` from the even and
        odd columns' gradients (N, U, A, V, M/2, F)."""
        t = d.shape[0]
        two = one + one
        four = two + two
        eight = four + four
        n, nu, na, nv, h, f = de.shape
        for a in range(n):
            for u in range(nu):
                for r in range(na):
                    for w in range(nv):
                        for k in range(f):
                            g0, g1 = de[a, u, r, w, 0, k], do[a, u, r, w, 0, k]
                            d[0, a, u, r, w, k] = g0
                            if h == 2:  # F(4, 3)
                                g2, g3 = de[a, u, r, w, 1, k], do[a, u, r, w, 1, k]
                                d[1, a, u, r, w, k] = g0 + g1 + g2 + g3
                                d[2, a, u, r, w, k] = g0 - g1 + g2 - g3
                                d[3, a, u, r, w, k] = g0 + two * g1 + four * g2 + eight * g3
                                d[4, a, u, r, w, k] = g0 - two * g1 + four * g2 - eight * g3
                                d[5, a, u, r, w, k] = g3
                                continue
                            d[1, a, u, r, w, k] = g0 + g1
                            d[2, a, u, r, w, k] = g0 - g1
                            if t == 4:  # F(2, 3)
                                d[3, a, u, r, w, k] = g1
                            else:  # F(2, 5)
                                d[3, a, u, r, w, k] = g0 + two * g1
                                d[4, a, u, r, w, k] = g0 - two * g1
                                d[5, a, u, r, w, k] = g1

    @jit
    def input_grad_t(dv, dxp, step, one):
        """``dxp`` (N, OH + KH - 1, MV + R - 1, C) from ``dv`` (M + R - 1, N, OH, V, KH, C): ``sum_k
        BT[k, j] dV_k`` added at column step * v + j (``step`` = M). One pass over ``dv``: for each
        image, output row, column group and kernel row, the M + R - 1 sums go to one run of input
        columns. Each value of ``dxp`` so receives its terms by kernel row, then column offset,
        both descending: the order ``winograd.Winograd._input_grad``'s numpy passes keep."""
        t, n, oh, nv, kh, c = dv.shape
        two = one + one
        four, five = two + two, two + two + one
        dxp[...] = one - one
        for a in range(n):
            for h in range(oh):
                for u in range(nv):
                    q = np.uint64(step) * np.uint64(u)  # unsigned: no wraparound test
                    for i in range(kh):
                        r = h + i
                        if t == 4:
                            for ch in range(c):
                                d0, d1, d2, d3 = dv[0, a, h, u, i, ch], dv[1, a, h, u, i, ch], dv[2, a, h, u, i, ch], dv[3, a, h, u, i, ch]
                                dxp[a, r, q, ch] += d0
                                dxp[a, r, q + 1, ch] += d1 - d2 - d3
                                dxp[a, r, q + 2, ch] += -d0 + d1 + d2
                                dxp[a, r, q + 3, ch] += d3
                        else:
                            for ch in range(c):
                                d0, d1, d2 = dv[0, a, h, u, i, ch], dv[1, a, h, u, i, ch], dv[2, a, h, u, i, ch]
                                d3, d4, d5 = dv[3, a, h, u, i, ch], dv[4, a, h, u, i, ch], dv[5, a, h, u, i, ch]
                                dxp[a, r, q, ch] += four * d0
                                dxp[a, r, q + 1, ch] += four * d1 - four * d2 - two * d3 + two * d4 + four * d5
                                dxp[a, r, q + 2, ch] += -five * d0 + four * d1 + four * d2 - d3 - d4
                                dxp[a, r, q + 3, ch] += -d1 + d2 + two * d3 - two * d4 - five * d5
                                dxp[a, r, q + 4, ch] += d0 - d1 - d2 + d3 + d4
                                dxp[a, r, q + 5, ch] += d5

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
    def relu(y, one):
        """``y = max(y, 0)`` in place over a flat array, NaN kept (as ``np.maximum(y, 0)``, which
        numpy runs without SIMD for a scalar operand: several times slower, NOTES.md session 11)."""
        zero = one - one
        for e in range(y.size):
            v = y[e]
            y[e] = zero if v <= zero else v  # -0.0 becomes +0.0, as in np.maximum

    @jit
    def relu_backward(dy, y, out, one):
        """``out = dy * (y > 0)`` over flat arrays, as ``ops.ActOp.backward``'s two passes give
        it (``one`` a 1 of the arrays' type). Not for tanh and sigmoid: their numpy passes ran
        faster than one loop (benchmarks/NOTES.md, session 9)."""
        zero = one - one
        for e in range(out.size):
            out[e] = dy[e] * (one if y[e] > zero else zero)

    @jit
    def avg_act_backward(y, g, d, k, kind, one):
        """``d[n, b] = (g[n] / k) * f'`` for the (N, PH*PW, rest) block view of an average pool's
        input ``y``, the output of a tanh (``kind`` 1: f' = 1 - y * y) or a sigmoid (2: (1 - y) * y),
        as the pool's and the activation's numpy passes give it."""
        n, kk, r = y.shape
        for a in range(n):
            for b in range(kk):
                for e in range(r):
                    v = y[a, b, e]
                    d[a, b, e] = (g[a, e] / k) * ((one - v * v) if kind == 1 else ((one - v) * v))

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

    @jit
    def sgd(p, g, lr, wd):
        """``p -= lr * (g + wd * p)`` over flat arrays (``p -= lr * g`` when ``wd`` is 0), as
        ``optimizers.SGD``'s numpy passes give it (``lr`` and ``wd`` of the arrays' type)."""
        if wd == 0:
            for e in range(p.size):
                p[e] = p[e] - lr * g[e]
        else:
            for e in range(p.size):
                p[e] = p[e] - lr * (g[e] + wd * p[e])

    return {"input": input_t, "output": output_t, "dm": dm_t, "input_grad": input_grad_t,
            "shifted_adds": shifted_adds, "relu": relu, "relu_backward": relu_backward,
            "avg_act_backward": avg_act_backward, "max_pool_backward": max_pool_backward, "sgd": sgd}
