"""A store as JSON Lines: the export format, writing it from a storage and loading it into one.

The file is a header line, one line per fact (``"kind": "fact"``, every
column of the row), one line per log entry (``"kind": "tx"``, in seq order,
rolled-back entries included, each with its ``session_seq``: its position in its
session's log, null for an entry without a session) and an ``end`` line with the counts::

    {"format": "memstate-sql-export", "format_version": 2, "facts": 2, "log": 3, ...}
    {"kind": "fact", "id": "...", "type": "user", "payload": {...}, "version": 2, ...}
    {"kind": "tx", "seq": 1, "uuid": "...", "op": "COMMIT", "fact_before": null, ...}
    {"kind": "end", "facts": 2, "log": 3}

`write_export` reads one snapshot of the database, in batches. `check_export`
validates a whole file without touching any database (so that a caller can
refuse a bad file before it creates or migrates the target); `load_export` is
one database transaction: a malformed or truncated file, or an id or log uuid
that already exists in the target, leaves the target untouched. Log entries
get new ``seq`` values from the target database, in the exported order, and keep
their session order: each session's entries take the positions after the ones the
session already has in the target, in their exported ``session_seq`` order (which
is not always ``seq`` order: docs/log-order.md). A row saved with a
document of its own (`SQLStorage.save`, `append_tx`: docs/contract.md) carries it as ``document``
beside its canonical columns (format version 2; version 1 files, which have none, are still read).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any

from memstate_sql import jsondoc
from memstate_sql.errors import ConflictError, ValidationFailed
from memstate_sql.facts import Operation
from memstate_sql.paging import keyset_pages
from memstate_sql.records import FactState, TxRecord
from memstate_sql.repository import Repository
from memstate_sql.storage import SQLStorage
from memstate_sql.timeutil import format_iso
from memstate_sql.validation import check_batch, check_key

FORMAT = "memstate-sql-export"
#: 2: lines may carry ``document`` (the caller's own document or record, ms_0003); 1 is still read.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

#: Called with (rows done, rows in all) while rows are read or written; `done` restarts at 0
#: when a transaction is retried.
ProgressCallback = Callable[[int, int], None]


def _quiet(done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class ExportSummary:
    """How many facts and log entries a file holds (or an export wrote, or an import loaded)."""

    facts: int
    log: int


def parse_ts(value: Any, where: str) -> datetime:
    """An aware UTC datetime from an ISO 8601 string (``Z`` or an offset; naive = UTC)."""
    if not isinstance(value, str):
        raise ValidationFailed(f"{where}: ts must be an ISO 8601 string")
    try:
        ts = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise ValidationFailed(f"{where}: {value!r} is not an ISO 8601 timestamp") from None
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def dumps_line(line: dict[str, Any]) -> str:
    """One line of the file (compact JSON, UTF-8 characters kept)."""
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------------------- rows <-> lines


def fact_line(fact: FactState) -> dict[str, Any]:
    """Every column of the row, canonically; ``document`` only for a fact saved with a document of its own."""
    line = {
        "kind": "fact",
        **fact.envelope(),
        "payload": fact.payload,
        "version": fact.version,
        "immutable": fact.immutable,
        "singleton": fact.singleton,
    }
    if fact.document is not None:
        line["document"] = fact.document
    return line


def tx_line(entry: TxRecord) -> dict[str, Any]:
    """Every column of the row, canonically; ``document`` only for a record appended in a shape of its own."""
    line = {"kind": "tx", **entry.canonical(), "discarded": entry.discarded, "reverted_by": entry.reverted_by}
    line["session_seq"] = entry.session_seq
    if entry.document is not None:
        line["document"] = entry.document
    return line


def _document(line: dict[str, Any], where: str) -> dict[str, Any] | None:
    value = line.get("document")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationFailed(f"{where}: document must be an object or null")
    checked: dict[str, Any] = jsondoc.check_value(value, f"{where}: document")
    return checked


def fact_from_line(line: dict[str, Any], where: str) -> FactState:
    fid = check_key(f"{where}: id", line.get("id"), required=True)
    ftype = check_key(f"{where}: type", line.get("type"), required=True)
    try:
        payload, _ = jsondoc.check_payload(line.get("payload"), max_bytes=2**31)
    except ValidationFailed as error:
        raise ValidationFailed(f"{where}: {error}") from None
    version = line.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValidationFailed(f"{where}: version must be a positive integer")
    immutable = line.get("immutable", False)
    if not isinstance(immutable, bool):
        raise ValidationFailed(f"{where}: immutable must be true or false")
    assert fid is not None and ftype is not None
    expires = line.get("expires_at")
    return FactState(
        id=fid,
        type=ftype,
        payload=payload,
        session_id=check_key(f"{where}: session_id", line.get("session_id"), required=False),
        source=check_key(f"{where}: source", line.get("source"), required=False),
        ts=parse_ts(line.get("ts"), where),
        version=version,
        immutable=immutable,
        singleton=check_key(f"{where}: singleton", line.get("singleton"), required=False),
        expires_at=None if expires is None else parse_ts(expires, f"{where}: expires_at"),
        document=_document(line, where),
    )


def _image(value: Any, where: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationFailed(f"{where} must be an object or null")
    return jsondoc.check_value(value, where)  # its errors name `where`


def tx_from_line(line: dict[str, Any], where: str) -> TxRecord:
    uuid = check_key(f"{where}: uuid", line.get("uuid"), required=True)
    op = line.get("op")
    try:
        op = "" if op == "" and "document" in line else Operation(op).value  # '': a record without op
    except ValueError:
        raise ValidationFailed(f"{where}: unknown op {op!r}") from None
    discarded = line.get("discarded")
    if discarded is not None and (not isinstance(discarded, list) or not all(isinstance(d, dict) for d in discarded)):
        raise ValidationFailed(f"{where}: discarded must be a list of fact documents or null")
    reason = line.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ValidationFailed(f"{where}: reason must be a string or null")
    position = line.get("session_seq")
    if position is not None and (isinstance(position, bool) or not isinstance(position, int) or position < 1):
        raise ValidationFailed(f"{where}: session_seq must be a positive integer or null")
    assert uuid is not None
    return TxRecord(
        seq=0,
        uuid=uuid,
        op=op,
        session_id=check_key(f"{where}: session_id", line.get("session_id"), required=False),
        fact_id=check_key(f"{where}: fact_id", line.get("fact_id"), required=False),
        actor=check_key(f"{where}: actor", line.get("actor"), required=False),
        reason=reason,
        ts=parse_ts(line.get("ts"), where),
        fact_before=_image(line.get("fact_before"), f"{where}: fact_before"),
        fact_after=_image(line.get("fact_after"), f"{where}: fact_after"),
        discarded=None if discarded is None else jsondoc.check_value(discarded, f"{where}: discarded"),
        reverted_by=check_key(f"{where}: reverted_by", line.get("reverted_by"), required=False),
        document=_document(line, where),
        session_seq=position,
    )


# ---------------------------------------------------------------------------- export


def iter_export(
    storage: SQLStorage, batch_size: int = 1000, progress: ProgressCallback | None = None
) -> Iterator[dict[str, Any]]:
    """Every line of an export of `storage`, read in batches of `batch_size` rows from one snapshot
    (a repeatable-read transaction; on SQLite one read transaction)."""
    from memstate_sql._version import __version__

    check_batch(batch_size)
    report = progress or _quiet
    with storage.engine.connect() as conn, conn.begin():
        storage.dialect.begin_snapshot(conn)
        repo = Repository(conn, storage.models, storage.dialect, storage.namespace)
        facts = repo.count_facts()
        log_total, _ = repo.log_counts()
        total = facts + log_total
        yield {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "memstate_sql": __version__,
            "dialect": conn.dialect.name,
            "table_prefix": storage.models.prefix,
            "exported_at": format_iso(datetime.now(timezone.utc)),
            "facts": facts,
            "log": log_total,
        }
        done = written_facts = written_log = 0
        report(done, total)
        for page in keyset_pages(lambda after: repo.facts_page(after, batch_size), key=lambda f: f.id):
            yield from (fact_line(fact) for fact in page)
            written_facts += len(page)
            done += len(page)
            report(done, total)
        for entries in keyset_pages(lambda after: repo.log_page(after, batch_size), key=lambda e: e.seq):
            yield from (tx_line(entry) for entry in entries)
            written_log += len(entries)
            done += len(entries)
            report(done, total)
    yield {"kind": "end", "facts": written_facts, "log": written_log}


def write_export(
    storage: SQLStorage, out: IO[str], batch_size: int = 1000, progress: ProgressCallback | None = None
) -> ExportSummary:
    """Write an export of `storage` to `out`, one line per row; returns the counts written."""
    end: dict[str, Any] = {}
    for line in iter_export(storage, batch_size, progress):
        out.write(dumps_line(line) + "\n")
        end = line
    return ExportSummary(facts=int(end["facts"]), log=int(end["log"]))


# ---------------------------------------------------------------------------- reading a file


def _decode(raw: str, number: int) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValidationFailed(f"line {number}: not JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValidationFailed(f"line {number}: expected a JSON object")
    return value


@dataclass
class _Reading:
    """The state of one pass over a file."""

    header: dict[str, Any]
    facts: int = 0
    log: int = 0

    @property
    def announced(self) -> int:
        total = 0
        for key in ("facts", "log"):
            value = self.header.get(key, 0)
            total += value if isinstance(value, int) and not isinstance(value, bool) else 0
        return total


def _read(stream: IO[str], reading: list[_Reading]) -> Iterator[FactState | TxRecord]:
    """The rows of an export, validated line by line; raises `ValidationFailed` (with the line number)
    on any malformed line, and at the end on a missing ``end`` line or counts that disagree."""
    first = stream.readline()
    if not first.strip():
        raise ValidationFailed("the file is empty")
    header = _decode(first, 1)
    if header.get("format") != FORMAT:
        raise ValidationFailed(f"line 1: not a {FORMAT} file")
    version = header.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ValidationFailed(f"line 1: format_version {header.get('format_version')!r} is not supported")
    state = _Reading(header)
    reading.append(state)
    end: dict[str, Any] | None = None
    for number, raw in enumerate(stream, start=2):
        if not raw.strip():
            continue
        if end is not None:
            raise ValidationFailed(f"line {number}: data after the end line")
        line = _decode(raw, number)
        kind = line.get("kind")
        where = f"line {number}"
        if kind == "fact":
            state.facts += 1
            yield fact_from_line(line, where)
        elif kind == "tx":
            state.log += 1
            yield tx_from_line(line, where)
        elif kind == "end":
            end = line
        else:
            raise ValidationFailed(f"{where}: unknown kind {kind!r}")
    if end is None:
        raise ValidationFailed("the file has no end line (truncated export?); nothing was imported")
    if (end.get("facts"), end.get("log")) != (state.facts, state.log):
        raise ValidationFailed(
            f"the end line announces {end.get('facts')} facts and {end.get('log')} log entries, the file has "
            f"{state.facts} and {state.log}; nothing was imported"
        )


def check_export(stream: IO[str]) -> ExportSummary:
    """Validate a whole export file without any database: every line, the counts, and that no fact id
    or log uuid appears twice. Raises `ValidationFailed`; reads `stream` to its end."""
    reading: list[_Reading] = []
    ids: set[str] = set()
    uuids: set[str] = set()
    for record in _read(stream, reading):
        if isinstance(record, FactState):
            if record.id in ids:
                raise ValidationFailed(f"fact {record.id} appears twice in the file")
            ids.add(record.id)
        else:
            if record.uuid in uuids:
                raise ValidationFailed(f"log entry {record.uuid} appears twice in the file")
            uuids.add(record.uuid)
    return ExportSummary(facts=len(ids), log=len(uuids))


def load_export(
    storage: SQLStorage, stream: IO[str], batch_size: int = 1000, progress: ProgressCallback | None = None
) -> ExportSummary:
    """Insert every fact and log entry of an export into `storage`, in one database transaction.

    `stream` must be seekable (a retried transaction reads it again from the start). Raises, and
    changes nothing, on a malformed line, a truncated file and ids or uuids already in the target
    (`ConflictError`). The target's tables must exist: call `check_export` first to refuse a bad
    file before creating them.
    """
    check_batch(batch_size)
    report = progress or _quiet

    def work(repo: Repository) -> ExportSummary:
        stream.seek(0)
        reading: list[_Reading] = []
        facts: list[FactState] = []
        log: list[TxRecord] = []
        done = 0

        def flush_facts() -> None:
            nonlocal done
            clash = repo.existing_fact_ids([f.id for f in facts])
            if clash:
                raise ConflictError(f"fact {sorted(clash)[0]} already exists in the target ({len(clash)} clash(es))")
            repo.insert_facts(facts)
            done += len(facts)
            report(done, reading[0].announced)
            facts.clear()

        def flush_log() -> None:
            nonlocal done
            clash = repo.existing_tx_uuids([e.uuid for e in log])
            if clash:
                raise ConflictError(
                    f"log entry {sorted(clash)[0]} already exists in the target ({len(clash)} clash(es))"
                )
            # Positions of the exporting store are kept (a file without them, format_version 1 as
            # written before ms_0005, gets new ones in file order, which was then seq order).
            # (entries without a session have none and get none).
            repo.insert_log(log, keep_positions=all(e.session_seq is not None for e in log if e.session_id))
            done += len(log)
            report(done, reading[0].announced)
            log.clear()

        for record in _read(stream, reading):
            if isinstance(record, FactState):
                facts.append(record)
                if len(facts) >= batch_size:
                    flush_facts()
            else:
                if facts:
                    flush_facts()
                log.append(record)
                if len(log) >= batch_size:
                    flush_log()
        if facts:
            flush_facts()
        if log:
            flush_log()
        return ExportSummary(facts=reading[0].facts, log=reading[0].log)

    return storage.transaction(work, name="import")


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ExportSummary",
    "ProgressCallback",
    "check_export",
    "iter_export",
    "load_export",
    "parse_ts",
    "write_export",
]
