"""``cnnexp predict <run id | id prefix | checkpoint> <images ...>``: labels and probabilities.

Images: IDX image files (``.gz`` or raw), ``.npy`` arrays (``(H, W)`` or ``(N, H, W)``, 0-255)
and PNG/JPEG files (read with matplotlib; colour is averaged to grey, ``--invert`` for dark
digits on a light background, as MNIST digits are light on dark). The model is the run's
logged ``weights/`` (its class names too), or a checkpoint's weights and config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .errors import CnnexpError, DataError

IDX_SUFFIXES = (".gz", "-ubyte", ".idx", ".idx3")


def read_images(path: str, invert: bool = False) -> np.ndarray:
    """``(N, H, W)`` uint8 from one file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image file {path!r} does not exist")
    name = p.name.lower()
    if name.endswith(".npy"):
        try:
            x = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise DataError(f"{path}: not a plain .npy array ({e})") from None
    elif name.endswith((".png", ".jpg", ".jpeg")):
        import matplotlib.image as mpimg

        x = np.asarray(mpimg.imread(p), dtype=np.float64)
        if x.ndim == 3:
            x = x[..., :3].mean(axis=-1)
        if x.max() <= 1.0:  # PNG comes as floats in [0, 1]
            x = x * 255.0
    elif name.endswith(IDX_SUFFIXES) or "idx3" in name:
        from .data.idx import read_idx

        x = read_idx(p, "images")
    else:
        raise DataError(f"{path}: unknown image format; use IDX image files, .npy arrays or PNG/JPEG files")
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise DataError(f"{path}: expected one image (H, W) or a stack (N, H, W), got shape {x.shape}")
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return 255 - x if invert else x


def load_model(target: str, uri: str | None):
    """(model, class names) for a run id / unique prefix, a checkpoint file or a run folder."""
    import os
    import tempfile

    from . import resume
    from .tracking import store

    uri = store.resolve_uri(uri)
    db = store.sqlite_path(uri)
    if not os.path.exists(target) and db is not None:
        from . import runstore
        from .tracking.export import load_model_files

        conn = runstore.connect(db)
        local = runstore.local_artifacts(conn, runstore.resolve_id(conn, target))
        w = local / "weights" if local is not None else None
        if w is not None and (w / "weights.npz").is_file() and (w / "model_spec.json").is_file():
            names = json.loads((w / "model_spec.json").read_text()).get("class_names")
            return load_model_files(w / "weights.npz", w / "model_spec.json"), names
    ckpt = resume.locate(target, uri, tempfile.mkdtemp(prefix="cnnexp-predict-"))
    cfg = ckpt.meta.get("config") or {}
    if "model" not in cfg:
        raise DataError(f"checkpoint {ckpt.meta['path']} holds no model config to rebuild the model from")
    from .app import import_plugins
    from .model import build_model

    import_plugins(cfg.get("plugins", []))
    d = cfg["data"]
    model = build_model(cfg["model"], seed=0, dtype=cfg["model"]["dtype"], scale=d["scale"], shift=d["shift"])
    model.load_state_dict(ckpt.weights)
    return model, None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cnnexp predict", description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("run", help="run id or unique prefix (see `cnnexp runs`), checkpoint .npz or run folder")
    p.add_argument("images", nargs="+", help="IDX, .npy or PNG/JPEG files")
    p.add_argument("--top", type=int, default=3, help="probabilities shown per image (default 3)")
    p.add_argument("--invert", action="store_true", help="invert grey levels (dark digits on light paper)")
    p.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db)")
    args = p.parse_args(argv)
    try:
        model, names = load_model(args.run, args.uri)
        print("file\tindex\tlabel\tprobability\ttop")
        for path in args.images:
            x = read_images(path, args.invert)
            try:
                probs = np.concatenate([model.forward(model.preprocess(x[i:i + 500]))
                                        for i in range(0, len(x), 500)])
            except ValueError as e:
                raise DataError(f"{path}: {e}") from None
            for i, pr in enumerate(probs):
                order = np.argsort(-pr)[:max(args.top, 1)]
                label = lambda k: names[k] if names else str(k)  # noqa: E731
                top = ", ".join(f"{label(k)} {pr[k]:.3f}" for k in order)
                print(f"{path}\t{i}\t{label(order[0])}\t{pr[order[0]]:.4f}\t{top}")
    except CnnexpError as e:
        print(f"cnnexp: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
