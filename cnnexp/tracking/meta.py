"""What a run is called and described by: flattened params, run name, git commit.

Plain Python (no MLflow), so it is cheap to import and easy to test.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

MAX_KEY = 250  # MLflow's limit on param / metric / tag keys
MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value (500 before MLflow 2.6)
MAX_RUN_NAME = 250
MAX_TAG_VALUE = 8000


def scalar(v: Any) -> str:
    """A config value as text, spelled as in a Hydra override (null, true, [28, 28, 1])."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {scalar(x)}" for k, x in v.items()) + "}"
    return str(v)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(e: BaseException) -> str:
    """``TypeName: first line of the message``, for one-line error reports."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def flatten(cfg: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys for every leaf: ``model.layers.0.filters``. Lists of mappings are indexed
    (each layer's hyperparameters become their own params); lists of scalars stay one value
    (``model.input_shape = [28, 28, 1]``); empty containers are kept as ``[]`` / ``{}``."""
    out: dict[str, str] = {}
    if isinstance(cfg, dict) and cfg:
        for k, v in cfg.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(cfg, (list, tuple)) and any(isinstance(x, (dict, list, tuple)) for x in cfg):
        for i, v in enumerate(cfg):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[clip(prefix[:-1], MAX_KEY)] = clip(scalar(cfg), MAX_PARAM_VALUE)
    return out


def short_value(text: str) -> str:
    """A float as written, or to 4 significant digits when it is longer (``0.005899745...`` ->
    ``0.0059``); anything else unchanged."""
    try:
        v = float(text)
    except ValueError:
        return text
    if text.lstrip("+-").isdigit() or v != v or v in (float("inf"), float("-inf")):
        return text
    short = f"{v:.4g}"
    return short if len(short) < len(text) else text


def run_name(overrides: list[str] | None) -> str:
    """``lr=0.01,epochs=5`` from the Hydra overrides; ``default`` when there are none."""
    if not overrides:
        return "default"
    parts = [f"{k}={short_value(v)}" if sep else k for k, sep, v in (o.partition("=") for o in overrides)]
    return clip(",".join(parts), MAX_RUN_NAME)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def git_commit(root: Path | None) -> str | None:
    """The checkout's HEAD commit, read from ``.git`` (no subprocess in the common case)."""
    if root is None:
        return None
    git = root / ".git"
    if git.is_file():  # a worktree or submodule: "gitdir: <path>"
        text = _read(git) or ""
        git = (root / text.split(":", 1)[1].strip()) if text.startswith("gitdir:") else git
    head = _read(git / "HEAD")
    if head is None:
        return None
    if not head.startswith("ref:"):
        return head or None
    ref = head[4:].strip()
    commit = _read(git / ref)
    if commit is None and (git / "commondir").is_file():  # worktree: refs live in the main .git
        commit = _read(git / (_read(git / "commondir") or ".") / ref)
    if commit is None:
        packed = _read(git / "packed-refs") or ""
        commit = next((ln.split()[0] for ln in packed.splitlines() if ln.endswith(" " + ref)), None)
    return commit or _git_rev_parse(root)


def _git_rev_parse(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=2, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None
