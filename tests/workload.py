"""A random mixed workload, run by the stress and crash tests in separate processes.

Every worker hammers the same small pools of fact ids and singleton keys so
that operations really contend: commits (plain and singleton, on shared keys),
updates and deletes with expected versions, promotions, discards and
rollbacks. Each operation carries a unique ``reason`` (``w<worker>:<n>``), so
that the parent can find the log entries of acknowledged operations.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

import memstate_sql as ms

IDS = 30
EMAILS = 6
SESSIONS = 3


class User(BaseModel):
    model_config = ConfigDict(extra="allow")
    email: str


class SlowHook:
    """A hook that takes a little time, flagging in shared memory while it runs (crash tests kill inside it)."""

    def __init__(self, rng: random.Random, flag: Any = None, max_sleep: float = 0.0) -> None:
        self.rng = rng
        self.flag = flag
        self.max_sleep = max_sleep
        self.calls = 0

    def __call__(self, op: ms.Operation, fact_id: str, fact: ms.Fact | None) -> None:
        self.calls += 1
        if self.flag is not None:
            self.flag.value = 1
        try:
            if self.max_sleep:
                time.sleep(self.rng.uniform(0, self.max_sleep))
        finally:
            if self.flag is not None:
                self.flag.value = 0


def make_store(
    url: str, prefix: str, hooks: list[Any] | None = None, sqlite_synchronous: str | None = None
) -> ms.MemoryStore:
    store = ms.MemoryStore(ms.SQLStorage(url, table_prefix=prefix, sqlite_synchronous=sqlite_synchronous), hooks)
    store.register_schema("user", User, ms.Constraint(singleton_key="email"))
    return store


def one_operation(store: ms.MemoryStore, rng: random.Random, wid: int, n: int) -> str:
    """Run one random operation; return its kind. Raises what the store raises."""
    reason = f"w{wid}:{n}"
    session = rng.choice([None, *(f"s{i}" for i in range(SESSIONS))])
    roll = rng.random()
    if roll < 0.25:
        store.commit(
            ms.Fact(id=f"n{rng.randrange(IDS)}", type="note", payload={"w": wid, "n": n}),
            session_id=session,
            reason=reason,
        )
        return "commit"
    if roll < 0.45:
        email = f"u{rng.randrange(EMAILS)}@x"
        store.commit(
            ms.Fact(type="user", payload={"email": email, "w": wid, "n": n}), session_id=session, reason=reason
        )
        return "singleton_commit"
    if roll < 0.65:
        fid = f"n{rng.randrange(IDS)}"
        found = store.get_with_version(fid)
        if found is None:
            return "skip"
        store.update(fid, {"payload": {"w": wid, "n": n}}, reason=reason, expected_version=found[1])
        return "update"
    if roll < 0.75:
        fid = f"n{rng.randrange(IDS)}"
        version = store.get_version(fid)
        if version is None:
            return "skip"
        store.delete(session, fid, reason=reason, expected_version=version)
        return "delete"
    if roll < 0.9:
        store.rollback(session, rng.choice([1, 1, 2, 3]))
        return "rollback"
    if roll < 0.95 and session is not None:
        store.promote_session(session, reason=reason)
        return "promote"
    if session is not None:
        store.discard_session(session, reason=reason)
        return "discard"
    return "skip"


def run_worker(
    url: str,
    prefix: str,
    wid: int,
    seconds: float,
    seed: int,
    result_path: str | None = None,
    in_hook: Any = None,
    started: Any = None,
    hook_sleep: float = 0.0,
    sqlite_synchronous: str | None = None,
) -> None:
    """Run operations for `seconds` (forever when negative); write the acknowledged ones to `result_path`."""
    rng = random.Random(seed)
    hook = SlowHook(rng, in_hook, hook_sleep)
    store = make_store(url, prefix, [hook], sqlite_synchronous)
    outcomes: Counter[str] = Counter()
    acked: list[tuple[int, str]] = []
    deadline = time.monotonic() + seconds
    n = 0
    while seconds < 0 or time.monotonic() < deadline:
        n += 1
        try:
            kind = one_operation(store, rng, wid, n)
        except ms.ConflictError:
            outcomes["conflict"] += 1
        except ms.FactNotFound:
            outcomes["not_found"] += 1
        except ms.TransientStorageError:
            outcomes["transient"] += 1
        else:
            outcomes[kind] += 1
            if kind != "skip":
                acked.append((n, kind))
        if started is not None and n == 1:
            started.set()
    store.storage.close()
    if result_path is not None:
        Path(result_path).write_text(json.dumps({"outcomes": outcomes, "acked": acked}))
