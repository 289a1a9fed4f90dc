"""What fusing Winograd's array passes would save: keras_mnist's second conv (26x26x32 -> 64,
3x3) as the engine runs it by F(2, 3) (``cnnexp/engine/winograd.py``), its three groups of
element-wise passes timed as numpy runs them and as one compiled loop each (numba), per
16-image training part (the part of a batch of 32 on two cores), one thread.

Run by hand: ``pip install numba`` first (not a dependency of cnnexp; the probe says so and
stops without it). Each compiled loop is checked against numpy's passes (float32, equal to
1e-6 relative) before it is timed.

    python benchmarks/fusion_probe.py [--images 16] [--repeats 41]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from numpy.lib.stride_tricks import as_strided

try:
    import numba
except ImportError:  # pragma: no cover
    numba = None

N_CHUNK = 4  # images per chunk (winograd.CHUNK_ROWS // rows per image)
OH = OW = 24
V, KH, C, F = OW // 2, 3, 32, 64


def numpy_input(xp, out):
    """The engine's input transform of one chunk: four passes over strided views."""
    n = len(xp)
    s0, s1, s2, s3 = xp.strides
    d = [as_strided(xp[:, :, k:], (n, OH, V, KH, C), (s0, s1, 2 * s2, s1, s3)) for k in range(4)]
    v = out.reshape(4, n, OH, V, KH, C)
    np.subtract(d[0], d[2], out=v[0])
    np.add(d[1], d[2], out=v[1])
    np.subtract(d[2], d[1], out=v[2])
    np.subtract(d[1], d[3], out=v[3])


def numpy_output(M, b, y):
    """The engine's output transform of one chunk into plain (n, OH, OW, F) ``y``."""
    n = len(y)
    o = y.reshape(n, OH, V, 2, F)
    y0, y1 = o[:, :, :, 0], o[:, :, :, 1]
    m0, m1, m2, m3 = (m.reshape(y0.shape) for m in M)
    np.add(m0, m1, out=y0)
    y0 += m2
    np.subtract(m1, m2, out=y1)
    y1 -= m3
    y += b


def numpy_scatter(dV, dxp):
    """The engine's input-gradient transform and its twelve shifted adds, one chunk."""
    n = len(dxp)
    dd = np.empty((2,) + dV.shape[1:], dV.dtype)
    np.subtract(dV[1], dV[2], out=dd[0])
    dd[0] -= dV[3]
    np.add(dV[1], dV[2], out=dd[1])
    dd[1] -= dV[0]
    dxp[...] = 0
    shape = (n, OH, V, KH, C)
    for k, src in enumerate((dV[0], dd[0], dd[1], dV[3])):
        s = src.reshape(shape)
        for i in range(KH):
            dxp[:, i:i + OH, k:k + OW:2] += s[:, :, :, i]


def compiled():
    """The three groups as numba loops (same operations in the same order per element)."""

    @numba.njit(cache=False, boundscheck=False)
    def inp(xp, out):
        n = xp.shape[0]
        v = out.reshape(4, n, OH, V, KH, C)
        for a in range(n):
            for h in range(OH):
                for u in range(V):
                    for i in range(KH):
                        for c in range(C):
                            d0 = xp[a, h + i, 2 * u, c]
                            d1 = xp[a, h + i, 2 * u + 1, c]
                            d2 = xp[a, h + i, 2 * u + 2, c]
                            d3 = xp[a, h + i, 2 * u + 3, c]
                            v[0, a, h, u, i, c] = d0 - d2
                            v[1, a, h, u, i, c] = d1 + d2
                            v[2, a, h, u, i, c] = d2 - d1
                            v[3, a, h, u, i, c] = d1 - d3

    @numba.njit(cache=False, boundscheck=False)
    def outp(M, b, y):
        n = y.shape[0]
        m = M.reshape(4, n, OH, V, F)
        for a in range(n):
            for h in range(OH):
                for u in range(V):
                    for f in range(F):
                        m0, m1, m2, m3 = m[0, a, h, u, f], m[1, a, h, u, f], m[2, a, h, u, f], m[3, a, h, u, f]
                        y[a, h, 2 * u, f] = (m0 + m1) + m2 + b[f]
                        y[a, h, 2 * u + 1, f] = (m1 - m2) - m3 + b[f]

    @numba.njit(cache=False, boundscheck=False)
    def scat(dV, dxp):
        n = dxp.shape[0]
        dv = dV.reshape(4, n, OH, V, KH, C)
        dxp[...] = 0
        for a in range(n):
            for h in range(OH):
                for u in range(V):
                    for i in range(KH):
                        for c in range(C):
                            v0, v1, v2, v3 = dv[0, a, h, u, i, c], dv[1, a, h, u, i, c], dv[2, a, h, u, i, c], dv[3, a, h, u, i, c]
                            dxp[a, h + i, 2 * u, c] += v0
                            dxp[a, h + i, 2 * u + 1, c] += (v1 - v2) - v3
                            dxp[a, h + i, 2 * u + 2, c] += (v1 + v2) - v0
                            dxp[a, h + i, 2 * u + 3, c] += v3

    return inp, outp, scat


def median_us(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=41)
    args = ap.parse_args(argv)
    if numba is None:
        print("numba is not installed (pip install numba): nothing to compare", file=sys.stderr)
        return 2
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    f32 = np.float32
    rows = N_CHUNK * OH * V
    xp = rng.standard_normal((N_CHUNK, OH + 2, OW + 2, C)).astype(f32)
    M = rng.standard_normal((4, rows, F)).astype(f32)
    b = rng.standard_normal(F).astype(f32)
    dV = rng.standard_normal((4, rows, KH * C)).astype(f32)
    Vn, Vc = np.empty((4, rows, KH * C), f32), np.empty((4, rows, KH * C), f32)
    yn, yc = np.empty((N_CHUNK, OH, OW, F), f32), np.empty((N_CHUNK, OH, OW, F), f32)
    dn, dc = np.empty_like(xp), np.empty_like(xp)

    t = time.perf_counter()
    inp, outp, scat = compiled()
    inp(xp, Vc), outp(M, b, yc), scat(dV, dc)
    compile_s = time.perf_counter() - t
    numpy_input(xp, Vn), numpy_output(M, b, yn), numpy_scatter(dV, dn)
    for what, a, ref in (("input transform", Vc, Vn), ("output transform", yc, yn), ("input gradient", dc, dn)):
        err = rel(a, ref)
        if err > 1e-6:
            print(f"{what}: compiled loop differs from numpy (relative {err:.2g})", file=sys.stderr)
            return 1

    chunks = args.images / N_CHUNK
    pairs = {
        "input transform (forward)": (lambda: numpy_input(xp, Vn), lambda: inp(xp, Vc)),
        "output transform + bias (forward)": (lambda: numpy_output(M, b, yn), lambda: outp(M, b, yc)),
        "input gradient transform + adds (backward)": (lambda: numpy_scatter(dV, dn), lambda: scat(dV, dc)),
    }
    print(f"keras_mnist conv 2 by F(2, 3), {args.images} images ({chunks:g} chunks of {N_CHUNK}), one thread, "
          f"medians of {args.repeats}; numba {numba.__version__} (compiling the three loops: {compile_s:.1f} s)\n")
    print("| passes | numpy us | compiled loop us | compiled / numpy |")
    print("|---|---:|---:|---:|")
    tot = [0.0, 0.0]
    with threadpool_limits(1):
        for name, (fn_np, fn_c) in pairs.items():
            a, c = [], []
            for _ in range(3):  # alternate, take the median of the three medians
                a.append(median_us(fn_np, args.repeats))
                c.append(median_us(fn_c, args.repeats))
            a, c = statistics.median(a) * chunks, statistics.median(c) * chunks
            tot[0] += a
            tot[1] += c
            print(f"| {name} | {a:,.0f} | {c:,.0f} | {c / a:.2f} |")
    print(f"| all three | {tot[0]:,.0f} | {tot[1]:,.0f} | {tot[1] / tot[0]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
