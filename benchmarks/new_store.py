"""What making a new SQLite MLflow store costs: MLflow's migrations against a copy of the kept
empty schema (``cnnexp/tracking/schema.py``). Each store is made in a fresh subprocess (the
MLflow import included, as in a follower), alternating the two ways round by round; prints the
medians of wall and CPU time side by side.

    python benchmarks/new_store.py            # 7 rounds
    python benchmarks/new_store.py --rounds 11
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORT_ONLY = "from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore"
MIGRATIONS = IMPORT_ONLY + "; import sys; SqlAlchemyStore('sqlite:///' + sys.argv[1], 'file:///tmp/unused')"
KEPT = ("import sys; from pathlib import Path; from cnnexp.tracking.schema import create; "
        "create(Path(sys.argv[1]), 'file:///tmp/unused')")
WAYS = {"import MLflow's store only": IMPORT_ONLY, "migrations (MLflow)": MIGRATIONS,
        "kept schema (cnnexp)": KEPT}


def one(code: str, db: Path, env: dict) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of a subprocess running ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, CNNEXP_CACHE=str(Path(tmp) / "cache"))
        subprocess.run([sys.executable, "-c", KEPT, str(Path(tmp) / "warm.db")], check=True, env=env, cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # the kept schema, made once
        res = {w: [] for w in WAYS}
        for r in range(args.rounds):
            for i, (w, code) in enumerate(WAYS.items()):
                res[w].append(one(code, Path(tmp) / f"{r}-{i}.db", env))
    print(f"new SQLite store, fresh process each, {args.rounds} alternating rounds; load {os.getloadavg()[0]:.1f}")
    print(f"| {'way':28s} | wall median (s) | CPU median (s) |")
    print(f"|{'-' * 30}|-----------------|----------------|")
    for w, v in res.items():
        print(f"| {w:28s} | {statistics.median(a for a, _ in v):15.2f} | {statistics.median(b for _, b in v):14.2f} |")
    print(json.dumps({w: v for w, v in res.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
