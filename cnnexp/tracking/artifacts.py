"""The files a finished run leaves in its MLflow run, made in two steps so that the training
process only does cheap numpy work and the pictures can be drawn by the background logger:

1. ``prepare_results`` (numpy only, in the training process) writes into ``folder``:

       artifacts/model_summary.txt
       artifacts/weights/weights.npz, artifacts/weights/model_spec.json   (see cnnexp.tracking.export)
       plot_data.npz, plot_data.json     what the pictures need (test predictions, a few images)

2. ``render_plots`` (matplotlib) adds ``artifacts/plots/``: confusion_matrix.png and .csv,
   learning_curves.png, misclassified.png, conv_filters.png.

``folder/artifacts`` is then uploaded in one call.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .export import model_spec, save_model_files

logger = logging.getLogger("cnnexp")
MISCLASSIFIED_SHOWN = 36


def _attempt(errors: list[str], what: str, fn: Callable, *args) -> Any:
    """Run one step; a failure is logged and collected, so one broken file does not lose the others."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        logger.warning(f"cnnexp: could not write {what}: {type(e).__name__}: {e}")
        errors.append(f"{what}: {type(e).__name__}: {e}")


def prepare_results(result: dict[str, Any], cfg: dict, folder: Path) -> list[str]:
    """Step 1 (see the module docstring). ``result`` is what ``cnnexp.app.run`` returns.
    Returns the errors of the steps that failed."""
    model, ds, splits = result["model"], result["dataset"], result["splits"]
    names = [str(c) for c in ds.class_names]
    errors: list[str] = []
    art = folder / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    (art / "model_summary.txt").write_text(model.summary() + "\n")
    _attempt(errors, "weights", save_model_files, model, model_spec(model, names, cfg.get("plugins")),
             art / "weights")
    data: dict[str, np.ndarray] = {}
    x, y = splits.test
    if len(x):
        y = np.asarray(y, np.intp)
        probs = model.predict_proba(x, batch_size=cfg.get("eval_batch_size", 500))
        wrong = np.flatnonzero(probs.argmax(axis=1) != y)
        shown = wrong[:MISCLASSIFIED_SHOWN]
        data.update(y_true=y, y_pred=probs.argmax(axis=1), wrong_images=np.asarray(x)[shown],
                    wrong_true=y[shown], wrong_probs=probs[shown])
    example = x[:2] if len(x) else splits.train[0][:2]
    data["example"] = np.asarray(example)
    meta = {"class_names": names, "n_train": len(splits.train[0]), "n_wrong": int(len(wrong)) if len(x) else 0}
    types = [str(ls.get("type", "")) for ls in model.spec.get("layers", [])]
    conv = next((l for l, t in zip(model.layers, types) if t.startswith("conv") and "W" in l.params), None)
    if conv is not None:
        w = conv.params["W"]
        data["conv_filters"] = w
        meta["conv_title"] = f"{conv.name}: {w.shape[-1]} filters {w.shape[0]}x{w.shape[1]}"
    meta["dtype"], meta["num_classes"] = str(model.dtype), int(model.output_shape[0])
    np.savez(folder / "plot_data.npz", **data)
    (folder / "plot_data.json").write_text(json.dumps(meta))
    return errors


def render_plots(folder: Path, points: dict[str, list[tuple[int, float]]]) -> list[str]:
    """Step 2: draw the pictures from ``prepare_results``' files and the logged metric
    ``points`` into ``folder/artifacts/plots``. Returns the errors of the ones that failed."""
    from . import plots

    meta = json.loads((folder / "plot_data.json").read_text())
    names = meta["class_names"]
    errors: list[str] = []
    out = folder / "artifacts" / "plots"
    out.mkdir(parents=True, exist_ok=True)
    with np.load(folder / "plot_data.npz", allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    _attempt(errors, "learning curves", plots.save_learning_curves, points, meta["n_train"],
             out / "learning_curves.png")
    if "y_true" in d:
        cm = plots.confusion_matrix(d["y_true"], d["y_pred"], len(names))
        _attempt(errors, "confusion matrix", plots.save_confusion, cm, names, out)
        _attempt(errors, "misclassified images", plots.save_misclassified, d["wrong_images"], d["wrong_true"],
                 d["wrong_probs"], names, out / "misclassified.png", meta["n_wrong"], len(d["y_true"]))
    if "conv_filters" in d:
        _attempt(errors, "conv filters", plots.save_filters, d["conv_filters"], out / "conv_filters.png",
                 meta["conv_title"])
    return errors


def example_input(folder: Path) -> np.ndarray:
    """The two images ``prepare_results`` kept as the pyfunc model's input example."""
    with np.load(folder / "plot_data.npz", allow_pickle=False) as z:
        return z["example"]


def model_info(folder: Path) -> dict:
    return json.loads((folder / "plot_data.json").read_text())
