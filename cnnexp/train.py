"""The training loop: shuffled mini-batch SGD over uint8 images, reporting to a Tracker.

Knows nothing of Hydra or MLflow. Every random draw of an epoch (the shuffle, dropout masks)
comes from generators seeded by ``(seed, epoch)``, so a run resumed from an end-of-epoch
checkpoint continues exactly as the uninterrupted run would have. A stop requested by a
signal (``request_stop``) takes effect between two steps: ``fit`` records the position inside
the epoch, the running sums and the generator states in the TrainState and raises
``StopRequested``, so a checkpoint of that state resumes exactly too.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np

from .callbacks.base import Callback
from .errors import TrainingError
from .model import Model
from .optimizers import Optimizer
from .progress import Progress
from .schedules import Schedule
from .tracking.base import NullTracker, Tracker


class StopRequested(KeyboardInterrupt):
    """Raised by ``fit`` between two steps after ``request_stop()`` (SIGINT/SIGTERM)."""


_stop = [False]


def request_stop() -> None:
    """Ask a running ``fit`` to stop at the next step boundary (safe from a signal handler)."""
    _stop[0] = True


def clear_stop() -> None:
    _stop[0] = False


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    images_seen: int = 0
    history: list[dict] = field(default_factory=list)  # one dict of metrics per epoch
    pos: int = 0  # images done in the unfinished epoch `epoch` (0 = at an epoch boundary)
    partial: dict = field(default_factory=dict)  # running sums and generator states at `pos`
    callbacks: dict = field(default_factory=dict)  # each callback's state_dict, by config name
    stopped: str = ""  # why a callback ended training early ("" = it did not)


def epoch_rng(seed: int, epoch: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream])


def reseed_layers(model: Model, seed: int, epoch: int) -> None:
    """Give every stochastic layer (one with an ``rng``) a generator for this epoch."""
    for i, layer in enumerate(model.layers):
        if hasattr(layer, "rng"):
            layer.rng = epoch_rng(seed, epoch, 1 + i)


def fit(model: Model, optimizer: Optimizer, splits, *, epochs: int, batch_size: int, seed: int = 0,
        log_every: int = 100, eval_batch_size: int = 500, tracker: Tracker | None = None,
        log: Callable[[str], None] = print, state: TrainState | None = None,
        on_epoch_end: Callable[[TrainState], None] | None = None, progress: Progress | None = None,
        schedule: Schedule | None = None, callbacks: dict[str, Callback] | None = None) -> TrainState:
    """Train ``model`` for ``epochs`` epochs (continuing from ``state`` when resuming).

    ``splits`` has ``train``, ``val`` (maybe empty) and ``test`` pairs of (uint8 images, labels).
    Reports through ``progress`` (default: the seed post's lines through ``log``) and logs
    ``train/*``, ``val/*``, ``test/*``, ``lr`` and ``perf/*`` metrics. ``schedule`` sets the
    lr before every step; ``callbacks`` see every epoch's metrics and may end training early
    (``state.stopped`` says why). Raises TrainingError when the loss becomes NaN or infinite.
    """
    tracker = tracker or NullTracker()
    state = state or TrainState()
    progress = progress or Progress(3, log)
    callbacks = callbacks or {}
    for name, cb in callbacks.items():
        if name in state.callbacks:
            cb.load_state_dict(state.callbacks[name])
    with model.compute():  # BLAS single-threaded; the model uses the other cores itself
        return _fit_epochs(model, optimizer, splits, epochs, batch_size, seed, log_every, eval_batch_size,
                           tracker, progress, state, on_epoch_end, schedule, callbacks)


def _step(model, optimizer):
    """``optimizer.step``, given the engine's ``run`` (its update may then use a second core
    while a step runs unsplit) when both have one."""
    run = getattr(model.engine, "run", None)
    if run is None or "run" not in inspect.signature(optimizer.step).parameters:
        return optimizer.step
    return partial(optimizer.step, run=run)


def _fit_epochs(model, optimizer, splits, epochs, batch_size, seed, log_every, eval_batch_size, tracker,
                progress, state, on_epoch_end, schedule, callbacks):
    images, labels = splits.train
    n = len(images)
    labels = np.asarray(labels, dtype=np.intp)
    steps_per_epoch = -(-n // batch_size)
    scheduled = schedule is not None and not schedule.constant
    # the hot loop: bound methods and functions looked up once (images stay uint8 until a
    # batch is formed; Model.train_step converts just that batch)
    train_step, step, params, isfinite, stop = model.train_step, _step(model, optimizer), model.params, math.isfinite, _stop
    live, update = progress.live, progress.update
    for epoch in range(state.epoch, epochs):
        progress.epoch_start(epoch, epochs, n)
        perm = epoch_rng(seed, epoch).permutation(n)
        reseed_layers(model, seed, epoch)
        first, sums = state.pos, dict(ep_loss=0.0, ep_correct=0, w_loss=0.0, w_correct=0, w_n=0, w_steps=0,
                                      next_log=log_every, seconds=0.0)
        if first:  # resuming inside this epoch
            sums.update({k: v for k, v in state.partial.items() if k in sums})
            for i, st in state.partial.get("rng", {}).items():
                model.layers[int(i)].rng.bit_generator.state = st
        ep_loss, ep_correct, w_loss, w_correct, w_n, w_steps, next_log = (
            sums[k] for k in ("ep_loss", "ep_correct", "w_loss", "w_correct", "w_n", "w_steps", "next_log"))
        t0 = time.perf_counter() - sums["seconds"]
        epoch_lr = schedule(epoch, 0, steps_per_epoch, epochs) if scheduled else optimizer.lr
        for start, xb, yb in model.batches(images, labels, perm, first, batch_size):
            if stop[0]:
                state.pos = start
                state.partial = dict(ep_loss=ep_loss, ep_correct=ep_correct, w_loss=w_loss, w_correct=w_correct,
                                     w_n=w_n, w_steps=w_steps, next_log=next_log, seconds=time.perf_counter() - t0,
                                     rng={str(i): l.rng.bit_generator.state for i, l in enumerate(model.layers)
                                          if hasattr(l, "rng")})
                progress.clear()
                raise StopRequested(f"stopped at epoch {epoch + 1}, image {start} of {n}")
            if scheduled:
                optimizer.lr = schedule(epoch, start // batch_size, steps_per_epoch, epochs)
            b_loss, b_correct = train_step(xb, yb)
            step(params, model.grads)
            state.step += 1
            if not isfinite(b_loss):
                progress.clear()
                raise TrainingError(
                    f"loss became {b_loss} at epoch {epoch + 1}, step {state.step} (image {start + len(yb)} "
                    f"of {n}); the run diverged: try a smaller lr than lr={optimizer.lr:g}")
            ep_loss += b_loss
            ep_correct += b_correct
            w_loss += b_loss
            w_correct += b_correct
            done = start + len(yb)
            w_n += len(yb)
            w_steps += 1
            if live:
                update(done, ep_loss, ep_correct, done)
            steps_done = start // batch_size + 1
            if steps_done >= next_log:
                progress.step_line(steps_done, w_steps, w_loss / w_n, w_correct / w_n)
                tracker.log_metrics({"train/loss": w_loss / w_n, "train/acc": w_correct / w_n},
                                    step=state.images_seen + done)
                w_loss, w_correct, w_n, w_steps = 0.0, 0, 0, 0
                next_log = (steps_done // log_every + 1) * log_every
        if live:
            update(n, ep_loss, ep_correct, n, final=True)
        seconds = time.perf_counter() - t0
        state.images_seen += n
        state.epoch, state.pos, state.partial = epoch + 1, 0, {}
        m = {"train/epoch_loss": ep_loss / n, "train/epoch_acc": ep_correct / n, "lr": epoch_lr,
             "perf/epoch_seconds": seconds, "perf/images_per_sec": n / seconds if seconds > 0 else float("inf")}
        for split in ("val", "test"):
            x, yy = getattr(splits, split)
            if len(x):
                m[f"{split}/loss"], m[f"{split}/acc"] = model.evaluate(x, np.asarray(yy, np.intp), eval_batch_size)
        tracker.log_metrics(m, step=state.epoch)
        state.history.append(m)
        progress.epoch_end(summary(state.epoch, epochs, m, n, seconds))
        for name, cb in callbacks.items():
            cb.on_epoch_end(state.epoch, m)
            state.callbacks[name] = cb.state_dict()
        state.stopped = next((cb.reason for cb in callbacks.values() if cb.stop), "")
        if on_epoch_end is not None:
            on_epoch_end(state)
        if state.stopped:
            progress.line(f"Stopped after epoch {state.epoch} of {epochs}: {state.stopped}")
            break
    return state


def summary(epoch: int, epochs: int, m: dict, n: int, seconds: float) -> str:
    """The one-line epoch summary."""
    parts = [f"train loss {m['train/epoch_loss']:.3f} acc {100 * m['train/epoch_acc']:.1f}%"]
    parts += [f"{s} loss {m[s + '/loss']:.3f} acc {100 * m[s + '/acc']:.1f}%" for s in ("val", "test")
              if s + "/loss" in m]
    return (f"Epoch {epoch}/{epochs}: " + " | ".join(parts) + f" | lr {m['lr']:.3g} | {n:,} images in "
            f"{seconds:.2f} s ({m['perf/images_per_sec']:,.0f} img/s)")
