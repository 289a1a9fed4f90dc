"""Winograd F(2x2, 3x3) against the unrolled (im2col) product for the 3x3 stride-1 convs of the
benchmark models: is it worth a place in the fast engine? (run by hand)

    python benchmarks/winograd_probe.py

For each shape: checks that both give the same output (float64, 1e-9 relative), then times
the forward product of each (float32, BLAS single-threaded, one thread, medians of
alternating repeats) and prints the ratio, and the time of Winograd's 16 batched products
alone (a lower bound for any implementation of its transforms). Winograd computes each 2x2 output tile from a 4x4
input tile with 16 products of C x F per tile instead of 36 (2.25x fewer multiplications); its
input and output transforms are batched array passes (additions only) over the whole batch.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import as_strided

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cnnexp.engine.threads import blas_threads  # noqa: E402
from cnnexp.layers.conv import windows  # noqa: E402

G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def filter_transform(W: np.ndarray) -> np.ndarray:
    """``U = G g G^T`` for every (c, f): W (3, 3, C, F) -> (16, C, F)."""
    U = np.einsum("ai,ijcf,bj->abcf", G, W.astype(np.float64), G)
    return np.ascontiguousarray(U.reshape(16, *W.shape[2:]).astype(W.dtype))


def _bt(d, axis):
    """``B^T d`` along ``axis`` (length 4): rows d0-d2, d1+d2, d2-d1, d1-d3."""
    d0, d1, d2, d3 = (np.take(d, i, axis=axis) for i in range(4))
    return np.stack([d0 - d2, d1 + d2, d2 - d1, d1 - d3], axis=axis)


def winograd_conv(x: np.ndarray, U: np.ndarray) -> np.ndarray:
    """Valid 3x3 stride-1 conv of NHWC ``x`` with transformed filters ``U`` (16, C, F)."""
    n, h, w, c = x.shape
    oh, ow, f = h - 2, w - 2, U.shape[2]
    th, tw = -(-oh // 2), -(-ow // 2)
    if (2 * th + 2, 2 * tw + 2) != (h, w):  # pad so the 4x4 tiles cover the input
        xp = np.zeros((n, 2 * th + 2, 2 * tw + 2, c), x.dtype)
        xp[:, :h, :w] = x
        x = xp
    s0, s1, s2, s3 = x.strides
    d = as_strided(x, (n, th, tw, 4, 4, c), (s0, 2 * s1, 2 * s2, s1, s2, s3))
    V = _bt(_bt(d, 3), 4)  # (n, th, tw, 4, 4, c)
    V = np.ascontiguousarray(V.transpose(3, 4, 0, 1, 2, 5)).reshape(16, n * th * tw, c)
    M = np.matmul(V, U).reshape(4, 4, n, th, tw, f)
    # A^T M A, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
    r = np.stack([M[0] + M[1] + M[2], M[1] - M[2] - M[3]])  # (2, 4, n, th, tw, f)
    y = np.stack([r[:, 0] + r[:, 1] + r[:, 2], r[:, 1] - r[:, 2] - r[:, 3]], axis=1)  # (2, 2, n, th, tw, f)
    y = y.transpose(2, 3, 0, 4, 1, 5).reshape(n, 2 * th, 2 * tw, f)
    return y[:, :oh, :ow]


def im2col_conv(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape
    win = windows(x, 3, 3, 1, 1)
    cols = np.ascontiguousarray(win).reshape(-1, 9 * c)
    return (cols @ W.reshape(9 * c, -1)).reshape(n, h - 2, w - 2, -1)


#: (where, H, W, C, F, batch)
SHAPES = [("keras_mnist conv 1", 28, 28, 1, 32, 128), ("keras_mnist conv 2", 26, 26, 32, 64, 32),
          ("keras_mnist conv 2", 26, 26, 32, 64, 128), ("seed conv", 28, 28, 1, 8, 128),
          ("overlap_two_dense conv", 28, 28, 1, 10, 128)]


def best_of(fn, repeats=7):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> int:
    rng = np.random.default_rng(0)
    print("| conv (H x W x C -> F, batch) | im2col ms | Winograd ms | Winograd / im2col "
          "| Winograd's 16 products alone ms | products alone / im2col |")
    print("|---|---:|---:|---:|---:|---:|")
    with blas_threads(1):
        for where, h, w, c, f, n in SHAPES:
            x64, W64 = rng.standard_normal((2, h, w, c)), rng.standard_normal((3, 3, c, f))
            ref, win = im2col_conv(x64, W64), winograd_conv(x64, filter_transform(W64))
            err = np.max(np.abs(win - ref)) / np.max(np.abs(ref))
            assert err < 1e-9, f"{where}: Winograd differs from im2col by {err:.3g}"
            x = rng.standard_normal((n, h, w, c)).astype(np.float32)
            W = rng.standard_normal((3, 3, c, f)).astype(np.float32)
            U = filter_transform(W)
            tiles = n * (-(-(h - 2) // 2)) * (-(-(w - 2) // 2))
            V = rng.standard_normal((16, tiles, c)).astype(np.float32)
            a, b, p = [], [], []
            for _ in range(3):  # alternate the three, median of medians
                a.append(best_of(lambda: im2col_conv(x, W)))
                b.append(best_of(lambda: winograd_conv(x, U)))
                p.append(best_of(lambda: np.matmul(V, U)))
            ta, tb, tp = statistics.median(a), statistics.median(b), statistics.median(p)
            print(f"| {where} ({h}x{w}x{c} -> {f}, b{n}) | {1e3 * ta:.2f} | {1e3 * tb:.2f} | {tb / ta:.2f} "
                  f"| {1e3 * tp:.2f} | {tp / ta:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
