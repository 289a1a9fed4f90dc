"""Read and write IDX files (the MNIST file format), gzip-compressed or raw.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the items. We only use uint8 data (type 0x08):
images are ``N x H x W`` (magic 0x00000803) and labels ``N`` (magic 0x00000801).

The header is checked here first, so a wrong or damaged file gives one line naming the file
and what is wrong; the items are then decoded by ``mnist.parse_idx``.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import mnist
import numpy as np

from ..errors import DataError

UINT8 = 0x08
IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension
KINDS = {"images": (IMAGES_MAGIC, "uint8 images, N x H x W"), "labels": (LABELS_MAGIC, "uint8 labels, N")}

# The standard file names of MNIST and Fashion-MNIST, in the order train images, train labels,
# test images, test labels.
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
STANDARD_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)


def _describe(magic: int) -> str:
    for kind, (m, _) in KINDS.items():
        if magic == m:
            return f" (an IDX {kind} file)"
    return ""


# deflate cannot expand data more than ~1032:1; a header promising more than that is a lie
MAX_GZIP_RATIO = 1032
CHUNK = 1 << 20


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_exact(f, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = f.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _errors(path: Path, e: BaseException) -> DataError:
    if isinstance(e, FileNotFoundError):
        return DataError(f"{path}: no such file")
    if isinstance(e, EOFError):
        return DataError(f"{path}: truncated gzip file ({e}); delete it and fetch it again")
    if isinstance(e, (gzip.BadGzipFile, zlib.error)):
        return DataError(f"{path}: corrupt gzip file ({e}); delete it and fetch it again")
    return DataError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})")


def read_header(path: Path, f, kind: str) -> tuple[tuple[int, ...], bytes]:
    """Read and check magic and dimensions from the open stream ``f``; return (shape, header)."""
    expected, what = KINDS[kind]
    head = _read_exact(f, 4)
    if len(head) < 4:
        raise DataError(f"{path}: too short for an IDX file ({len(head)} bytes)")
    (magic,) = struct.unpack(">I", head)
    if magic != expected:
        raise DataError(f"{path}: wrong magic number 0x{magic:08x}{_describe(magic)}, expected 0x{expected:08x} ({what})")
    ndim = head[3]
    dims = _read_exact(f, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({4 + len(dims)} bytes, need {4 + 4 * ndim})")
    shape = struct.unpack(f">{ndim}I", dims)
    if kind == "images" and (shape[1] == 0 or shape[2] == 0):
        raise DataError(f"{path}: images of size {shape[1]}x{shape[2]}")
    return shape, head + dims


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


def check_promise(path: Path, shape: tuple[int, ...], header_len: int) -> int:
    """The data size the header promises; DataError if the file cannot hold it or memory cannot."""
    items = int(np.prod(shape, dtype=object))  # Python ints: no overflow
    dims = " x ".join(map(str, shape))
    size = path.stat().st_size
    if path.suffix == ".gz" and items > size * MAX_GZIP_RATIO + CHUNK:
        raise DataError(f"{path}: header says {dims} = {items:,} bytes of data, but a {_mb(size)} gzip file "
                        f"can hold at most {_mb(size * MAX_GZIP_RATIO)} once decompressed; the file is damaged or forged")
    if path.suffix != ".gz" and items != size - header_len:
        problem = "truncated" if size - header_len < items else "has trailing bytes"
        raise DataError(f"{path}: {problem}: header says {dims} = {items} bytes of data, file has {size - header_len}")
    from ..estimate import memory_limit

    limit, source = memory_limit()
    if limit is not None and items > limit:
        raise DataError(f"{path}: header says {dims} = {_mb(items)} of data, more than the {_mb(limit)} "
                        f"memory limit ({source})")
    return items


def read_bytes(path: str | os.PathLike, kind: str) -> tuple[tuple[int, ...], bytes]:
    """(shape, file content decompressed): header checked first, then at most the promised
    size plus one byte is decompressed, so a forged header or a gzip bomb costs no memory."""
    path = Path(path)
    try:
        with _open(path) as f:
            shape, header = read_header(path, f, kind)
            items = check_promise(path, shape, len(header))
            buf = bytearray(len(header) + items)
            buf[: len(header)] = header
            view, got = memoryview(buf), len(header)
            while got < len(buf):
                n = f.readinto(view[got: got + CHUNK])
                if not n:
                    break
                got += n
            extra = len(f.read(1)) if got == len(buf) else 0
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise _errors(path, e) from None
    if got != len(buf) or extra:
        problem = "truncated" if got < len(buf) else "has trailing bytes"
        dims = " x ".join(map(str, shape))
        found = f"{got - len(header)}" if got < len(buf) else f"more than {items}"
        raise DataError(f"{path}: {problem}: header says {dims} = {items} bytes of data, file has {found}")
    return shape, bytes(buf)


def read_idx(path: str | os.PathLike, kind: str) -> np.ndarray:
    """Read an IDX ``kind`` file ("images" or "labels"): uint8 ``(N, H, W)`` or ``(N,)``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be 'images' or 'labels', got {kind!r}")
    shape, data = read_bytes(path, kind)
    try:
        array = mnist.parse_idx(io.BytesIO(data))
    except mnist.IdxDecodeError as e:
        raise DataError(f"{path}: {e}") from None
    return np.asarray(array, dtype=np.uint8).reshape(shape)


def check_labels(labels: np.ndarray, num_classes: int, path: str | os.PathLike) -> None:
    """Raise DataError naming the first label outside ``0..num_classes-1``."""
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{path}: label {int(labels[i])} (item {i}) is outside 0..{num_classes - 1}"
            f" ({bad.size} bad label{'s' if bad.size > 1 else ''})"
        )


def read_pair(images_path: str | os.PathLike, labels_path: str | os.PathLike,
              num_classes: int | None = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read matching image and label files; labels come back as int64.

    ``num_classes=None`` skips the label range check.
    """
    images = read_idx(images_path, "images")
    labels = read_idx(labels_path, "labels")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    if num_classes is not None:
        check_labels(labels, num_classes, labels_path)
    return images, labels.astype(np.int64)


def find_files(folder: str | os.PathLike, names=STANDARD_FILES) -> tuple[list[Path], list[str]]:
    """Locate ``names`` in ``folder``, each as ``name`` or as the raw file without ``.gz``.

    Returns ``(paths found, names missing)``.
    """
    folder = Path(folder)
    found, missing = [], []
    try:
        for name in names:
            for candidate in (folder / name, folder / name.removesuffix(".gz")):
                if candidate.is_file():
                    found.append(candidate)
                    break
            else:
                missing.append(name)
    except OSError as e:  # a folder the user may not read (PermissionError) or list
        raise DataError(f"{folder}: cannot look inside ({e.strerror or e}); check the folder's permissions") from None
    return found, missing


def write_idx(path: str | os.PathLike, array) -> Path:
    """Write a uint8 array as an IDX file, gzip-compressed when ``path`` ends with ``.gz``."""
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError("write_idx writes uint8 data; values must be in 0..255")
        array = array.astype(np.uint8)
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"cannot write a {array.ndim}-d array as IDX")
    header = struct.pack(f">HBB{array.ndim}I", 0, UINT8, array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array).tobytes()
    if path.suffix == ".gz":
        # mtime=0 keeps the bytes (and so the checksum) the same from run to run
        with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path
