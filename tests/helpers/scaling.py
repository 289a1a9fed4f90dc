"""Fixtures for the scale-out tests: a PostgreSQL server and the team MLflow server on it,
both on 127.0.0.1, started once per test module and always stopped. Tests skip, saying why,
when PostgreSQL cannot start here. Import the fixtures into a test module to use them."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from helpers.pg_server import PostgresServer, Unavailable
from helpers.tracking import free_port, server


@pytest.fixture(scope="module")
def postgres():
    # not under pytest's tmp_path: that is private to root (0700) and PostgreSQL runs as its own user
    folder = Path(tempfile.mkdtemp(prefix="cnnexp-pg-"))
    folder.chmod(0o711)  # PostgreSQL's user may pass through, not list
    try:
        pg = PostgresServer.start(folder / "pg")
    except Unavailable as e:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server: {e}")
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def team_server(postgres, tmp_path_factory):
    """``python -m cnnexp.server`` on the PostgreSQL database ``mlflow``; yields (url, artifacts folder)."""
    folder = tmp_path_factory.mktemp("team-server")
    port = free_port()
    cmd = [sys.executable, "-m", "cnnexp.server", "--db", postgres.url("mlflow"), "--artifacts",
           str(folder / "artifacts"), "--port", str(port), "--workers", "2", "--timeout", "600"]
    url = f"http://127.0.0.1:{port}"
    env = {**postgres.env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: it only takes CPU here
    with server(cmd, url + "/health", folder / "server.log", env=env, timeout=600):
        yield url, folder / "artifacts"
    log = (folder / "server.log").read_text()
    assert f"tracking.uri={url}" in log, log[-2000:]

