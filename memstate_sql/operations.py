"""The store operations, implemented once for the sync and the asyncio store.

Every store operation is a method of `Operations` that receives a `Repository`
(a connection inside the operation's transaction) and returns the result. The
storage's unit of work (`SQLStorage.transaction`) runs it: `MemoryStore` calls
it directly, `AsyncMemoryStore` inside SQLAlchemy's greenlet bridge, where the
same hooks are awaited (`memstate_sql.hooks.HookSet`).

Each operation writes its fact rows, then its log entries, then delivers the
hook notifications, all before COMMIT: a hook that raises becomes `HookError`
and the transaction rolls back.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from memstate_sql import jsondoc, logentry
from memstate_sql import rollback as rb
from memstate_sql import vectors as vx
from memstate_sql.errors import (
    ConflictError,
    FactNotFound,
    RetryUnitOfWork,
    RollbackConflictError,
    RollbackHorizonError,
    ValidationFailed,
)
from memstate_sql.facts import Fact, Operation
from memstate_sql.hooks import HookSet, Notification
from memstate_sql.records import FactState, RollbackPlan, TxRecord, singleton_token
from memstate_sql.registry import Constraint, SchemaRegistry
from memstate_sql.repository import Repository
from memstate_sql.timeutil import format_iso, utcnow
from memstate_sql.validation import (
    MAX_ROWS,
    check_expiry,
    check_key,
    check_version,
    immutable_error,
    new_state,
    new_state_text,
    state_from_doc,
    version_conflict,
)


def write(repo: Repository, existing: FactState | None, new: FactState, *, allow_immutable: bool = False) -> FactState:
    """Insert `new`, or write it over `existing` (bumping the version). The one way a fact row is written."""
    if existing is None:
        new = new.evolve(version=1)
        repo.insert(new)
        return new
    new = new.evolve(version=existing.version + 1)
    if not repo.update(new, expected_version=existing.version, allow_immutable=allow_immutable):
        raise _not_written(existing, allow_immutable)
    return new


def _not_written(existing: FactState, allow_immutable: bool) -> Exception:
    """Why a versioned write over `existing` matched no row: the row is immutable, or it changed between
    our read and our write (re-run the unit of work)."""
    if existing.immutable and not allow_immutable:
        return immutable_error(existing.type, existing.id)
    return RetryUnitOfWork()


def rewrite(
    repo: Repository,
    existing: FactState,
    new: FactState,
    op: Operation,
    session_id: str | None,
    actor: str | None,
    reason: str | None,
    *,
    allow_immutable: bool = False,
) -> FactState:
    """`write` of `new` over `existing` and `log` of the change, in one statement where the database has
    one (`Repository.update_logged`). Fails as `write` does."""
    written = rewritten(repo, existing, new, op, session_id, actor, reason, allow_immutable=allow_immutable)
    if written is None:
        raise _not_written(existing, allow_immutable)
    return written


def rewritten(
    repo: Repository,
    existing: FactState,
    new: FactState,
    op: Operation,
    session_id: str | None,
    actor: str | None,
    reason: str | None,
    *,
    allow_immutable: bool = False,
) -> FactState | None:
    """`rewrite`, or None where the row is no longer at `existing`'s version (nothing written)."""
    new = new.evolve(version=existing.version + 1)
    logged = entry(op, session_id, new.id, existing, new, actor, reason)
    if not repo.update_logged(new, logged, expected_version=existing.version, allow_immutable=allow_immutable):
        return None
    return new


def log(
    repo: Repository,
    op: Operation,
    session_id: str | None,
    fact_id: str | None,
    before: FactState | None,
    after: FactState | None,
    actor: str | None,
    reason: str | None,
    *,
    documents: list[dict[str, Any]] | None = None,
    entry_id: str | None = None,
    reverted_by: str | None = None,
) -> None:
    """Append the log entry of one change (see `memstate_sql.logentry` for the kinds)."""
    repo.append(**entry(op, session_id, fact_id, before, after, actor, reason, documents, entry_id, reverted_by))


def entry(
    op: Operation,
    session_id: str | None,
    fact_id: str | None,
    before: FactState | None,
    after: FactState | None,
    actor: str | None,
    reason: str | None,
    documents: list[dict[str, Any]] | None = None,
    entry_id: str | None = None,
    reverted_by: str | None = None,
) -> dict[str, Any]:
    """The fields of a change's log entry (`Repository.append`'s arguments)."""
    return {
        "uuid": entry_id or str(uuid.uuid4()),
        "op": op.value,
        "session_id": session_id,
        "fact_id": fact_id,
        "ts": utcnow(),
        "fact_before": None if before is None else before.doc(),
        "fact_after": None if after is None else after.doc(),
        "actor": actor,
        "reason": reason,
        "discarded": documents,
        "reverted_by": reverted_by,
    }


def history(repo: Repository, fact_id: str) -> list[TxRecord]:
    """Every log entry that changed the fact, oldest first: its own entries, the session discards
    that deleted it and the rollbacks that restored it (including entries a rollback undid)."""
    own = repo.fact_history(fact_id)
    sessions = {e.session_id for e in own if e.session_id is not None}
    sessions |= {
        doc["session_id"]
        for e in own
        for doc in (e.fact_before, e.fact_after)
        if doc is not None and isinstance(doc.get("session_id"), str)
    }
    current = repo.get(fact_id)
    if current is not None and current.session_id is not None:
        sessions.add(current.session_id)
    others = [e for e in repo.multi_fact_entries(sorted(sessions)) if logentry.touches(e, fact_id)]
    seen = {e.uuid for e in own}
    return sorted(own + [e for e in others if e.uuid not in seen], key=lambda e: e.seq)


class _GivenIds:
    """Whether a lone commit is worth trying for a fact whose id the caller gave (`commit_alone`): a new id
    is one statement alone, a taken one (a commit that updates) costs that statement in vain before the
    transaction. After `_TAKEN` taken ids in a row, only every `_PROBE`-th such commit tries, until one
    finds its id new. Unsynchronised on purpose: a lost count between threads changes a guess, never a
    result."""

    __slots__ = ("calls", "taken")

    def __init__(self) -> None:
        self.taken = 0
        self.calls = 0

    def worth_trying(self) -> bool:
        if self.taken < _TAKEN:
            return True
        self.calls += 1
        return self.calls % _PROBE == 0

    def found(self, *, taken: bool) -> None:
        self.taken = min(self.taken + 1, _TAKEN) if taken else 0


_TAKEN = 3
_PROBE = 16


class Operations:
    """The semantics of every store operation, given the store's schemas (`registry`), the storage's
    constraints (shared by every store on it) and the store's hooks."""

    def __init__(
        self,
        hooks: HookSet,
        constraints: dict[str, Constraint],
        max_bytes: int,
        vectors: vx.VectorIndex | None = None,
    ) -> None:
        self.hooks = hooks
        self.registry = SchemaRegistry()
        self.constraints = constraints
        self.max_bytes = max_bytes
        #: The storage's in-database vector index (`memstate_sql.vectors`), kept in each operation's transaction.
        self.vectors = vectors
        self._ids = _GivenIds()

    @property
    def writes_alone(self) -> bool:
        """Whether a write's statements are all the operation sends: no hook to tell, no vector to keep
        (then a one-statement write can run alone, in autocommit: `commit_alone`, `update_alone`)."""
        return self.vectors is None and not self.hooks

    def _deliver(self, repo: Repository, calls: list[Notification]) -> None:
        """After an operation's writes, before COMMIT: its vectors, then its hooks."""
        if self.vectors is not None:
            vx.apply(repo, self.vectors, calls)
        self.hooks.deliver(calls)

    # ------------------------------------------------------------------ writes

    def commit(
        self,
        repo: Repository,
        fact: Fact,
        session_id: str | None,
        ephemeral: bool,
        actor: str | None,
        reason: str | None,
        ttl: Any = None,
        expires_at: Any = None,
    ) -> str:
        written = self._commit(repo, fact, session_id, ephemeral, actor, reason, ttl, expires_at, alone=False)
        assert written is not None  # keep: only a lone commit gives up
        return written

    def commit_alone(
        self,
        repo: Repository,
        fact: Fact,
        session_id: str | None,
        ephemeral: bool,
        actor: str | None,
        reason: str | None,
        ttl: Any = None,
        expires_at: Any = None,
    ) -> str | None:
        """`commit` as one self-contained statement (the unit of work runs it in autocommit), or None,
        having written nothing, where the commit takes more: then `commit` runs, in a transaction."""
        if not self.writes_alone or not isinstance(fact, Fact):
            return None
        constraint = self.constraints.get(fact.type)
        if constraint is not None and constraint.singleton_key is not None:
            return None  # a singleton's key may be taken: the general way reads it, locked
        given = "id" in fact.model_fields_set
        if given and not self._ids.worth_trying():
            return None
        written = self._commit(repo, fact, session_id, ephemeral, actor, reason, ttl, expires_at, alone=True)
        if given:
            self._ids.found(taken=written is None)
        return written

    def _commit(
        self,
        repo: Repository,
        fact: Fact,
        session_id: str | None,
        ephemeral: bool,
        actor: str | None,
        reason: str | None,
        ttl: Any,
        expires_at: Any,
        *,
        alone: bool,
    ) -> str | None:
        if not isinstance(fact, Fact):
            raise ValidationFailed(f"commit() takes a Fact, got {type(fact).__name__}")
        check_key("actor", actor, required=False)
        payload = self.registry.validate(fact.type, fact.payload)
        requested = session_id or fact.session_id
        constraint = self.constraints.get(fact.type)
        expiry = check_expiry(ttl, expires_at, repo.now)
        if expiry is None and ttl is None and expires_at is None and constraint is not None and constraint.ttl:
            expiry = repo.now + constraint.ttl
        new = new_state(fact, payload, requested, self.constraints, self.max_bytes, expires_at=expiry)

        # Expired rows not swept yet are found too: a commit replaces them (an expired fact no longer
        # exists for any reader, but its id and singleton key are still taken until the sweep).
        existing: FactState | None = None
        if new.singleton is None:
            if alone or "id" not in fact.model_fields_set:
                # The common case, a new fact with the id it was given at construction (a fresh UUID, so
                # no row holds it unless this Fact was committed before): one INSERT that does nothing
                # when the id is taken (MySQL: a plain INSERT whose duplicate-key failure undoes that
                # statement alone), and no read; when it is taken, the general way below.
                inserted = new.evolve(version=1)
                op = Operation.COMMIT_EPHEMERAL if ephemeral else Operation.COMMIT
                if repo.insert_absent_supported and repo.insert_logged(
                    inserted, entry(op, requested, inserted.id, None, inserted, actor, reason)
                ):
                    self._deliver(repo, [(op, inserted.id, inserted)])
                    return inserted.id
            if alone:
                return None  # the id is taken: nothing was written
        elif alone:
            return None
        else:
            existing = repo.find_singleton(new.type, new.singleton, lock=True, expired=True)
            live = existing is not None and not _expired(repo, existing)
            if live and constraint is not None and constraint.immutable:
                assert constraint.singleton_key is not None
                raise immutable_error(fact.type, new.payload.get(constraint.singleton_key))
        if existing is None:
            existing = repo.get(new.id, lock=True, expired=True)
        replacing = existing is not None and _expired(repo, existing)
        if existing is not None and existing.immutable and not replacing:
            raise immutable_error(existing.type, existing.id)

        if existing is None:
            op = Operation.COMMIT_EPHEMERAL if ephemeral else Operation.COMMIT
        elif replacing:
            op = Operation.UPDATE  # over an expired, unswept row: the fact starts anew, in the caller's session
            new = new.evolve(id=existing.id)
        else:
            op = Operation.UPDATE
            # A commit never pulls a fact that lives elsewhere into the caller's session (so
            # discard_session cannot delete it); a commit without a session makes it global.
            new = new.evolve(id=existing.id, session_id=None if requested is None else existing.session_id)
        if existing is None:
            written = write(repo, existing, new)
            log(repo, op, requested, written.id, existing, written, actor, reason)
        else:
            written = rewrite(repo, existing, new, op, requested, actor, reason, allow_immutable=replacing)
        self._deliver(repo, [(op, written.id, written)])
        return written.id

    def commit_many(
        self,
        repo: Repository,
        facts: Iterable[Fact],
        session_id: str | None,
        ephemeral: bool,
        actor: str | None,
        reason: str | None,
        ttl: Any = None,
        expires_at: Any = None,
    ) -> list[str]:
        """`commit` of every fact, in order, in the caller's one transaction; returns their ids.

        Each fact gets its own log entry and hook notifications (delivered after all writes, before
        COMMIT). When no two facts of the batch resolve to the same row (same id or singleton key) and
        none moves an existing fact to another singleton key, the rows are looked up, inserted,
        updated and logged with a few multi-row statements; otherwise the facts are committed one by
        one (same result, same transaction)."""
        if isinstance(facts, Fact | str | bytes | Mapping) or not isinstance(facts, Iterable):
            raise ValidationFailed(f"commit_many() takes an iterable of Facts, got {type(facts).__name__}")
        facts = list(facts)
        for fact in facts:
            if not isinstance(fact, Fact):
                raise ValidationFailed(f"commit_many() takes Facts, got {type(fact).__name__}")
        check_key("actor", actor, required=False)
        if not facts:
            return []
        expiry = check_expiry(ttl, expires_at, repo.now)  # the arguments' errors first, before any row is read
        texts: dict[str, str] = {}  # each new row's payload as `check_payload` serialized it: not serialized again
        news = [
            self._new_state(repo, fact, session_id, expiry, ttl is None and expires_at is None, texts) for fact in facts
        ]
        keys = [(n.type, n.singleton) for n in news if n.singleton is not None]
        if len({n.id for n in news}) < len(news) or len(set(keys)) < len(keys):
            # Facts of the batch share an id or a singleton key: the general path, fact by fact.
            return [self.commit(repo, fact, session_id, ephemeral, actor, reason, ttl, expires_at) for fact in facts]
        # The facts without a singleton key: their rows in multi-row INSERTs that skip a taken id, where the
        # database has them (no read first: most ids of a batch are new); the rest (taken ids, singleton
        # keys, MySQL) are read under lock, as `commit` reads them.
        inserted: dict[str, FactState] = {}
        if repo.insert_absent_many_supported:
            fresh = [_first_version(n) for n in news if n.singleton is None]
            written_ids = repo.insert_absent_many(fresh, texts)
            inserted = {n.id: n for n in fresh if n.id in written_ids}
        rest = [n for n in news if n.id not in inserted]
        by_id, by_key = repo.lookup_for_batch(
            [n.id for n in rest], [(n.type, n.singleton) for n in rest if n.singleton]
        )
        plan = _batch_plan(repo, news, by_id, by_key)
        if plan is None:
            # Rows shared through the table (a singleton key held by the row of another fact's id, ...):
            # undo the inserts (same transaction, nothing told yet), then the general path, fact by fact.
            repo.delete_many(inserted)
            return [self.commit(repo, fact, session_id, ephemeral, actor, reason, ttl, expires_at) for fact in facts]
        inserts: list[FactState] = []
        updates: dict[bool, list[tuple[FactState, int]]] = {False: [], True: []}
        entries: list[TxRecord] = []
        calls: list[Notification] = []
        entry_ids = _uuid4s(len(facts))
        for fact, new, existing, entry_id in zip(facts, news, plan, entry_ids, strict=True):
            requested = session_id or fact.session_id
            replacing = existing is not None and _expired(repo, existing)
            if existing is not None and existing.immutable and not replacing:
                raise immutable_error(existing.type, existing.id)
            if existing is None:
                op = Operation.COMMIT_EPHEMERAL if ephemeral else Operation.COMMIT
                done = inserted.get(new.id)
                if done is None:
                    written = _first_version(new)
                    inserts.append(written)
                else:
                    written = done
            else:
                op = Operation.UPDATE
                if replacing:
                    new = new.evolve(id=existing.id)
                else:
                    new = new.evolve(id=existing.id, session_id=None if requested is None else existing.session_id)
                written = new.evolve(version=existing.version + 1)
                updates[replacing].append((written, existing.version))
            entries.append(
                TxRecord(
                    seq=0,
                    uuid=entry_id,
                    op=op.value,
                    session_id=requested,
                    fact_id=written.id,
                    actor=actor,
                    reason=reason,
                    ts=utcnow(),
                    fact_before=None if existing is None else existing.doc(),
                    fact_after=written.doc(),
                    discarded=None,
                    reverted_by=None,
                )
            )
            calls.append((op, written.id, written))
        for allow, writes in updates.items():
            if not repo.update_many(writes, allow_immutable=allow):
                raise RetryUnitOfWork()  # a row changed between the locked read and the write
        repo.insert_facts(inserts, texts)
        repo.insert_log(entries)
        self._deliver(repo, calls)
        return [fact_id for _, fact_id, _ in calls]

    def _new_state(
        self,
        repo: Repository,
        fact: Fact,
        session_id: str | None,
        expiry: datetime | None,
        by_type: bool,
        texts: dict[str, str],
    ) -> FactState:
        """The validated row `commit` would write for `fact` (before looking at the table), expiring at
        `expiry` (the checked ttl/expires_at arguments) or, with `by_type` (neither given), after its
        type's `Constraint.ttl`; its serialized payload goes in `texts`, under its id."""
        payload = self.registry.validate(fact.type, fact.payload)
        constraint = self.constraints.get(fact.type)
        if by_type and constraint is not None and constraint.ttl:
            expiry = repo.now + constraint.ttl
        requested = session_id or fact.session_id
        state, texts[fact.id] = new_state_text(
            fact, payload, requested, self.constraints, self.max_bytes, expires_at=expiry
        )
        return state

    def update(
        self,
        repo: Repository,
        fact_id: str,
        patch: Mapping[str, Any],
        actor: str | None,
        reason: str | None,
        expected_version: int | None = None,
    ) -> str:
        written = self._update(repo, fact_id, patch, actor, reason, expected_version, alone=False)
        assert written is not None  # keep: only a lone update gives up
        return written

    def update_alone(
        self,
        repo: Repository,
        fact_id: str,
        patch: Mapping[str, Any],
        actor: str | None,
        reason: str | None,
        expected_version: int | None = None,
    ) -> str | None:
        """`update` as an unlocked read and one self-contained write (the unit of work runs both in
        autocommit), the write conditional on the version read: optimistic, where `update` locks the
        row first. None, having written nothing, wherever the update is not the plain case (no such
        fact, another version than expected, immutable, a changed singleton key, a concurrent write):
        then `update` runs, in a transaction, and answers (or refuses) as always."""
        if not self.writes_alone:
            return None
        return self._update(repo, fact_id, patch, actor, reason, expected_version, alone=True)

    def _update(
        self,
        repo: Repository,
        fact_id: str,
        patch: Mapping[str, Any],
        actor: str | None,
        reason: str | None,
        expected_version: int | None,
        *,
        alone: bool,
    ) -> str | None:
        check_key("fact id", fact_id, required=True)
        check_key("actor", actor, required=False)
        expected = check_version(expected_version)
        if not isinstance(patch, Mapping):
            raise ValidationFailed(f"patch must be a mapping, got {type(patch).__name__}")
        extra = set(patch) - {"payload"}
        if extra:
            raise ValidationFailed(
                f"update() patches the payload only; unsupported patch keys: {', '.join(sorted(map(str, extra)))}"
            )
        if "payload" not in patch or not isinstance(patch["payload"], Mapping):
            raise ValidationFailed("update() needs a patch of the form {'payload': {...}}")
        existing = repo.get(fact_id, lock=not alone)
        if alone and (
            existing is None or existing.immutable or (expected is not None and existing.version != expected)
        ):
            return None  # refused under the row's lock, by `update`
        if existing is None:
            raise FactNotFound("Fact not found")
        if expected is not None and existing.version != expected:
            raise version_conflict(fact_id, existing.version, expected)
        if existing.immutable:
            raise immutable_error(existing.type, existing.id)
        merged = {**existing.payload, **patch["payload"]}
        payload = self.registry.validate(existing.type, merged)
        probe = Fact(id=existing.id, type=existing.type, payload={}, source=existing.source, ts=utcnow())
        new = new_state(probe, payload, existing.session_id, self.constraints, self.max_bytes)
        if new.singleton is not None and new.singleton != existing.singleton:
            if alone:
                return None
            other = repo.find_singleton(new.type, new.singleton, lock=True)
            if other is not None and other.id != existing.id:
                raise ConflictError(
                    f"update of {fact_id} would give it the singleton key of fact {other.id} ({existing.type})"
                )
        # A fact saved with a document of its own keeps it, with the new payload and ts (memstate's update).
        new = new.evolve(immutable=existing.immutable, expires_at=existing.expires_at).carry(existing)
        if alone:
            # Conditional on the version read: a write in between makes it match nothing, write nothing.
            lone = rewritten(repo, existing, new, Operation.UPDATE, existing.session_id, actor, reason)
            return None if lone is None else fact_id
        written = rewrite(repo, existing, new, Operation.UPDATE, existing.session_id, actor, reason)
        self._deliver(repo, [(Operation.UPDATE, fact_id, written)])
        return fact_id

    def delete(
        self,
        repo: Repository,
        session_id: str | None,
        fact_id: str,
        actor: str | None,
        reason: str | None,
        expected_version: int | None = None,
    ) -> str:
        check_key("fact id", fact_id, required=True)
        check_key("session_id", session_id, required=False)
        check_key("actor", actor, required=False)
        expected = check_version(expected_version)
        existing = repo.get(fact_id, lock=True)
        if existing is None:
            raise FactNotFound("Fact not found")
        if expected is not None and existing.version != expected:
            raise version_conflict(fact_id, existing.version, expected)
        if not repo.delete(fact_id, expected_version=existing.version):
            raise RetryUnitOfWork()
        log(repo, Operation.DELETE, session_id, fact_id, existing, None, actor, reason)
        self._deliver(repo, [(Operation.DELETE, fact_id, existing)])
        return fact_id

    def promote_session(
        self,
        repo: Repository,
        session_id: str,
        selector: Callable[[dict[str, Any]], bool] | None,
        actor: str | None,
        reason: str | None,
    ) -> list[str]:
        check_key("session_id", session_id, required=True)
        check_key("actor", actor, required=False)
        calls: list[Notification] = []
        for existing in repo.session_facts(session_id, lock=True):
            if selector is not None and not selector(existing.doc()):
                continue
            written = write(repo, existing, existing.evolve(session_id=None), allow_immutable=True)
            log(repo, Operation.PROMOTE, session_id, existing.id, existing, written, actor, reason)
            calls.append((Operation.PROMOTE, existing.id, written))
        self._deliver(repo, calls)
        return [fact_id for _, fact_id, _ in calls]

    def discard_session(self, repo: Repository, session_id: str, actor: str | None, reason: str | None) -> int:
        check_key("session_id", session_id, required=True)
        check_key("actor", actor, required=False)
        facts = repo.session_facts(session_id, lock=True)
        if not facts:
            return 0
        repo.delete_many(f.id for f in facts)
        log(
            repo,
            Operation.DISCARD_SESSION,
            session_id,
            facts[0].id if len(facts) == 1 else None,
            None,
            None,
            actor,
            reason or f"Session {session_id} cleared ({len(facts)} facts)",
            documents=[f.doc() for f in facts],
        )
        self._deliver(repo, [(Operation.DISCARD_SESSION, f.id, f) for f in facts])
        return len(facts)

    # ------------------------------------------------------------------ rollback

    @staticmethod
    def _rollback_entries(repo: Repository, session_id: str | None, steps: int, lock: bool) -> list[TxRecord]:
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValidationFailed(f"steps must be an integer, got {type(steps).__name__}")
        check_key("session_id", session_id, required=False)
        if steps <= 0:
            return []
        entries = repo.tx_log(session_id, limit=min(steps, MAX_ROWS), lock=lock, exclude_ops=logentry.NOT_UNDOABLE_OPS)
        if len(entries) < steps:
            for record in repo.compaction_records():
                removed = [d for d in record.discarded or [] if d.get("session_id") == session_id and d.get("removed")]
                if removed:
                    raise RollbackHorizonError(
                        f"rollback of {session_id!r} by {steps} steps needs log entries that compact_log removed "
                        f"(logged before {removed[0].get('horizon')}); {len(entries)} remain: roll back at most "
                        f"{len(entries)} steps"
                    )
        return entries

    def plan_rollback(self, repo: Repository, session_id: str | None, steps: int) -> RollbackPlan:
        """What `rollback(session_id, steps)` would undo and which later changes it would override."""
        entries = self._rollback_entries(repo, session_id, steps, lock=False)
        return rb.plan(repo, session_id, steps, entries, read=repo.facts_by_id)

    def rollback(
        self,
        repo: Repository,
        session_id: str | None,
        steps: int,
        force: bool = False,
        actor: str | None = None,
        reason: str | None = None,
    ) -> list[TxRecord]:
        """Undo the session's newest `steps` active log entries, newest first, in one transaction.

        Refuses (`RollbackConflictError`, nothing changed) when a fact it would
        restore or delete changed afterwards outside the undone entries, unless
        `force`. Undone entries stay in the table, marked with the rollback's id,
        and leave the session's active log (`get_tx_log`), as memstate's
        rollback removes them. The rollback itself is recorded by one ROLLBACK
        entry whose uuid is that id (`memstate_sql.logentry`): who, why, when and
        what it restored. Returns the undone entries.
        """
        check_key("actor", actor, required=False)
        check_key("session_id", session_id, required=False)
        if not isinstance(steps, bool) and isinstance(steps, int) and steps > 0:
            # First the session's row: its writers wait for this rollback (and it for them) before it
            # reads the log, so "the newest entries" are the newest in the session's order. On Galera,
            # a node that has not applied the session's last commit yet fails certification and retries.
            repo.lock_session(session_id)
        entries = self._rollback_entries(repo, session_id, steps, lock=True)
        if not entries:
            return []
        # The plan's read locks the facts; `states` keeps what it read, then what this rollback wrote.
        states: dict[str, FactState] = {}

        def read(ids: Sequence[str]) -> Mapping[str, FactState]:
            states.update(repo.facts_by_id(ids, lock=True))
            return states

        plan = rb.plan(repo, session_id, steps, entries, read=read)
        recheck = rb.may_change_since(repo, rb.fact_ids(entries), states)
        rollback_id = str(uuid.uuid4())
        overridden: set[str] = set()
        if plan.conflicts:
            discards = [c for c in plan.conflicts if c.later_op == Operation.DISCARD_SESSION.value]
            if not force or discards:
                detail = rb.describe(discards if force else plan.conflicts)
                hint = (
                    "a later session discard cannot be overridden; roll that session back first"
                    if force
                    else "pass force=True to override them"
                )
                raise RollbackConflictError(
                    f"rollback of {session_id!r} would override later changes ({hint}): {detail}", plan
                )
            overridden = {c.later_uuid for c in plan.conflicts if c.later_uuid is not None}
        calls: list[Notification] = []
        changes: dict[str, logentry.Effect] = {}
        for action in plan.actions:
            now = states.get(action.fact_id)
            after: FactState | None = now
            if action.action == "restore":
                assert action.restore_to is not None
                # Version-checked (an UPDATE of the version read, or an INSERT): a row that changed or
                # appeared since the plan's read (it could not be locked) re-runs the unit of work.
                after = states[action.fact_id] = self._restore(repo, now, action.restore_to)
                calls.append((Operation.UPDATE if now is not None else Operation.COMMIT, after.id, after))
            elif action.action == "delete":
                if now is None or not repo.delete(action.fact_id, expected_version=now.version):
                    raise RetryUnitOfWork()  # the row changed since the plan read it: re-plan
                del states[action.fact_id]
                after = None
                calls.append((Operation.DELETE, action.fact_id, None))
            first = changes.get(action.fact_id)
            before = first.before if first is not None else (None if now is None else now.doc())
            changes[action.fact_id] = logentry.Effect(action.fact_id, before, None if after is None else after.doc())
        if recheck:
            planned = {c.later_uuid for c in plan.conflicts}
            if any(other.uuid not in planned for _, _, other in rb.later_entries(repo, entries)):
                # A writer logged a change to one of the facts between the plan and the writes: re-plan.
                raise RetryUnitOfWork()
        only = next(iter(changes)) if len(changes) == 1 else None
        single = changes[only] if only is not None else None
        repo.append(
            uuid=rollback_id,
            op=Operation.ROLLBACK.value,
            session_id=session_id,
            fact_id=only,
            ts=utcnow(),
            fact_before=None if single is None else single.before,
            fact_after=None if single is None else single.after,
            actor=actor,
            reason=reason or _rollback_reason(session_id, len(entries), force and bool(overridden)),
            discarded=logentry.rollback_record(changes.values()),
            reverted_by=rollback_id,  # outside the active log: it cannot itself be rolled back
            reverting=[e.uuid for e in entries] + sorted(overridden),  # marked undone by this rollback
        )
        self._deliver(repo, calls)
        return entries

    def _restore(self, repo: Repository, current: FactState | None, doc: Mapping[str, Any]) -> FactState:
        target = state_from_doc(doc, self.constraints, max_bytes=max(self.max_bytes, len(jsondoc.dumps(doc)) * 4))
        if current is not None:
            target = target.evolve(immutable=current.immutable)
        return write(repo, current, target, allow_immutable=True)

    # ------------------------------------------------------------------ expiry

    def sweep(self, repo: Repository, batch_size: int, exclusive: str | None = None) -> list[str] | None:
        """Delete up to `batch_size` expired facts of the namespace, each with its EXPIRE log entry;
        hooks are told DELETE (memstate's hooks drop a fact's vectors on DELETE). Returns their ids.

        `exclusive`: the name of a lock only one sweeper in all processes may hold; when another holds
        it, nothing is done and None is returned (the background sweeper's "one at a time")."""
        if exclusive is not None:
            with repo.dialect.try_exclusive(repo.conn, exclusive) as mine:
                return self.sweep(repo, batch_size) if mine else None
        facts = repo.expired(batch_size)
        if not facts:
            return []
        repo.delete_many(f.id for f in facts)
        entries = [
            TxRecord(
                seq=0,
                uuid=str(uuid.uuid4()),
                op=Operation.EXPIRE.value,
                session_id=None,
                fact_id=f.id,
                actor=None,
                reason=f"expired at {f.doc().get('expires_at')}",
                ts=repo.now,
                fact_before=f.doc(),
                fact_after=None,
                discarded=None,
                reverted_by=None,
            )
            for f in facts
        ]
        repo.insert_log(entries)
        self._deliver(repo, [(Operation.DELETE, f.id, f) for f in facts])
        return [f.id for f in facts]

    # ------------------------------------------------------------------ log retention

    def compact(self, repo: Repository, before: datetime, after_seq: int, batch_size: int) -> tuple[int, int | None]:
        """Remove up to `batch_size` entries logged before `before` (after seq `after_seq`), keeping each
        existing fact's newest active entry (so the log still accounts for every row and its last change
        can be rolled back). Writes one COMPACT record naming the horizon and, per session, how many of its
        active entries went. Returns (entries removed, the last seq examined; None when done)."""
        entries = repo.compactable(before, after_seq, batch_size)
        if not entries:
            return 0, None
        keep = repo.latest_active_seqs(sorted({e.fact_id for e in entries if e.fact_id}))
        doomed = [e for e in entries if not (e.fact_id is not None and keep.get(e.fact_id) == e.seq)]
        removed = repo.delete_entries([e.seq for e in doomed])
        if removed:
            horizon = format_iso(before)
            sessions: dict[str | None, int] = {}
            for e in doomed:
                if logentry.is_active(e):
                    sessions[e.session_id] = sessions.get(e.session_id, 0) + 1
            record_id = str(uuid.uuid4())
            repo.append(
                uuid=record_id,
                op=Operation.COMPACT.value,
                session_id=None,
                fact_id=None,
                ts=repo.now,
                reason=f"{removed} log entries logged before {horizon} removed",
                discarded=[{"horizon": horizon, "session_id": s, "removed": n} for s, n in sessions.items()]
                or [{"horizon": horizon, "session_id": None, "removed": 0}],
                reverted_by=record_id,  # outside the active log
            )
        return removed, (entries[-1].seq if len(entries) == batch_size else None)

    # ------------------------------------------------------------------ constraints over existing rows

    def apply_constraints(self, repo: Repository, types: Sequence[str]) -> None:
        """Make the facts of `types` that were stored before their constraint was registered obey it
        (facts imported from memstate, written by another application): give them their singleton key
        and their immutable flag. Two existing facts with the same key are refused with `ConflictError`."""
        for typename in types:
            constraint = self.constraints.get(typename)
            if constraint is None:
                continue
            if constraint.immutable:
                repo.mark_immutable(typename)
            key = constraint.singleton_key
            if key is None:
                continue
            tokens: dict[str, str] = {}
            for fact in repo.facts_without_singleton(typename):
                value = fact.payload.get(key)
                if value is not None:
                    tokens[fact.id] = singleton_token(value)
            if not tokens:
                continue
            owners: dict[str, str] = {}
            for fid, token in sorted(tokens.items()):
                holder = owners.get(token) or (found.id if (found := repo.find_singleton(typename, token)) else None)
                if holder is not None and holder != fid:
                    raise ConflictError(
                        f"facts {holder} and {fid} of type {typename!r} have the same singleton key "
                        f"{key}={fact_key(token)}; delete or change one of them (memstate-sql get/history, "
                        "MemoryStore.delete) before registering Constraint(singleton_key=...)"
                    )
                owners[token] = fid
            repo.set_singletons(tokens)

    # ------------------------------------------------------------------ reads

    @staticmethod
    def hydrate(repo: Repository, hits: Sequence[tuple[str, float]]) -> list[tuple[FactState, float]]:
        """The current rows of the hooks' hits, as memstate's `search` gives them: in the hooks' order
        (a hook's scores may be similarities or distances: its own order is the ranking), one per fact
        at its first place with its last score; hits whose fact no longer exists are dropped."""
        scores: dict[str, float] = {}
        for fact_id, score in hits:
            scores[fact_id] = score
        found = repo.get_many(list(scores))
        return [(found[fid], score) for fid, score in scores.items() if fid in found]


def _batch_plan(
    repo: Repository,
    news: Sequence[FactState],
    by_id: Mapping[str, FactState],
    by_key: Mapping[tuple[str, str], FactState],
) -> list[FactState | None] | None:
    """The existing row each new fact of a batch replaces (None: a new row), as `Operations.commit` finds
    it (singleton key first, then id); None when the batch cannot be written in bulk: two facts resolve
    to one row or one singleton key, or a fact would move to another key (order-dependent)."""
    targets: list[FactState | None] = []
    rows: set[str] = set()
    keys: set[tuple[str, str]] = set()
    for new in news:
        existing = by_key.get((new.type, new.singleton)) if new.singleton is not None else None
        if existing is not None and new.immutable and not _expired(repo, existing):
            return None  # refused: `Operations.commit` raises the error it raises for one fact
        if existing is None:
            existing = by_id.get(new.id)
        if existing is not None and existing.singleton is not None and existing.singleton != new.singleton:
            return None
        row = existing.id if existing is not None else new.id
        if row in rows or (new.singleton is not None and (new.type, new.singleton) in keys):
            return None
        rows.add(row)
        if new.singleton is not None:
            keys.add((new.type, new.singleton))
        targets.append(existing)
    return targets


def _uuid4s(count: int) -> list[str]:
    """`count` random (version 4) UUIDs as `str(uuid.uuid4())` spells them, from one read of the system's
    random source (`uuid.uuid4` reads it once per UUID)."""
    raw = os.urandom(16 * count).hex()
    out = []
    for i in range(0, 32 * count, 32):
        h = raw[i : i + 32]
        variant = "89ab"[int(h[16], 16) & 3]
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}")
    return out


def _first_version(new: FactState) -> FactState:
    """`new` as a new row's first version."""
    return new if new.version == 1 else new.evolve(version=1)


def _expired(repo: Repository, fact: FactState) -> bool:
    return fact.expires_at is not None and fact.expires_at <= repo.now


def fact_key(token: str) -> str:
    return token if len(token) <= 60 else token[:57] + "..."


def _rollback_reason(session_id: str | None, count: int, forced: bool) -> str:
    what = "operation" if count == 1 else "operations"
    return f"Rollback of {count} {what} of session {session_id}" + (" (forced)" if forced else "")
