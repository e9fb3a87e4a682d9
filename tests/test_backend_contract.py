"""memstate's backend contract on SQLStorage / AsyncSQLStorage (docs/contract.md), every database, sync and async.

memstate 0.5.1's backends store whatever document ``save()`` and record ``append_tx()`` are given and
return it unchanged. These tests hold SQLStorage to that, in the shapes memstate's own backend tests
and its MemoryStore write: exact save/load round trips (extra keys, missing keys, every spelling of
``ts``), log records without ``op`` or ``fact_id``, log pagination and deletion, 50 concurrent saves of
``ts: "..."``; that the typed columns still serve queries, store operations, rollback, verify() and
export/import for such rows; that canonical rows carry no copy; and that hostile input is still
refused. The last tests drive memstate's own MemoryStore over SQLStorage and compare every document
and log record with memstate's InMemoryStorage given the same calls.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import memstate_sql as ms
from memstate_sql import ValidationFailed, migrations, schema
from memstate_sql.transfer import load_export, write_export
from tests.dbutil import fetch

TS = "2026-12-01T19:19:03.316773+00:00"


def same(a: Any, b: Any) -> bool:
    """Equal as JSON, types included (Python's ``==`` takes ``1``, ``1.0`` and ``True`` for one value)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def nested(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


def shape(value: Any) -> Any:
    """A document or log record with what differs between two runs of one script (uuids, the instants
    of ts) replaced by what must not differ (presence, and the spelling of each ts)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "ts" and isinstance(item, str):
                out[key] = "<Z>" if item.endswith("Z") else "<+00:00>" if item.endswith("+00:00") else item
            elif key in ("uuid", "seq"):
                out[key] = f"<{key}>"
            else:
                out[key] = shape(item)
        return out
    if isinstance(value, list):
        return [shape(item) for item in value]
    return value


def without_seq(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seq"} for r in records]


@pytest.fixture
def backend(mode: str, make_store: Any) -> Any:
    """The storage of a store in the parametrized mode (blocking interface in both modes)."""
    return make_store().storage


def document_column(url: str, prefix: str, table: str, where: str = "1=1") -> list[Any]:
    return [row[0] for row in fetch(url, f"SELECT document FROM {prefix}_{table} WHERE {where}")]


# ---------------------------------------------------------------------------- save / load

EXACT = {
    "memstate's crud document (ts with +00:00)": {"id": "f", "type": "test", "payload": {"foo": "bar"}, "ts": TS},
    "no ts, source or session": {"id": "f", "type": "config", "payload": {"settings": {"retries": 5}}},
    "a session, nothing else": {"id": "f", "type": "chat", "session_id": "session_A", "payload": {}},
    "ts with Z": {"id": "f", "type": "t", "payload": {}, "ts": "2026-12-01T19:19:03.316773Z"},
    "ts with another offset": {"id": "f", "type": "t", "payload": {}, "ts": "2026-12-01T21:19:03.5+02:00"},
    "naive ts": {"id": "f", "type": "t", "payload": {}, "ts": datetime(2026, 12, 1, 19, 19, 3).isoformat()},
    "ts without microseconds": {"id": "f", "type": "t", "payload": {}, "ts": "2026-12-01T19:19:03Z"},
    "ts that is no timestamp": {"id": "f", "type": "thread", "payload": {}, "ts": "..."},
    "empty ts": {"id": "f", "type": "t", "payload": {}, "ts": ""},
    "null ts": {"id": "f", "type": "t", "payload": {}, "ts": None},
    "epoch seconds": {"id": "f", "type": "t", "payload": {}, "ts": 1764616743},
    "extra keys of every JSON type": {
        "id": "f",
        "type": "t",
        "payload": {"a": 1},
        "source": None,
        "session_id": "s",
        "ts": TS,
        "meta": {"tags": ["x", 1, 1.5, True, None], "nested": {"k": "v"}},
        "score": 0.25,
        "flag": False,
        "count": 1,
        "nothing": None,
    },
    "expiry spelled with an offset": {
        "id": "f",
        "type": "t",
        "payload": {},
        "ts": TS,
        "expires_at": "2999-01-01T01:00:00+01:00",
    },
}


@pytest.mark.parametrize("case", sorted(EXACT))
def test_load_returns_exactly_what_save_was_given(backend: Any, case: str) -> None:
    doc = EXACT[case]
    backend.save(json.loads(json.dumps(doc)))  # the store never holds on to the caller's object
    assert same(backend.load("f"), doc)
    assert same(backend.query(doc["type"]), [doc])
    if doc.get("session_id"):
        assert same(backend.get_session_facts(doc["session_id"]), [doc])
    # a second save of the same document is an upsert, still exact
    backend.save(doc)
    assert same(backend.load("f"), doc)


def test_canonical_documents_are_stored_once(backend: Any, db_url: str, prefix: str) -> None:
    """Documents the columns render exactly (every key, ts in UTC with Z) keep no copy: the column stays
    NULL, as for every fact the store writes itself."""
    canonical = {"id": "c", "type": "t", "payload": {"a": 1}, "source": "x", "session_id": None, "ts": TS[:-6] + "Z"}
    backend.save(canonical)
    backend.save({"id": "d", "type": "t", "payload": {"a": 1}, "ts": TS})
    assert document_column(db_url, prefix, "facts", "id = 'c'") == [None]
    kept = document_column(db_url, prefix, "facts", "id = 'd'")[0]
    kept = json.loads(kept) if isinstance(kept, str) else kept
    assert kept == {"id": "d", "type": "t", "ts": TS}  # the payload lives in its column only
    assert same(backend.load("c"), canonical)


def test_typed_columns_serve_queries_for_saved_documents(backend: Any) -> None:
    """The instant of any ts spelling orders and filters; the envelope columns filter."""
    backend.save({"id": "late", "type": "t", "payload": {"n": 1}, "ts": "2026-01-01T12:00:00+02:00"})  # 10:00Z
    backend.save({"id": "early", "type": "t", "payload": {"n": 2}, "ts": "2026-01-01T09:00:00"})  # naive: 09:00Z
    backend.save({"id": "mid", "type": "t", "payload": {"n": 3}, "ts": "2026-01-01T09:30:00Z", "x": 1})
    assert [d["id"] for d in backend.query("t")] == ["early", "mid", "late"]
    assert [d["id"] for d in backend.query("t", {"ts": {"$gt": "2026-01-01T09:15:00Z"}})] == ["mid", "late"]
    assert [d["id"] for d in backend.query("t", {"payload.n": {"$gte": 2}})] == ["early", "mid"]


def test_extra_keys_are_not_filter_fields(backend: Any) -> None:
    backend.save({"id": "a", "type": "t", "payload": {}, "x": 1})
    with pytest.raises(ValidationFailed):
        backend.query("t", {"x": 1})


def test_sessions_of_saved_documents(backend: Any) -> None:
    backend.save({"id": "s1", "type": "chat", "session_id": "session_A", "payload": {}})
    backend.save({"id": "s2", "type": "chat", "session_id": "session_A", "payload": {}, "ts": "..."})
    backend.save({"id": "ltm1", "type": "fact", "payload": {}})
    backend.save({"id": "s3", "type": "chat", "session_id": "session_B", "payload": {}})
    assert sorted(backend.delete_session("session_A")) == ["s1", "s2"]
    assert backend.load("s1") is None and backend.load("s2") is None
    assert same(backend.load("ltm1"), {"id": "ltm1", "type": "fact", "payload": {}})
    assert same(backend.load("s3"), {"id": "s3", "type": "chat", "session_id": "session_B", "payload": {}})


REFUSED = {
    "no id": {"type": "t", "payload": {}},
    "no type": {"id": "x", "payload": {}},
    "no payload": {"id": "x", "type": "t"},
    "payload not an object": {"id": "x", "type": "t", "payload": "text"},
    "id not a string": {"id": 5, "type": "t", "payload": {}},
    "session_id not a string": {"id": "x", "type": "t", "payload": {}, "session_id": 5},
    "source of 192 characters": {"id": "x", "type": "t", "payload": {}, "source": "s" * 192},
    "NaN in an extra key": {"id": "x", "type": "t", "payload": {}, "extra": float("nan")},
    "NUL in an extra key's name": {"id": "x", "type": "t", "payload": {}, "a\x00b": 1},
    "integer beyond 2**53 in an extra key": {"id": "x", "type": "t", "payload": {}, "n": 2**60},
    "non-JSON extra value": {"id": "x", "type": "t", "payload": {}, "when": datetime.now(timezone.utc)},
    "1000-deep extra value": {"id": "x", "type": "t", "payload": {}, "deep": nested(1000)},
    "the row's version": {"id": "x", "type": "t", "payload": {}, "version": 9},
    "the row's namespace": {"id": "x", "type": "t", "payload": {}, "namespace": "other"},
    "expiry that is no timestamp": {"id": "x", "type": "t", "payload": {}, "expires_at": "soon"},
    "non-string key": {"id": "x", "type": "t", "payload": {}, 1: "one"},
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_save_still_refuses_what_cannot_be_stored(backend: Any, case: str) -> None:
    with pytest.raises(ValidationFailed):
        backend.save(REFUSED[case])
    assert backend.load("x") is None
    assert backend.query() == []


def test_document_size_counts_towards_the_limit(make_store: Any) -> None:
    storage = make_store(max_payload_bytes=1000).storage
    with pytest.raises(ValidationFailed, match="document"):
        storage.save({"id": "x", "type": "t", "payload": {}, "blob": "x" * 2000})
    storage.save({"id": "x", "type": "t", "payload": {}, "blob": "x" * 500})
    assert storage.load("x")["blob"] == "x" * 500


# ---------------------------------------------------------------------------- store operations over them


def test_store_operations_keep_what_they_do_not_change(store: Any) -> None:
    """Like memstate's store over a loaded document: update writes the new payload and ts, promote the
    session, and both keep the caller's other keys and spellings; a commit replaces the whole document."""
    st = store.storage
    st.save({"id": "u", "type": "t", "payload": {"a": 1}, "ts": TS, "meta": {"k": 1}})
    store.update("u", {"payload": {"b": 2}})
    after = st.load("u")
    assert set(after) == {"id", "type", "payload", "ts", "meta"}
    assert after["payload"] == {"a": 1, "b": 2} and after["meta"] == {"k": 1}
    assert after["ts"].endswith("Z") and after["ts"] > TS[:-6]

    st.save({"id": "p", "type": "t", "payload": {}, "session_id": "s", "ts": "...", "meta": 1})
    assert store.promote_session("s") == ["p"]
    assert same(st.load("p"), {"id": "p", "type": "t", "payload": {}, "session_id": None, "ts": "...", "meta": 1})

    store.commit(ms.Fact(id="u", type="t", payload={"c": 3}))
    assert set(st.load("u")) == {"id", "type", "payload", "source", "session_id", "ts"}


def test_rollback_restores_the_saved_document(store: Any) -> None:
    st = store.storage
    saved = {"id": "r", "type": "t", "payload": {"a": 1}, "ts": "2026-12-01T21:19:03+02:00", "meta": [1, "x"]}
    st.save(saved)
    store.update("r", {"payload": {"a": 2}})
    store.delete(None, "r")
    assert store.rollback(None, 2) == 2
    assert same(st.load("r"), saved)
    assert same(store.get("r"), saved)


def test_saved_documents_survive_verify_and_export_import(mode: str, make_store: Any, db_url: str, prefix: str) -> None:
    """Rows written through logged paths with documents of their own (a rollback to a saved document,
    records appended in memstate's shapes) replay in verify() and come back exactly from an import."""
    store = make_store()
    st = store.storage
    saved = {"id": "r", "type": "t", "payload": {"a": 1}, "ts": TS, "meta": {"x": None}}
    st.save(saved)
    store.commit(ms.Fact(id="other", type="t", payload={}), session_id="s")
    st.append_tx({"uuid": "minimal", "seq": 1, "ts": "..."})
    st.append_tx({"session_id": "s", "uuid": "no-op", "seq": 2, "ts": datetime(2026, 1, 1).isoformat(), "x": [1]})
    facts = {fid: st.load(fid) for fid in ("r", "other")}
    logs = {s: st.get_tx_log(s, limit=100) for s in (None, "s")}

    out = io.StringIO()
    source = ms.SQLStorage(db_url, table_prefix=prefix)
    try:
        write_export(source, out)
    finally:
        source.close()
    exported = [json.loads(line) for line in out.getvalue().splitlines()]
    assert exported[0]["format_version"] == 2
    assert sum(1 for line in exported if "document" in line) == 3  # r, minimal, no-op: nothing else

    target = ms.SQLStorage(db_url, table_prefix=prefix + "_b")
    try:
        load_export(target, io.StringIO(out.getvalue()))
        assert {fid: target.load(fid) for fid in facts} == facts
        assert all(same(target.load(fid), doc) for fid, doc in facts.items())
        for session, records in logs.items():
            assert same(without_seq(target.get_tx_log(session, limit=100)), without_seq(records))
    finally:
        target.close()
        from tests.conftest import drop_prefix

        drop_prefix(db_url, prefix + "_b")


def test_verify_replays_a_log_of_saved_documents(store: Any) -> None:
    st = store.storage
    st.save({"id": "v", "type": "t", "payload": {"a": 1}, "ts": TS, "extra": True})
    # what memstate's store logs for that save, and then an update of ours on top
    st.append_tx(
        {
            "uuid": "c1",
            "session_id": None,
            "seq": 1,
            "ts": TS,
            "op": "COMMIT",
            "fact_id": "v",
            "fact_before": None,
            "fact_after": st.load("v"),
        }
    )
    store.update("v", {"payload": {"a": 2}})
    report = st.verify()
    assert report.ok, report.problems
    assert store.rollback(None, 1) == 1
    assert same(st.load("v"), {"id": "v", "type": "t", "payload": {"a": 1}, "ts": TS, "extra": True})
    report = st.verify()
    assert report.ok, report.problems


# ---------------------------------------------------------------------------- the log


def test_tx_log_pagination_of_memstate_records(backend: Any) -> None:
    """memstate's pagination test: records without op or fact_id, naive ts."""
    appended = [
        {"session_id": "session_1", "uuid": f"tx_{i}", "seq": i, "ts": datetime(2026, 1, 1, 0, 0, i).isoformat()}
        for i in range(5)
    ]
    for record in appended:
        backend.append_tx(dict(record))
    logs = backend.get_tx_log(session_id="session_1", limit=10)
    assert [r["uuid"] for r in logs] == ["tx_4", "tx_3", "tx_2", "tx_1", "tx_0"]
    assert same(without_seq(logs), without_seq(appended[::-1]))
    seqs = [r["seq"] for r in logs]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 5  # the database's sequence
    assert [r["uuid"] for r in backend.get_tx_log(session_id="session_1", limit=2)] == ["tx_4", "tx_3"]
    assert [r["uuid"] for r in backend.get_tx_log(session_id="session_1", limit=2, offset=2)] == ["tx_2", "tx_1"]
    assert [r["uuid"] for r in backend.get_tx_log(session_id="session_1", limit=10, offset=4)] == ["tx_0"]
    assert backend.get_tx_log(session_id="session_1", limit=0) == []
    assert backend.get_tx_log(session_id="session_1", offset=5) == []
    assert backend.get_tx_log(session_id="session_2") == []
    assert backend.get_tx_log(session_id=None) == []


def test_delete_txs_of_memstate_records(backend: Any) -> None:
    """memstate's delete_txs test: records with op but without fact_id."""
    for i in range(1, 4):
        backend.append_tx({"session_id": "session_1", "seq": i, "uuid": f"t{i}", "op": "COMMIT", "ts": TS})
    logs = backend.get_tx_log(session_id="session_1", limit=10)
    assert [r["uuid"] for r in logs] == ["t3", "t2", "t1"]
    assert same(without_seq(logs)[0], {"session_id": "session_1", "uuid": "t3", "op": "COMMIT", "ts": TS})
    backend.delete_txs(["t3"])
    assert [r["uuid"] for r in backend.get_tx_log(session_id="session_1", limit=10)] == ["t2", "t1"]
    backend.delete_txs([])
    backend.delete_txs(["t1", "t2", "never-logged"])
    assert backend.get_tx_log(session_id="session_1", limit=10) == []


RECORDS = {
    "minimal": {"uuid": "m", "seq": 0, "ts": TS},
    "no seq, no ts": {"uuid": "m"},
    "no uuid": {"session_id": None, "ts": "..."},
    "null op and session": {"uuid": "m", "op": None, "session_id": None, "ts": TS},
    "op without fact_id": {"uuid": "m", "op": "DELETE", "ts": TS},
    "images and extra keys": {
        "uuid": "m",
        "ts": "2026-12-01T19:19:03.316773",
        "op": "UPDATE",
        "fact_id": "f",
        "fact_before": {"id": "f", "type": "t", "payload": {"a": 1}},
        "fact_after": {"id": "f", "type": "t", "payload": {"a": 2}, "ts": TS, "extra": 1},
        "actor": "agent",
        "reason": "why",
        "trace": {"span": 7},
    },
}


@pytest.mark.parametrize("case", sorted(RECORDS))
def test_append_tx_keeps_the_record(backend: Any, case: str) -> None:
    record = RECORDS[case]
    backend.append_tx(json.loads(json.dumps(record)))
    logs = backend.get_tx_log(record.get("session_id"), limit=10)
    assert len(logs) == 1
    (got,) = logs
    assert isinstance(got["seq"], int) and got["seq"] >= 1
    expected = {k: v for k, v in record.items() if k != "seq"}
    if "uuid" not in record:
        assert set(got) == {"seq", *record}  # no uuid comes back, though the row has one for delete_txs
    assert same(without_seq([got]), [expected])


def test_memstate_tx_entries_are_stored_once(backend: Any, db_url: str, prefix: str) -> None:
    """The records memstate's store appends (`TxEntry.model_dump(mode="json")`) are canonical: no copy."""
    from memstate.constants import Operation
    from memstate.schemas import TxEntry

    entry = TxEntry(session_id="s", seq=41, ts=datetime.now(timezone.utc), op=Operation.COMMIT, fact_id="f")
    record = entry.model_dump(mode="json")
    backend.append_tx(record)
    assert document_column(db_url, prefix, "tx") == [None]
    (got,) = backend.get_tx_log("s")
    assert same(without_seq([got]), without_seq([record]))


BAD_RECORDS = {
    "not a mapping": ["uuid"],
    "unknown op": {"uuid": "x", "op": "DROP TABLE"},
    "uuid of 37 characters": {"uuid": "u" * 37},
    "empty uuid": {"uuid": ""},
    "null uuid": {"uuid": None},
    "session_id not a string": {"uuid": "x", "session_id": 5},
    "fact_id of 192 characters": {"uuid": "x", "fact_id": "f" * 192},
    "reason not a string": {"uuid": "x", "reason": 5},
    "image not a document": {"uuid": "x", "fact_before": "text"},
    "NaN in an image": {"uuid": "x", "fact_after": {"a": float("nan")}},
    "NUL in an extra value": {"uuid": "x", "note": "a\x00"},
    "the log's reverted_by": {"uuid": "x", "reverted_by": "y"},
    "non-string key": {"uuid": "x", 3: "three"},
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_append_tx_still_refuses_what_cannot_be_stored(backend: Any, case: str) -> None:
    with pytest.raises(ValidationFailed):
        backend.append_tx(BAD_RECORDS[case])
    assert backend.get_tx_log(None) == [] and backend.get_tx_log("x") == []


# ---------------------------------------------------------------------------- concurrency


def test_fifty_concurrent_saves(mode: str, db_url: str, prefix: str) -> None:
    """memstate's concurrency test: 50 threads (or tasks) save ``ts: "..."`` at once; all 50 land."""
    docs = [{"id": f"t-{i}", "type": "thread", "payload": {}, "ts": "..."} for i in range(50)]
    if mode == "sync":
        storage = ms.SQLStorage(db_url, table_prefix=prefix)
        errors: list[BaseException] = []

        def worker(doc: dict[str, Any]) -> None:
            try:
                storage.save(doc)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(d,)) for d in docs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            assert errors == []
            found = storage.query(type_filter="thread")
        finally:
            storage.close()
    else:

        async def main() -> list[dict[str, Any]]:
            storage = ms.AsyncSQLStorage(db_url, table_prefix=prefix)
            try:
                await asyncio.gather(*(storage.save(d) for d in docs))
                return await storage.query(type_filter="thread")
            finally:
                await storage.close()

        found = asyncio.run(main())
    assert len(found) == 50
    assert sorted(found, key=lambda d: d["id"]) == sorted(docs, key=lambda d: d["id"])


# ---------------------------------------------------------------------------- memstate's own store over SQLStorage


def _script(store: Any, storage: Any) -> None:
    """A memstate MemoryStore session: commits, updates, a singleton re-commit, a delete, a rollback."""
    from memstate import Constraint, Fact
    from pydantic import BaseModel

    class User(BaseModel):
        email: str
        name: str

    store.register_schema("user", User, Constraint(singleton_key="email"))
    a = store.commit(Fact(id="a", type="user", payload={"email": "a@x", "name": "A"}), session_id="s1")
    store.commit(Fact(id="n1", type="note", payload={"text": "hi"}), session_id="s1")
    store.update(a, {"payload": {"name": "Ada"}})
    store.commit(Fact(id="a2", type="user", payload={"email": "a@x", "name": "Ada L."}), session_id="s1")
    store.commit(Fact(id="g", type="note", payload={"text": "global"}))
    store.delete("s1", "n1")
    store.rollback("s1", 2)


def test_memstate_store_over_sqlstorage_matches_its_in_memory_backend(db_url: str, prefix: str) -> None:
    """Every document and log record memstate's MemoryStore leaves in SQLStorage is what it leaves in
    memstate's InMemoryStorage (log records compared without seq, which each assigns its own way)."""
    from memstate import InMemoryStorage, MemoryStore

    reference = InMemoryStorage()
    _script(MemoryStore(reference), reference)
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    try:
        _script(MemoryStore(storage), storage)
        for fid in ("a", "a2", "n1", "g"):
            assert same(shape(storage.load(fid)), shape(reference.load(fid))), fid
        by_id = lambda docs: sorted(docs, key=lambda d: d["id"])  # noqa: E731
        assert same(shape(by_id(storage.query())), shape(by_id(reference.query())))
        for session in ("s1", None):
            ours, theirs = storage.get_tx_log(session, limit=100), reference.get_tx_log(session, limit=100)
            assert same(shape(ours), shape(theirs)), session
        assert storage.verify().ok, storage.verify().problems
    finally:
        storage.close()


def test_memstate_async_store_over_async_sqlstorage(db_url: str, prefix: str) -> None:
    from memstate import AsyncMemoryStore, Fact

    async def main() -> tuple[Any, Any, Any]:
        storage = ms.AsyncSQLStorage(db_url, table_prefix=prefix)
        try:
            store = AsyncMemoryStore(storage)
            fid = await store.commit(Fact(id="a", type="note", payload={"v": 1}), session_id="s")
            await store.update(fid, {"payload": {"v": 2}})
            updated = await storage.load(fid)
            await store.rollback("s", 1)
            return updated, await storage.load(fid), await storage.get_tx_log("s")
        finally:
            await storage.close()

    updated, restored, log = asyncio.run(main())
    assert updated["payload"] == {"v": 2} and updated["ts"].endswith("+00:00")  # memstate's spelling, kept
    assert restored["payload"] == {"v": 1} and restored["ts"].endswith("Z")
    assert [r["op"] for r in log] == ["COMMIT"]


# ---------------------------------------------------------------------------- schema


#: The revision ms_0003_documents upgrades from.
BELOW_DOCUMENTS = "ms_0004_galera"


def test_downgrade_refuses_to_drop_kept_documents(db_url: str, prefix: str) -> None:
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    try:
        storage.save({"id": "x", "type": "t", "payload": {}})
        with pytest.raises(ms.SchemaVersionError, match="1 facts and 0 log entries"):
            migrations.downgrade(db_url, BELOW_DOCUMENTS, table_prefix=prefix)
        storage.save({"id": "x", "type": "t", "payload": {}, "source": None, "session_id": None, "ts": TS[:-6] + "Z"})
    finally:
        storage.close()
    migrations.downgrade(db_url, BELOW_DOCUMENTS, table_prefix=prefix)
    assert ms.migrate(db_url, table_prefix=prefix) == schema.HEAD_REVISION
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    try:
        assert storage.load("x")["ts"] == TS[:-6] + "Z"
    finally:
        storage.close()


def test_a_saved_document_with_a_past_ts_still_expires_by_its_column(backend: Any) -> None:
    past = (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat()
    backend.save({"id": "e", "type": "t", "payload": {}, "ts": past, "expires_at": past})
    assert backend.load("e") is None  # expired facts exist for no reader, whatever their document


def test_import_memstate_keeps_memstate_documents_exactly(tmp_path: Any, db_url: str, prefix: str) -> None:
    """A memstate SQLite database whose store updated a fact (ts spelled ``+00:00``) and whose backend
    saved a document of its own: `import-memstate` brings both over unchanged, log records too."""
    import sqlalchemy as sa
    from memstate import Fact, MemoryStore, SQLiteStorage

    from memstate_sql.memstate_import import import_memstate

    path = tmp_path / "memstate.db"
    source = SQLiteStorage(str(path))
    store = MemoryStore(source)
    store.commit(Fact(id="a", type="note", payload={"v": 1}), session_id="s")
    store.update("a", {"payload": {"v": 2}})
    source.save({"id": "odd", "type": "t", "payload": {}, "ts": "...", "x": [1]})
    facts = {fid: source.load(fid) for fid in ("a", "odd")}
    log = source.get_tx_log("s")
    source.close()
    assert facts["a"]["ts"].endswith("+00:00")

    engine = sa.create_engine(f"sqlite:///{path}")
    target = ms.SQLStorage(db_url, table_prefix=prefix)
    try:
        import_memstate(target, engine)
        assert all(same(target.load(fid), doc) for fid, doc in facts.items())
        assert same(without_seq(target.get_tx_log("s")), without_seq(log))
    finally:
        target.close()
        engine.dispose()


def test_the_command_line_shows_documents_and_records_of_any_shape(
    db_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`facts`, `get`, `log` and `rollback --dry-run` read what memstate's shapes lack as empty."""
    from tests.cli_support import cli

    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    try:
        storage.save({"id": "odd", "type": "t", "payload": {"a": 1}, "x": 1})
        storage.append_tx({"uuid": "minimal", "seq": 1, "ts": "..."})
        storage.append_tx({"session_id": "s"})
    finally:
        storage.close()
    target = ["--url", db_url, "--prefix", prefix]
    facts = cli(capsys, "facts", *target)
    assert facts.code == 0 and "odd" in facts.out, facts.err
    got = cli(capsys, "get", *target, "odd")
    assert got.code == 0 and "source:" in got.out, got.err
    assert cli(capsys, "get", *target, "--json", "odd").json() == {
        "id": "odd",
        "type": "t",
        "payload": {"a": 1},
        "x": 1,
    }
    for session in ([], ["--session", "s"]):
        log = cli(capsys, "log", *target, *session)
        assert log.code == 0, log.err
    plan = cli(capsys, "rollback", *target, "--session", "s", "--dry-run")
    assert plan.code == 0, plan.err
