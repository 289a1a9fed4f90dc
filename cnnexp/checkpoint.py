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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # a SIGKILL leftover: the next start removes it
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write checkpoint {path}: {e.strerror or e}") from None
    except BaseException:  # Ctrl-C / SIGTERM during the write: no temp file left behind
        tmp.unlink(missing_ok=True)
        raise
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
    meta = check_meta(path, arrays.pop("meta"))
    weights = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
    optim = {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}
    meta["path"] = str(path)
    return Checkpoint(weights, optim, meta)


STATE_INTS = ("epoch", "step", "images_seen", "pos")


def check_meta(path: Path, raw: np.ndarray) -> dict:
    """The decoded ``meta`` entry; DataError (one line) naming the first malformed field."""
    def bad(what: str) -> DataError:
        return DataError(f"checkpoint {path} is damaged: {what}; resume from another checkpoint")

    if raw.shape != () or raw.dtype.kind != "U":
        raise bad(f"'meta' is a {raw.dtype} array of shape {raw.shape}, not a JSON string")
    try:
        meta = json.loads(str(raw))
    except ValueError as e:
        raise bad(f"'meta' is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise bad(f"'meta' is a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise DataError(f"checkpoint {path} has format {meta.get('format')!r}; this cnnexp reads format {FORMAT}")
    st = meta.get("state")
    if not isinstance(st, dict):
        raise bad(f"meta.state is {st!r}, not an object")
    for k in STATE_INTS:
        v = st.get(k, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise bad(f"meta.state.{k}={v!r} is not an integer >= 0")
    if not isinstance(st.get("history", []), list) or not all(isinstance(h, dict) for h in st.get("history", [])):
        raise bad("meta.state.history is not a list of objects")
    if not isinstance(st.get("partial", {}), dict) or not isinstance(st.get("partial", {}).get("rng", {}), dict):
        raise bad("meta.state.partial is not an object")
    if not isinstance(meta.get("optimizer"), str):
        raise bad(f"meta.optimizer={meta.get('optimizer')!r} is not a name")
    return meta


def check_fits(ckpt: Checkpoint | None, exp, splits, cfg: dict) -> None:
    """Before any run starts: the checkpoint fits the model, optimizer, data and epochs."""
    if ckpt is None:
        return
    where = ckpt.meta["path"]
    exp.model.load_state_dict(ckpt.weights)  # names the layer on a mismatch; restore() loads again
    kind = type(exp.optimizer).__name__.lower()
    if ckpt.meta["optimizer"] != kind:
        raise ConfigError(f"checkpoint {where} was trained with optimizer {ckpt.meta['optimizer']!r}, "
                          f"the config asks for {kind!r}; use the same optimizer to resume")
    params = exp.model.params
    for k, v in ckpt.optim.items():
        name = k[len("state."):]
        if k != "t" and not (k.startswith("state.") and name in params and v.shape == params[name].shape):
            raise DataError(f"checkpoint {where}: optimizer state {k!r} {v.shape} matches no parameter of the model")
    if "t" not in ckpt.optim or ckpt.optim["t"].shape != () or ckpt.optim["t"].dtype.kind not in "iu":
        raise DataError(f"checkpoint {where}: optimizer step count 't' is missing or not an integer")
    st, n = ckpt.meta["state"], len(splits.train[0])
    if st.get("epoch", 0) >= cfg["epochs"]:
        raise ConfigError(f"the checkpoint {where} has already finished epoch {st['epoch']}; nothing to resume "
                          f"with epochs={cfg['epochs']} (raise epochs to train further)")
    if st.get("pos", 0) >= n:
        raise ConfigError(f"checkpoint {where} stopped at image {st['pos']} of epoch {st.get('epoch', 0) + 1}, but "
                          f"the training set has {n} images; resume with the data it was trained on")


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
