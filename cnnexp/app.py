"""One experiment, from a resolved config dict to a trained, evaluated, logged model.

Knows the registries and the Tracker interface, not Hydra and not MLflow: the entry point
(``cnnexp/cli.py``) composes the config and picks the tracker.
"""

from __future__ import annotations

import importlib
import json
import logging
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import checkpoint
from .checkpoint import Checkpoint
from .config import validate
from .errors import ConfigError
from .model import Model, build_model
from .optimizers import Optimizer, build_optimizer
from .tracking.base import NullTracker, Tracker
from .callbacks.extras import build_extras, check_resumable, save_best
from .progress import Progress
from .train import StopRequested, TrainState, clear_stop, fit, request_stop

logger = logging.getLogger("cnnexp")


@dataclass
class Experiment:
    cfg: dict
    model: Model
    optimizer: Optimizer
    schedule: Any = None  # cnnexp.schedules.Schedule (lr_scheduler)
    callbacks: dict = field(default_factory=dict)  # name -> cnnexp.callbacks.Callback


def import_plugins(modules: list[str]) -> None:
    """Import user modules named in ``plugins`` so their registrations take effect."""
    for name in modules or []:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"plugins: cannot import module {name!r} ({e}); is it on PYTHONPATH?") from None


_kept: dict[str, Experiment] = {}  # the experiment the entry point's check built, for its job


def prepare(cfg: dict, keep: bool = False) -> Experiment:
    """Validate the config and build model and optimizer: every config error surfaces here,
    before any data is read or any run is logged. ``keep``: hold the result for the next call
    with the same config, which takes it (the entry point's check builds the job's experiment
    once; the job uses it). Any other call drops what was held."""
    key = json.dumps(cfg, sort_keys=True, default=str)
    held = _kept.pop(key, None)
    _kept.clear()
    if held is not None:
        return held
    exp = _prepare(cfg)
    if keep:
        _kept[key] = exp
    return exp


def _prepare(cfg: dict) -> Experiment:
    validate(cfg)
    import_plugins(cfg.get("plugins", []))
    d = cfg["data"]
    model = build_model(cfg["model"], seed=cfg["seed"], dtype=cfg["model"]["dtype"], scale=d["scale"],
                        shift=d["shift"], engine=cfg.get("engine"), threads=cfg.get("threads"))
    if model.loss_layer is None:
        raise ConfigError(f"model.layers: the last layer must be 'softmax' (it carries the loss), "
                          f"got {model.layers[-1].name!r}")
    optimizer = build_optimizer(cfg["optimizer"], cfg["lr"])
    from .registry import DATASETS

    DATASETS.get(d["name"])  # unknown data set: fail now, with the known names
    return Experiment(cfg, model, optimizer, *build_extras(cfg))


def load_data(cfg: dict):
    """Load the configured data set and cut the subsets; returns (dataset, splits)."""
    from .data import load_dataset, make_splits

    d = cfg["data"]
    ds = load_dataset(d["name"], dir=d["dir"], download=d["download"])
    splits = make_splits(ds, d["train_size"], d["val_size"], d["test_size"])
    return ds, splits


def check_fit(exp: Experiment, ds, splits) -> None:
    cfg, model = exp.cfg, exp.model
    n_train = len(splits.train[0])
    if cfg["batch_size"] > n_train:
        raise ConfigError(f"batch_size={cfg['batch_size']} is larger than the training set "
                          f"({n_train} images); use batch_size <= {n_train}")
    if model.output_shape != (ds.num_classes,):
        raise ConfigError(f"the model outputs {model.output_shape} but {ds.name} has {ds.num_classes} classes; "
                          f"set the last dense layer's units to {ds.num_classes}")
    img_shape = tuple(ds.train_images.shape[1:])
    if img_shape + (1,) != model.input_shape and img_shape != model.input_shape:
        raise ConfigError(f"model.input_shape={list(model.input_shape)} does not match {ds.name} images "
                          f"{img_shape}; use model.input_shape=[{img_shape[0]},{img_shape[1]},1]")


_signals = {"installed": 0, "training": False, "hits": 0}


@contextmanager
def stop_on_signals():
    """The one place cnnexp handles SIGINT and SIGTERM. While ``fit`` runs, the first signal
    asks it to stop at the next step (``request_stop``: checkpoint, then ``StopRequested``);
    outside training, or a second signal, raises KeyboardInterrupt at once. Nests (the entry
    point and ``run`` both use it); only the main thread can own signal handlers."""
    if threading.current_thread() is not threading.main_thread() or _signals["installed"]:
        yield
        return

    def handler(signum, frame):
        _signals["hits"] += 1
        if not _signals["training"] or _signals["hits"] > 1:
            raise KeyboardInterrupt(f"signal {signum}")
        request_stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _signals["installed"] = 1
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _signals["installed"] = 0


@contextmanager
def training():
    """Signals stop ``fit`` gracefully inside this block."""
    clear_stop()
    _signals.update(training=True, hits=0)
    try:
        with stop_on_signals():
            yield
    finally:
        _signals["training"] = False
        clear_stop()


def dataset_info(ds, splits) -> dict:
    """What the tracker records of the data: name, a digest of what was trained on, sizes."""
    import hashlib

    x, y = splits.train
    h = hashlib.sha256(f"{ds.name}:{len(x)}:{len(splits.val[0])}:{len(splits.test[0])}".encode())
    h.update(np.ascontiguousarray(x[:256]).tobytes())
    h.update(np.asarray(y).tobytes())
    return {"name": ds.name, "digest": h.hexdigest()[:8], "source_type": str(ds.source),
            "location": str(ds.location), "train": len(x), "val": len(splits.val[0]),
            "test": len(splits.test[0]), "shape": list(np.shape(x)[1:]), "classes": len(ds.class_names)}


def load_checked_data(cfg: dict, exp: Experiment):
    """``load_data`` plus the checks that need the data (sizes, classes, image shape)."""
    ds, splits = load_data(cfg)
    check_fit(exp, ds, splits)
    return ds, splits


def run(cfg: dict, tracker: Tracker | None = None, log: Callable[[str], None] | None = None,
        exp: Experiment | None = None, checkpoint_dir: str | Path | None = None,
        resume: Checkpoint | None = None, data=None,
        on_epoch_end: Callable[[TrainState], None] | None = None) -> dict[str, Any]:
    """Run one experiment. Returns final metrics and what the caller needs to log artifacts.

    With ``checkpoint_dir``, ``<dir>/last.npz`` is written after every epoch (and logged as a
    tracker artifact) and when a signal stops the run; ``resume`` continues from a checkpoint.
    ``data`` is ``load_checked_data``'s result when the caller loaded it already.
    ``on_epoch_end(state)`` runs after each epoch's checkpoint (e.g. an Optuna pruning hook).
    """
    tracker = tracker or NullTracker()
    log = log or logger.info
    exp = exp or prepare(cfg)
    log(exp.model.summary())
    ds, splits = data or load_checked_data(cfg, exp)
    state = None
    if resume is not None:
        state = checkpoint.restore(resume, exp.model, exp.optimizer, TrainState)
        if state.epoch >= cfg["epochs"]:
            raise ConfigError(f"the checkpoint {resume.meta['path']} has already finished epoch {state.epoch}; "
                              f"nothing to resume with epochs={cfg['epochs']} (raise epochs to train further)")
        where = f"epoch {state.epoch + 1}, image {state.pos}" if state.pos else f"the end of epoch {state.epoch}"
        check_resumable(state, resume.meta["path"], exp.callbacks)
        log(f"Resuming from {resume.meta['path']} at {where} (step {state.step})")
        tracker.set_tags({"resumed_from": resume.meta["path"]})
    log(f"Data: {ds.name} from {ds.source} ({ds.location}); train {len(splits.train[0]):,}, "
        f"val {len(splits.val[0]):,}, test {len(splits.test[0]):,} images")
    tracker.set_tags({"data.source": ds.source, "data.location": str(ds.location)})
    tracker.log_dataset(dataset_info(ds, splits))
    log("MNIST CNN initialized!" if ds.name.startswith("mnist") else f"{ds.name} CNN initialized!")

    def save(st: TrainState) -> None:
        if checkpoint_dir is not None:
            path = checkpoint.save(Path(checkpoint_dir) / checkpoint.LAST, exp.model, exp.optimizer, st, cfg)
            tracker.log_artifact(path, "checkpoints")
            for best in save_best(exp.callbacks, checkpoint_dir, exp.model, exp.optimizer, st, cfg):
                tracker.log_artifact(best, "checkpoints")

    def epoch_end(st: TrainState) -> None:
        save(st)
        if on_epoch_end is not None:
            on_epoch_end(st)

    t0 = time.perf_counter()
    state = state or TrainState()
    try:
        # overflow shows up as a NaN/inf loss, which fit() reports with the step: no numpy warnings
        with training(), np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            state = fit(exp.model, exp.optimizer, splits, epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                        seed=cfg["seed"], log_every=cfg["log_every"], eval_batch_size=cfg["eval_batch_size"],
                        tracker=tracker, log=log, state=state, on_epoch_end=epoch_end, schedule=exp.schedule,
                        callbacks=exp.callbacks, progress=Progress(cfg.get("verbose", 3), log))
    except StopRequested as e:
        save(state)
        if checkpoint_dir is not None:
            log(f"{e}; checkpoint saved to {Path(checkpoint_dir) / checkpoint.LAST} "
                f"(continue with resume={Path(checkpoint_dir) / checkpoint.LAST})")
        raise
    train_seconds = time.perf_counter() - t0
    final = state.history[-1] if state.history else {}
    log("\n--- Testing the CNN ---")
    if "test/loss" in final:
        log(f"Test Loss: {final['test/loss']}")
        log(f"Test Accuracy: {final['test/acc']}")
    log(f"Training time: {train_seconds:.2f} s ({state.images_seen:,} images seen, evaluation included)")
    return {"metrics": final, "state": state, "model": exp.model, "optimizer": exp.optimizer,
            "dataset": ds, "splits": splits, "train_seconds": train_seconds}
