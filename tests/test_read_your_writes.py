"""The ``read_your_writes`` storage option off a Galera cluster (tests/test_galera.py covers it on one)."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql.aio import AsyncMemoryStore, AsyncSQLStorage
from memstate_sql.errors import ValidationFailed


def test_read_your_writes_is_a_no_op_on_one_server(db_url: str, prefix: str) -> None:
    storage = ms.SQLStorage(db_url, table_prefix=prefix, read_your_writes=True)
    store = ms.MemoryStore(storage)
    try:
        fid = store.commit(ms.Fact(type="note", payload={"a": 1}), session_id="s")
        assert store.get(fid) is not None
        if storage.engine.dialect.name in ("mysql", "mariadb"):
            with storage.engine.connect() as conn:  # not a Galera node: the session setting is left alone
                assert conn.exec_driver_sql("SELECT @@SESSION.wsrep_sync_wait").scalar() == 0
    finally:
        storage.close()


def test_read_your_writes_async(db_url: str, prefix: str) -> None:
    async def run() -> None:
        storage = AsyncSQLStorage(db_url, table_prefix=prefix, read_your_writes=True)
        store = AsyncMemoryStore(storage)
        try:
            fid = await store.commit(ms.Fact(type="note", payload={"a": 1}), session_id="s")
            assert await store.get(fid) is not None
        finally:
            await storage.close()

    asyncio.run(run())


def test_read_your_writes_needs_a_url(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        with pytest.raises(ValidationFailed, match="read_your_writes"):
            ms.SQLStorage(engine, read_your_writes=True)
    finally:
        engine.dispose()
