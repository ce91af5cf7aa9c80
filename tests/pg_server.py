"""A throwaway PostgreSQL server for the tests: initdb and pg_ctl in a temporary directory, listening on
a unix socket in that directory only (no TCP port), stopped and deleted afterwards.

PostgreSQL refuses to run as root, so under root the server runs as the `postgres` system user
(or `nobody`), which owns the temporary directory.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PORT = 5432  # only names the socket file inside the private directory; nothing listens on TCP


def find_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl: $PG_BIN, Debian's /usr/lib/postgresql/<v>/bin (newest), or PATH."""
    candidates = [os.environ.get("PG_BIN", "")]
    def version(path: str) -> list[int]:
        return [int(x) for x in Path(path).parent.name.split(".") if x.isdigit()]

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


def _unprivileged_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and there is neither a 'postgres' nor a 'nobody' user to run PostgreSQL as")


class ThrowawayPostgres:
    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.user = _unprivileged_user()
        self.dir = Path(tempfile.mkdtemp(prefix="cb-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.started = False

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        kwargs = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {**os.environ, "HOME": str(self.dir), "LC_ALL": "C", "LANG": "C"}
        return subprocess.run(list(args), cwd=self.dir, env=env, capture_output=True, text=True, check=check,
                              timeout=timeout, **kwargs)

    def start(self) -> "ThrowawayPostgres":
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        try:
            self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "bench", "-A", "trust", "-E", "UTF8",
                      "--no-sync", "--no-instructions")
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"initdb failed: {e.stderr or e.stdout}") from None
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = ''\nunix_socket_directories = '{self.dir}'\nport = {PORT}\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 40\n"
                       "shared_buffers = 16MB\n")
        try:
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                      "start")
        except subprocess.CalledProcessError as e:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {e.stderr or e.stdout}\n{log}") from None
        self.started = True
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 120.0) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(host=str(self.dir), port=PORT, user="bench", dbname="postgres").close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(host=str(self.dir), port=PORT, user="bench", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://bench@/{database}?host={self.dir}&port={PORT}"

    def stop(self) -> None:
        try:
            if self.started:
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop",
                          check=False, timeout=60)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
