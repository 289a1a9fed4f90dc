"""Train / validation / test subsets of a Dataset, as views (no copies, images stay uint8).

The validation set is the END of the training split (whose order is fixed by the loader);
the training subset is then the first ``train_size`` images of what is left, and the test
subset the first ``test_size`` images of the test split. A size of None means all of it;
``val_size`` None or 0 means no validation set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError


class Split(NamedTuple):
    """``images, labels = split``; ``split.images``, ``split[0]`` work too."""

    images: np.ndarray
    labels: np.ndarray


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train.labels), "val": len(self.val.labels), "test": len(self.test.labels)}


def _check_size(key: str, value, smallest: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"data.{key} must be a whole number >= {smallest} or null, got {value!r}")
    if value < smallest:
        whole = " (use null for the whole split)" if smallest else ""
        raise ConfigError(f"data.{key}={value} is invalid: it must be >= {smallest}{whole}")
    return int(value)


def make_splits(ds, train_size: int | None = None, val_size: int | None = None,
                test_size: int | None = None) -> Splits:
    """Cut ``ds`` (a Dataset) into train / val / test; ConfigError naming any size that doesn't fit."""
    train_size = _check_size("train_size", train_size)
    val_size = _check_size("val_size", val_size, smallest=0) or 0
    test_size = _check_size("test_size", test_size)

    n_train, n_test = len(ds.train_images), len(ds.test_images)
    if val_size >= n_train:
        raise ConfigError(f"data.val_size={val_size} leaves no training data "
                          f"(the training split has {n_train} images)")
    rest = n_train - val_size
    if train_size is not None and train_size > rest:
        after_val = f", {rest} after data.val_size={val_size}" if val_size else ""
        raise ConfigError(f"data.train_size={train_size} is larger than the training split "
                          f"({n_train} images{after_val})")
    if test_size is not None and test_size > n_test:
        raise ConfigError(f"data.test_size={test_size} is larger than the test split ({n_test} images)")

    train_end = rest if train_size is None else train_size
    test_end = n_test if test_size is None else test_size
    return Splits(
        train=Split(ds.train_images[:train_end], ds.train_labels[:train_end]),
        val=Split(ds.train_images[rest:], ds.train_labels[rest:]),
        test=Split(ds.test_images[:test_end], ds.test_labels[:test_end]),
    )
