"""Fixtures shared by several test modules (helpers live in ``tests/helpers/``), the check
that every test leaves no tracking follower running, and the grouping that lets pytest-xdist
(``-n 2 --dist loadgroup``) build each module-scoped fixture once."""

from __future__ import annotations

import pytest

from helpers.cli import RESUMABLE, cli, final
from helpers.experiments import last_ckpt, weights
from helpers.idx import sandbox  # noqa: F401  (a fixture: private cache, network on 127.0.0.1 only)


def pytest_collection_modifyitems(items):
    """Under ``--dist loadgroup``, the tests of a module that share one of its module- or
    session-scoped fixtures (a trained run, a sweep, a SLURM cluster, a PostgreSQL server) go
    to one worker, which builds that fixture once; every other test is distributed on its own.
    pytest's and plugins' own fixtures (``tmp_path_factory``...) do not count."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        defs = getattr(item, "_fixtureinfo", None)
        shared = [name for name, fdefs in (defs.name2fixturedefs.items() if defs else ())
                  if fdefs[-1].scope in ("module", "package", "session") and ours(fdefs[-1].func)]
        if shared:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def ours(func) -> bool:
    return getattr(func, "__module__", "").split(".")[0] in ("conftest", "helpers") or \
        getattr(func, "__module__", "").startswith("test_")


@pytest.fixture(autouse=True)
def no_followers_left(request):
    """After a test that used ``tmp_path``, wait (bounded) for the followers of the runs it started there."""
    yield
    tmp = request.node.funcargs.get("tmp_path")
    if tmp is not None:
        from cnnexp.tracking.follower import wait_idle

        assert not wait_idle(tmp, timeout=120), "tracking followers still working"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final printed metrics and weights of an uninterrupted ``RESUMABLE`` run."""
    out = tmp_path_factory.mktemp("ref") / "outputs"
    p = cli(RESUMABLE, out)
    assert p.returncode == 0, p.stderr
    return final(p.stdout), weights(last_ckpt(out))
