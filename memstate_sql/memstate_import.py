"""Copying a memstate 0.5.1 database into a memstate_sql store.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, Engine, column, func, inspect, select, table
from sqlalchemy.sql.expression import TableClause

from memstate_sql.dialects import support_for
from memstate_sql.errors import ConflictError, ValidationFailed
from memstate_sql.paging import keyset_pages
from memstate_sql.records import FactState, TxRecord
from memstate_sql.repository import Repository
from memstate_sql.storage import SQLStorage
from memstate_sql.transfer import ProgressCallback, tx_from_line
from memstate_sql.validation import check_batch, state_from_doc

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

    @property
    def table_names(self) -> set[str]:
        return {self.facts.name, self.log.name}


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


def detect(engine: Engine, prefix: str = "memstate") -> Layout:
    """The layout of the memstate database behind `engine` (`ValidationFailed` when there is none)."""
    insp = inspect(engine)
    names = set(insp.get_table_names())
    pg = postgres_layout(prefix)
    if pg.table_names <= names and "doc" in {c["name"] for c in insp.get_columns(pg.facts.name)}:
        return pg
    if {"facts", "tx_log"} <= names:
        return sqlite_layout()
    raise ValidationFailed(
        f"no memstate tables found in the source (looked for facts/tx_log and {pg.facts.name}/{pg.log.name}; "
        "pass --from-prefix for another memstate table prefix)"
    )


def _document(raw: Any, where: str) -> dict[str, Any]:
    value = json.loads(raw) if isinstance(raw, str | bytes) else raw
    if not isinstance(value, dict):
        raise ValidationFailed(f"{where}: the stored document is not a JSON object")
    return value


def _read_keyset(
    conn: Connection, key: Any, doc: Any, batch: int, describe: Callable[[Any], str]
) -> Iterator[list[dict[str, Any]]]:
    """The documents of a memstate table in `key` order, `batch` rows per read (keyset pagination)."""

    def fetch(after: Any) -> Sequence[Any]:
        stmt = select(key, doc).order_by(key).limit(batch)
        return conn.execute(stmt if after is None else stmt.where(key > after)).all()

    for rows in keyset_pages(fetch, key=lambda row: row[0]):
        yield [_document(row[1], describe(row[0])) for row in rows]


def read_facts(conn: Connection, layout: Layout, batch: int) -> Iterator[list[dict[str, Any]]]:
    key, doc = layout.facts.c.id, layout.facts.c[layout.fact_doc]
    return _read_keyset(conn, key, doc, batch, lambda k: f"memstate fact {k}")


def read_log(conn: Connection, layout: Layout, batch: int) -> Iterator[list[dict[str, Any]]]:
    key, doc = layout.log.c[layout.log_order], layout.log.c[layout.log_doc]
    return _read_keyset(conn, key, doc, batch, lambda k: f"memstate log entry {layout.log_order}={k}")


def fact_state(doc: dict[str, Any]) -> FactState:
    try:
        return state_from_doc(doc, {}, MAX_PAYLOAD_BYTES)
    except ValidationFailed as error:
        raise ValidationFailed(f"memstate fact {doc.get('id')!r}: {error}") from None


def tx_record(entry: dict[str, Any]) -> TxRecord:
    """A memstate log entry as a log row: validated exactly like a line of our own export (memstate's
    entries have no ``discarded`` list: `memstate_sql.logentry` reads their session discards by replay)."""
    return tx_from_line({**entry, "discarded": None}, f"memstate log entry {entry.get('uuid')!r}")


@dataclass
class ImportCounts:
    """What `import_memstate` did."""

    facts_added: int = 0
    facts_updated: int = 0
    facts_unchanged: int = 0
    log_added: int = 0
    log_skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _copy(repo: Repository, source: Engine, layout: Layout, batch: int, report: ProgressCallback) -> ImportCounts:
    counts = ImportCounts()
    with source.connect() as conn, conn.begin():
        # One snapshot of the source for every page: a memstate entry whose transaction took a lower
        # seq but committed during the copy is either in it or not, never skipped between two pages.
        support_for(conn.dialect).begin_snapshot(conn)
        total = int(conn.execute(select(func.count()).select_from(layout.facts)).scalar_one()) + int(
            conn.execute(select(func.count()).select_from(layout.log)).scalar_one()
        )
        done = 0
        report(done, total)
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
            done += len(docs)
            report(done, total)
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
            done += len(entries)
            report(done, total)
    return counts


def import_memstate(
    storage: SQLStorage,
    source: Engine,
    layout: Layout | None = None,
    *,
    source_prefix: str = "memstate",
    batch_size: int = 1000,
    progress: ProgressCallback | None = None,
) -> ImportCounts:
    """Copy the facts and the log of the memstate database behind `source` into `storage`, in one
    transaction on `storage` (`layout`: as found by `detect(source, source_prefix)` when None)."""
    check_batch(batch_size)
    found = layout if layout is not None else detect(source, source_prefix)
    report: ProgressCallback = progress or (lambda done, total: None)
    return storage.transaction(lambda repo: _copy(repo, source, found, batch_size, report), name="import-memstate")


__all__ = ["ImportCounts", "Layout", "detect", "import_memstate"]
