"""Training inputs prepared ahead, a block of batches at a time.

At small batch sizes the per-step work is small and per-call costs dominate, yet part of every
step does not depend on the weights: preprocessing the raw images and, when the plan starts
with a conv stage, unrolling them into ``cols``. ``batches`` does that once for a block of
batches (the images of ``block`` consecutive steps, at most ``BLOCK_BYTES`` of prepared data),
and each step takes its rows of the block. The values are the ones each step would compute
itself, so results do not change.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

#: prepared bytes per block (well inside the last-level cache)
BLOCK_BYTES = 4 << 20
#: most images per block
BLOCK_IMAGES = 256


class Prepared:
    """``n`` images of a training batch, prepared: ``data`` is the first conv stage's ``cols``
    rows for them when ``cols``, else the preprocessed images."""

    __slots__ = ("data", "n", "cols")

    def __init__(self, data: np.ndarray, n: int, cols: bool):
        self.data, self.n, self.cols = data, n, cols

    def __len__(self) -> int:
        return self.n


def block_images(batch_size: int, bytes_per_image: int) -> int:
    """Images per block: whole batches, at least one."""
    per = max(1, min(BLOCK_IMAGES, BLOCK_BYTES // max(1, bytes_per_image)) // batch_size)
    return per * batch_size


def batches(engine, images: np.ndarray, labels: np.ndarray, order: np.ndarray, start: int,
            batch_size: int) -> Iterator[tuple[int, object, np.ndarray]]:
    """``(position, inputs, labels)`` of the batches ``order[p:p + batch_size]`` for ``p`` from
    ``start`` on; ``inputs`` are what ``Model.train_step`` takes: raw images, or a ``Prepared``
    slice of a block when the engine prepares inputs at this batch size
    (``engine.block_images(batch_size)`` images per block, ``engine.prepare(images)``)."""
    per = engine.block_images(batch_size) if hasattr(engine, "prepare") else 0
    if not per:
        for p in range(start, len(order), batch_size):
            idx = order[p:p + batch_size]
            yield p, images[idx], labels[idx]
        return
    for b0 in range(start, len(order), per):
        idx = order[b0:b0 + per]
        data, rows, cols = engine.prepare(images[idx])
        ys = labels[idx]
        for lo in range(0, len(idx), batch_size):
            hi = min(lo + batch_size, len(idx))
            yield b0 + lo, Prepared(data[lo * rows:hi * rows], hi - lo, cols), ys[lo:hi]
