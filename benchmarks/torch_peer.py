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

import numpy as np


def build(name: str):
    import torch
    from torch import nn

    if name == "seed":
        # Conv3x3 (8, no bias) -> MaxPool2 -> Dense 1352->10 (+ softmax in the loss)
        net = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1352, 10))
    elif name == "lenet5":
        net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
                            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
                            nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))
    elif name == "keras_mnist":
        net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Dropout(0.25), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5),
                            nn.Linear(128, 10))
    else:
        raise ValueError(name)
    torch.manual_seed(0)
    return net


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
