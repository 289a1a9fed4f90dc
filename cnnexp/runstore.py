"""Read an MLflow SQLite store directly (``sqlite3``, read-only): the runs table, run ids from
unique prefixes, a run's local artifact folder. Importing MLflow costs seconds; these queries
take milliseconds, which is what makes ``cnnexp runs`` and ``resume=<id prefix>`` quick.

Runs come back shaped like MLflow's (``r.info.run_id``, ``r.info.status``, ``r.data.metrics``,
``r.data.tags``), so the table code in ``cnnexp/runs.py`` takes either. Only the columns of
MLflow's schema that have been stable for years are read (runs, tags, latest_metrics,
experiments). Other stores (http, file) go through MLflow instead (the callers' fallback).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlparse

from .errors import ConfigError, TrackingError

ID_CHARS = set("0123456789abcdef")


def connect(db: Path) -> sqlite3.Connection:
    if not Path(db).is_file():
        raise TrackingError(f"no runs yet: there is no MLflow store at {db} (run `cnnexp train` first)")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        conn.execute("SELECT 1 FROM runs LIMIT 1")
    except sqlite3.Error as e:
        raise TrackingError(f"cannot read the MLflow store {db}: {e}") from None
    return conn


def experiment_id(conn, name: str) -> str | None:
    row = conn.execute("SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'",
                       (name,)).fetchone()
    return None if row is None else str(row[0])


def looks_like_id(text: str) -> bool:
    return 4 <= len(text) <= 32 and set(text.lower()) <= ID_CHARS


def resolve_id(conn, prefix: str) -> str:
    """The full run id for a full id or a unique prefix (at least 4 hex characters)."""
    p = prefix.strip().lower()
    if not looks_like_id(p):
        raise ConfigError(f"{prefix!r} is not a run id: give a run id or a unique prefix of at least 4 of its "
                          f"characters (see `cnnexp runs`)")
    rows = conn.execute("SELECT run_uuid, name FROM runs WHERE run_uuid LIKE ? AND lifecycle_stage = 'active' "
                        "ORDER BY start_time DESC LIMIT 6", (p + "%",)).fetchall()
    if not rows:
        raise ConfigError(f"no run with id {prefix!r} or starting with it in the store (see `cnnexp runs`)")
    if len(rows) > 1:
        shown = ", ".join(f"{r[0]} ({r[1]})" for r in rows[:5])
        raise ConfigError(f"run id prefix {prefix!r} is ambiguous: it matches {shown}"
                          f"{' and more' if len(rows) > 5 else ''}; give more characters")
    return rows[0][0]


def local_artifacts(conn, run_id: str) -> Path | None:
    """The run's artifact folder when it is on this machine (file store artifacts), else None."""
    row = conn.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
    if row is None or not row[0]:
        return None
    uri = row[0]
    if "://" in uri or uri.startswith("mlflow-artifacts:"):
        u = urlparse(uri)
        if u.scheme != "file":
            return None
        uri = unquote(u.path)
    path = Path(uri)
    return path if path.is_dir() else None


def _runs(conn, where: str, params: tuple, limit: int) -> list:
    rows = conn.execute(f"SELECT run_uuid, name, status, start_time, end_time FROM runs WHERE {where} "
                        f"AND lifecycle_stage = 'active' ORDER BY start_time DESC LIMIT ?", (*params, limit)).fetchall()
    runs = {r[0]: SimpleNamespace(info=SimpleNamespace(run_id=r[0], run_name=r[1], status=r[2], start_time=r[3],
                                                       end_time=r[4]),
                                  data=SimpleNamespace(metrics={}, tags={}, params={})) for r in rows}
    ids = list(runs)
    for i in range(0, len(ids), 500):  # SQLite's bound-parameter limit
        chunk = ids[i:i + 500]
        marks = ",".join("?" * len(chunk))
        for rid, k, v in conn.execute(f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({marks})", chunk):
            runs[rid].data.tags[k] = v
        for rid, k, v, nan in conn.execute(
                f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN ({marks})", chunk):
            runs[rid].data.metrics[k] = float("nan") if nan else float(v)
    return list(runs.values())


def get_run(conn, run_id: str):
    found = _runs(conn, "run_uuid = ?", (run_id,), 1)
    return found[0] if found else None


def latest_sweep(conn, exp_id: str):
    """The newest parent run of a sweep (tag ``cnnexp.role=sweep``), or None."""
    found = _runs(conn, "experiment_id = ? AND run_uuid IN (SELECT run_uuid FROM tags WHERE key = 'cnnexp.role' "
                        "AND value = 'sweep')", (exp_id,), 1)
    return found[0] if found else None


def children(conn, exp_id: str, parent_id: str, limit: int = 5000) -> list:
    return _runs(conn, "experiment_id = ? AND run_uuid IN (SELECT run_uuid FROM tags WHERE "
                       "key = 'mlflow.parentRunId' AND value = ?)", (exp_id, parent_id), limit)


def latest_runs(conn, exp_id: str, limit: int) -> list:
    """The newest runs that are not sweep parents."""
    return _runs(conn, "experiment_id = ? AND run_uuid NOT IN (SELECT run_uuid FROM tags WHERE key = 'cnnexp.role' "
                       "AND value = 'sweep')", (exp_id,), limit)
