"""A throwaway PostgreSQL server for tests: Debian's postgresql binaries, a temp folder,
127.0.0.1 and a free port, password (scram) auth, run as a non-root user.

``PostgresServer.start(folder)`` returns a running server (``url(db)`` gives a SQLAlchemy URL)
or raises ``Unavailable`` saying why; ``stop()`` shuts it down. Used by tests/conftest.py.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import socket
import subprocess
from pathlib import Path

RUN_AS = "postgres"  # Debian's postgresql package creates this user; initdb refuses to run as root


class Unavailable(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise Unavailable("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl; "
                          "apt-get install postgresql)")
    return Path(found[-1]).parent


class PostgresServer:
    def __init__(self, folder: Path, port: int, password: str, bindir: Path, user: str | None):
        self.folder, self.port, self.password, self.bindir, self.user = folder, port, password, bindir, user

    def _run(self, *cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run(prefix + list(cmd), capture_output=True, text=True, check=check, timeout=timeout,
                              cwd=self.folder)

    @classmethod
    def start(cls, folder: Path, databases: tuple[str, ...] = ("mlflow", "optuna")) -> "PostgresServer":
        bindir = pg_bin()
        user = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(RUN_AS)
            except KeyError:
                raise Unavailable(f"running as root and there is no {RUN_AS!r} user to run PostgreSQL as") from None
            user = RUN_AS
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, pw.pw_uid, pw.pw_gid)
        self = cls(folder, free_port(), secrets.token_hex(12), bindir, user)
        pwfile = folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if user:
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        try:
            self._run(str(bindir / "initdb"), "-D", "data", "-U", "postgres", "--auth=scram-sha-256",
                      f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale")
            self._run(str(bindir / "pg_ctl"), "-D", "data", "-l", "postgres.log", "-w", "-t", "60", "start",
                      "-o", f"-h 127.0.0.1 -p {self.port} -k {folder} -c max_connections=200")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            log = (folder / "postgres.log").read_text() if (folder / "postgres.log").exists() else ""
            raise Unavailable(f"PostgreSQL did not start: {getattr(e, 'stderr', '') or e} {log[-500:]}") from None
        for db in databases:
            self.psql(f"CREATE DATABASE {db}")
        return self

    def psql(self, sql: str, db: str = "postgres") -> str:
        p = subprocess.run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                            "-d", db, "-At", "-c", sql], capture_output=True, text=True, env=self.env(), timeout=60)
        if p.returncode:
            raise RuntimeError(f"psql {sql!r}: {p.stderr}")
        return p.stdout

    def url(self, db: str, password: bool = False) -> str:
        """The database's URL; without the password, clients take it from $PGPASSWORD (``env``)."""
        user = f"postgres:{self.password}" if password else "postgres"
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password}

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", "data", "-m", "fast", "-w", "stop", check=False)

