"""``cnnexp ui``: the MLflow UI on the store runs go to (``tracking.uri`` resolution: ``--uri``,
``$MLFLOW_TRACKING_URI``, else ``outputs/mlflow.db``), bound to 127.0.0.1."""

from __future__ import annotations

import argparse
import os
import sys


def command(uri: str, port: int, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cnnexp ui", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db)")
    args = p.parse_args(argv)
    from .tracking import store

    uri = store.resolve_uri(args.uri)
    db = store.sqlite_path(uri)
    if db is not None and not db.is_file():
        print(f"cnnexp: error: no runs yet: there is no MLflow store at {db} (run `cnnexp train` first)",
              file=sys.stderr)
        return 4
    print(f"MLflow UI for {uri} on http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    os.execv(sys.executable, command(uri, args.port))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
