"""Every command block of README.md runs exactly as written, in a fresh folder with its own
outputs (offline). Blocks preceded by ``<!-- readme-test: skip (why) -->`` are left out (they
install packages, start servers or run the benchmarks); ``python`` blocks that start with
``# <file>.py`` are written to that file first (the plugin example's module)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import env_for, wait_logged
from helpers.tracking import all_runs, client

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?:<!-- readme-test: skip \(([^)]*)\) -->\n)?```(\w*)\n(.*?)```", re.S)


def blocks():
    return [(m.group(1), m.group(2), m.group(3)) for m in BLOCK.finditer(README.read_text())]


def commands(text: str) -> list[str]:
    """Shell commands of a block, continuation lines joined; comment-only and empty lines dropped."""
    joined = text.replace("\\\n", " ")
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_readme_blocks_parse():
    found = blocks()
    runnable = [c for skip, lang, body in found if lang == "bash" and not skip for c in commands(body)]
    assert any("plugins=[my_layers]" in c for c in runnable)
    assert any("hydra/launcher=parallel" in c for c in runnable)
    assert all(skip for skip, lang, body in found if lang == "bash" and ("pip install" in body or "serve" in body))


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
    out = tmp_path / "outputs"
    env = env_for(out)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]  # `python`, `cnnexp`: this venv
    for skip, lang, body in blocks():
        first = body.splitlines()[0] if body else ""
        if lang == "python" and re.fullmatch(r"# (\w+\.py)", first):
            (tmp_path / first[2:]).write_text(body)
    ran = []
    for skip, lang, body in blocks():
        if lang != "bash" or skip:
            continue
        for cmd in commands(body):
            if "<" in cmd.split("#")[0]:  # a placeholder such as <run_id>
                continue
            p = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=900)
            assert p.returncode == 0, f"README command failed: {cmd}\n{p.stderr[-3000:]}"
            assert "Traceback" not in p.stderr, cmd
            ran.append(cmd)
    wait_logged(out)
    assert len(ran) >= 10, ran
    # the plugin run's logged model loads in another folder, where my_layers is not importable
    plugin_run = next(r for r in all_runs(client(out)) if "plugins=[my_layers]" in r.data.tags.get("hydra.overrides", ""))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import mlflow, numpy as np; mlflow.set_tracking_uri('sqlite:///%s');"
            "m = mlflow.pyfunc.load_model('runs:/%s/model'); print(m.predict(np.zeros((2, 28, 28))).shape)"
            % (out / "mlflow.db", plugin_run.info.run_id))
    p = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("(2, 10)"), p.stderr[-3000:]


def test_readme_is_for_users_and_short():
    text = README.read_text()
    assert len(text) <= 12_000, f"README.md has {len(text):,} characters; keep it under 12,000 (details go to docs/)"
    for section in ("## Quick start", "## See your results", "## Configs", "## Sweeps", "## Tracking",
                    "## Reliability", "## Tests", "## Project tree"):
        assert section in text, section
    for doc in ("docs/architecture.md", "docs/tracking.md", "docs/performance.md", "docs/reliability.md"):
        assert doc in text and (README.parent / doc).exists(), doc
