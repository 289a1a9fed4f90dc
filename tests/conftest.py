"""Every test leaves no tracking follower running: after a test that used ``tmp_path``, wait
(bounded) for the followers of the runs it started there."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def no_followers_left(request):
    yield
    tmp = request.node.funcargs.get("tmp_path")
    if tmp is not None:
        from cnnexp.tracking.follower import wait_idle

        assert not wait_idle(tmp, timeout=120), "tracking followers still working"
