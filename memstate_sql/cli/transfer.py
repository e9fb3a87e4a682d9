"""`export` / `import`: a store as JSON Lines.

The file is a header line, one line per fact (``"kind": "fact"``, every
column of the row), one line per log entry (``"kind": "tx"``, in seq order,
rolled-back entries included) and an ``end`` line with the counts::

    {"format": "memstate-sql-export", "format_version": 1, "facts": 2, "log": 3, ...}
    {"kind": "fact", "id": "...", "type": "user", "payload": {...}, "version": 2, ...}
    {"kind": "tx", "seq": 1, "uuid": "...", "op": "COMMIT", "fact_before": null, ...}
    {"kind": "end", "facts": 2, "log": 3}

The export reads one snapshot of the database, in batches. The import is one
database transaction: a malformed or truncated file, or an id or log uuid that
already exists in the target, leaves the target untouched. Log entries get new
``seq`` values from the target database, in the exported order.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from memstate_sql import __version__, jsondoc
from memstate_sql.cli.context import Target
from memstate_sql.cli.errors import USAGE, CliError
from memstate_sql.cli.render import Progress, to_json
from memstate_sql.errors import ConflictError, ValidationFailed
from memstate_sql.facts import Operation
from memstate_sql.records import FactState, TxRecord
from memstate_sql.repository import Repository
from memstate_sql.timeutil import format_iso as format_ts
from memstate_sql.validation import check_key

FORMAT = "memstate-sql-export"
FORMAT_VERSION = 1


def parse_ts(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise ValidationFailed(f"{where}: ts must be an ISO 8601 string")
    try:
        ts = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise ValidationFailed(f"{where}: {value!r} is not an ISO 8601 timestamp") from None
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def fact_line(fact: FactState) -> dict[str, Any]:
    return {
        "kind": "fact",
        **fact.doc(),
        "version": fact.version,
        "immutable": fact.immutable,
        "singleton": fact.singleton,
    }


def tx_line(entry: TxRecord) -> dict[str, Any]:
    return {"kind": "tx", **entry.doc(), "discarded": entry.discarded, "reverted_by": entry.reverted_by}


def fact_from_line(line: dict[str, Any], where: str) -> FactState:
    fid = check_key(f"{where}: id", line.get("id"), required=True)
    ftype = check_key(f"{where}: type", line.get("type"), required=True)
    payload, _ = jsondoc.check_payload(line.get("payload"), max_bytes=2**31)
    version = line.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValidationFailed(f"{where}: version must be a positive integer")
    immutable = line.get("immutable", False)
    if not isinstance(immutable, bool):
        raise ValidationFailed(f"{where}: immutable must be true or false")
    assert fid is not None and ftype is not None
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
    )


def _image(value: Any, where: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationFailed(f"{where} must be an object or null")
    return jsondoc.check_value(value, where)


def tx_from_line(line: dict[str, Any], where: str) -> TxRecord:
    uuid = check_key(f"{where}: uuid", line.get("uuid"), required=True)
    op = line.get("op")
    try:
        op = Operation(op).value
    except ValueError:
        raise ValidationFailed(f"{where}: unknown op {op!r}") from None
    discarded = line.get("discarded")
    if discarded is not None and (not isinstance(discarded, list) or not all(isinstance(d, dict) for d in discarded)):
        raise ValidationFailed(f"{where}: discarded must be a list of fact documents or null")
    reason = line.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ValidationFailed(f"{where}: reason must be a string or null")
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
    )


# ---------------------------------------------------------------------------- export


def export_lines(repo: Repository, batch: int, progress: Progress | None = None) -> Iterator[dict[str, Any]]:
    """Every line of an export, read in batches on `repo`'s (snapshot) transaction."""
    facts = repo.count_facts()
    log_total, _ = repo.log_counts()
    if progress is not None:
        progress.total = facts + log_total
    yield {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "memstate_sql": __version__,
        "dialect": repo.conn.dialect.name,
        "table_prefix": repo.models.prefix,
        "exported_at": format_ts(datetime.now(timezone.utc)),
        "facts": facts,
        "log": log_total,
    }
    written_facts = written_log = 0
    after_id: str | None = None
    while True:
        page = repo.facts_page(after_id, batch)
        if not page:
            break
        for fact in page:
            yield fact_line(fact)
        written_facts += len(page)
        after_id = page[-1].id
        if progress is not None:
            progress.advance(len(page))
    after_seq: int | None = None
    while True:
        entries = repo.log_page(after_seq, batch)
        if not entries:
            break
        for entry in entries:
            yield tx_line(entry)
        written_log += len(entries)
        after_seq = entries[-1].seq
        if progress is not None:
            progress.advance(len(entries))
    yield {"kind": "end", "facts": written_facts, "log": written_log}


def cmd_export(args: Any) -> int:
    if args.batch_size < 1:
        raise CliError("--batch-size must be >= 1", USAGE)
    to_stdout = args.output in (None, "-")
    with Target.from_args(args).open(create=False) as storage:
        progress = Progress("exporting", None, enabled=False if args.no_progress else None)
        out: IO[str]
        with contextlib.ExitStack() as stack:
            if to_stdout:
                out = sys.stdout
            else:
                path = Path(args.output)
                tmp = path.with_name(path.name + ".partial")
                try:
                    out = stack.enter_context(tmp.open("w", encoding="utf-8", newline="\n"))
                except OSError as error:
                    raise CliError(f"cannot write {path}: {error.strerror}", USAGE) from None
                stack.callback(lambda: tmp.unlink(missing_ok=True))  # removed unless renamed into place
            with storage.engine.connect() as conn, conn.begin():
                storage.dialect.begin_snapshot(conn)
                repo = Repository(conn, storage.models, storage.dialect, storage.namespace)
                end: dict[str, Any] = {}
                for line in export_lines(repo, args.batch_size, progress):
                    out.write(to_json(line) + "\n")
                    end = line
            progress.finish()
            if not to_stdout:
                out.close()
                tmp.replace(path)  # a complete file appears at once; a failed export leaves nothing
    summary = {"facts": end["facts"], "log": end["log"], "output": "-" if to_stdout else str(path)}
    if not to_stdout:
        text = f"exported {end['facts']} facts and {end['log']} log entries to {path}"
        print(to_json(summary) if args.json else text)
    elif sys.stderr.isatty() and not args.no_progress:
        sys.stderr.write(f"exported {end['facts']} facts and {end['log']} log entries\n")
    return 0


# ---------------------------------------------------------------------------- import


def _decode(raw: str, number: int) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValidationFailed(f"line {number}: not JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValidationFailed(f"line {number}: expected a JSON object")
    return value


def import_stream(repo: Repository, stream: IO[str], batch: int, progress: Progress) -> tuple[int, int]:
    """Insert every fact and log entry of an export on `repo` (the caller's transaction).

    Raises (so that the caller's transaction rolls back) on any malformed line, a truncated
    file (no ``end`` line or counts that disagree) and ids or uuids already in the target.
    """
    first = stream.readline()
    if not first.strip():
        raise ValidationFailed("the file is empty")
    header = _decode(first, 1)
    if header.get("format") != FORMAT:
        raise ValidationFailed(f"line 1: not a {FORMAT} file")
    if header.get("format_version") != FORMAT_VERSION:
        raise ValidationFailed(f"line 1: format_version {header.get('format_version')!r} is not supported")
    progress.total = int(header.get("facts", 0)) + int(header.get("log", 0))
    facts: list[FactState] = []
    log: list[TxRecord] = []
    counts = {"fact": 0, "tx": 0}
    end: dict[str, Any] | None = None

    def flush_facts() -> None:
        clash = repo.existing_fact_ids([f.id for f in facts])
        if clash:
            raise ConflictError(f"fact {sorted(clash)[0]} already exists in the target ({len(clash)} clash(es))")
        repo.insert_facts(facts)
        progress.advance(len(facts))
        facts.clear()

    def flush_log() -> None:
        clash = repo.existing_tx_uuids([e.uuid for e in log])
        if clash:
            raise ConflictError(f"log entry {sorted(clash)[0]} already exists in the target ({len(clash)} clash(es))")
        repo.insert_log(log)
        progress.advance(len(log))
        log.clear()

    for number, raw in enumerate(stream, start=2):
        if not raw.strip():
            continue
        if end is not None:
            raise ValidationFailed(f"line {number}: data after the end line")
        line = _decode(raw, number)
        kind = line.get("kind")
        where = f"line {number}"
        if kind == "fact":
            facts.append(fact_from_line(line, where))
            if len(facts) >= batch:
                flush_facts()
        elif kind == "tx":
            if facts:
                flush_facts()
            log.append(tx_from_line(line, where))
            if len(log) >= batch:
                flush_log()
        elif kind == "end":
            end = line
            continue
        else:
            raise ValidationFailed(f"{where}: unknown kind {kind!r}")
        counts[kind] += 1
    if facts:
        flush_facts()
    if log:
        flush_log()
    if end is None:
        raise ValidationFailed("the file has no end line (truncated export?); nothing was imported")
    if (end.get("facts"), end.get("log")) != (counts["fact"], counts["tx"]):
        raise ValidationFailed(
            f"the end line announces {end.get('facts')} facts and {end.get('log')} log entries, the file has "
            f"{counts['fact']} and {counts['tx']}; nothing was imported"
        )
    return counts["fact"], counts["tx"]


@contextlib.contextmanager
def seekable_input(name: str) -> Iterator[IO[str]]:
    """The input file, or standard input spooled to a temporary file (a retried transaction re-reads it)."""
    if name != "-":
        try:
            handle = open(name, encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as error:
            raise CliError(f"cannot read {name}: {error.strerror}", USAGE) from None
        with handle:
            yield handle
        return
    with tempfile.TemporaryFile("w+b") as spool:
        shutil.copyfileobj(sys.stdin.buffer, spool)
        spool.seek(0)
        text = io.TextIOWrapper(spool, encoding="utf-8")
        try:
            yield text
        finally:
            text.detach()


def cmd_import(args: Any) -> int:
    if args.batch_size < 1:
        raise CliError("--batch-size must be >= 1", USAGE)
    with seekable_input(args.file) as stream, Target.from_args(args).open(create=True, max_attempts=3) as storage:
        progress = Progress("importing", None, enabled=False if args.no_progress else None)

        def work(repo: Repository) -> tuple[int, int]:
            stream.seek(0)
            progress.done = 0
            return import_stream(repo, stream, args.batch_size, progress)

        try:
            facts, log = storage.transaction(work, name="import")
        except UnicodeDecodeError as error:
            raise CliError(f"{args.file} is not UTF-8 text: {error.reason}", USAGE) from None
        progress.finish()
    if args.json:
        print(to_json({"facts": facts, "log": log}))
    else:
        print(f"imported {facts} facts and {log} log entries")
    return 0
