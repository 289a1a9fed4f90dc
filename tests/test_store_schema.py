"""A new SQLite store is a copy of MLflow's empty schema kept in the cache (cnnexp/tracking/schema.py):
the copy must be the store MLflow's own migrations make, with this store's own Default experiment."""

from __future__ import annotations

import sqlite3

import pytest

from cnnexp.tracking import schema


def tables(db) -> dict:
    """Every table, index and trigger definition of an SQLite file, and its Alembic revision.
    A definition is compared as its set of lines: MLflow's migrations do not always write a
    table's constraints in the same order."""
    with sqlite3.connect(db) as c:
        found = {name: sorted(line.strip().rstrip(",") for line in (sql or "").splitlines())
                 for name, sql in c.execute("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
        found["alembic_version"] = c.execute("SELECT version_num FROM alembic_version").fetchall()
    return found


def experiments(db) -> list:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments").fetchall()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNEXP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_store_made_from_the_kept_schema_is_usable_and_has_its_own_default_experiment(tmp_path, cache):
    first, second = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    for db in (first, second):
        db.parent.mkdir()
    schema.create(first, (tmp_path / "a" / "art").as_uri())
    kept = cache / "mlflow-schema"
    assert [p.suffix for p in kept.iterdir()] == [".db"]  # made once, no temp file left
    assert experiments(next(kept.iterdir())) == []
    schema.create(second, (tmp_path / "b" / "art").as_uri())
    assert sorted(p.name for p in second.parent.iterdir()) == ["mlflow.db"]
    assert experiments(second) == [(0, "Default", (tmp_path / "b" / "art" / "0").as_uri(), "active")]
    assert tables(second) == tables(first)

    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{second}")
    exp = c.create_experiment("x")
    run = c.create_run(exp)
    c.log_metric(run.info.run_id, "acc", 0.5)
    assert c.get_run(run.info.run_id).data.metrics == {"acc": 0.5}


@pytest.mark.slow
def test_the_copy_equals_a_store_made_by_migrations_and_a_damaged_copy_is_replaced(tmp_path, cache):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    migrated, copied, again = (tmp_path / name for name in ("migrated.db", "copied.db", "again.db"))
    SqlAlchemyStore(f"sqlite:///{migrated}", (tmp_path / "art").as_uri())
    schema.create(copied, (tmp_path / "art").as_uri())
    assert tables(copied) == tables(migrated)
    assert experiments(copied) == experiments(migrated)

    kept = next((cache / "mlflow-schema").iterdir())
    kept.write_bytes(b"not a database")
    schema.create(again, (tmp_path / "art").as_uri())  # falls back to the migrations
    assert tables(again) == tables(migrated)
    assert not kept.exists()  # the damaged copy is gone; the next store makes a new one
    schema.create(tmp_path / "fourth.db", (tmp_path / "art").as_uri())
    assert tables(kept) == tables(migrated)
