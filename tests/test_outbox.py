"""External indexes: the outbox, its dispatcher, reconcile, and memstate's Qdrant and Chroma hooks.

Every test runs on SQLite, PostgreSQL and MySQL/MariaDB (the `db_url` fixture). The indexes are real
(Qdrant's local mode, Chroma's persistent client) with a deterministic hashing embedding, or a recording
index (tests/outbox_support.py) that counts deliveries and can be taken down.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

import memstate_sql as ms
from memstate_sql import outbox
from memstate_sql.dispatcher import AsyncDispatcher, Dispatcher, areconcile, outbox_status, reconcile
from tests.conftest import Blocking, count_rows
from tests.outbox_support import RecordingIndex, hash_embedding

ROOT = Path(__file__).resolve().parent.parent


class Note(BaseModel):
    text: str
    role: str = "note"


def expected(store: Any) -> dict[str, int]:
    """What an index of the `text` field must hold: every live fact with a text, at its version."""
    return {d["id"]: store.get_version(d["id"]) for d in store.query() if str(d["payload"].get("text", "")).strip()}


@pytest.fixture
def make_store(mode: str, db_url: str, prefix: str) -> Any:
    """Stores in the parametrized mode, with the hooks given as they are (an index hook's own methods
    may be sync or async; conftest's factory would wrap them as foreign coroutines)."""
    cleanups: list[Any] = []
    loop = asyncio.new_event_loop() if mode == "async" else None

    def factory(hooks: list[Any] | None = None) -> Any:
        if loop is None:
            st = ms.SQLStorage(db_url, table_prefix=prefix)
            cleanups.append(st.close)
            return ms.MemoryStore(st, hooks)
        ast = ms.AsyncSQLStorage(db_url, table_prefix=prefix)
        cleanups.append(lambda: loop.run_until_complete(ast.close()))
        return Blocking(ms.AsyncMemoryStore(ast, list(hooks or [])), loop)

    yield factory
    for cleanup in reversed(cleanups):
        cleanup()
    if loop is not None:
        loop.close()


@pytest.fixture
def side(db_url: str, prefix: str) -> Any:
    """A sync storage of the test's tables, as a dispatcher in another process would open it."""
    st = ms.SQLStorage(db_url, table_prefix=prefix)
    yield st
    st.close()


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "BACKOFF_BASE", 0.0)


# ---------------------------------------------------------------------------- memstate's documented examples


def test_memstate_qdrant_example_with_only_the_import_changed(db_url: str, prefix: str) -> None:
    """docs/documentation/integrations.md of memstate, "Qdrant Hook" (sync), on memstate_sql: the same
    code with ``from memstate_sql...`` (and a deterministic embedding instead of FastEmbed's download)."""
    import qdrant_client

    from memstate_sql import MemoryStore, SQLStorage
    from memstate_sql.integrations.qdrant import QdrantSyncHook

    client = qdrant_client.QdrantClient(":memory:")
    hook = QdrantSyncHook(
        client=client,
        collection_name="agent_memory",
        text_field="content",
        metadata_fields=["role"],
        embedding_fn=hash_embedding,
    )
    store = MemoryStore(storage=SQLStorage(db_url, table_prefix=prefix), hooks=[hook])

    class UserPref(BaseModel):
        content: str
        role: str

    store.register_schema("preference", UserPref)
    fid = store.commit_model(model=UserPref(content="User prefers vegetarian food", role="preference"))
    other = store.commit_model(model=UserPref(content="User lives in London", role="profile"))
    # Right after the commit, a search through the hook finds the fact (delivered within the call).
    hits = store.search("vegetarian food", limit=1)
    assert [h.fact.id for h in hits] == [fid]
    assert hits[0].fact.payload["content"] == "User prefers vegetarian food"
    point = client.retrieve("agent_memory", [fid], with_payload=True)[0]
    assert point.payload is not None and point.payload["role"] == "preference"
    assert point.payload["memstate_version"] == 1
    # Qdrant filters pass through, as in memstate.
    assert [h.fact.id for h in store.search("User", filters={"role": "profile"})] == [other]
    store.update(fid, {"payload": {"content": "User prefers vegan food"}})
    assert client.retrieve("agent_memory", [fid], with_payload=True)[0].payload["memstate_version"] == 2  # type: ignore[index]
    store.delete(None, fid)
    assert client.count("agent_memory").count == 1
    assert outbox_status(store) == []
    store.storage.close()


def test_memstate_async_qdrant_example_with_only_the_import_changed(db_url: str, prefix: str) -> None:
    """memstate's "Qdrant Hook" (async) example on `AsyncMemoryStore`."""
    import qdrant_client

    from memstate_sql import AsyncMemoryStore, AsyncSQLStorage
    from memstate_sql.integrations.qdrant import AsyncQdrantSyncHook

    async def main() -> None:
        client = qdrant_client.AsyncQdrantClient(":memory:")
        hook = AsyncQdrantSyncHook(
            client=client,
            collection_name="agent_memory",
            text_field="content",
            metadata_fields=["role"],
            embedding_fn=hash_embedding,
        )
        storage = AsyncSQLStorage(db_url, table_prefix=prefix)
        store = AsyncMemoryStore(storage=storage, hooks=[hook])
        fid = await store.commit(ms.Fact(type="note", payload={"content": "the cat sat on the mat", "role": "x"}))
        await store.commit(ms.Fact(type="note", payload={"content": "stock prices fell sharply", "role": "y"}))
        hits = await store.search("cat on a mat", limit=1)
        assert [h.fact.id for h in hits] == [fid]
        assert (await client.count("agent_memory")).count == 2
        await store.delete(None, fid)
        assert (await client.count("agent_memory")).count == 1
        await storage.close()

    asyncio.run(main())


def test_memstate_chroma_quickstart_with_only_the_import_changed(db_url: str, prefix: str, tmp_path: Path) -> None:
    """memstate's README quick start (ChromaSyncHook, commit_model, HookError) on memstate_sql, with
    Chroma's persistent client and a deterministic embedding function."""
    import chromadb
    from chromadb import Documents, EmbeddingFunction, Embeddings

    from memstate_sql import HookError, MemoryStore, SQLStorage
    from memstate_sql.integrations.chroma import ChromaSyncHook

    class HashEF(EmbeddingFunction[Documents]):
        def __init__(self) -> None:
            pass

        def __call__(self, input: Documents) -> Embeddings:
            import numpy as np

            return [np.array(hash_embedding(text), dtype=np.float32) for text in input]

    class UserPref(BaseModel):
        content: str
        role: str

    sql = SQLStorage(db_url, table_prefix=prefix)
    chroma = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    mem = MemoryStore(sql)
    hook = ChromaSyncHook(chroma, "agent_memory", embedding_fn=HashEF(), text_field="content", metadata_fields=["role"])
    mem.add_hook(hook)
    mem.register_schema("preference", UserPref)
    try:
        fid = mem.commit_model(model=UserPref(content="User prefers vegetarian", role="preference"))
    except HookError as e:  # pragma: no cover - the example's error path
        pytest.fail(f"Commit failed, SQL rolled back automatically: {e}")
    got = hook.collection.get(ids=[fid], include=["metadatas", "documents"])
    assert got["documents"] == ["User prefers vegetarian"]
    assert got["metadatas"] is not None and got["metadatas"][0]["role"] == "preference"
    assert [h.fact.id for h in mem.search("vegetarian", limit=1)] == [fid]
    # A rolled-back commit (a later hook refuses) leaves no entry in Chroma.
    mem.add_hook(lambda op, fact_id, fact: (_ for _ in ()).throw(RuntimeError("refused")))
    with pytest.raises(HookError):
        mem.commit_model(model=UserPref(content="never stored", role="preference"))
    assert hook.collection.count() == 1
    # The index seen by a new client of the same directory (persistent) is the same.
    again = chromadb.PersistentClient(path=str(tmp_path / "chroma")).get_collection("agent_memory")
    assert again.get()["ids"] == [fid]
    sql.close()


# ---------------------------------------------------------------------------- atomicity


@pytest.mark.parametrize("delivery", ["after_commit", "outbox"])
def test_a_rolled_back_operation_never_produces_a_vector(
    make_store: Any, delivery: str, db_url: str, prefix: str, side: ms.SQLStorage
) -> None:
    index = RecordingIndex(delivery=delivery)

    def refuse(op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
        raise RuntimeError("refused")

    store = make_store([index, refuse])
    with pytest.raises(ms.HookError):
        store.commit(ms.Fact(type="note", payload={"text": "ghost"}))
    with pytest.raises(ms.HookError):
        store.commit_many([ms.Fact(type="note", payload={"text": f"g{i}"}) for i in range(3)])
    assert index.puts == [] and index.held == {}
    assert count_rows(db_url, prefix, "outbox") == 0
    Dispatcher(side, [index]).deliver()
    assert index.puts == []


def test_in_transaction_delivery_keeps_memstates_semantics(storage: ms.SQLStorage) -> None:
    """``delivery="in_transaction"`` writes the index before COMMIT, as memstate does: a later failure
    rolls the database back but not the index (the ghost the outbox modes prevent)."""
    index = RecordingIndex(delivery="in_transaction")

    def refuse(op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
        raise RuntimeError("refused")

    store = ms.MemoryStore(storage, [index])
    fid = store.commit(ms.Fact(type="note", payload={"text": "kept"}))
    assert index.held == {fid: 1}
    store.add_hook(refuse)
    with pytest.raises(ms.HookError):
        store.commit(ms.Fact(type="note", payload={"text": "ghost"}))
    assert len(index.held) == 2  # the ghost
    assert store.count() == 1


def test_after_commit_delivery_happens_within_the_call(make_store: Any, db_url: str, prefix: str) -> None:
    index = RecordingIndex()
    store = make_store([index])
    fid = store.commit(ms.Fact(type="note", payload={"text": "hello"}))
    assert index.held == {fid: 1}
    ids = store.commit_many([ms.Fact(type="note", payload={"text": f"n{i}"}) for i in range(5)])
    assert set(index.held) == {fid, *ids}
    store.update(fid, {"payload": {"text": "hello again"}})
    assert index.held[fid] == 2
    store.commit(ms.Fact(type="note", payload={"text": "s"}), session_id="s1")
    store.discard_session("s1")
    store.delete(None, ids[0])
    assert index.held == expected(store)
    assert count_rows(db_url, prefix, "outbox") == 0
    assert Counter(index.puts)[(fid, 1)] == 1  # each change delivered once


def test_index_down_then_up_delivers_every_change_once_in_effect(
    make_store: Any, db_url: str, prefix: str, no_backoff: None, side: ms.SQLStorage
) -> None:
    index = RecordingIndex()
    store = make_store([index])
    kept = store.commit(ms.Fact(type="note", payload={"text": "before the outage"}))
    index.down = True
    ids = [store.commit(ms.Fact(type="note", payload={"text": f"fact {i}"})) for i in range(6)]
    for fid in ids[:3]:
        store.update(fid, {"payload": {"text": "changed once"}})
        store.update(fid, {"payload": {"text": "changed twice"}})
    store.delete(None, ids[3])
    store.delete(None, kept)
    store.commit_many([ms.Fact(type="note", payload={"text": f"batch {i}"}) for i in range(3)], session_id="s")
    store.discard_session("s")
    store.commit(ms.Fact(type="note", payload={"text": ""}, id="empty"))
    # Every store call succeeded; the index learnt nothing; the outbox holds every change.
    assert index.puts == [(kept, 1)]
    status = outbox_status(side)
    assert status[0]["target"] == "rec" and status[0]["pending"] >= 10 and status[0]["failing"] >= 1
    assert status[0]["last_error"] and "index unreachable" in status[0]["last_error"]
    # While down, a dispatcher's round fails and counts the attempt (backoff applies).
    dispatcher = Dispatcher(side, [index])
    assert dispatcher.deliver().failed > 0
    index.down = False
    puts_before = len(index.puts)
    report = dispatcher.deliver()
    assert report.failed == 0
    assert index.held == expected(store)
    delivered = index.puts[puts_before:]
    # Several pending changes of one fact are delivered as one: each surviving fact once, at its last version.
    assert Counter(fid for fid, _ in delivered) == Counter(list(expected(store)))
    assert count_rows(db_url, prefix, "outbox") == 0
    assert dispatcher.deliver().delivered == 0


def test_a_commit_after_the_outage_also_delivers_the_older_pending_change(make_store: Any, no_backoff: None) -> None:
    index = RecordingIndex()
    store = make_store([index])
    fid = store.commit(ms.Fact(type="note", payload={"text": "v1"}))
    index.down = True
    store.update(fid, {"payload": {"text": "v2"}})
    index.down = False
    store.update(fid, {"payload": {"text": "v3"}})  # the fact has an older pending row: claimed in the call
    assert index.held == {fid: 3}
    assert index.puts == [(fid, 1), (fid, 3)]  # v2 was never sent alone: v3 covers it


def test_two_dispatchers_at_once_deliver_each_change_once(db_url: str, prefix: str) -> None:
    index = RecordingIndex(delivery="outbox", delay=0.01)
    first = ms.SQLStorage(db_url, table_prefix=prefix)
    store = ms.MemoryStore(first, [index])
    ids = store.commit_many([ms.Fact(type="note", payload={"text": f"fact {i}"}) for i in range(40)])
    for fid in ids[:10]:
        store.update(fid, {"payload": {"text": "updated"}})
    assert index.puts == []
    second = ms.SQLStorage(db_url, table_prefix=prefix)
    dispatchers = [Dispatcher(first, [index], batch_size=4), Dispatcher(second, [index], batch_size=4)]
    errors: list[BaseException] = []

    def run(d: Dispatcher) -> None:
        try:
            d.deliver()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(d,)) for d in dispatchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert Counter(fid for fid, _ in index.puts) == Counter(ids)  # each fact exactly once
    assert index.held == expected(store)
    assert all(d.total.delivered > 0 for d in dispatchers)  # both worked
    assert count_rows(db_url, prefix, "outbox") == 0
    second.close()
    first.close()


def test_a_dispatcher_killed_mid_delivery_resumes_without_loss_or_duplication(
    db_url: str, prefix: str, tmp_path: Path
) -> None:
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    store = ms.MemoryStore(storage, [RecordingIndex(delivery="outbox")])
    ids = [store.commit(ms.Fact(type="note", payload={"text": f"fact {i}"})) for i in range(8)]
    store.update(ids[0], {"payload": {"text": "newer"}})
    log_path = tmp_path / "deliveries.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.outbox_support", db_url, prefix, str(log_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if log_path.exists() and len(log_path.read_text().splitlines()) >= 3:
                break
            assert proc.poll() is None, "the dispatcher process ended early"
            time.sleep(0.02)
        else:  # pragma: no cover
            pytest.fail("the dispatcher process delivered nothing")
        time.sleep(0.1)  # inside a delivery: the index has it, the outbox does not know yet
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:  # pragma: no cover
            proc.kill()
            proc.wait()
    killed = [tuple(json.loads(line)) for line in log_path.read_text().splitlines()]
    assert 3 <= len(killed) < 8
    assert count_rows(db_url, prefix, "outbox") > 0
    # A new dispatcher (after the dead one's lease of 3 s ran out) finishes the work.
    resumed = RecordingIndex("rec", log_path=str(log_path))
    dispatcher = Dispatcher(storage, [resumed], batch_size=2)
    deadline = time.monotonic() + 30
    while count_rows(db_url, prefix, "outbox") and time.monotonic() < deadline:
        dispatcher.deliver()
        time.sleep(0.2)
    assert count_rows(db_url, prefix, "outbox") == 0
    deliveries = [tuple(json.loads(line))[1:] for line in log_path.read_text().splitlines()]
    final = {fid: version for fid, version in deliveries}
    assert final == expected(store)  # no loss
    per_fact = Counter(fid for fid, _ in deliveries)
    assert set(per_fact) == set(ids)
    # At most the one fact in flight when the process died is delivered twice (same version: idempotent).
    twice = [fid for fid, n in per_fact.items() if n > 1]
    assert len(twice) <= 1
    for fid in twice:
        assert len({v for f, v in deliveries if f == fid}) == 1
    storage.close()


def test_failed_deliveries_back_off(storage: ms.SQLStorage) -> None:
    index = RecordingIndex(delivery="outbox")
    store = ms.MemoryStore(storage, [index])
    store.commit(ms.Fact(type="note", payload={"text": "x"}))
    index.down = True
    dispatcher = Dispatcher(storage, [index])
    assert dispatcher.deliver().failed == 1
    index.down = False
    assert dispatcher.deliver().delivered == 0  # not due yet: backoff
    status = outbox_status(storage)[0]
    assert status["due"] == 0 and status["max_attempts"] == 1
    with storage.engine.begin() as conn:  # time passes
        conn.execute(sa.text(f"UPDATE {storage.table_prefix}_outbox SET next_attempt_at = :t"), {"t": "2000-01-01"})
    assert dispatcher.deliver().delivered == 1


def test_background_dispatcher_delivers(storage: ms.SQLStorage) -> None:
    index = RecordingIndex(delivery="outbox")
    store = ms.MemoryStore(storage, [index])
    with Dispatcher(store, [index], interval=0.05) as dispatcher:
        fid = store.commit(ms.Fact(type="note", payload={"text": "x"}))
        deadline = time.monotonic() + 20
        while fid not in index.held and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dispatcher.running
    assert index.held == {fid: 1}


def test_async_dispatcher_and_async_qdrant_hook(db_url: str, prefix: str, no_backoff: None) -> None:
    import qdrant_client

    from memstate_sql.integrations.qdrant import AsyncQdrantSyncHook

    async def main() -> None:
        client = qdrant_client.AsyncQdrantClient(":memory:")
        hook = AsyncQdrantSyncHook(client, "m", embedding_fn=hash_embedding, text_field="text", delivery="outbox")
        storage = ms.AsyncSQLStorage(db_url, table_prefix=prefix)
        store = ms.AsyncMemoryStore(storage, [hook])
        ids = [await store.commit(ms.Fact(type="note", payload={"text": f"fact {i}"})) for i in range(4)]
        await store.delete(None, ids[0])
        assert not await client.collection_exists("m") or (await client.count("m")).count == 0
        async with AsyncDispatcher(store, [hook], interval=0.05):
            deadline = time.monotonic() + 20
            while (await storage.count()) != 3 or (
                not await client.collection_exists("m") or (await client.count("m")).count != 3
            ):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        assert set(await hook.entries()) == set(ids[1:])
        assert await AsyncDispatcher(store, [hook]).status() == []
        await hook.remove([ids[1]])  # behind our back
        report = await areconcile(store, hook)
        assert report.missing == [ids[1]] and report.repaired
        assert set(await hook.entries()) == set(ids[1:])
        await storage.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------- reconcile


def test_reconcile_repairs_an_index_edited_behind_our_back_qdrant(db_url: str, prefix: str) -> None:
    import qdrant_client
    from qdrant_client import models

    from memstate_sql.integrations.qdrant import QdrantSyncHook, point_id

    client = qdrant_client.QdrantClient(":memory:")
    hook = QdrantSyncHook(client, "m", embedding_fn=hash_embedding, text_field="text")
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    store = ms.MemoryStore(storage, [hook])
    ids = [store.commit(ms.Fact(type="note", payload={"text": f"fact {i}"}, id=f"f{i}")) for i in range(5)]
    store.update(ids[1], {"payload": {"text": "fact one, newer"}})
    # Behind our back: a point deleted, one put back at an old version, a ghost added.
    client.delete("m", points_selector=models.PointIdsList(points=[point_id(ids[0])]))
    stale = ms.Fact(type="note", payload={"text": "fact one"}, id=ids[1])
    hook.put(ids[1], stale, 1)
    hook.put("ghost", ms.Fact(type="note", payload={"text": "no such fact"}, id="ghost"), 7)
    report = reconcile(store, hook, dry_run=True)
    assert (report.missing, report.stale, report.ghosts) == ([ids[0]], [ids[1]], ["ghost"])
    assert hook.entries() != expected(store)
    report = reconcile(store, hook)
    assert report.repaired
    assert hook.entries() == expected(store)
    again = reconcile(store, hook)
    assert (again.missing, again.stale, again.ghosts) == ([], [], [])
    assert [h.fact.id for h in store.search("fact one newer", limit=1)] == [ids[1]]
    storage.close()


def test_reconcile_repairs_a_chroma_collection(db_url: str, prefix: str, tmp_path: Path) -> None:
    import chromadb
    from chromadb import Documents, EmbeddingFunction, Embeddings

    from memstate_sql.integrations.chroma import ChromaSyncHook

    class HashEF(EmbeddingFunction[Documents]):
        def __init__(self) -> None:
            pass

        def __call__(self, input: Documents) -> Embeddings:
            import numpy as np

            return [np.array(hash_embedding(text), dtype=np.float32) for text in input]

    hook = ChromaSyncHook(chromadb.PersistentClient(path=str(tmp_path / "c")), "memory", HashEF(), text_field="text")
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    store = ms.MemoryStore(storage, [hook])
    ids = [store.commit(ms.Fact(type="note", payload={"text": f"fact {i}"})) for i in range(4)]
    store.update(ids[2], {"payload": {"text": "newer"}})
    hook.collection.delete(ids=[ids[0]])
    hook.put(ids[2], ms.Fact(type="note", payload={"text": "fact 2"}, id=ids[2]), 1)
    hook.collection.upsert(ids=["ghost"], documents=["ghost"], metadatas=[{"type": "note"}])
    report = reconcile(store, hook)
    assert (report.missing, report.stale, report.ghosts) == ([ids[0]], [ids[2]], ["ghost"])
    assert hook.entries() == expected(store)
    storage.close()


# ---------------------------------------------------------------------------- CLI


def index_factory() -> list[RecordingIndex]:
    """The --index factory of the CLI test (one shared recording index)."""
    return [_CLI_INDEX]


_CLI_INDEX = RecordingIndex(delivery="outbox")


def test_cli_outbox_status_deliver_reconcile(db_url: str, prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    from memstate_sql.cli import main

    _CLI_INDEX.held.clear()
    _CLI_INDEX.puts.clear()
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    store = ms.MemoryStore(storage, [_CLI_INDEX])
    ids = [store.commit(ms.Fact(type="note", payload={"text": f"fact {i}"})) for i in range(3)]
    base = ["--url", db_url, "--prefix", prefix]
    assert main(["outbox", "status", *base, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["indexes"][0]["pending"] == 3
    assert main(["outbox", "deliver", *base, "--index", "tests.test_outbox:index_factory"]) == 0
    assert "delivered 3 change(s), 0 failed" in capsys.readouterr().out
    assert _CLI_INDEX.held == expected(store)
    _CLI_INDEX.held.pop(ids[0])
    _CLI_INDEX.held["ghost"] = 1
    assert main(["outbox", "reconcile", *base, "--index", "tests.test_outbox:index_factory", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["indexes"][0] | {"checked": 0} == {
        "index": "rec", "checked": 0, "missing": 1, "stale": 0, "ghosts": 1, "repaired": True,
    }  # fmt: skip
    assert _CLI_INDEX.held == expected(store)
    assert main(["outbox", "status", *base]) == 0
    assert "is empty" in capsys.readouterr().out
    assert main(["outbox", "deliver", *base, "--index", "nope"]) == 2
    storage.close()


def test_the_migration_refuses_to_drop_undelivered_rows(db_url: str, prefix: str) -> None:
    from memstate_sql import migrations

    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    index = RecordingIndex(delivery="outbox")
    ms.MemoryStore(storage, [index]).commit(ms.Fact(type="note", payload={"text": "pending"}))
    storage.close()
    with pytest.raises(ms.SchemaVersionError, match="undelivered"):
        migrations.downgrade(db_url, "ms_0002_namespaces_expiry", table_prefix=prefix)
    side = ms.SQLStorage(db_url, table_prefix=prefix)
    assert Dispatcher(side, [index]).deliver().delivered == 1
    side.close()
    assert migrations.downgrade(db_url, "ms_0002_namespaces_expiry", table_prefix=prefix) == "ms_0002_namespaces_expiry"
    engine = sa.create_engine(db_url)
    try:
        assert f"{prefix}_outbox" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    assert migrations.migrate(db_url, table_prefix=prefix) == migrations.head_revision()
    assert count_rows(db_url, prefix, "outbox") == 0


def test_other_hooks_still_get_memstates_call(storage: ms.SQLStorage) -> None:
    """Only index hooks take the row (`notify_state`, asked of the class): any other hook, a mock
    included, is called as memstate calls it."""
    from unittest.mock import MagicMock

    mock = MagicMock()
    index = RecordingIndex()
    store = ms.MemoryStore(storage, [mock, index])
    fid = store.commit(ms.Fact(type="note", payload={"text": "x"}))
    assert mock.call_count == 1
    op, called_id, fact = mock.call_args.args
    assert (op, called_id, fact.payload) == (ms.Operation.COMMIT, fid, {"text": "x"})
    assert index.held == {fid: 1}
