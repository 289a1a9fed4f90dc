"""The files a finished run leaves in its MLflow run (no MLflow here: they are written to a
folder that the tracker uploads in one call):

    model_summary.txt
    weights/weights.npz, weights/model_spec.json     (see cnnexp.tracking.export)
    plots/confusion_matrix.png, plots/confusion_matrix.csv, plots/learning_curves.png,
    plots/misclassified.png, plots/conv_filters.png
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import plots
from .export import model_spec, save_model_files

logger = logging.getLogger("cnnexp")


def write_artifacts(result: dict[str, Any], cfg: dict, points: dict, folder: Path) -> list[str]:
    """Write every artifact into ``folder``; returns the errors of the ones that failed
    (each is also logged as a warning) so one broken plot does not lose the others."""
    model, ds, splits = result["model"], result["dataset"], result["splits"]
    names = [str(c) for c in ds.class_names]
    errors: list[str] = []

    def attempt(what: str, fn: Callable, *args) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001
            logger.warning(f"cnnexp: could not write {what}: {type(e).__name__}: {e}")
            errors.append(f"{what}: {type(e).__name__}: {e}")

    (folder / "model_summary.txt").write_text(model.summary() + "\n")
    spec = model_spec(model, names, cfg.get("plugins"))
    attempt("weights", save_model_files, model, spec, folder / "weights")
    out = folder / "plots"
    out.mkdir()
    attempt("learning curves", plots.save_learning_curves, points, len(splits.train[0]),
            out / "learning_curves.png")
    x, y = splits.test
    if len(x):
        y = np.asarray(y, np.intp)
        probs = model.predict_proba(x, batch_size=cfg.get("eval_batch_size", 500))
        cm = plots.confusion_matrix(y, probs.argmax(axis=1), len(names))
        attempt("confusion matrix", plots.save_confusion, cm, names, out)
        attempt("misclassified images", plots.save_misclassified, x, y, probs, names, out / "misclassified.png")
    types = [str(ls.get("type", "")) for ls in model.spec.get("layers", [])]
    conv = next((l for l, t in zip(model.layers, types) if t.startswith("conv") and "W" in l.params), None)
    if conv is not None:
        attempt("conv filters", plots.save_filters, conv.params["W"], out / "conv_filters.png",
                f"{conv.name}: {conv.params['W'].shape[-1]} filters {conv.params['W'].shape[0]}x"
                f"{conv.params['W'].shape[1]}")
    return errors
