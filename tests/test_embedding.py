"""Store operations inside a host application's own transaction (Session / Connection, sync and
asyncio): the business row and the memory fact commit or roll back together, on every database,
whether memstate_sql's tables already exist or are created by the first operation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import memstate_sql as ms
from memstate_sql import migrations
from memstate_sql.aio import async_url
from tests.dbutil import table_rows


def rows(url: str, table: str) -> int:
    """Rows of a table as another process sees them (0 when the table does not exist)."""
    return table_rows(url, table)


@pytest.fixture
def business(db_url: str, prefix: str) -> Iterator[sa.Table]:
    """The host application's own table (named with the test's prefix, so it is cleaned up)."""
    table = sa.Table(
        f"{prefix}_orders",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("item", sa.String(50), nullable=False),
    )
    engine = sa.create_engine(db_url)
    table.create(engine)
    engine.dispose()
    yield table


@pytest.fixture(params=["migrated", "fresh"])
def schema_state(request: pytest.FixtureRequest, db_url: str, prefix: str) -> str:
    """'migrated': memstate_sql's tables exist; 'fresh': the first operation inside the host's
    transaction has to create them (without a second connection that would wait on the host's locks)."""
    if request.param == "migrated":
        ms.migrate(db_url, table_prefix=prefix)
    return str(request.param)


def note(n: int) -> ms.Fact:
    return ms.Fact(type="note", payload={"n": n})


def test_session_rollback_and_commit(db_url: str, prefix: str, business: sa.Table, schema_state: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        with Session(engine) as session:
            store = ms.MemoryStore(ms.SQLStorage(session, table_prefix=prefix))
            # The store's operation first (on SQLite, before the driver has begun a transaction).
            fid = store.commit(note(1))
            session.execute(business.insert().values(id=1, item="book"))
            assert store.get(fid) is not None  # visible inside the host's transaction
            assert rows(db_url, f"{prefix}_facts") == 0  # not outside it
            session.rollback()
            assert rows(db_url, business.name) == 0
            assert rows(db_url, f"{prefix}_facts") == 0
            assert rows(db_url, f"{prefix}_tx") == 0

            # The same storage, in the session's next transaction: commit keeps both.
            session.execute(business.insert().values(id=2, item="pen"))
            fid = store.commit(note(2))
            session.commit()
            assert rows(db_url, business.name) == 1
            assert rows(db_url, f"{prefix}_facts") == 1
            assert rows(db_url, f"{prefix}_tx") == 1

            # And a third transaction on a fresh connection of the session still joins.
            store.update(fid, {"payload": {"n": 3}})
            session.rollback()
            assert store.get(fid)["payload"] == {"n": 2}
    finally:
        engine.dispose()
    migrations.check(db_url, table_prefix=prefix)


def test_connection_rollback_and_commit(db_url: str, prefix: str, business: sa.Table, schema_state: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            storage = ms.SQLStorage(conn, table_prefix=prefix)
            store = ms.MemoryStore(storage)
            conn.begin()
            store.commit(note(1))
            conn.execute(business.insert().values(id=1, item="book"))
            conn.rollback()
            assert rows(db_url, business.name) == 0
            assert rows(db_url, f"{prefix}_facts") == 0

            conn.execute(business.insert().values(id=2, item="pen"))
            store.commit(note(2))
            conn.commit()
        assert rows(db_url, business.name) == 1
        assert rows(db_url, f"{prefix}_facts") == 1
    finally:
        engine.dispose()


def test_failed_operation_keeps_the_host_transaction(db_url: str, prefix: str, business: sa.Table) -> None:
    """A store operation that fails rolls back to its SAVEPOINT only: the host's work survives."""

    def refuse(op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
        if fact is not None and fact.payload.get("n") == 13:
            raise RuntimeError("hook refuses 13")

    ms.migrate(db_url, table_prefix=prefix)
    engine = sa.create_engine(db_url)
    try:
        with Session(engine) as session:
            store = ms.MemoryStore(ms.SQLStorage(session, table_prefix=prefix), [refuse])
            session.execute(business.insert().values(id=1, item="book"))
            store.commit(note(1))
            with pytest.raises(ms.HookError):
                store.commit(note(13))
            session.execute(business.insert().values(id=2, item="pen"))
            session.commit()
        assert rows(db_url, business.name) == 2
        assert rows(db_url, f"{prefix}_facts") == 1
        assert rows(db_url, f"{prefix}_tx") == 1
    finally:
        engine.dispose()


def test_async_session_rollback_and_commit(db_url: str, prefix: str, business: sa.Table, schema_state: str) -> None:
    async def scenario() -> None:
        engine = create_async_engine(async_url(db_url))
        try:
            async with AsyncSession(engine) as session:
                store = ms.AsyncMemoryStore(ms.AsyncSQLStorage(session, table_prefix=prefix))
                await session.execute(business.insert().values(id=1, item="book"))
                fid = await store.commit(note(1))
                assert await store.get(fid) is not None
                await session.rollback()
                assert rows(db_url, business.name) == 0
                assert rows(db_url, f"{prefix}_facts") == 0

                await session.execute(business.insert().values(id=2, item="pen"))
                await store.commit(note(2))
                await session.commit()
                assert rows(db_url, business.name) == 1
                assert rows(db_url, f"{prefix}_facts") == 1
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_host_engine_is_used_as_is(db_url: str, prefix: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        with ms.SQLStorage(engine, table_prefix=prefix) as storage:
            ms.MemoryStore(storage).commit(note(1))
        with engine.connect() as conn:  # close() did not dispose of the host's engine
            assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {prefix}_facts")).scalar_one() == 1
        assert migrations.current_revision(engine, table_prefix=prefix) == migrations.head_revision()
    finally:
        engine.dispose()
