"""The command line calls the library and keeps its promises (issue 10): ordering and windows from the
library's query, imports that leave a bad file's target untouched, ids that round-trip, one way to pick a
session, the schema named in the output, the documented exit codes and install hints."""

from __future__ import annotations

import importlib.util
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict

import memstate_sql as ms
from memstate_sql import Constraint, Fact
from memstate_sql.repository import Repository
from tests.cli_support import cli, script, store_tables
from tests.conftest import database_url


def base(url: str, prefix: str) -> list[str]:
    return ["--url", url, "--prefix", prefix]


def facts_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    result = cli(capsys, "facts", "--json", *args)
    assert result.code == 0, result.err
    return result.json()  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- facts: the library's query


def test_facts_orders_mixed_kinds_as_the_library_does(
    capsys: pytest.CaptureFixture[str], db_url: str, prefix: str
) -> None:
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    names = {}
    for name, payload in (
        ("missing", {}),
        ("null", {"v": None}),
        ("one", {"v": 1}),
        ("a", {"v": "a"}),
        ("true", {"v": True}),
    ):
        names[store.commit(Fact(type="mixed", payload={"name": name, **payload}))] = name
    library = [names[d["id"]] for d in store.query("mixed", order_by="payload.v")]
    library_desc = [names[d["id"]] for d in store.query("mixed", order_by="-payload.v")]
    storage.close()
    assert library == ["missing", "null", "true", "one", "a"]
    ours = facts_json(capsys, *base(db_url, prefix), "--type", "mixed", "--order-by", "payload.v")
    assert [names[d["id"]] for d in ours] == library
    desc = facts_json(capsys, *base(db_url, prefix), "--type", "mixed", "--order-by", "payload.v", "--desc")
    assert [names[d["id"]] for d in desc] == library_desc


def test_facts_limit_reads_only_the_window(
    capsys: pytest.CaptureFixture[str], db_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`facts --limit 3` reads 3 rows from the database, not every fact (the library's LIMIT)."""
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    for i in range(60):
        store.commit(Fact(type="n", payload={"i": i}))
    storage.close()
    made = {"rows": 0}
    original = Repository._fact

    def counting(row: Any) -> Any:
        made["rows"] += 1
        return original(row)

    monkeypatch.setattr(Repository, "_fact", staticmethod(counting))
    top = facts_json(capsys, *base(db_url, prefix), "--order-by", "payload.i", "--desc", "--limit", "3")
    assert [d["payload"]["i"] for d in top] == [59, 58, 57]
    assert made["rows"] == 3
    made["rows"] = 0
    human = cli(capsys, "facts", *base(db_url, prefix), "--limit", "3")
    assert human.code == 0 and "3 fact(s) (of 60; --limit 0 shows all)" in human.out
    assert made["rows"] <= 6  # the window, and its version/immutable flags


def test_facts_offset_source_no_session_and_flag_columns(
    capsys: pytest.CaptureFixture[str], db_url: str, prefix: str
) -> None:
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    store.register_schema("receipt", _Any, Constraint(immutable=True))
    ids = [store.commit(Fact(type="n", payload={"i": i}, source="crm" if i % 2 else None)) for i in range(6)]
    in_session = store.commit(Fact(type="n", payload={"i": 99}), session_id="s1")
    store.update(ids[0], {"payload": {"i": 0, "seen": True}})
    receipt = store.commit(Fact(type="receipt", payload={"total": 3}))
    storage.close()
    b = base(db_url, prefix)
    window = facts_json(capsys, *b, "--type", "n", "--order-by", "payload.i", "--offset", "2", "--limit", "2")
    assert [d["payload"]["i"] for d in window] == [2, 3]
    assert [d["payload"]["i"] for d in facts_json(capsys, *b, "--source", "crm", "--order-by", "payload.i")] == [
        1,
        3,
        5,
    ]
    global_ = {d["id"] for d in facts_json(capsys, *b, "--no-session")}
    assert in_session not in global_ and set(ids) <= global_
    assert [d["id"] for d in facts_json(capsys, *b, "--session", "s1")] == [in_session]
    both = cli(capsys, "facts", *b, "--session", "s1", "--no-session")
    assert both.code == 2 and "exclude each other" in both.err

    human = cli(capsys, "facts", *b, "--order-by", "id", "--limit", "0").out.splitlines()
    header = human[0].split()
    assert header[5:7] == ["VERSION", "IMMUTABLE"]
    rows = {line.split()[0]: line.split() for line in human[1:] if line.split()}

    def after_ts(fact_id: str) -> list[str]:
        """The cells after the timestamp (empty session/source cells leave no token)."""
        tokens = rows[fact_id]
        at = next(i for i, t in enumerate(tokens) if re.match(r"\d{4}-\d\d-\d\dT", t))
        return tokens[at + 1 :]

    assert after_ts(ids[0])[0] == "2" and after_ts(ids[1])[0] == "1"
    assert after_ts(receipt)[:2] == ["1", "yes"] and after_ts(ids[1])[1] != "yes"
    got = cli(capsys, "get", *b, receipt).out
    assert "version:    1" in got and "immutable:  yes" in got


class _Any(BaseModel):
    """A payload model that accepts anything."""

    model_config = ConfigDict(extra="allow")


def test_limit_zero_means_all_for_facts_and_log(capsys: pytest.CaptureFixture[str], db_url: str, prefix: str) -> None:
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    for i in range(25):
        store.commit(Fact(type="n", payload={"i": i}), session_id="s1")
    store.commit(Fact(type="n", payload={"i": -1}))
    storage.close()
    b = base(db_url, prefix)
    assert len(facts_json(capsys, *b, "--limit", "0")) == 26
    log_all = cli(capsys, "log", *b, "--session", "s1", "--limit", "0", "--json")
    assert log_all.code == 0, log_all.err
    assert len(log_all.json()) == 25
    assert len(cli(capsys, "log", *b, "--session", "s1", "--json").json()) == 20  # default --limit 20
    assert len(cli(capsys, "log", *b, "--session", "s1", "--limit", "0", "--offset", "20", "--json").json()) == 5
    # --no-session is accepted by log too, and means what no --session means: entries without a session.
    assert cli(capsys, "log", *b, "--no-session", "--json").json() == cli(capsys, "log", *b, "--json").json()
    assert len(cli(capsys, "log", *b, "--no-session", "--json").json()) == 1
    for command in ("facts", "log"):
        bad = cli(capsys, command, *b, "--limit", "-1")
        assert bad.code == 2 and "--limit" in bad.err


# ---------------------------------------------------------------------------- import leaves a bad file's target alone


def _export_lines(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> list[str]:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    storage = ms.SQLStorage(source)
    store = ms.MemoryStore(storage)
    for i in range(3):
        store.commit(Fact(type="n", payload={"i": i}), session_id="s")
    storage.close()
    path = tmp_path / "good.jsonl"
    assert cli(capsys, "export", "--url", source, "-o", str(path)).code == 0
    return path.read_text(encoding="utf-8").splitlines()


def test_a_failed_import_leaves_the_target_untouched(
    capsys: pytest.CaptureFixture[str], db_url: str, prefix: str, tmp_path: Path
) -> None:
    lines = _export_lines(capsys, tmp_path)
    fact_at = next(i for i, raw in enumerate(lines) if json.loads(raw).get("kind") == "fact")
    bad_payload = list(lines)
    doc = json.loads(lines[fact_at])
    doc["payload"] = {"n": 2**60}
    bad_payload[fact_at] = json.dumps(doc)
    bad_ts = list(lines)
    doc = json.loads(lines[fact_at])
    doc["ts"] = "yesterday"
    bad_ts[fact_at] = json.dumps(doc)
    cases = {
        "empty": ([], "the file is empty"),
        "payload": (bad_payload, f"line {fact_at + 1}: "),
        "timestamp": (bad_ts, f"line {fact_at + 1}: 'yesterday' is not an ISO 8601 timestamp"),
        "truncated": (lines[:-2], "no end line"),
        "duplicate": ([*lines[:-1], lines[fact_at], lines[-1]], "appears twice"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(line + "\n" for line in content), encoding="utf-8")
        result = cli(capsys, "import", *base(db_url, prefix), str(path))
        assert result.code == 2, (name, result)
        assert message in result.err, (name, result.err)
        assert store_tables(db_url, prefix) == [], name
    assert "2**53" in cli(capsys, "import", *base(db_url, prefix), str(tmp_path / "payload.jsonl")).err
    good = tmp_path / "good.jsonl"
    assert cli(capsys, "import", *base(db_url, prefix), str(good)).code == 0
    assert len(store_tables(db_url, prefix)) == 4


def test_a_failed_import_creates_no_sqlite_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    target = tmp_path / "target.db"
    result = script("import", "--url", str(target), str(tmp_path / "empty.jsonl"), cwd=tmp_path)
    assert result.code == 2 and "the file is empty" in result.err
    assert not target.exists()
    piped = script("import", "--url", str(target), "-", stdin='{"format": "memstate-sql-export"', cwd=tmp_path)
    assert piped.code == 2 and "line 1: not JSON" in piped.err
    assert not target.exists()


# ---------------------------------------------------------------------------- ids, schema, exit codes, hints


def test_the_ids_the_demo_prints_are_the_ids_get_and_history_take(tmp_path: Path) -> None:
    path = tmp_path / "demo.db"
    demo = script("demo", "--path", str(path), cwd=tmp_path)
    assert demo.code == 0, demo.err
    shown = set(re.findall(r"\b[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}\b", demo.out))
    assert shown, demo.out
    assert not re.search(r"^\s+\| [0-9a-f]{8}\s", demo.out, re.MULTILINE)  # no 8-character heads
    for fact_id in shown:
        assert script("history", "--url", str(path), fact_id).code == 0, fact_id
    storage = ms.SQLStorage(f"sqlite:///{path}")
    existing = {fid for fid in shown if storage.load(fid) is not None}
    storage.close()
    assert existing
    for fact_id in existing:
        assert script("get", "--url", str(path), fact_id).code == 0, fact_id


def test_upgrade_says_already_at_head_for_a_no_op(capsys: pytest.CaptureFixture[str], db_url: str, prefix: str) -> None:
    first = cli(capsys, "upgrade", *base(db_url, prefix))
    assert first.code == 0 and first.out.startswith("upgraded ")
    again = cli(capsys, "upgrade", *base(db_url, prefix))
    assert again.code == 0 and again.out.startswith("already at head: ") and "upgraded" not in again.out


def test_schema_is_shown_by_upgrade_current_and_stats(
    capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if "postgresql" not in (request.config.getoption("--db") or ["postgresql"]):
        pytest.skip("PostgreSQL is not selected (--db)")
    url = database_url("postgresql", tmp_path_factory)
    name = "cli_" + uuid.uuid4().hex[:8]
    args = ["--url", url, "--schema", name]
    try:
        up = cli(capsys, "upgrade", *args)
        assert up.code == 0 and f"schema {name}" in up.out
        assert f"schema {name}" in cli(capsys, "current", *args).out
        assert cli(capsys, "current", *args, "--json").json()["schema"] == name
        stats = cli(capsys, "stats", *args)
        assert stats.code == 0 and name in stats.out
        assert cli(capsys, "stats", *args, "--json").json()["schema"] == name
    finally:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        engine.dispose()


def test_rollback_without_a_terminal_exits_1_as_documented(db_url: str, prefix: str) -> None:
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    ms.MemoryStore(storage).commit(Fact(type="n", payload={"i": 1}), session_id="s1")
    storage.close()
    result = script("rollback", *base(db_url, prefix), "--session", "s1")  # stdin: an empty pipe
    assert result.code == 1 and "pass --yes" in result.err
    assert len(cli_log(db_url, prefix)) == 1


def cli_log(url: str, prefix: str) -> list[dict[str, Any]]:
    storage = ms.SQLStorage(url, table_prefix=prefix)
    try:
        return storage.get_tx_log("s1")
    finally:
        storage.close()


def test_rollback_needs_a_session_choice_and_shows_conflicts(
    capsys: pytest.CaptureFixture[str], db_url: str, prefix: str
) -> None:
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    fid = store.commit(Fact(type="n", payload={"i": 1}))  # logged without a session
    store.delete("s2", fid, reason="later, in another session")
    storage.close()
    b = base(db_url, prefix)
    assert cli(capsys, "rollback", *b, "--yes").code == 2
    assert cli(capsys, "rollback", *b, "--session", "s1", "--no-session", "--yes").code == 2
    plan = cli(capsys, "rollback", *b, "--no-session", "--dry-run")
    assert plan.code == 0 and "would override later changes" in plan.out and "DELETE at seq" in plan.out
    assert cli(capsys, "rollback", *b, "--no-session", "--dry-run", "--json").json()["conflicts"]
    refused = cli(capsys, "rollback", *b, "--no-session", "--yes")
    assert refused.code == 1 and "override later changes" in refused.err
    forced = cli(capsys, "rollback", *b, "--no-session", "--yes", "--force")
    assert forced.code == 0, forced.err
    assert ms.SQLStorage(db_url, table_prefix=prefix).load(fid) is None


@pytest.mark.parametrize(
    ("url", "code", "hint"),
    [
        ("postgresql+psycopg2://u@127.0.0.1:1/x", 3, "pip install psycopg2-binary, or use a postgresql+psycopg:// URL"),
        ("postgres://u@127.0.0.1:1/x", 2, "SQLAlchemy spells PostgreSQL URLs postgresql://"),
        ("postgres+psycopg://u@127.0.0.1:1/x", 2, "postgresql://"),
    ],
)
def test_install_hints_name_the_right_fix(url: str, code: int, hint: str, tmp_path: Path) -> None:
    if "psycopg2" in url and importlib.util.find_spec("psycopg2") is not None:
        pytest.skip("psycopg2 is installed here")
    result = script("facts", "--url", url, cwd=tmp_path)
    assert result.code == code and hint in result.err, result.err
    assert result.err.count("\n") == 1


# ---------------------------------------------------------------------------- layering and start-up


def test_the_library_never_imports_the_command_line() -> None:
    """cli/ imports the library; no module outside cli/ (but ``__main__``) imports cli/."""
    import ast

    root = Path(ms.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if relative.parts[0] == "cli" or relative.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == "memstate_sql.cli" or n.startswith("memstate_sql.cli.") for n in names):
                offenders.append(str(relative))
    assert offenders == []


def test_version_and_json_commands_do_not_load_rich(tmp_path: Path) -> None:
    import subprocess
    import sys

    program = (
        "import sys; from memstate_sql.cli import main; code = main(sys.argv[1:]); "
        "print('loaded:', sorted(m for m in ('rich', 'memstate_sql.memstate_import') if m in sys.modules))"
    )
    for args in (["--version"], ["facts", "--url", str(tmp_path / "none.db"), "--json"]):
        proc = subprocess.run(
            [sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert "loaded: []" in proc.stdout, (args, proc.stdout, proc.stderr)
