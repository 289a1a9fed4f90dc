"""What fusing Winograd's array passes saves: keras_mnist's second conv (26x26x32 -> 64, 3x3)
as the engine runs it by F(2, 3) (``cnnexp/engine/winograd.py``), three groups of its
element-wise passes timed as numpy runs them and as the engine's compiled loops
(``cnnexp/engine/fused.py``, numba), per 16-image training part (the part of a batch of 32 on
two cores), one thread. Each loop's result is first checked equal to the passes' (bit for bit).

    python benchmarks/fusion_probe.py [--images 16] [--repeats 41]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from numpy.lib.stride_tricks import as_strided

from cnnexp.engine import fused

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


def median_us(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=41)
    args = ap.parse_args(argv)
    if fused.kernels() is None:
        print("no compiled loops (numba missing, or CNNEXP_FUSED=0): nothing to compare", file=sys.stderr)
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

    k = fused.kernels()
    o = yc.reshape(N_CHUNK, OH, V, 2, F)
    y0, y1 = o[:, :, :, 0][:, :, None], o[:, :, :, 1][:, :, None]

    def inp():
        k["input"](xp, Vc.reshape(4, N_CHUNK, OH, V, KH, C))

    def outp():
        k["output"](M.reshape((4,) + y0.shape), y0, y1, b, True)

    def scat():
        k["input_grad"](dV.reshape(4, N_CHUNK, OH, V, KH, C), dc, f32(0))

    inp(), outp(), scat()
    numpy_input(xp, Vn), numpy_output(M, b, yn), numpy_scatter(dV, dn)
    for what, a, ref in (("input transform", Vc, Vn), ("output transform", yc, yn), ("input gradient", dc, dn)):
        if not np.array_equal(a, ref):
            print(f"{what}: the compiled loop differs from numpy's passes", file=sys.stderr)
            return 1

    chunks = args.images / N_CHUNK
    pairs = {
        "input transform (forward)": (lambda: numpy_input(xp, Vn), inp),
        "output transform + bias (forward)": (lambda: numpy_output(M, b, yn), outp),
        "input gradient transform + adds (backward)": (lambda: numpy_scatter(dV, dn), scat),
    }
    print(f"keras_mnist conv 2 by F(2, 3), {args.images} images ({chunks:g} chunks of {N_CHUNK}), one thread, "
          f"medians of {args.repeats}\n")
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
