"""What tracking costs the training process: ``python -m cnnexp`` (the default experiment, or
the overrides given) in subprocesses, alternating tracking off, the default (journal +
background follower) and ``tracking.wait=true``; prints a table of medians side by side.

    python benchmarks/tracking.py                 # 5 rounds of the default experiment
    python benchmarks/tracking.py --rounds 9 data=mnist_sample data.train_size=4000 epochs=5

Columns: wall time of the command; the time the training process spent in tracking calls
(``seconds`` of its journal's finish event); for the default, how long after the start the run
was complete in the store (the follower's ``synced_at``); the share of wall time against
tracking off, by medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnexp.tracking.follower import wait_idle  # noqa: E402

MODES = {"off": ["tracking.enabled=false"], "journal + follower (default)": ["tracking.background=true"],
         "tracking.wait=true": ["tracking.wait=true"]}


def newest_journal(outputs: Path) -> Path | None:
    found = list((outputs / "journals").glob("*/journal.jsonl"))
    return max(found, key=lambda p: p.stat().st_mtime).parent if found else None


def one_run(args: list[str], outputs: Path) -> dict:
    env = {**os.environ, "CNNEXP_OUTPUTS": str(outputs), "CNNEXP_OFFLINE": "1"}
    t_start = time.time()
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "cnnexp", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"python -m cnnexp {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    busy = wait_idle(outputs, timeout=600)
    if busy:
        raise RuntimeError(f"followers still working after 600 s: {busy}")
    row = {"wall_s": wall}
    folder = newest_journal(outputs)
    if folder is not None and args[-1] != "tracking.enabled=false":
        lines = (folder / "journal.jsonl").read_text().splitlines()
        row["tracking_s"] = json.loads(lines[-1]).get("seconds", float("nan"))
        synced = json.loads((folder / "sync.json").read_text()).get("synced_at")
        row["complete_s"] = synced - t_start if synced else float("nan")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    rows: dict[str, list[dict]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        outputs = Path(tmp) / "outputs"
        one_run([*a.overrides, *MODES["journal + follower (default)"]], outputs)  # store, caches: warm
        modes = list(MODES)
        for r in range(a.rounds):  # rotate the order: no mode always follows the same one
            for m in modes[r % len(modes):] + modes[:r % len(modes)]:
                rows[m].append(one_run([*a.overrides, *MODES[m]], outputs))
                print(f"round {r + 1}/{a.rounds} {m}: {rows[m][-1]}", file=sys.stderr, flush=True)
    med = lambda m, k: statistics.median(x[k] for x in rows[m]) if k in rows[m][0] else float("nan")  # noqa: E731
    off = med("off", "wall_s")
    print(f"\npython -m cnnexp {' '.join(a.overrides) or '(default experiment)'}: medians of {a.rounds} "
          f"alternating runs per mode\n")
    print("| mode | wall s | vs off | tracking calls in the training process | run complete in store after |")
    print("|---|---|---|---|---|")
    for m in MODES:
        w = med(m, "wall_s")
        t, c = med(m, "tracking_s"), med(m, "complete_s")
        print(f"| {m} | {w:.2f} | {100 * (w - off) / off:+.1f}% | "
              f"{'-' if t != t else f'{1000 * t:.0f} ms ({100 * t / w:.1f}% of wall)'} | "
              f"{'-' if c != c else f'{c:.1f} s'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
