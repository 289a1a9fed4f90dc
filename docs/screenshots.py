"""Remake the MLflow UI screenshots in docs/img/ with headless Chromium.

    pip install playwright && python docs/screenshots.py   # + Debian's chromium (apt-get install chromium)
    python docs/screenshots.py --uri sqlite:///outputs/mlflow.db   # photograph an existing store

Runs a small sweep into a temporary store (three learning rates, two epochs), starts
``mlflow ui`` on 127.0.0.1 over it, and photographs three pages: the experiment's run list,
the sweep's comparison view, and one run's learning-curve plot. Nothing outside the temporary
folder and docs/img/ is written; the server is stopped at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update", "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"screenshots: mlflow ui exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    sys.exit(f"screenshots: mlflow ui did not answer on {url} within {timeout:.0f} s")


UI_CLOSE_ASSISTANT = "[data-component-id='mlflow.assistant.chat_panel.close']"


def shoot_all(base: str, exp_id: str, run_ids: list[str]) -> None:
    """Drive Chromium through the three pages (Playwright, with Debian's chromium binary)."""
    import re

    from playwright.sync_api import sync_playwright

    q = urllib.parse.quote
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        page.set_default_timeout(90_000)
        runs_url = f"{base}/#/experiments/{exp_id}/runs"
        page.goto(runs_url)
        page.get_by_text("Model training").first.click()  # the UI opens in GenAI mode
        try:
            page.locator(UI_CLOSE_ASSISTANT).click(timeout=20_000)
        except Exception:  # noqa: BLE001  (no assistant panel in this MLflow version)
            pass
        page.goto(runs_url)
        page.get_by_text(re.compile(r"[1-9]\d* matching runs")).wait_for()
        page.get_by_role("button", name="Columns", exact=True).click()
        for name in ("test/acc", "test/loss", "train/epoch_acc", "lr"):  # metric and param columns
            node = page.locator(f".du-bois-light-tree-treenode:has(span.du-bois-light-tree-title:text-is('{name}'))")
            if node.count():
                node.first.locator(".du-bois-light-tree-checkbox").click()
        page.keyboard.press("Escape")
        page.locator("[col-id='attributes.`Run Name`'] button").first.click()  # unfold the sweep's jobs
        page.wait_for_timeout(3000)
        save(page, "run_list.png", runs_url)
        compare = f"{base}/#/compare-runs?runs={q(json.dumps(run_ids))}&experiments={q(json.dumps([exp_id]))}"
        page.goto(compare)
        page.get_by_text("Parallel Coordinates Plot").wait_for()
        page.wait_for_timeout(3000)
        save(page, "sweep_compare.png", compare)
        plot = f"{base}/#/experiments/{exp_id}/runs/{run_ids[0]}/artifacts/plots/learning_curves.png"
        page.goto(plot)
        page.get_by_text("learning_curves.png").first.wait_for()
        page.wait_for_timeout(3000)
        save(page, "run_plots.png", plot)
        browser.close()


def save(page, name: str, url: str) -> None:
    page.screenshot(path=str(OUT / name))
    print(f"wrote docs/img/{name} <- {url}")


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uri", help="an existing store with a sweep in experiment 'cnnexp' (default: make one)")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit("screenshots: chromium not found; install it with: apt-get install chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        sys.exit("screenshots: needs Playwright's Python client: pip install playwright (no browser download)")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cnnexp-shots-") as tmp:
        tmp = Path(tmp)
        uri = args.uri or f"sqlite:///{tmp / 'mlflow.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        if not args.uri:
            subprocess.run([sys.executable, "-m", "cnnexp", "-m", "lr=0.002,0.005,0.01", "epochs=2",
                            f"tracking.uri={uri}", "tracking.wait=true", f"hydra.sweep.dir={tmp / 'multirun'}"],
                           check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                  cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            wait_healthy(base, server)
            import mlflow

            mlflow.set_tracking_uri(uri)
            runs = mlflow.search_runs(experiment_names=["cnnexp"])
            exp_id = str(runs.experiment_id[0])
            children = runs[runs["tags.mlflow.parentRunId"].notna()]
            ids = list(children.run_id)
            shoot_all(base, exp_id, ids)
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
