"""The reference engine: the layers one by one, as written in ``cnnexp.layers``.

Training runs ``forward`` through every layer, the softmax layer's ``loss`` and
``loss_backward``, then ``backward`` through every layer in reverse; the layers store their
gradients in their ``grads`` and the model's ``grads`` collects them. Inference runs
``forward`` in chunks. Single-threaded (BLAS as configured for the process).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np


class ReferenceEngine:
    name = "reference"
    threads = 1

    def __init__(self, model, threads="auto"):
        self.model = model

    def compute(self):
        return nullcontext()

    def close(self) -> None:
        pass

    def train(self, x, labels, raw: bool = False):
        """``(losses, probs, loss_sum, correct)``; fills the layers' gradients."""
        model = self.model
        if raw:
            x = model.preprocess(x)
        body, sm = model.layers[:-1], model.loss_layer
        for layer in body:
            x = layer.forward(x, True)
        p = sm.forward(x)
        losses = sm.loss(labels)
        g = sm.loss_backward()
        for layer in reversed(body):
            g = layer.backward(g)
        return losses, p, float(losses.sum()), int(np.count_nonzero(p.argmax(axis=1) == labels))

    def infer(self, images, labels=None, out=None, batch_size=None):
        model = self.model
        step = max(1, batch_size or 128)
        loss_sum, correct = 0.0, 0
        for a in range(0, len(images), step):
            p = model.forward(model.preprocess(images[a:a + step]))
            if out is not None:
                out[a:a + len(p)] = p
            if labels is not None and model.loss_layer is not None:
                lab = labels[a:a + step]
                loss_sum += float(model.loss_layer.loss(lab).sum())
                correct += int(np.count_nonzero(p.argmax(axis=1) == lab))
        return loss_sum, correct
