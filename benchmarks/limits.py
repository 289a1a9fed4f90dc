"""How fast, and in how much memory, cnnexp refuses work that would not fit or is invalid.

    python benchmarks/limits.py [--repeats 3]

Each case runs in a fresh interpreter (``cnnexp.cli.main`` or ``cnnexp.preflight.check``),
``--repeats`` times, the cases interleaved; the table shows the median wall time of the call
(imports excluded), the median of the whole process (start to exit), the median CPU time of
the process (user + system: less sensitive to a busy machine than wall time) and the peak RSS
of the process (VmHWM: ``ru_maxrss`` would count the forking parent's). Cases:

* ``single run check``: the pre-run check of one default run (the cost every start pays);
* ``10,000-job sweep, last job bad``: ``model.layers.0.filters`` x ``eval_batch_size``, 100 x 100
  values, where only the last combination exceeds ``memory_limit_mb``;
* ``10,000-job sweep, all good``: the same without the bad combination (every job checked);
* ``gzip bomb``: a 2 MB gzip whose IDX header promises 10^9 images, as ``data=idx``;
* ``huge model``: ``model.layers.0.filters=100000``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILTERS = ",".join(map(str, range(1, 100)))
EVAL = ",".join(map(str, range(1, 100))) + ",5000"
SWEEP = ["-m", "memory_limit_mb=20000", f"eval_batch_size={EVAL}"]

CHILD = """
import json, os, resource, sys, time
t0 = time.perf_counter()
kind, argv = sys.argv[1], json.loads(sys.argv[2])
if kind == "check":
    from cnnexp.paths import conf_dir
    from cnnexp.preflight import check
    from cnnexp.errors import CnnexpError
    try:
        out = check(argv, str(conf_dir()))
    except CnnexpError as e:
        out = "refused: " + str(e)[:60]
else:
    from cnnexp.cli import main
    t0 = time.perf_counter()
    try:
        main(argv)
        out = 0
    except SystemExit as e:
        out = e.code
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": time.perf_counter() - t0, "out": out, "cpu": ru.ru_utime + ru.ru_stime,
                  # VmHWM starts afresh at exec; ru_maxrss keeps the forking parent's peak
                  "maxrss_mb": [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
                  if os.path.exists("/proc/self/status") else ru.ru_maxrss / 1024}))
"""


def bomb_folder(tmp: Path) -> Path:
    from cnnexp.data.idx import STANDARD_FILES, write_idx

    data = tmp / "bomb"
    data.mkdir()
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(data / STANDARD_FILES[0], "wb") as f:
        n = f.write(comp.compress(struct.pack(">HBB3I", 0, 8, 3, 10**9, 28, 28)))
        while n < 2 * 2**20:
            n += f.write(comp.compress(bytes(2**20)))
        f.write(comp.flush())
    for name, arr in zip(STANDARD_FILES[1:], (np.zeros(10, np.uint8), np.zeros((10, 28, 28), np.uint8),
                                              np.zeros(10, np.uint8))):
        write_idx(data / name, arr)
    return data


def run(kind: str, argv: list[str], env: dict) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD, kind, json.dumps(argv)], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=600)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{kind} {argv[:3]} failed: {p.stderr[-500:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["process"] = wall
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "CNNEXP_OFFLINE": "1", "CNNEXP_OUTPUTS": str(tmp / "outputs"),
               "PYTHONPATH": str(ROOT)}
        cases = {
            "single run check": ("check", ["tracking.enabled=false"]),
            "10,000-job sweep, last job bad": ("check", SWEEP + [f"model.layers.0.filters={FILTERS},3000"]),
            "10,000-job sweep, all good": ("check", SWEEP + [f"model.layers.0.filters={FILTERS},100"]),
            "gzip bomb (2 MB, 10^9 images)": ("main", ["data=idx", f"data.dir={bomb_folder(tmp)}",
                                                       "tracking.enabled=false"]),
            "huge model (filters=100000)": ("main", ["model.layers.0.filters=100000", "tracking.enabled=false"]),
        }
        results: dict[str, list[dict]] = {k: [] for k in cases}
        for _ in range(a.repeats):
            for name, (kind, argv) in cases.items():
                results[name].append(run(kind, argv, env))
    print(f"{'case':34} {'call s':>8} {'process s':>10} {'process CPU s':>14} {'max RSS MB':>11}  result")
    for name, rs in results.items():
        print(f"{name:34} {statistics.median(r['seconds'] for r in rs):8.2f} "
              f"{statistics.median(r['process'] for r in rs):10.2f} {statistics.median(r['cpu'] for r in rs):14.2f} "
              f"{max(r['maxrss_mb'] for r in rs):11.0f}  "
              f"{rs[-1]['out']}")
    print(f"(median of {a.repeats}, cases interleaved; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
