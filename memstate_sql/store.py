"""`MemoryStore`: memstate's store API, one database transaction per operation."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from memstate_sql import vectors
from memstate_sql.errors import MemoryStoreError, ValidationFailed
from memstate_sql.facts import Fact, ScoredFact
from memstate_sql.hooks import HookSet, MemoryHook
from memstate_sql.records import RollbackPlan
from memstate_sql.registry import Constraint
from memstate_sql.repository import Repository
from memstate_sql.storage import SQLStorage
from memstate_sql.validation import MAX_ROWS, query_spec


class MemoryStore:
    """Structured agent memory with schemas, constraints, a transaction log,
    sessions, hooks and rollback, on a SQL database.

    Every mutating method is one database transaction that covers the fact
    rows, their log entries and the hooks' calls: any exception rolls all of
    it back.
    """

    def __init__(self, storage: SQLStorage, hooks: list[MemoryHook] | None = None) -> None:
        if not isinstance(storage, SQLStorage):
            raise ValidationFailed(f"MemoryStore needs a memstate_sql.SQLStorage, got {type(storage).__name__}")
        self.storage = storage
        self._hooks = HookSet(hooks or [])
        self._ops = storage.make_operations(self._hooks)

    @property
    def hooks(self) -> list[Any]:
        return self._hooks.hooks

    def add_hook(self, hook: MemoryHook) -> None:
        self._hooks.hooks.append(hook)

    def register_schema(self, typename: str, model: type[BaseModel], constraint: Constraint | None = None) -> None:
        """Validate the payloads of `typename` with `model`; `constraint` (singleton key, immutability) is
        registered on the storage and applies to every fact of the type, including facts stored before."""
        self._ops.registry.register(typename, model)
        if constraint is not None:
            self.storage.register_constraint(typename, constraint)

    @property
    def _schema_registry(self) -> Any:
        return self._ops.registry

    # ------------------------------------------------------------------ writes

    def commit(
        self,
        fact: Fact,
        session_id: str | None = None,
        ephemeral: bool = False,
        actor: str | None = None,
        reason: str | None = None,
        *,
        ttl: float | timedelta | None = None,
        expires_at: datetime | str | None = None,
    ) -> str:
        """Validate and store `fact` (an update when its id or singleton key exists); returns its id.

        `ttl` (seconds or a timedelta) or `expires_at` (an instant) make the fact expire: from then on
        no reader returns it, and `SQLStorage.sweep` deletes it. Without either, the type's
        `Constraint(ttl=...)` applies, if any; an update keeps the fact's expiry.
        """
        with self._prepared([fact]):
            return self.storage.transaction(
                lambda repo: self._ops.commit(repo, fact, session_id, ephemeral, actor, reason, ttl, expires_at),
                name="commit",
                alone=lambda repo: self._ops.commit_alone(
                    repo, fact, session_id, ephemeral, actor, reason, ttl, expires_at
                ),
            )

    def commit_many(
        self,
        facts: Iterable[Fact],
        session_id: str | None = None,
        ephemeral: bool = False,
        actor: str | None = None,
        reason: str | None = None,
        *,
        ttl: float | timedelta | None = None,
        expires_at: datetime | str | None = None,
    ) -> list[str]:
        """`commit` of many facts in one transaction: all of them or none (a refused fact, a failing hook
        or any database error rolls the whole batch back). Each fact is committed as `commit` would,
        in order (a later fact with the id or singleton key of an earlier one updates it), with its own
        log entry; hooks are told about every fact before COMMIT. Returns the ids, in order. New rows
        and log entries go in multi-row statements (thousands of facts per second and per core)."""
        if isinstance(facts, Fact | str | bytes | Mapping) or not isinstance(facts, Iterable):
            raise ValidationFailed(f"commit_many() takes an iterable of Facts, got {type(facts).__name__}")
        batch = list(facts)  # once: a retried transaction runs the same batch again
        with self._prepared(batch):
            return self.storage.transaction(
                lambda repo: self._ops.commit_many(repo, batch, session_id, ephemeral, actor, reason, ttl, expires_at),
                name="commit_many",
                session_id=session_id,
            )

    def commit_model(
        self,
        model: BaseModel,
        fact_id: str | None = None,
        source: str | None = None,
        session_id: str | None = None,
        ephemeral: bool = False,
        actor: str | None = None,
        reason: str | None = None,
        *,
        ttl: float | timedelta | None = None,
        expires_at: datetime | str | None = None,
    ) -> str:
        """Commit a registered pydantic model instance as a fact of its type (`ttl`/`expires_at` as in `commit`)."""
        if not isinstance(model, BaseModel):
            raise ValidationFailed(
                f"commit_model() expected a pydantic model instance, got {type(model).__name__}"
                + (" (the type name is taken from the model's registration)" if isinstance(model, str) else "")
            )
        schema_type = self._ops.registry.get_type_by_model(type(model))
        if not schema_type:
            raise MemoryStoreError(
                f"Model class '{type(model).__name__}' is not registered. "
                f"Please call memory.register_schema('your_type_name', {type(model).__name__}) first."
            )
        fields: dict[str, Any] = {
            "type": schema_type,
            "payload": model.model_dump(mode="json"),
            "source": source,
        }
        if fact_id is not None:
            fields["id"] = fact_id
        return self.commit(
            Fact(**fields),
            session_id=session_id,
            ephemeral=ephemeral,
            actor=actor,
            reason=reason,
            ttl=ttl,
            expires_at=expires_at,
        )

    def _prepared(self, facts: Sequence[Any]) -> Any:
        """Embed the facts' texts before the transaction opens (no model call under row locks)."""
        index = self.storage.vector_index
        if index is None:
            return vectors.prepared(None, [])
        return vectors.prepared(index, [(f.type, f.payload) for f in facts if isinstance(f, Fact)])

    def update(
        self,
        fact_id: str,
        patch: dict[str, Any],
        actor: str | None = None,
        reason: str | None = None,
        *,
        expected_version: int | None = None,
    ) -> str:
        """Shallow-merge ``patch["payload"]`` into the fact's payload and validate the result.

        With `expected_version`, raise `ConflictError` (changing nothing) unless the
        fact is still at that version (`get_version`): optimistic concurrency.
        """
        ahead: list[tuple[str, Any]] = []
        if self.storage.vector_index is not None and isinstance(patch, Mapping):
            current = self.storage.load(fact_id) if isinstance(fact_id, str) and fact_id else None
            if current is not None and isinstance(patch.get("payload"), Mapping):
                merged = {**current["payload"], **patch["payload"]}
                index = self.storage.vector_index
                if index.text_for(current["type"], merged) != index.text_for(current["type"], current["payload"]):
                    ahead.append((current["type"], merged))  # an unchanged text keeps its vector
        with vectors.prepared(self.storage.vector_index, ahead):
            return self.storage.transaction(
                lambda repo: self._ops.update(repo, fact_id, patch, actor, reason, expected_version),
                alone=lambda repo: self._ops.update_alone(repo, fact_id, patch, actor, reason, expected_version),
                name="update",
                fact_id=fact_id,
            )

    def delete(
        self,
        session_id: str | None,
        fact_id: str,
        actor: str | None = None,
        reason: str | None = None,
        *,
        expected_version: int | None = None,
    ) -> str:
        """Delete the fact (logged under `session_id`); `expected_version` as in `update`."""
        return self.storage.transaction(
            lambda repo: self._ops.delete(repo, session_id, fact_id, actor, reason, expected_version),
            name="delete",
            fact_id=fact_id,
            session_id=session_id,
        )

    def promote_session(
        self,
        session_id: str,
        selector: Callable[[dict[str, Any]], bool] | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> list[str]:
        """Make the session's facts (those `selector` accepts) global; returns their ids."""
        return self.storage.transaction(
            lambda repo: self._ops.promote_session(repo, session_id, selector, actor, reason),
            name="promote_session",
        )

    def discard_session(self, session_id: str, actor: str | None = None, reason: str | None = None) -> int:
        """Delete the facts that belong to the session (logged, hooks notified); returns how many."""
        return self.storage.transaction(
            lambda repo: self._ops.discard_session(repo, session_id, actor, reason), name="discard_session"
        )

    def rollback(
        self,
        session_id: str | None,
        steps: int = 1,
        *,
        force: bool = False,
        actor: str | None = None,
        reason: str | None = None,
    ) -> int:
        """Undo the session's last `steps` operations, newest first, in one transaction.

        ``session_id=None`` undoes operations logged without a session. When a fact
        it would restore or delete was changed afterwards by another operation, the
        rollback raises `RollbackConflictError` (a `ConflictError`) and changes
        nothing; ``force=True`` overrides those later changes (and marks their log
        entries as undone by this rollback). `plan_rollback` is the dry run.

        The rollback is logged as one ROLLBACK entry (who: `actor`, why: `reason`, when, and what
        it restored), visible in `SQLStorage.history`; the undone entries point at it. Returns how
        many operations were undone: 0 when the session has none (memstate returns None).
        """
        undone = self.storage.transaction(
            lambda repo: self._ops.rollback(repo, session_id, steps, bool(force), actor, reason),
            name="rollback",
            session_id=session_id,
        )
        return len(undone)

    def plan_rollback(self, session_id: str | None, steps: int = 1) -> RollbackPlan:
        """Dry run of `rollback`: the entries it would undo, the changes, the conflicts; changes nothing."""
        return self.storage.transaction(
            lambda repo: self._ops.plan_rollback(repo, session_id, steps),
            write=False,
            name="plan_rollback",
            session_id=session_id,
        )

    def sweep(self, limit: int | None = None, *, batch_size: int = 1000, exclusive: bool = False) -> int:
        """`SQLStorage.sweep` with this store's hooks told DELETE for each swept fact (so an external
        index drops it); returns how many facts were deleted."""
        return self.storage.sweep_with(self._ops, limit, batch_size, exclusive=exclusive)

    def reindex(self, batch_size: int = 500) -> int:
        """Repair the vector index of this store's namespace: embed the facts whose vector is missing, at
        another version or of another text (stored before the storage's `vector_index` was configured,
        imported, or written by code without it), `batch_size` facts examined at a time — each batch's
        texts embedded outside any transaction, then written in one — and delete the vectors of facts
        that no longer exist. Returns how many facts were (re)indexed (docs/search.md)."""
        index = self.storage.vector_index
        if index is None:
            raise ValidationFailed("reindex() needs a storage with a vector_index (docs/search.md)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValidationFailed("batch_size must be a positive integer")
        done, after = 0, ""
        while True:
            stale, last = self.storage.transaction(
                functools.partial(vectors.unindexed, index=index, after=after, limit=batch_size),
                write=False,
                name="reindex",
            )
            if last is None:
                break
            if stale:
                ids = [f.id for f in stale]
                with vectors.prepared(index, [(f.type, f.payload) for f in stale]):
                    done += self.storage.transaction(
                        functools.partial(vectors.reindex, index=index, fact_ids=ids), name="reindex"
                    )
            after = last
        self.storage.transaction(vectors.drop_orphans, name="reindex")
        return done

    # ------------------------------------------------------------------ reads

    def get(self, fact_id: str) -> dict[str, Any] | None:
        return self.storage.load(fact_id)

    def get_with_version(self, fact_id: str) -> tuple[dict[str, Any], int] | None:
        """The fact's document and its version (for `update`/`delete` ``expected_version``)."""
        return self.storage.load_with_version(fact_id)

    def get_version(self, fact_id: str) -> int | None:
        """The fact's version: 1 when created, incremented by every write; None if absent."""
        found = self.storage.load_with_version(fact_id)
        return None if found is None else found[1]

    def query(
        self,
        typename: str | None = None,
        filters: dict[str, Any] | None = None,
        session_id: str | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        order_by: str | Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Facts of `typename` (all types if None) matching `filters` (and `session_id`).

        `order_by`: ``"ts"``, ``"-payload.score"`` or a list of such paths (``-``: descending);
        ties are broken by id. Default order: ts, then id. See docs/filters.md.
        """
        return self.storage.select(query_spec(typename, filters, session_id, order_by), limit=limit, offset=offset)

    def count(
        self, typename: str | None = None, filters: dict[str, Any] | None = None, session_id: str | None = None
    ) -> int:
        """How many facts `query(typename, filters, session_id)` would return."""
        return self.storage.tally(query_spec(typename, filters, session_id))

    def iter_query(
        self,
        typename: str | None = None,
        filters: dict[str, Any] | None = None,
        session_id: str | None = None,
        *,
        order_by: str | Sequence[Any] | None = None,
        batch_size: int = 500,
    ) -> Iterator[dict[str, Any]]:
        """Stream `query`'s result in batches of `batch_size` (keyset pagination, one read per batch)."""
        return self.storage.stream(query_spec(typename, filters, session_id, order_by), batch_size)

    def search(
        self,
        query: str,
        limit: int = 5,
        filters: dict[str, Any] | None = None,
        score_threshold: float | None = None,
    ) -> list[ScoredFact]:
        """The facts most similar to `query`.

        With the storage's `vector_index` (docs/search.md): an exact cosine search over the vectors
        stored beside the facts, among the facts `filters` selects (the `query` filter language,
        compiled into the same SQL), in one read transaction; `score_threshold` is the lowest cosine
        similarity kept; best score first, ties by fact id. Without one: memstate's way, asking the
        hooks that can search and reading the hits' current state from the database, in the hooks'
        order (their scores may be similarities or distances); hits whose fact no longer exists are
        dropped.
        """
        index = self.storage.vector_index
        if index is not None:
            return self._search_in_database(index, query, limit, filters, score_threshold)
        hits = self._hooks.search(query, limit, filters, score_threshold)
        if not hits:
            return []

        def read(repo: Repository) -> list[ScoredFact]:
            ranked = self._ops.hydrate(repo, [(h.fact_id, h.score) for h in hits])
            return [ScoredFact(fact=Fact.model_validate(state.doc()), score=score) for state, score in ranked]

        return self.storage.transaction(read, write=False, name="search")

    def _search_in_database(
        self,
        index: vectors.VectorIndex,
        query: str,
        limit: int,
        filters: dict[str, Any] | None,
        score_threshold: float | None,
    ) -> list[ScoredFact]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationFailed(f"search() limit must be a positive integer, got {limit!r}")
        limit = min(limit, MAX_ROWS)
        if score_threshold is not None:
            if isinstance(score_threshold, bool) or not isinstance(score_threshold, int | float):
                raise ValidationFailed(f"score_threshold must be a number or None, got {score_threshold!r}")
            if not math.isfinite(score_threshold):
                raise ValidationFailed("score_threshold must be a finite number")
        spec = query_spec(None, filters, None)
        target = index.query_vector(query)  # the model runs before the read transaction opens
        indexed = self.storage.indexed

        def read(repo: Repository) -> list[ScoredFact]:
            where = repo.filter_where(spec, indexed)
            hits = vectors.scan(repo, index, target, limit, where, score_threshold)
            found = repo.get_many([fact_id for fact_id, _ in hits])
            return [
                ScoredFact(fact=Fact.model_validate(found[fact_id].doc()), score=score)
                for fact_id, score in hits
                if fact_id in found
            ]

        return self.storage.transaction(read, write=False, name="search")
