"""Consistency check of a store's tables: does the log describe the facts exactly?

`verify(url_or_engine, table_prefix=...)` reads both tables (in one read
transaction) and checks the invariants every store operation maintains:

* at most one fact per (type, singleton key);
* log sequence numbers and uuids are unique, sequence numbers positive; session
  positions (``session_seq``) are positive and unique per session, and absent
  on entries without a session;
* the *active* log (entries no rollback undid) replays to the facts table:
  taking each fact's active entries in sequence order, every entry's before
  image is the state the previous one left (no change is missing between
  them), and the last one's after image is the fact's current row (every fact
  has its log entries, every logged change is present, no rollback is half
  applied);
* every fact row is accounted for by at least one active entry.

It reads the whole tables into memory: meant for tests, audits after an
incident, and moderately sized stores. Writes through `SQLStorage.save` or
`append_tx` (memstate's raw backend API) bypass the store's log and are
reported as mismatches, by design.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError

from memstate_sql import logentry
from memstate_sql.dialects import engine_for
from memstate_sql.facts import Operation
from memstate_sql.models import DEFAULT_PREFIX, models_for
from memstate_sql.records import DEFAULT_NAMESPACE, FactState, TxRecord
from memstate_sql.repository import Repository


@dataclass
class VerifyReport:
    """What `verify` found: counts and a list of human-readable problems (empty when consistent)."""

    facts: int = 0
    log_entries: int = 0
    active_entries: int = 0
    reverted_entries: int = 0
    rollbacks: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        return {
            "facts": self.facts,
            "log_entries": self.log_entries,
            "active_entries": self.active_entries,
            "reverted_entries": self.reverted_entries,
            "rollbacks": self.rollbacks,
        }


def check(facts: list[FactState], log: list[TxRecord]) -> VerifyReport:
    """The invariants over rows already read (`verify` reads them)."""
    report = VerifyReport(facts=len(facts), log_entries=len(log))
    problems = report.problems
    singletons = Counter((f.type, f.singleton) for f in facts if f.singleton is not None)
    problems += [f"{n} facts of type {t!r} share singleton key {s}" for (t, s), n in singletons.items() if n > 1]
    seqs = Counter(e.seq for e in log)
    problems += [f"log seq {s} is used {n} times" for s, n in seqs.items() if n > 1]
    problems += [f"log seq {e.seq} is not positive" for e in log if e.seq < 1]
    # Positions of a session are unique (the session's row lock hands them out; the index is not UNIQUE,
    # docs/log-order.md). Entries without a session take none.
    in_sessions = [e for e in log if e.session_id is not None]
    positions = Counter((e.session_id, e.session_seq) for e in in_sessions)
    problems += [
        f"session {sid!r}: log position {pos} is used {n} times" for (sid, pos), n in positions.items() if n > 1
    ]
    problems += [
        f"log seq {e.seq} has no session position" for e in in_sessions if e.session_seq is None or e.session_seq < 1
    ]
    problems += [
        f"log seq {e.seq} has a session position but no session"
        for e in log
        if e.session_id is None and e.session_seq is not None
    ]
    uuids = Counter(e.uuid for e in log)
    problems += [f"log uuid {u} is used {n} times" for u, n in uuids.items() if n > 1]

    active = [e for e in sorted(log, key=lambda e: e.seq) if logentry.is_active(e)]
    # After `compact_log`, a fact's first remaining entry may start from a state whose entry was removed.
    compacted = any(e.op == Operation.COMPACT.value for e in log)
    records = {e.uuid for e in log if e.op == Operation.ROLLBACK.value}
    retention = sum(1 for e in log if e.op == Operation.COMPACT.value)
    report.active_entries = len(active)
    report.reverted_entries = len(log) - len(active) - len(records) - retention
    report.rollbacks = len(
        {e.reverted_by for e in log if e.reverted_by is not None and e.op != Operation.COMPACT.value}
    )
    problems += [
        f"log seq {e.seq} is undone by rollback {e.reverted_by}, which has no ROLLBACK entry"
        for e in log
        if records and e.reverted_by is not None and e.reverted_by not in records and e.op != Operation.COMPACT.value
    ]

    state: dict[str, Mapping[str, Any] | None] = {}
    last_seq: dict[str, int] = {}
    chains: dict[str, int] = defaultdict(int)
    for entry in active:
        for effect in logentry.effects(entry, state):
            fid, before, after = effect.fact_id, effect.before, effect.after
            previous = state.get(fid)
            if chains[fid] and logentry.comparable(before) != logentry.comparable(previous):
                problems.append(
                    f"fact {fid}: log seq {entry.seq} ({entry.op}) starts from a state that seq "
                    f"{last_seq[fid]} did not leave (a change is missing from the log)"
                )
            elif not chains[fid] and before is not None and not compacted:
                problems.append(
                    f"fact {fid}: its first active log entry, seq {entry.seq} ({entry.op}), changes a fact "
                    "no active entry created"
                )
            state[fid] = after
            last_seq[fid] = entry.seq
            chains[fid] += 1

    rows = {f.id: f.doc() for f in facts}
    for fid, doc in rows.items():
        if fid not in state:
            if not compacted:  # compaction may have removed every entry that a later rollback did not undo
                problems.append(f"fact {fid} has no active log entry")
        elif logentry.comparable(state[fid]) != logentry.comparable(doc):
            problems.append(f"fact {fid}: the row differs from what log seq {last_seq[fid]} recorded")
    for fid, expected in state.items():
        if expected is not None and fid not in rows:
            problems.append(f"fact {fid}: log seq {last_seq[fid]} left it present, but it is missing")
    return report


def verify(
    url_or_engine: str | URL | Engine,
    *,
    table_prefix: str = DEFAULT_PREFIX,
    schema: str | None = None,
    engine_options: Mapping[str, Any] | None = None,
    namespace: str | None = None,
    all_namespaces: bool = True,
) -> VerifyReport:
    """Check a store's tables (see the module docstring); never writes.

    Every namespace is checked on its own (its facts against its log), all of them unless
    ``all_namespaces=False``, which checks `namespace` only (None: the default one). A URL is opened
    the way `SQLStorage` opens it (with `engine_options`); `SQLStorage.verify()` checks its own
    namespace through the storage's own engine.
    """
    owns = not isinstance(url_or_engine, Engine)
    engine = url_or_engine if isinstance(url_or_engine, Engine) else engine_for(url_or_engine, engine_options)
    try:
        models = models_for(table_prefix, schema)
        with engine.connect() as conn:
            # One snapshot for both tables where the database offers it (PostgreSQL, MySQL/MariaDB);
            # a SQLite read transaction is a snapshot already.
            with contextlib.suppress(ArgumentError):
                conn.execution_options(isolation_level="REPEATABLE READ")
            conn.begin()
            facts_table = models.facts
            log_table = models.log
            facts_stmt, log_stmt = select(facts_table), select(log_table)
            if not all_namespaces:
                only = namespace or DEFAULT_NAMESPACE
                facts_stmt = facts_stmt.where(facts_table.c.namespace == only)
                log_stmt = log_stmt.where(log_table.c.namespace == only)
            facts: dict[str, list[FactState]] = defaultdict(list)
            log: dict[str, list[TxRecord]] = defaultdict(list)
            for row in conn.execute(facts_stmt):
                facts[row.namespace].append(Repository._fact(row))
            for row in conn.execute(log_stmt):
                log[row.namespace].append(Repository._tx(row))
        return _merge({ns: check(facts[ns], log[ns]) for ns in sorted(set(facts) | set(log))})
    finally:
        if owns:
            engine.dispose()


def _merge(reports: Mapping[str, VerifyReport]) -> VerifyReport:
    """One report over several namespaces; problems outside the default namespace name theirs."""
    merged = VerifyReport(facts=0, log_entries=0)
    for ns, report in reports.items():
        merged.facts += report.facts
        merged.log_entries += report.log_entries
        merged.active_entries += report.active_entries
        merged.reverted_entries += report.reverted_entries
        merged.rollbacks += report.rollbacks
        merged.problems += [p if ns == DEFAULT_NAMESPACE else f"namespace {ns!r}: {p}" for p in report.problems]
    return merged
