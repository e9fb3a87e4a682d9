"""Cold start (issue 12): what `import memstate_sql` and a fresh process's first operation load and send.

Each check runs in a fresh interpreter (a subprocess), since this test process has imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

import memstate_sql as ms

#: Never loaded by `import memstate_sql`: what only some processes use is imported on first use.
NOT_AT_IMPORT = (
    "alembic",  # migrations: only when a schema is not current
    "click",  # the CLI
    "rich",
    "numpy",  # vector scoring
    "langgraph",  # integrations
    "qdrant_client",
    "chromadb",
    "memstate_sql.aio",
    "memstate_sql.cli",
    "memstate_sql.integrations",
    "memstate_sql.migrations",
    "memstate_sql.sweeper",
    "memstate_sql.dispatcher",
    "memstate_sql.dialects.sqlite",
    "memstate_sql.dialects.postgresql",
    "memstate_sql.dialects.mysql",
    "sqlalchemy.orm",  # the tables are Core; ORM classes are mapped for hosts on first access
    "sqlalchemy.ext.asyncio",
    "sqlalchemy.dialects.sqlite",  # every database's SQLAlchemy dialect: on first use of that database
    "sqlalchemy.dialects.postgresql",
    "sqlalchemy.dialects.mysql",
    "psycopg",  # drivers
    "pymysql",
    "aiosqlite",
)

#: Never loaded by a first operation on an up-to-date SQLite database either (nor SQLite's vector search).
NOT_AT_FIRST_SQLITE_OPERATION = (*(m for m in NOT_AT_IMPORT if "sqlite" not in m), "memstate_sql.dialects.sqlitevec")


def run(code: str) -> dict[str, object]:
    """Run `code` in a fresh interpreter; it prints one JSON document, returned."""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    found: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


LOADED = (
    "def loaded(names):\n"
    "    return sorted(n for n in names if n in sys.modules or any(m.startswith(n + '.') for m in sys.modules))\n"
)


def test_import_loads_only_what_the_store_needs() -> None:
    found = run(
        "import json, sys\n"
        f"{LOADED}"
        "import memstate_sql\n"
        f"print(json.dumps({{'loaded': loaded({list(NOT_AT_IMPORT)!r})}}))\n"
    )
    assert found["loaded"] == []


def test_every_public_name_still_imports_from_a_fresh_process() -> None:
    found = run(
        "import json, memstate_sql as ms\n"
        "missing = [n for n in ms.__all__ if getattr(ms, n, None) is None]\n"
        "from memstate_sql import AsyncMemoryStore, AsyncSQLStorage, AsyncSweeper, Sweeper, VERSION_TABLE, metadata\n"
        "from memstate_sql.models import metadata as models_metadata\n"
        "same = metadata is models_metadata is ms.models_for().metadata\n"
        "print(json.dumps({'missing': missing, 'same': same, 'dir': sorted(set(ms.__all__) - set(dir(ms)))}))\n"
    )
    assert found == {"missing": [], "same": True, "dir": []}


def test_first_operation_on_an_up_to_date_sqlite_file(tmp_path: Path) -> None:
    """The first operation confirms the schema with one statement, then runs its own; it loads neither
    Alembic nor the ORM nor another database's modules."""
    url = f"sqlite:///{tmp_path / 'cold.db'}"
    with ms.SQLStorage(url) as storage:
        ms.MemoryStore(storage).commit(ms.Fact(id="c", type="note", payload={"n": 1}))
    found = run(
        "import json, sys\n"
        f"{LOADED}"
        "import sqlalchemy as sa, memstate_sql as ms\n"
        "sent = []\n"
        "sa.event.listen(sa.Engine, 'before_cursor_execute', lambda c, cur, sql, *a: sent.append(sql.split()[0]))\n"
        f"fact = ms.MemoryStore(ms.SQLStorage({url!r})).get('c')\n"
        f"print(json.dumps({{'payload': fact['payload'], 'sent': sent, "
        f"'loaded': loaded({list(NOT_AT_FIRST_SQLITE_OPERATION)!r})}}))\n"
    )
    assert found["payload"] == {"n": 1}
    assert found["sent"] == ["SELECT", "SELECT"]  # the version row, the fact
    assert found["loaded"] == []


def test_a_missing_schema_is_still_created_by_the_first_operation(tmp_path: Path) -> None:
    """The one-statement check fails on a database without the tables: Alembic then creates them."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    found = run(
        "import json, memstate_sql as ms\n"
        f"store = ms.MemoryStore(ms.SQLStorage({url!r}))\n"
        "fid = store.commit(ms.Fact(type='note', payload={'n': 2}))\n"
        "print(json.dumps({'n': store.get(fid)['payload']['n']}))\n"
    )
    assert found == {"n": 2}
    assert ms.migrations.current_revision(url) == ms.schema.HEAD_REVISION


def test_models_are_one_per_prefix_and_schema_however_asked_for() -> None:
    models = ms.models_for()
    assert models is ms.models_for("memstate") is ms.models_for("memstate", None)
    assert models is ms.models_for(prefix="memstate", schema=None)
    assert ms.models_for("other") is not models
    assert ms.metadata is models.metadata
    assert "ix_memstate_facts_payload_gin" in {ix.name for ix in models.facts.indexes}  # PostgreSQL's, declared


def test_orm_classes_for_host_applications(tmp_path: Path) -> None:
    """`Models.Fact`... are ORM classes mapped onto the storage's tables (built on first access)."""
    url = f"sqlite:///{tmp_path / 'orm.db'}"
    with ms.SQLStorage(url, table_prefix="ormhost") as storage:
        fid = ms.MemoryStore(storage).commit(ms.Fact(type="note", payload={"n": 3}), session_id="s")
        models = storage.models
        assert sa.inspect(models.Fact).local_table is models.facts
        assert models.Tx.__table__ is models.log  # type: ignore[attr-defined]
        with Session(storage.engine) as session:
            row = session.scalars(sa.select(models.Fact).where(models.Fact.id == fid)).one()
            assert (row.payload, row.session_id, row.version) == ({"n": 3}, "s", 1)
            assert row.ts.tzinfo is not None
            entry = session.scalars(sa.select(models.Tx).where(models.Tx.fact_id == fid)).one()
            assert entry.op == "COMMIT"
