"""A team MLflow tracking server: ``python -m cnnexp.server --db postgresql://... --artifacts DIR``.

Starts ``mlflow server`` with the given backend store (PostgreSQL, or any SQLAlchemy URL) and
proxied artifacts (``--serve-artifacts --artifacts-destination DIR``: clients upload and
download through the server and never need access to DIR), bound to 127.0.0.1 unless
``--host`` is given, optionally behind MLflow's basic auth (``--auth``). When the server
answers, it prints the setting runs need (``tracking.uri=http://HOST:PORT``) and keeps running
until Ctrl-C / SIGTERM, which it passes on to the server. See docs/scaling.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .errors import CnnexpError, ConfigError, TrackingError
from .urls import redact

ADMIN_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cnnexp.server", description=__doc__.split("\n\n")[0])
    p.add_argument("--db", required=True, help="backend store, e.g. postgresql://mlflow:PASS@dbhost:5432/mlflow "
                   "(the password can come from ~/.pgpass or $PGPASSWORD instead)")
    p.add_argument("--artifacts", required=True, help="folder (or s3://...) the server keeps artifacts in")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only; "
                   "0.0.0.0 for the team, with --auth and --allowed-hosts)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    p.add_argument("--allowed-hosts", default=None, help="Host headers to accept (MLflow's DNS-rebinding guard), "
                   "e.g. mlflow.example.com,10.0.0.5:5000")
    p.add_argument("--auth", action="store_true", help=f"MLflow basic auth: users and permissions; the admin's "
                   f"password comes from ${ADMIN_ENV} (never the command line)")
    p.add_argument("--auth-db", default=None, help="the auth user store (default: sqlite file next to "
                   "the artifacts folder: <artifacts>/../mlflow-auth.db)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for the server to answer "
                   "(the first start creates the database tables: minutes on a slow machine)")
    return p.parse_args(argv)


def auth_config(args: argparse.Namespace, folder: Path) -> Path:
    """The ini file MLflow's basic-auth app reads ($MLFLOW_AUTH_CONFIG_PATH)."""
    if not os.environ.get(ADMIN_ENV):
        raise ConfigError(f"--auth needs the admin password in ${ADMIN_ENV} (MLflow ships none); "
                          f"e.g. export {ADMIN_ENV}=$(openssl rand -hex 16)")
    db = args.auth_db or "sqlite:///" + str(folder / "mlflow-auth.db")
    ini = folder / "mlflow-auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = {db}\nadmin_username = admin\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    ini.chmod(0o600)
    return ini


def command(args: argparse.Namespace, artifacts: str) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", args.db,
           "--serve-artifacts", "--artifacts-destination", artifacts,
           "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    if args.allowed_hosts:
        cmd += ["--allowed-hosts", args.allowed_hosts]
    if args.auth:
        cmd += ["--app-name", "basic-auth"]
    return cmd


def wait_ready(proc: subprocess.Popen, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TrackingError(f"mlflow server exited with status {proc.returncode} before answering "
                                f"(is the database reachable? see its output above)")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TrackingError(f"mlflow server did not answer at {url} within {timeout:.0f} s")


def client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def serve(args: argparse.Namespace) -> int:
    if not args.db.startswith(("postgresql", "mysql", "sqlite", "mssql")):
        raise ConfigError(f"--db={args.db!r} is not a database URL; use postgresql://user@host:5432/dbname")
    if "://" in args.artifacts:
        artifacts, folder = args.artifacts, Path.cwd()
    else:
        folder = Path(args.artifacts).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        artifacts, folder = str(folder), folder.parent
    env = dict(os.environ)
    if args.auth:
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config(args, folder))
    proc = subprocess.Popen(command(args, artifacts), env=env)
    url = f"http://{client_host(args.host)}:{args.port}"
    stop = lambda signum, frame: proc.send_signal(signal.SIGTERM)  # noqa: E731
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, stop)
    try:
        wait_ready(proc, url, args.timeout)
    except TrackingError:
        stop(proc)
        raise
    print(f"MLflow server ready at {url} (backend {redact(args.db)}, artifacts {artifacts})", flush=True)
    print(f"tracking.uri={url}", flush=True)
    if args.auth:
        print("clients authenticate with $MLFLOW_TRACKING_USERNAME / $MLFLOW_TRACKING_PASSWORD", flush=True)
    return proc.wait()


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return serve(args)
    except CnnexpError as e:
        print(f"cnnexp: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
