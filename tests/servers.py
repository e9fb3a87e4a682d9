"""Private, throw-away PostgreSQL and MariaDB servers that tests may restart and crash.

The shared servers (127.0.0.1:5432 and :3306) serve every test run at once and must
never be restarted; the restart tests start their own instance in a temporary
directory on a free port, and tear it down afterwards. PostgreSQL refuses to run as
root, so it runs as the ``postgres`` user (``runuser``) when the tests run as root.

Binaries are looked up in the usual Debian locations (override with
``MEMSTATE_SQL_PG_BIN`` = the directory holding ``initdb``/``pg_ctl``, and
``MEMSTATE_SQL_MARIADBD`` / ``MEMSTATE_SQL_MARIADB_INSTALL_DB``); a missing binary
skips the test with the reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return
        except Exception as exc:  # retried until the deadline
            last = exc
            time.sleep(0.2)
        finally:
            engine.dispose()
    raise RuntimeError(f"server at {url} did not come up: {last}")


class PrivateServer:
    url: str

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, *, crash: bool = False) -> None:
        raise NotImplementedError

    def restart(self, *, crash: bool = False) -> None:
        self.stop(crash=crash)
        self.start()

    def destroy(self) -> None:
        raise NotImplementedError


def pg_bin() -> Path | None:
    configured = os.environ.get("MEMSTATE_SQL_PG_BIN")
    candidates = [configured] if configured else sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


class PostgresServer(PrivateServer):
    """``initdb`` in a temp dir, ``pg_ctl start`` on a free port; stop = fast shutdown, crash = immediate."""

    def __init__(self) -> None:
        bindir = pg_bin()
        if bindir is None:
            raise FileNotFoundError("no PostgreSQL server binaries (pg_ctl) found; set MEMSTATE_SQL_PG_BIN")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="memstate-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.root)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        wait_until_up(self.url)

    def stop(self, *, crash: bool = False) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate" if crash else "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class MariaDBServer(PrivateServer):
    """``mariadb-install-db`` in a temp dir, ``mariadbd`` on a free port; stop = SIGTERM, crash = SIGKILL."""

    def __init__(self) -> None:
        self.mariadbd = os.environ.get("MEMSTATE_SQL_MARIADBD") or shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        install = os.environ.get("MEMSTATE_SQL_MARIADB_INSTALL_DB") or shutil.which("mariadb-install-db")
        if not install or not Path(self.mariadbd).exists():
            raise FileNotFoundError("no MariaDB server binaries (mariadbd, mariadb-install-db) found")
        self.root = Path(tempfile.mkdtemp(prefix="memstate-mariadb-"))
        self.data = self.root / "data"
        self.port = free_port()
        subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={self.data}",
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ],
            check=True,
            capture_output=True,
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"mysql+pymysql://root@127.0.0.1:{self.port}/memstate"

    def start(self) -> None:
        log = open(self.root / "log", "ab")  # noqa: SIM115 - handed to the server process
        self.proc = subprocess.Popen(
            [
                self.mariadbd,
                "--no-defaults",
                f"--datadir={self.data}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.root / 'sock'}",
                f"--pid-file={self.root / 'pid'}",
                "--user=root",
                "--skip-grant-tables",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
                "--innodb-flush-log-at-trx-commit=2",
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        server = self.url.rsplit("/", 1)[0] + "/"
        wait_until_up(server)
        engine = sa.create_engine(server)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("CREATE DATABASE IF NOT EXISTS memstate CHARACTER SET utf8mb4"))
        finally:
            engine.dispose()

    def stop(self, *, crash: bool = False) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
        self.proc.wait(60)
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def private_server(db: str) -> PrivateServer:
    return PostgresServer() if db == "postgresql" else MariaDBServer()
