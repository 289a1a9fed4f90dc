"""Download the four IDX files of MNIST or Fashion-MNIST into a per-user cache.

Each file is tried on the mirrors in order. It is written to a temporary file beside its
final name and moved there (``os.replace``, atomic) only once its MD5 matches, so the cache
never holds a partial or wrong file. A file already in the cache is used only if its MD5
still matches; a bad one is deleted and fetched again.

The cache is ``$CNNEXP_CACHE``, else ``$XDG_CACHE_HOME/cnnexp``, else ``~/.cache/cnnexp``,
with one subfolder per data set. ``CNNEXP_OFFLINE=1`` forbids any network access.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import DataError
from ..paths import cache_root

MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's
        "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow datasets'
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

# MD5 of each .gz file, as published by torchvision.
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

TIMEOUT = 10.0  # seconds, for connecting and for each read
USER_AGENT = "cnnexp-data/1.0 (Python urllib)"
CHUNK = 1 << 16
STALE_PART_SECONDS = 3600  # temp files older than this were left by a killed run
FAILED_MARKER = ".download-failed"  # in the data set's cache folder: when and why the last download failed
REMEMBERED = " (a download failed"
RETRY_SECONDS = 3600  # no new attempt for this long after one failed (the network is likely still down)


class DownloadError(DataError):
    """No mirror delivered a file; the message says why."""


def offline() -> bool:
    """True when ``CNNEXP_OFFLINE`` is set to anything but empty, 0, false or no."""
    return os.environ.get("CNNEXP_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def cache_dir(dataset: str) -> Path:
    return cache_root() / dataset


def md5sum(path: str | os.PathLike) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified(path: Path, md5: str) -> bool:
    """True if ``path`` exists with checksum ``md5``; a file with another checksum is deleted."""
    if not path.is_file():
        return False
    if md5sum(path) == md5:
        return True
    print(f"note: removing {path} from the cache: its MD5 does not match", file=sys.stderr)
    path.unlink(missing_ok=True)
    return False


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        if not isinstance(e.reason, BaseException):
            return str(e.reason)
        e = e.reason
    if isinstance(e, TimeoutError):
        return "timed out"
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def download_file(url: str, dest: Path, md5: str, timeout: float = TIMEOUT) -> None:
    """Fetch ``url`` to ``dest`` through a temporary file; move it in place only if its MD5 matches."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h = hashlib.md5(usedforsecurity=False)
        received = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            try:
                while block := response.read(CHUNK):
                    out.write(block)
                    h.update(block)
                    received += len(block)
            except (http.client.IncompleteRead, ConnectionError):
                raise DataError(f"connection lost after {received} of {length or '?'} bytes") from None
        if length is not None and length.isdigit() and received != int(length):
            raise DataError(f"connection closed after {received} of {length} bytes")
        if h.hexdigest() != md5:
            raise DataError(f"MD5 mismatch (got {h.hexdigest()}, expected {md5})")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _remove_stale_parts(folder: Path) -> None:
    now = time.time()
    for part in folder.glob(".*.part"):
        try:
            if now - part.stat().st_mtime > STALE_PART_SECONDS:
                part.unlink()
        except OSError:
            pass


def fetch(dataset: str, mirrors: tuple[str, ...] | list[str] | None = None,
          checksums: dict[str, str] | None = None, folder: Path | None = None,
          allow_download: bool = True, timeout: float = TIMEOUT) -> tuple[Path, list[str]]:
    """Make sure the cache holds ``dataset``'s files; download what is missing.

    Returns ``(folder, mirrors used)``; no mirrors used means everything came from the cache.
    Raises DownloadError when a file is missing and cannot be downloaded (offline, downloads
    disabled, or every mirror failed), with the reason.
    """
    mirrors = list(mirrors if mirrors is not None else MIRRORS[dataset])
    checksums = checksums if checksums is not None else MD5[dataset]
    folder = Path(folder) if folder is not None else cache_dir(dataset)
    missing = [name for name, md5 in checksums.items() if not verified(folder / name, md5)]
    if not missing:
        return folder, []
    if not allow_download:
        raise DownloadError("downloading is disabled (data.download=false)")
    if offline():
        raise DownloadError("CNNEXP_OFFLINE is set")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the cache folder {folder}: {e.strerror or e}") from None
    _remove_stale_parts(folder)
    recent = recent_failure(folder)
    if recent:
        raise DownloadError(recent)

    used: list[str] = []
    unreachable: set[str] = set()  # mirrors that failed to connect: not tried for the next files
    for name in missing:
        failures = []
        for base in mirrors:
            host = urllib.parse.urlsplit(base).netloc or base
            if base in unreachable:
                failures.append(f"{host}: unreachable")
                continue
            url = urllib.parse.urljoin(base, name)
            print(f"downloading {url}", file=sys.stderr)
            try:
                download_file(url, folder / name, checksums[name], timeout)
            except urllib.error.HTTPError as e:  # the server answered: try it again for the next file
                failures.append(f"{host}: {_reason(e)}")
            except (urllib.error.URLError, ValueError) as e:  # no connection (DNS, refused, bad URL)
                failures.append(f"{host}: {_reason(e)}")
                unreachable.add(base)
            except (DataError, OSError, http.client.HTTPException) as e:  # broken during the transfer
                failures.append(f"{host}: {_reason(e)}")
                if isinstance(e, TimeoutError):
                    unreachable.add(base)
            else:
                if base not in used:
                    used.append(base)
                break
        else:
            if all(b in unreachable for b in mirrors):  # no connection at all: the network is not there
                remember_failure(folder, f"{name}: " + "; ".join(failures))
            raise DownloadError(f"{name}: " + "; ".join(failures))
    (folder / FAILED_MARKER).unlink(missing_ok=True)
    return folder, used


def remember_failure(folder: Path, reason: str) -> None:
    """Record a failed download, so the next runs (and sweep jobs) do not wait on the network again."""
    try:
        (folder / FAILED_MARKER).write_text(reason[:500] + "\n")
    except OSError:
        pass


def recent_failure(folder: Path, now: float | None = None) -> str | None:
    """Why downloading is skipped, while the last failure is under RETRY_SECONDS old; else None."""
    marker = folder / FAILED_MARKER
    try:
        age = (now or time.time()) - marker.stat().st_mtime
        reason = marker.read_text().strip()
    except OSError:
        return None
    if not 0 <= age < RETRY_SECONDS:
        return None
    return (f"{reason}{REMEMBERED} {age / 60:.0f} min ago; no new attempt for {(RETRY_SECONDS - age) / 60:.0f} "
            f"min, delete {marker} to retry now)")

