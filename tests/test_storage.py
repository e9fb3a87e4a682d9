"""memstate's storage-backend method set on SQLStorage / AsyncSQLStorage."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql import ValidationFailed
from memstate_sql.aio import async_url


def doc(fid: str, **extra: Any) -> dict[str, Any]:
    base = {
        "id": fid,
        "type": "note",
        "payload": {"v": 1},
        "source": None,
        "session_id": None,
        "ts": "2026-03-04T05:06:07.123456Z",
    }
    base.update(extra)
    return base


@pytest.fixture
def backend(mode: str, make_store: Any) -> Any:
    """The storage of a store in the parametrized mode (blocking interface in both modes)."""
    return make_store().storage


def test_save_load_round_trip_and_upsert(backend: Any) -> None:
    backend.save(doc("a"))
    assert backend.load("a") == doc("a")
    backend.save(doc("a", payload={"v": 2}, session_id="s"))
    assert backend.load("a") == doc("a", payload={"v": 2}, session_id="s")
    assert backend.load("missing") is None


def test_delete_is_idempotent(backend: Any) -> None:
    backend.save(doc("a"))
    backend.delete("a")
    backend.delete("a")
    assert backend.load("a") is None


def test_query_by_type_and_nested_filters(backend: Any) -> None:
    backend.save(doc("a", payload={"settings": {"ui": {"dark_mode": True}}, "n": 1}))
    backend.save(doc("b", payload={"settings": {"ui": {"dark_mode": 1}}, "n": 1.0}))
    backend.save(doc("c", type="other", payload={"settings": {"ui": {"dark_mode": "true"}}}))
    ids = lambda t=None, f=None: sorted(d["id"] for d in backend.query(t, f))  # noqa: E731
    assert ids(None, {"payload.settings.ui.dark_mode": True}) == ["a"]
    assert ids(None, {"payload.settings.ui.dark_mode": 1}) == ["b"]
    assert ids(None, {"payload.settings.ui.dark_mode": "true"}) == ["c"]
    assert ids("note", {"payload.n": 1}) == ["a", "b"]
    assert ids("other") == ["c"]
    assert ids(None, {"type": "note", "payload.n": 1.0}) == ["a", "b"]


def test_tx_log_is_newest_first_and_paginated(backend: Any) -> None:
    for i in range(7):
        backend.append_tx(
            {
                "uuid": f"u{i}",
                "session_id": "s",
                "seq": 999,  # ignored: the database assigns the sequence
                "ts": datetime(2026, 1, 1, tzinfo=timezone.utc).isoformat(),
                "op": "COMMIT",
                "fact_id": f"f{i}",
                "fact_before": None,
                "fact_after": doc(f"f{i}"),
                "actor": None,
                "reason": None,
            }
        )
    page1 = backend.get_tx_log("s", limit=3)
    page2 = backend.get_tx_log("s", limit=3, offset=3)
    assert [e["uuid"] for e in page1] == ["u6", "u5", "u4"]
    assert [e["uuid"] for e in page2] == ["u3", "u2", "u1"]
    seqs = [e["seq"] for e in page1 + page2]
    assert seqs == sorted(seqs, reverse=True)
    assert backend.get_tx_log("other") == []
    backend.delete_txs(["u6", "u5"])
    assert [e["uuid"] for e in backend.get_tx_log("s", limit=2)] == ["u4", "u3"]
    with pytest.raises(ValidationFailed):
        backend.get_tx_log("s", limit=-1)


def test_session_facts_and_delete_session(backend: Any) -> None:
    backend.save(doc("a", session_id="s"))
    backend.save(doc("b", session_id="s"))
    backend.save(doc("c", session_id="t"))
    assert sorted(d["id"] for d in backend.get_session_facts("s")) == ["a", "b"]
    assert sorted(backend.delete_session("s")) == ["a", "b"]
    assert backend.get_session_facts("s") == []
    assert backend.load("c") is not None
    assert backend.delete_session("s") == []


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "x", "type": "t"},  # no payload
        {"id": "x", "type": "t", "payload": [], "ts": "2026-01-01T00:00:00Z"},
        # extra keys are kept as given (tests/test_backend_contract.py), but not under the row's own names
        {"id": "x", "type": "t", "payload": {}, "singleton": "k"},
        {"id": "x", "type": "t", "payload": {}, "extra": float("nan")},
        {"id": "x" * 192, "type": "t", "payload": {}},
        {"id": "x", "type": "t", "payload": {"f": float("nan")}},
        {"id": "x", "type": "t", "payload": {1: "non-string key"}},
        {"id": "x", "type": "t", "payload": {"big": 2**63}},
    ],
)
def test_save_rejects_malformed_documents(backend: Any, bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed):
        backend.save(bad)
    assert backend.load("x") is None


def test_storage_calls_inside_an_operation_join_its_transaction(storage: ms.SQLStorage) -> None:
    seen: list[Any] = []

    def hook(op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
        seen.append(storage.load(fact_id))
        storage.save(doc("side-effect"))
        raise RuntimeError("abort")

    store = ms.MemoryStore(storage, [hook])
    with pytest.raises(ms.HookError):
        store.commit(ms.Fact(id="f", type="t", payload={}))
    assert seen[0] is not None  # the hook saw the uncommitted fact
    assert storage.load("side-effect") is None  # and its own write rolled back with the operation


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("mysql+pymysql://u@h/db", "mysql+aiomysql://u@h/db"),
        ("mysql://u@h/db", "mysql+aiomysql://u@h/db"),
        ("mariadb+pymysql://u@h/db", "mariadb+aiomysql://u@h/db"),
        ("mysql+asyncmy://u@h/db", "mysql+asyncmy://u@h/db"),
    ],
)
def test_sync_urls_map_to_async_drivers(given: str, expected: str) -> None:
    assert async_url(given).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize("url", ["postgresql+psycopg2://u@h/db", "mysql+mysqldb://u@h/db", "oracle://u@h/db"])
def test_unusable_async_urls_say_what_to_write(url: str) -> None:
    with pytest.raises(ValidationFailed, match=r"\+|supports"):
        async_url(url)


def test_async_storage_works_without_setup(db_url: str, prefix: str) -> None:
    async def main() -> Any:
        storage = ms.AsyncSQLStorage(db_url, table_prefix=prefix)
        try:
            await storage.save(doc("a"))
            return await storage.load("a")
        finally:
            await storage.close()

    assert asyncio.run(main()) == doc("a")


@pytest.mark.parametrize("prefix_value", ["", "Upper", "1abc", "a-b", "x" * 31, "a;drop"])
def test_invalid_table_prefixes_are_rejected(prefix_value: str) -> None:
    with pytest.raises(ValidationFailed, match="table_prefix"):
        ms.SQLStorage("sqlite://", table_prefix=prefix_value)


def test_wrong_storage_types_are_rejected() -> None:
    with pytest.raises(ValidationFailed):
        ms.SQLStorage(42)  # type: ignore[arg-type]
    with pytest.raises(ValidationFailed):
        ms.MemoryStore(object())  # type: ignore[arg-type]
    with pytest.raises(ValidationFailed):
        ms.AsyncMemoryStore(ms.SQLStorage("sqlite://"))  # type: ignore[arg-type]


def test_sqlite_synchronous_is_an_explicit_storage_option(db: str, db_url: str, prefix: str) -> None:
    """SQLite's durability: ``full`` by default (every commit fsync'd), ``normal`` on request (WAL either
    way); refused on other databases and on engines memstate_sql did not create."""
    levels = {"full": 2, "normal": 1}  # PRAGMA synchronous's numbers
    if db != "sqlite":
        with pytest.raises(ms.ValidationFailed, match="SQLite only"):
            ms.SQLStorage(db_url, table_prefix=prefix, sqlite_synchronous="normal")
        return
    for option, expected in [(None, "full"), ("full", "full"), ("NORMAL", "normal")]:
        storage = ms.SQLStorage(db_url, table_prefix=prefix, sqlite_synchronous=option)
        try:
            ms.MemoryStore(storage).commit(ms.Fact(type="t", payload={}))
            with storage.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == levels[expected]
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        finally:
            storage.close()
    with pytest.raises(ms.ValidationFailed, match="must be one of full, normal"):
        ms.SQLStorage(db_url, table_prefix=prefix, sqlite_synchronous="off")
    engine = sa.create_engine(db_url)
    try:
        with pytest.raises(ms.ValidationFailed, match="engine memstate_sql creates"):
            ms.SQLStorage(engine, table_prefix=prefix, sqlite_synchronous="normal")
    finally:
        engine.dispose()
