"""Tenancy and retention benchmark: the ms_0001 -> ms_0002 upgrade, namespaces, sweeping, log compaction.

    python -m benchmarks.tenancy [--facts N] [--db sqlite,postgresql,mysql] [--quick] [--parts upgrade,namespaces]

Two parts per database, each on its own fresh table prefix (dropped at the end unless --keep):

* upgrade: migrate a fresh prefix to ``ms_0001_initial``, bulk-load N facts plus N COMMIT log entries in the
  ms_0001 layout (multi-row INSERTs, one transaction per 10k rows, through SQLAlchemy Core tables declared with
  ms_0001's columns and types), then time ``memstate_sql.migrate(url)`` to head. On PostgreSQL and MariaDB a
  writer thread keeps committing facts the way an ms_0001 release does (one fact row + one log row per
  transaction, ms_0001 columns only: code of this release refuses a database that is not at head) for the whole
  upgrade; the table shows how many commits went through and their worst latency. Then, on the upgraded data
  (all in the default namespace): index sizes; 10 % of the facts are given a past expiry and
  ``storage.sweep(batch_size=1000)`` is timed; then ``storage.compact_log(now)`` (it examines every entry of the
  namespace and removes those no fact needs: the swept facts' COMMIT and EXPIRE entries).
* namespaces: a fresh prefix at head with ``IndexedPath("payload.group", "number")``; N facts spread over
  --namespaces namespaces (the same ids and the same payload values in every namespace, like tenants running
  the same agent); 10 % of each namespace already expired. Timed: ``store.get(id)`` and
  ``store.query("note", {"payload.group": g})`` (45 live rows of 50: expired facts are invisible) in random
  namespaces through ``storage.for_namespace(ns)``, and a sweep of 100k expired facts, namespace by namespace.

Figures are one run; the machine's load average is printed with them. URLs: MEMSTATE_SQL_BENCH_POSTGRES_URL,
MEMSTATE_SQL_BENCH_MYSQL_URL (defaults: the local ``test_bench`` databases); SQLite files go to a temp directory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql.indexes import IndexedPath
from memstate_sql.models import JSONDocument, KeyString, SeqType, UTCDateTime
from memstate_sql.records import singleton_slot

PG_URL = os.environ.get("MEMSTATE_SQL_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test_bench")
MY_URL = os.environ.get("MEMSTATE_SQL_BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test_bench")
CHUNK = 10_000  # rows per transaction in the bulk loads
GROUP = 50  # facts per payload.group value inside a namespace
TS = datetime(2026, 1, 1, tzinfo=timezone.utc)
PAST = datetime(2026, 2, 1, tzinfo=timezone.utc)  # expiry of the facts loaded as already expired
SWEEP_TARGET = 100_000  # expired facts swept in each part (fewer with fewer facts)

Row = tuple[str, str, str, str]  # database, metric, value, note


def log(msg: str) -> None:
    print(msg, flush=True)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def payload(j: int) -> dict[str, Any]:
    return {"group": j // GROUP, "score": j % 997, "name": f"user-{j}", "tags": ["a", "b"], "active": j % 2 == 0}


def fact_doc(fid: str, j: int) -> dict[str, Any]:
    return {"id": fid, "type": "note", "payload": payload(j), "source": "bench", "session_id": None, "ts": iso(TS)}


# ---------------------------------------------------------------------------- the ms_0001 layout


def v1_tables(prefix: str) -> tuple[sa.Table, sa.Table]:
    """ms_0001's facts and log tables, column for column (alembic/versions/ms_0001_initial.py)."""
    md = sa.MetaData()
    facts = sa.Table(
        f"{prefix}_facts",
        md,
        sa.Column("id", KeyString(), primary_key=True),
        sa.Column("type", KeyString(), nullable=False),
        sa.Column("session_id", KeyString()),
        sa.Column("source", KeyString()),
        sa.Column("ts", UTCDateTime(), nullable=False),
        sa.Column("payload", JSONDocument(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("immutable", sa.Boolean(create_constraint=False), nullable=False),
        sa.Column("singleton", KeyString()),
    )
    tx = sa.Table(
        f"{prefix}_tx",
        md,
        sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("op", sa.String(32), nullable=False),
        sa.Column("session_id", KeyString()),
        sa.Column("fact_id", KeyString()),
        sa.Column("actor", KeyString()),
        sa.Column("reason", sa.Text()),
        sa.Column("ts", UTCDateTime(), nullable=False),
        sa.Column("fact_before", JSONDocument()),
        sa.Column("fact_after", JSONDocument()),
        sa.Column("discarded", JSONDocument()),
        sa.Column("reverted_by", sa.String(36)),
    )
    return facts, tx


def v1_rows(fid: str, j: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A fact row and its COMMIT entry; entry j is logged j milliseconds after TS (a horizon bounds compaction)."""
    fact = {
        "id": fid, "type": "note", "session_id": None, "source": "bench", "ts": TS, "payload": payload(j),
        "version": 1, "immutable": False, "singleton": None,
    }  # fmt: skip
    entry = {
        "uuid": str(uuid.uuid4()), "op": "COMMIT", "session_id": None, "fact_id": fid, "actor": None,
        "reason": None, "ts": TS + timedelta(milliseconds=j), "fact_before": None, "fact_after": fact_doc(fid, j),
        "discarded": None, "reverted_by": None,
    }  # fmt: skip
    return fact, entry


def load_v1(engine: sa.Engine, prefix: str, n: int) -> None:
    facts, tx = v1_tables(prefix)
    for lo in range(0, n, CHUNK):
        pairs = [v1_rows(f"b{i:09d}", i) for i in range(lo, min(n, lo + CHUNK))]
        with engine.begin() as conn:
            conn.execute(sa.insert(facts), [p[0] for p in pairs])
            conn.execute(sa.insert(tx), [p[1] for p in pairs])


def analyze(engine: sa.Engine, db: str, tables: list[str]) -> None:
    with engine.begin() as conn:
        if db == "sqlite":
            conn.exec_driver_sql("ANALYZE")
        elif db == "postgresql":
            for t in tables:
                conn.exec_driver_sql(f"ANALYZE {t}")
        else:
            for t in tables:
                conn.exec_driver_sql(f"ANALYZE TABLE {t}").fetchall()


# ---------------------------------------------------------------------------- writer during the upgrade


class V1Writer(threading.Thread):
    """Commits facts the way an ms_0001 release does, one fact + one log row per transaction, until stopped."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.engine = sa.create_engine(url, poolclass=sa.NullPool)
        self.facts, self.tx = v1_tables(prefix)
        self.stop_at: float | None = None
        self.marks: list[tuple[float, float]] = []  # (start, latency) per commit
        self.errors: list[str] = []
        self.ready = threading.Event()

    def run(self) -> None:
        i = 0
        with self.engine.connect() as conn:
            self.ready.set()
            while self.stop_at is None or time.perf_counter() < self.stop_at:
                fact, entry = v1_rows(f"w{i:09d}", i)
                start = time.perf_counter()
                try:
                    with conn.begin():
                        conn.execute(sa.insert(self.facts), fact)
                        conn.execute(sa.insert(self.tx), entry)
                except sa.exc.DBAPIError as err:
                    self.errors.append(str(err.orig)[:200])
                    time.sleep(0.01)
                    continue
                self.marks.append((start, time.perf_counter() - start))
                i += 1
                time.sleep(0.002)  # a busy but not saturating writer (~300 commits/s at most)
        self.engine.dispose()

    def during(self, lo: float, hi: float) -> list[tuple[float, float]]:
        return [m for m in self.marks if lo <= m[0] <= hi]


# ---------------------------------------------------------------------------- index sizes


def sizes(engine: sa.Engine, db: str, prefix: str) -> list[tuple[str, int]]:
    """(relation, bytes) for the facts and log tables and each of their indexes."""
    names = [f"{prefix}_facts", f"{prefix}_tx"]
    out: list[tuple[str, int]] = []
    with engine.connect() as conn:
        if db == "postgresql":
            for t in names:
                out.append((f"table {t}", conn.execute(sa.text("SELECT pg_relation_size(:t)"), {"t": t}).scalar_one()))
                rows = conn.execute(
                    sa.text(
                        "SELECT c.relname, pg_relation_size(c.oid) FROM pg_index i "
                        "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = CAST(:t AS regclass) "
                        "ORDER BY c.relname"
                    ),
                    {"t": t},
                )
                out += [(f"index {r[0]}", int(r[1])) for r in rows]
        elif db == "sqlite":
            rows = conn.exec_driver_sql(
                "SELECT m.type, s.name, SUM(s.pgsize) FROM dbstat s JOIN sqlite_master m ON m.name = s.name "
                f"WHERE m.tbl_name IN ('{names[0]}', '{names[1]}') GROUP BY s.name ORDER BY m.type DESC, s.name"
            )
            out += [(f"{r[0]} {r[1]}", int(r[2])) for r in rows]
        else:
            page = int(conn.exec_driver_sql("SELECT @@innodb_page_size").scalar_one())
            for t in names:
                conn.exec_driver_sql(f"ANALYZE TABLE {t}").fetchall()
                data, index = conn.execute(
                    sa.text(
                        "SELECT DATA_LENGTH, INDEX_LENGTH FROM information_schema.TABLES "
                        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
                    ),
                    {"t": t},
                ).one()
                out.append((f"table {t} (clustered on the PK)", int(data)))
                rows = conn.execute(
                    sa.text(
                        "SELECT index_name, stat_value FROM mysql.innodb_index_stats WHERE database_name = DATABASE() "
                        "AND table_name = :t AND stat_name = 'size' AND index_name <> 'PRIMARY' ORDER BY index_name"
                    ),
                    {"t": t},
                )
                out += [(f"index {r[0]}", int(r[1]) * page) for r in rows]
                out.append((f"indexes of {t} (INDEX_LENGTH)", int(index)))
    return [(name.replace(prefix, "<p>"), size) for name, size in out]


# ---------------------------------------------------------------------------- timing helpers


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def p99_ms(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


# ---------------------------------------------------------------------------- part 1: upgrade


def part_upgrade(db: str, url: str, prefix: str, n: int, rows: list[Row], writer: bool) -> None:
    engine = sa.create_engine(url)
    try:
        ms.migrate(engine, "ms_0001_initial", table_prefix=prefix)
        elapsed, _ = timed(lambda: load_v1(engine, prefix, n))
        log(f"  [{db}] loaded {n} facts + {n} log entries (ms_0001 layout) in {elapsed:.1f}s")
        analyze(engine, db, [f"{prefix}_facts", f"{prefix}_tx"])
        rows.append((db, "bulk load ms_0001 (facts+log)", f"{2 * n / elapsed:,.0f} rows/s", f"{elapsed:.1f} s"))

        w = V1Writer(url, prefix) if writer else None
        if w is not None:
            w.start()
            w.ready.wait()
            time.sleep(1.0)  # the writer's steady state before the upgrade
        t0 = time.perf_counter()
        head = ms.migrate(engine, table_prefix=prefix)
        t1 = time.perf_counter()
        log(f"  [{db}] upgraded to {head} in {t1 - t0:.1f}s (load {load_average()})")
        rows.append((db, f"upgrade ms_0001 -> ms_0002 @{n:,}", f"{t1 - t0:.1f} s", f"load avg {load_average()}"))
        if w is not None:
            w.stop_at = time.perf_counter() + 1.0
            w.join()
            before = w.during(t0 - 1.0, t0)
            inside = w.during(t0, t1)
            lat = [m[1] for m in inside]
            worst = max(inside, key=lambda m: m[1]) if inside else (t0, 0.0)
            slow = sum(1 for x in lat if x > 0.1)
            base = f"before: {len(before)}/s, median {median_ms([m[1] for m in before]):.1f} ms" if before else ""
            rows.append((
                db, "writer commits during upgrade",
                f"{len(inside)} ({len(inside) / (t1 - t0):.0f}/s)",
                f"{base}; errors {len(w.errors)}",
            ))  # fmt: skip
            if lat:
                rows.append((
                    db, "writer latency during upgrade",
                    f"max {worst[1] * 1000:.0f} ms",
                    f"median {median_ms(lat):.1f} ms, p99 {p99_ms(lat):.1f} ms, >100 ms: {slow}, "
                    f"max at +{worst[0] - t0:.1f}s of {t1 - t0:.1f}s",
                ))  # fmt: skip
            if w.errors:
                log(f"  [{db}] writer errors: {w.errors[:3]}")
        # The new columns have no statistics until ANALYZE (ADD COLUMN modifies no rows, so autovacuum's
        # autoanalyze is not triggered): PostgreSQL's plans for namespace predicates are guesses until then.
        elapsed, _ = timed(lambda: analyze(engine, db, [f"{prefix}_facts", f"{prefix}_tx"]))
        rows.append((db, "ANALYZE after the upgrade", f"{elapsed:.1f} s", "facts and log"))
        for name, size in sizes(engine, db, prefix):
            rows.append((db, f"size {name}", f"{size / 2**20:.1f} MiB", "after the upgrade"))

        # Sweep: 10 % of the (default-namespace) facts expire; storage.sweep deletes them in batches.
        storage = ms.SQLStorage(engine, table_prefix=prefix)
        try:
            expiring = min(SWEEP_TARGET, n // 10)
            with engine.begin() as conn:
                conn.execute(
                    sa.text(f"UPDATE {prefix}_facts SET expires_at = :past WHERE id < :upto"),
                    {"past": PAST.replace(tzinfo=None) if db != "postgresql" else PAST, "upto": f"b{expiring:09d}"},
                )
            analyze(engine, db, [f"{prefix}_facts"])
            ms_store = ms.MemoryStore(storage)
            visible = ms_store.get(f"b{0:09d}")
            elapsed, swept = timed(lambda: storage.sweep(batch_size=1000))
            rows.append((
                db, f"sweep {swept:,} expired of {n:,} (1 ns)", f"{swept / elapsed:,.0f} facts/s",
                f"{elapsed:.1f} s, batches of 1000; expired invisible before sweep: {visible is None}",
            ))  # fmt: skip
            log(f"  [{db}] swept {swept} in {elapsed:.1f}s")

            with engine.connect() as conn:
                entries = conn.exec_driver_sql(f"SELECT COUNT(*) FROM {prefix}_tx").scalar_one()
            # Horizon: the first 2 x `expiring` loaded entries (the swept facts' COMMITs, which go, and as many
            # live facts' COMMITs, which stay), so the work is bounded; the sweep's EXPIRE entries are newer.
            horizon = TS + timedelta(milliseconds=2 * expiring)
            elapsed, removed = timed(lambda: storage.compact_log(horizon, batch_size=1000))
            rows.append((
                db, f"compact_log {removed:,} removed of {entries:,}", f"{removed / elapsed:,.0f} removed/s",
                f"{elapsed:.1f} s; {2 * expiring:,} entries before the horizon",
            ))  # fmt: skip
            log(f"  [{db}] compacted {removed} of {entries} in {elapsed:.1f}s")
        finally:
            storage.close()
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------- part 2: namespaces


def server_load(engine: sa.Engine, prefix: str, total: int, per_ns: int) -> None:
    """PostgreSQL only: the same rows as the client-side load, generated by the server (generate_series), one
    INSERT ... SELECT per 1M rows: for 10M-fact data sets, where a client-side load takes too long here."""
    sql = sa.text(
        f"INSERT INTO {prefix}_facts (namespace, id, type, session_id, source, ts, payload, version, immutable, "
        "singleton, expires_at) "
        "SELECT 'tenant-' || lpad(k::text, 5, '0'), 'f' || lpad(j::text, 7, '0'), 'note', NULL, 'bench', :ts, "
        "jsonb_build_object('group', j / CAST(:grp AS bigint), 'score', j % 997, 'name', 'user-' || j, "
        "'tags', jsonb_build_array('a', 'b'), 'active', j % 2 = 0), 1, false, NULL, "
        "CASE WHEN j % 10 = 0 THEN CAST(:past AS timestamptz) END "
        "FROM (SELECT i / CAST(:per AS bigint) AS k, i % CAST(:per AS bigint) AS j "
        "FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i) AS g"
    )
    for lo in range(0, total, 1_000_000):
        hi = min(total, lo + 1_000_000)
        with engine.begin() as conn:
            conn.execute(sql, {"per": per_ns, "grp": GROUP, "ts": TS, "past": PAST, "lo": lo, "hi": hi - 1})
        log(f"  [postgresql] {hi:,} facts generated")


def part_namespaces(
    db: str, url: str, prefix: str, n: int, namespaces: int, rows: list[Row], samples: int, server: bool = False
) -> None:
    per_ns = n // namespaces
    engine = sa.create_engine(url)
    storage = ms.SQLStorage(engine, table_prefix=prefix, indexed_paths=[IndexedPath("payload.group", "number")])
    try:
        ms.MemoryStore(storage).count()  # migrates to head and creates the path index

        def chunk(lo: int, hi: int) -> Callable[[Any], None]:
            def work(repo: Any) -> None:
                batch = []
                for i in range(lo, hi):
                    k, j = divmod(i, per_ns)
                    batch.append({
                        "namespace": f"tenant-{k:05d}", "id": f"f{j:07d}", "type": "note", "session_id": None,
                        "source": "bench", "ts": TS, "payload": payload(j), "version": 1, "immutable": False,
                        "singleton": None, "singleton_slot": singleton_slot(f"f{j:07d}", None),
                        "expires_at": PAST if j % 10 == 0 else None,
                    })  # fmt: skip
                repo.conn.execute(sa.insert(repo.facts), batch)

            return work

        total = per_ns * namespaces
        t0 = time.perf_counter()
        if server and db == "postgresql":
            server_load(engine, prefix, total, per_ns)
        else:
            for lo in range(0, total, CHUNK):
                storage.transaction(chunk(lo, min(total, lo + CHUNK)), name="bulk")
                if lo and lo % 1_000_000 == 0:
                    log(f"  [{db}] {lo:,} facts loaded ({time.perf_counter() - t0:.0f}s)")
        elapsed = time.perf_counter() - t0
        analyze(engine, db, [f"{prefix}_facts"])
        log(f"  [{db}] loaded {total:,} facts in {namespaces} namespaces in {elapsed:.1f}s")
        how = "server-side generate_series" if server and db == "postgresql" else "multi-row INSERTs"
        label = f"bulk load {total:,} facts, {namespaces} ns"
        rows.append((db, label, f"{total / elapsed:,.0f} rows/s", f"{elapsed:.1f} s, {how}"))

        rng = random.Random(11)
        handles: dict[str, tuple[Any, Any]] = {}  # namespace -> (storage, store)

        def handle(k: int) -> tuple[Any, Any]:
            name = f"tenant-{k:05d}"
            if name not in handles:
                sibling = storage.for_namespace(name)
                handles[name] = (sibling, ms.MemoryStore(sibling))
            return handles[name]

        def store_for(k: int) -> Any:
            return handle(k)[1]

        picks = [rng.randrange(namespaces) for _ in range(samples)]
        for k in set(picks):
            store_for(k).count()  # prepared before timing
        gets = []
        for k in picks:
            j = rng.randrange(per_ns)
            j += 1 if j % 10 == 0 and j + 1 < per_ns else 0  # a live fact
            start = time.perf_counter()
            fact = store_for(k).get(f"f{j:07d}")
            gets.append(time.perf_counter() - start)
            assert fact is not None and fact["payload"]["group"] == j // GROUP, (k, j)
        rows.append(
            (
                db,
                f"get in 1 of {namespaces} ns",
                f"{median_ms(gets):.2f} ms",
                f"median of {len(gets)}, p99 {p99_ms(gets):.2f} ms",
            )
        )

        groups = max(1, per_ns // GROUP)
        queries = []
        for k in picks[: max(20, samples // 5)]:
            g = rng.randrange(groups)
            start = time.perf_counter()
            found = store_for(k).query("note", {"payload.group": g})
            queries.append(time.perf_counter() - start)
            expected = sum(1 for j in range(g * GROUP, min(per_ns, (g + 1) * GROUP)) if j % 10)
            assert len(found) == expected, (k, g, len(found), expected)
        rows.append((
            db, f"query payload.group in 1 of {namespaces} ns", f"{median_ms(queries):.2f} ms",
            f"median of {len(queries)}, p99 {p99_ms(queries):.2f} ms; {GROUP - GROUP // 10} rows; "
            f"same value in all {namespaces} ns ({(GROUP * namespaces):,} rows table-wide)",
        ))  # fmt: skip

        # Sweep namespace by namespace until ~100k expired facts are gone.
        expired_per_ns = (per_ns + 9) // 10
        todo = max(1, min(namespaces, SWEEP_TARGET // max(1, expired_per_ns)))
        t0 = time.perf_counter()
        swept = 0
        for k in range(todo):
            swept += handle(k)[0].sweep(batch_size=1000)
        elapsed = time.perf_counter() - t0
        rows.append((
            db, f"sweep {swept:,} expired of {total:,} ({todo} ns)", f"{swept / elapsed:,.0f} facts/s",
            f"{elapsed:.1f} s, {expired_per_ns} per namespace, one sweep() per namespace",
        ))  # fmt: skip
        log(f"  [{db}] swept {swept} in {todo} namespaces in {elapsed:.1f}s")
        for name, size in sizes(engine, db, prefix):
            if "_facts" in name:
                rows.append((db, f"size {name}", f"{size / 2**20:.1f} MiB", f"{total:,} facts, namespaces part"))
    finally:
        storage.close()
        engine.dispose()


# ---------------------------------------------------------------------------- main


def drop(url: str, prefix: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for table in sa.inspect(conn).get_table_names():
                if table.startswith(prefix):
                    conn.exec_driver_sql(f"DROP TABLE {conn.dialect.identifier_preparer.quote(table)}")
    finally:
        engine.dispose()


def report(rows: list[Row]) -> str:
    width = max(len(r[1]) for r in rows) if rows else 10
    lines = [f"{'database':<11} {'metric':<{width}} {'value':>18}  note", "-" * (width + 60)]
    last = None
    for db, metric, value, note in rows:
        if last is not None and db != last:
            lines.append("")
        last = db
        lines.append(f"{db:<11} {metric:<{width}} {value:>18}  {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=1_000_000, help="facts per data set (default 1M)")
    parser.add_argument("--quick", action="store_true", help="100k facts")
    parser.add_argument("--db", default="sqlite,postgresql,mysql", help="comma-separated: sqlite,postgresql,mysql")
    parser.add_argument("--parts", default="upgrade,namespaces", help="comma-separated: upgrade,namespaces")
    parser.add_argument("--namespaces", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=300, help="timed gets (queries: a fifth of them)")
    parser.add_argument("--no-writer", action="store_true", help="no concurrent writer during the upgrade")
    parser.add_argument(
        "--server-load", action="store_true", help="PostgreSQL: generate the namespaces part's rows in the server"
    )
    parser.add_argument("--keep", action="store_true", help="keep the tables (and SQLite files)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    n = 100_000 if args.quick else args.facts
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    dbs = [{"mariadb": "mysql"}.get(d.strip(), d.strip()) for d in args.db.split(",") if d.strip()]
    workdir = tempfile.mkdtemp(prefix="memstate-tenancy-")
    rows: list[Row] = []
    log(f"load average at start: {load_average()}; facts {n:,}; namespaces {args.namespaces}")
    try:
        for db in dbs:
            tag = uuid.uuid4().hex[:6]
            for part in ("upgrade", "namespaces"):
                if part not in parts:
                    continue
                prefix = f"bt{part[0]}{tag}"
                url = {"sqlite": f"sqlite:///{workdir}/{prefix}.db", "postgresql": PG_URL}.get(db, MY_URL)
                log(f"== {db} / {part} (prefix {prefix})")
                try:
                    if part == "upgrade":
                        part_upgrade(db, url, prefix, n, rows, writer=db != "sqlite" and not args.no_writer)
                    else:
                        part_namespaces(db, url, prefix, n, args.namespaces, rows, args.samples, args.server_load)
                finally:
                    if db != "sqlite" and not args.keep:
                        drop(url, prefix)
            print(report(rows), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    log(f"\nload average at end: {load_average()}")
    print(report(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"facts": n, "namespaces": args.namespaces, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
