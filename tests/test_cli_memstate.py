"""`import-memstate`: databases written by the real memstate 0.5.1 (SQLite and PostgreSQL) copied into
memstate_sql on every database; the copy answers the same queries and its sessions roll back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

import memstate_sql as ms
from tests.cli_support import cli, dump, script
from tests.conftest import database_url

memstate = pytest.importorskip("memstate", minversion="0.5.1")


class MUser(BaseModel):
    email: str
    name: str
    role: str
    age: int


@dataclass
class Source:
    """A memstate 0.5.1 store and how `import-memstate` names its database."""

    store: Any
    storage: Any
    args: list[str]


@pytest.fixture(params=["sqlite", "postgresql"])
def source(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Source]:
    if request.param == "sqlite":
        path = tmp_path / "memory.db"
        storage = memstate.SQLiteStorage(str(path))
        args = ["--from", str(path)]
        yield Source(memstate.MemoryStore(storage), storage, args)
        storage.close()
        return
    from memstate.backends.postgres import PostgresStorage

    url = database_url("postgresql", tmp_path_factory)
    name = "ms" + uuid.uuid4().hex[:10]
    storage = PostgresStorage(url, table_prefix=name)
    yield Source(memstate.MemoryStore(storage), storage, ["--from", url, "--from-prefix", name])
    storage.close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}_facts, {name}_log"))
    engine.dispose()


def write_history(store: Any) -> dict[str, str]:
    Fact = memstate.Fact
    store.register_schema("user", MUser, memstate.Constraint(singleton_key="email"))
    ids = {
        "ada": store.commit(Fact(type="user", payload={"email": "ada@x", "name": "Ada", "role": "admin", "age": 36}))
    }
    store.commit(Fact(type="user", payload={"email": "ada@x", "name": "Ada L", "role": "admin", "age": 37}))
    ids["bob"] = store.commit(
        Fact(type="user", payload={"email": "bob@x", "name": "Bob", "role": "dev", "age": 41}, session_id="s1"),
        session_id="s1",
    )
    store.update(ids["bob"], {"payload": {"age": 42}}, actor="hr", reason="birthday")
    ids["note"] = store.commit(
        Fact(type="note", payload={"text": "héllo", "tags": ["a", "b"], "n": 1.5}, session_id="s1"), session_id="s1"
    )
    tmp = store.commit(Fact(type="note", payload={"text": "tmp"}, session_id="s2"), session_id="s2")
    store.delete("s2", tmp, reason="cleanup")
    store.commit(Fact(type="note", payload={"text": "draft"}, session_id="s3"), session_id="s3")
    store.promote_session("s3")
    store.commit(Fact(type="note", payload={"text": "trash"}, session_id="s4"), session_id="s4")
    store.discard_session("s4")
    store.commit(Fact(type="note", payload={"text": "undo me"}, session_id="s1"), session_id="s1")
    store.rollback("s1", 1)
    return ids


def norm(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """A fact document with its timestamp parsed (memstate writes both ...Z and ...+00:00)."""
    if doc is None:
        return None
    return {**doc, "ts": datetime.fromisoformat(doc["ts"].replace("Z", "+00:00"))}


def by_id(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return {d["id"]: norm(d) for d in docs}


def log_view(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (e["uuid"], e["op"], e["fact_id"], e["actor"], e["reason"], e["fact_before"], e["fact_after"]) for e in entries
    ]


def test_import_memstate_answers_the_same_queries_and_rolls_back(
    capsys: pytest.CaptureFixture[str], source: Source, db_url: str, prefix: str
) -> None:
    ids = write_history(source.store)
    target = ["--url", db_url, "--prefix", prefix]
    first = cli(capsys, "import-memstate", *source.args, *target, "--json", "--batch-size", "2")
    assert first.code == 0, first.err
    counts = first.json()
    source_facts = source.store.query()
    assert counts["facts_added"] == len(source_facts) == 4
    assert counts["log_added"] >= 10 and counts["log_skipped"] == 0

    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    ours = ms.MemoryStore(storage)
    try:
        queries: list[tuple[str | None, dict[str, Any] | None, str | None]] = [
            (None, None, None),
            ("user", None, None),
            ("user", {"payload.role": "admin"}, None),
            (None, {"payload.age": 42}, None),
            ("note", None, "s1"),
            ("note", {"payload.text": "draft"}, None),
        ]
        for typename, filters, session in queries:
            expected = by_id(source.store.query(typename, filters, session))
            assert by_id(ours.query(typename, filters, session)) == expected, (typename, filters, session)
        for fid in by_id(source_facts):
            assert norm(ours.get(fid)) == norm(source.store.get(fid))
        assert by_id(storage.get_session_facts("s1")) == by_id(source.storage.get_session_facts("s1"))
        for session in ("s1", "s2", "s3", "s4"):
            assert log_view(storage.get_tx_log(session)) == log_view(source.storage.get_tx_log(session)), session

        # Re-running adds nothing; after memstate writes more, it adds only that.
        before = dump(db_url, prefix)
        again = cli(capsys, "import-memstate", *source.args, *target, "--json").json()
        assert again["facts_added"] == again["facts_updated"] == again["log_added"] == 0
        assert again["facts_unchanged"] == 4 and again["log_skipped"] == counts["log_added"]
        assert dump(db_url, prefix) == before
        source.store.update(ids["ada"], {"payload": {"age": 38}})
        late = source.store.commit(
            memstate.Fact(type="note", payload={"text": "late"}, session_id="s1"), session_id="s1"
        )
        third = cli(capsys, "import-memstate", *source.args, *target, "--json").json()
        assert (third["facts_added"], third["facts_updated"], third["log_added"]) == (1, 1, 2)
        assert ours.get(late)["payload"] == {"text": "late"}  # type: ignore[index]

        # Rolling back an imported session does what memstate's own rollback does.
        rolled = cli(capsys, "rollback", *target, "--session", "s1", "--steps", "3", "--yes", "--json")
        assert rolled.code == 0, rolled.err
        assert [e["op"] for e in rolled.json()["undone"]] == ["COMMIT", "COMMIT", "UPDATE"]
        source.store.rollback("s1", 3)
        assert ours.get(late) is None and ours.get(ids["note"]) is None
        assert ours.get(ids["bob"])["payload"]["age"] == 41  # type: ignore[index]
        assert by_id(ours.query()) == by_id(source.store.query())
    finally:
        storage.close()


def test_import_memstate_through_the_script_with_a_sqlite_url(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    storage = memstate.SQLiteStorage(str(path))
    write_history(memstate.MemoryStore(storage))
    storage.close()
    result = script("import-memstate", "--from", f"sqlite:///{path}", cwd=tmp_path)
    assert result.code == 0, result.err
    assert "memstate SQLite backend" in result.out and "4 added" in result.out
    facts, _ = dump(f"sqlite:///{tmp_path / 'memstate.db'}", "memstate")
    assert len(facts) == 4


def test_import_memstate_refusals(capsys: pytest.CaptureFixture[str], tmp_path: Path, prefix: str, db_url: str) -> None:
    missing = cli(capsys, "import-memstate", "--from", str(tmp_path / "nope.db"), "--url", db_url, "--prefix", prefix)
    assert missing.code == 2 and "no memstate database file" in missing.err
    empty = tmp_path / "empty.db"
    sa.create_engine(f"sqlite:///{empty}").connect().close()
    found = cli(capsys, "import-memstate", "--from", str(empty), "--url", db_url, "--prefix", prefix)
    assert found.code == 2 and "no memstate tables found" in found.err


def test_import_memstate_refuses_tables_it_would_share(
    capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """memstate's PostgreSQL tables are `<prefix>_facts` too: same database and prefix is refused."""
    from memstate.backends.postgres import PostgresStorage

    url = database_url("postgresql", tmp_path_factory)
    name = "ms" + uuid.uuid4().hex[:10]
    storage = PostgresStorage(url, table_prefix=name)
    try:
        memstate.MemoryStore(storage).commit(memstate.Fact(type="x", payload={"a": 1}))
        result = cli(capsys, "import-memstate", "--from", url, "--from-prefix", name, "--url", url, "--prefix", name)
        assert result.code == 2 and "another --prefix" in result.err
        assert [d["payload"] for d in memstate.MemoryStore(storage).query()] == [{"a": 1}]
        assert not sa.inspect(sa.create_engine(url)).has_table(f"{name}_tx")
    finally:
        storage.close()
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}_facts, {name}_log, {name}_tx, {name}_alembic_version"))
        engine.dispose()


def test_imported_memstate_database_verifies_and_obeys_registered_constraints(
    capsys: pytest.CaptureFixture[str], source: Source, db_url: str, prefix: str
) -> None:
    write_history(source.store)
    target = ["--url", db_url, "--prefix", prefix]
    assert cli(capsys, "import-memstate", *source.args, *target, "--json").code == 0
    # memstate's timestamps (``+00:00`` and ``Z``) and its discards without a list of facts verify clean.
    report = ms.verify(db_url, table_prefix=prefix)
    assert report.ok, report.problems
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    try:
        ours = ms.MemoryStore(storage)
        ours.register_schema("user", MUser, ms.Constraint(singleton_key="email"))
        fid = ours.commit(ms.Fact(type="user", payload={"email": "ada@x", "name": "Ada K", "role": "admin", "age": 40}))
        assert ours.count("user", {"payload.email": "ada@x"}) == 1
        assert ours.get(fid)["payload"]["name"] == "Ada K"  # type: ignore[index]
        assert storage.verify().ok
    finally:
        storage.close()
