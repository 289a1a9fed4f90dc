"""The data layer: MNIST-like data sets by name, checked IDX reading, cached downloads, splits.

    from cnnexp.data import load_dataset, make_splits
    ds = load_dataset("mnist", dir=None, download=True)
    splits = make_splits(ds, train_size=10000, val_size=5000, test_size=None)
    x, y = splits.train

Importing this package registers the built-in data sets in ``cnnexp.registry.DATASETS``.
"""

from .datasets import Dataset, load_dataset
from .splits import Split, Splits, make_splits

__all__ = ["Dataset", "Split", "Splits", "load_dataset", "make_splits"]
