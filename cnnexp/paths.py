"""Where cnnexp finds its configs and writes its outputs."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def checkout_root() -> Path | None:
    """The repository root when running from a checkout or an editable install, else None."""
    root = PACKAGE_DIR.parent
    if (root / "conf" / "config.yaml").is_file() and (root / "pyproject.toml").is_file():
        return root
    return None


def conf_dir() -> Path:
    """``conf/`` at the top of a checkout; inside the package (``cnnexp/conf``) for a wheel."""
    root = checkout_root()
    if root is not None:
        return root / "conf"
    packaged = PACKAGE_DIR / "conf"
    if (packaged / "config.yaml").is_file():
        return packaged
    raise FileNotFoundError(f"cnnexp configs not found: looked in {PACKAGE_DIR.parent / 'conf'} and {packaged}")


def outputs_dir() -> Path:
    """``$CNNEXP_OUTPUTS``, else ``outputs/`` of the checkout, else ``./outputs``; always absolute."""
    env = os.environ.get("CNNEXP_OUTPUTS")
    if env:
        return Path(env).expanduser().resolve()
    root = checkout_root()
    return (root / "outputs") if root is not None else (Path.cwd() / "outputs").resolve()


def cache_root() -> Path:
    """The per-user cache (downloaded data sets, MLflow's empty schema): ``$CNNEXP_CACHE``, else
    ``$XDG_CACHE_HOME/cnnexp``, else ``~/.cache/cnnexp``."""
    if os.environ.get("CNNEXP_CACHE"):
        return Path(os.environ["CNNEXP_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "cnnexp"
    return Path.home() / ".cache" / "cnnexp"
