"""The run's pictures: confusion matrix, learning curves, misclassified test images, the first
conv layer's filters. Matplotlib is imported lazily and used without pyplot (Agg canvas, no
global state), so plotting works in any process and thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(w: float, h: float, **margins):
    """A pyplot-free figure with fixed margins (automatic layout engines cost ~0.1 s a figure)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    fig.subplots_adjust(**{"left": 0.02, "right": 0.98, "bottom": 0.02, "top": 0.9, **margins})
    return fig


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """``cm[i, j]`` = number of test images of class i predicted as j."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, np.intp), np.asarray(y_pred, np.intp)), 1)
    return cm


def save_confusion(cm: np.ndarray, names: list[str], folder: Path) -> None:
    """``confusion_matrix.csv`` (rows: true class, columns: predicted) and ``.png``."""
    rows = ["true\\pred," + ",".join(names)]
    rows += [names[i] + "," + ",".join(str(v) for v in cm[i]) for i in range(len(names))]
    (folder / "confusion_matrix.csv").write_text("\n".join(rows) + "\n")
    n = len(names)
    fig = _figure(1.0 + 0.55 * n, 0.8 + 0.5 * n, left=0.16, bottom=0.14, top=0.92)
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(n), names, rotation=45 if max(map(len, names)) > 2 else 0, ha="right")
    ax.set_yticks(range(n), names)
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix (test acc {acc:.1%})")
    fig.savefig(folder / "confusion_matrix.png")


def save_learning_curves(points: dict[str, list[tuple[int, float]]], n_train: int, path: Path) -> None:
    """Loss and accuracy against epochs: ``train/loss|acc`` (step = images seen) and the
    per-epoch ``train/epoch_*``, ``val/*``, ``test/*`` (step = epoch)."""
    fig = _figure(10, 4, left=0.07, bottom=0.13, top=0.9, wspace=0.22)
    for ax, what in zip(fig.subplots(1, 2), ("loss", "acc")):
        for key, style in ((f"train/{what}", dict(alpha=0.4, lw=1)), (f"train/epoch_{what}", dict(marker="o")),
                           (f"val/{what}", dict(marker="s")), (f"test/{what}", dict(marker="^"))):
            pts = points.get(key) or []
            if not pts:
                continue
            x = np.array([s for s, _ in pts], dtype=float)
            if key in ("train/loss", "train/acc"):
                x = x / max(n_train, 1)
            ax.plot(x, [v for _, v in pts], label=key, **style)
        ax.set(xlabel="epoch", ylabel=what, title="Loss" if what == "loss" else "Accuracy")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.savefig(path)


def mosaic(tiles: np.ndarray, cols: int, pad: int = 2, fill: float = np.nan) -> np.ndarray:
    """``(n, h, w)`` tiles -> one ``(rows*(h+pad), cols*(w+pad))`` image (one imshow is much
    faster than one axes per tile)."""
    n, h, w = tiles.shape
    rows = max(1, -(-n // cols))
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), fill, dtype=float)
    for k in range(n):
        r, c = divmod(k, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = tiles[k]
    return out


def save_misclassified(images: np.ndarray, y_true: np.ndarray, probs: np.ndarray, names: list[str],
                       path: Path, n_wrong: int, n_total: int) -> None:
    """A grid of misclassified test images, each labelled "true>predicted p": ``images``
    ``(k, h, w[, 1])`` are the ones shown, ``y_true`` ``(k,)`` and ``probs`` ``(k, classes)``
    theirs; the title says ``n_wrong`` of ``n_total`` were misclassified."""
    pred = probs.argmax(axis=1)
    shown = len(images)
    cols = 6
    tiles = np.asarray(images).astype(float).reshape(shown, *np.shape(images)[1:3])
    h, w = tiles.shape[1:] if shown else (28, 28)
    pad = max(2, h // 2)  # room for the label above each image
    grid = mosaic(tiles, cols, pad=pad) if shown else np.full((h, w), np.nan)
    fig = _figure(1.5 * cols, 0.6 + 1.5 * max(1, -(-shown // cols)))
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray")
    for k in range(shown):
        r, c = divmod(k, cols)
        ax.text(pad + c * (w + pad), pad + r * (h + pad) - 1, f"{names[y_true[k]]}>{names[pred[k]]} "
                f"{probs[k, pred[k]]:.2f}", fontsize=7, color="darkred", va="bottom")
    ax.axis("off")
    more = f" (first {shown}; label: true>predicted probability)" if n_wrong > shown else \
        " (label: true>predicted probability)"
    ax.set_title(f"{n_wrong} of {n_total} test images misclassified" + more, fontsize=9)
    fig.savefig(path)


def save_filters(w: np.ndarray, path: Path, title: str, limit: int = 64) -> None:
    """Conv kernels ``(kh, kw, in_channels, filters)`` as a grid (averaged over input channels;
    red positive, blue negative)."""
    k = np.asarray(w, dtype=float).mean(axis=2)
    n = min(k.shape[-1], limit)
    cols = min(n, 8)
    lim = float(np.abs(k).max()) or 1.0
    grid = mosaic(np.moveaxis(k[..., :n], -1, 0), cols, pad=1)
    fig = _figure(0.9 * cols + 0.5, 0.9 * -(-n // cols) + 0.6)
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.savefig(path)
