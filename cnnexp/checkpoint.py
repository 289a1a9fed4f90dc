"""Checkpoints: weights, optimizer state and the training position in one plain ``.npz``.

Arrays only, loadable with ``allow_pickle=False``: ``model/<layer>.<param>``,
``optim/<key>`` and ``meta`` (a JSON string: epoch, step, images seen, history, position
inside an interrupted epoch, generator states). Written atomically (temp file + rename), so
a crash while saving never leaves a half-written checkpoint that a resume would trust.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError

FORMAT = 1
LAST = "last.npz"


@dataclass
class Checkpoint:
    weights: dict[str, np.ndarray]
    optim: dict[str, np.ndarray]
    meta: dict


def save(path: str | Path, model, optimizer, state, config: dict | None = None) -> Path:
    """Write a checkpoint of ``model``, ``optimizer`` and the TrainState ``state`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"model/{k}": v for k, v in model.params.items()}
    arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    st = {f.name: getattr(state, f.name) for f in fields(state)}
    meta = {"format": FORMAT, "optimizer": type(optimizer).__name__.lower(), "state": st,
            "config": config or {}}
    arrays["meta"] = np.array(json.dumps(meta, default=_jsonable))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write checkpoint {path}: {e.strerror or e}") from None
    return path


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint; a missing, truncated or foreign file is a one-line DataError."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST if (path / LAST).is_file() else path / "checkpoints" / LAST
    if not path.is_file():
        raise DataError(f"checkpoint {str(path)!r} does not exist; pass resume=<checkpoint .npz, run dir or MLflow run id>")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"checkpoint {path} is unreadable or truncated ({e})") from None
    if "meta" not in arrays:
        raise DataError(f"{path} is not a cnnexp checkpoint (no 'meta' entry)")
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("format") != FORMAT:
        raise DataError(f"checkpoint {path} has format {meta.get('format')!r}; this cnnexp reads format {FORMAT}")
    weights = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
    optim = {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}
    meta["path"] = str(path)
    return Checkpoint(weights, optim, meta)


def restore(ckpt: Checkpoint, model, optimizer, state_cls):
    """Load weights and optimizer state into ``model``/``optimizer``; return the TrainState."""
    model.load_state_dict(ckpt.weights)
    kind = type(optimizer).__name__.lower()
    if ckpt.meta.get("optimizer") != kind:
        raise ConfigError(f"checkpoint {ckpt.meta['path']} was trained with optimizer "
                          f"{ckpt.meta.get('optimizer')!r}, the config asks for {kind!r}; use the same optimizer to resume")
    optimizer.load_state_dict(ckpt.optim)
    names = {f.name for f in fields(state_cls)}
    return state_cls(**{k: v for k, v in ckpt.meta["state"].items() if k in names})
