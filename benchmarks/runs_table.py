"""How long `cnnexp runs` takes on a store with 100 runs (run by hand, never by the tests).

Creates a throw-away SQLite store with one sweep parent and N child runs shaped like cnnexp's
(tags, params and per-epoch metrics logged through MLflow), then times, in fresh processes,
alternating: `cnnexp runs` (reads SQLite directly) and the same query through MLflow's client
(import + search_runs), which is what `cnnexp runs` did before. Prints a markdown table.

    python benchmarks/runs_table.py [--runs 100] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MLFLOW_QUERY = """
import sys
from mlflow.tracking import MlflowClient
c = MlflowClient(sys.argv[1])
e = c.get_experiment_by_name("cnnexp")
p = c.search_runs([e.experiment_id], "tags.`cnnexp.role` = 'sweep'", max_results=1)[0]
rs = c.search_runs([e.experiment_id], f"tags.mlflow.parentRunId = '{p.info.run_id}'", max_results=5000)
print(len(rs))
"""


def make_store(folder: Path, n: int) -> str:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("cnnexp", artifact_location=str(folder / "mlartifacts"))
    parent = c.create_run(exp, run_name="sweep lr=...", tags={"cnnexp.role": "sweep"})
    for i in range(n):
        lr = 0.001 * (1 + i)
        r = c.create_run(exp, run_name=f"lr={lr:g}", tags={
            "mlflow.parentRunId": parent.info.run_id, "sweep.job_num": str(i),
            "hydra.overrides": f"data=mnist_sample epochs=3 lr={lr:g}", "model.name": "seed"})
        ms = [mlflow.entities.Metric(k, v, 0, e) for e in range(1, 4)
              for k, v in (("val/acc", 0.8 + (i % 17) / 100), ("val/loss", 0.5 - (i % 13) / 100),
                           ("test/acc", 0.8 + (i % 11) / 100), ("test/loss", 0.5))]
        ps = [mlflow.entities.Param(k, v) for k, v in (("lr", f"{lr:g}"), ("epochs", "3"), ("batch_size", "1"))]
        c.log_batch(r.info.run_id, metrics=ms, params=ps)
        c.set_terminated(r.info.run_id)
    c.set_terminated(parent.info.run_id)
    return uri


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed: {p.stderr[-500:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        uri = make_store(Path(tmp), args.runs)
        print(f"store with {args.runs} runs + 1 sweep parent made in {time.perf_counter() - t0:.1f} s\n")
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        cases = {"cnnexp runs (sqlite3)": [sys.executable, "-m", "cnnexp", "runs"],
                 "MLflow client: import + search_runs": [sys.executable, "-c", MLFLOW_QUERY, uri]}
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeats):  # alternating, so both see the same machine load
            for name, cmd in cases.items():
                times[name].append(timed(cmd, env))
    print(f"| command ({args.runs} runs) | median s | min s | max s |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.3f} | {min(ts):.3f} | {max(ts):.3f} |")
    a, b = (statistics.median(ts) for ts in times.values())
    print(f"\nratio (MLflow / cnnexp runs), medians of {args.repeats} alternating runs: {b / a:.1f}x")


if __name__ == "__main__":
    main()
