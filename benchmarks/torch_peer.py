"""The PyTorch CPU peer: the same architectures, initial settings and training step as cnnexp.

Imported by ``benchmarks/run.py`` only when ``torch`` is installed (``pip install torch==2.13.0``).
Every measurement runs in a fresh subprocess (``python benchmarks/torch_peer.py ...``) so that
the thread count and memory format are set before torch does any work, and so torch's import
and threads never disturb the numpy measurements.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def build(name: str):
    """The torch twin of the cnnexp model ``name`` (benchmarks/stacks.py), layer for layer:
    'same' padding as TensorFlow pads it (extra pixel after), softmax folded into the loss."""
    import torch
    from torch import nn

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from cnnexp.layers.conv import same_padding
    from cnnexp.model import build_model
    from stacks import model_spec

    model = build_model(model_spec(name), seed=0, engine="reference")
    mods = []
    for l in model.layers:
        kind = type(l).__name__
        if kind == "Conv2D":
            h, w, c = l.input_shape
            if l.padding == "same":
                (pt, pb), (pl, pr) = same_padding(h, l.kh, l.sh), same_padding(w, l.kw, l.sw)
                mods.append(nn.ZeroPad2d((pl, pr, pt, pb)))
            mods.append(nn.Conv2d(c, l.filters, (l.kh, l.kw), (l.sh, l.sw), bias=l.use_bias))
        elif kind in ("MaxPool2D", "AvgPool2D"):
            mods.append((nn.MaxPool2d if kind == "MaxPool2D" else nn.AvgPool2d)((l.ph, l.pw), (l.sh, l.sw)))
        elif kind == "Dense":
            mods.append(nn.Linear(l.input_shape[0], l.units, bias=l.use_bias))
        elif kind == "Dropout":
            mods.append(nn.Dropout(l.rate))
        elif kind in ("ReLU", "Tanh", "Sigmoid", "Flatten"):
            mods.append(getattr(nn, kind)())
        elif kind != "Softmax":
            raise ValueError(f"no torch twin for {kind}")
    torch.manual_seed(0)
    return nn.Sequential(*mods)


def measure(name: str, mode: str, batch: int, threads: int, channels_last: bool, seconds: float = 1.5,
            n_images: int = 8192, lr: float = 0.005) -> dict:
    """Images/s of ``mode`` = train (SGD steps, batch ``batch``, shuffled uint8 images normalised
    per batch as cnnexp does) or infer (eval forward of 1,000 images in one batch)."""
    import torch

    torch.set_num_threads(threads)
    net = build(name)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (n_images, 1, 28, 28), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 10, n_images))
    if mode == "infer":
        net.eval()
        x = (images[:batch].float() / 255 - 0.5).contiguous(memory_format=fmt)
        with torch.inference_mode():
            for _ in range(3):
                net(x).softmax(1)
            t0, k = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                xb = (images[:batch].float() / 255 - 0.5).contiguous(memory_format=fmt)
                net(xb).softmax(1)
                k += 1
            dt = time.perf_counter() - t0
        return {"img_s": k * batch / dt}
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    perm = torch.randperm(n_images)

    def step(i):
        idx = perm[i:i + batch]
        xb = (images[idx].float() / 255 - 0.5).contiguous(memory_format=fmt)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb), labels[idx])
        loss.backward()
        opt.step()
        return loss

    for i in range(0, 20 * batch, batch):
        step(i % (n_images - batch))
    t0, k, i = time.perf_counter(), 0, 0
    while time.perf_counter() - t0 < seconds:
        step(i)
        i = (i + batch) % (n_images - batch)
        k += 1
    dt = time.perf_counter() - t0
    return {"img_s": k * batch / dt}


def full_epoch(data_dir: str, threads: int = 1, lr: float = 0.005) -> dict:
    """One batch-1 epoch of the seed net on full Fashion-MNIST, then test accuracy."""
    import gzip

    import torch

    torch.set_num_threads(threads)

    def idx(path, offset):
        with gzip.open(path, "rb") as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    tr = idx(f"{data_dir}/train-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    trl = idx(f"{data_dir}/train-labels-idx1-ubyte.gz", 8).astype(np.int64)
    te = idx(f"{data_dir}/t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    tel = idx(f"{data_dir}/t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    net = build("seed")
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    images, labels = torch.from_numpy(tr.copy()), torch.from_numpy(trl)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(tr)))
    t0 = time.perf_counter()
    for i in range(len(tr)):
        j = perm[i:i + 1]
        xb = images[j].float() / 255 - 0.5
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xb), labels[j]).backward()
        opt.step()
    seconds = time.perf_counter() - t0
    net.eval()
    with torch.inference_mode():
        pred = net(torch.from_numpy(te.copy()).float() / 255 - 0.5).argmax(1).numpy()
    return {"seconds": seconds, "test_acc": float((pred == tel).mean())}


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    if args.pop("what") == "full_epoch":
        print(json.dumps(full_epoch(**args)))
    else:
        print(json.dumps(measure(**args)))
