"""The fast engine: the model's layers compiled into stages (``compile.py``), run
data-parallel over ``threads`` workers, each with its own stages, buffers and gradients.

A training batch big enough to be worth it is cut into contiguous parts, one per worker (part 0
in the calling thread); a part of more than ``chunk`` images runs in pieces of ``chunk``.
Dropout masks are drawn for the whole batch first, in layer order, and each part gets its rows;
the loss is averaged over the whole batch in every part; the pieces' and then the parts'
gradients are summed in order. So results do not depend on the thread count beyond float
rounding, and a given thread count always gives the same numbers. ``chunk`` is 64 images, fewer
when a conv with few filters would unroll a lot per image (its products are then bound by
reading their operands, which should stay in the core's cache). Inference runs in chunks of
its own size (``infer.py``), divided between the workers.

Raw images run ``compile.tiled`` stages where their first conv is worth tiling (``tiles.py``).
A batch too small to split runs in the calling thread, with a helper thread (``helper.py``)
taking its big weight gradients and half of the optimizer's update.

BLAS runs single-threaded inside ``compute()`` (``fit`` wraps its epochs in it; inference
enters it itself): the workers are the parallelism.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

import numpy as np

from ..layers.activations import Dropout
from ..layers.conv import Conv2D
from .compile import build_stages, group, tiled, train_flops
from .conv import ConvStage
from .feed import Prepared, block_images
from .helper import Helper
from .infer import infer, infer_part
from .loss import softmax_xent
from . import fused, procs, tiles
from .threads import blas_threads, fine_switching, parallel_mode, resolve_threads, run_parts, split_rows


class FastEngine:
    name = "fast"
    #: smallest batch split across threads in training (smaller ones lose to the hand-off) ...
    split_min_batch = 64
    #: ... unless it has at least this many images and its training work (``train_flops`` per
    #: image times images) reaches ``split_min_flops`` (benchmarks/NOTES.md: where splitting won)
    split_min_images = 8
    split_min_flops = 7e7
    #: the same three with worker processes, whose hand-off costs far less
    SPLIT_WITH_PROCESSES = (16, 2, 1e7)
    #: images per piece of a training part (keeps temporaries near
    #: the core's cache): at most this ...
    chunk = 64
    #: ... and fewer when a conv with fewer than NARROW filters (a product BLAS runs far below its
    #: speed, bound by reading its unrolled input) would unroll more than CHUNK_BYTES per chunk
    NARROW, CHUNK_BYTES, MIN_CHUNK = 32, 2 << 20, 8
    #: largest training batch whose inputs are prepared ahead in blocks (``feed.py``)
    prepare_max_batch = 16

    def __init__(self, model, threads="auto"):
        self.model = model
        self.threads = resolve_threads(threads)
        body = model.layers[:-1] if model.loss_layer is not None else model.layers
        self.groups = group(body)
        self.flops = train_flops(body)
        # random layers other than dropout (whose masks the engine draws) keep batches whole
        self.splittable = all(type(l) is Dropout or not hasattr(l, "rng") for l in model.layers)
        self.dropouts = [i for i, (kind, _) in enumerate(self.groups) if kind == "dropout"]
        self.workers: list[tuple[list, dict]] = []
        self.lock = threading.Lock()
        self.prep = None  # the stage that unrolls prepared blocks (False: the plan has none)
        self.infer_chunk = None  # images per inference chunk (``infer.chunk``, set on first use)
        self.out_shape = body[-1].output_shape if body else model.input_shape
        self.chunk = self._chunk(body)
        self._tiled: dict[int, tuple] = {}  # per worker: its stages and ``tiled`` ones
        self._accs: dict[int, np.ndarray] = {}  # per worker: its pieces' gradients summed
        #: split training batches run their other parts in worker processes (procs.py), not threads
        fused.enabled()  # a bad $CNNEXP_FUSED is refused here, before any work
        self.processes = parallel_mode() == "processes" and procs.available() and \
            getattr(model.params, "flat", None) is not None and getattr(model.grads, "flat", None) is not None
        self.procs = procs.Workers(self) if self.processes else None
        #: a second thread for an unsplit training step's weight gradients and update (helper.py)
        self.helper = Helper() if self.threads >= 2 else None
        self._computing = 0  # depth of ``compute()`` stretches
        if self.processes:
            self.split_min_batch, self.split_min_images, self.split_min_flops = self.SPLIT_WITH_PROCESSES

    def _chunk(self, body: list) -> int:
        per = [l.output_shape[0] * l.output_shape[1] * (l.kh * l.kw * l.input_shape[2] + 1) * self.model.dtype.itemsize
               for l in body if type(l) is Conv2D and l.filters < self.NARROW]
        chunk = self.chunk
        while per and chunk > self.MIN_CHUNK and chunk * max(per) > self.CHUNK_BYTES:
            chunk //= 2
        return chunk

    def _workers(self, k: int) -> list[tuple[list, dict]]:
        """The first ``k`` workers' ``(stages, grads)``; worker 0 writes the model's gradients."""
        while len(self.workers) < k:
            g = self.model.grads if not self.workers else self.model.new_grads()
            stages = build_stages(self.groups, g)
            if not self.workers:  # worker 0 runs in the calling thread, beside the helper
                for st in stages:
                    if hasattr(st, "helper"):
                        st.helper = self.helper
            self.workers.append((stages, g))
        return self.workers[:k]

    @contextmanager
    def compute(self):
        """A stretch of engine calls: BLAS single-threaded and, with a helper thread, Python's
        switch interval short throughout (set around each step's hand-offs instead, keras_mnist at
        batch 1 gained 1.13x over no helper instead of 1.33x; benchmarks/NOTES.md, session 7)."""
        self._computing += 1
        try:
            with blas_threads(1), (fine_switching() if self.helper is not None else nullcontext()):
                yield
        finally:
            self._computing -= 1

    def close(self) -> None:
        """Stop the worker processes and the helper thread (started again when needed)."""
        if self.procs is not None:
            self.procs.stop()
        if self.helper is not None:
            self.helper.stop()

    def parts(self, n: int) -> int:
        if self.threads <= 1 or n < 2 or not self.splittable:
            return 1
        if n >= self.split_min_batch or (n >= self.split_min_images and n * self.flops >= self.split_min_flops):
            return min(self.threads, n)
        return 1

    # -- inputs prepared ahead at small batches (feed.py) -----------------------------------
    def block_images(self, batch_size: int) -> int:
        """Images per prepared block at this batch size (0: batches are not prepared ahead)."""
        if batch_size > self.prepare_max_batch or self.parts(batch_size) > 1:
            return 0
        st = self._prep_stage()
        per_image = st.oh * st.ow * st.width if st is not None else int(np.prod(self.model.input_shape))
        return block_images(batch_size, per_image * self.model.dtype.itemsize)

    def prepare(self, images):
        """``(data, rows per image, is cols)`` for raw ``images``: preprocessed, and unrolled
        when the plan starts with a conv stage (into that stage's kept buffer: one block at a
        time)."""
        x = self.model.preprocess(images)
        st = self._prep_stage()
        return (x, 1, False) if st is None else (st.unroll(x), st.oh * st.ow, True)

    def _prep_stage(self):
        if self.prep is None:
            st = build_stages(self.groups, self.model.grads, 1)[0]  # it only unrolls: no gradients
            self.prep = st if isinstance(st, ConvStage) else False
        return self.prep or None

    # -- training -------------------------------------------------------------------------
    def _masks(self, n: int) -> dict:
        masks = {}
        for i in self.dropouts:
            layer = self.groups[i][1][0]
            if layer.rate:
                masks[i] = layer.draw_mask((n,) + layer.input_shape, self.model.dtype)
        return masks

    def train(self, x, labels, raw: bool = False):
        """``(losses, probs, loss_sum, correct)`` of a batch (raw images when ``raw``, which
        each worker preprocesses itself, or a ``Prepared`` batch); fills the model's gradients."""
        n = len(x)
        k = self.parts(n) if type(x) is not Prepared else 1
        with self.lock:
            if self.helper is not None:
                self.helper.step(k == 1)
            if k == 1:  # the whole batch in this thread
                w = self.workers[0] if self.workers else self._workers(1)[0]
                with fine_switching() if self.helper is not None and not self._computing else nullcontext():
                    r = self._train_part(w, x, labels, n, raw, self._masks(n) if self.dropouts else {}, 0, n)
                return r[0], r[1], r[3], r[4]
            ranges = split_rows(n, k)
            masks = self._masks(n)
            if self.processes and x.dtype.str in procs.DTYPES:
                res, grads = self._train_on_processes(x, labels, n, raw, masks, ranges)
            else:
                workers = self._workers(len(ranges))
                parts = [(w, x[lo:hi], labels[lo:hi], n, raw, masks, lo, hi) for w, (lo, hi) in zip(workers, ranges)]
                res, grads = run_parts(self._train_part, parts), [g for _, g in workers]
            self._sum_grads(grads)
        return (np.concatenate([r[0] for r in res]), np.concatenate([r[1] for r in res]),
                sum(r[3] for r in res), sum(r[4] for r in res))

    def _on_processes(self, k: int, size: tuple, run):
        """``run(workers)`` on ``k`` worker processes with arenas of ``size``; a worker that
        died is replaced and the call made once more (its inputs are all still here)."""
        for attempt in (0, 1):
            try:
                return run(self.procs.get(k, *size))
            except procs.WorkerExited:
                self.procs.stop()
                if attempt:
                    raise
            except RuntimeError:
                self.procs.stop()  # forked afresh next time
                raise

    def _train_on_processes(self, x, labels, n, raw, masks, ranges):
        w0 = self._workers(1)[0]
        rows = max(hi - lo for lo, hi in ranges)
        lo, hi = ranges[0]

        def run(ws):
            res = procs.run_on_workers(ws, x, labels, n, raw, masks, ranges,
                                       lambda: self._train_part(w0, x[lo:hi], labels[lo:hi], n, raw, masks, lo, hi))
            return res, [w0[1]] + [p.arena.grads for p in ws]
        return self._on_processes(len(ranges) - 1, (rows, rows * x[0].nbytes, rows), run)

    def _train_part(self, worker, x, labels, denom, raw, masks, lo, hi):
        """Rows ``lo:hi`` of a batch (``x``, ``labels`` are those rows): ``(losses, probs,
        dlogits, loss_sum, correct)``, the part's gradients in the worker's. A part of more
        than ``chunk`` raw images runs in pieces of ``chunk``, their gradients summed in order
        (in a kept array per worker; ``dlogits`` is then None: no caller reads it)."""
        n, step, g = hi - lo, self.chunk, worker[1]
        if n <= step or type(x) is Prepared or getattr(g, "flat", None) is None:
            return self._train_piece(worker, x, labels, denom, raw, masks, lo, hi)
        acc = self._accs.get(id(g))
        if acc is None:
            acc = self._accs[id(g)] = np.empty_like(g.flat)
        outs = []  # softmax_xent gives each piece new arrays: nothing to copy
        for a in range(0, n, step):
            b = min(n, a + step)
            outs.append(self._train_piece(worker, x[a:b], labels[a:b], denom, raw, masks, lo + a, lo + b))
            if a == 0:
                np.copyto(acc, g.flat)
            elif b < n:
                acc += g.flat
            else:
                g.flat += acc
        return (np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]), None,
                sum(o[3] for o in outs), sum(o[4] for o in outs))

    def _train_piece(self, worker, x, labels, denom, raw, masks, lo, hi):
        stages, _ = worker
        for i, m in masks.items():
            stages[i].mask = m[lo:hi]
        if type(x) is Prepared:
            x = stages[0].forward(None, True, x.data) if x.cols else stages[0].forward(x.data, True)
            rest = stages[1:]
        else:
            rest = stages = self._plan(stages, len(x))
            if raw:
                x = self.model.preprocess(x)
        for st in rest:
            x = st.forward(x, True)
        out = softmax_xent(x, labels, denom)
        g = out[2]
        try:
            for st in reversed(stages):
                g = st.backward(g)
        finally:
            if self.helper is not None:
                self.helper.join()  # weight gradients handed to the helper are complete
        return out

    def run(self, fns: list) -> None:
        """Call every one of ``fns`` (no arguments), on two threads when the last training
        step used the helper (it ran unsplit, so the other core is free): the optimizer's
        update in halves."""
        if self.helper is None:
            for fn in fns:
                fn()
        else:
            self.helper.run(fns)

    @staticmethod
    def _sum_grads(grads: list[dict]) -> None:
        """grads[0] += grads[1] + ... in part order (one flat sum when the layout allows)."""
        g0 = grads[0]
        if getattr(g0, "flat", None) is not None and all(getattr(g, "flat", None) is not None for g in grads):
            for g in grads[1:]:
                g0.flat += g.flat
            return
        for g in grads[1:]:
            for k, v in g.items():
                g0[k] += v

    # -- inference ------------------------------------------------------------------------
    def infer(self, images, labels=None, out=None, batch_size=None):
        """See ``infer.infer``."""
        return infer(self, images, labels, out, batch_size)

    def _plan(self, stages: list, n: int) -> list:
        """What runs ``n`` raw images: ``stages``, or ``compile.tiled(stages)`` (kept per worker)."""
        if id(stages) not in self._tiled:  # (kept beside its key: the id stays its own)
            self._tiled[id(stages)] = (stages, tiled(stages))
        plan = self._tiled[id(stages)][1]
        return plan if plan is not stages and n * plan[0].macs >= tiles.MIN_MACS else stages

    _infer_part = infer_part

