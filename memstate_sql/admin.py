"""Reads for operators' tools, which run without the application's code: what a store holds
(`stats`), the stored version and immutable flag of facts (`row_flags`), and the per-type
constraints that can be recovered from the rows (`recover_constraints`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memstate_sql.records import singleton_token
from memstate_sql.registry import Constraint
from memstate_sql.repository import Repository
from memstate_sql.storage import SQLStorage
from memstate_sql.validation import check_key


def stats(storage: SQLStorage) -> dict[str, Any]:
    """Facts by type and by session, log size (and how much of it rollbacks undid), schema revisions."""
    from memstate_sql import migrations

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
    revision = migrations.current_revision(
        storage.engine, table_prefix=storage.table_prefix, schema=storage.models.schema
    )
    return {"schema_revision": revision, "head_revision": migrations.head_revision(), **data}


def row_flags(storage: SQLStorage, fact_ids: Sequence[str]) -> dict[str, tuple[int, bool]]:
    """(version, immutable) of each fact of `fact_ids` that exists."""
    ids = [check_key("fact id", fid, required=True) or "" for fid in fact_ids]
    found = storage.transaction(lambda repo: repo.get_many(ids), write=False, name="row flags")
    return {fid: (state.version, state.immutable) for fid, state in found.items()}


def recover_constraints(storage: SQLStorage) -> dict[str, Constraint]:
    """The `Constraint` of each type, recovered from its rows.

    Constraints live in the application (`register_schema`), not in the database; a tool that
    restores facts from their log images (a rollback from the command line) must give them back
    their singleton token and immutable flag. The singleton key of a type is the payload key whose
    value's token is the token stored on a row of that type.
    """
    found: dict[str, Constraint] = {}
    for fact in storage.transaction(lambda repo: repo.constraint_samples(), write=False, name="constraints"):
        key = None
        if fact.singleton is not None:
            matches = (k for k, v in fact.payload.items() if v is not None and singleton_token(v) == fact.singleton)
            key = next(matches, None)
        found[fact.type] = Constraint(singleton_key=key, immutable=fact.immutable)
    return found


__all__ = ["recover_constraints", "row_flags", "stats"]
