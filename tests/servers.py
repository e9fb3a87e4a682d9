"""Private, throw-away PostgreSQL and MariaDB servers for the test suite.

Two uses:

* **The session's databases** (:class:`SessionServers`): without a URL in the environment, the suite
  starts one private PostgreSQL and one private MariaDB the first time a test needs them, shares them
  with every pytest-xdist worker of the run, and stops them (by PID) when the run ends.
* **Restart and crash tests** (``tests/test_restart.py``) start instances of their own, which they
  restart and kill; the session's servers and the machine's shared ones are never restarted.

Every server lives in a temporary directory, listens on a free port of 127.0.0.1 only, and is
stopped by the PID it recorded (never by name).

Binaries: PostgreSQL from ``MEMSTATE_SQL_PG_BIN`` (the directory holding ``initdb``/``pg_ctl``), else
``pg_config --bindir``, else ``/usr/lib/postgresql/*/bin`` (newest first), else the binaries shipped by
the ``pgserver`` wheel (a test dependency). PostgreSQL refuses to run as root: when the tests run as
root it runs as the ``postgres`` user, or ``nobody`` where there is none (``runuser``). MariaDB from
``MEMSTATE_SQL_MARIADBD`` / ``MEMSTATE_SQL_MARIADB_INSTALL_DB``, else ``mariadbd`` and
``mariadb-install-db`` on the PATH (or in ``/usr/sbin``); it has no pip-installable fallback.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

MARIADB_HINT = (
    "install the MariaDB server (Debian: apt-get install mariadb-server), set MEMSTATE_SQL_MARIADBD and "
    "MEMSTATE_SQL_MARIADB_INSTALL_DB, or give a server with MEMSTATE_SQL_TEST_MYSQL_URL"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, timeout: float = 60.0) -> str:
    """Wait until the server answers; returns its ``version()``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                return str(conn.execute(sa.text("SELECT version()")).scalar_one())
        except Exception as exc:  # retried until the deadline
            last = exc
            time.sleep(0.2)
        finally:
            engine.dispose()
    raise RuntimeError(f"server at {url} did not come up: {last}")


# ---------------------------------------------------------------------------- processes by PID


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie does not; our own children are reaped here)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_ours(pid: int, root: Path) -> bool:
    """The PID still belongs to a server of `root` (guards against a reused PID)."""
    try:
        return str(root) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_pid(pid: int, root: Path, sig: signal.Signals, timeout: float = 60.0) -> None:
    """Send `sig` to our server `pid` and wait for it to exit; SIGKILL if it outlives `timeout`."""
    if not _is_ours(pid, root):
        _alive(pid)  # reap it if it was our child
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if not _wait_gone(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10)


# ---------------------------------------------------------------------------- servers


class PrivateServer:
    kind: str
    url: str
    root: Path
    port: int
    version: str = ""
    source: str = ""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, *, crash: bool = False) -> None:
        raise NotImplementedError

    def restart(self, *, crash: bool = False) -> None:
        self.stop(crash=crash)
        self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def pid(self) -> int | None:
        raise NotImplementedError

    def describe(self) -> str:
        return f"private {self.version} on 127.0.0.1:{self.port}, {self.source}"

    def state(self) -> dict[str, Any]:
        """What another process needs to stop this server (see :func:`attach`)."""
        return {"kind": self.kind, "url": self.url, "root": str(self.root), "port": self.port, "pid": self.pid()}


def find_pg_bin() -> tuple[Path, str] | None:
    """(directory of initdb/pg_ctl/postgres, where it came from), or None."""
    configured = os.environ.get("MEMSTATE_SQL_PG_BIN")
    if configured:
        return (Path(configured), "MEMSTATE_SQL_PG_BIN") if (Path(configured) / "pg_ctl").exists() else None
    candidates: list[tuple[str, str]] = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout
        candidates.append((bindir.strip(), "local binaries"))

    def major(path: str) -> int:
        found = re.search(r"/postgresql/(\d+)/", path)
        return int(found.group(1)) if found else 0

    for path in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True):
        candidates.append((path, "local binaries"))
    spec = importlib.util.find_spec("pgserver")  # the pip-installable fallback; not imported
    if spec is not None and spec.origin:
        candidates.append((str(Path(spec.origin).parent / "pginstall" / "bin"), "binaries of the pgserver wheel"))
    for path, source in candidates:
        if path and all((Path(path) / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(path), source
    return None


def pgserver_bin() -> Path | None:
    """The binaries of the ``pgserver`` wheel (PostgreSQL 16 with the pgvector extension), or None."""
    spec = importlib.util.find_spec("pgserver")  # not imported: its import has side effects
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if all((path / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")) else None


def pg_bin() -> Path | None:
    found = find_pg_bin()
    return None if found is None else found[0]


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise FileNotFoundError("running as root, and there is neither a 'postgres' nor a 'nobody' user to run PostgreSQL")


class PostgresServer(PrivateServer):
    """``initdb`` in a temp dir, ``pg_ctl start`` on a free port; stop = fast shutdown, crash = immediate."""

    kind = "postgresql"

    def __init__(self, *, bindir: Path | None = None, _state: dict[str, Any] | None = None) -> None:
        """`bindir`: these binaries (e.g. `pgserver_bin()`) instead of the first `find_pg_bin` finds."""
        if _state is not None:  # attach to a running server (another process started it)
            self.root, self.bindir, self.port = Path(_state["root"]), Path(_state["bindir"]), int(_state["port"])
            self.user, self.url, self.data = _state["user"], _state["url"], Path(_state["root"]) / "data"
            return
        found = find_pg_bin() if bindir is None else (bindir, f"binaries in {bindir}")
        if found is None:
            raise FileNotFoundError(
                "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found: not via pg_config, not in "
                "/usr/lib/postgresql/*/bin, and the pgserver wheel is not installed; set MEMSTATE_SQL_PG_BIN"
            )
        self.bindir, self.source = found
        self.root = Path(tempfile.mkdtemp(prefix="memstate-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = _unprivileged_user()
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            if not self._can_run(self.bindir / "postgres"):
                self.bindir = self._copy_installation()
        try:
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _can_run(self, binary: Path) -> bool:
        """Whether the unprivileged user can execute `binary` (a venv under /root, say, it cannot)."""
        check = ["runuser", "-u", str(self.user), "--", "test", "-x", str(binary)]
        return subprocess.run(check, capture_output=True, check=False).returncode == 0

    def _copy_installation(self) -> Path:
        """Copy a relocatable installation (the pgserver wheel's) where the unprivileged user can run it."""
        source = self.bindir.parent  # .../site-packages/pgserver/pginstall
        package = source.parent
        copy = self.root / "pgcopy"
        target = copy / package.name / source.name
        for part in ("bin", "lib", "share"):
            if (source / part).is_dir():
                shutil.copytree(source / part, target / part, symlinks=True)
        libs = package.parent / f"{package.name}.libs"  # the wheel's own shared libraries (RPATH $ORIGIN/../../..)
        if libs.is_dir():
            shutil.copytree(libs, copy / libs.name, symlinks=True)
        for path in (copy, *copy.rglob("*")):
            path.chmod(path.stat().st_mode | 0o555 if path.is_dir() else path.stat().st_mode | 0o444)
        self.source += f", copied for user {self.user}"
        return target / "bin"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, cwd=self.root, check=False)
        if done.returncode != 0:
            output = (done.stderr or done.stdout).decode(errors="replace").strip()
            raise subprocess.CalledProcessError(done.returncode, command, output=output, stderr=output)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        version = wait_until_up(self.url)  # "PostgreSQL 15.20 (Debian ...) on x86_64 ..."
        self.version = " ".join(version.split()[:2])

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return None

    def stop(self, *, crash: bool = False) -> None:
        pid = self.pid()
        if pid is None or not _alive(pid):
            return
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate" if crash else "fast", "-w", "stop")
        except subprocess.CalledProcessError:  # pg_ctl could not do it: signal the postmaster's PID ourselves
            stop_pid(pid, self.root, signal.SIGQUIT if crash else signal.SIGINT)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "bindir": str(self.bindir), "user": self.user}


def find_mariadb() -> tuple[str, str] | None:
    """(mariadbd, mariadb-install-db), or None."""
    mariadbd = os.environ.get("MEMSTATE_SQL_MARIADBD") or shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    install = os.environ.get("MEMSTATE_SQL_MARIADB_INSTALL_DB") or shutil.which("mariadb-install-db")
    if install is None and Path("/usr/bin/mariadb-install-db").exists():
        install = "/usr/bin/mariadb-install-db"
    if not install or not Path(mariadbd).exists():
        return None
    return mariadbd, install


class MariaDBServer(PrivateServer):
    """``mariadb-install-db`` in a temp dir, ``mariadbd`` on a free port; stop = SIGTERM, crash = SIGKILL."""

    kind = "mysql"

    def __init__(self, *, buffer_pool: str = "32M", _state: dict[str, Any] | None = None) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        if _state is not None:
            self.root, self.port, self.url = Path(_state["root"]), int(_state["port"]), _state["url"]
            self.data, self._pid = self.root / "data", _state["pid"]
            return
        found = find_mariadb()
        if found is None:
            raise FileNotFoundError(f"no MariaDB server binaries (mariadbd, mariadb-install-db) found: {MARIADB_HINT}")
        self.mariadbd, install = found
        self.source = f"local binaries ({self.mariadbd})"
        self.buffer_pool = buffer_pool
        self.root = Path(tempfile.mkdtemp(prefix="memstate-mariadb-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_root = ["--user=root"] if os.geteuid() == 0 else []
        command = [install, "--no-defaults", f"--datadir={self.data}", *self.as_root, "--skip-test-db"]
        done = subprocess.run([*command, "--auth-root-authentication-method=normal"], capture_output=True, check=False)
        if done.returncode != 0:
            shutil.rmtree(self.root, ignore_errors=True)
            output = (done.stderr or done.stdout).decode(errors="replace").strip()
            raise subprocess.CalledProcessError(done.returncode, command, output=output, stderr=output)
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
                *self.as_root,
                "--skip-grant-tables",
                "--skip-log-bin",
                "--character-set-server=utf8mb4",  # as Debian's packaged server is configured
                "--collation-server=utf8mb4_general_ci",
                f"--innodb-buffer-pool-size={self.buffer_pool}",
                "--innodb-flush-log-at-trx-commit=2",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,  # ^C on the test run must not kill it before its teardown
        )
        log.close()
        self._pid = self.proc.pid
        server = self.url.rsplit("/", 1)[0] + "/"
        try:
            version = wait_until_up(server)  # "10.11.19-MariaDB-0+deb12u1"
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log: {self.root / 'log'}") from exc
        self.version = "MariaDB " + version.split("-MariaDB")[0]
        engine = sa.create_engine(server)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("CREATE DATABASE IF NOT EXISTS memstate CHARACTER SET utf8mb4"))
        finally:
            engine.dispose()

    def pid(self) -> int | None:
        return self._pid

    def stop(self, *, crash: bool = False) -> None:
        if self._pid is None:
            return
        stop_pid(self._pid, self.root, signal.SIGKILL if crash else signal.SIGTERM)
        self.proc, self._pid = None, None


# ---------------------------------------------------------------------------- a Galera cluster

GALERA_PROVIDER_ENV = "MEMSTATE_SQL_GALERA_PROVIDER"


def find_galera() -> tuple[str, str, str] | None:
    """(mariadbd, mariadb-install-db, libgalera_smm.so), or None when any is missing."""
    found = find_mariadb()
    provider = os.environ.get(GALERA_PROVIDER_ENV) or "/usr/lib/galera/libgalera_smm.so"
    if found is None or not Path(provider).exists() or shutil.which("rsync") is None:
        return None
    return found[0], found[1], provider


def _galera_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("mysql", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    return None


class GaleraNode:
    """One node of a :class:`GaleraCluster`: its own data directory, ``my.cnf`` and three loopback ports
    (client, group communication, IST receive; SST listens on a fourth)."""

    def __init__(self, cluster: GaleraCluster, number: int) -> None:
        self.cluster = cluster
        self.number = number
        base = cluster.base_port
        self.port = base + number  # client
        self.gcomm = base + 10 + number
        self.ist = base + 20 + number
        self.sst = base + 30 + number
        self.root = cluster.root / f"node{number}"
        self.data = self.root / "data"
        self.cnf = self.root / "my.cnf"
        self.url = f"mysql+pymysql://root@127.0.0.1:{self.port}/memstate"
        self._pid: int | None = None

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        peers = ",".join(f"127.0.0.1:{n.gcomm}" for n in self.cluster.nodes)
        self.cnf.write_text(
            "[mysqld]\n"
            f"datadir={self.data}\n"
            f"socket={self.root / 'mysqld.sock'}\n"
            f"pid-file={self.root / 'mysqld.pid'}\n"
            f"port={self.port}\n"
            "bind-address=127.0.0.1\n"
            + (f"user={self.cluster.user}\n" if self.cluster.user else "")
            + "skip-name-resolve\n"
            "character-set-server=utf8mb4\n"
            "collation-server=utf8mb4_general_ci\n"
            "innodb-buffer-pool-size=64M\n"
            "innodb-flush-log-at-trx-commit=2\n"
            "innodb-log-file-size=32M\n"
            "binlog_format=ROW\n"
            "innodb_autoinc_lock_mode=2\n"
            "wsrep_on=ON\n"
            f"wsrep_provider={self.cluster.provider}\n"
            f"wsrep_cluster_address=gcomm://{peers}\n"
            f"wsrep_node_address=127.0.0.1:{self.gcomm}\n"
            "wsrep_cluster_name=memstate_test\n"
            f'wsrep_provider_options="gmcast.listen_addr=tcp://127.0.0.1:{self.gcomm};ist.recv_addr=127.0.0.1:{self.ist};'
            'gcache.size=64M;evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S;evs.install_timeout=PT6S"\n'
            "wsrep_sst_method=rsync\n"
            f"wsrep_sst_receive_address=127.0.0.1:{self.sst}\n"
        )

    def install(self) -> None:
        command = [
            self.cluster.install_db,
            f"--defaults-file={self.cnf}",
            "--skip-test-db",
            "--auth-root-authentication-method=normal",
            *([f"--user={self.cluster.user}"] if self.cluster.user else []),
        ]
        done = subprocess.run(command, capture_output=True, check=False)
        if done.returncode != 0:
            output = (done.stderr or done.stdout).decode(errors="replace").strip()
            raise subprocess.CalledProcessError(done.returncode, command, output=output, stderr=output)

    def start(self, *, bootstrap: bool = False, wait: bool = True) -> None:
        if self._pid is not None and _alive(self._pid):
            return
        extra = ["--wsrep-new-cluster"] if bootstrap else self._recovered_position()
        log = open(self.root / "log", "ab")  # noqa: SIM115 - handed to the server process
        proc = subprocess.Popen(
            [self.cluster.mariadbd, f"--defaults-file={self.cnf}", *extra],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        self._pid = proc.pid
        if wait:
            self.wait_synced()

    def _recovered_position(self) -> list[str]:
        """After a crash the node's saved position is unknown (seqno -1) and it would ask for a full SST:
        recover it from InnoDB (``--wsrep-recover``, what the packaged service's galera_recovery does) so
        that it rejoins by IST."""
        state = self.data / "grastate.dat"
        if not state.exists() or "seqno:   -1" not in state.read_text():
            return []
        subprocess.run(
            [
                self.cluster.mariadbd,
                f"--defaults-file={self.cnf}",
                "--wsrep-recover",
                f"--log-error={self.root}/recover.log",
            ],
            capture_output=True,
            check=False,
        )
        with contextlib.suppress(OSError):
            found = re.findall(r"Recovered position: (\S+:-?\d+)", (self.root / "recover.log").read_text())
            if found and not found[-1].endswith(":-1"):
                return [f"--wsrep-start-position={found[-1]}"]
        return []

    def wait_synced(self, timeout: float = 120.0) -> None:
        """Wait until the node says ``Synced`` (it answers 1047 while it joins or catches up)."""
        deadline = time.monotonic() + timeout
        last: object = None
        server = self.url.rsplit("/", 1)[0] + "/"
        while time.monotonic() < deadline:
            if self._pid is None or not _alive(self._pid):
                raise RuntimeError(f"galera node {self.number} exited while starting:\n{self.log_tail()}")
            engine = sa.create_engine(server, poolclass=sa.pool.NullPool)
            try:
                with engine.connect() as conn:
                    state = conn.execute(sa.text("SHOW STATUS LIKE 'wsrep_local_state_comment'")).first()
                    last = state[1] if state else None
                    if last == "Synced":
                        return
            except Exception as exc:  # retried until the deadline
                last = exc
            finally:
                engine.dispose()
            time.sleep(0.2)
        raise RuntimeError(f"galera node {self.number} not synced: {last}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "log").read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def pid(self) -> int | None:
        return self._pid

    def stop(self, *, crash: bool = False) -> None:
        if self._pid is None:
            return
        stop_pid(self._pid, self.root, signal.SIGKILL if crash else signal.SIGTERM)
        self._pid = None


class GaleraCluster:
    """A private 3-node MariaDB Galera cluster on loopback (see /work/shared/notes/scale-out.md).

    Node 1 bootstraps (``--wsrep-new-cluster``), nodes 2 and 3 join it by rsync SST; each runs from its
    own ``--defaults-file``, so the machine's MariaDB and ``/etc/mysql`` are never touched. Ports:
    ``base_port + n`` (client), ``+ 10 + n`` (group communication), ``+ 20 + n`` (IST), ``+ 30 + n`` (SST).
    Stopped by PID (:meth:`destroy`).
    """

    def __init__(self, *, base_port: int = 16500, size: int = 3) -> None:
        found = find_galera()
        if found is None:
            raise FileNotFoundError(
                "no Galera cluster binaries (mariadbd, mariadb-install-db, /usr/lib/galera/libgalera_smm.so, rsync): "
                "install mariadb-server, galera-4 and rsync (Debian), or set " + GALERA_PROVIDER_ENV
            )
        self.mariadbd, self.install_db, self.provider = found
        self.base_port = base_port
        self.root = Path(tempfile.mkdtemp(prefix="memstate-galera-"))
        # As root the servers run as "mysql": the joiners' rsync daemon (SST) would otherwise drop to "nobody".
        self.user = _galera_user()
        self.nodes = [GaleraNode(self, n) for n in range(1, size + 1)]
        self.version = ""

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> None:
        try:
            first, *others = self.nodes
            for node in self.nodes:
                node.write_config()  # the joiners' data directories come from node 1 (SST)
                node.data.mkdir(parents=True, exist_ok=True)
            self._hand_over()
            first.install()
            first.start(bootstrap=True)
            server = first.url.rsplit("/", 1)[0] + "/"
            engine = sa.create_engine(server, poolclass=sa.pool.NullPool)
            try:
                with engine.begin() as conn:
                    self.version = str(conn.execute(sa.text("SELECT version()")).scalar_one())
                    conn.execute(sa.text("CREATE DATABASE IF NOT EXISTS memstate CHARACTER SET utf8mb4"))
            finally:
                engine.dispose()
            for node in others:  # one joiner at a time: node 1 is the donor of both
                node.start()
        except BaseException as exc:
            if isinstance(exc, RuntimeError):
                exc.args = (f"{exc.args[0]}\nnode 1:\n{first.log_tail()}",)
            self.destroy()
            raise

    def _hand_over(self) -> None:
        if self.user is None:
            return
        entry = pwd.getpwnam(self.user)
        self.root.chmod(0o755)
        for path in [self.root, *self.root.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def cluster_size(self, node: int = 0) -> int:
        engine = sa.create_engine(self.nodes[node].url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                row = conn.execute(sa.text("SHOW STATUS LIKE 'wsrep_cluster_size'")).first()
                return int(row[1]) if row else 0
        finally:
            engine.dispose()

    def destroy(self) -> None:
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                node.stop()
        if not os.environ.get("MEMSTATE_SQL_GALERA_KEEP"):  # keep the logs for a post-mortem
            shutil.rmtree(self.root, ignore_errors=True)


def private_server(db: str, **options: Any) -> PrivateServer:
    return PostgresServer() if db == "postgresql" else MariaDBServer(**options)


def attach(state: dict[str, Any]) -> PrivateServer:
    """A handle on a server that another process started, from its :meth:`PrivateServer.state`."""
    if state["kind"] == "postgresql":
        return PostgresServer(_state=state)
    return MariaDBServer(_state=state)


# ---------------------------------------------------------------------------- one run's shared servers

SESSION_DIR_ENV = "MEMSTATE_SQL_TEST_SESSION_DIR"


class SessionServers:
    """The private servers of one test run, shared by the controller and all of its xdist workers.

    The controlling process creates a directory and publishes it in ``MEMSTATE_SQL_TEST_SESSION_DIR``
    (xdist workers inherit it). The first process that needs a database starts its server under a
    file lock and writes ``<db>.json`` (its URL and PID, or why it could not be started); everyone else
    reads that file. Only the controlling process tears the servers down, by PID, at the end of the run.
    """

    def __init__(self, directory: Path, *, owner: bool) -> None:
        self.directory = directory
        self.owner = owner

    @classmethod
    def create(cls) -> SessionServers:
        directory = Path(tempfile.mkdtemp(prefix="memstate-sql-run-"))
        (directory / "owner.pid").write_text(str(os.getpid()))
        os.environ[SESSION_DIR_ENV] = str(directory)
        return cls(directory, owner=True)

    @classmethod
    def join(cls) -> SessionServers | None:
        directory = os.environ.get(SESSION_DIR_ENV)
        return cls(Path(directory), owner=False) if directory and Path(directory).is_dir() else None

    @contextlib.contextmanager
    def _locked(self, db: str) -> Iterator[None]:
        with open(self.directory / f"{db}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, db: str, record: dict[str, Any]) -> None:
        tmp = self.directory / f"{db}.json.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(self.directory / f"{db}.json")

    def record(self, db: str) -> dict[str, Any] | None:
        with contextlib.suppress(FileNotFoundError):
            return dict(json.loads((self.directory / f"{db}.json").read_text()))
        return None

    def provide(self, db: str) -> dict[str, Any]:
        """``{"url", "describe", "state"}`` of the run's `db` server, or ``{"error": reason}``; started once."""
        with self._locked(db):
            existing = self.record(db)
            if existing is not None:
                return existing
            self._watchdog()
            server: PrivateServer | None = None
            started = time.monotonic()
            try:
                server = private_server(db, buffer_pool="256M") if db == "mysql" else private_server(db)
                server.start()
                record: dict[str, Any] = {
                    "url": server.url,
                    "describe": server.describe(),
                    "state": server.state(),
                    "seconds": round(time.monotonic() - started, 1),
                }
            except Exception as exc:  # the reason is what the tests report
                if server is not None:
                    with contextlib.suppress(Exception):
                        server.destroy()
                detail = getattr(exc, "stderr", None) or exc
                record = {"error": f"cannot start a private {db} server: {type(exc).__name__}: {detail}"}
            self._write(db, record)
            return record

    def _watchdog(self) -> None:
        """Once per run, before its first server: a process that stops the servers should the run die unclean
        (SIGKILL, a CI timeout) instead of reaching :meth:`teardown`. It exits when the run directory is gone."""
        marker = self.directory / "watchdog.pid"
        if marker.exists():
            return
        owner = (self.directory / "owner.pid").read_text().strip()
        watchdog = subprocess.Popen(
            [sys.executable, __file__, "watch", owner, str(self.directory)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        marker.write_text(str(watchdog.pid))

    def note(self, db: str, record: dict[str, Any]) -> None:
        """Record how `db` was provided without a private server (an explicit URL, a container)."""
        with self._locked(db):
            if self.record(db) is None:
                self._write(db, record)

    def teardown(self) -> None:
        if not self.owner:
            return
        for path in sorted(self.directory.glob("*.json")):
            state = json.loads(path.read_text()).get("state")
            if state:
                with contextlib.suppress(Exception):
                    attach(state).destroy()
        shutil.rmtree(self.directory, ignore_errors=True)
        if os.environ.get(SESSION_DIR_ENV) == str(self.directory):
            del os.environ[SESSION_DIR_ENV]


def watch(owner: int, directory: Path) -> None:
    """The watchdog of :meth:`SessionServers._watchdog`: wait for the run's process to end, then tear down."""
    while directory.is_dir() and _alive(owner):
        time.sleep(1)
    if directory.is_dir():
        SessionServers(directory, owner=True).teardown()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "watch":
        watch(int(sys.argv[2]), Path(sys.argv[3]))


# ---------------------------------------------------------------------------- PgBouncer


def find_pgbouncer() -> str | None:
    """The ``pgbouncer`` binary (``MEMSTATE_SQL_PGBOUNCER``, the PATH, ``/usr/sbin``), or None."""
    found = os.environ.get("MEMSTATE_SQL_PGBOUNCER") or shutil.which("pgbouncer")
    if found is None and Path("/usr/sbin/pgbouncer").exists():
        found = "/usr/sbin/pgbouncer"
    return found


def free_port_in(spec: str | None) -> int:
    """A free loopback port, from the range ``"LOW-HIGH"`` when one is given (``MEMSTATE_SQL_TEST_PORTS``)."""
    if not spec:
        return free_port()
    low, _, high = spec.partition("-")
    for port in range(int(low), int(high or low) + 1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {spec}")


class PgBouncer:
    """PgBouncer in ``pool_mode = transaction`` in front of a PostgreSQL URL: an ini file in a temp dir,
    127.0.0.1 on a free port, started in the foreground (its own PID, as the ``postgres`` user when the
    tests run as root: it refuses to run as root) and stopped by that PID."""

    def __init__(self, binary: str, backend_url: str, *, pool_size: int = 3, ports: str | None = None) -> None:
        backend = sa.make_url(backend_url)
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="memstate-pgbouncer-"))
        self.port = free_port_in(ports)
        self.database = backend.database or "postgres"
        user = backend.username or "postgres"
        entry = [f"host={backend.host or '127.0.0.1'}", f"port={backend.port or 5432}", f"dbname={self.database}"]
        entry.append(f"user={user}")
        if backend.password:
            entry.append(f"password={backend.password}")
        (self.root / "userlist.txt").write_text(f'"{user}" ""\n')
        (self.root / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{self.database} = {' '.join(entry)}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {self.root}\n"
            "auth_type = trust\n"
            f"auth_file = {self.root / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 200\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
            "admin_users = postgres\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
        )
        self.run_as: str | None = None
        if os.geteuid() == 0:
            self.run_as = _unprivileged_user()
            entry_pw = pwd.getpwnam(self.run_as)
            for path in (self.root, *self.root.iterdir()):
                os.chown(path, entry_pw.pw_uid, entry_pw.pw_gid)
        self.url = backend.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.root / "stdout.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, str(self.root / "pgbouncer.ini")], stdout=log, stderr=log, user=self.run_as, cwd=self.root
            )
        wait_until_up(self.url, timeout=30)

    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # immediate shutdown of this PID
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
