"""A new SQLite store from a kept copy of MLflow's empty schema.

MLflow makes a new SQLite store by running every one of its schema migrations (Alembic), which
takes seconds of CPU and many synced writes. The result, with no experiment in it, is the same
for every store of one MLflow version, so it is made once per version in the user cache
(``<cache>/mlflow-schema/<version>.db``) and copied. Opening the copy lets MLflow check that the
schema is at its newest revision and add the ``Default`` experiment with this store's artifact
root. A copy MLflow does not accept is deleted, and the store is made by migrations as before.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path

from ..paths import cache_root

logger = logging.getLogger(__name__)


def dispose_engine(uri: str) -> None:
    """Close and forget MLflow's cached SQLAlchemy engine for ``uri``, if it has one."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = SqlAlchemyStore._engine_map.pop(uri, None)
    if engine is not None:
        engine.dispose()


def _open(db: Path, artifact_root: str) -> None:
    """Open ``db`` as an MLflow store (migrating it when empty), then close its engine."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{db}"
    try:
        SqlAlchemyStore(uri, artifact_root)
    finally:
        dispose_engine(uri)


def template() -> Path:
    """The empty schema of this MLflow version, made (by migrations) if not kept yet."""
    from mlflow.version import VERSION

    path = cache_root() / "mlflow-schema" / f"{VERSION}.db"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        _open(tmp, (path.parent / "unused").as_uri())
        with sqlite3.connect(tmp) as c:  # no experiment: each store gets its own Default
            c.execute("DELETE FROM experiments")
        os.replace(tmp, path)  # atomic: another process sees the whole file or none
    finally:
        tmp.unlink(missing_ok=True)
    return path


def create(db: Path, artifact_root: str) -> None:
    """Make the SQLite store ``db`` (absent or empty) with ``artifact_root`` as the default
    artifact root of its Default experiment. Callers hold the store's lock."""
    tmp = db.with_name(f".{db.name}.{os.getpid()}.new")
    try:
        if not _from_template(tmp, artifact_root):
            _open(tmp, artifact_root)  # MLflow's migrations
        os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


def _from_template(tmp: Path, artifact_root: str) -> bool:
    """Make the store at ``tmp`` from the kept schema; False (nothing left at ``tmp``) when
    there is none and none can be made, or MLflow rejects the copy (which is then deleted)."""
    try:
        kept = template()
    except Exception as e:  # noqa: BLE001  (an unwritable cache, a failed migration)
        logger.debug(f"no kept MLflow schema ({e}); running the migrations")
        return False
    try:
        shutil.copyfile(kept, tmp)
        _open(tmp, artifact_root)
        return True
    except Exception as e:  # noqa: BLE001  (a damaged copy, or one MLflow rejects)
        logger.debug(f"the kept MLflow schema {kept} was not accepted ({e}); running the migrations")
        kept.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
        return False
