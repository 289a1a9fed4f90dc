"""The one way tests run ``python -m cnnexp``: a subprocess whose outputs and MLflow store live in
a temp folder, with every ``MLFLOW_*`` variable of the developer's shell removed (so no test can
follow a personal ``MLFLOW_TRACKING_URI`` and pass vacuously) and no debug tracebacks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in test output
TINY = ["data=mnist_sample", "data.train_size=200", "data.test_size=100", "epochs=1", "log_every=50"]
# long enough to interrupt mid-epoch, short enough to run three times
RESUMABLE = ["data=mnist_sample", "data.train_size=3000", "data.test_size=500", "epochs=3", "log_every=500", "seed=7"]
# removed from the child's environment unless a test passes them explicitly
ISOLATED = ("CNNEXP_PARENT_RUN_ID", "CNNEXP_DEBUG", "HYDRA_FULL_ERROR")


def env_for(out: Path, **extra) -> dict:
    """The environment of a cnnexp child process writing to ``out`` (its MLflow store is
    ``out/mlflow.db``): offline, isolated from the caller's MLflow settings; ``extra`` wins."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("MLFLOW_") or k in ISOLATED) or k == "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    env.update({"CNNEXP_OFFLINE": "1", "CNNEXP_OUTPUTS": str(out)})
    env.update(extra)
    # the venv's scripts first (mlflow models serve execs `uvicorn`), as in an activated venv
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def cli(args, out: Path, timeout: float = 300, cwd: Path | None = None, wait: bool = True,
        **env) -> subprocess.CompletedProcess:
    """``python -m cnnexp *args`` with its outputs (and MLflow store) in ``out``, run from
    ``out.parent``; with ``wait``, also wait until the tracking followers under ``out`` are done."""
    cwd = cwd or out.parent
    cwd.mkdir(parents=True, exist_ok=True)
    p = subprocess.run([sys.executable, "-m", "cnnexp", *map(str, args)], capture_output=True, text=True,
                       env=env_for(out, **env), cwd=cwd, timeout=timeout)
    if wait:
        wait_logged(out)
    return p


def start(args, out: Path, stderr=subprocess.PIPE, new_session: bool = False, **env) -> subprocess.Popen:
    """``python -u -m cnnexp *args`` started in the background as :func:`cli` runs it, stdout
    piped (``stderr=subprocess.STDOUT`` merges stderr); ``new_session``: its own process group."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-u", "-m", "cnnexp", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=stderr, text=True, env=env_for(out, **env), cwd=out.parent,
                            start_new_session=new_session)


def wait_for(p: subprocess.Popen, pattern: str, timeout: float = 120) -> list[str]:
    """Read ``p``'s stdout until a line matches ``pattern``; kill ``p`` and fail if none does."""
    seen, t0 = [], time.monotonic()
    while time.monotonic() - t0 < timeout:
        line = p.stdout.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return seen
    p.kill()
    raise AssertionError(f"never saw {pattern!r}; got: {''.join(seen)[-2000:]}")


def final(out_text: str) -> tuple[str, str]:
    """The printed test loss and accuracy of a run's stdout."""
    loss = re.search(r"^Test Loss: (\S+)$", out_text, re.M).group(1)
    acc = re.search(r"^Test Accuracy: (\S+)$", out_text, re.M).group(1)
    return loss, acc


def wait_logged(out: Path, timeout: float = 120) -> None:
    """Wait until every tracking follower under ``out`` has finished."""
    from cnnexp.tracking.follower import wait_idle

    busy = wait_idle(out, timeout=timeout)
    assert not busy, f"tracking followers still working after {timeout} s: {busy}\n{follower_logs(busy)}"


def follower_logs(folders) -> str:
    """The end of each folder's follower log and state, for a failure message (a follower that
    outlived a test's wait once in CI and could not be reproduced: the next one says why)."""
    parts = []
    for f in folders:
        for name in ("follower.log", "sync.json", "follower.json"):
            path = Path(f) / name
            text = path.read_text(errors="replace")[-2000:] if path.is_file() else "(none)"
            parts.append(f"--- {path}:\n{text}")
    return "\n".join(parts)


def assert_one_line_error(p, *needles) -> str:
    """``p`` failed with exactly one ``cnnexp: error:`` line (containing ``needles``) and no traceback."""
    assert p.returncode != 0, p.stdout[-2000:]
    assert "Traceback" not in p.stderr, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("cnnexp: error:")]
    assert len(errors) == 1, p.stderr
    others = [ln for ln in p.stderr.splitlines() if ln.strip() and not ln.startswith(("cnnexp: error:", "warning:"))]
    assert not others, p.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]
