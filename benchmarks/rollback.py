"""One-step rollbacks per second: memstate 0.5.1, memstate_sql before a change, and memstate_sql now, in one run.

    python -m benchmarks.rollback [--before REV] [--n 300] [--rounds 3] [--only sqlite,postgresql]

The workload of `benchmarks/run.py`: `n` facts committed one by one in a session, then `rollback(session, 1)`
`n` times (each undoes one COMMIT: a versioned DELETE and the log bookkeeping). "before" is the memstate_sql
package of git revision REV (default: the merge base with ``main``), extracted with ``git archive`` into a
temporary directory; "now" is this checkout. Every measurement runs in a fresh process (each system imports
its own memstate_sql), the systems take turns for `rounds` rounds (the machine's load hits them alike), and the
table shows the median. memstate_sql's figures also give the statements one rollback sends (counted as in
`benchmarks/run.py`, after the timed loop). On SQLite, both memstate_sql versions are measured also at memstate's
own durability (``sqlite_synchronous="normal"``; the default is ``full``). PostgreSQL:
MEMSTATE_SQL_TEST_POSTGRES_URL (tables under a fresh prefix, dropped afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

PG_URL = os.environ.get("MEMSTATE_SQL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _workload(store: Any, fact_cls: Any, n: int) -> float:
    for i in range(n):
        store.commit(fact_cls(id=f"rb{i:08d}", type="note", payload={"n": i, "name": f"user-{i}"}), session_id="rb")
    start = time.perf_counter()
    for _ in range(n):
        store.rollback("rb", 1)
    return n / (time.perf_counter() - start)


def _statements(store: Any) -> int:
    """Messages one rollback sends (`benchmarks.run.messages`)."""
    import memstate_sql as ms
    from benchmarks.run import messages

    store.commit(ms.Fact(id="rt", type="note", payload={}), session_id="rt")
    with messages(store.storage.engine) as sent:
        store.rollback("rt", 1)
    return len(sent)


def worker(system: str, db: str, n: int, workdir: str) -> dict[str, Any]:
    """One measurement, in this process: `system` is memstate or memstate_sql (whichever is on the path)."""
    prefix = "rbb" + uuid.uuid4().hex[:8]
    if system == "memstate":
        import memstate

        if db == "sqlite":
            storage: Any = memstate.SQLiteStorage(os.path.join(workdir, f"{prefix}.db"))
        else:
            from memstate.backends.postgres import PostgresStorage

            storage = PostgresStorage(PG_URL, table_prefix=prefix)
        store: Any = memstate.MemoryStore(storage)
        try:
            return {"rollbacks/s": _workload(store, memstate.Fact, n)}
        finally:
            _drop_memstate(storage, db, prefix)
    import memstate_sql as ms

    url = f"sqlite:///{workdir}/{prefix}.db" if db == "sqlite" else PG_URL
    options = {"sqlite_synchronous": "normal"} if system.endswith(":normal") else {}
    store = ms.MemoryStore(ms.SQLStorage(url, table_prefix=prefix, **options))
    try:
        store.count()  # the schema, before the clock starts
        return {"rollbacks/s": _workload(store, ms.Fact, n), "statements": _statements(store), "from": ms.__file__}
    finally:
        _drop(store.storage.engine, prefix)
        store.storage.close()


def _drop(engine: Any, prefix: str) -> None:
    import sqlalchemy as sa

    if engine.dialect.name == "sqlite":
        return
    with engine.begin() as conn:
        for table in sa.inspect(conn).get_table_names():
            if table.startswith(prefix):
                conn.exec_driver_sql(f"DROP TABLE {table}")


def _drop_memstate(storage: Any, db: str, prefix: str) -> None:
    if db != "sqlite":
        import sqlalchemy as sa

        _drop(sa.create_engine(PG_URL), prefix)
    storage.close()


def run(source: str | None, system: str, db: str, n: int, workdir: str) -> dict[str, Any]:
    """`worker` in a fresh process whose memstate_sql comes from `source` (a directory)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", system, db, str(n), workdir]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{system} on {db} from {source} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def extract(rev: str, into: str) -> str:
    """The memstate_sql package (and its migration scripts) of git revision `rev`, extracted under `into`."""
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", rev, "memstate_sql", "alembic"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
    return into


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", help="git revision of the 'before' memstate_sql (default: merge base with main)")
    parser.add_argument("--n", type=int, default=300, help="rollbacks per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="sqlite,postgresql")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        system, db, n, workdir = args.worker
        print(json.dumps(worker(system, db, int(n), workdir)))
        return
    rev = (
        args.before
        or subprocess.run(
            ["git", "-C", ROOT, "merge-base", "HEAD", "main"], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    workdir = tempfile.mkdtemp(prefix="memstate-rb-")
    before = extract(rev, tempfile.mkdtemp(prefix="memstate-rb-before-"))
    systems = {"memstate 0.5.1": ("memstate", None), f"before ({rev[:9]})": ("memstate_sql", before)}
    systems["now"] = ("memstate_sql", ROOT)
    # SQLite at memstate's own durability (WAL + synchronous=NORMAL; memstate_sql's default is FULL).
    normal = {
        f"before ({rev[:9]}) [normal]": ("memstate_sql:normal", before),
        "now [normal]": ("memstate_sql:normal", ROOT),
    }
    dbs = [d.strip() for d in args.only.split(",") if d.strip()]
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for db in dbs:
        for r in range(args.rounds):
            for label, (system, source) in (systems | normal if db == "sqlite" else systems).items():
                result = run(source, system, db, args.n, workdir)
                if source is not None:
                    assert result["from"].startswith(source), result["from"]  # the intended memstate_sql
                found.setdefault((db, label), []).append(result)
                print(f"  {db} round {r + 1} {label}: {result['rollbacks/s']:.0f}/s", file=sys.stderr, flush=True)
    print(f"one-step rollbacks/s, median of {args.rounds} rounds of {args.n} (each in a fresh process)")
    print(f"{'database':<12} {'system':<31} {'rollbacks/s':>12} {'vs memstate':>12} {'statements':>11}")
    for db in dbs:
        base = statistics.median(r["rollbacks/s"] for r in found[db, "memstate 0.5.1"])
        for label in systems | normal if db == "sqlite" else systems:
            results = found[db, label]
            rate = statistics.median(r["rollbacks/s"] for r in results)
            trips = results[0].get("statements", "")
            print(f"{db:<12} {label:<31} {rate:>12.0f} {rate / base:>11.2f}x {trips!s:>11}")


if __name__ == "__main__":
    main()
