"""PostgreSQL behind PgBouncer in transaction pooling mode, failover URLs, and the ``pooler=`` option.

The PgBouncer tests start their own PgBouncer (``pgbouncer`` fixture, tests/conftest.py) in front of the
suite's PostgreSQL with 3 server connections, so that consecutive transactions of one client land on
different server connections and several clients share each one.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql import migrations
from tests.cli_support import cli
from tests.conftest import database_url, drop_prefix
from tests.servers import PgBouncer, free_port
from tests.workers import pooled_worker

HEAD = migrations.head_revision()


@pytest.fixture
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return database_url("postgresql", tmp_path_factory)


@pytest.fixture
def pg_prefix(pg_url: str) -> Iterator[str]:
    name = "p" + uuid.uuid4().hex[:10]
    yield name
    drop_prefix(pg_url, name)


# ---------------------------------------------------------------------------- the option itself


def test_pooler_option_disables_prepared_statements_sync_and_async(pg_url: str, pg_prefix: str) -> None:
    plain = ms.SQLStorage(pg_url, table_prefix=pg_prefix)
    pooled = ms.SQLStorage(pg_url, table_prefix=pg_prefix, pooler="transaction")
    try:
        with plain.engine.connect() as conn:
            assert conn.connection.dbapi_connection.prepare_threshold == 5  # type: ignore[union-attr]
        with pooled.engine.connect() as conn:
            assert conn.connection.dbapi_connection.prepare_threshold is None  # type: ignore[union-attr]
        # engine_options of the caller still apply, and their connect_args are merged with the pooler's
        custom = ms.SQLStorage(pg_url, pooler="transaction", engine_options={"connect_args": {"connect_timeout": 7}})
        with custom.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw.prepare_threshold is None  # type: ignore[union-attr]
            assert raw.info.get_parameters()["connect_timeout"] == "7"  # type: ignore[union-attr]
        custom.close()
    finally:
        plain.close()
        pooled.close()

    async def check() -> None:
        storage = ms.AsyncSQLStorage(pg_url, table_prefix=pg_prefix, pooler="transaction")
        try:
            async with storage.engine.connect() as conn:
                raw = await conn.get_raw_connection()
                assert raw.driver_connection.prepare_threshold is None  # type: ignore[union-attr]
        finally:
            await storage.close()

    asyncio.run(check())


def test_pooler_option_is_refused_where_it_does_not_apply(tmp_path: Path) -> None:
    with pytest.raises(ms.ValidationFailed, match="applies to PostgreSQL"):
        ms.SQLStorage(f"sqlite:///{tmp_path / 'x.db'}", pooler="transaction")
    with pytest.raises(ms.ValidationFailed, match="applies to PostgreSQL"):
        ms.SQLStorage("mysql+pymysql://root@127.0.0.1:1/x", pooler="transaction")
    with pytest.raises(ms.ValidationFailed, match="pooler must be"):
        ms.SQLStorage("postgresql+psycopg://postgres@127.0.0.1:1/x", pooler="session")
    with pytest.raises(ms.ValidationFailed, match="asyncpg"):
        ms.AsyncSQLStorage("postgresql+asyncpg://postgres@127.0.0.1:1/x", pooler="transaction")
    engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:1/x")
    with pytest.raises(ms.ValidationFailed, match="prepare_threshold"):
        ms.SQLStorage(engine, pooler="transaction")
    engine.dispose()


def test_cli_pooler_option(
    pg_url: str, pg_prefix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    done = cli(capsys, "--url", pg_url, "--prefix", pg_prefix, "--pooler", "transaction", "upgrade")
    assert done.code == 0, done.err
    done = cli(capsys, "--url", pg_url, "--prefix", pg_prefix, "--pooler", "session", "current")
    assert done.code != 0 and "transaction" in done.err
    monkeypatch.setenv("MEMSTATE_SQL_POOLER", "transaction")
    done = cli(capsys, "--url", pg_url, "--prefix", pg_prefix, "stats")
    assert done.code == 0, done.err
    done = cli(capsys, "--url", f"sqlite:///{tmp_path / 'x.db'}", "upgrade")
    assert done.code != 0 and "applies to PostgreSQL" in done.err


# ---------------------------------------------------------------------------- PgBouncer


def run_workers(url: str, prefix: str, pooler: str | None, ops: int) -> list[dict[str, Any]]:
    """2 sync and 2 asyncio processes running the mixed workload at once."""
    ctx = multiprocessing.get_context("spawn")
    jobs = [(url, prefix, wid, ops, 1000 + wid, "sync" if wid < 2 else "async", pooler) for wid in range(4)]
    with ctx.Pool(len(jobs)) as pool:
        return pool.starmap(pooled_worker, jobs)


def test_mixed_workload_behind_pgbouncer_has_no_failed_operation(
    pgbouncer: PgBouncer, pg_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ms.migrate(pgbouncer.url, table_prefix=pg_prefix) == HEAD
    results = run_workers(pgbouncer.url, pg_prefix, "transaction", ops=150)
    failed = [message for result in results for message in result["failed"]]
    assert failed == [], failed[:5]
    assert sum(r["ok"] for r in results) >= 400  # the workload really ran (refusals are the API's own)
    report = ms.verify(pgbouncer.url, table_prefix=pg_prefix)
    assert report.ok, report
    with capsys.disabled():
        total = sum(r["ok"] + r["refused"] + len(r["failed"]) for r in results)
        print(f"\n[pgbouncer pooler=transaction] operations={total} failed=0")


def test_without_the_option_pgbouncer_breaks_prepared_statements(
    pgbouncer: PgBouncer, pg_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The control: the same workload without ``pooler=`` fails (psycopg prepares statements that PgBouncer
    1.18 cannot follow), and the error names the option."""
    assert ms.migrate(pgbouncer.url, table_prefix=pg_prefix) == HEAD
    results = run_workers(pgbouncer.url, pg_prefix, None, ops=150)
    failed = [message for result in results for message in result["failed"]]
    assert failed, "no operation failed without pooler=: the test cannot tell the option's effect"
    named = [m for m in failed if 'pooler="transaction"' in m]
    assert named, failed[:5]
    assert any(code in m for m in named for code in ("does not exist", "already exists", "bind message")), named[:3]
    with capsys.disabled():
        total = sum(r["ok"] + r["refused"] + len(r["failed"]) for r in results)
        print(f"\n[pgbouncer without pooler=] operations={total} failed={len(failed)}")


MIGRATE = """
import sys, time
import memstate_sql as ms
url, prefix, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
print(ms.migrate(url, table_prefix=prefix, lock_timeout=60))
"""


def pooled_server_state(url: str, connections: int) -> list[tuple[str, str, int]]:
    """(lock_timeout, statement_timeout, advisory locks of this backend) on each pooled server connection:
    `connections` transactions held open at once land on as many different server connections."""
    engine = sa.create_engine(url, connect_args={"prepare_threshold": None}, poolclass=sa.pool.NullPool)
    held = []
    try:
        for _ in range(connections):
            conn = engine.connect()
            held.append(conn)
            conn.begin()
        return [
            (
                str(conn.exec_driver_sql("SHOW lock_timeout").scalar()),
                str(conn.exec_driver_sql("SHOW statement_timeout").scalar()),
                int(
                    conn.exec_driver_sql(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                    ).scalar_one()
                ),
            )
            for conn in held
        ]
    finally:
        for conn in held:
            conn.close()
        engine.dispose()


def test_three_processes_migrate_at_once_behind_pgbouncer(
    pgbouncer: PgBouncer, pg_url: str, pg_prefix: str, tmp_path: Path
) -> None:
    start = time.time() + 3.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE, pgbouncer.url, pg_prefix, str(start)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert out.strip().splitlines()[-1] == HEAD
    # Nothing is left behind on any pooled server connection: no advisory lock, no changed setting.
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            locks = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND d.datname = current_database()"
            ).scalar_one()
            defaults = (
                str(conn.exec_driver_sql("SHOW lock_timeout").scalar()),
                str(conn.exec_driver_sql("SHOW statement_timeout").scalar()),
            )
    finally:
        engine.dispose()
    assert locks == 0
    assert pooled_server_state(pgbouncer.url, 3) == [(*defaults, 0)] * 3
    # and the next migrations go through: the same prefix (a no-op) and a fresh one
    assert ms.migrate(pgbouncer.url, table_prefix=pg_prefix, lock_timeout=5) == HEAD
    other = pg_prefix + "b"
    try:
        assert ms.migrate(pgbouncer.url, table_prefix=other, lock_timeout=5) == HEAD
    finally:
        drop_prefix(pg_url, other)
    migrations.check(pg_url, table_prefix=pg_prefix)


def test_schema_option_behind_pgbouncer_needs_no_search_path(pgbouncer: PgBouncer, pg_url: str) -> None:
    """``schema=`` qualifies every name, so it works through the pooler and leaves search_path alone."""
    schema = "s" + uuid.uuid4().hex[:8]
    storage = ms.SQLStorage(pgbouncer.url, schema=schema, table_prefix="pooled", pooler="transaction")
    try:
        store = ms.MemoryStore(storage)
        fid = store.commit(ms.Fact(type="note", payload={"k": 1}), session_id="s")
        for _ in range(10):
            assert store.get(fid) is not None
        paths = {state[0] for state in pooled_server_state(pgbouncer.url, 3)}
        assert paths  # every server connection answered
        engine = sa.create_engine(pgbouncer.url, connect_args={"prepare_threshold": None})
        with engine.connect() as conn:
            for _ in range(6):
                assert schema not in str(conn.exec_driver_sql("SHOW search_path").scalar())
                conn.rollback()
        engine.dispose()
    finally:
        storage.close()
        engine = sa.create_engine(pg_url)
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        engine.dispose()


# ---------------------------------------------------------------------------- failover URLs


def test_multi_host_url_whose_first_host_is_down(pg_url: str, pg_prefix: str) -> None:
    """psycopg's multi-host form: the first host refuses connections, the second is the server."""
    real = sa.make_url(pg_url)
    dead = free_port()  # nothing listens there
    url = (
        f"postgresql+psycopg://{real.username}@/{real.database}"
        f"?host=127.0.0.1:{dead}&host={real.host}:{real.port or 5432}&target_session_attrs=read-write"
    )
    for mode in ("sync", "async"):
        if mode == "sync":
            storage = ms.SQLStorage(url, table_prefix=pg_prefix)
            try:
                store = ms.MemoryStore(storage)
                fid = store.commit(ms.Fact(type="note", payload={"via": "second host"}))
                assert store.get(fid)["payload"] == {"via": "second host"}  # type: ignore[index]
            finally:
                storage.close()
        else:

            async def run() -> None:
                storage = ms.AsyncSQLStorage(url, table_prefix=pg_prefix)
                try:
                    store = ms.AsyncMemoryStore(storage)
                    fid = await store.commit(ms.Fact(type="note", payload={"via": "async"}))
                    assert (await store.get(fid))["payload"] == {"via": "async"}  # type: ignore[index]
                finally:
                    await storage.close()

            asyncio.run(run())
    # with only the dead host, the failure is a ConnectionLost (what reconnect-after-failover relies on)
    storage = ms.SQLStorage(
        f"postgresql+psycopg://{real.username}@127.0.0.1:{dead}/{real.database}", table_prefix=pg_prefix
    )
    try:
        with pytest.raises(ms.ConnectionLost):
            storage.load("x")
    finally:
        storage.close()
