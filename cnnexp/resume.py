"""``resume=<run id | id prefix | checkpoint | run folder>``: continue a run with its own config.

The checkpoint holds the config it was trained with. ``apply`` starts from that config and
puts on top only what the command line says: every override (``epochs=20``, ``model=lenet5``
replaces the whole ``model`` node, ``experiment=...`` the keys the experiment sets) and lists
each difference ("resuming with epochs=20 instead of 3"). ``epochs=`` beyond the finished
epochs extends a finished run. Knows Hydra only through the plain override strings and the
default config the entry point hands it.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError

GROUPS = ("model", "data", "optimizer", "lr_scheduler", "callbacks")  # a choice replaces the node
MISSING = object()


def locate(target: str, uri: str, workdir: str | Path):
    """The Checkpoint for a checkpoint file, a run folder, or a run id / unique id prefix."""
    from . import checkpoint
    from .tracking import store

    if os.path.exists(target) or os.sep in target or target.endswith(".npz"):
        return checkpoint.load(target)
    db = store.sqlite_path(uri)
    run_id = target
    if db is not None:
        from . import runstore

        conn = runstore.connect(db)
        run_id = runstore.resolve_id(conn, target)
        local = runstore.local_artifacts(conn, run_id)
        if local is not None and (local / "checkpoints" / checkpoint.LAST).is_file():
            return checkpoint.load(local / "checkpoints" / checkpoint.LAST)
    os.makedirs(workdir, exist_ok=True)
    return checkpoint.load(store.download_checkpoint(run_id, uri, workdir))


def _key(override: str) -> str | None:
    """The config key an override sets (``+a.b=1`` -> ``a.b``); None for Hydra's own and deletions."""
    if "=" not in override or override.startswith("~"):
        return None
    key = override.split("=", 1)[0].lstrip("+")
    return None if key.startswith("hydra") or "/" in key or key == "resume" else key


def _get(d: Any, path: list[str]) -> Any:
    for p in path:
        if isinstance(d, dict) and p in d:
            d = d[p]
        elif isinstance(d, list) and p.isdigit() and int(p) < len(d):
            d = d[int(p)]
        else:
            return MISSING
    return d


def _set(d: dict, path: list[str], value: Any) -> None:
    for p in path[:-1]:
        d = d[int(p)] if isinstance(d, list) else d.setdefault(p, {})
    if isinstance(d, list):
        d[int(path[-1])] = value
    else:
        d[path[-1]] = value


def _leaves(d: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths of a nested dict; lists are leaves (a layer stack is compared whole)."""
    if isinstance(d, dict) and d:
        out = {}
        for k, v in d.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def _show(v: Any) -> str:
    s = str(v) if not isinstance(v, str) else v
    return s if len(s) <= 60 else s[:57] + "..."


def merge(saved: dict, current: dict, overrides: list[str], defaults: dict | None = None) -> dict:
    """``saved`` with what ``overrides`` set in ``current`` on top. ``defaults`` (the config
    without overrides) is needed only for ``experiment=``: its keys are those it changes."""
    cfg = copy.deepcopy(saved)
    for k, v in current.items():  # keys newer than the checkpoint
        cfg.setdefault(k, copy.deepcopy(v))
    keys = [k for k in (_key(o) for o in overrides) if k]
    if "experiment" in keys and defaults is not None:
        base, now = _leaves(defaults), _leaves(current)
        diff = [k for k, v in now.items() if base.get(k, MISSING) != v]
        keys += [k.split(".")[0] if k.split(".")[0] in GROUPS else k for k in diff]  # a group: its whole node
    for key in dict.fromkeys(k for k in keys if k != "experiment"):
        path = key.split(".")
        value = _get(current, path)
        if value is not MISSING:
            _set(cfg, path, copy.deepcopy(value))
    return cfg


def changes(saved: dict, cfg: dict) -> list[str]:
    old, new = _leaves(saved), _leaves(cfg)
    return [f"{k}={_show(v)} instead of {_show(old[k])}" for k, v in new.items()
            if k in old and old[k] != v and k != "resume"]


def apply(cfg: dict, overrides: list[str], log: Callable[[str], None],
          defaults: Callable[[], dict] | None = None, workdir: str | Path = "resume"):
    """``(config, checkpoint)`` for ``cfg["resume"]`` (``(cfg, None)`` without resume)."""
    target = cfg.get("resume")
    if not target:
        return cfg, None
    # the text as typed: Hydra reads an id prefix such as 86e5951 as a float (inf)
    typed = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("resume=")]
    target = typed[-1].strip("'\"") if typed else str(target)
    from .tracking import store

    ckpt = locate(str(target), store.resolve_uri(cfg["tracking"].get("uri")), workdir)
    saved = ckpt.meta.get("config") or {}
    if not saved:
        log(f"Resuming from {ckpt.meta['path']}: it holds no config, using the command line's")
        return cfg, ckpt
    if not isinstance(saved, dict) or "model" not in saved:
        raise ConfigError(f"checkpoint {ckpt.meta['path']} holds no usable config; resume with the full command line")
    need_defaults = any(_key(o) == "experiment" for o in overrides)
    merged = merge(saved, cfg, overrides, defaults() if need_defaults and defaults else None)
    merged["resume"] = target
    diff = changes(saved, merged)
    log(f"Resuming {target} with its own config" + (": " + ", ".join(diff) if diff else " (no overrides)"))
    return merged, ckpt
