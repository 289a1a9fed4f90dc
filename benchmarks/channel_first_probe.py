"""Probe: would a channel-first layout pay for a conv with one input channel and few filters?

The engine's ``ConvStage`` unrolls such a conv into ``cols`` (rows, K) and runs the product
(rows, K) @ (K, F); with K = 9 and F = 8 (the seed net) OpenBLAS runs that skinny product at a
fraction of its speed, while the transposed product (F, K) @ (K, rows) runs about twice as fast.
This probe times, for the seed net's first stage (3x3 conv, 8 filters, 2x2 max-pool, no bias) at
several batch sizes, the engine's stage (forward + backward, first stage: no input gradient)
against a channel-first version written here: the images transposed to (pixels, batch), the
unroll as one ``np.take`` along pixels into ``colsT`` (K, rows * batch), ``W.T @ colsT``, the pool
as a reduction over the block axis, and the pooled output transposed back to NHWC (and the
gradient in, at the backward). Both give the same output and weight gradient (checked first).
One thread, medians of alternating repeats; run by hand:

    python benchmarks/channel_first_probe.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import as_strided

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnnexp.engine.threads import blas_threads  # noqa: E402
from cnnexp.model import build_model  # noqa: E402

SPEC = {"input_shape": [28, 28, 1], "dtype": "float32", "layers": [
    {"type": "conv2d", "filters": 8, "kernel_size": 3, "bias": False}, {"type": "maxpool2d", "pool": 2},
    {"type": "flatten"}, {"type": "dense", "units": 10}, {"type": "softmax"}]}


class ChannelFirst:
    """The seed net's first stage, channel-first: rows are (block a, block b, u, v, image)."""

    def __init__(self, W):
        self.WT = np.ascontiguousarray(W.reshape(9, 8).T)  # (F, K)
        probe = np.arange(28 * 28).reshape(28, 28)
        s0, s1 = probe.strides
        win = as_strided(probe, (2, 2, 13, 13, 3, 3), (s0, s1, 2 * s0, 2 * s1, s0, s1))
        self.idxT = np.ascontiguousarray(win.reshape(-1, 9).T)  # (K, 676)

    def forward(self, x):  # x (n, 28, 28, 1) -> pooled NHWC (n, 13, 13, 8)
        n = len(x)
        srcT = np.ascontiguousarray(x.reshape(n, -1).T)  # (784, n)
        self.colsT = np.take(srcT, self.idxT, axis=0).reshape(9, -1)  # (K, 676 * n)
        self.yT = self.WT @ self.colsT  # (F, 676 * n)
        y4 = self.yT.reshape(8, 4, -1)
        self.out = np.maximum.reduce(y4, axis=1)  # (F, 169 * n)
        return np.ascontiguousarray(self.out.reshape(8, 169, n).transpose(2, 1, 0)).reshape(n, 13, 13, 8)

    def backward(self, dout):  # -> dW (3, 3, 1, 8)
        n = len(dout)
        g = np.ascontiguousarray(dout.reshape(n, 169, 8).transpose(2, 1, 0)).reshape(8, 1, -1)
        dyT = (self.yT.reshape(8, 4, -1) == self.out[:, None]) * g  # (F, 4, 169 * n)
        return (dyT.reshape(8, -1) @ self.colsT.T).T.reshape(3, 3, 1, 8)


def engine_stage(batch):
    model = build_model(SPEC, seed=0, scale=1 / 255, shift=-0.5, threads=1)
    rng = np.random.default_rng(0)
    model.engine.train(rng.integers(0, 256, (batch, 28, 28), dtype=np.uint8), rng.integers(0, 10, batch), raw=True)
    stages, grads = model.engine.workers[0]
    return model, stages[0], grads


def main() -> int:
    print("| batch | engine stage fwd+bwd (us) | channel-first fwd+bwd (us) | ratio |")
    print("|---:|---:|---:|---:|")
    with blas_threads(1):
        for batch in (1, 32, 128, 512):
            model, st, grads = engine_stage(batch)
            cf = ChannelFirst(st.W)
            rng = np.random.default_rng(1)
            x = rng.standard_normal((batch, 28, 28, 1)).astype(np.float32)
            dout = rng.standard_normal((batch, 13, 13, 8)).astype(np.float32)
            ref_out = st.forward(x, True).copy()
            st.backward(dout)
            ref_dw = st.gWm.reshape(st.W.shape).copy()
            out = cf.forward(x)
            dw = cf.backward(dout)
            assert np.allclose(out, ref_out, rtol=1e-5, atol=1e-5), "outputs differ"
            assert np.allclose(dw, ref_dw, rtol=1e-4, atol=1e-3), "weight gradients differ"
            ways = {"engine": lambda: (st.forward(x, True), st.backward(dout)),
                    "cf": lambda: (cf.forward(x), cf.backward(dout))}
            times = {k: [] for k in ways}
            reps = max(5, 20000 // batch)
            for _ in range(7):
                for k, f in ways.items():
                    t = time.perf_counter()
                    for _ in range(reps):
                        f()
                    times[k].append((time.perf_counter() - t) / reps * 1e6)
            e, c = statistics.median(times["engine"]), statistics.median(times["cf"])
            print(f"| {batch} | {e:,.1f} | {c:,.1f} | {e / c:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
