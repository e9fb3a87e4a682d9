"""Helpers for the command-line tests: run ``memstate-sql`` in-process or as the installed script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql.cli import main
from memstate_sql.records import FactState, TxRecord
from memstate_sql.repository import Repository

SCRIPT = Path(sys.executable).with_name("memstate-sql")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    """Run `main(args)` in this process."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as stop:  # main() returns the code; kept for a command that exits
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def script(*args: str, stdin: str | None = None, cwd: Path | None = None, env: dict[str, str] | None = None) -> Result:
    """Run the installed console script in a subprocess (stdin, stdout and stderr are pipes)."""
    assert SCRIPT.exists(), f"{SCRIPT} is missing: install the package (pip install -e .)"
    full_env = {k: v for k, v in os.environ.items() if k != "MEMSTATE_SQL_URL"}
    full_env.update(env or {})
    proc = subprocess.run(
        [str(SCRIPT), *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=120,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def dump(url: str, prefix: str) -> tuple[list[FactState], list[TxRecord]]:
    """Every fact (by id) and log entry (by seq) of a store, read through the typed columns."""
    storage = ms.SQLStorage(url, table_prefix=prefix, auto_migrate=False)
    try:

        def read(repo: Repository) -> tuple[list[FactState], list[TxRecord]]:
            return repo.facts_page(None, 1_000_000), repo.log_page(None, 1_000_000)

        return storage.transaction(read, write=False)
    finally:
        storage.close()


def store_tables(url: str, prefix: str, schema: str | None = None) -> list[str]:
    """The tables of a store's prefix that exist (its facts, log, sessions and version tables)."""
    engine = sa.create_engine(url)
    try:
        names = set(sa.inspect(engine).get_table_names(schema=schema))
    finally:
        engine.dispose()
    ours = {f"{prefix}_facts", f"{prefix}_tx", f"{prefix}_sessions", f"{prefix}_alembic_version"}
    return sorted(n for n in names if n in ours)
