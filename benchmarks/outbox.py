"""What delivery to an external index costs per commit (docs/search.md, "External indexes").

    python -m benchmarks.outbox                       # SQLite, plus the servers in $MEMSTATE_SQL_TEST_*_URL
    python -m benchmarks.outbox --n 2000 --only sqlite

Single thread, `store.commit(Fact(...))` of new facts, per database, with:

* ``no hook``: the store alone;
* ``in_transaction``: a hook that writes the index inside the transaction (memstate's semantics);
* ``outbox``: the outbox row written in the transaction, delivery left to a dispatcher (timed apart:
  ``dispatch`` is the dispatcher's throughput afterwards, per fact);
* ``after_commit`` (the default of memstate_sql's Qdrant and Chroma hooks): the outbox row, then delivery
  and the row's deletion right after COMMIT, in the same call.

The index is an in-memory dict (what is measured is memstate_sql's part, not the index's), and, for the
default mode, Qdrant's local in-memory mode with a hashing embedding (``qdrant after_commit``) when
qdrant-client is installed. Tables go under a fresh prefix, dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql.dispatcher import Dispatcher
from memstate_sql.outbox import IndexHook


class DictIndex(IndexHook):
    def __init__(self, delivery: str) -> None:
        self.target_types: set[str] = set()
        self._setup_delivery(delivery, "dict")
        self.held: dict[str, int] = {}

    def document(self, fact: ms.Fact) -> str | None:
        return str(fact.payload.get("text", ""))

    def put(self, fact_id: str, fact: ms.Fact, version: int) -> None:
        self.held[fact_id] = version

    def remove(self, fact_ids: Sequence[str]) -> None:
        for fid in fact_ids:
            self.held.pop(fid, None)

    def entries(self) -> dict[str, int | None]:
        return dict(self.held)


def drop(url: str, prefix: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in sa.inspect(conn).get_table_names():
            if table.startswith(prefix + "_"):
                conn.execute(sa.text(f"DROP TABLE {table}"))
    engine.dispose()


def run(url: str, label: str, hooks: list[Any], n: int, **options: Any) -> tuple[float, float | None]:
    prefix = "bench" + uuid.uuid4().hex[:8]
    storage = ms.SQLStorage(url, table_prefix=prefix, **options)
    store = ms.MemoryStore(storage, hooks)
    store.commit(ms.Fact(type="note", payload={"text": "warm up"}))
    started = time.perf_counter()
    for i in range(n):
        store.commit(ms.Fact(type="note", payload={"text": f"note number {i} about things"}))
    rate = n / (time.perf_counter() - started)
    dispatch = None
    if hooks and getattr(hooks[0], "delivery", None) == "outbox":
        started = time.perf_counter()
        report = Dispatcher(storage, hooks, batch_size=200).deliver()
        dispatch = report.delivered / (time.perf_counter() - started)
        assert report.delivered == n + 1, report
    if hooks and hasattr(hooks[0], "held"):
        assert len(hooks[0].held) == n + 1, label
    storage.close()
    drop(url, prefix)
    return rate, dispatch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="commits per case (default 1000)")
    parser.add_argument("--only", default="", help="comma-separated databases: sqlite,postgresql,mysql")
    args = parser.parse_args(argv)
    sqlite = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    urls = {"sqlite": sqlite, "sqlite[normal]": sqlite}
    for name, env in (("postgresql", "MEMSTATE_SQL_TEST_POSTGRES_URL"), ("mysql", "MEMSTATE_SQL_TEST_MYSQL_URL")):
        if os.environ.get(env):
            urls[name] = os.environ[env]
    if args.only:
        urls = {k: v for k, v in urls.items() if k.split("[")[0] in args.only.split(",")}
    print(f"load average {os.getloadavg()[0]:.1f}, {args.n} commits per case")
    print(f"{'database':14} {'mode':24} {'commits/s':>10} {'vs no hook':>10} {'dispatch/s':>11}")
    for db, url in urls.items():
        cases: list[tuple[str, list[Any]]] = [
            ("no hook", []),
            ("in_transaction", [DictIndex("in_transaction")]),
            ("outbox", [DictIndex("outbox")]),
            ("after_commit", [DictIndex("after_commit")]),
        ]
        try:
            import qdrant_client

            from memstate_sql.integrations.qdrant import QdrantSyncHook
            from tests.outbox_support import hash_embedding

            cases.append(
                (
                    "qdrant after_commit",
                    [
                        QdrantSyncHook(
                            qdrant_client.QdrantClient(":memory:"), "bench", hash_embedding, text_field="text"
                        )
                    ],
                )
            )
        except ImportError:  # pragma: no cover
            pass
        base = None
        for label, hooks in cases:
            options = {"sqlite_synchronous": "normal"} if db == "sqlite[normal]" else {}
            rate, dispatch = run(url, label, hooks, args.n, **options)
            base = base or rate
            shown = "" if dispatch is None else f"{dispatch:11.0f}"
            print(f"{db:14} {label:24} {rate:10.0f} {rate / base:9.2f}x {shown}")


if __name__ == "__main__":
    main()
