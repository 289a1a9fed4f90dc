"""The thin weight-gradient product ``a.T @ b`` in cache-sized chunks of rows."""

from __future__ import annotations

import numpy as np

#: bytes of both operands per chunk of the thin weight-gradient product (chunks that fit the
#: core's L2 cache with room to spare ran 1.8-2.2x faster than 1 MB ones; benchmarks/NOTES.md)
CHUNK_BYTES = 576 << 10


def thin_matmul_tn(a: np.ndarray, b: np.ndarray, out: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """``out[...] = a.T @ b`` for tall ``a`` (rows x K) and ``b`` (rows x F); for K <= 32 (a
    thin product, which slows down once its operands leave the cache) in chunks of rows, of
    ``chunk`` rows when given."""
    rows, k = a.shape
    if chunk is None:
        chunk = max(1024, 1 << int(CHUNK_BYTES // ((k + b.shape[1]) * a.itemsize)).bit_length() - 1) if k <= 32 else rows
    if rows <= chunk:
        return np.matmul(a.T, b, out=out)
    tmp = np.empty_like(out)
    np.matmul(a[:chunk].T, b[:chunk], out=out)
    for s in range(chunk, rows, chunk):
        np.matmul(a[s:s + chunk].T, b[s:s + chunk], out=tmp)
        out += tmp
    return out
