"""Put several runs of ``benchmarks/run.py`` side by side (run by hand):

    python benchmarks/combine.py results/a.json results/b.json

Prints, per model and column, each run's ratio cnnexp / PyTorch's best setting and the median
over the runs, then the thread scaling and the 60k epoch of each run.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import COLUMNS, CUSTOM_TARGET, EPOCH_RSS_MB, EPOCH_TARGET_S, SCALING_TARGET, TARGETS, ratio  # noqa: E402
from stacks import MODELS  # noqa: E402


def verdict(value, ok: bool) -> str:
    return f"{value} ({'met' if ok else 'MISSED'})"


def main(paths: list[str]) -> int:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    when = ", ".join(r["env"]["date"] for r in runs)
    print(f"Ratios cnnexp / PyTorch's best setting, runs of {when}; median of the runs (target):\n")
    print("| model | train b1 | train b32 | train b128 | inference b1000 |\n|---|---|---|---|---|")
    for name in MODELS:
        cells = []
        for i, col in enumerate(COLUMNS):
            rs = [ratio(r, f"{name}/{col}")[0] for r in runs]
            rs = [x for x in rs if x is not None]
            if not rs:
                cells.append("-")
                continue
            tgt = TARGETS.get(name, (CUSTOM_TARGET,) * 4)[i]
            med = statistics.median(rs)
            cells.append(f"{' / '.join(f'{x:.2f}' for x in rs)}: **{verdict(f'{med:.2f}x', med >= tgt)}** (>= {tgt:g})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for r in runs:
        sc, f = r.get("scaling_threads"), r.get("full_epoch")
        parts = [r["env"]["date"]]
        if sc:
            one, alln = sc["1"], max((v for k, v in sc.items() if k not in ("1", "rounds")), default=None)
            parts.append(f"keras_mnist b128 thread scaling {one:,.0f} -> {alln:,.0f} img/s: "
                         + verdict(f"{alln / one:.2f}x", alln / one >= SCALING_TARGET))
        if f:
            parts.append("60k epoch " + verdict(f"{f['train_s']:.2f} s", f["train_s"] < EPOCH_TARGET_S)
                         + ", peak RSS " + verdict(f"{f['peak_rss_mb']:.0f} MB", f["peak_rss_mb"] < EPOCH_RSS_MB)
                         + f", test accuracy {f['test_acc']}")
        print("- " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
