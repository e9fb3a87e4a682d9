"""SIGKILL at random points of operations (half of them while a hook runs): the tables stay consistent.

After every kill the invariant checker runs (every fact has its log entries, every active
log entry's change is present, no rollback half-applied, one fact per singleton key), and
the store keeps working. The short run (12 kills per database) is always on; ``--run-slow``
runs 60 kills per database.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import memstate_sql as ms
from tests import workload
from tests.invariants import check_tables


def kill_once(
    db_url: str, prefix: str, n: int, rng: random.Random, during_hook: bool, synchronous: str | None = None
) -> bool:
    """Run a worker, SIGKILL it mid-flight; returns whether a hook was running at the kill."""
    ctx = multiprocessing.get_context("fork")
    in_hook = ctx.Value("i", 0, lock=False)
    started = ctx.Event()
    proc = ctx.Process(
        target=workload.run_worker,
        args=(db_url, prefix, n, -1, rng.randrange(2**32), None, in_hook, started, 0.03, synchronous),
    )
    proc.start()
    try:
        assert started.wait(60), "worker did not start"
        time.sleep(rng.uniform(0, 0.25))
        if during_hook:
            deadline = time.monotonic() + 10
            while not in_hook.value and time.monotonic() < deadline:
                time.sleep(0.0005)
        hooked = bool(in_hook.value)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(30)
    assert proc.exitcode == -signal.SIGKILL, f"worker ended by itself: exit code {proc.exitcode}"
    return hooked


@pytest.mark.parametrize("synchronous", [None, "normal"], ids=["default", "sync_normal"])
@pytest.mark.parametrize("kills", [pytest.param(12, id="short"), pytest.param(60, id="long", marks=pytest.mark.slow)])
def test_sigkill_mid_operation_leaves_the_tables_consistent(
    db: str, db_url: str, prefix: str, kills: int, synchronous: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under both SQLite durabilities (`sqlite_synchronous`; the default is ``full``): a killed process
    loses at most its transaction in flight, never half of one."""
    if synchronous is not None and db != "sqlite":
        pytest.skip("sqlite_synchronous is a SQLite setting")
    workload.make_store(db_url, prefix, sqlite_synchronous=synchronous).storage.schema_gate.ensure()
    rng = random.Random(kills)
    in_hook = 0
    report = None
    for n in range(kills):
        in_hook += kill_once(db_url, prefix, n, rng, during_hook=n % 2 == 1, synchronous=synchronous)
        report = check_tables(db_url, prefix)
    assert in_hook >= kills // 2 - 1, f"only {in_hook} of {kills} kills landed inside a hook"

    # The store recovers without being re-created: a fresh one writes and rolls back fine.
    store = workload.make_store(db_url, prefix, sqlite_synchronous=synchronous)
    try:
        fid = store.commit(ms.Fact(type="note", payload={"after": "crash"}), session_id="recovery")
        store.rollback("recovery")
        assert store.get(fid) is None
    finally:
        store.storage.close()
    final = check_tables(db_url, prefix)
    assert report is not None and final.log_entries > 0
    with capsys.disabled():
        print(f"\n[crash {db} {synchronous or 'default'}] kills={kills} in_hook={in_hook} tables={final.counts()}")


# ---------------------------------------------------------------------------- killed first-use migrations


def _first_use(url: str, prefix: str, kill_at: int, counter: Any, record: str | None) -> None:
    """A process's first use of a store (its storage migrates the tables, `SchemaGate`), which SIGKILLs
    itself just before the `kill_at`-th SQL statement of its migration (so just after the one before it),
    counted from its first statement on the version table (0: never); `counter` receives how many
    statements of the migration it sent, `record` (a file) their text."""
    from sqlalchemy import Engine, event

    sent: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *rest: Any) -> None:
        if not sent and "_alembic_version" not in statement:
            return  # connecting, the start-up check: before the migration
        sent.append(statement)
        counter.value = len(sent)
        if counter.value == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    event.listen(Engine, "before_cursor_execute", count)  # also counts statements that fail
    storage = ms.SQLStorage(url, table_prefix=prefix)
    storage.load("first-use")
    storage.close()
    if record is not None:
        Path(record).write_text(json.dumps(sent))


def _run_first_use(url: str, prefix: str, kill_at: int, record: str | None = None) -> tuple[int, int | None]:
    """Run `_first_use` in a child; returns (statements it sent, its exit code)."""
    ctx = multiprocessing.get_context("fork")
    counter = ctx.Value("i", 0, lock=False)
    proc = ctx.Process(target=_first_use, args=(url, prefix, kill_at, counter, record))
    proc.start()
    proc.join(120)
    if proc.exitcode is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    return int(counter.value), proc.exitcode


@pytest.mark.parametrize("start", ["fresh", "from_ms_0001"])
def test_sigkill_during_first_use_migration_then_next_start_succeeds(
    db: str, db_url: str, prefix: str, start: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A process killed at a random point of its first-use migration (a fresh store's, or an upgrade from
    ms_0001) leaves whatever MySQL/MariaDB's non-transactional DDL had done; the next start completes it
    by itself, and `verify()` is clean. The kill points are random statements of the migration (counted
    in an unkilled run from the first statement on the version table to just after the last write of it)."""
    from memstate_sql import migrations
    from tests.conftest import drop_prefix

    kills = 36 if db == "mysql" else 8

    def prepare(p: str) -> None:
        if start == "from_ms_0001":
            assert ms.migrate(db_url, "ms_0001_initial", table_prefix=p) == "ms_0001_initial"

    def left_state(p: str) -> migrations.State:
        with migrations.connection_for(db_url) as conn:
            return migrations.schema_state(conn, p).state

    prepare(prefix + "m")
    record = tmp_path / "statements.json"
    total, code = _run_first_use(db_url, prefix + "m", 0, record=str(record))
    assert code == 0 and total > 0
    drop_prefix(db_url, prefix + "m")
    statements = json.loads(record.read_text())
    writes = [
        i
        for i, sql in enumerate(statements, 1)
        if "_alembic_version" in sql and sql.lstrip().upper().startswith(("INSERT", "UPDATE"))
    ]
    # the migration: from its first statement on the version table to just after its last version write
    first, last = 1, writes[-1] + 1
    rng = random.Random(f"{db}-{start}")
    states: dict[str, int] = {}
    landed = 0
    for n in range(kills):
        p = f"{prefix}k{n}"
        try:
            prepare(p)
            point = rng.randint(first, last)
            sent, code = _run_first_use(db_url, p, point)
            # (the count varies a little between runs: a point past the end lets the migration finish)
            assert (code == -signal.SIGKILL and sent == point) or (code == 0 and sent < point), (point, sent, code)
            landed += code != 0
            found = left_state(p)
            states[found.value] = states.get(found.value, 0) + 1
            # the next start: a plain store on the same tables, no operator, no repair command
            store = ms.MemoryStore(ms.SQLStorage(db_url, table_prefix=p))
            try:
                fid = store.commit(ms.Fact(type="note", payload={"after": "kill"}), session_id="s")
                assert store.get(fid) is not None
                report = store.storage.verify()
                assert report.ok, (n, point, found, report)
            finally:
                store.storage.close()
            assert migrations.current_revision(db_url, table_prefix=p) == migrations.head_revision()
        finally:
            drop_prefix(db_url, p)
    assert landed >= kills * 2 // 3, f"only {landed} of {kills} kills landed inside the migration"
    if db == "mysql" and start == "fresh":
        # the kills really left half-done migrations: tables without a revision, or revision 1 only
        partial = states.get("interrupted", 0) + states.get("behind", 0)
        assert partial >= kills // 5, f"too few kills left a half-done migration: {states}"
        assert landed - states.get("current", 0) >= 30, f"fewer than 30 kills inside the migration: {states}"
    with capsys.disabled():
        print(
            f"\n[first-use kill {db} {start}] kills={landed}/{kills} "
            f"statements={first}..{last} of {total} left={states}"
        )
