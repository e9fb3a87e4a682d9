"""The transactional outbox: external indexes (vector stores) learn a change only if it committed.

An external index (Qdrant, Chroma, anything with upsert and delete by id) cannot take part in the
database transaction. `IndexHook` therefore does not write to it inside the operation: it records, in
the operation's own transaction, one row of ``<prefix>_outbox`` per changed fact (upsert or delete, the
fact's id and version). A rolled-back operation leaves no row, so never a vector; a committed one always
leaves one, so a crash after COMMIT loses nothing.

Delivery (`deliver_facts`) sends the fact's *current* state (read from the facts table) to the index, then
deletes the fact's rows up to the newest one that state covers. Sending the current state makes every
delivery idempotent and ordered: an old change can never overwrite a newer one, and several pending
changes of one fact are delivered as one. Only one deliverer works on a fact at a time: it must lease the
fact's oldest pending row (claimed with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and MySQL/MariaDB; SQLite's
writers are serialised by the file). A lease expires (a dispatcher killed mid-delivery): the rows become
claimable again and the fact is delivered again, which the index absorbs (an upsert by id).

Delivery modes of an `IndexHook` (``delivery=``):

* ``"after_commit"`` (default): the row is written leased to the operation itself, and the same store
  call delivers it right after COMMIT (a search just after the commit finds the fact). When that fails,
  the call still succeeds; the row is left for a dispatcher (`memstate_sql.dispatcher`).
* ``"outbox"``: only a dispatcher delivers (the store call never waits for the index).
* ``"in_transaction"``: memstate's semantics: the index is written inside the operation, before COMMIT
  (a failure rolls the operation back; a rollback after the hook leaves the index ahead of the database).
"""

from __future__ import annotations

import functools
import logging
import random
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Delete, Insert, Select, Table, bindparam, delete, func, insert, select, update

from memstate_sql.errors import ValidationFailed
from memstate_sql.facts import Fact, Operation
from memstate_sql.hooks import invoke
from memstate_sql.records import FactState
from memstate_sql.repository import Repository
from memstate_sql.uow import TransactionRunner, current_repository

log = logging.getLogger("memstate_sql")

Delivery = Literal["after_commit", "outbox", "in_transaction"]
DELIVERIES: tuple[str, ...] = ("after_commit", "outbox", "in_transaction")

#: How long a deliverer owns a fact's rows; after it, another dispatcher may deliver them again.
DEFAULT_LEASE = 60.0
#: Retry backoff after a failed delivery: base * 2**attempts seconds, capped, with jitter.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 300.0

UPSERT, DELETE = "upsert", "delete"
_REMOVING = (Operation.DELETE, Operation.DISCARD_SESSION)


def backoff(attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failures: `BACKOFF_BASE` doubled per failure,
    capped at `BACKOFF_CAP`, jittered ±25%."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * float(2 ** min(attempts, 30)))
    return delay * random.uniform(0.75, 1.25)


def table(repo: Repository) -> Table:
    return repo.models.outbox


@dataclass(frozen=True)
class _Statements:
    """The statements of the per-commit path, built once per table (values are bound parameters, so each
    compiles once per engine)."""

    insert: Insert
    pending: Select[Any]
    finish: Delete


@functools.cache
def _statements(t: Table, row_locks: bool) -> _Statements:
    fact = (t.c.namespace == bindparam("o_ns")) & (t.c.target == bindparam("o_target"))
    fact = fact & (t.c.fact_id == bindparam("o_fact"))
    pending = select(t.c.seq).where(fact).limit(1)
    return _Statements(
        insert=insert(t),
        pending=pending.with_for_update() if row_locks else pending,
        finish=delete(t).where(fact & (t.c.seq <= bindparam("o_upto"))),
    )


def statements(repo: Repository) -> _Statements:
    return _statements(table(repo), repo.dialect.row_locks)


# ---------------------------------------------------------------------------- rows


def record(
    repo: Repository,
    target: str,
    fact_id: str,
    op: str,
    version: int,
    *,
    lease_owner: str | None = None,
    lease: float = DEFAULT_LEASE,
) -> int:
    """Insert one outbox row (in `repo`'s transaction); returns its seq."""
    now = repo.now
    result = repo.conn.execute(
        statements(repo).insert,
        {
            "namespace": repo.namespace,
            "target": target,
            "fact_id": fact_id,
            "op": op,
            "version": version,
            "created_at": now,
            "attempts": 0,
            "next_attempt_at": now,
            "last_error": None,
            "lease_owner": lease_owner,
            "lease_until": None if lease_owner is None else now + timedelta(seconds=lease),
        },
    )
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def has_pending(repo: Repository, target: str, fact_id: str) -> bool:
    """Whether the fact has an undelivered row for `target` (a locking read: the newest committed rows)."""
    params = {"o_ns": repo.namespace, "o_target": target, "o_fact": fact_id}
    return repo.conn.execute(statements(repo).pending, params).first() is not None


@dataclass(frozen=True)
class Claim:
    """The rows of one fact a deliverer leased (`seqs`) and how often they failed before."""

    fact_id: str
    seqs: tuple[int, ...]
    attempts: int


def claim(
    repo: Repository,
    target: str,
    owner: str,
    *,
    limit: int,
    lease: float = DEFAULT_LEASE,
    fact_ids: Sequence[str] | None = None,
) -> list[Claim]:
    """Lease the due rows of up to `limit` rows' facts for `owner` (in `repo`'s write transaction).

    A fact is claimed only with its oldest pending row: rows another deliverer holds (locked now, or
    leased and not expired) are skipped, and so is a fact whose oldest row is not among what this claim
    could lock, so two deliverers never work on one fact at once."""
    t = table(repo)
    now = repo.now
    mine = (t.c.namespace == repo.namespace) & (t.c.target == target)
    due = mine & (t.c.next_attempt_at <= now) & (t.c.lease_until.is_(None) | (t.c.lease_until < now))
    if fact_ids is not None:
        due = due & t.c.fact_id.in_(list(fact_ids))
    stmt = select(t.c.seq, t.c.fact_id, t.c.attempts).where(due).order_by(t.c.seq).limit(limit)
    if repo.dialect.row_locks:
        stmt = stmt.with_for_update(skip_locked=True)
    rows = repo.conn.execute(stmt).all()
    if not rows:
        return []
    locked: dict[str, list[tuple[int, int]]] = {}
    for seq, fact_id, attempts in rows:
        locked.setdefault(fact_id, []).append((int(seq), int(attempts)))
    oldest = dict(
        repo.conn.execute(
            select(t.c.fact_id, func.min(t.c.seq)).where(mine & t.c.fact_id.in_(list(locked))).group_by(t.c.fact_id)
        ).all()
    )
    claims = [
        Claim(fid, tuple(seq for seq, _ in held), max(a for _, a in held))
        for fid, held in locked.items()
        if int(oldest.get(fid, -1)) == held[0][0]
    ]
    seqs = [seq for c in claims for seq in c.seqs]
    if seqs:
        repo.conn.execute(
            update(t).where(t.c.seq.in_(seqs)).values(lease_owner=owner, lease_until=now + timedelta(seconds=lease))
        )
    return claims


def covered(repo: Repository, target: str, fact_ids: Sequence[str]) -> dict[str, int]:
    """The newest row of each fact now (read *before* the facts' state, so that the state read after
    covers every change up to it)."""
    t = table(repo)
    where = (t.c.namespace == repo.namespace) & (t.c.target == target) & t.c.fact_id.in_(list(fact_ids))
    return {
        fid: int(seq)
        for fid, seq in repo.conn.execute(
            select(t.c.fact_id, func.max(t.c.seq)).where(where).group_by(t.c.fact_id)
        ).all()
    }


def finish(repo: Repository, target: str, upto: dict[str, int]) -> int:
    """Delete the delivered rows: each fact's rows up to the seq its delivered state covers."""
    stmt = statements(repo).finish
    done = 0
    for fact_id, seq in upto.items():
        params = {"o_ns": repo.namespace, "o_target": target, "o_fact": fact_id, "o_upto": seq}
        done += int(repo.conn.execute(stmt, params).rowcount or 0)
    return done


def fail(repo: Repository, claims: Sequence[Claim], error: str) -> None:
    """Release failed claims with one more attempt counted and the next one pushed back (backoff)."""
    t = table(repo)
    for c in claims:
        repo.conn.execute(
            update(t)
            .where(t.c.seq.in_(list(c.seqs)))
            .values(
                attempts=c.attempts + 1,
                next_attempt_at=repo.now + timedelta(seconds=backoff(c.attempts + 1)),
                last_error=error[:2000],
                lease_owner=None,
                lease_until=None,
            )
        )


@dataclass(frozen=True)
class TargetStatus:
    target: str
    pending: int
    due: int
    leased: int
    failing: int
    oldest: datetime | None
    max_attempts: int
    last_error: str | None

    def doc(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "pending": self.pending,
            "due": self.due,
            "leased": self.leased,
            "failing": self.failing,
            "oldest": None if self.oldest is None else self.oldest.isoformat(),
            "max_attempts": self.max_attempts,
            "last_error": self.last_error,
        }


def status(repo: Repository) -> list[TargetStatus]:
    """What each target still has to learn in `repo`'s namespace."""
    t = table(repo)
    now = repo.now
    ns = t.c.namespace == repo.namespace
    rows = repo.conn.execute(select(t).where(ns).order_by(t.c.target, t.c.seq)).mappings().all()
    found: dict[str, list[Any]] = {}
    for row in rows:
        found.setdefault(row["target"], []).append(row)
    report = []
    for target, items in found.items():
        errors = [r["last_error"] for r in items if r["last_error"]]
        report.append(
            TargetStatus(
                target=target,
                pending=len(items),
                due=sum(
                    1
                    for r in items
                    if r["next_attempt_at"] <= now and (r["lease_until"] is None or r["lease_until"] < now)
                ),
                leased=sum(1 for r in items if r["lease_until"] is not None and r["lease_until"] >= now),
                failing=sum(1 for r in items if r["attempts"] > 0),
                oldest=min(r["created_at"] for r in items),
                max_attempts=max(r["attempts"] for r in items),
                last_error=errors[-1] if errors else None,
            )
        )
    return report


# ---------------------------------------------------------------------------- delivery


def deliver_state(index: Any, fact_id: str, state: FactState | None) -> None:
    """Make `index` hold `state` for `fact_id` (None: not at all). Async index methods are awaited."""
    fact = None if state is None else Fact.model_validate(state.doc())
    if fact is None or not index.wants(fact):
        invoke(index.remove, [fact_id])
    else:
        invoke(index.put, fact_id, fact, state.version if state is not None else 0)


def fact_states(repo: Repository, fact_ids: Sequence[str]) -> dict[str, FactState]:
    return repo.get_many(list(fact_ids))


def deliver_claims(
    run: Any, index: Any, target: str, claims: Sequence[Claim], *, on_deliver: Any = None
) -> tuple[int, int]:
    """Deliver claimed facts to `index`: read where they stand, send each, delete the rows the state covers.

    `run(fn, write)` runs `fn(repo)` in a transaction of the storage. Returns (delivered, failed)."""
    if not claims:
        return 0, 0
    ids = [c.fact_id for c in claims]

    def read(repo: Repository) -> tuple[dict[str, int], dict[str, FactState]]:
        upto = covered(repo, target, ids)  # first: the states read next cover at least these rows
        return upto, fact_states(repo, ids)

    upto, states = run(read, False)
    delivered: dict[str, int] = {}
    failed: list[tuple[Claim, str]] = []
    for c in claims:
        try:
            deliver_state(index, c.fact_id, states.get(c.fact_id))
        except Exception as exc:
            log.info("outbox: delivering %s to %s failed: %r", c.fact_id, target, exc)
            failed.append((c, f"{type(exc).__name__}: {exc}"))
            continue
        if on_deliver is not None:
            on_deliver(c.fact_id)
        if c.fact_id in upto:
            delivered[c.fact_id] = upto[c.fact_id]

    def settle(repo: Repository) -> None:
        finish(repo, target, delivered)
        for c, error in failed:
            fail(repo, [c], error)

    run(settle, True)
    return len(delivered), len(failed)


# ---------------------------------------------------------------------------- the hook side


class _Pending:
    """What one operation's transaction recorded for one hook: delivered after its COMMIT."""

    def __init__(self) -> None:
        self.mine: list[tuple[str, FactState | None, int]] = []  # leased to this operation
        self.others: list[str] = []  # facts with older pending rows: delivered by a claim
        self.owner = str(uuid.uuid4())


class IndexHook:
    """Base of the external-index hooks (`memstate_sql.integrations.qdrant`, `.chroma`).

    Subclasses implement the index side: `put(fact_id, fact, version)`, `remove(fact_ids)`,
    `entries()` (every id in the index with the version it holds, for `reconcile`), `search(...)`, and
    `document(fact)` (the text to embed, or None to keep the fact out of the index). They may be
    coroutine functions (an async client): the store awaits them.
    """

    index_name: str = "index"
    delivery: str = "after_commit"
    target_types: set[str]
    lease: float = DEFAULT_LEASE

    def _setup_delivery(self, delivery: str, index_name: str) -> None:
        if delivery not in DELIVERIES:
            raise ValidationFailed(f"delivery must be one of {', '.join(DELIVERIES)}; got {delivery!r}")
        self.delivery = delivery
        self.index_name = index_name
        self._pending: weakref.WeakKeyDictionary[Repository, _Pending] = weakref.WeakKeyDictionary()
        #: Deliveries this hook made right after COMMIT, and those left to the dispatcher.
        self.delivered_after_commit = 0
        self.deferred = 0

    # -- what the subclass provides

    def document(self, fact: Fact) -> str | None:
        raise NotImplementedError

    def wants(self, fact: Fact) -> bool:
        if self.target_types and fact.type not in self.target_types:
            return False
        text = self.document(fact)
        return text is not None and bool(text.strip())

    # -- memstate's hook protocol

    def __call__(self, op: Operation, fact_id: str, fact: Fact | None) -> Any:
        """memstate's hook call (a `MemoryStore` calls `notify_state` instead, with the row itself)."""
        repo = current_repository()
        if repo is None:  # called by hand, outside any store operation: nothing to make atomic
            if op in _REMOVING or fact is None:
                return self.remove([fact_id])
            return self.put(fact_id, fact, 0) if self.wants(fact) else None
        state = repo.get(fact_id) if fact is not None and op not in _REMOVING else None
        return self.notify_state(op, fact_id, state)

    def notify_state(self, op: Operation, fact_id: str, state: FactState | None) -> Any:
        """One changed fact (`state`: its row after the operation; None or a DELETE: it is gone)."""
        removing = op in _REMOVING or state is None
        if self.delivery == "in_transaction":
            return self._apply_now(fact_id, None if removing else state)
        repo = current_repository()
        if repo is None:
            # Called outside a store operation (by hand): nothing to make atomic; apply it.
            return self._apply_now(fact_id, None if removing else state)
        if not removing and state is not None and self.target_types and state.type not in self.target_types:
            return None
        if removing:
            state = None
        version = state.version if state is not None else 0
        pending = self._pending.get(repo)
        first = pending is None
        if pending is None:
            pending = self._pending[repo] = _Pending()
        direct = self.delivery == "after_commit" and repo.after_commit is not None
        if direct and not has_pending(repo, self.index_name, fact_id):
            seq = record(
                repo,
                self.index_name,
                fact_id,
                DELETE if removing else UPSERT,
                version,
                lease_owner=pending.owner,
                lease=self.lease,
            )
            pending.mine.append((fact_id, state, seq))
        else:
            record(repo, self.index_name, fact_id, DELETE if removing else UPSERT, version)
            if direct:
                pending.others.append(fact_id)
        if first and direct:
            assert repo.after_commit is not None
            repo.after_commit.append(lambda: self._after_commit(repo))
        return None

    def _apply_now(self, fact_id: str, state: FactState | None) -> Any:
        """memstate's semantics: write the index now (inside the transaction, when one runs)."""
        if state is None:
            return self.remove([fact_id])
        fact = Fact.model_validate(state.doc())
        if not self.wants(fact):
            return None
        return self.put(fact_id, fact, state.version)

    def _after_commit(self, repo: Repository) -> None:
        pending = self._pending.pop(repo, None)
        if pending is None:
            return
        storage_run = _runner_of(repo)
        done: dict[str, int] = {}
        failed: list[tuple[int, str]] = []
        for fact_id, state, seq in pending.mine:
            try:
                deliver_state(self, fact_id, state)
                done[fact_id] = seq
            except Exception as exc:
                log.warning(
                    "outbox: %s: delivery of %s after commit failed (left to the dispatcher): %r",
                    self.index_name,
                    fact_id,
                    exc,
                )
                failed.append((seq, f"{type(exc).__name__}: {exc}"))
        self.delivered_after_commit += len(done)
        self.deferred += len(failed)

        def settle(r: Repository) -> None:
            finish(r, self.index_name, done)
            for seq, error in failed:
                fail(r, [Claim("", (seq,), 0)], error)

        if done or failed:
            storage_run(settle, True)
        if pending.others:
            # Older rows of these facts were pending: deliver them now if no one else holds them.
            owner = str(uuid.uuid4())
            claims = storage_run(
                lambda r: claim(
                    r,
                    self.index_name,
                    owner,
                    limit=len(pending.others) * 4 + 10,
                    lease=self.lease,
                    fact_ids=pending.others,
                ),
                True,
            )
            delivered, failed_n = deliver_claims(storage_run, self, self.index_name, claims)
            self.delivered_after_commit += delivered
            self.deferred += failed_n + len(set(pending.others)) - len(claims)

    # -- index side, overridden

    def put(self, fact_id: str, fact: Fact, version: int) -> Any:
        raise NotImplementedError

    def remove(self, fact_ids: Sequence[str]) -> Any:
        raise NotImplementedError

    def entries(self) -> Any:
        raise NotImplementedError


def _runner_of(repo: Repository) -> Any:
    """Run `fn(repo)` in a new transaction on the same engine, tables and namespace as `repo`."""
    runner = TransactionRunner(repo.conn.engine, repo.models, repo.dialect, owner=object(), namespace=repo.namespace)

    def run(fn: Any, write: bool) -> Any:
        return runner.run(fn, write=write, name="outbox")

    return run
