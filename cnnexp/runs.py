"""Compare runs in the terminal: the latest sweep's jobs, best first.

    cnnexp runs                         # by the metric the sweep optimised (val/acc, else test/acc)
    cnnexp runs --metric test/loss      # losses sort ascending, everything else descending
    cnnexp runs --sweep <parent run id or prefix> --uri sqlite:///path/to/mlflow.db
    cnnexp runs --last 10               # the 10 latest single runs

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


class Source:
    """The store's runs, through ``cnnexp.runstore`` (SQLite, milliseconds) or MLflow (other stores)."""

    def __init__(self, uri: str, experiment: str):
        from .tracking import store

        self.uri, self.db = uri, store.sqlite_path(uri)
        if self.db is not None:
            from . import runstore

            self.conn, self.rs = runstore.connect(self.db), runstore
            self.exp_id = runstore.experiment_id(self.conn, experiment)
        else:
            self.client = store.client(uri)
            exp = self.client.get_experiment_by_name(experiment)
            self.exp_id = exp.experiment_id if exp else None

    def get_run(self, run_id: str):
        if self.db is not None:
            return self.rs.get_run(self.conn, self.rs.resolve_id(self.conn, run_id))
        from .tracking import store

        return self.client.get_run(store.resolve_run_id(self.client, run_id, self.uri))  # a prefix will do

    def latest_sweep(self):
        if self.db is not None:
            return self.rs.latest_sweep(self.conn, self.exp_id)
        found = self.client.search_runs([self.exp_id], "tags.`cnnexp.role` = 'sweep'",
                                        order_by=["attributes.start_time DESC"], max_results=1)
        return found[0] if found else None

    def children(self, parent_id: str) -> list:
        if self.db is not None:
            return self.rs.children(self.conn, self.exp_id, parent_id)
        return children(self.client, self.exp_id, parent_id)

    def latest_runs(self, limit: int) -> list:
        if self.db is not None:
            return self.rs.latest_runs(self.conn, self.exp_id, limit)
        runs = self.client.search_runs([self.exp_id], order_by=["attributes.start_time DESC"], max_results=limit + 50)
        return [r for r in runs if r.data.tags.get("cnnexp.role") != "sweep"][:limit]


def objective(parent, runs: list) -> str | None:
    """The metric the sweep itself optimised: its ``best.metric`` tag, else val/acc when the
    jobs have it (what a run returns to Hydra's sweepers), else test/acc."""
    return parent.data.tags.get("best.metric") if parent is not None and parent.data.tags.get("best.metric") \
        else pick_metric(runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cnnexp runs", description=__doc__.split("\n\n")[0])
    p.add_argument("--metric", help="metric to sort by (default: the one the sweep optimised: val/acc "
                                    "when the jobs have it, else test/acc)")
    p.add_argument("--sweep", help="parent run id (or unique prefix) of the sweep (default: the latest sweep)")
    p.add_argument("--last", type=int, metavar="N", help="the N latest single runs instead of a sweep")
    p.add_argument("--experiment", default="cnnexp", help="experiment name (default: cnnexp)")
    p.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db)")
    args = p.parse_args(argv)

    def fail(msg: str) -> int:
        print(f"cnnexp runs: {msg}", file=sys.stderr)
        return 1

    from .errors import CnnexpError
    from .tracking import store

    uri = store.resolve_uri(args.uri)
    try:
        src = Source(uri, args.experiment)
        if src.exp_id is None:
            return fail(f"no runs yet: experiment {args.experiment!r} does not exist in {uri}")
        parent = None
        if args.last:
            runs, title = src.latest_runs(args.last), f"the {args.last} latest runs"
        else:
            parent = src.get_run(args.sweep) if args.sweep else src.latest_sweep()
            if args.sweep and parent is None:
                return fail(f"no run {args.sweep!r} in {uri}")
            if parent is None:
                runs, title = src.latest_runs(20), "the latest runs (no sweep yet)"
            else:
                runs, title = src.children(parent.info.run_id), None
    except CnnexpError as e:
        return fail(str(e))
    except Exception as e:  # noqa: BLE001  (MLflow's errors for other stores)
        return fail(f"cannot read the MLflow store at {uri}: {str(e).splitlines()[0]}")
    if not runs:
        return fail(f"sweep {parent.info.run_name!r} ({parent.info.run_id}) has no runs yet" if parent else
                    f"no runs yet in experiment {args.experiment!r} at {uri}")
    metric = args.metric or objective(parent, runs)
    if metric is None or not any(metric in r.data.metrics for r in runs):
        known = sorted({m for r in runs for m in r.data.metrics})
        return fail(f"no run has metric {metric!r}; available: {', '.join(known) or 'none'}")
    order = "ascending" if lower_is_better(metric) else "descending"
    shared = common_overrides(runs)
    if parent is not None:
        print(f"{parent.info.run_name}\n  parent run {parent.info.run_id} ({parent.info.status}), started "
              f"{_when(parent.info.start_time)}, experiment {args.experiment!r} at {uri}")
    else:
        print(f"{title}, experiment {args.experiment!r} at {uri}")
    if shared:
        print(f"  every run: {' '.join(shared)}")
    print(f"  {len(runs)} runs by {metric}, {order} (ids: full, or any unique prefix, for resume= and predict):\n")
    print(format_table(rows(runs, metric, drop=shared), short_ids=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
