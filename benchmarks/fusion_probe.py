"""What fusing Winograd's array passes saves: the engine's Winograd conv (``cnnexp/engine/
winograd.py``) for keras_mnist's second conv (26x26x32 -> 64, 3x3, F(4, 3), into a 2x2 pool's
blocks) and same5_sigmoid_avg's (14x14x12 -> 24, 5x5 'same', F(2, 5)), forward and backward of
one training part, with its element-wise passes as numpy runs them and as the engine's compiled
loops (``cnnexp/engine/fused.py``, numba), one thread. The products are the same both ways; the
difference is the passes. Each result is first checked equal both ways (bit for bit).

    python benchmarks/fusion_probe.py [--repeats 21]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from cnnexp.engine import fused, winograd

#: (name, KH, KW, C, F, OH, OW, images of a part): the part of a batch of 32 on two cores for
#: keras_mnist, a training piece for same5_sigmoid_avg
CONVS = [("keras_mnist conv 2, F(4, 3)", 3, 3, 32, 64, 24, 24, 16),
         ("same5_sigmoid_avg conv 2, F(2, 5)", 5, 5, 12, 24, 14, 14, 8)]


def median_us(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def run(conv, kernels, repeats):
    """(forward us, backward us, outputs) of one conv with the given loops (None: numpy passes)."""
    _, kh, kw, c, f, oh, ow, n = conv
    fused._KERNELS[:] = [kernels]
    rng = np.random.default_rng(0)
    f32 = np.float32
    w = winograd.Winograd(kh, kw, c, f, oh, ow, (2, 2))
    xp = rng.standard_normal((n, oh + kh - 1, ow + kw - 1, c)).astype(f32)
    W, b = rng.standard_normal((kh, kw, c, f)).astype(f32), rng.standard_normal(f).astype(f32)
    y = np.empty((n, 2, 2, oh // 2, ow // 2, f), f32)
    dy = rng.standard_normal(y.shape).astype(f32)
    gW, gb, dxp = np.empty_like(W), np.empty_like(b), np.empty_like(xp)
    fwd = median_us(lambda: w.forward(xp, W, b, y), repeats)
    bwd = median_us(lambda: w.backward(dy, gW, gb, dxp), repeats)
    return fwd, bwd, (y.copy(), gW.copy(), gb.copy(), dxp.copy())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=21)
    args = ap.parse_args(argv)
    loops = fused.kernels()
    if loops is None:
        print("no compiled loops (numba missing, or CNNEXP_FUSED=0): nothing to compare", file=sys.stderr)
        return 2
    from threadpoolctl import threadpool_limits

    print(f"one thread, medians of {args.repeats}, three alternating rounds (median of their medians)\n")
    print("| conv (images) | numpy passes fwd / bwd us | compiled loops fwd / bwd us | loops / passes |")
    print("|---|---:|---:|---:|")
    try:
        with threadpool_limits(1):
            for conv in CONVS:
                res = {"numpy": [], "loops": []}
                for _ in range(3):
                    for mode, k in (("numpy", None), ("loops", loops)):
                        res[mode].append(run(conv, k, args.repeats))
                for a, b in zip(res["numpy"][0][2], res["loops"][0][2]):
                    if not np.array_equal(a, b):
                        print(f"{conv[0]}: the compiled loops differ from numpy's passes", file=sys.stderr)
                        return 1
                (nf, nb), (lf, lb) = ([statistics.median(r[i] for r in res[m]) for i in (0, 1)] for m in ("numpy", "loops"))
                print(f"| {conv[0]} ({conv[-1]}) | {nf:,.0f} / {nb:,.0f} | {lf:,.0f} / {lb:,.0f} | "
                      f"{(lf + lb) / (nf + nb):.2f} |")
    finally:
        fused._KERNELS[:] = [loops]
    return 0


if __name__ == "__main__":
    sys.exit(main())
