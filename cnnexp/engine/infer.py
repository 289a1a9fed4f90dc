"""Inference on the fast engine: raw images forward in chunks (``chunk``), the chunks divided
between the workers (the calling thread and worker processes, or threads); softmax, loss and
accuracy computed once on the whole batch's logits in the calling thread."""

from __future__ import annotations

import numpy as np

from . import procs
from .loss import softmax_probs, softmax_xent
from .threads import run_parts, split_rows


#: images per chunk: at most CHUNK, halved (down to MIN_CHUNK) while the largest input a stage
#: unrolls (a conv's or a tiled conv's ``cols``) would exceed CHUNK_BYTES in a chunk; larger
#: chunks make fewer calls, smaller ones keep that input nearer the core (benchmarks/NOTES.md,
#: session 9, for the measurements behind the three numbers)
CHUNK, CHUNK_BYTES, MIN_CHUNK = 128, 4 << 20, 8


def chunk(engine) -> int:
    """The engine's inference chunk (``engine.infer_chunk``: set on first use, or by a caller)."""
    if engine.infer_chunk is None:
        stages = engine._plan(engine._workers(1)[0][0], CHUNK)
        per = max([getattr(s, "unrolled", 0) for s in stages]) * engine.model.dtype.itemsize
        step = CHUNK
        while step > MIN_CHUNK and step * per > CHUNK_BYTES:
            step //= 2
        engine.infer_chunk = step
    return engine.infer_chunk


def infer(engine, images, labels=None, out=None, batch_size=None):
    """Forward of raw ``images`` in chunks; probabilities into ``out`` when given;
    returns ``(loss_sum, correct)`` when ``labels`` are given, else ``(0.0, 0)``."""
    model = engine.model
    n = len(images)
    model.check_images(images)
    step = max(1, min(batch_size or chunk(engine), chunk(engine)))
    last = model.layers[-2].output_shape if model.loss_layer is not None and len(model.layers) > 1 \
        else model.output_shape
    logits = np.empty((n,) + tuple(last), model.dtype)
    nchunks = -(-n // step)
    with engine.lock, engine.compute():
        ranges = split_rows(nchunks, min(engine.threads, nchunks))
        bounds = [(lo * step, min(hi * step, n)) for lo, hi in ranges]
        if engine.processes and len(ranges) > 1 and images.dtype.str in procs.DTYPES:
            _chunks_on_processes(engine, images, logits, bounds, step)
        else:
            workers = engine._workers(len(ranges))
            run_parts(engine._infer_part, [(w, images, logits, a, b, step) for w, (a, b) in zip(workers, bounds)])
    if model.loss_layer is None:
        if out is not None:
            out[...] = logits
        return 0.0, 0
    if labels is None:
        p = softmax_probs(logits)
        if out is not None:
            out[...] = p
        return 0.0, 0
    _, p, _, loss_sum, correct = softmax_xent(logits, labels, 1) if n else (None, logits, None, 0.0, 0)
    if out is not None:
        out[...] = p
    return loss_sum, correct


def infer_part(engine, worker, images, logits, lo, hi, step):
    """Logits of ``images[lo:hi]`` into ``logits``, in chunks of ``step``, on one worker."""
    for a in range(lo, hi, step):
        x = engine.model.preprocess(images[a:a + step])
        for st in engine._plan(worker[0], len(x)):
            x = st.forward(x, False)
        logits[a:a + len(x)] = x


def _chunks_on_processes(engine, images, logits, bounds, step):
    w0 = engine._workers(1)[0]
    rows = max(b - a for a, b in bounds)
    engine._on_processes(len(bounds) - 1, (rows, rows * images[0].nbytes, 0), lambda ws: procs.infer_on_workers(
        ws, images, logits, bounds, step, lambda: engine._infer_part(w0, images, logits, *bounds[0], step)))
