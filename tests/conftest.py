"""Every test leaves no background MLflow logger running: after a test that used ``tmp_path``,
wait (bounded) for the loggers of the runs it started there."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def no_background_loggers_left(request):
    yield
    tmp = request.node.funcargs.get("tmp_path")
    if tmp is not None:
        from cnnexp.tracking.journal import wait_for_agents

        assert not wait_for_agents(tmp, timeout=120), "background MLflow loggers still working"
