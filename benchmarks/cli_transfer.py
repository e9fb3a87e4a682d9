"""Export/import throughput of the memstate-sql command.

    python benchmarks/cli_transfer.py [--facts 20000] [--url URL ...]

For each database URL: fills a fresh table prefix with N facts and N log
entries (bulk inserts), times `memstate-sql export` to a file and
`memstate-sql import` of that file into another fresh prefix of the same
database, and drops both prefixes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql.cli import main
from memstate_sql.records import FactState, TxRecord
from memstate_sql.repository import Repository


def fill(url: str, prefix: str, n: int) -> None:
    storage = ms.SQLStorage(url, table_prefix=prefix)
    now = datetime.now(timezone.utc)

    def work(repo: Repository) -> None:
        for start in range(0, n, 1000):
            facts = [
                FactState(
                    id=str(uuid.uuid4()),
                    type="bench",
                    payload={"i": i, "text": f"fact number {i}", "tags": ["a", "b"], "score": i / 7},
                    session_id=f"s{i % 50}",
                    source="bench",
                    ts=now,
                )
                for i in range(start, min(start + 1000, n))
            ]
            repo.insert_facts(facts)
            repo.insert_log(
                [
                    TxRecord(
                        0, str(uuid.uuid4()), "COMMIT", f.session_id, f.id, None, None, now, None, f.doc(), None, None
                    )
                    for f in facts
                ]
            )

    storage.transaction(work, name="fill")
    storage.close()


def drop(url: str, prefix: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in sa.inspect(conn).get_table_names():
            if table.startswith(prefix + "_"):
                conn.execute(sa.text(f"DROP TABLE {conn.dialect.identifier_preparer.quote(table)}"))
    engine.dispose()


def run(url: str, n: int) -> None:
    source, target = "b" + uuid.uuid4().hex[:10], "b" + uuid.uuid4().hex[:10]
    path = Path(tempfile.mkdtemp()) / "bench.jsonl"
    try:
        fill(url, source, n)
        started = time.perf_counter()
        assert main(["export", "--url", url, "--prefix", source, "-o", str(path), "--no-progress"]) == 0
        exported = time.perf_counter() - started
        started = time.perf_counter()
        assert main(["import", "--url", url, "--prefix", target, str(path), "--no-progress"]) == 0
        imported = time.perf_counter() - started
        rows = 2 * n
        name = sa.make_url(url).get_backend_name()
        size = path.stat().st_size / 1e6
        print(f"{name:<10} {n} facts + {n} log entries, {size:.1f} MB:", end=" ")
        print(f"export {exported:.2f}s ({rows / exported:,.0f} rows/s),", end=" ")
        print(f"import {imported:.2f}s ({rows / imported:,.0f} rows/s)")
    finally:
        drop(url, source)
        drop(url, target)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--facts", type=int, default=20000)
    parser.add_argument("--url", action="append")
    options = parser.parse_args()
    urls = options.url or [
        f"sqlite:///{tempfile.mkdtemp()}/bench.db",
        os.environ.get("MEMSTATE_SQL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
        os.environ.get("MEMSTATE_SQL_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
    ]
    for url in urls:
        run(url, options.facts)
