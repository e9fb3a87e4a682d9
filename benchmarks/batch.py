"""commit_many throughput alone: the "batch facts/s" row of `benchmarks.run` (1,000 facts per call, ids
given, session "mb", ``payload.group`` declared), repeated on fresh tables, with CPU time beside wall time
(steadier on a shared machine), the statements sent, and optionally a cProfile of the last round.

    python -m benchmarks.batch sqlite-full|sqlite-normal|postgresql|mariadb [--rounds 3] [--count] [--profile]

PostgreSQL and MariaDB: MEMSTATE_SQL_TEST_POSTGRES_URL / MEMSTATE_SQL_TEST_MYSQL_URL (tables under a fresh
``bb...`` prefix, dropped afterwards). Each round commits 10,000 facts in 10 calls; the table grows by as
much per round.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
import uuid
import warnings
from typing import Any

import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql import IndexedPath


def payload(i: int) -> dict[str, Any]:
    return {"group": -1, "score": i % 997, "name": f"user-{i}", "tags": ["a", "b"], "active": i % 2 == 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("db", choices=["sqlite-full", "sqlite-normal", "postgresql", "mariadb"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", action="store_true", help="count statements (runs them through SQLAlchemy)")
    parser.add_argument("--profile", action="store_true", help="cProfile the last round")
    args = parser.parse_args()
    options: dict[str, Any] = {}
    if args.db.startswith("sqlite"):
        url = f"sqlite:///{tempfile.mkdtemp()}/batch.db"
        options["sqlite_synchronous"] = args.db.split("-")[1]
    elif args.db == "postgresql":
        url = os.environ["MEMSTATE_SQL_TEST_POSTGRES_URL"]
    else:
        url = os.environ["MEMSTATE_SQL_TEST_MYSQL_URL"]
    prefix = "bb" + uuid.uuid4().hex[:6] + "_"
    storage = ms.SQLStorage(url, table_prefix=prefix, indexed_paths=[IndexedPath("payload.group", "number")], **options)
    store = ms.MemoryStore(storage)
    store.count()
    sent: list[str] = []
    if args.count:
        sa.event.listen(storage.engine, "before_cursor_execute", lambda *a: sent.append(a[2].split()[0]))
    rates = []
    profile = None
    for r in range(args.rounds):
        batch = [ms.Fact(id=f"m{r}-{i:08d}", type="note", payload=payload(i)) for i in range(10_000)]
        if args.profile and r == args.rounds - 1:
            profile = cProfile.Profile()
            profile.enable()
        wall, cpu = time.perf_counter(), time.process_time()
        for lo in range(0, len(batch), 1000):
            store.commit_many(batch[lo : lo + 1000], session_id="mb")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if profile is not None:
            profile.disable()
        rates.append((len(batch) / wall, len(batch) / cpu))
        if args.count and r == 0:
            print("statements per 1000-fact call:", {k: sent.count(k) / 10 for k in sorted(set(sent))})
    print(args.db, "wall facts/s:", *(f"{w:.0f}" for w, _ in rates), " cpu facts/s:", *(f"{c:.0f}" for _, c in rates))
    if profile is not None:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
    metadata = sa.MetaData()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # expression indexes SQLAlchemy does not reflect
        metadata.reflect(storage.engine)
    with storage.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            if table.name.startswith(prefix):
                table.drop(conn)
    storage.close()


if __name__ == "__main__":
    main()
