"""Read-only commands: facts, get, history, log, stats.

They call the library's reads (`MemoryStore.query`/`count`, `SQLStorage.history`,
`get_tx_log`, `memstate_sql.admin.stats`) and only put the answers into tables.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from memstate_sql.cli.base import command
from memstate_sql.cli.context import Target, settings
from memstate_sql.cli.entries import describe
from memstate_sql.cli.errors import FAILED, USAGE, CliError
from memstate_sql.cli.output import compact, emit_json, table
from memstate_sql.errors import ValidationFailed
from memstate_sql.filters import parse_order

F = TypeVar("F", bound=Callable[..., Any])

ORDER_FIELDS = ("ts", "id", "type", "session_id", "source")
#: Log entries read per query when ``log --limit 0`` asks for all of them.
LOG_PAGE = 1000


def parse_filter(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(f"--filter is not valid JSON: {error}", USAGE) from None
    if not isinstance(value, dict):
        raise CliError('--filter must be a JSON object such as \'{"payload.age": {"$gt": 3}}\'', USAGE)
    return value


def non_negative(name: str, value: int) -> int:
    if value < 0:
        raise CliError(f"{name} must be >= 0", USAGE)
    return value


def session_choice(session: str | None, no_session: bool) -> tuple[bool, str | None]:
    """(whether a session was selected, which: None = operations/facts without a session)."""
    if session is not None and no_session:
        raise CliError("--session and --no-session exclude each other", USAGE)
    if no_session:
        return True, None
    return session is not None, session


def session_options(f: F) -> F:
    f = click.option("--no-session", is_flag=True, help="only what belongs to no session (global)")(f)
    return click.option("--session", metavar="ID", help="only what belongs to this session")(f)


def window_options(default_limit: int, noun: str) -> Callable[[F], F]:
    def apply(f: F) -> F:
        f = click.option("--offset", type=int, default=0, show_default=True, help=f"skip this many {noun} first")(f)
        return click.option(
            "--limit", type=int, default=default_limit, show_default=True, help=f"at most this many {noun}; 0 = all"
        )(f)

    return apply


# ---------------------------------------------------------------------------- facts


def fact_filters(user: dict[str, Any] | None, source: str | None, global_only: bool) -> dict[str, Any] | None:
    parts = [part for part in (user, {"source": source} if source is not None else None) if part]
    if global_only:
        parts.append({"session_id": None})
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$and": parts}


@command(
    "facts",
    "list facts, with filters",
    example='memstate-sql facts --type user --filter \'{"payload.age": {"$ne": null}}\' '
    "--order-by payload.age --desc --limit 10",
)
@click.option("--type", "type_", metavar="TYPE", help="only facts of this type")
@session_options
@click.option("--source", metavar="SOURCE", help="only facts with this source")
@click.option("--filter", "filter_text", metavar="JSON", help="a filter as JSON (the store's filter language)")
@click.option(
    "--order-by",
    default="ts",
    show_default=True,
    metavar="FIELD",
    help=f"{', '.join(ORDER_FIELDS)} or payload.<key> (the library's order: docs/filters.md)",
)
@click.option("--desc", is_flag=True, help="descending order")
@window_options(100, "facts")
def facts_cmd(
    type_: str | None,
    session: str | None,
    no_session: bool,
    source: str | None,
    filter_text: str | None,
    order_by: str,
    desc: bool,
    limit: int,
    offset: int,
) -> int:
    """List facts, ordered and windowed by the database (the library's `query`)."""
    from memstate_sql import admin
    from memstate_sql.store import MemoryStore

    filters = fact_filters(parse_filter(filter_text), source, no_session)
    _, session_id = session_choice(session, no_session)
    non_negative("--limit", limit)
    non_negative("--offset", offset)
    if order_by not in ORDER_FIELDS and not order_by.startswith("payload."):
        raise CliError(f"--order-by takes one of {', '.join(ORDER_FIELDS)} or payload.<key>, not {order_by!r}", USAGE)
    order = ("-" if desc else "") + order_by
    try:
        parse_order(order)  # the library's reading of it, checked before any database work
    except ValidationFailed as error:
        raise CliError(f"--order-by: {error}", USAGE) from None
    with Target.current().open(create=False) as storage:
        store = MemoryStore(storage)
        docs = store.query(type_, filters, session_id, limit=limit or None, offset=offset, order_by=order)
        if settings().json:
            emit_json(docs)
            return 0
        total = store.count(type_, filters, session_id) if (limit and len(docs) == limit) or offset else len(docs)
        flags = admin.row_flags(storage, [d["id"] for d in docs])
    rows = []
    for d in docs:
        version, immutable = flags.get(d["id"], ("?", False))
        rows.append(
            [
                d["id"],
                d["type"],
                d.get("session_id") or "",
                d.get("source") or "",
                d.get("ts", ""),
                version,
                "yes" if immutable else "",
                compact(d["payload"]),
            ]
        )
    table(["id", "type", "session", "source", "ts", "version", "immutable", "payload"], rows)
    if offset:
        more = f" (from {offset + 1}, of {total})"
    elif total > len(docs):
        more = f" (of {total}; --limit 0 shows all)"
    else:
        more = ""
    print(f"{len(docs)} fact(s){more}")
    return 0


# ---------------------------------------------------------------------------- get, history


@command("get", "show one fact")
@click.argument("fact_id", metavar="ID")
def get_cmd(fact_id: str) -> int:
    """Show one fact (ID: its full id)."""
    from memstate_sql import admin

    with Target.current().open(create=False) as storage:
        doc = storage.load(fact_id)
        flags = admin.row_flags(storage, [fact_id]) if doc is not None else {}
    if doc is None:
        raise CliError(f"no fact with id {fact_id!r}", FAILED)
    if settings().json:
        emit_json(doc)
        return 0
    version, immutable = flags.get(fact_id, (None, False))
    for name in ("id", "type", "session_id", "source", "ts"):
        print(f"{name + ':':<12}{doc[name] if doc.get(name) is not None else '-'}")
    print(f"{'version:':<12}{version if version is not None else '-'}")
    print(f"{'immutable:':<12}{'yes' if immutable else 'no'}")
    print("payload:")
    print(json.dumps(doc["payload"], ensure_ascii=False, indent=2))
    return 0


def log_rows(entries: list[dict[str, Any]], *, with_fact: bool = True, with_undone: bool = False) -> None:
    headers = ["seq", "ts", "op", "session"]
    if with_fact:
        headers.append("fact")
    headers.append("actor")
    if with_undone:
        headers.append("undone")
    headers.append("change")
    rows = []
    for e in entries:
        # records appended through append_tx may lack any key but seq (docs/contract.md)
        row = [e["seq"], e.get("ts", ""), e.get("op") or "", e.get("session_id") or ""]
        if with_fact:
            row.append(e.get("fact_id") or "")
        row.append(e.get("actor") or "")
        if with_undone:
            row.append("yes" if e.get("reverted_by") else "")
        row.append(describe(e))
        rows.append(row)
    table(headers, rows)


@command("history", "the log entries of one fact, oldest first (rolled-back ones included)")
@click.argument("fact_id", metavar="ID")
def history_cmd(fact_id: str) -> int:
    """The log entries of one fact (ID: its full id), oldest first, rolled-back ones marked."""
    with Target.current().open(create=False) as storage:
        entries = storage.history(fact_id)
        exists = storage.load(fact_id) is not None
    if not entries and not exists:
        raise CliError(f"no fact and no log entries with id {fact_id!r}", FAILED)
    if settings().json:
        emit_json(entries)
        return 0
    log_rows(entries, with_fact=False, with_undone=True)
    state = "exists" if exists else "does not exist now"
    print(f"{len(entries)} log entr{'y' if len(entries) == 1 else 'ies'}, oldest first; the fact {state}")
    return 0


# ---------------------------------------------------------------------------- log


@command("log", "a session's log, newest first")
@session_options
@window_options(20, "entries")
def log_cmd(session: str | None, no_session: bool, limit: int, offset: int) -> int:
    """A session's active log, newest first (without --session: the entries logged without a session)."""
    _, session_id = session_choice(session, no_session)
    non_negative("--limit", limit)
    non_negative("--offset", offset)
    with Target.current().open(create=False) as storage:
        if limit:
            entries = storage.get_tx_log(session_id, limit=limit, offset=offset)
        else:
            entries = []
            seen: set[str] = set()
            read = 0
            # Newest first by session position: an entry committed meanwhile lands on top and shifts
            # the pages by one (an entry read twice, skipped by uuid); none is missed.
            while page := storage.get_tx_log(session_id, limit=LOG_PAGE, offset=offset + read):
                read += len(page)
                entries.extend(e for e in page if e["uuid"] not in seen)
                seen.update(e["uuid"] for e in page)
                if len(page) < LOG_PAGE:
                    break
    if settings().json:
        emit_json(entries)
        return 0
    log_rows(entries)
    which = f"of session {session_id!r}" if session_id is not None else "without a session"
    noun = "entry" if len(entries) == 1 else "entries"
    print(f"{len(entries)} log {noun} {which}, newest first (rolled-back ones hidden)")
    return 0


# ---------------------------------------------------------------------------- stats


@command("stats", "counts by type and session, log size, schema revision")
def stats_cmd() -> int:
    """Facts by type and by session, the log's size, the schema revision."""
    from memstate_sql import admin

    target = Target.current()
    with target.open(create=False) as storage:
        data = {
            "database": target.shown,
            "dialect": storage.engine.dialect.name,
            "table_prefix": target.prefix,
            "schema": target.schema,
            **admin.stats(storage),
        }
    if settings().json:
        emit_json(data)
        return 0
    print(f"database:      {data['database']} ({data['dialect']}, prefix {target.prefix})")
    if target.schema:
        print(f"db schema:     {target.schema}")
    print(f"schema:        revision {data['schema_revision']} (head {data['head_revision']})")
    print(f"facts:         {data['facts']}")
    print(f"log entries:   {data['log_entries']} ({data['log_entries_rolled_back']} undone by rollbacks)")
    if data["by_type"]:
        print()
        table(["type", "facts"], list(data["by_type"].items()))
    if data["by_session"]:
        print()
        table(["session", "facts"], [[s["session_id"] or "(global)", s["facts"]] for s in data["by_session"]])
    return 0
