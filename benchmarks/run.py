"""cnnexp's benchmark suite (run by hand; never a timed unit test).

    python benchmarks/run.py              # the engine table, 3 rounds, each cell side by side with PyTorch
    python benchmarks/run.py --quick      # the same table in a few minutes (1 round, short timings)
    python benchmarks/run.py --tracking   # also: tracking cost of the CLI in every tracking mode
    python benchmarks/run.py --scaling    # also: epoch time vs train size / batch size (scaling.png)
    python benchmarks/run.py --out f.json # JSON somewhere else (default benchmarks/results/latest.json)

The engine table: for the three presets (conf/model/) and three stacks that are none of them
(benchmarks/stacks.py), built by ``cnnexp.model.build_model`` (engine=fast, threads=auto) and
trained by ``cnnexp.train.fit`` with SGD: training images/s at batch 1, 32, 128 (the second
epoch of a fit: the first warms up, as PyTorch's untimed steps do) and inference images/s at
batch 1000 (``evaluate``). PyTorch CPU (``pip install torch==2.13.0``) runs the
same nets (benchmarks/torch_peer.py) in the same run at each of NCHW/channels_last x 1/all
threads, each setting in a process of its own: every cell is measured for cnnexp and the four
settings back to back (cnnexp first in odd rounds, last in even ones), so that a change in this
shared machine's load falls on both sides; the table gives medians over the rounds and the ratio
to PyTorch's best setting per cell. Also: thread scaling (keras_mnist, batch 128, 1 thread against all, in the
same rounds), one full 60k-image batch-1 epoch of the seed net on Fashion-MNIST through
``python -m cnnexp`` (training seconds, peak RSS, test accuracy), and the post's loop code as
the floor. Throughput rows use random uint8 images (speed does not depend on pixel values).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from cnnexp.engine import available_cores  # noqa: E402
from cnnexp.tracking.follower import wait_idle  # noqa: E402
from stacks import MODELS, model_spec  # noqa: E402

BATCHES = (1, 32, 128)
INFER_BATCH = 1000
FASHION = "/usr/share/datasets/fashion-mnist"
CORES = available_cores()
TORCH_SETTINGS = [(1, False), (1, True), (CORES, False), (CORES, True)]  # (threads, channels_last)
SCALING_ROW = ("keras_mnist", 128)  # thread scaling: training at this batch, 1 thread against all


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- cnnexp ----------------------------------------------------------------------------------

#: images a training cell draws its epochs from (an epoch of seed at batch 128 lasts about 1 s)
TRAIN_POOL = 1 << 17


@functools.lru_cache(maxsize=2)
def random_images(n: int, seed: int = 0):
    """``n`` random uint8 images and labels, read-only (kept for the next cell)."""
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def cnnexp_train_rate(name: str, batch: int, seconds: float, threads="auto") -> float:
    """Images/s of ``fit`` (the real loop: shuffling, train_step, SGD step, loss bookkeeping)
    in the second of two epochs that last at least ``seconds`` each, as PyTorch's timings do
    (or use all of ``TRAIN_POOL`` images). The first epoch warms the model up as PyTorch's 20
    untimed steps warm up its net: forking the engine's workers and first-touching its buffers
    cost a few hundred ms once per run, which is most of an epoch of a few steps (keras_mnist at
    batch 128: 9 steps). The epoch is sized from a small run's warm second epoch and sized
    again while it came out shorter (a first size from a cold epoch once gave seed at batch 32
    a timed epoch of 5 ms)."""
    from cnnexp.model import build_model
    from cnnexp.optimizers import build_optimizer
    from cnnexp.train import fit

    images, labels = random_images(TRAIN_POOL)
    empty = (images[:0], labels[:0])

    def run(n):
        """(images/s, seconds) of the second of two epochs of ``n`` images."""
        model = build_model(model_spec(name), seed=0, scale=1 / 255, shift=-0.5, threads=threads)
        opt = build_optimizer({"type": "sgd"}, 0.005)
        splits = SimpleNamespace(train=(images[:n], labels[:n]), val=empty, test=empty)
        try:
            st = fit(model, opt, splits, epochs=2, batch_size=batch, log=lambda s: None, log_every=10**9)
        finally:
            model.close()
        return st.history[-1]["perf/images_per_sec"], st.history[-1]["perf/epoch_seconds"]

    def size(rate):  # images for an epoch of ``seconds`` at ``rate``, 10% over, whole batches
        n = int(min(len(images), max(batch, rate * seconds * 1.1)))
        return n - n % batch

    rate, _ = run(max(batch * 4, 256))
    for _ in range(3):
        n = size(rate)
        rate, took = run(n)
        if took >= seconds or n + batch > len(images):
            break
    return rate


def cnnexp_infer_rate(name: str, seconds: float) -> float:
    from cnnexp.model import build_model

    model = build_model(model_spec(name), seed=0, scale=1 / 255, shift=-0.5)
    images, labels = random_images(INFER_BATCH, seed=1)
    model.evaluate(images, labels, INFER_BATCH)
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t = time.perf_counter()
        model.evaluate(images, labels, INFER_BATCH)
        times.append(time.perf_counter() - t)
    return INFER_BATCH / statistics.median(times)


def cell_keys(models=MODELS) -> list[str]:
    """The table's cells: ``model/train/batch`` and ``model/infer/1000``."""
    return [f"{m}/{mode}/{b}" for m in models for mode, bs in (("train", BATCHES), ("infer", (INFER_BATCH,))) for b in bs]


def cnnexp_rate(key: str, seconds: float) -> float:
    name, mode, batch = key.split("/")
    return cnnexp_train_rate(name, int(batch), seconds) if mode == "train" else cnnexp_infer_rate(name, seconds)


def scaling_round(seconds: float) -> dict:
    """Training images/s of SCALING_ROW at 1 thread and at all threads, back to back."""
    name, b = SCALING_ROW
    return {t: cnnexp_train_rate(name, b, seconds, threads=t) for t in (1, CORES)}


# -- PyTorch ---------------------------------------------------------------------------------

def torch_available() -> str | None:
    try:
        r = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


TORCH_SERVER = r"""
import json, sys
sys.path.insert(0, {here!r})
from torch_peer import measure
threads, cl = json.loads(sys.argv[1])
for line in iter(sys.stdin.readline, "null\n"):  # cnnexp's forked workers hold this pipe too: no EOF
    key, seconds = json.loads(line)
    name, mode, batch = key.split("/")
    print(json.dumps(measure(name, mode, int(batch), threads, cl, seconds)["img_s"]), flush=True)
"""


class TorchPeer:
    """One PyTorch setting (threads, channels_last) in a process of its own that stays up for
    the whole run and measures one cell per request, so that each cell's PyTorch figures are
    taken right beside cnnexp's (this machine's load changes over minutes)."""

    def __init__(self, threads: int, channels_last: bool):
        self.setting = (threads, channels_last)
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-c", TORCH_SERVER.format(here=str(HERE)),
                                      json.dumps([threads, channels_last])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True)

    def rate(self, key: str, seconds: float) -> float:
        self.proc.stdin.write(json.dumps([key, seconds]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.err.seek(0)
            raise RuntimeError(f"PyTorch {self.setting} failed on {key}: {self.err.read()[-2000:]}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.write("null\n")
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log(f"PyTorch {self.setting} did not exit 60 s after its last cell: killed")
            self.proc.kill()
            self.proc.wait()
        self.err.close()


# -- subprocess runs of the real entry point -------------------------------------------------

def run_cli(args: list[str], outputs: str, env_extra: dict | None = None) -> dict:
    """``python -m cnnexp args`` with its wall time, peak RSS (this child only) and output."""
    env = {**os.environ, "CNNEXP_OUTPUTS": outputs, "CNNEXP_OFFLINE": "1", **(env_extra or {})}
    # Linux carries a process's peak RSS across exec: a child spawned from this (large) process
    # would report this process's peak. /usr/bin/time (small) reports its own child's peak.
    rss_file = Path(outputs) / "peak_rss_kb"
    timer = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] if Path("/usr/bin/time").exists() else []
    t0 = time.perf_counter()
    p = subprocess.Popen([*timer, sys.executable, "-m", "cnnexp", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env, cwd=str(ROOT))
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"python -m cnnexp {' '.join(args)} failed ({p.returncode}):\n{out[-3000:]}")
    busy = wait_idle(outputs, timeout=600)  # the tracking follower (not timed in wall_s)
    logged = time.perf_counter() - t0
    if busy:
        raise RuntimeError(f"background MLflow logger still working after 600 s: {busy}")
    train_s = sum(float(s) for s in re.findall(r"images in ([0-9.]+) s", out))
    acc = re.findall(r"Test Accuracy: ([0-9.]+)", out)
    return {"wall_s": wall, "logged_s": logged, "cpu_s": usage.ru_utime + usage.ru_stime, "train_s": train_s,
            "peak_rss_mb": (int(rss_file.read_text().split()[-1]) if timer else usage.ru_maxrss) / 1024,
            "test_acc": float(acc[-1]) if acc else None}


TRACKING_REPEATS = 7  # run-to-run noise here (+-0.3 s) is larger than the background logger's cost
SAMPLE_5_EPOCHS = ["data=mnist_sample", "data.train_size=4000", "epochs=5"]
TRACKING_MODES = {"background": ["tracking.background=true"], "wait": ["tracking.wait=true"], "in_process": ["tracking.background=false"],
                  "off": ["tracking.enabled=false"]}


def journal_seconds(outputs: str) -> float:
    """``perf/tracking_seconds`` of the newest run under ``outputs``: the time its training
    process spent in tracking calls (from the journal's finish event)."""
    newest = max(Path(outputs).rglob("journal.jsonl"), key=lambda p: p.stat().st_mtime)
    return json.loads(newest.read_text().splitlines()[-1])["seconds"]


def tracking_cost(args: list[str], repeats: int) -> dict:
    """``python -m cnnexp *args`` in each tracking mode, alternating; medians of wall time, of
    the time until the MLflow run is complete, and the share of wall time tracking costs."""
    rows: dict[str, list] = {m: [] for m in TRACKING_MODES}
    with tempfile.TemporaryDirectory() as tmp:
        run_cli(args, tmp)  # warm the data cache / file system once
        modes = list(TRACKING_MODES)
        for r in range(repeats):  # the order rotates, so no mode always follows the same one
            for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                rows[mode].append(run_cli([*args, *TRACKING_MODES[mode]], tmp))
                if mode == "background":
                    rows[mode][-1]["direct_s"] = journal_seconds(tmp)
    med = lambda m, k: statistics.median(r[k] for r in rows[m])  # noqa: E731
    off = med("off", "wall_s")
    res = {"args": args, "wall_s_no_tracking": off, "cpu_s_no_tracking": med("off", "cpu_s"),
           "train_s": med("background", "train_s"),
           "test_acc": rows["background"][-1]["test_acc"], "runs": rows}
    for mode in ("background", "wait", "in_process"):
        wall = med(mode, "wall_s")
        res[mode] = {"wall_s": wall, "logged_s": med(mode, "logged_s"), "overhead_pct": 100 * (wall - off) / wall,
                     "cpu_s": med(mode, "cpu_s")}
    res["background"]["direct_s"] = med("background", "direct_s")
    for mode in TRACKING_MODES:  # the least disturbed run of each mode, and the spread
        walls = [r["wall_s"] for r in rows[mode]]
        res.setdefault(mode, {}).update(wall_min_s=min(walls), wall_max_s=max(walls))
    res["background"]["overhead_pct_min"] = 100 * (res["background"]["wall_min_s"] - res["off"]["wall_min_s"]) \
        / res["background"]["wall_min_s"]
    return res


def full_epoch(repeats: int) -> dict:
    """The 60k-image epoch ``repeats`` times (each in a fresh store): the run with the median
    training time, and every run's training seconds (one run varied by 30% on this machine)."""
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(run_cli(["model=seed", "data=fashion_mnist", "epochs=1", "data.train_size=null",
                                 "data.test_size=null"], tmp))
    runs.sort(key=lambda r: r["train_s"])
    return {**runs[len(runs) // 2], "repeats": len(runs), "train_s_all": [r["train_s"] for r in runs],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def torch_full_epoch() -> dict:
    code = f"import sys, json; sys.path.insert(0, {str(HERE)!r}); from torch_peer import full_epoch; " \
           f"print(json.dumps(full_epoch({FASHION!r}, threads=1)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- the floor: the post's loop code ---------------------------------------------------------

def post_floor(n: int) -> float:
    from tests.helpers import post_reference as post  # the floor: the post's own loop code

    images, labels = random_images(n, seed=2)
    np.random.seed(0)
    conv, pool, softmax = post.Conv3x3(8), post.MaxPool2(), post.Softmax(13 * 13 * 8, 10)
    t0 = time.perf_counter()
    for im, y in zip(images, labels):
        post.train(conv, pool, softmax, im, int(y))
    return n / (time.perf_counter() - t0)


# -- scaling ---------------------------------------------------------------------------------

def load_fashion():
    try:
        from cnnexp.data import load_dataset

        ds = load_dataset("fashion_mnist", dir=None, download=False)
        return ds.train_images, ds.train_labels, "Fashion-MNIST"
    except Exception as e:  # noqa: BLE001
        log(f"(Fashion-MNIST not available: {e}; scaling uses random images)")
        x, y = random_images(60000, seed=3)
        return x, y, "random uint8 images"


def scaling(sizes, batches, batch_size_n: int) -> dict:
    from cnnexp.model import build_model
    from cnnexp.optimizers import build_optimizer
    from cnnexp.train import fit

    images, labels, source = load_fashion()
    empty = (images[:0], labels[:0])

    def epoch_seconds(n, b):
        model = build_model(model_spec("seed"), seed=0, scale=1 / 255, shift=-0.5)
        opt = build_optimizer({"type": "sgd"}, 0.005)
        splits = SimpleNamespace(train=(images[:n], labels[:n]), val=empty, test=empty)
        st = fit(model, opt, splits, epochs=1, batch_size=b, log=lambda s: None, log_every=10**9)
        return st.history[-1]["perf/epoch_seconds"]

    by_size = {n: epoch_seconds(n, 1) for n in sizes}
    by_batch = {b: epoch_seconds(batch_size_n, b) for b in batches}
    xs = np.array(sorted(by_size)) / 1000
    slope, icept = np.polyfit(xs, [by_size[int(x * 1000)] for x in xs], 1)
    res = {"source": source, "by_train_size_batch1": by_size, "by_batch_size": {"n": batch_size_n, **by_batch},
           "slope_s_per_1k": float(slope), "intercept_s": float(icept)}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        a.plot(xs, [by_size[int(x * 1000)] for x in xs], "o-", label="measured")
        a.plot(xs, slope * xs + icept, "--", label=f"fit: {slope:.3f} s per 1k images")
        a.set(xlabel="training images (thousands)", ylabel="seconds per epoch",
              title="seed net, batch 1: epoch time vs train size")
        a.legend()
        bs = sorted(by_batch)
        b.plot(bs, [batch_size_n / by_batch[k] for k in bs], "o-")
        b.set(xscale="log", xlabel="batch size", ylabel="images / s", title=f"seed net, {batch_size_n:,} images")
        b.set_xticks(bs, [str(k) for k in bs])
        fig.tight_layout()
        fig.savefig(HERE / "scaling.png", dpi=100)
        res["plot"] = "benchmarks/scaling.png"
    except ImportError:
        res["plot"] = None
    return res


# -- environment -----------------------------------------------------------------------------

def environment() -> dict:
    import numpy

    from threadpoolctl import threadpool_info

    info = threadpool_info()
    blas = [{k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "threading_layer")}
            for d in info if d.get("user_api") == "blas"]
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
            "cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": numpy.__version__, "blas": blas, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "cnnexp_threads": CORES, "load_start": _load()}


def _load() -> float | None:
    """The machine's 1-minute load average (None where the OS does not tell)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- report ----------------------------------------------------------------------------------

#: the issue's targets: cnnexp / PyTorch's best setting, per model and column
COLUMNS = [f"train/{b}" for b in BATCHES] + [f"infer/{INFER_BATCH}"]
TARGETS = {"seed": (5.0, 3.0, 2.5, 2.5), "lenet5": (1.5, 1.25, 1.25, 1.25), "keras_mnist": (1.25,) * 4}
CUSTOM_TARGET = 1.0
EPOCH_TARGET_S, EPOCH_RSS_MB, SCALING_TARGET = 4.0, 300, 1.6


def ratio(res: dict, key: str):
    t = res.get("torch", {}).get(key)
    if not t:
        return None, None
    best = max(t, key=lambda k: t[k])
    return res["cnnexp"][key] / t[best], best


def table(res: dict) -> str:
    env = res["env"]
    blas = env["blas"][0] if env["blas"] else {}
    load = f"1-minute load average {env.get('load_start')} at the start, {env.get('load_end')} at the end, this run included"
    lines = [f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores, {CORES} usable by this process; {load}), "
             f"Python {env['python']}, numpy {env['numpy']}, {blas.get('internal_api')} {blas.get('version')}; "
             f"cnnexp engine=fast, threads=auto ({CORES}; parallel: {os.environ.get('CNNEXP_PARALLEL', 'processes')}), "
             "BLAS single-threaded inside. "
             f"PyTorch: {res.get('torch_version') or 'not installed (its rows are skipped)'}. "
             f"Medians of {res['rounds']} rounds, each cell measured for cnnexp and PyTorch's four settings back to back"
             f"{' (--quick)' if res.get('quick') else ''}.", "",
             "Ratio cnnexp / PyTorch's best setting (target in brackets):", "",
             "| model | train b1 | train b32 | train b128 | inference b1000 |", "|---|---|---|---|---|"]
    for name in MODELS:
        cells = []
        for i, col in enumerate(COLUMNS):
            r, _ = ratio(res, f"{name}/{col}")
            tgt = TARGETS.get(name, (CUSTOM_TARGET,) * 4)[i]
            cells.append("-" if r is None else f"{r:.2f}x (>= {tgt:g}: {'met' if r >= tgt else 'MISSED'})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| model | measurement | cnnexp img/s | PyTorch best img/s (setting) | ratio |", "|---|---|---:|---:|---:|"]
    for key, med in res["cnnexp"].items():
        name, mode, b = key.split("/")
        r, best = ratio(res, key)
        tcell = f"{res['torch'][key][best]:,.0f} ({best})" if best else "skipped"
        what = f"train, batch {b}" if mode == "train" else f"inference, batch {b}"
        lines.append(f"| {name} | {what} | {med:,.0f} | {tcell} | {'-' if r is None else f'{r:.2f}x'} |")
    if res.get("floor"):
        lines.append(f"| seed | post's loop code (floor), batch 1 | {res['floor']:,.0f} | - | - |")
    lines.append("")
    sc = res.get("scaling_threads")
    if sc:
        one, alln = sc["1"], sc[str(CORES)]
        lines.append(f"- Thread scaling, {SCALING_ROW[0]} training at batch {SCALING_ROW[1]}: {one:,.0f} img/s on 1 thread, "
                     f"{alln:,.0f} on {CORES}: **{alln / one:.2f}x** (target >= {SCALING_TARGET}x: "
                     f"{'met' if alln / one >= SCALING_TARGET else 'MISSED'}; medians of {res['rounds']} rounds, "
                     f"rounds: {', '.join(f'{r[str(CORES)] / r[str(1)]:.2f}x' for r in sc['rounds'])}).")
    f = res.get("full_epoch")
    if f:
        lines.append(f"- Full Fashion-MNIST, seed net, batch 1, 1 epoch (60k images, `python -m cnnexp`, tracking on): "
                     f"**{f['train_s']:.2f} s** of training (target < {EPOCH_TARGET_S:g} s: "
                     f"{'met' if f['train_s'] < EPOCH_TARGET_S else 'MISSED'}; the epoch loop only; median of "
                     f"{f.get('repeats', 1)} runs: {', '.join(f'{t:.2f}' for t in f.get('train_s_all', [f['train_s']]))} s), "
                     f"{f['wall_s']:.1f} s wall, peak RSS **{f['peak_rss_mb']:.0f} MB** (target < {EPOCH_RSS_MB} MB: "
                     f"{'met' if f['peak_rss_mb'] < EPOCH_RSS_MB else 'MISSED'}), test accuracy **{f['test_acc']}**.")
    tf = res.get("torch_full_epoch")
    if tf:
        lines.append(f"- PyTorch, same net and settings (1 thread): {tf['seconds']:.1f} s, test accuracy {tf['test_acc']:.4f}.")
    lines += tracking_lines(res)
    sl = res.get("scaling")
    if sl:
        sizes = ", ".join(f"{n // 1000}k: {v:.2f} s" for n, v in sl["by_train_size_batch1"].items())
        bb = sl["by_batch_size"]
        bats = ", ".join(f"batch {k}: {v:.2f} s" for k, v in bb.items() if k != "n")
        lines.append(f"- Scaling ({sl['source']}, seed net, training time per epoch): batch 1 — {sizes}; "
                     f"linear slope **{sl['slope_s_per_1k']:.3f} s per 1k images** (intercept {sl['intercept_s']:.3f} s). "
                     f"{bb['n']:,} images — {bats}. Plot: `{sl.get('plot')}`.")
    return "\n".join(lines)


def tracking_lines(res: dict) -> list[str]:
    lines = []
    for key, what in (("default_experiment", "Default experiment (`python -m cnnexp`, 3 epochs on 1k/1k)"),
                      ("sample_5_epochs", f"5 epochs on the MNIST sample (`{' '.join(SAMPLE_5_EPOCHS)}`)")):
        d = res.get(key)
        if d:
            bg, wt, ip = d["background"], d["wait"], d["in_process"]
            lines.append(
                f"- {what}, medians of {len(d['runs']['off'])} alternating runs per mode: {bg['wall_s']:.2f} s wall "
                f"with MLflow on ({d['train_s']:.2f} s training+evaluation), {d['wall_s_no_tracking']:.2f} s with "
                f"`tracking.enabled=false` ({bg['overhead_pct']:.1f}% by medians); `tracking.wait=true`: "
                f"{wt['wall_s']:.2f} s; in-process: {ip['wall_s']:.2f} s. Test accuracy {d['test_acc']}.")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the whole table in a few minutes: one round, short timings")
    ap.add_argument("--out", default=str(HERE / "results" / "latest.json"), help="JSON output path")
    ap.add_argument("--rounds", type=int, default=None, help="alternating cnnexp/PyTorch rounds (default 3; quick 1)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    ap.add_argument("--tracking", action="store_true", help="also measure the CLI's tracking cost (slow)")
    ap.add_argument("--scaling", action="store_true", help="also measure epoch time vs train/batch size")
    a = ap.parse_args(argv)
    rounds = a.rounds or (1 if a.quick else 3)
    seconds = 0.3 if a.quick else 1.0
    res = {"env": environment(), "rounds": rounds, "quick": a.quick}
    tv = None if a.no_torch else torch_available()
    res["torch_version"] = tv
    if tv is None:
        log("PyTorch is not installed (pip install torch==2.13.0): skipping its rows")
    keys = cell_keys()
    c_rounds, s_rounds, t_rounds = [], [], {s: [] for s in TORCH_SETTINGS}
    peers = [TorchPeer(*s) for s in TORCH_SETTINGS] if tv else []
    try:
        for r in range(rounds):  # per cell: cnnexp and each PyTorch setting back to back, the order
            log(f"round {r + 1}/{rounds}")  # alternating round by round
            c, t = {}, {p: {} for p in peers}
            for key in keys:
                for side in ([None, *peers] if r % 2 == 0 else [*peers, None]):
                    if side is None:
                        c[key] = cnnexp_rate(key, seconds)
                    else:
                        t[side][key] = side.rate(key, seconds)
                log(f"  {key}: cnnexp {c[key]:,.0f} img/s" + "".join(f", {p.setting} {t[p][key]:,.0f}" for p in peers))
            c_rounds.append(c)
            for p in peers:
                t_rounds[p.setting].append(t[p])
            s_rounds.append({str(k): v for k, v in scaling_round(seconds).items()})
    finally:
        for p in peers:
            p.close()
    res["cnnexp"] = {k: statistics.median(c[k] for c in c_rounds) for k in keys}
    res["cnnexp_rounds"] = c_rounds
    res["scaling_threads"] = {k: statistics.median(r[k] for r in s_rounds) for k in s_rounds[0]}
    res["scaling_threads"]["rounds"] = s_rounds
    if tv:
        res["torch"] = {k: {f"{'CL' if cl else 'NCHW'} {th}t": statistics.median(t[k] for t in t_rounds[(th, cl)])
                            for th, cl in TORCH_SETTINGS} for k in keys}
    if Path(FASHION).is_dir():
        log("full 60k epoch (cnnexp)")
        res["full_epoch"] = full_epoch(1 if a.quick else 3)
        if tv and not a.quick:
            log("full 60k epoch (PyTorch)")
            res["torch_full_epoch"] = torch_full_epoch()
    else:
        log(f"{FASHION} missing (apt-get install dataset-fashion-mnist): skipping the full-epoch row")
    if not a.quick:
        log("floor: the post's loop code")
        res["floor"] = post_floor(300)
    if a.tracking:
        log("default experiment end to end, in each tracking mode")
        res["default_experiment"] = tracking_cost([], 1 if a.quick else TRACKING_REPEATS)
        log("5 epochs on the whole MNIST sample (4k/1k), in each tracking mode")
        res["sample_5_epochs"] = tracking_cost(SAMPLE_5_EPOCHS, 1 if a.quick else TRACKING_REPEATS)
    if a.scaling:
        log("scaling")
        res["scaling"] = scaling((1000, 5000) if a.quick else (1000, 5000, 20000, 60000),
                                 (1, 8, 32, 128), 5000 if a.quick else 20000)
    res["env"]["load_end"] = _load()
    md = table(res)
    print(md)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
