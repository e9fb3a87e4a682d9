"""The store semantics, implemented once for the sync and the asyncio store.

Every public store operation is a method here that receives a `Repository`
(a connection inside the operation's transaction) and returns the result.
`MemoryStore` runs these methods through the storage's `TransactionRunner`;
`AsyncMemoryStore` runs the same methods through the same runner inside
SQLAlchemy's greenlet bridge. The only thing that differs between the two is
how a hook is invoked (`HookCaller`): called, or awaited.

Hooks run after all of an operation's writes and before COMMIT; a hook that
raises becomes `HookError` and the transaction rolls back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel
from sqlalchemy import exc as sa_exc

from memstate_sql import filters as flt
from memstate_sql import jsondoc
from memstate_sql import rollback as rb
from memstate_sql.errors import ConflictError, HookError, MemoryStoreError, ValidationFailed
from memstate_sql.facts import Fact, Operation, utcnow
from memstate_sql.models import KEY_LENGTH
from memstate_sql.registry import Constraint, SchemaRegistry
from memstate_sql.repository import FactState, Repository, TxRecord, singleton_token
from memstate_sql.uow import JOINED_MARK, RetryUnitOfWork

#: Calls one hook with (op, fact_id, fact); the sync store calls it, the async store awaits it.
HookCaller = Callable[[Any, Operation, str, "Fact | None"], None]


class FactNotFound(MemoryStoreError):
    """No fact has the given id (message: "Fact not found", as in memstate)."""


def check_key(name: str, value: Any, *, required: bool) -> str | None:
    """Validate an envelope string (id, type, session, source, actor)."""
    if value is None:
        if required:
            raise ValidationFailed(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise ValidationFailed(f"{name} must be a string, got {type(value).__name__}")
    if required and not value:
        raise ValidationFailed(f"{name} must not be empty")
    if len(value) > KEY_LENGTH:
        raise ValidationFailed(f"{name} is {len(value)} characters long; the limit is {KEY_LENGTH}")
    if "\x00" in value:
        raise ValidationFailed(f"{name} must not contain U+0000")
    return value


def as_utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def state_from_doc(doc: Mapping[str, Any], constraints: Mapping[str, Constraint], max_bytes: int) -> FactState:
    """Validate a memstate fact document (as given to `save` or found in a log entry)."""
    if not isinstance(doc, Mapping):
        raise ValidationFailed(f"a fact document must be a mapping, got {type(doc).__name__}")
    unknown = set(doc) - {"id", "type", "payload", "source", "session_id", "ts"}
    if unknown:
        raise ValidationFailed(f"unknown fact fields: {', '.join(sorted(map(str, unknown)))}")
    try:
        fact = Fact.model_validate(dict(doc))
    except Exception as exc:
        raise ValidationFailed(f"invalid fact document: {exc}") from exc
    return new_state(fact, fact.payload, fact.session_id, constraints, max_bytes)


def new_state(
    fact: Fact,
    payload: Any,
    session_id: str | None,
    constraints: Mapping[str, Constraint],
    max_bytes: int,
) -> FactState:
    check_key("fact id", fact.id, required=True)
    check_key("fact type", fact.type, required=True)
    check_key("session_id", session_id, required=False)
    check_key("source", fact.source, required=False)
    checked, _ = jsondoc.check_payload(payload, max_bytes)
    constraint = constraints.get(fact.type)
    return FactState(
        id=fact.id,
        type=fact.type,
        payload=checked,
        session_id=session_id,
        source=fact.source,
        ts=as_utc(fact.ts),
        immutable=bool(constraint and constraint.immutable),
        singleton=token_for(constraint, checked),
    )


def token_for(constraint: Constraint | None, payload: Mapping[str, Any]) -> str | None:
    if constraint is None or constraint.singleton_key is None:
        return None
    value = payload.get(constraint.singleton_key)
    return None if value is None else singleton_token(value)


#: Row counts (limits, offsets, rollback steps) above this are clamped: no table holds more rows,
#: and every database accepts it as a 64-bit LIMIT/OFFSET.
MAX_ROWS = 2**62


def check_version(expected_version: Any) -> int | None:
    if expected_version is None:
        return None
    if isinstance(expected_version, bool) or not isinstance(expected_version, int) or expected_version < 1:
        raise ValidationFailed(f"expected_version must be a positive integer, got {expected_version!r}")
    return expected_version


def version_conflict(fact_id: str, actual: int, expected: int) -> ConflictError:
    return ConflictError(f"fact {fact_id} is at version {actual}, not the expected version {expected}")


def immutable_error(fact_type: str, detail: Any) -> ConflictError:
    return ConflictError(f"Immutable constraint violation: {fact_type}:{detail}")


@dataclass
class Pending:
    """Hook notifications collected during an operation, delivered before COMMIT."""

    calls: list[tuple[Operation, str, FactState | None]] = field(default_factory=list)

    def add(self, op: Operation, fact_id: str, state: FactState | None) -> None:
        self.calls.append((op, fact_id, state))


class StoreCore:
    """Schemas, constraints, hooks, and the semantics of every store operation."""

    def __init__(self, hooks: list[Any], call_hook: HookCaller, constraints: dict[str, Constraint], max_bytes: int):
        self.hooks = hooks
        self.call_hook = call_hook
        self.registry = SchemaRegistry()
        self.constraints = constraints
        self.max_bytes = max_bytes

    # ------------------------------------------------------------------ helpers

    def register_schema(self, typename: str, model: type[BaseModel], constraint: Constraint | None) -> None:
        self.registry.register(typename, model)
        if constraint is not None:
            if not isinstance(constraint, Constraint):
                raise ValidationFailed("constraint must be a memstate_sql.Constraint")
            self.constraints[typename] = constraint

    def deliver(self, pending: Pending) -> None:
        if not self.hooks:
            return  # no Fact models to build
        for op, fact_id, state in pending.calls:
            fact = None if state is None else Fact.model_validate(state.doc())
            for hook in self.hooks:
                try:
                    self.call_hook(hook, op, fact_id, fact)
                except RetryUnitOfWork:
                    raise
                except Exception as exc:
                    if isinstance(exc, sa_exc.DBAPIError) and getattr(exc, JOINED_MARK, False):
                        # The hook's storage call failed inside this transaction: the unit of work
                        # classifies it (a deadlock is retried, a lost connection reported).
                        raise

                    raise HookError(f"hook {hook!r} failed on {op.value} {fact_id}: {exc!r}") from exc

    @staticmethod
    def _log(
        repo: Repository,
        op: Operation,
        session_id: str | None,
        fact_id: str | None,
        before: FactState | None,
        after: FactState | None,
        actor: str | None,
        reason: str | None,
        discarded: list[dict[str, Any]] | None = None,
    ) -> None:
        repo.append(
            uuid=str(uuid.uuid4()),
            op=op.value,
            session_id=session_id,
            fact_id=fact_id,
            ts=utcnow(),
            fact_before=None if before is None else before.doc(),
            fact_after=None if after is None else after.doc(),
            actor=actor,
            reason=reason,
            discarded=discarded,
        )

    @staticmethod
    def write(
        repo: Repository, existing: FactState | None, new: FactState, *, allow_immutable: bool = False
    ) -> FactState:
        """Insert `new`, or write it over `existing` (bumping the version)."""
        if existing is None:
            new = new.evolve(version=1)
            repo.insert(new)
            return new
        new = new.evolve(version=existing.version + 1)
        if not repo.update(new, expected_version=existing.version, allow_immutable=allow_immutable):
            if existing.immutable and not allow_immutable:
                raise immutable_error(existing.type, existing.id)
            # The row changed between our read and our write: re-run the unit of work.
            raise RetryUnitOfWork()
        return new

    # ------------------------------------------------------------------ operations

    def commit(
        self,
        repo: Repository,
        fact: Fact,
        session_id: str | None,
        ephemeral: bool,
        actor: str | None,
        reason: str | None,
    ) -> str:
        if not isinstance(fact, Fact):
            raise ValidationFailed(f"commit() takes a Fact, got {type(fact).__name__}")
        check_key("actor", actor, required=False)
        payload = self.registry.validate(fact.type, fact.payload)
        requested = session_id or fact.session_id
        new = new_state(fact, payload, requested, self.constraints, self.max_bytes)
        constraint = self.constraints.get(fact.type)

        existing: FactState | None = None
        if new.singleton is not None:
            existing = repo.find_singleton(new.type, new.singleton, lock=True)
            if existing is not None and constraint is not None and constraint.immutable:
                assert constraint.singleton_key is not None
                raise immutable_error(fact.type, new.payload.get(constraint.singleton_key))
        if existing is None:
            existing = repo.get(new.id, lock=True)
        if existing is not None and existing.immutable:
            raise immutable_error(existing.type, existing.id)

        if existing is None:
            op = Operation.COMMIT_EPHEMERAL if ephemeral else Operation.COMMIT
        else:
            op = Operation.UPDATE
            # A commit never pulls a fact that lives elsewhere into the caller's session (so
            # discard_session cannot delete it); a commit without a session makes it global.
            new = new.evolve(id=existing.id, session_id=None if requested is None else existing.session_id)
        written = self.write(repo, existing, new)
        self._log(repo, op, requested, written.id, existing, written, actor, reason)
        pending = Pending()
        pending.add(op, written.id, written)
        self.deliver(pending)
        return written.id

    def update(
        self,
        repo: Repository,
        fact_id: str,
        patch: Mapping[str, Any],
        actor: str | None,
        reason: str | None,
        expected_version: int | None = None,
    ) -> str:
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
        existing = repo.get(fact_id, lock=True)
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
            other = repo.find_singleton(new.type, new.singleton, lock=True)
            if other is not None and other.id != existing.id:
                raise ConflictError(
                    f"update of {fact_id} would give it the singleton key of fact {other.id} ({existing.type})"
                )
        new = new.evolve(immutable=existing.immutable)
        written = self.write(repo, existing, new)
        self._log(repo, Operation.UPDATE, existing.session_id, fact_id, existing, written, actor, reason)
        pending = Pending()
        pending.add(Operation.UPDATE, fact_id, written)
        self.deliver(pending)
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
        self._log(repo, Operation.DELETE, session_id, fact_id, existing, None, actor, reason)
        pending = Pending()
        pending.add(Operation.DELETE, fact_id, existing)
        self.deliver(pending)
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
        pending = Pending()
        promoted: list[str] = []
        for existing in repo.session_facts(session_id, lock=True):
            if selector is not None and not selector(existing.doc()):
                continue
            written = self.write(repo, existing, existing.evolve(session_id=None), allow_immutable=True)
            self._log(repo, Operation.PROMOTE, session_id, existing.id, existing, written, actor, reason)
            pending.add(Operation.PROMOTE, existing.id, written)
            promoted.append(existing.id)
        self.deliver(pending)
        return promoted

    def discard_session(self, repo: Repository, session_id: str, actor: str | None, reason: str | None) -> int:
        check_key("session_id", session_id, required=True)
        facts = repo.session_facts(session_id, lock=True)
        if not facts:
            return 0
        repo.delete_many(f.id for f in facts)
        self._log(
            repo,
            Operation.DISCARD_SESSION,
            session_id,
            None,
            None,
            None,
            actor,
            reason or f"Session {session_id} cleared ({len(facts)} facts)",
            discarded=[f.doc() for f in facts],
        )
        pending = Pending()
        for f in facts:
            pending.add(Operation.DISCARD_SESSION, f.id, f)
        self.deliver(pending)
        return len(facts)

    @staticmethod
    def _rollback_entries(repo: Repository, session_id: str | None, steps: int, lock: bool) -> list[TxRecord]:
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValidationFailed(f"steps must be an integer, got {type(steps).__name__}")
        check_key("session_id", session_id, required=False)
        if steps <= 0:
            return []
        return repo.tx_log(session_id, limit=min(steps, MAX_ROWS), lock=lock)

    def plan_rollback(self, repo: Repository, session_id: str | None, steps: int) -> rb.RollbackPlan:
        """What `rollback(session_id, steps)` would undo and which later changes it would override."""
        entries = self._rollback_entries(repo, session_id, steps, lock=False)
        return rb.plan(repo, session_id, steps, entries, lock=False)

    def rollback(
        self, repo: Repository, session_id: str | None, steps: int, force: bool = False
    ) -> list[dict[str, Any]]:
        """Undo the session's newest `steps` active log entries, newest first, in one transaction.

        Refuses (`RollbackConflictError`, nothing changed) when a fact it would
        restore or delete changed afterwards outside the undone entries, unless
        `force`. Undone entries stay in the table, marked with the rollback's id,
        and leave the session's active log (`get_tx_log`), as memstate's
        rollback removes them. Returns the undone entries.
        """
        entries = self._rollback_entries(repo, session_id, steps, lock=True)
        if not entries:
            return []
        plan = rb.plan(repo, session_id, steps, entries, lock=True)
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
                raise rb.RollbackConflictError(
                    f"rollback of {session_id!r} would override later changes ({hint}): {detail}", plan
                )
            overridden = {c.later_uuid for c in plan.conflicts if c.later_uuid is not None}
        pending = Pending()
        for action in plan.actions:
            now = repo.get(action.fact_id, lock=True)
            if (None if now is None else now.doc()) != action.current:
                # A fact the plan found absent was written since (it could not be locked): re-plan.
                raise RetryUnitOfWork()
            if action.action == "restore":
                assert action.restore_to is not None
                restored, existed = self._restore(repo, action.restore_to)
                pending.add(Operation.UPDATE if existed else Operation.COMMIT, restored.id, restored)
            elif action.action == "delete" and repo.delete(action.fact_id):
                pending.add(Operation.DELETE, action.fact_id, None)
        planned = {c.later_uuid for c in plan.conflicts}
        if any(other.uuid not in planned for _, _, other in rb.later_entries(repo, entries)):
            # A writer logged a change to one of the facts between the plan and the writes: re-plan.
            raise RetryUnitOfWork()
        repo.mark_reverted([e.uuid for e in entries] + sorted(overridden), by=rollback_id)
        self.deliver(pending)
        return [e.doc() for e in entries]

    def _restore(self, repo: Repository, doc: Mapping[str, Any]) -> tuple[FactState, bool]:
        target = state_from_doc(doc, self.constraints, max_bytes=max(self.max_bytes, len(jsondoc.dumps(doc)) * 4))
        current = repo.get(target.id, lock=True)
        if current is not None:
            target = target.evolve(immutable=current.immutable)
        return self.write(repo, current, target, allow_immutable=True), current is not None

    # ------------------------------------------------------------------ reads

    @staticmethod
    def query_filters(filters: Mapping[str, Any] | None, session_id: str | None) -> flt.Node:
        check_key("session_id", session_id, required=False)
        if filters is not None and not isinstance(filters, Mapping):
            raise ValidationFailed(f"filters must be a mapping, got {type(filters).__name__}")
        node = flt.parse(filters)
        if session_id:
            node = flt.All((node, flt.parse({"session_id": session_id})))
        return node

    @staticmethod
    def hydrate(repo: Repository, hits: Sequence[tuple[str, float]]) -> list[tuple[FactState, float]]:
        best: dict[str, float] = {}
        for fact_id, score in hits:
            if fact_id not in best or score > best[fact_id]:
                best[fact_id] = score
        found = repo.get_many(list(best))
        ranked = [(found[fid], score) for fid, score in best.items() if fid in found]
        ranked.sort(key=lambda pair: -pair[1])
        return ranked
