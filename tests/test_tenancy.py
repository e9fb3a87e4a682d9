"""Namespaces and expiry (schema revision ms_0002): tenants that cannot see each other, facts that expire.

Every test runs on SQLite, PostgreSQL and MySQL/MariaDB (sync and asyncio where a store is used).
"""

from __future__ import annotations

import multiprocessing
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel

import memstate_sql as ms
from memstate_sql import ConflictError, Constraint, Fact, FactNotFound, Operation, ValidationFailed, migrations
from tests.dbutil import fetch, fetch_columns

PAST = datetime(2020, 1, 1, tzinfo=timezone.utc)


class User(BaseModel):
    email: str
    name: str


def tenant(make_store: Any, namespace: str | None, hooks: list[Any] | None = None) -> Any:
    return make_store(hooks, namespace=namespace)


def test_two_namespaces_never_see_or_change_each_other(make_store: Any, db_url: str, prefix: str) -> None:
    a, b = tenant(make_store, "tenant-a"), tenant(make_store, "tenant-b")
    for store in (a, b):
        store.register_schema("user", User, Constraint(singleton_key="email"))
    # The same id and the same singleton key in both namespaces: two independent facts.
    a.commit(Fact(id="profile", type="note", payload={"owner": "a"}), session_id="s")
    b.commit(Fact(id="profile", type="note", payload={"owner": "b"}), session_id="s")
    ua = a.commit(Fact(type="user", payload={"email": "x@y", "name": "A"}), session_id="s")
    ub = b.commit(Fact(type="user", payload={"email": "x@y", "name": "B"}), session_id="s")
    assert ua != ub
    assert a.get("profile")["payload"] == {"owner": "a"} and b.get("profile")["payload"] == {"owner": "b"}
    assert a.count() == b.count() == 2
    assert {f["payload"].get("name") for f in a.query("user")} == {"A"}
    assert [f["id"] for f in b.query("user", {"payload.email": "x@y"})] == [ub]
    # B cannot touch A's facts by id.
    assert b.get(ua) is None
    with pytest.raises(FactNotFound):
        b.update(ua, {"payload": {"name": "hacked"}})
    with pytest.raises(FactNotFound):
        b.delete("s", ua)
    assert b.storage.history(ua) == [] and b.storage.load(ua) is None
    # Session operations stay inside the namespace.
    b.update("profile", {"payload": {"owner": "b2"}})
    assert b.rollback("s", 2) == 2  # undoes B's update and B's user commit in session s, nothing of A's
    assert a.get(ua) is not None and b.get(ub) is None
    assert b.promote_session("s") == ["profile"]
    assert a.get("profile")["session_id"] == "s"
    assert b.discard_session("s") == 0 and a.discard_session("s") == 2
    assert b.get("profile")["payload"] == {"owner": "b"} and a.get("profile") is None
    assert [e["op"] for e in a.storage.get_tx_log("s")] == ["DISCARD_SESSION", "COMMIT", "COMMIT"]
    assert [e["op"] for e in b.storage.get_tx_log("s")] == ["PROMOTE", "COMMIT"]
    report = ms.verify(db_url, table_prefix=prefix)
    assert report.ok, report.problems
    assert b.storage.verify().ok and a.storage.verify().ok


def test_the_default_namespace_is_the_store_without_one(make_store: Any) -> None:
    plain, named = make_store(), tenant(make_store, "t")
    fid = plain.commit(Fact(type="note", payload={"n": 1}))
    assert plain.get(fid) is not None and named.get(fid) is None
    assert tenant(make_store, None).get(fid) is not None


def test_for_namespace_derives_a_handle_on_the_same_engine(db_url: str, prefix: str) -> None:
    with ms.SQLStorage(db_url, table_prefix=prefix) as storage:
        other = storage.for_namespace("t2")
        assert other.engine is storage.engine and other.namespace == "t2"
        ms.MemoryStore(other).commit(Fact(id="x", type="note", payload={}))
        assert storage.load("x") is None and other.load("x") is not None
        other.close()  # leaves the engine to its owner
        assert storage.query() == []


@pytest.mark.parametrize("name", ["'; DROP TABLE memstate_facts; --", "a%_\\", "ünï cödé ✓", "x" * 191, "  spaced  "])
def test_hostile_namespace_names_are_bound_not_interpolated(make_store: Any, name: str) -> None:
    store = tenant(make_store, name)
    fid = store.commit(Fact(type="note", payload={"ns": name}))
    assert store.get(fid)["payload"] == {"ns": name}
    assert tenant(make_store, "a").get(fid) is None and make_store().count() == 0


@pytest.mark.parametrize("bad", ["", "x" * 192, "nul\x00", 7, b"bytes"])
def test_invalid_namespaces_are_refused(db_url: str, prefix: str, bad: Any) -> None:
    with pytest.raises(ValidationFailed, match="namespace"):
        ms.SQLStorage(db_url, table_prefix=prefix, namespace=bad)


# ---------------------------------------------------------------------------- expiry


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Operation, str]] = []

    def __call__(self, op: Operation, fact_id: str, fact: Fact | None) -> None:
        self.calls.append((op, fact_id))


def test_expired_facts_are_invisible_before_and_after_a_sweep(make_store: Any, db_url: str, prefix: str) -> None:
    hook = Recorder()
    store = make_store([hook])
    gone = store.commit(Fact(type="note", payload={"n": 1}), session_id="s", expires_at=PAST)
    later = store.commit(Fact(type="note", payload={"n": 2}), session_id="s", ttl=3600)
    kept = store.commit(Fact(type="note", payload={"n": 3}), session_id="s")
    for reader in (
        lambda: store.get(gone),
        lambda: store.storage.load(gone),
        lambda: [f for f in store.query("note") if f["id"] == gone] or None,
        lambda: [f for f in store.query("note", {"id": gone})] or None,
        lambda: [f for f in store.storage.get_session_facts("s") if f["id"] == gone] or None,
    ):
        assert reader() is None
    assert store.count("note") == 2
    assert store.get(later)["expires_at"] > datetime.now(timezone.utc).isoformat()[:19]
    assert "expires_at" not in store.get(kept)  # only expiring facts carry the key
    with pytest.raises(FactNotFound):
        store.update(gone, {"payload": {"n": 9}})
    hook.calls.clear()
    assert store.sweep() == 1
    assert hook.calls == [(Operation.DELETE, gone)]  # hooks (e.g. a vector index) drop it
    assert store.sweep() == 0 and store.storage.sweep() == 0 and store.count("note") == 2
    assert [h["op"] for h in store.storage.history(gone)] == ["COMMIT", "EXPIRE"]
    # A session rollback never undoes a sweep.
    assert store.rollback("s", 1) == 1 and store.get(kept) is None
    assert ms.verify(db_url, table_prefix=prefix).ok


def test_a_commit_over_an_expired_unswept_fact_starts_it_anew(make_store: Any, db_url: str, prefix: str) -> None:
    store = make_store()
    store.register_schema("user", User, Constraint(singleton_key="email", immutable=True))
    old = store.commit(Fact(type="user", payload={"email": "a@x", "name": "A"}), expires_at=PAST)
    new = store.commit(Fact(type="user", payload={"email": "a@x", "name": "B"}), session_id="s2")
    assert new == old and store.get(new)["payload"]["name"] == "B" and store.get(new)["session_id"] == "s2"
    assert "expires_at" not in store.get(new)
    with pytest.raises(ConflictError, match="Immutable"):  # alive again, so immutable again
        store.commit(Fact(type="user", payload={"email": "a@x", "name": "C"}))
    assert ms.verify(db_url, table_prefix=prefix).ok


def test_type_default_ttl_and_its_overrides(make_store: Any) -> None:
    store = make_store()
    store.register_schema("user", User, Constraint(ttl=timedelta(hours=1)))
    fid = store.commit(Fact(type="user", payload={"email": "a@x", "name": "A"}))
    expires = datetime.fromisoformat(store.get(fid)["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=59) < expires - datetime.now(timezone.utc) <= timedelta(hours=1)
    store.update(fid, {"payload": {"name": "B"}})  # an update keeps the expiry
    assert store.get(fid)["expires_at"] == expires.isoformat().replace("+00:00", "Z")
    fid2 = store.commit(Fact(type="user", payload={"email": "b@x", "name": "B"}), ttl=10)
    assert store.get(fid2)["expires_at"] < store.get(fid)["expires_at"]


@pytest.mark.parametrize(
    "kwargs", [{"ttl": 0}, {"ttl": -5}, {"ttl": True}, {"ttl": "10"}, {"expires_at": "soon"}, {"expires_at": 5}]
)
def test_bad_expiry_arguments_are_refused(store: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed):
        store.commit(Fact(type="note", payload={}), **kwargs)
    with pytest.raises(ValidationFailed, match="not both"):
        store.commit(Fact(type="note", payload={}), ttl=5, expires_at=PAST)


def test_sweep_works_in_bounded_batches_and_only_in_its_namespace(make_store: Any) -> None:
    a, b = tenant(make_store, "a"), tenant(make_store, "b")
    for i in range(25):
        a.commit(Fact(type="note", payload={"i": i}), expires_at=PAST)
    b.commit(Fact(id="bx", type="note", payload={}), expires_at=PAST)
    assert a.storage.sweep(limit=10, batch_size=4) == 10
    assert a.storage.sweep(batch_size=4) == 15
    assert b.storage.sweep() == 1


def _sweeper(url: str, prefix: str, out: Any) -> None:
    storage = ms.SQLStorage(url, table_prefix=prefix)
    try:
        out.put(storage.sweep(batch_size=25))
    finally:
        storage.close()


def test_two_processes_sweeping_at_once_delete_each_fact_once(db_url: str, prefix: str) -> None:
    with ms.SQLStorage(db_url, table_prefix=prefix) as storage:
        store = ms.MemoryStore(storage)
        for i in range(300):
            store.commit(Fact(type="note", payload={"i": i}), expires_at=PAST - timedelta(seconds=i))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    workers = [ctx.Process(target=_sweeper, args=(db_url, prefix, out)) for _ in range(2)]
    for w in workers:
        w.start()
    counts = [out.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    assert sum(counts) == 300
    rows = fetch(db_url, f"SELECT fact_id, COUNT(*) FROM {prefix}_tx WHERE op = 'EXPIRE' GROUP BY fact_id")
    assert len(rows) == 300 and all(n == 1 for _, n in rows)
    assert ms.verify(db_url, table_prefix=prefix).ok


# ---------------------------------------------------------------------------- the migration


def test_ms_0001_data_upgrades_in_place_and_downgrades_while_only_default(db_url: str, prefix: str) -> None:
    with ms.SQLStorage(db_url, table_prefix=prefix) as storage:
        store = ms.MemoryStore(storage)
        ids = [store.commit(Fact(type="note", payload={"n": i}), session_id="old") for i in range(5)]
        store.update(ids[0], {"payload": {"n": 100}})
        before = [store.get(i) for i in ids]
        log_before = storage.get_tx_log("old")
    # Back to the previous release's schema, then forward again: ids, order, history and rollback survive.
    assert migrations.downgrade(db_url, "ms_0001_initial", table_prefix=prefix) == "ms_0001_initial"
    assert "namespace" not in {c.lower() for c in fetch_columns(db_url, f"{prefix}_facts")}
    assert ms.migrate(db_url, table_prefix=prefix) == migrations.head_revision()
    with ms.SQLStorage(db_url, table_prefix=prefix) as storage:
        store = ms.MemoryStore(storage)
        assert [store.get(i) for i in ids] == before
        assert storage.get_tx_log("old") == log_before
        assert store.rollback("old", 1) == 1 and store.get(ids[0])["payload"] == {"n": 0}
        assert storage.verify().ok
        # A second namespace (or an expiring fact) makes the downgrade refuse, saying why.
        ms.MemoryStore(storage.for_namespace("t")).commit(Fact(type="note", payload={}))
        store.commit(Fact(type="note", payload={}), ttl=60)
    with pytest.raises(ms.SchemaVersionError, match=r"outside the default namespace.*expiry"):
        migrations.downgrade(db_url, "ms_0001_initial", table_prefix=prefix)
    assert migrations.current_revision(db_url, table_prefix=prefix) == migrations.head_revision()


def test_offline_sql_of_the_upgrade(db: str, db_url: str, prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    from alembic import command

    cfg = migrations.make_config(prefix, None)
    cfg.set_main_option("sqlalchemy.url", db_url)
    command.upgrade(cfg, "ms_0001_initial:head", sql=True)
    sql = capsys.readouterr().out
    assert f"{prefix}_facts" in sql and "namespace" in sql
    if db == "postgresql":
        assert "CONCURRENTLY" not in sql  # a script runs in one transaction
    if db == "mysql":
        assert "ALGORITHM=INPLACE" in sql


# ---------------------------------------------------------------------------- log retention


def test_compaction_shrinks_the_log_keeps_the_facts_and_refuses_rollbacks_past_it(
    make_store: Any, db_url: str, prefix: str
) -> None:
    store = make_store()
    old = [store.commit(Fact(type="note", payload={"n": i}), session_id="s") for i in range(6)]
    for fid in old[:3]:
        store.update(fid, {"payload": {"n": -1}})
    store.delete("s", old[5])
    store.commit(Fact(type="note", payload={"n": 7}), session_id="d")
    store.discard_session("d")
    horizon = datetime.now(timezone.utc)
    time.sleep(0.01)
    recent = store.commit(Fact(type="note", payload={"n": 8}), session_id="s")
    facts_before = sorted(store.query(), key=lambda f: f["id"])
    log_before = len(fetch(db_url, f"SELECT seq FROM {prefix}_tx"))
    removed = store.storage.compact_log(horizon, batch_size=4)
    # Removed: the first entries of the 3 updated facts, the deleted fact's 2, the discarded session's 2.
    assert removed == 7
    assert len(fetch(db_url, f"SELECT seq FROM {prefix}_tx WHERE op <> 'COMPACT'")) == log_before - removed
    assert sorted(store.query(), key=lambda f: f["id"]) == facts_before
    report = ms.verify(db_url, table_prefix=prefix)
    assert report.ok, report.problems
    assert store.storage.compact_log(horizon) == 0  # idempotent
    # The newest operations can still be rolled back; going past the horizon is refused, naming it.
    assert store.rollback("s", 1) == 1 and store.get(recent) is None
    with pytest.raises(ms.RollbackHorizonError, match="compact_log removed"):
        store.rollback("s", 20)
    assert store.get(old[0])["payload"] == {"n": -1}
    assert store.rollback("s", 5) == 5  # exactly what remains: three updates, two commits
    assert [store.get(f)["payload"] for f in old[:3]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert store.get(old[3]) is None
    assert ms.verify(db_url, table_prefix=prefix).ok


def test_compaction_stays_in_its_namespace(make_store: Any) -> None:
    a, b = tenant(make_store, "a"), tenant(make_store, "b")
    fa, fb = (s.commit(Fact(type="note", payload={"n": 1}), session_id="s") for s in (a, b))
    a.update(fa, {"payload": {"n": 2}})
    b.update(fb, {"payload": {"n": 2}})
    later = datetime.now(timezone.utc) + timedelta(seconds=1)
    assert a.storage.compact_log(later) == 1
    assert len(b.storage.history(fb)) == 2 and len(a.storage.history(fa)) == 1


# ---------------------------------------------------------------------------- the command line


def test_cli_namespace_sweep_prune_log_and_export(
    capsys: pytest.CaptureFixture[str], db_url: str, prefix: str, tmp_path: Any
) -> None:
    from tests.cli_support import cli

    target = ["--url", db_url, "--prefix", prefix]
    with ms.SQLStorage(db_url, table_prefix=prefix, namespace="t1") as storage:
        store = ms.MemoryStore(storage)
        keep = store.commit(Fact(type="note", payload={"n": 1}), session_id="s")
        store.update(keep, {"payload": {"n": 2}})
        store.commit(Fact(type="note", payload={"n": 3}), expires_at=PAST)
        ms.MemoryStore(storage.for_namespace(None)).commit(Fact(id="d", type="note", payload={}))
    listed = cli(capsys, "facts", *target, "--namespace", "t1", "--json")
    assert listed.code == 0, listed.err and [f["id"] for f in listed.json()] == [keep]
    assert [f["id"] for f in cli(capsys, "facts", *target, "--json").json()] == ["d"]
    swept = cli(capsys, "sweep", *target, "--namespace", "t1", "--json")
    assert swept.code == 0 and swept.json()["swept"] == 1
    assert cli(capsys, "sweep", *target, "--json").json()["swept"] == 0
    later = (datetime.now(timezone.utc) + timedelta(seconds=5)).isoformat()
    pruned = cli(capsys, "prune-log", *target, "--namespace", "t1", "--before", later, "--yes", "--json")
    assert pruned.code == 0, pruned.err
    assert pruned.json()["removed"] == 3  # the commit before the update; the swept fact's commit and EXPIRE
    bad = cli(capsys, "prune-log", *target, "--before", "yesterday", "--yes")
    assert bad.code == 2 and "ISO 8601" in bad.err
    out = tmp_path / "t1.jsonl"
    assert cli(capsys, "export", *target, "--namespace", "t1", "-o", str(out)).code == 0
    assert '"d"' not in out.read_text() and keep in out.read_text()
    moved = cli(capsys, "import", *target, "--namespace", "t2", str(out), "--json")
    assert moved.code == 0, moved.err
    with ms.SQLStorage(db_url, table_prefix=prefix, namespace="t2") as storage:
        assert storage.load(keep)["payload"] == {"n": 2}
    assert ms.verify(db_url, table_prefix=prefix).ok


# ---------------------------------------------------------------------------- background sweepers


def test_background_sweeper_sweeps_until_stopped(make_store: Any, mode: str) -> None:
    hook = Recorder()
    store = make_store([hook])
    fid = store.commit(Fact(type="note", payload={}), expires_at=PAST)
    if mode == "sync":
        with ms.Sweeper(store, interval=0.05) as sweeper:
            deadline = time.monotonic() + 20
            while sweeper.swept < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
        assert not sweeper.running and sweeper.swept == 1
    else:
        import asyncio

        target = store._target  # the AsyncMemoryStore behind the test's blocking wrapper

        async def run() -> int:
            async with ms.AsyncSweeper(target, interval=0.05) as sweeper:
                deadline = time.monotonic() + 20
                while sweeper.swept < 1 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
            return sweeper.swept

        assert store._loop.run_until_complete(run()) == 1
    assert (Operation.DELETE, fid) in hook.calls
    with pytest.raises(ValidationFailed):
        ms.Sweeper(store, interval=0)


def test_an_exclusive_sweep_skips_while_another_holds_the_lock(db: str, db_url: str, prefix: str) -> None:
    if db == "sqlite":
        pytest.skip("SQLite serialises writers: a second sweeper waits for the file lock instead")
    with ms.SQLStorage(db_url, table_prefix=prefix) as storage:
        ms.MemoryStore(storage).commit(Fact(type="note", payload={}), expires_at=PAST)
        name = f"{prefix}_sweep_"
        with storage.engine.connect() as conn, conn.begin(), storage.dialect.try_exclusive(conn, name) as mine:
            assert mine
            assert storage.sweep(exclusive=True) == 0  # another "process" holds it
            assert storage.sweep() == 1  # a plain sweep does not wait for it
