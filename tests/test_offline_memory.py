"""A download that found no network is remembered in the cache for an hour: the next runs
(and sweep jobs) do not try again, and the fallback warning is printed once per process."""

from __future__ import annotations

import os
import time

import pytest

from cnnexp.data import datasets, download, load_dataset
from helpers.idx import needs_sample


def test_failed_download_is_remembered_for_an_hour(sandbox, capsys):
    with pytest.raises(download.DownloadError, match="127.0.0.1"):
        download.fetch("mnist")
    marker = download.cache_dir("mnist") / download.FAILED_MARKER
    assert marker.is_file() and "train-images-idx3-ubyte.gz: 127.0.0.1" in marker.read_text()
    assert "downloading http://127.0.0.1" in capsys.readouterr().err
    with pytest.raises(download.DownloadError, match=r"\(a download failed 0 min ago; no new attempt for 60 min"):
        download.fetch("mnist")
    assert "downloading" not in capsys.readouterr().err  # no attempt, nothing printed
    old = time.time() - download.RETRY_SECONDS - 5
    os.utime(marker, (old, old))  # an hour later: tried again
    with pytest.raises(download.DownloadError):
        download.fetch("mnist")
    assert "downloading http://127.0.0.1" in capsys.readouterr().err


@needs_sample
def test_fallback_warning_once_per_process_with_the_offline_hint(sandbox, capsys, monkeypatch):
    monkeypatch.setattr(datasets, "_WARNED", set())  # as in a fresh process
    load_dataset("mnist")  # fails to connect: the warning, with the CNNEXP_OFFLINE hint
    err = capsys.readouterr().err
    assert err.count("warning: MNIST could not be downloaded") == 1 and "set CNNEXP_OFFLINE=1" in err
    for _ in range(2):  # later jobs of a sweep in this process: not a line
        assert load_dataset("mnist").source == "bundled_sample"
    assert capsys.readouterr().err == ""
