"""`export` / `import`: JSON Lines round trips across databases, all-or-nothing imports."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import memstate_sql as ms
from memstate_sql import Constraint, Fact
from tests.cli_support import cli, dump, script, store_tables
from tests.conftest import database_url, drop_prefix

#: Each database exports into the next one: every dialect is a source and a target.
NEXT = {"sqlite": "postgresql", "postgresql": "mysql", "mysql": "sqlite"}


class Account(BaseModel):
    handle: str
    balance: float


def populate(url: str, prefix: str) -> None:
    """Every kind of log entry, rolled-back entries, constraints, awkward payloads."""
    storage = ms.SQLStorage(url, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    store.register_schema("account", Account, Constraint(singleton_key="handle"))
    store.register_schema("receipt", Account, Constraint(immutable=True))
    ts = datetime(2025, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
    a = store.commit(Fact(type="account", payload={"handle": "ada", "balance": 1.5}, ts=ts, source="bank"))
    store.commit(Fact(type="account", payload={"handle": "ada", "balance": 2.25}), actor="teller", reason="deposit")
    store.commit(Fact(type="receipt", payload={"handle": "ada", "balance": 0.75}))
    store.commit(
        Fact(type="note", payload={"text": 'héllo ✓ "quoted" \\ back', "nested": {"a": [1, True, None, "1"]}}),
        session_id="s1",
    )
    gone = store.commit(Fact(type="note", payload={"text": "to delete"}), session_id="s1")
    store.delete("s1", gone, reason="cleanup")
    store.commit(Fact(type="note", payload={"text": "kept"}), session_id="s2")
    store.promote_session("s2")
    store.commit(Fact(type="note", payload={"text": "discarded"}), session_id="s3")
    store.discard_session("s3")
    store.update(a, {"payload": {"balance": 3.0}}, actor="teller")
    store.commit(Fact(type="note", payload={"text": "undone"}), session_id="s4")
    store.commit(Fact(type="note", payload={"text": "undone too"}), session_id="s4")
    store.rollback("s4", steps=1)
    for i in range(7):
        store.commit(Fact(type="bulk", payload={"i": i, "big": 2**53 - 1, "neg": -0.5}), session_id="bulk")
    storage.close()


@pytest.fixture
def other(db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A URL and a fresh prefix on the next database."""
    url = database_url(NEXT[db], tmp_path_factory)
    name = "t" + uuid.uuid4().hex[:10]
    yield url, name
    drop_prefix(url, name)


def without_seq(entries: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in dataclasses.asdict(e).items() if k != "seq"} for e in entries]


def test_export_import_round_trip_to_another_database(
    capsys: pytest.CaptureFixture[str], db_url: str, prefix: str, other: tuple[str, str], tmp_path: Path
) -> None:
    populate(db_url, prefix)
    path = tmp_path / "store.jsonl"
    exported = script("export", "--url", db_url, "--prefix", prefix, "-o", str(path), "--batch-size", "3")
    assert exported.code == 0, exported.err
    assert exported.err == ""  # no progress bar when stderr is not a terminal
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    facts, log = dump(db_url, prefix)
    assert lines[0]["format"] == "memstate-sql-export" and (lines[0]["facts"], lines[0]["log"]) == (
        len(facts),
        len(log),
    )
    assert lines[-1] == {"kind": "end", "facts": len(facts), "log": len(log)}
    assert not path.with_name(path.name + ".partial").exists()

    target_url, target_prefix = other
    imported = cli(capsys, "import", "--url", target_url, "--prefix", target_prefix, str(path), "--json")
    assert imported.code == 0, imported.err
    assert imported.json() == {"facts": len(facts), "log": len(log)}

    facts2, log2 = dump(target_url, target_prefix)
    assert facts2 == facts  # ids, payloads, timestamps (microseconds), versions, constraints' columns
    assert without_seq(log2) == without_seq(log)  # uuids, order, before/after, discarded, reverted_by
    assert [e.seq for e in log2] == sorted({e.seq for e in log2})
    assert any(e.reverted_by for e in log2) and any(e.discarded for e in log2)

    # The imported store works: rollback, constraints and the log carry over.
    storage = ms.SQLStorage(target_url, table_prefix=target_prefix)
    store = ms.MemoryStore(storage)
    store.register_schema("account", Account, Constraint(singleton_key="handle"))
    first = store.commit(Fact(type="account", payload={"handle": "ada", "balance": 9.0}))
    assert first == next(f.id for f in facts if f.type == "account")
    store.rollback("s3", steps=1)
    assert [d["payload"]["text"] for d in store.query("note", session_id="s3")] == ["discarded"]
    storage.close()


def test_export_to_a_pipe_and_import_from_stdin(db_url: str, prefix: str, tmp_path: Path) -> None:
    populate(db_url, prefix)
    exported = script("export", "--url", db_url, "--prefix", prefix)
    assert exported.code == 0 and exported.err == ""
    target = tmp_path / "copy.db"
    imported = script("import", "--url", str(target), "-", stdin=exported.out)
    assert imported.code == 0, imported.err
    assert imported.out.startswith("imported ")
    facts, log = dump(db_url, prefix)
    facts2, log2 = dump(f"sqlite:///{target}", "memstate")
    assert facts2 == facts and without_seq(log2) == without_seq(log)


def _export(capsys: pytest.CaptureFixture[str], url: str, prefix: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "x.jsonl"
    assert cli(capsys, "export", "--url", url, "--prefix", prefix, "-o", str(path)).code == 0
    return path.read_text(encoding="utf-8").splitlines()


def test_import_is_all_or_nothing(capsys: pytest.CaptureFixture[str], db_url: str, prefix: str, tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    populate(source, "memstate")
    lines = _export(capsys, source, "memstate", tmp_path)
    target = ["--url", db_url, "--prefix", prefix]

    def attempt(name: str, content: list[str], code: int, message: str) -> None:
        path = tmp_path / name
        path.write_text("\n".join(content) + "\n", encoding="utf-8")
        result = cli(capsys, "import", *target, str(path), "--batch-size", "2")
        assert result.code == code, result
        assert message in result.err
        assert store_tables(db_url, prefix) == [], name  # the target is untouched: not even created

    attempt("truncated.jsonl", lines[:-3], 2, "no end line")
    bad = list(lines)
    bad[-3] = bad[-3][:-5]
    attempt("malformed.jsonl", bad, 2, f"line {len(lines) - 2}: not JSON")
    wrong_counts = [*lines[:-1], json.dumps({"kind": "end", "facts": 1, "log": 1})]
    attempt("counts.jsonl", wrong_counts, 2, "announces 1 facts")
    bad_payload = list(lines)
    index = max(i for i, raw in enumerate(lines) if json.loads(raw).get("kind") == "fact")
    fact = json.loads(lines[index])
    fact["payload"] = {"n": 2**60}
    bad_payload[index] = json.dumps(fact)
    attempt("payload.jsonl", bad_payload, 2, "2**53")
    attempt("header.jsonl", ['{"format": "something-else"}', *lines[1:]], 2, "not a memstate-sql-export file")

    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert cli(capsys, "import", *target, str(good)).code == 0
    before = dump(db_url, prefix)
    again = cli(capsys, "import", *target, str(good), "--batch-size", "2")
    assert again.code == 1 and "already exists in the target" in again.err
    assert dump(db_url, prefix) == before
