"""`import-memstate`: copy a memstate 0.5.1 database into memstate_sql.

memstate 0.5.1 keeps whole documents in JSON columns, in one of two layouts:

* its SQLite backend: ``facts(id, type, data, created_at)`` (``data`` is the
  fact document as JSON text) and ``tx_log(tx_id, uuid, timestamp, data)``
  (``data`` is the log entry; ``tx_id`` gives the order);
* its PostgreSQL backend: ``<prefix>_facts(id, doc JSONB)`` and
  ``<prefix>_log(seq, session_id, entry JSONB)`` (``seq`` gives the order).

Facts keep their ids and documents; log entries keep their uuids, timestamps
and before/after images and are appended in the source's order (their
``seq`` is assigned by the target). The copy is one transaction on the target.
Re-running it does not duplicate anything: log entries whose uuid is already
in the target are skipped, facts already present are updated to the source's
document when it differs. Facts deleted from the source after an import are
not deleted from the target. memstate has no per-type constraints in its
database: imported facts carry no singleton key or immutable flag.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, column, create_engine, func, inspect, select, table
from sqlalchemy.sql.expression import TableClause

from memstate_sql import jsondoc
from memstate_sql.cli.context import Target, display, driver_problem, parse_url, probe, sqlite_file
from memstate_sql.cli.errors import USAGE, CliError
from memstate_sql.cli.render import Progress, to_json
from memstate_sql.cli.transfer import parse_ts
from memstate_sql.errors import ConflictError, ValidationFailed
from memstate_sql.facts import Operation
from memstate_sql.records import FactState, TxRecord
from memstate_sql.repository import Repository
from memstate_sql.validation import check_key, state_from_doc

#: memstate's own limit is none; this is ours for one imported payload.
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Layout:
    """Where a memstate database keeps its documents."""

    name: str
    facts: TableClause
    fact_doc: str
    log: TableClause
    log_order: str
    log_doc: str


def sqlite_layout() -> Layout:
    return Layout(
        name="memstate SQLite backend",
        facts=table("facts", column("id"), column("data")),
        fact_doc="data",
        log=table("tx_log", column("tx_id"), column("data")),
        log_order="tx_id",
        log_doc="data",
    )


def postgres_layout(prefix: str) -> Layout:
    return Layout(
        name=f"memstate PostgreSQL backend (prefix {prefix})",
        facts=table(f"{prefix}_facts", column("id"), column("doc")),
        fact_doc="doc",
        log=table(f"{prefix}_log", column("seq"), column("entry")),
        log_order="seq",
        log_doc="entry",
    )


def detect(engine: Engine, prefix: str) -> Layout:
    names = set(inspect(engine).get_table_names())
    pg = postgres_layout(prefix)
    if {pg.facts.name, pg.log.name} <= names:
        columns = {c["name"] for c in inspect(engine).get_columns(pg.facts.name)}
        if "doc" in columns:
            return pg
    if {"facts", "tx_log"} <= names:
        return sqlite_layout()
    raise CliError(
        f"no memstate tables found in the source (looked for facts/tx_log and {pg.facts.name}/{pg.log.name}; "
        "pass --from-prefix for another memstate table prefix)",
        USAGE,
    )


def _document(raw: Any, where: str) -> dict[str, Any]:
    value = json.loads(raw) if isinstance(raw, str | bytes) else raw
    if not isinstance(value, dict):
        raise ValidationFailed(f"{where}: the stored document is not a JSON object")
    return value


def read_facts(conn: Connection, layout: Layout, batch: int) -> Iterator[list[dict[str, Any]]]:
    key, doc = layout.facts.c.id, layout.facts.c[layout.fact_doc]
    return _read_keyset(conn, key, doc, batch, lambda k: f"memstate fact {k}")


def read_log(conn: Connection, layout: Layout, batch: int) -> Iterator[list[dict[str, Any]]]:
    key, doc = layout.log.c[layout.log_order], layout.log.c[layout.log_doc]
    return _read_keyset(conn, key, doc, batch, lambda k: f"memstate log entry {layout.log_order}={k}")


def _read_keyset(
    conn: Connection, key: Any, doc: Any, batch: int, describe: Callable[[Any], str]
) -> Iterator[list[dict[str, Any]]]:
    """The documents of a memstate table in `key` order, `batch` rows per read (keyset pagination)."""
    after: Any = None
    while True:
        stmt = select(key, doc).order_by(key).limit(batch)
        if after is not None:
            stmt = stmt.where(key > after)
        rows = conn.execute(stmt).all()
        if not rows:
            return
        yield [_document(row[1], describe(row[0])) for row in rows]
        after = rows[-1][0]


def fact_state(doc: dict[str, Any]) -> FactState:
    try:
        return state_from_doc(doc, {}, MAX_PAYLOAD_BYTES)
    except ValidationFailed as error:
        raise ValidationFailed(f"memstate fact {doc.get('id')!r}: {error}") from None


def tx_record(entry: dict[str, Any]) -> TxRecord:
    where = f"memstate log entry {entry.get('uuid')!r}"
    try:
        op = Operation(entry.get("op")).value
    except ValueError:
        raise ValidationFailed(f"{where}: unknown op {entry.get('op')!r}") from None
    images = {}
    for name in ("fact_before", "fact_after"):
        value = entry.get(name)
        if value is not None and not isinstance(value, dict):
            raise ValidationFailed(f"{where}: {name} is not an object")
        images[name] = None if value is None else jsondoc.check_value(value, f"{where}: {name}")
    reason = entry.get("reason")
    uuid = check_key(f"{where}: uuid", entry.get("uuid"), required=True)
    assert uuid is not None
    return TxRecord(
        seq=0,
        uuid=uuid,
        op=op,
        session_id=check_key(f"{where}: session_id", entry.get("session_id"), required=False),
        fact_id=check_key(f"{where}: fact_id", entry.get("fact_id"), required=False),
        actor=check_key(f"{where}: actor", entry.get("actor"), required=False),
        reason=None if reason is None else str(reason),
        ts=parse_ts(entry.get("ts"), where),
        fact_before=images["fact_before"],
        fact_after=images["fact_after"],
        discarded=None,
        reverted_by=None,
    )


@dataclass
class Counts:
    facts_added: int = 0
    facts_updated: int = 0
    facts_unchanged: int = 0
    log_added: int = 0
    log_skipped: int = 0


def copy(repo: Repository, source: Engine, layout: Layout, batch: int, progress: Progress) -> Counts:
    """Copy the source's facts and log into `repo`'s transaction."""
    counts = Counts()
    with source.connect() as conn:
        progress.total = int(conn.execute(select(func.count()).select_from(layout.facts)).scalar_one()) + int(
            conn.execute(select(func.count()).select_from(layout.log)).scalar_one()
        )
        for docs in read_facts(conn, layout, batch):
            states = [fact_state(d) for d in docs]
            present = repo.get_many([s.id for s in states])
            fresh = [s for s in states if s.id not in present]
            repo.insert_facts(fresh)
            counts.facts_added += len(fresh)
            for state in states:
                current = present.get(state.id)
                if current is None:
                    continue
                if current.doc() == state.doc():
                    counts.facts_unchanged += 1
                    continue
                new = state.evolve(version=current.version + 1, immutable=current.immutable)
                if not repo.update(new, expected_version=current.version, allow_immutable=False):
                    raise ConflictError(f"fact {state.id} is immutable in the target; it was not overwritten")
                counts.facts_updated += 1
            progress.advance(len(docs))
        seen: set[str] = set()
        for entries in read_log(conn, layout, batch):
            records = [tx_record(e) for e in entries]
            present_uuids = repo.existing_tx_uuids([r.uuid for r in records]) | seen
            fresh_log = []
            for record in records:
                if record.uuid in present_uuids:
                    counts.log_skipped += 1
                else:
                    present_uuids.add(record.uuid)
                    fresh_log.append(record)
            seen.update(r.uuid for r in fresh_log)
            repo.insert_log(fresh_log)
            counts.log_added += len(fresh_log)
            progress.advance(len(entries))
    return counts


def cmd_import_memstate(args: Any) -> int:
    if args.batch_size < 1:
        raise CliError("--batch-size must be >= 1", USAGE)
    source_url = parse_url(args.source)
    target = Target.from_args(args)
    source_file = sqlite_file(source_url)
    if source_file is not None and not source_file.exists():
        raise CliError(f"no memstate database file at {source_file}", USAGE)
    try:
        source = create_engine(source_url)
    except ImportError as error:
        raise driver_problem(error, source_url) from None
    try:
        probe(source, source_url)
        layout = detect(source, args.from_prefix)
        if display(source_url) == target.shown and target.schema is None:
            ours = {f"{target.prefix}_facts", f"{target.prefix}_tx"}
            if {layout.facts.name, layout.log.name} & ours:
                raise CliError(
                    f"the source's tables and the target's share names ({', '.join(sorted(ours))}); "
                    "pass another --prefix",
                    USAGE,
                )
        with target.open(create=True, max_attempts=3) as storage:
            progress = Progress("importing", None, enabled=False if args.no_progress else None)

            def work(repo: Repository) -> Counts:
                progress.done = 0
                return copy(repo, source, layout, args.batch_size, progress)

            counts = storage.transaction(work, name="import-memstate")
            progress.finish()
    finally:
        source.dispose()
    data = {"source": display(source_url), "layout": layout.name, **counts.__dict__}
    if args.json:
        print(to_json(data))
    else:
        print(f"imported from {data['source']} ({layout.name}) into {target.shown}:")
        print(
            f"  facts: {counts.facts_added} added, {counts.facts_updated} updated, {counts.facts_unchanged} unchanged"
        )
        print(f"  log entries: {counts.log_added} added, {counts.log_skipped} already present")
    return 0
