"""ms_0004_galera: the facts' unique key is `(namespace, type, singleton_slot)`, never NULL (docs/scaling.md §8)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

import memstate_sql as ms
from memstate_sql import migrations
from memstate_sql.records import KEY_LENGTH, singleton_slot, singleton_token
from tests.invariants import check_tables


class User(BaseModel):
    email: str


def test_slot_values() -> None:
    assert singleton_slot("abc", None) == "#abc"
    assert singleton_slot("abc", '"x@y"') == '"x@y"'
    long_id = "a" * KEY_LENGTH
    assert singleton_slot(long_id, None).startswith("#sha256:") and len(singleton_slot(long_id, None)) <= KEY_LENGTH
    assert not singleton_token("#abc").startswith("#")  # a token is canonical JSON: never a sentinel


def _slots(url: str, prefix: str) -> dict[str, tuple[str | None, str]]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT id, singleton, singleton_slot FROM {prefix}_facts")).all()
    finally:
        engine.dispose()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_downgrade_and_upgrade_keep_slots_and_singletons(db_url: str, prefix: str) -> None:
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    store.register_schema("user", User, ms.Constraint(singleton_key="email"))
    plain = store.commit(ms.Fact(type="note", payload={"a": 1}), session_id="s")
    long_id = "L" * KEY_LENGTH
    store.commit(ms.Fact(id=long_id, type="note", payload={"a": 2}), session_id="s")
    user = store.commit(ms.Fact(type="user", payload={"email": "x@y"}), session_id="s")
    storage.close()
    expected = {
        plain: (None, "#" + plain),
        long_id: (None, singleton_slot(long_id, None)),
        user: (singleton_token("x@y"), singleton_token("x@y")),
    }
    assert _slots(db_url, prefix) == expected
    # Down to ms_0002 (the column goes, nothing else), and up again: the backfill computes the same slots.
    assert migrations.downgrade(db_url, "ms_0002_namespaces_expiry", table_prefix=prefix) == "ms_0002_namespaces_expiry"
    assert ms.migrate(db_url, table_prefix=prefix) == migrations.head_revision()
    assert _slots(db_url, prefix) == expected
    check_tables(db_url, prefix)
    storage = ms.SQLStorage(db_url, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    store.register_schema("user", User, ms.Constraint(singleton_key="email"))
    try:
        # The singleton constraint still holds: a second fact with the same key replaces the first.
        again = store.commit(ms.Fact(type="user", payload={"email": "x@y"}), session_id="s")
        assert again == user
        assert len(store.query("user", {})) == 1
    finally:
        storage.close()


def test_unique_key_rejects_a_second_row_for_one_singleton(db_url: str, prefix: str) -> None:
    """The key itself, not only the store's lookup, keeps one fact per singleton value."""
    ms.migrate(db_url, table_prefix=prefix)
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        facts = ms.models_for(prefix).Fact.__table__  # type: ignore[attr-defined]
        row = {"namespace": "", "type": "user", "payload": {}, "version": 1, "immutable": False}
        ts = sa.func.now() if engine.dialect.name != "sqlite" else sa.text("CURRENT_TIMESTAMP")
        with engine.begin() as conn:
            conn.execute(sa.insert(facts).values(id="a", ts=ts, singleton='"k"', singleton_slot='"k"', **row))
            conn.execute(sa.insert(facts).values(id="b", ts=ts, singleton=None, singleton_slot="#b", **row))
            conn.execute(sa.insert(facts).values(id="c", ts=ts, singleton=None, singleton_slot="#c", **row))
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.insert(facts).values(id="d", ts=ts, singleton='"k"', singleton_slot='"k"', **row))
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.insert(facts).values(id="e", ts=ts, singleton=None, singleton_slot=None, **row))
    finally:
        engine.dispose()
