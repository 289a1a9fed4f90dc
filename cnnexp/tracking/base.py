"""The small interface the training loop reports to. The entry point uses ``JournalTracker``
(``tracking/journal.py``); only the modules of ``cnnexp/tracking/`` import MLflow (the follower's
``sync.py`` and its helpers); the core (layers, model, training loop) can run with ``NullTracker``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

INTERVAL_KEYS = {"train/loss", "train/acc"}  # logged every log_every images; every other metric once per epoch


class Tracker:
    """Receives what a run produces. Every method may buffer; ``flush`` makes it durable."""

    run_id: str | None = None

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_dataset(self, dataset: dict[str, Any]) -> None:
        """The training data: name, digest, source, location, split sizes."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_results(self, result: dict[str, Any]) -> None:
        """Log what only the finished run has (weights, model, plots). ``result`` is what
        ``cnnexp.app.run`` returns: metrics, state, model, optimizer, dataset, splits."""

    def flush(self) -> None: ...

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """End the run: FINISHED, FAILED or KILLED."""


class NullTracker(Tracker):
    """Logs nothing."""


class MemoryTracker(Tracker):
    """Keeps everything in memory; used by tests and benchmarks."""

    def __init__(self):
        self.tags: dict[str, Any] = {}
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.artifacts: list[tuple[str, str | None]] = []
        self.texts: dict[str, str] = {}
        self.status: str | None = None
        self.error: str | None = None
        self.results: dict[str, Any] | None = None
        self.dataset: dict[str, Any] | None = None

    def log_dataset(self, dataset):
        self.dataset = dataset

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_metrics(self, metrics, step):
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append((step, float(v)))

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((str(path), artifact_path))

    def log_text(self, text, artifact_file):
        self.texts[artifact_file] = text

    def log_results(self, result):
        self.results = result

    def finish(self, status="FINISHED", error=None):
        self.status, self.error = status, error
