"""SIGKILL at random points of operations (half of them while a hook runs): the tables stay consistent.

After every kill the invariant checker runs (every fact has its log entries, every active
log entry's change is present, no rollback half-applied, one fact per singleton key), and
the store keeps working. The short run (12 kills per database) is always on; ``--run-slow``
runs 60 kills per database.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

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
