"""cnnexp's benchmark suite (run by hand; never a timed unit test).

    python benchmarks/run.py              # full run (~17 min), writes RESULTS.md too
    python benchmarks/run.py --quick      # a fast smoke run (short timings, no 60k epochs)
    python benchmarks/run.py --out f.json # JSON somewhere else (default benchmarks/results/latest.json)

Measures, for model=seed, lenet5, keras_mnist (the conf/model yaml, built by
``cnnexp.model.build_model``, trained by ``cnnexp.train.fit`` with the configured SGD):
training images/s at batch 1, 8, 32, 128 and inference images/s at batch 1000 (``evaluate``);
the default experiment and 5 epochs on the MNIST sample end to end (``python -m cnnexp``
subprocesses, alternating the tracking modes: background logger, ``tracking.wait=true``,
in-process, off; the time until the MLflow run is complete is measured too);
one full 60k-image batch-1 epoch of the seed net on Fashion-MNIST with its peak memory and test
accuracy; the post's loop code as the floor; time per epoch against train size and batch size
(plot: benchmarks/scaling.png, with the linear slope). PyTorch CPU (optional: ``pip install
torch==2.13.0``) runs the same nets in the same run, alternating with cnnexp round by round, at
each of NCHW/channels_last x 1/2 threads; the table gives medians, PyTorch's best setting per
row and the ratio. Throughput rows use random uint8 images (speed does not depend on pixel
values); the 60k epoch uses the real data.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
sys.path.insert(0, str(ROOT / "tests"))  # post_reference.py (the floor)
from cnnexp.tracking.follower import wait_idle  # noqa: E402

MODELS = ("seed", "lenet5", "keras_mnist")
BATCHES = (1, 8, 32, 128)
INFER_BATCH = 1000
FASHION = "/usr/share/datasets/fashion-mnist"
TORCH_SETTINGS = [(1, False), (1, True), (2, False), (2, True)]  # (threads, channels_last)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- cnnexp ----------------------------------------------------------------------------------

def model_spec(name: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"))


def random_images(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


def cnnexp_train_rate(name: str, batch: int, seconds: float) -> float:
    """Images/s of ``fit`` (the real loop: shuffling, train_step, SGD step, loss bookkeeping),
    over an epoch sized to last about ``seconds`` after a calibration epoch."""
    from cnnexp.model import build_model
    from cnnexp.optimizers import build_optimizer
    from cnnexp.train import fit

    images, labels = random_images(65536)
    empty = (images[:0], labels[:0])

    def run(n):
        model = build_model(model_spec(name), seed=0, scale=1 / 255, shift=-0.5)
        opt = build_optimizer({"type": "sgd"}, 0.005)
        splits = SimpleNamespace(train=(images[:n], labels[:n]), val=empty, test=empty)
        st = fit(model, opt, splits, epochs=1, batch_size=batch, log=lambda s: None, log_every=10**9)
        return st.history[-1]["perf/images_per_sec"]

    n0 = max(batch * 4, 256)
    rate = run(n0)
    n = int(min(len(images), max(n0, rate * seconds)))
    n -= n % batch
    return run(max(n, batch))


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


def cnnexp_round(seconds: float, models=MODELS) -> dict:
    out = {}
    for name in models:
        for b in BATCHES:
            out[f"{name}/train/{b}"] = cnnexp_train_rate(name, b, seconds)
        out[f"{name}/infer/{INFER_BATCH}"] = cnnexp_infer_rate(name, seconds)
    return out


# -- PyTorch ---------------------------------------------------------------------------------

def torch_available() -> str | None:
    try:
        r = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


TORCH_ROUND = r"""
import json, sys
sys.path.insert(0, {here!r})
from torch_peer import measure
rows, threads, cl, seconds = json.loads(sys.argv[1])
out = {{}}
for key in rows:
    name, mode, batch = key.split("/")
    out[key] = measure(name, mode, int(batch), threads, cl, seconds)["img_s"]
print(json.dumps(out))
"""


def torch_round(keys, threads: int, channels_last: bool, seconds: float) -> dict:
    code = TORCH_ROUND.format(here=str(HERE))
    r = subprocess.run([sys.executable, "-c", code, json.dumps([keys, threads, channels_last, seconds])],
                       capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"torch round failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- subprocess runs of the real entry point -------------------------------------------------

def run_cli(args: list[str], outputs: str, env_extra: dict | None = None) -> dict:
    """``python -m cnnexp args`` with its wall time, peak RSS (this child only) and output."""
    env = {**os.environ, "CNNEXP_OUTPUTS": outputs, "CNNEXP_OFFLINE": "1", **(env_extra or {})}
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "cnnexp", *args], stdout=subprocess.PIPE,
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
            "peak_rss_mb": usage.ru_maxrss / 1024,
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


def full_epoch() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return run_cli(["model=seed", "data=fashion_mnist", "epochs=1", "data.train_size=null",
                        "data.test_size=null"], tmp)


def torch_full_epoch() -> dict:
    code = f"import sys, json; sys.path.insert(0, {str(HERE)!r}); from torch_peer import full_epoch; " \
           f"print(json.dumps(full_epoch({FASHION!r}, threads=1)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- the floor: the post's loop code ---------------------------------------------------------

def post_floor(n: int) -> float:
    import post_reference as post

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
            "cnnexp_threads": __import__("cnnexp.model", fromlist=["x"]).default_threads()}


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def coretype_difference(seconds: float) -> dict:
    """Seed net batch 1 and 128 in a child with OPENBLAS_CORETYPE unset (if it is set here)."""
    if not os.environ.get("OPENBLAS_CORETYPE"):
        return {"note": "OPENBLAS_CORETYPE is not set on this machine; OpenBLAS picks its kernel itself"}
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    code = f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import run; " \
           f"print(json.dumps({{b: run.cnnexp_train_rate('seed', b, {seconds}) for b in (1, 128)}}))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return {"without_coretype": json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else r.stderr[-500:]}


# -- report ----------------------------------------------------------------------------------

TARGETS = {"seed/train/1": 4.0, "seed/train/32": 2.5, "seed/train/128": 2.0, "seed/infer/1000": 2.0,
           "keras_mnist/train/32": 1.0, "keras_mnist/train/128": 1.0}


def table(res: dict) -> str:
    env = res["env"]
    blas = env["blas"][0] if env["blas"] else {}
    lines = [f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores), Python {env['python']}, "
             f"numpy {env['numpy']}, {blas.get('internal_api')} {blas.get('version')} "
             f"({blas.get('architecture')} kernel, {blas.get('num_threads')} BLAS threads by default; cnnexp runs "
             f"BLAS single-threaded and uses {env['cnnexp_threads']} threads itself), "
             f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE'] or 'unset'}. "
             f"PyTorch: {res.get('torch_version') or 'not installed (its rows are skipped)'}. "
             f"Medians of {res['rounds']} alternating rounds.", ""]
    lines += ["| model | measurement | cnnexp img/s | PyTorch best img/s (setting) | ratio | target |",
              "|---|---|---:|---:|---:|---|"]
    for key, med in res["cnnexp"].items():
        name, mode, b = key.split("/")
        t = res.get("torch", {}).get(key)
        if t:
            best = max(t, key=lambda s: t[s])
            ratio = med / t[best]
            tcell, rcell = f"{t[best]:,.0f} ({best})", f"{ratio:.2f}x"
        else:
            tcell, rcell, ratio = "skipped", "-", None
        tgt = TARGETS.get(key)
        tg = "-" if tgt is None else (f">= {tgt:g}x: " + ("met" if ratio and ratio >= tgt else "MISSED" if ratio else "n/a"))
        what = f"train, batch {b}" if mode == "train" else f"inference, batch {b}"
        lines.append(f"| {name} | {what} | {med:,.0f} | {tcell} | {rcell} | {tg} |")
    if res.get("floor"):
        lines.append(f"| seed | post's loop code (floor), batch 1 | {res['floor']:,.0f} | - | - | - |")
    lines.append("")
    for key, what in (("default_experiment", "Default experiment (`python -m cnnexp`, 3 epochs on 1k/1k; each "
                                             "mode passes one `tracking.*` override, so Hydra parses overrides in all)"),
                      ("sample_5_epochs", f"5 epochs on the MNIST sample (`{' '.join(SAMPLE_5_EPOCHS)}`)")):
        d = res.get(key)
        if d:
            bg, wt, ip = d["background"], d["wait"], d["in_process"]
            lines.append(
                f"- {what}, medians of {len(d['runs']['off'])} alternating runs per mode: "
                f"**{bg['wall_s']:.2f} s wall** with MLflow on (target < 10 s for the default), "
                f"{d['train_s']:.2f} s of it training+evaluation; {d['wall_s_no_tracking']:.2f} s with "
                f"`tracking.enabled=false`, so tracking costs **{bg['overhead_pct']:.1f}%** of wall time "
                f"by medians, {bg['overhead_pct_min']:.1f}% by the fastest runs (runs of one mode spread over "
                f"{bg['wall_min_s']:.2f}-{bg['wall_max_s']:.2f} s on, {d['off']['wall_min_s']:.2f}-"
                f"{d['off']['wall_max_s']:.2f} s off) "
                f"(target < 5%; CPU time of the training process {bg['cpu_s']:.2f} s against "
                f"{d['cpu_s_no_tracking']:.2f} s; its tracking calls took {1000 * bg['direct_s']:.0f} ms, "
                f"{100 * bg['direct_s'] / bg['wall_s']:.1f}% of its wall time). The background logger had the run complete in MLflow "
                f"{bg['logged_s']:.2f} s after the start. With `tracking.wait=true`: {wt['wall_s']:.2f} s ({wt['overhead_pct']:.1f}%); "
                f"logging in-process (`tracking.background=false`): {ip['wall_s']:.2f} s ({ip['overhead_pct']:.1f}%). "
                f"Test accuracy {d['test_acc']}.")
    f = res.get("full_epoch")
    if f:
        lines.append(f"- Full Fashion-MNIST, seed net, batch 1, 1 epoch (60k images, tracking on): "
                     f"**{f['train_s']:.2f} s** of training (target < 5 s; the epoch loop only, the 10k-image test pass excluded), "
                     f"{f['wall_s']:.1f} s wall, peak RSS **{f['peak_rss_mb']:.0f} MB** (target < 700 MB), "
                     f"test accuracy **{f['test_acc']}** (target >= 0.84).")
    tf = res.get("torch_full_epoch")
    if tf:
        lines.append(f"- PyTorch, same net and settings (1 thread): {tf['seconds']:.1f} s, test accuracy {tf['test_acc']:.4f}.")
    s = res.get("scaling")
    if s:
        sizes = ", ".join(f"{n // 1000}k: {v:.2f} s" for n, v in s["by_train_size_batch1"].items())
        bb = s["by_batch_size"]
        bats = ", ".join(f"batch {k}: {v:.2f} s" for k, v in bb.items() if k != "n")
        lines.append(f"- Scaling ({s['source']}, seed net, training time per epoch): batch 1 — {sizes}; "
                     f"linear slope **{s['slope_s_per_1k']:.3f} s per 1k images** (intercept {s['intercept_s']:.3f} s). "
                     f"{bb['n']:,} images — {bats}. Plot: `{s.get('plot')}`.")
    c = res.get("coretype")
    if c:
        lines.append(f"- OPENBLAS_CORETYPE: {c.get('note') or c}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short timings, one round, no 60k-image epochs")
    ap.add_argument("--out", default=str(HERE / "results" / "latest.json"), help="JSON output path")
    ap.add_argument("--rounds", type=int, default=None, help="alternating cnnexp/PyTorch rounds (default 3; quick 1)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    a = ap.parse_args(argv)
    rounds = a.rounds or (1 if a.quick else 3)
    seconds = 0.4 if a.quick else 1.2
    res = {"env": environment(), "rounds": rounds, "quick": a.quick}
    tv = None if a.no_torch else torch_available()
    res["torch_version"] = tv
    if tv is None:
        log("PyTorch is not installed (pip install torch==2.13.0): skipping its rows")
    c_rounds, t_rounds = [], {s: [] for s in TORCH_SETTINGS}
    for r in range(rounds):  # A/B alternation: cnnexp, then each PyTorch setting, per round
        log(f"round {r + 1}/{rounds}: cnnexp")
        c_rounds.append(cnnexp_round(seconds))
        if tv:
            for s in TORCH_SETTINGS:
                log(f"round {r + 1}/{rounds}: PyTorch threads={s[0]} channels_last={s[1]}")
                t_rounds[s].append(torch_round(list(c_rounds[-1]), s[0], s[1], seconds))
    keys = list(c_rounds[0])
    res["cnnexp"] = {k: statistics.median(c[k] for c in c_rounds) for k in keys}
    res["cnnexp_rounds"] = c_rounds
    if tv:
        res["torch"] = {k: {f"{'CL' if cl else 'NCHW'} {th}t": statistics.median(t[k] for t in t_rounds[(th, cl)])
                            for th, cl in TORCH_SETTINGS} for k in keys}
    log("floor: the post's loop code")
    res["floor"] = post_floor(100 if a.quick else 300)
    log("default experiment end to end, in each tracking mode")
    res["default_experiment"] = tracking_cost([], 1 if a.quick else TRACKING_REPEATS)
    log("5 epochs on the whole MNIST sample (4k/1k), in each tracking mode")
    res["sample_5_epochs"] = tracking_cost(SAMPLE_5_EPOCHS, 1 if a.quick else TRACKING_REPEATS)
    if not a.quick:
        if Path(FASHION).is_dir():
            log("full 60k epoch (cnnexp)")
            res["full_epoch"] = full_epoch()
            if tv:
                log("full 60k epoch (PyTorch)")
                res["torch_full_epoch"] = torch_full_epoch()
        else:
            log(f"{FASHION} missing: skipping the full-epoch rows")
    log("scaling")
    res["scaling"] = scaling((1000, 5000) if a.quick else (1000, 5000, 20000, 60000),
                             (1, 8, 32, 128), 5000 if a.quick else 20000)
    res["coretype"] = coretype_difference(seconds)
    md = table(res)
    print(md)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    if not a.quick:
        (HERE / "RESULTS.md").write_text("# Benchmark results\n\nWritten by `python benchmarks/run.py`.\n\n" + md + "\n")
    log(f"wrote {out}" + ("" if a.quick else " and benchmarks/RESULTS.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
