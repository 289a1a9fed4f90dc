"""Where runs go: the tracking URI, the SQLite store's schema, the experiment.

Which store (first that is set):
  1. ``tracking.uri`` in the config (``python -m cnnexp tracking.uri=http://127.0.0.1:5000``)
  2. ``$MLFLOW_TRACKING_URI``
  3. ``sqlite:///<outputs>/mlflow.db``, artifacts in ``<outputs>/mlartifacts/`` (absolute paths)

The config key wins because it is the more explicit choice: it is written on the command line
or in a checked-in preset, while the environment variable is ambient.

Parallel jobs share one SQLite file, so the schema is created once under a file lock (MLflow
creating its tables from several processes at once loses runs), the experiment is
got-or-created under the same lock, and writes are retried on "database is locked".
MLflow is imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, TypeVar

from ..errors import TrackingError
from ..paths import outputs_dir

logger = logging.getLogger("cnnexp")
T = TypeVar("T")
ENV_URI = "MLFLOW_TRACKING_URI"
LOCKED = ("database is locked", "database table is locked", "database schema is locked")


def default_uri() -> str:
    return "sqlite:///" + str(outputs_dir() / "mlflow.db")


def artifact_root() -> Path:
    return outputs_dir() / "mlartifacts"


def resolve_uri(cfg_uri: str | None = None) -> str:
    """The tracking URI to use (see the module docstring); relative SQLite paths made absolute."""
    uri = cfg_uri or os.environ.get(ENV_URI) or default_uri()
    path = sqlite_path(uri)
    return "sqlite:///" + str(path) if path is not None else uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).expanduser().resolve()


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@contextmanager
def file_lock(path: Path):
    """An exclusive ``fcntl`` lock on ``path`` (created if needed), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def retry(fn: Callable[..., T], *args, tries: int = 10, **kwargs) -> T:
    """Call ``fn``, retrying with jittered backoff while SQLite says the database is locked."""
    for i in range(tries):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # MlflowException wrapping sqlalchemy's OperationalError
            if i == tries - 1 or not any(s in str(e).lower() for s in LOCKED):
                raise
            time.sleep(min(2.0, 0.05 * 2 ** i) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


def ensure_store(uri: str) -> None:
    """Make sure the store can be used: the SQLite schema exists (created under a lock, with
    ``<outputs>/mlartifacts`` as default artifact root), or the server answers."""
    db = sqlite_path(uri)
    if db is not None:
        with file_lock(_lock_path(db)):
            if not db.exists() or db.stat().st_size == 0:
                from .schema import create

                logger.info(f"Creating the MLflow store {db}")
                create(db, artifact_root().as_uri())
    elif is_http(uri):
        check_server(uri)


def check_server(uri: str) -> None:
    """An MLflow server answers ``/health`` at ``uri`` (milliseconds; no MLflow import)."""
    import urllib.error  # here: `cnnexp runs` reads SQLite and should not pay for http imports
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).close()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"cannot reach the MLflow server at {uri} ({reason}); start it, or unset "
                            f"tracking.uri / {ENV_URI} to use the local store") from None


def precheck(uri: str) -> bool:
    """Check cheaply, without importing MLflow, that a store at ``uri`` can be used: the SQLite
    file's folder is writable, or the server answers. False for schemes it cannot check
    (their runs are logged in-process, where MLflow reports the problem before training)."""
    db = sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"cannot create the folder of the MLflow store {db} ({e.strerror}); "
                                f"set tracking.uri to a writable sqlite:/// path") from None
        if db.is_dir():
            raise TrackingError(f"the MLflow store {db} is a folder, not an SQLite file; set tracking.uri to "
                                f"sqlite:///{db / 'mlflow.db'} or another file path") from None
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingError(f"the MLflow store {db} is not writable; set tracking.uri to a writable "
                                f"sqlite:/// path") from None
        if db.is_file() and db.stat().st_size and not db.read_bytes()[:16] == b"SQLite format 3\0":
            raise TrackingError(f"the MLflow store {db} is not an SQLite database (another file is in its "
                                f"place); move it away or set tracking.uri to another sqlite:/// path") from None
        return True
    if is_http(uri):
        check_server(uri)
        return True
    return False


def forget(uri: str) -> None:
    """Drop MLflow's cached engines and stores for ``uri`` (the SQLite file was replaced)."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    from .schema import dispose_engine

    dispose_engine(uri)
    _tracking_store_registry._get_store_with_resolved_uri.cache_clear()


def file_id(uri: str) -> list | None:
    """Which file the SQLite store is (device, inode), None when missing or not SQLite."""
    db = sqlite_path(uri)
    try:
        st = db.stat() if db is not None else None
    except OSError:
        return None
    return [st.st_dev, st.st_ino] if st else None


def link(uri: str, exp_id: str, run_id: str) -> str:
    """Where to see a run: the server's page, or the `mlflow ui` command and the page it serves."""
    if is_http(uri):
        return f"{uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"
    return f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{run_id}"


def resolve_run_id(c, prefix: str, uri: str) -> str:
    """A full run id from a unique prefix (the runs table prints 8 characters)."""
    from ..errors import ConfigError

    prefix = str(prefix).strip().lower()
    if len(prefix) == 32:
        return prefix
    ids = {r.info.run_id for e in retry(c.search_experiments) for r in
           retry(c.search_runs, [e.experiment_id], max_results=50000) if r.info.run_id.startswith(prefix)}
    if len(ids) != 1:
        raise ConfigError(f"run id {prefix!r} matches {'no run' if not ids else f'{len(ids)} runs'} in {uri}; "
                          f"give {'a run id from `cnnexp runs`' if not ids else 'more characters'}")
    return ids.pop()


_files: dict[str, list | None] = {}  # the SQLite file each URI's cached MLflow engine is on


def client(uri: str):
    """An MlflowClient on a store that is ready to use (on a fresh engine when the SQLite file
    was deleted or replaced since the last call)."""
    if sqlite_path(uri) is not None:
        if uri in _files and file_id(uri) != _files[uri]:
            forget(uri)
        ensure_store(uri)
        _files[uri] = file_id(uri)
    ensure_store(uri)  # first: an unreachable server fails in milliseconds, before MLflow loads
    import mlflow
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in run logs
    # a store error is reported by cnnexp in one line; not with MLflow's traceback as well
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    mlflow.set_tracking_uri(uri)  # for mlflow.models.Model.log, which reads the global URI
    return MlflowClient(uri)


def experiment_id(client, name: str, uri: str) -> str:
    """Get or create the experiment; for SQLite under the store's lock."""
    exp = retry(client.get_experiment_by_name, name)
    if exp is None:
        db = sqlite_path(uri)
        if db is None:
            return _create_experiment(client, name, None)
        with file_lock(_lock_path(db)):
            exp = retry(client.get_experiment_by_name, name)
            if exp is None:
                location = (artifact_root() / re.sub(r"[^\w.-]+", "_", name)).as_uri()
                return _create_experiment(client, name, location)
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment {name!r} was deleted in {uri}; restore it "
                            f"(mlflow experiments restore --experiment-id {exp.experiment_id}) "
                            f"or choose another name with tracking.experiment=...")
    return exp.experiment_id


def _create_experiment(client, name: str, location: str | None) -> str:
    try:
        return retry(client.create_experiment, name, artifact_location=location)
    except Exception as e:  # another process (or a server) created it first
        if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
            raise
        return client.get_experiment_by_name(name).experiment_id


def download_checkpoint(run_id: str, uri: str, dst: str | Path) -> Path:
    """Fetch ``checkpoints/last.npz`` of an MLflow run; one-line errors for unknown runs."""
    from ..errors import ConfigError

    c = client(uri)
    try:
        run_id = resolve_run_id(c, run_id, uri)
        c.get_run(run_id)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001  (MlflowException: RESOURCE_DOES_NOT_EXIST, bad id)
        raise ConfigError(f"resume={run_id!r} is neither a checkpoint file nor a run in {uri} "
                          f"({str(e).splitlines()[0][:200]}); pass a checkpoint path or an MLflow run id") from None
    try:
        return Path(retry(c.download_artifacts, run_id, "checkpoints/last.npz", str(dst)))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"run {run_id} has no checkpoints/last.npz artifact to resume from "
                          f"({str(e).splitlines()[0][:200]})") from None
