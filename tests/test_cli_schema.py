"""`upgrade`, `downgrade`, `current`, `check` on every database."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql import migrations
from tests.cli_support import cli, script
from tests.conftest import database_url


def test_upgrade_current_check_downgrade(capsys: pytest.CaptureFixture[str], db_url: str, prefix: str) -> None:
    base = ["--url", db_url, "--prefix", prefix]
    head = migrations.head_revision()

    up = cli(capsys, "upgrade", *base, "--json")
    assert up.code == 0, up.err
    assert up.json()["revision"] == head and up.json()["status"] == "up to date"
    assert cli(capsys, "current", *base, "--json").json()["revision"] == head
    assert f"revision {head} (head {head}, up to date)" in cli(capsys, "current", *base).out
    checked = script("check", *base)
    assert checked.code == 0 and "up to date" in checked.out
    assert cli(capsys, "upgrade", *base).code == 0  # idempotent
    assert cli(capsys, "facts", *base, "--json").json() == []

    refused = cli(capsys, "downgrade", *base, "base")
    assert refused.code == 1 and "--yes" in refused.err  # docs/cli.md: confirmation declined = 1
    assert cli(capsys, "check", *base).code == 0

    down = cli(capsys, "downgrade", *base, "base", "--yes", "--json")
    assert down.code == 0, down.err
    assert down.json()["revision"] is None
    behind = script("check", *base)
    assert behind.code == 4 and "memstate-sql upgrade" in behind.err and behind.err.count("\n") == 1
    assert cli(capsys, "current", *base, "--json").json()["revision"] is None
    assert cli(capsys, "facts", *base).code == 4
    assert cli(capsys, "upgrade", *base).code == 0
    assert cli(capsys, "check", *base).code == 0


def test_check_fails_when_the_database_is_ahead(capsys: pytest.CaptureFixture[str], db_url: str, prefix: str) -> None:
    base = ["--url", db_url, "--prefix", prefix]
    assert cli(capsys, "upgrade", *base).code == 0
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            table = sa.table(migrations.version_table(prefix), sa.column("version_num"))
            conn.execute(sa.update(table).values(version_num="ms_9999_from_the_future"))
    finally:
        engine.dispose()
    ahead = script("check", *base)
    assert ahead.code == 4 and "ms_9999_from_the_future" in ahead.err
    assert "Traceback" not in ahead.err and ahead.err.count("\n") == 1
    assert cli(capsys, "facts", *base).code == 4
    assert cli(capsys, "current", *base, "--json").json()["revision"] == "ms_9999_from_the_future"


def test_upgrade_to_an_unknown_revision_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    result = script("upgrade", "--url", f"sqlite:///{tmp_path}/x.db", "no_such_revision")
    assert result.code != 0 and result.err.count("\n") == 1 and "Traceback" not in result.err


def test_commands_in_a_postgresql_schema(
    capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if "postgresql" not in (request.config.getoption("--db") or ["postgresql"]):
        pytest.skip("PostgreSQL is not selected (--db)")
    url = database_url("postgresql", tmp_path_factory)
    name = "cli_" + uuid.uuid4().hex[:8]
    base = ["--url", url, "--schema", name]
    try:
        assert cli(capsys, "upgrade", *base).code == 0
        assert cli(capsys, "check", *base).code == 0
        storage = ms.SQLStorage(url, schema=name)
        storage.save({"id": "f1", "type": "t", "payload": {"a": 1}})
        storage.close()
        assert [d["id"] for d in cli(capsys, "facts", *base, "--json").json()] == ["f1"]
        assert cli(capsys, "stats", *base, "--json").json()["facts"] == 1
        assert sa.inspect(sa.create_engine(url)).has_table("memstate_facts", schema=name)
    finally:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        engine.dispose()
