"""Read-only commands: facts, get, history, log, stats."""

from __future__ import annotations

import json
from typing import Any

from memstate_sql import filters as flt
from memstate_sql import migrations
from memstate_sql.cli.context import Target
from memstate_sql.cli.errors import FAILED, USAGE, CliError
from memstate_sql.cli.render import compact, short, table, to_json
from memstate_sql.repository import Repository
from memstate_sql.validation import query_spec

ENVELOPE_ORDER = ("ts", "id", "type", "session_id", "source")
_KIND_RANK = {"null": 0, "number": 1, "string": 2, "bool": 3, "array": 4, "object": 5}


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


def sort_key(path: tuple[str, ...]) -> Any:
    """Sort key for a fact document by an envelope field or a payload path: missing values last,
    then by JSON kind, then by value."""

    def key(doc: dict[str, Any]) -> tuple[int, int, Any]:
        value: Any = doc
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return (1, 0, "")
            value = value[part]
        kind = flt.kind_of(value) if not isinstance(value, tuple) else "array"
        if kind in ("array", "object"):
            value = json.dumps(value, sort_keys=True)
        return (0, _KIND_RANK[kind], value)

    return key


def order_path(field: str) -> tuple[str, ...]:
    if field in ENVELOPE_ORDER:
        return (field,)
    if field.startswith("payload.") and len(field) > len("payload."):
        return tuple(flt.parse_path(field))
    raise CliError(f"--order-by takes one of {', '.join(ENVELOPE_ORDER)} or payload.<key>, not {field!r}", USAGE)


def fact_rows(docs: list[dict[str, Any]]) -> str:
    return table(
        ["id", "type", "session", "source", "ts", "payload"],
        [[d["id"], d["type"], d["session_id"] or "", d["source"] or "", d["ts"], compact(d["payload"])] for d in docs],
    )


def cmd_facts(args: Any) -> int:
    filters = parse_filter(args.filter)
    path = order_path(args.order_by)
    if args.limit < 0:
        raise CliError("--limit must be >= 0", USAGE)
    with Target.from_args(args).open(create=False) as storage:
        docs = storage.select(query_spec(args.type, filters, args.session))
    docs.sort(key=sort_key(path), reverse=args.desc)
    total = len(docs)
    if args.limit:
        docs = docs[: args.limit]
    if args.json:
        print(to_json(docs))
    else:
        print(fact_rows(docs))
        more = f" (of {total}; --limit 0 shows all)" if total > len(docs) else ""
        print(f"{len(docs)} fact(s){more}")
    return 0


def cmd_get(args: Any) -> int:
    with Target.from_args(args).open(create=False) as storage:
        doc = storage.load(args.id)
    if doc is None:
        raise CliError(f"no fact with id {args.id!r}", FAILED)
    if args.json:
        print(to_json(doc))
        return 0
    for name in ("id", "type", "session_id", "source", "ts"):
        print(f"{name + ':':<12}{doc[name] if doc[name] is not None else '-'}")
    print("payload:")
    print(json.dumps(doc["payload"], ensure_ascii=False, indent=2))
    return 0


def describe(entry: dict[str, Any]) -> str:
    """What a log entry changed, in a few words."""
    before, after = entry.get("fact_before"), entry.get("fact_after")
    if before is None and after is not None:
        return "created " + compact(after.get("payload"))
    if after is None:
        if entry["op"] == "DISCARD_SESSION":
            return entry.get("reason") or "session discarded"
        return "deleted " + compact(before.get("payload")) if before else (entry.get("reason") or "")
    changes: list[str] = []
    if before is not None and before.get("session_id") != after.get("session_id"):
        changes.append(f"session {before.get('session_id') or '(global)'} -> {after.get('session_id') or '(global)'}")
    old = before.get("payload", {}) if before else {}
    new = after.get("payload", {})
    for key in sorted(set(old) | set(new)):
        if old.get(key, ...) != new.get(key, ...):
            was = compact(old[key]) if key in old else "(none)"
            now = compact(new[key]) if key in new else "(none)"
            changes.append(f"{key}: {was} -> {now}")
    return "; ".join(changes) or "no change"


def log_rows(entries: list[dict[str, Any]], *, with_fact: bool = True, with_undone: bool = False) -> str:
    headers = ["seq", "ts", "op", "session"]
    if with_fact:
        headers.append("fact")
    headers.append("actor")
    if with_undone:
        headers.append("undone")
    headers.append("change")
    rows = []
    for e in entries:
        row = [e["seq"], e["ts"], e["op"], e["session_id"] or ""]
        if with_fact:
            row.append(e["fact_id"] or "")
        row.append(e["actor"] or "")
        if with_undone:
            row.append("yes" if e.get("reverted_by") else "")
        row.append(describe(e))
        rows.append(row)
    return table(headers, rows)


def cmd_history(args: Any) -> int:
    with Target.from_args(args).open(create=False) as storage:
        entries = storage.history(args.id)
        exists = storage.load(args.id) is not None
    if not entries and not exists:
        raise CliError(f"no fact and no log entries with id {args.id!r}", FAILED)
    if args.json:
        print(to_json(entries))
        return 0
    print(log_rows(entries, with_fact=False, with_undone=True))
    state = "exists" if exists else "does not exist now"
    print(f"{len(entries)} log entr{'y' if len(entries) == 1 else 'ies'}, oldest first; the fact {state}")
    return 0


def cmd_log(args: Any) -> int:
    if args.limit < 1:
        raise CliError("--limit must be >= 1", USAGE)
    with Target.from_args(args).open(create=False) as storage:
        entries = storage.get_tx_log(args.session, limit=args.limit, offset=args.offset)
    if args.json:
        print(to_json(entries))
        return 0
    print(log_rows(entries))
    which = f"of session {args.session!r}" if args.session is not None else "without a session"
    noun = "entry" if len(entries) == 1 else "entries"
    print(f"{len(entries)} log {noun} {which}, newest first (rolled-back ones hidden)")
    return 0


def cmd_stats(args: Any) -> int:
    target = Target.from_args(args)
    with target.open(create=False) as storage:

        def read(repo: Repository) -> dict[str, Any]:
            log_total, log_undone = repo.log_counts()
            by_type = repo.fact_counts("type")
            return {
                "facts": sum(n for _, n in by_type),
                "by_type": {t: n for t, n in by_type},
                "by_session": [{"session_id": s, "facts": n} for s, n in repo.fact_counts("session_id")],
                "log_entries": log_total,
                "log_entries_rolled_back": log_undone,
            }

        data = storage.transaction(read, write=False, name="stats")
        revision = migrations.current_revision(storage.engine, table_prefix=target.prefix, schema=target.schema)
        head = migrations.head_revision()
    data = {
        "database": target.shown,
        "dialect": storage.engine.dialect.name,
        "table_prefix": target.prefix,
        "schema_revision": revision,
        "head_revision": head,
        **data,
    }
    if args.json:
        print(to_json(data))
        return 0
    print(f"database:      {data['database']} ({data['dialect']}, prefix {target.prefix})")
    print(f"schema:        revision {revision} (head {head})")
    print(f"facts:         {data['facts']}")
    print(f"log entries:   {log_total_text(data)}")
    if data["by_type"]:
        print()
        print(table(["type", "facts"], list(data["by_type"].items())))
    if data["by_session"]:
        print()
        print(table(["session", "facts"], [[s["session_id"] or "(global)", s["facts"]] for s in data["by_session"]]))
    return 0


def log_total_text(data: dict[str, Any]) -> str:
    return f"{data['log_entries']} ({data['log_entries_rolled_back']} undone by rollbacks)"


__all__ = ["cmd_facts", "cmd_get", "cmd_history", "cmd_log", "cmd_stats", "short"]
