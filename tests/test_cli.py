"""The memstate-sql command, through its real entry points (console script and `main`)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import memstate_sql as ms
from memstate_sql import Constraint, Fact
from memstate_sql.cli import app
from memstate_sql.cli.output import ProgressBar
from tests.cli_support import cli, dump, script

COMMANDS = [
    "demo",
    "sweep",
    "prune-log",
    "outbox",
    "upgrade",
    "downgrade",
    "current",
    "check",
    "facts",
    "get",
    "history",
    "log",
    "stats",
    "rollback",
    "export",
    "import",
    "import-memstate",
    "completion",
]


class User(BaseModel):
    email: str
    name: str
    age: int = 0


def db_args(url: str, prefix: str) -> list[str]:
    return ["--url", url, "--prefix", prefix]


def seeded(url: str, prefix: str) -> dict[str, str]:
    """A store with users (singleton by email), typed flags, two sessions and an update."""
    storage = ms.SQLStorage(url, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    store.register_schema("user", User, Constraint(singleton_key="email"))
    ids = {
        "ada": store.commit_model(User(email="ada@x", name="Ada", age=36)),
        "bob": store.commit_model(User(email="bob@x", name="Bob", age=41), session_id="s1"),
        "cy": store.commit_model(User(email="cy@x", name="Cy", age=29), session_id="s1"),
    }
    for name, value in (("bool", True), ("int", 1), ("str", "1")):
        ids[name] = store.commit(Fact(type="flag", payload={"name": name, "value": value}))
    store.update(ids["bob"], {"payload": {"age": 42}}, actor="tester", reason="birthday")
    storage.close()
    return ids


# ---------------------------------------------------------------------------- entry points, help, version


def test_version_from_the_script_and_python_m() -> None:
    result = script("--version")
    assert result.code == 0 and result.out.strip() == f"memstate-sql {ms.__version__}"
    proc = subprocess.run(
        [sys.executable, "-m", "memstate_sql", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"memstate-sql {ms.__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    result = cli(capsys, command, "--help")
    assert result.code == 0
    assert f"usage: memstate-sql {command}" in result.out.lower()
    assert "exit codes" in result.out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    result = cli(capsys)
    assert result.code == 2 and "commands" in result.err.lower()
    assert cli(capsys, "no-such-command").code == 2


# ---------------------------------------------------------------------------- demo


def test_demo_through_the_script_tells_the_story(tmp_path: Path) -> None:
    path = tmp_path / "demo.db"
    result = script("demo", "--path", str(path), cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.err == ""
    out = result.out
    assert "(the same fact, updated: one row per email)" in out
    assert "rejected: age: Input should be a valid integer" in out
    assert "nothing was written" in out and "SOMETHING WAS WRITTEN" not in out
    assert 'query("flag", {"payload.value": true})   -> bool\n' in out
    assert 'query("flag", {"payload.value": 1})      -> int\n' in out
    assert 'query("flag", {"payload.value": "1"})    -> str\n' in out
    assert "log of that fact: COMMIT, UPDATE (undone)" in out
    # What the demo printed is what the database holds.
    facts, log = dump(f"sqlite:///{path}", "memstate")
    by_type: dict[str, list[Any]] = {}
    for f in facts:
        by_type.setdefault(f.type, []).append(f)
    assert [f.payload["name"] for f in by_type["user"]] == ["Ada Lovelace"]
    assert "secret" not in by_type
    assert sorted(f.session_id or "" for f in by_type["note"]) == ["", ""]
    assert [f.payload for f in by_type["pref"]] == [{"theme": "dark"}]
    assert [e.op for e in log if e.reverted_by] == ["UPDATE", "ROLLBACK"]
    assert not (tmp_path / "memstate.db").exists()


def test_demo_without_arguments_uses_a_fresh_temporary_file(tmp_path: Path) -> None:
    result = script("demo", cwd=tmp_path, env={"TMPDIR": str(tmp_path)})
    assert result.code == 0, result.err
    [made] = list(tmp_path.glob("memstate-sql-demo-*/demo.db"))
    assert str(made) in result.out
    assert list(tmp_path.iterdir()) == [made.parent]


def test_demo_refuses_an_existing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "taken.db").write_text("x")
    result = cli(capsys, "demo", "--path", str(tmp_path / "taken.db"))
    assert result.code == 2 and "already exists" in result.err
    assert (tmp_path / "taken.db").read_text() == "x"


# ---------------------------------------------------------------------------- which database


def test_default_database_is_memstate_db_in_the_working_directory(tmp_path: Path) -> None:
    missing = script("facts", cwd=tmp_path)
    assert missing.code == 3
    assert f"no database file at {tmp_path / 'memstate.db'}" in missing.err
    assert not (tmp_path / "memstate.db").exists()
    export = tmp_path / "empty.jsonl"
    header = {"format": "memstate-sql-export", "format_version": 1}
    export.write_text(json.dumps(header) + "\n" + '{"kind":"end","facts":0,"log":0}\n')
    assert script("import", str(export), cwd=tmp_path).code == 0
    assert (tmp_path / "memstate.db").exists()
    assert script("facts", "--json", cwd=tmp_path).json() == []


def test_environment_variable_and_url_precedence(tmp_path: Path) -> None:
    env_db, arg_db = tmp_path / "env.db", tmp_path / "arg.db"
    seeded(f"sqlite:///{env_db}", "memstate")
    env = {"MEMSTATE_SQL_URL": f"sqlite:///{env_db}"}
    assert len(script("facts", "--json", cwd=tmp_path, env=env).json()) == 6
    missing = script("facts", "--url", str(arg_db), cwd=tmp_path, env=env)
    assert missing.code == 3 and str(arg_db) in missing.err


def test_errors_are_one_line_with_exit_codes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    seeded(url, "memstate")
    cases = [
        (["facts", "--url", url, "--filter", "{not json"], 2, "--filter is not valid JSON"),
        (["facts", "--url", url, "--filter", '{"payload.x": {"$regex": "a"}}'], 2, "$regex"),
        (["facts", "--url", url, "--limit", "-1"], 2, "--limit"),
        (["facts", "--url", url, "--order-by", "colour"], 2, "--order-by"),
        (["get", "--url", url, "nope"], 1, "no fact with id 'nope'"),
        (["history", "--url", url, "nope"], 1, "no fact and no log entries"),
        (["facts", "--url", url, "--prefix", "other"], 4, "prefix 'other': run `memstate-sql upgrade`"),
        (["facts", "--url", url, "--prefix", "Bad-Prefix"], 2, "table_prefix"),
        (["facts", "--url", "postgresql+psycopg://nobody@127.0.0.1:1/none"], 3, "cannot connect"),
        (["facts", "--url", "nosuchdb://x/y"], 2, "nosuchdb"),
        (["import", "--url", url, str(tmp_path / "missing.jsonl")], 2, "cannot read"),
        (["export", "--url", url, "-o", str(tmp_path / "no" / "x.jsonl")], 2, "cannot write"),
        (["rollback", "--url", url, "--session", "s1", "--steps", "1"], 1, "pass --yes"),
        (["rollback", "--url", url, "--session", "nobody", "--yes"], 1, "nothing to roll back"),
    ]
    for args, code, text in cases:
        result = script(*args, cwd=tmp_path)
        assert (result.code, result.out if code == 0 else "") == (code, ""), (args, result)
        assert text in result.err, (args, result.err)
        assert result.err.count("\n") == 1 and "Traceback" not in result.err, (args, result.err)


# ---------------------------------------------------------------------------- reading commands


def test_facts_filters_ordering_and_limit(capsys: pytest.CaptureFixture[str], db_url: str, prefix: str) -> None:
    ids = seeded(db_url, prefix)
    base = db_args(db_url, prefix)

    def facts(*args: str) -> list[dict[str, Any]]:
        result = cli(capsys, "facts", *base, "--json", *args)
        assert result.code == 0, result.err
        return result.json()  # type: ignore[no-any-return]

    assert len(facts()) == 6
    for value, name in (("true", "bool"), ("1", "int"), ('"1"', "str"), ("1.0", "int")):
        assert [d["payload"]["name"] for d in facts("--filter", f'{{"payload.value": {value}}}')] == [name]
    assert [d["id"] for d in facts("--type", "user", "--session", "s1", "--order-by", "payload.age")] == [
        ids["cy"],
        ids["bob"],
    ]
    top = facts("--type", "user", "--order-by", "payload.age", "--desc", "--limit", "2")
    assert [d["payload"]["age"] for d in top] == [42, 36]
    assert facts("--filter", '{"payload.age": {"$in": [29, 36]}}', "--order-by", "payload.name") == [
        ms.SQLStorage(db_url, table_prefix=prefix).load(ids["ada"]),
        ms.SQLStorage(db_url, table_prefix=prefix).load(ids["cy"]),
    ]
    human = cli(capsys, "facts", *base, "--type", "flag", "--limit", "2")
    assert human.code == 0
    assert human.out.splitlines()[0].split() == [
        "ID",
        "TYPE",
        "SESSION",
        "SOURCE",
        "TS",
        "VERSION",
        "IMMUTABLE",
        "PAYLOAD",
    ]
    assert "2 fact(s) (of 3; --limit 0 shows all)" in human.out


def test_get_history_log_and_stats(capsys: pytest.CaptureFixture[str], db_url: str, prefix: str) -> None:
    ids = seeded(db_url, prefix)
    base = db_args(db_url, prefix)
    got = cli(capsys, "get", *base, ids["bob"], "--json").json()
    assert got["payload"] == {"email": "bob@x", "name": "Bob", "age": 42} and got["session_id"] == "s1"
    human = cli(capsys, "get", *base, ids["bob"]).out
    assert '"age": 42' in human and "session_id: s1" in human

    history = cli(capsys, "history", *base, ids["bob"], "--json").json()
    assert [e["op"] for e in history] == ["COMMIT", "UPDATE"]
    assert history[1]["fact_before"]["payload"]["age"] == 41 and history[1]["actor"] == "tester"
    assert "age: 41 -> 42" in cli(capsys, "history", *base, ids["bob"]).out

    log = cli(capsys, "log", *base, "--session", "s1", "--json").json()
    assert [(e["op"], e["fact_id"]) for e in log] == [
        ("UPDATE", ids["bob"]),
        ("COMMIT", ids["cy"]),
        ("COMMIT", ids["bob"]),
    ]
    assert [e["fact_id"] for e in cli(capsys, "log", *base, "--json", "--limit", "2").json()] == [
        ids["str"],
        ids["int"],
    ]
    assert "newest first" in cli(capsys, "log", *base).out

    stats = cli(capsys, "stats", *base, "--json").json()
    assert stats["facts"] == 6 and stats["by_type"] == {"flag": 3, "user": 3}
    assert {s["session_id"]: s["facts"] for s in stats["by_session"]} == {None: 4, "s1": 2}
    assert stats["log_entries"] == 7 and stats["log_entries_rolled_back"] == 0
    assert stats["table_prefix"] == prefix
    text = cli(capsys, "stats", *base).out
    assert "facts:         6" in text and "log entries:   7" in text


# ---------------------------------------------------------------------------- rollback


def test_rollback_dry_run_confirmation_and_apply(capsys: pytest.CaptureFixture[str], db_url: str, prefix: str) -> None:
    ids = seeded(db_url, prefix)
    base = db_args(db_url, prefix)
    before = dump(db_url, prefix)

    plan = cli(capsys, "rollback", *base, "--session", "s1", "--steps", "2", "--dry-run", "--json")
    assert plan.code == 0
    update, commit = plan.json()["entries"]
    assert update["op"] == "UPDATE" and update["undo"].startswith(f"restore {ids['bob']} to ")
    assert json.loads(update["undo"].split(" to ", 1)[1]) == {"email": "bob@x", "name": "Bob", "age": 41}
    assert (commit["op"], commit["undo"]) == ("COMMIT", f"delete {ids['cy']}")
    human = cli(capsys, "rollback", *base, "--session", "s1", "--steps", "2", "--dry-run")
    assert "dry run: nothing was changed" in human.out and f"delete {ids['cy']}" in human.out
    refused = cli(capsys, "rollback", *base, "--session", "s1", "--steps", "2")
    assert refused.code == 1 and "--yes" in refused.err  # docs/cli.md: confirmation declined = 1
    assert dump(db_url, prefix) == before

    done = cli(capsys, "rollback", *base, "--session", "s1", "--steps", "2", "--yes", "--json")
    assert done.code == 0, done.err
    assert [e["op"] for e in done.json()["undone"]] == ["UPDATE", "COMMIT"]
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    try:
        assert storage.load(ids["cy"]) is None
        assert storage.load(ids["bob"])["payload"]["age"] == 41  # type: ignore[index]
        # The restored fact kept its singleton key: committing the same email updates it.
        store = ms.MemoryStore(storage)
        store.register_schema("user", User, Constraint(singleton_key="email"))
        assert store.commit(Fact(type="user", payload={"email": "bob@x", "name": "Robert"})) == ids["bob"]
    finally:
        storage.close()
    assert [e["op"] for e in cli(capsys, "log", *base, "--session", "s1", "--json").json()] == ["COMMIT"]


def test_rollback_restores_a_discarded_session_and_global_operations(
    capsys: pytest.CaptureFixture[str], db_url: str, prefix: str
) -> None:
    ids = seeded(db_url, prefix)
    base = db_args(db_url, prefix)
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    ms.MemoryStore(storage).discard_session("s1")
    assert storage.load(ids["bob"]) is None
    plan = cli(capsys, "rollback", *base, "--session", "s1", "--dry-run").out
    assert "restore 2 discarded fact(s)" in plan
    assert cli(capsys, "rollback", *base, "--session", "s1", "--yes").code == 0
    assert storage.load(ids["bob"])["payload"]["age"] == 42  # type: ignore[index]
    assert cli(capsys, "rollback", *base, "--no-session", "--yes").code == 0
    assert storage.load(ids["str"]) is None and storage.load(ids["int"]) is not None
    storage.close()


# ---------------------------------------------------------------------------- completion and output


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_clicks(capsys: pytest.CaptureFixture[str], shell: str) -> None:
    result = cli(capsys, "completion", shell)
    assert result.code == 0
    assert "_MEMSTATE_SQL_COMPLETE" in result.out and "memstate-sql" in result.out
    if shell == "zsh":
        assert result.out.startswith("#compdef memstate-sql")
    same = script(env={"_MEMSTATE_SQL_COMPLETE": f"{shell}_source"})
    assert same.code == 0 and same.out.strip() == result.out.strip()


def test_completion_completes_commands_and_options() -> None:
    """What the installed script answers at <TAB> (click's bash protocol, as the bash script asks it)."""

    def complete(*words: str) -> list[str]:
        env = {
            "_MEMSTATE_SQL_COMPLETE": "bash_complete",
            "COMP_WORDS": " ".join(["memstate-sql", *words]),
            "COMP_CWORD": str(len(words)),
        }
        result = script(env=env)
        assert result.code == 0, result.err
        return [line.split(",", 1)[1] for line in result.out.splitlines() if line.startswith("plain,")]

    assert complete("fa") == ["facts"]
    assert set(complete("im")) == {"import", "import-memstate"}
    assert "--dry-run" in complete("rollback", "--")
    assert complete("completion", "z") == ["zsh"]


def test_progress_bar_draws_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        with ProgressBar("exporting", stream=stream) as bar:
            bar(2, 4)
            bar(4, 4)
    assert "exporting" in tty.getvalue() and "4/4" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_the_group_lists_every_command() -> None:
    assert sorted(app.commands) == sorted(COMMANDS)


def test_rollback_refuses_when_the_log_changed_after_the_plan(
    capsys: pytest.CaptureFixture[str], db_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process writes to the session between the plan and the confirmation: nothing is undone."""
    ids = seeded(db_url, prefix)
    storage = ms.SQLStorage(db_url, table_prefix=prefix)

    def concurrent_write(question: str, assume_yes: bool) -> None:
        ms.MemoryStore(storage).commit(Fact(type="note", payload={"text": "meanwhile"}), session_id="s1")

    monkeypatch.setattr("memstate_sql.cli.rollback.confirm", concurrent_write)
    before_log = [e["uuid"] for e in storage.get_tx_log("s1")]
    result = cli(capsys, "rollback", "--url", db_url, "--prefix", prefix, "--session", "s1", "--steps", "2")
    assert result.code == 1 and "the log changed since the plan was shown" in result.err
    after_log = storage.get_tx_log("s1")
    assert [e["uuid"] for e in after_log[1:]] == before_log and after_log[0]["op"] == "COMMIT"
    assert storage.load(ids["bob"])["payload"]["age"] == 42  # type: ignore[index]
    storage.close()
