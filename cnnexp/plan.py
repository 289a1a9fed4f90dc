"""The fast execution plan behind ``Model.train_batch`` / ``train_step`` / ``evaluate`` /
``predict_proba``.

``Model`` (``cnnexp.model``) holds the layers, the parameters (views of one flat array) and the
reference path (``forward`` / ``backward``, layer by layer). This module holds how the same
layers are *run* fast; ``Model`` inherits it from ``FastPath``:

1. **Stages** (``make_plan``): the layers minus the final softmax, with every
   ``conv2d [-> relu] -> maxpool2d`` run that tiles exactly replaced by one fused stage
   (``cnnexp.layers.fused``): ``ConvMaxPool`` (pooled row order), ``ConvMaxPoolT`` (batch as the
   innermost axis, one-channel convs), ``ConvPoolDenseT`` (``ConvMaxPoolT`` followed by
   ``flatten -> dense``, read in that layout); every other ``conv2d -> relu`` pair by one
   ``ConvReLU`` (ReLU in place on the conv's output buffer). Other layers run as themselves.
   The loss is fused into the softmax (``Softmax.forward_loss``).
2. **Raw images in**: when the first stage is a ``ConvMaxPoolT`` without padding, ``train_step``
   and inference hand it the raw uint8 chunk and it casts/normalises straight into its own
   transposed buffer (the same operations as ``Model.preprocess``, so the same values).
3. **Two threads**: numpy releases the GIL inside its kernels, so a batch of at least
   ``split_min_batch`` images (or ``split_min_flops`` of training work) is split in two halves;
   the second runs on one persistent worker thread (``_executor``) through a *replica* of the
   stages (shared parameters, own gradient buffer and forward state) and the gradients are
   summed. Dropout masks are drawn for the whole batch first, so results do not depend on the
   split. Inference runs in chunks of ``infer_chunk`` images, the chunks divided between the
   two threads; the logits land in one array, and softmax, loss and accuracy are computed once,
   on the whole batch, in the calling thread (the same numbers whatever the split).
4. **BLAS single-threaded** (``blas_threads``, via threadpoolctl) inside ``fit`` / ``evaluate``:
   for these small products OpenBLAS's own threads cost more than they give, and cnnexp uses
   the second core itself. ``CNNEXP_THREADS=1`` turns the split off.

Every piece is checked against the layer-by-layer path, and by float64 finite differences, in
``tests/test_fastpaths.py``.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager

import numpy as np

from .errors import ConfigError
from .layers.activations import Dropout, ReLU
from .layers.base import Layer
from .layers.conv import Conv2D
from .layers.dense import Dense, Flatten
from .layers.fused import ConvMaxPool, ConvMaxPoolT, ConvPoolDenseT, ConvReLU, can_fuse_conv_pool, can_fuse_conv_relu


_EXECUTOR = None
_BLAS = None


def _blas_libs() -> list:
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        except Exception:  # pragma: no cover  (threadpoolctl missing or unsupported BLAS)
            _BLAS = []
    return _BLAS


@contextmanager
def blas_threads(n: int = 1):
    """Run the block with the BLAS library limited to ``n`` threads, then restore it.

    cnnexp's fast path runs BLAS single-threaded and uses the second core itself (half a batch
    per thread): for these small products, OpenBLAS's own threading costs more than it gives
    (measured: the seed net at batch 1 trains 40% faster with one BLAS thread)."""
    libs = _blas_libs()
    old = [lib.get_num_threads() for lib in libs]
    for lib, o in zip(libs, old):
        if o != n:
            lib.set_num_threads(n)
    try:
        yield
    finally:
        for lib, o in zip(libs, old):
            if o != n:
                lib.set_num_threads(o)


#: Python's thread switch interval while both threads work on one batch. The default 5 ms
#: lets a thread that is between numpy kernels keep the GIL while the other waits to start
#: its next kernel; 0.1 ms, measured side by side (3 alternating rounds): keras_mnist
#: training at batch 32 +28%, seed inference at batch 1000 +16%, seed batch 128 unchanged.
SPLIT_SWITCH_INTERVAL = 1e-4


@contextmanager
def fine_switching():
    """Run the block with ``sys.setswitchinterval(SPLIT_SWITCH_INTERVAL)``, then restore it."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(SPLIT_SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _executor():
    """One persistent worker thread shared by all models (numpy releases the GIL in its
    kernels, so the worker's half of a batch runs on the second core)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        from concurrent.futures import ThreadPoolExecutor

        _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnexp-worker")
    return _EXECUTOR


def default_threads() -> int:
    env = os.environ.get("CNNEXP_THREADS")
    if env:
        return max(1, int(env))
    return 2 if (os.cpu_count() or 1) >= 2 else 1


class FastPath:
    """The fast-path half of ``Model`` (see the module docstring). Expects from the model:
    ``layers``, ``loss_layer``, ``dtype``, ``scale``, ``shift``, ``input_shape``,
    ``output_shape``, ``preprocess``, ``_flatten`` and the gradient buffers ``_grads`` /
    ``_grad_slots``."""

    #: smallest batch split across two threads in training (smaller ones lose to the hand-off:
    #: the seed net at batch 32 trained at 26k img/s split against 49k unsplit, side by side)
    split_min_batch = 64
    #: ... unless the batch's training work (see ``train_flops``) reaches this: keras_mnist
    #: (~72 MFLOP per image) is split from batch 14 on; the seed net and LeNet-5 only from 64
    split_min_flops = 1e9
    #: images per chunk in inference: keeps temporaries near the core's cache (measured on the
    #: seed net, two threads, ``benchmarks/run.py``'s inference rate, medians of 3 alternating
    #: runs in fresh processes: 169k img/s with 64, 148k with 128, 117k with 32; the second core
    #: was shared with other work, so these vary by +-20%)
    infer_chunk = 64

    def _init_plan(self):
        """Plan state of a new model (called by ``Model.__init__`` once the layers, dtype,
        loss layer and flat parameter buffers are set)."""
        layers = self.layers
        self.threads = default_threads()
        self._plan = make_plan(layers[:-1] if self.loss_layer is not None else layers)
        # random layers other than dropout (which the split handles) keep batches whole
        self._splittable = all(isinstance(l, Dropout) or not hasattr(l, "rng") for l in layers)
        self._replica = None
        self._train_flops = None
        self._lock = threading.Lock()

    # -- the fast path --------------------------------------------------------------------
    def _check_loss(self):
        if self.loss_layer is None:
            raise ConfigError("the last layer must be 'softmax' to train (it carries the cross-entropy loss)")

    @staticmethod
    def _train_part(plan, loss_layer, x, labels, denom, pre=None):
        """One thread's share of a training step. With ``pre = (scale, shift)``, ``x`` is raw
        images and the first stage (a ``ConvMaxPoolT``) preprocesses them itself."""
        if pre is not None:
            x = plan[0].forward(x, True, pre=pre)
            plan_rest = plan[1:]
        else:
            plan_rest = plan
        for st in plan_rest:
            x = st.forward(x, True)
        out = loss_layer.forward_loss(x, labels, denom)
        g = out[2]
        for st in reversed(plan):
            g = st.backward(g)
        return out

    def _get_replica(self):
        """Plan stages and loss layer for the worker thread: shared parameters, own gradient
        buffer (``grads.flat`` of the same layout), own forward state."""
        if self._replica is None:
            reps = {}
            for l in self.layers:
                reps[id(l)] = l.replica()
            rlayers = [reps[id(l)] for l in self.layers]
            plan = []
            for st in self._plan:
                if isinstance(st, ConvPoolDenseT):
                    plan.append(st.replica(reps[id(st.conv)], reps[id(st.flatten)], reps[id(st.dense)]))
                elif isinstance(st, (ConvMaxPool, ConvReLU)):
                    plan.append(st.replica(reps[id(st.conv)]))
                else:
                    plan.append(reps[id(st)])
            _, rgrads, rslots = self._flatten(rlayers, grads_only=True)
            self._replica = (plan, reps[id(self.loss_layer)] if self.loss_layer is not None else None,
                             rgrads, rslots)
        return self._replica

    def _dropouts(self):
        """(layer, its replica) for every dropout layer, in order."""
        plan2 = self._get_replica()[0]
        out = []
        for st, st2 in zip(self._plan, plan2):
            if isinstance(st, Dropout):
                out.append((st, st2))
        return out

    def _split(self, n: int) -> bool:
        if self.threads <= 1 or n < 2 or not self._splittable:
            return False
        return n >= self.split_min_batch or n * self.train_flops >= self.split_min_flops

    @property
    def train_flops(self) -> int:
        """Approximate training FLOP per image of the conv and dense layers (forward product
        plus the two backward ones); used only to decide whether to split a batch."""
        if self._train_flops is None:
            total = 0
            for l in self.layers:
                if isinstance(l, Conv2D):
                    oh, ow, f = l.output_shape
                    total += 6 * oh * ow * f * l.kh * l.kw * l.input_shape[2]
                elif isinstance(l, Dense):
                    total += 6 * l.input_shape[0] * l.units
            self._train_flops = total
        return self._train_flops

    def _raw_first(self) -> bool:
        """True when the first stage can take raw images (``ConvMaxPoolT.forward(pre=)``)."""
        r = getattr(self, "_raw_first_cached", None)
        if r is None:
            st = self._plan[0] if self._plan else None
            r = self._raw_first_cached = isinstance(st, ConvMaxPoolT) and st.accepts_raw()
        return r

    def _train(self, x, labels, raw=False):
        """(losses, probs, loss_sum, correct) of a preprocessed batch (or of raw images, when
        ``raw``: only if ``_raw_first()`` and every part has at least the first stage's
        ``min_batch`` images); fills the gradients."""
        n = len(x)
        pre = (self.scale, self.shift) if raw else None
        if not self._split(n):
            losses, probs, _, loss_sum, correct = self._train_part(self._plan, self.loss_layer, x, labels, n, pre)
            return losses, probs, loss_sum, correct
        plan2, loss2, rgrads, rslots = self._get_replica()
        h = (n + 1) // 2
        for l, r in self._dropouts():  # whole-batch masks, drawn in layer order as unsplit
            if l.rate:
                mask = l.draw_mask((n,) + l.input_shape, self.dtype if raw else x.dtype)
                l.preset_mask, r.preset_mask = mask[:h], mask[h:]
        with fine_switching():
            fut = _executor().submit(self._train_part, plan2, loss2, x[h:], labels[h:], n, pre)
            a = self._train_part(self._plan, self.loss_layer, x[:h], labels[:h], n, pre)
            b = fut.result()
        if self._grads.flat is not None and rgrads.flat is not None:
            # the replica's layers may have stored new arrays (user layers): sync them first
            for d, k, gv in rslots:
                if d[k] is not gv:
                    np.copyto(gv, d[k])
                    d[k] = gv
            self.grads  # noqa: B018  (syncs this model's slots the same way)
            np.add(self._grads.flat, rgrads.flat, out=self._grads.flat)
        else:
            for (d, k, gv), (rd, rk, _) in zip(self._grad_slots, rslots):
                np.add(d[k], rd[rk], out=gv)
                d[k] = gv
        return (np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), a[3] + b[3], a[4] + b[4])

    def train_batch(self, x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward + backward on a preprocessed batch; fills ``grads``.
        Returns per-sample losses and probabilities."""
        self._check_loss()
        losses, probs, _, _ = self._train(x, np.asarray(labels))
        return losses, probs

    def train_step(self, images: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
        """``train_batch`` on raw images; returns the batch's summed loss and correct count."""
        self._check_loss()
        images, labels = np.asarray(images), np.asarray(labels)
        n = len(images)
        if self._raw_first() and n // 2 >= self._plan[0].min_batch and images.ndim >= 3 and \
                (images.shape[1:] == self.input_shape or images.shape[1:] == self.input_shape[:-1]):
            # the first stage preprocesses the raw images into its own buffer (same values)
            _, _, loss_sum, correct = self._train(images, labels, raw=True)
        else:
            _, _, loss_sum, correct = self._train(self.preprocess(images), labels)
        return loss_sum, correct

    def _infer_part(self, plan, images, logits, lo, hi, step):
        """Forward of images[lo:hi] in chunks of ``step``, the last stage's output written to
        ``logits[lo:hi]``. A first ``ConvMaxPoolT`` stage takes the raw chunk and preprocesses
        it into its own buffer (same values as ``preprocess``)."""
        raw = isinstance(plan[0], ConvMaxPoolT) and plan[0].accepts_raw() if plan else False
        pre = (self.scale, self.shift)
        for st in plan:
            if hasattr(st, "begin_inference"):
                st.begin_inference()
        for i in range(lo, hi, step):
            chunk = images[i:i + step]
            if raw and len(chunk) >= plan[0].min_batch:
                x = plan[0].forward(chunk, False, pre=pre)
                rest = plan[1:]
            else:
                x, rest = self.preprocess(chunk), plan
            for st in rest:
                x = st.forward(x, False)
            logits[i:i + len(chunk)] = x

    def compute(self):
        """Context for a stretch of fast-path calls (the training loop wraps its epochs in it):
        BLAS single-threaded, as the fast path expects."""
        return blas_threads(1)

    def _infer(self, images, labels=None, out=None, batch_size=None):
        # the fast path reuses buffers: one inference at a time per model (a scoring server
        # may call predict from several threads)
        with self._lock, self.compute():
            return self._infer_unlimited(images, labels, out, batch_size)

    def _infer_unlimited(self, images, labels=None, out=None, batch_size=None):
        n = len(images)
        self.preprocess(images[:1])  # checks the shape (chunks may skip preprocess)
        step = max(1, min(batch_size or self.infer_chunk, self.infer_chunk))
        last = self.layers[-2].output_shape if self.loss_layer is not None and len(self.layers) > 1 \
            else self.output_shape
        logits = out if self.loss_layer is None and out is not None else np.empty((n,) + tuple(last), self.dtype)
        if self.threads > 1 and n >= 2 * step:
            plan2 = self._get_replica()[0]
            nchunks = -(-n // step)
            h = min(n, ((nchunks + 1) // 2) * step)
            with fine_switching():
                fut = _executor().submit(self._infer_part, plan2, images, logits, h, n, step)
                self._infer_part(self._plan, images, logits, 0, h, step)
                fut.result()
        else:
            self._infer_part(self._plan, images, logits, 0, n, step)
        if self.loss_layer is None:
            return 0.0, 0
        # softmax, loss and accuracy of the whole batch at once, in this thread: the same
        # numbers whatever the thread split (row-wise operations; one sum at the end)
        p = self.loss_layer.forward(logits)
        if out is not None:
            out[...] = p
        if labels is None:
            return 0.0, 0
        loss_sum = float(self.loss_layer.loss(labels).sum())
        return loss_sum, int(np.count_nonzero(p.argmax(axis=1) == labels))

    def predict_proba(self, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """Class probabilities for raw images, in chunks to bound temporaries."""
        out = np.empty((len(images),) + self.output_shape, dtype=self.dtype)
        self._infer(images, None, out, batch_size)
        return out

    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 128) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on raw images."""
        if len(images) == 0:
            return float("nan"), float("nan")
        labels = np.asarray(labels)
        loss_sum, correct = self._infer(images, labels, None, batch_size)
        return loss_sum / len(images), correct / len(images)


def _conv_pool_stage(conv, pool, relu=None) -> ConvMaxPool:
    """The fused stage for ``conv [-> relu] -> pool``: batch-innermost layout for one-channel
    inputs (``ConvMaxPoolT``), the pooled row order otherwise."""
    cls = ConvMaxPoolT if conv.input_shape[2] == 1 else ConvMaxPool
    return cls(conv, pool, relu)


def make_plan(layers: list[Layer]) -> list:
    """The stages the fast path runs: the layers, with every ``conv2d [-> relu] -> maxpool2d``
    run that ``can_fuse_conv_pool`` accepts replaced by one ``ConvMaxPool``, and every other
    ``conv2d -> relu`` pair by one ``ConvReLU``."""
    plan, i = [], 0
    while i < len(layers):
        l = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        nxt2 = layers[i + 2] if i + 2 < len(layers) else None
        if can_fuse_conv_pool(l, nxt):
            plan.append(_conv_pool_stage(l, nxt))
            i += 2
        elif type(nxt) is ReLU and can_fuse_conv_pool(l, nxt2):
            plan.append(_conv_pool_stage(l, nxt2, relu=nxt))
            i += 3
        elif can_fuse_conv_relu(l, nxt):
            plan.append(ConvReLU(l, nxt))
            i += 2
        else:
            plan.append(l)
            i += 1
        # a one-channel conv stage straight into flatten -> dense: keep its batch-innermost layout
        if len(plan) >= 3 and type(plan[-1]) is Dense and type(plan[-2]) is Flatten and \
                type(plan[-3]) is ConvMaxPoolT:
            cp = plan[-3]
            plan[-3:] = [ConvPoolDenseT(cp.conv, cp.pool, cp.relu, plan[-2], plan[-1])]
    return plan
