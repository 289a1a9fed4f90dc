"""Fixtures shared by several test modules (helpers live in ``tests/helpers/``), and the check
that every test leaves no tracking follower running."""

from __future__ import annotations

import pytest

from helpers.cli import RESUMABLE, cli, final, follower_logs
from helpers.experiments import last_ckpt, weights
from helpers.idx import sandbox  # noqa: F401  (a fixture: private cache, network on 127.0.0.1 only)


@pytest.fixture(autouse=True)
def no_followers_left(request):
    """After a test that used ``tmp_path``, wait (bounded) for the followers of the runs it started there."""
    yield
    tmp = request.node.funcargs.get("tmp_path")
    if tmp is not None:
        from cnnexp.tracking.follower import wait_idle

        busy = wait_idle(tmp, timeout=120)
        assert not busy, f"tracking followers still working: {busy}\n{follower_logs(busy)}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final printed metrics and weights of an uninterrupted ``RESUMABLE`` run."""
    out = tmp_path_factory.mktemp("ref") / "outputs"
    p = cli(RESUMABLE, out)
    assert p.returncode == 0, p.stderr
    return final(p.stdout), weights(last_ckpt(out))
