"""Compare runs in the terminal: the latest sweep's jobs, best first.

    python -m cnnexp.runs                      # sorted by test/acc
    python -m cnnexp.runs --metric val/acc     # losses sort ascending, everything else descending
    python -m cnnexp.runs --sweep <parent run id> --uri sqlite:///path/to/mlflow.db

Reads the store ``python -m cnnexp`` writes to (``$MLFLOW_TRACKING_URI`` or
``outputs/mlflow.db``). The same table is logged to each sweep's parent run.
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import datetime

SHOWN = ("val/acc", "val/loss", "test/acc", "test/loss")  # besides the sort metric


def children(client, exp_id: str, parent_id: str) -> list:
    return client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=5000)


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or metric.endswith(("seconds", "error"))


def rank(runs: list, metric: str) -> list:
    """Runs sorted best first by ``metric`` (ties: the earlier job first, as Optuna reports);
    runs without it (failed early) last."""
    sign = 1 if lower_is_better(metric) else -1

    def key(r):
        v = r.data.metrics.get(metric)
        missing = v is None or math.isnan(v)
        job = r.data.tags.get("sweep.job_num", "")
        return (missing, 0.0 if missing else sign * v, int(job) if job.isdigit() else math.inf)

    return sorted(runs, key=key)


def pick_metric(runs: list, preferred: tuple[str, ...] = ("val/acc", "test/acc")) -> str | None:
    return next((m for m in preferred if any(m in r.data.metrics for r in runs)), None)


def common_overrides(runs: list) -> list[str]:
    """Overrides every run shares (the sweep's fixed settings), in the first run's order."""
    lists = [(r.data.tags.get("hydra.overrides") or "").split() for r in runs]
    if len(lists) < 2:
        return []
    return [o for o in lists[0] if all(o in other for other in lists[1:])]


def rows(runs: list, metric: str, drop: list[str] | None = None) -> list[dict[str, str]]:
    """One dict per run (best first): job, status, the metrics, its overrides (without the ones
    in ``drop``), run id."""
    cols = [metric] + [m for m in SHOWN if m != metric and any(m in r.data.metrics for r in runs)]
    out = []
    for i, r in enumerate(rank(runs, metric), 1):
        row = {"rank": str(i), "job": r.data.tags.get("sweep.job_num", "-"), "status": r.info.status}
        for m in cols:
            v = r.data.metrics.get(m)
            row[m] = "-" if v is None else f"{v:.4f}"
        own = [o for o in (r.data.tags.get("hydra.overrides") or "").split() if o not in (drop or [])]
        row["overrides"] = " ".join(own) or "(none)"
        row["run_id"] = r.info.run_id
        out.append(row)
    return out


def format_table(table: list[dict[str, str]], short_ids: bool = True) -> str:
    if not table:
        return "(no runs)"
    keys = list(table[0])
    cells = [[r[k][:8] if k == "run_id" and short_ids else r[k] for k in keys] for r in table]
    w = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda vals: "  ".join(v.ljust(w[i]) for i, v in enumerate(vals)).rstrip()  # noqa: E731
    return "\n".join([line(keys)] + [line(c) for c in cells])


def to_markdown(table: list[dict[str, str]]) -> str:
    if not table:
        return "(no runs)\n"
    keys = list(table[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(r[k].replace("|", "\\|") for k in keys) + " |" for r in table]
    return "\n".join(out) + "\n"


def to_csv(table: list[dict[str, str]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    if table:
        w = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(table)
    return buf.getvalue()


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cnnexp.runs", description=__doc__.split("\n\n")[0])
    p.add_argument("--metric", default="test/acc", help="metric to sort by (default: test/acc)")
    p.add_argument("--sweep", help="parent run id of the sweep, or a unique prefix (default: the latest sweep)")
    p.add_argument("--experiment", default="cnnexp", help="experiment name (default: cnnexp)")
    p.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db)")
    args = p.parse_args(argv)

    def fail(msg: str) -> int:
        print(f"cnnexp.runs: {msg}", file=sys.stderr)
        return 1

    from .tracking import store

    uri = store.resolve_uri(args.uri)
    db = store.sqlite_path(uri)
    if db is not None and not db.exists():
        return fail(f"no runs yet: there is no MLflow store at {db} (run `python -m cnnexp` first)")
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        exp = client.get_experiment_by_name(args.experiment)
    except Exception as e:  # noqa: BLE001
        return fail(f"cannot read the MLflow store at {uri}: {str(e).splitlines()[0]}")
    if exp is None:
        return fail(f"no runs yet: experiment {args.experiment!r} does not exist in {uri}")
    if args.sweep:
        try:
            parent = client.get_run(store.resolve_run_id(client, args.sweep, uri))  # a unique prefix will do
        except Exception:  # noqa: BLE001
            return fail(f"no run {args.sweep!r} in {uri} (or the prefix matches several)")
    else:
        found = client.search_runs([exp.experiment_id], "tags.`cnnexp.role` = 'sweep'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        if not found:
            n = len(client.search_runs([exp.experiment_id], max_results=1000))
            return fail(f"no sweep in experiment {args.experiment!r} ({n} single run(s)); start one with "
                        f"`python -m cnnexp -m lr=0.001,0.005,0.01`" if n else
                        f"no runs yet in experiment {args.experiment!r} at {uri}")
        parent = found[0]
    runs = children(client, exp.experiment_id, parent.info.run_id)
    if not runs:
        return fail(f"sweep {parent.info.run_name!r} ({parent.info.run_id}) has no runs yet")
    if not any(args.metric in r.data.metrics for r in runs):
        known = sorted({m for r in runs for m in r.data.metrics})
        return fail(f"no run of the sweep has metric {args.metric!r}; available: {', '.join(known)}")
    order = "ascending" if lower_is_better(args.metric) else "descending"
    shared = common_overrides(runs)
    print(f"{parent.info.run_name}\n  parent run {parent.info.run_id} ({parent.info.status}), started "
          f"{_when(parent.info.start_time)}, experiment {args.experiment!r} at {uri}")
    if shared:
        print(f"  every job: {' '.join(shared)}")
    print(f"  {len(runs)} jobs by {args.metric}, {order}:\n")
    print(format_table(rows(runs, args.metric, drop=shared)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
