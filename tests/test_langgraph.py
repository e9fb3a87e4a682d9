"""The LangGraph integration on every database: conformance suite, real graphs against InMemorySaver, TTL.

The BaseStore's property-based comparison with LangGraph's InMemoryStore is in tests/test_langgraph_store.py.
"""

from __future__ import annotations

import asyncio
import operator
import threading
import time
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import pytest

pytest.importorskip("langgraph")
pytest.importorskip("langgraph.checkpoint.conformance")

from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore
from langgraph.types import Command, interrupt

import memstate_sql as ms
from memstate_sql.integrations import langgraph as lg
from memstate_sql.integrations.langgraph import (
    AsyncMemStateCheckpointer,
    AsyncMemStateStore,
    MemStateCheckpointer,
    MemStateStore,
)

ALL_CAPABILITIES = {
    "put",
    "put_writes",
    "get_tuple",
    "list",
    "delete_thread",
    "delete_for_runs",
    "copy_thread",
    "prune",
}


# ---------------------------------------------------------------------------- conformance


def test_conformance_every_capability(db_url: str, prefix: str, mode: str) -> None:
    """langgraph-checkpoint-conformance: every base and extended capability detected and passed."""

    async def run() -> Any:
        if mode == "async":
            storage: Any = ms.AsyncSQLStorage(db_url, table_prefix=prefix)

            @checkpointer_test(name="AsyncMemStateCheckpointer")
            async def factory() -> Any:
                yield AsyncMemStateCheckpointer(ms.AsyncMemoryStore(storage))

            try:
                return await validate(factory)
            finally:
                await storage.close()
        sync_storage = ms.SQLStorage(db_url, table_prefix=prefix)

        @checkpointer_test(name="MemStateCheckpointer")
        async def sync_factory() -> Any:
            yield MemStateCheckpointer(ms.MemoryStore(sync_storage))

        try:
            return await validate(sync_factory)
        finally:
            sync_storage.close()

    report = asyncio.run(run())
    outcome = {cap: (r.detected, r.passed, r.tests_failed, r.failures) for cap, r in report.results.items()}
    assert set(outcome) == ALL_CAPABILITIES
    failing = {cap: o for cap, o in outcome.items() if o[:3] != (True, True, 0)}
    assert not failing, failing
    assert all(r.tests_passed > 0 for r in report.results.values())


# ---------------------------------------------------------------------------- a real graph


class State(TypedDict):
    items: Annotated[list[str], operator.add]
    raw: bytes


BINARY = bytes(range(256)) + b"\x00\xff\x00"


def plan(state: State) -> dict[str, Any]:
    return {"items": ["plan"], "raw": BINARY}


def review(state: State) -> dict[str, Any]:
    answer = interrupt({"question": "approve?", "seen": list(state["items"])})
    return {"items": [f"review:{answer}"]}


def act(state: State) -> dict[str, Any]:
    return {"items": ["act"]}


def builder() -> StateGraph[Any]:
    graph = StateGraph(State)
    graph.add_node("plan", plan)
    graph.add_node("review", review)
    graph.add_node("act", act)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "review")
    graph.add_edge("review", "act")
    graph.add_edge("act", END)
    return graph


def snap(state: Any) -> dict[str, Any]:
    """What a user observes of a StateSnapshot, without the ids and times that differ on every run."""
    metadata = {k: v for k, v in (state.metadata or {}).items() if k not in ("run_id", "thread_id")}
    return {
        "values": state.values,
        "next": state.next,
        "metadata": metadata,
        "has_parent": state.parent_config is not None,
        "tasks": [(t.name, [i.value for i in t.interrupts]) for t in state.tasks],
        "interrupts": [i.value for i in state.interrupts],
    }


def result(out: Any) -> Any:
    if isinstance(out, dict) and "__interrupt__" in out:
        return {**out, "__interrupt__": [i.value for i in out["__interrupt__"]]}
    return out


def sync_scenario(saver: Any) -> list[Any]:
    graph = builder().compile(checkpointer=saver)
    cfg = {"configurable": {"thread_id": "t-1"}}
    seen: list[Any] = [result(graph.invoke({"items": ["start"]}, cfg)), snap(graph.get_state(cfg))]
    seen.append(result(graph.invoke(Command(resume="yes"), cfg)))
    seen.append(snap(graph.get_state(cfg)))
    history = list(graph.get_state_history(cfg))
    seen.append([snap(s) for s in history])
    seen.append([snap(s) for s in graph.get_state_history(cfg, limit=2)])
    updated = graph.update_state(cfg, {"items": ["manual"]})
    seen.append(snap(graph.get_state(updated)))
    # Fork: from the checkpoint waiting at the interrupt, change the state and run on from there.
    waiting = next(s for s in history if s.next == ("review",))
    forked = graph.update_state(waiting.config, {"items": ["forked"]})
    seen.append(result(graph.invoke(None, forked)))
    seen.append(result(graph.invoke(Command(resume="no"), cfg)))
    seen.append(snap(graph.get_state(cfg)))
    seen.append(len(list(graph.get_state_history(cfg))))
    seen.append(graph.get_state(cfg).values["raw"] == BINARY)
    # Replay: re-running from an old checkpoint (no update) reaches the same interrupt again.
    seen.append(result(graph.invoke(None, waiting.config)))
    seen.append(snap(graph.get_state(cfg)))
    return seen


async def async_scenario(saver: Any) -> list[Any]:
    graph = builder().compile(checkpointer=saver)
    cfg = {"configurable": {"thread_id": "t-1"}}
    seen: list[Any] = [result(await graph.ainvoke({"items": ["start"]}, cfg)), snap(await graph.aget_state(cfg))]
    seen.append(result(await graph.ainvoke(Command(resume="yes"), cfg)))
    seen.append(snap(await graph.aget_state(cfg)))
    history = [s async for s in graph.aget_state_history(cfg)]
    seen.append([snap(s) for s in history])
    seen.append([snap(s) async for s in graph.aget_state_history(cfg, limit=2)])
    updated = await graph.aupdate_state(cfg, {"items": ["manual"]})
    seen.append(snap(await graph.aget_state(updated)))
    waiting = next(s for s in history if s.next == ("review",))
    forked = await graph.aupdate_state(waiting.config, {"items": ["forked"]})
    seen.append(result(await graph.ainvoke(None, forked)))
    seen.append(result(await graph.ainvoke(Command(resume="no"), cfg)))
    seen.append(snap(await graph.aget_state(cfg)))
    seen.append(len([s async for s in graph.aget_state_history(cfg)]))
    seen.append((await graph.aget_state(cfg)).values["raw"] == BINARY)
    seen.append(result(await graph.ainvoke(None, waiting.config)))
    seen.append(snap(await graph.aget_state(cfg)))
    return seen


def test_graph_matches_in_memory_saver(db_url: str, prefix: str, mode: str) -> None:
    if mode == "sync":
        expected = sync_scenario(InMemorySaver())
        with ms.SQLStorage(db_url, table_prefix=prefix) as storage:
            got = sync_scenario(MemStateCheckpointer(ms.MemoryStore(storage)))
    else:
        expected = asyncio.run(async_scenario(InMemorySaver()))

        async def ours() -> list[Any]:
            storage = ms.AsyncSQLStorage(db_url, table_prefix=prefix)
            try:
                return await async_scenario(AsyncMemStateCheckpointer(ms.AsyncMemoryStore(storage)))
            finally:
                await storage.close()

        got = asyncio.run(ours())
    assert got[-3] is True  # the bytes channel came back exactly
    assert got == expected


def test_binary_values_exact_and_thread_isolated(db_url: str, prefix: str) -> None:
    with ms.SQLStorage(db_url, table_prefix=prefix) as storage:
        saver = MemStateCheckpointer(ms.MemoryStore(storage))
        graph = builder().compile(checkpointer=saver)
        graph.invoke({"items": []}, {"configurable": {"thread_id": "a"}})
        snapshot = graph.get_state({"configurable": {"thread_id": "a"}})
        assert snapshot.values["raw"] == BINARY
        assert graph.get_state({"configurable": {"thread_id": "b"}}).values == {}
        # The checkpointer's facts are storage-level: not in the store's log, invisible to other types' queries.
        assert storage.get_tx_log(None) == []
        assert storage.count(lg.CHECKPOINT) >= 3
        assert set(lg.CHECKPOINT_PATHS) <= set(storage.indexed_paths)
        saver.delete_thread("a")
        assert storage.count(lg.CHECKPOINT) == storage.count(lg.BLOB) == storage.count(lg.WRITE) == 0


def test_prune_and_delete_for_runs_collect_unused_blobs(db_url: str, prefix: str) -> None:
    with ms.SQLStorage(db_url, table_prefix=prefix) as storage:
        saver = MemStateCheckpointer(ms.MemoryStore(storage))
        graph = builder().compile(checkpointer=saver)
        cfg = {"configurable": {"thread_id": "p"}}
        graph.invoke({"items": ["x"]}, cfg)
        graph.invoke(Command(resume="ok"), cfg)
        before = graph.get_state(cfg).values
        saver.prune(["p"])
        assert len(list(saver.list(cfg))) == 1
        assert graph.get_state(cfg).values == before  # the kept checkpoint still has every blob it needs
        assert storage.count(lg.BLOB) == len(saver.get_tuple(cfg).checkpoint["channel_versions"])  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="unknown prune strategy"):
            saver.prune(["p"], strategy="everything")


def test_async_checkpointer_sync_methods_from_another_thread(db_url: str, prefix: str) -> None:
    async def run() -> None:
        storage = ms.AsyncSQLStorage(db_url, table_prefix=prefix)
        saver = AsyncMemStateCheckpointer(ms.AsyncMemoryStore(storage))
        graph = builder().compile(checkpointer=saver)
        cfg = {"configurable": {"thread_id": "s"}}
        await graph.ainvoke({"items": []}, cfg)
        with pytest.raises(asyncio.InvalidStateError):
            saver.get_tuple(cfg)
        state = await asyncio.to_thread(graph.get_state, cfg)
        assert state.next == ("review",)
        assert len(await asyncio.to_thread(lambda: list(saver.list(cfg)))) == 3
        await storage.close()

    asyncio.run(run())


# ---------------------------------------------------------------------------- the store: TTL and refusals


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(lg, "_now", fake)
    return fake


@pytest.fixture
def make_lg_store(mode: str, db_url: str, prefix: str) -> Iterator[Any]:
    """MemStateStore, or AsyncMemStateStore driven from a private loop through the same blocking calls."""
    loop = asyncio.new_event_loop() if mode == "async" else None
    made: list[Any] = []

    def factory(**options: Any) -> Any:
        if loop is None:
            storage = ms.SQLStorage(db_url, table_prefix=prefix)
            made.append(storage.close)
            return MemStateStore(storage, **options)
        astorage = ms.AsyncSQLStorage(db_url, table_prefix=prefix)
        made.append(lambda: loop.run_until_complete(astorage.close()))
        return Blocking(AsyncMemStateStore(astorage, **options), loop)

    yield factory
    for close in reversed(made):
        close()
    if loop is not None:
        loop.close()


class Blocking:
    """Drives an AsyncMemStateStore's coroutine API (aget, aput, ...) as blocking calls on a private loop."""

    def __init__(self, store: AsyncMemStateStore, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, "a" + name, None) if name in ASYNC_NAMES else getattr(self.store, name)
        if asyncio.iscoroutinefunction(attr):
            return lambda *a, **k: self.loop.run_until_complete(attr(*a, **k))
        return attr


ASYNC_NAMES = {"get", "put", "delete", "search", "list_namespaces", "batch"}


def test_ttl_expiry_refresh_and_sweep(make_lg_store: Any, clock: Clock) -> None:
    store = make_lg_store(ttl={"default_ttl": 1.0, "refresh_on_read": True})
    store.put(("docs",), "a", {"n": 1})
    store.put(("docs",), "b", {"n": 2}, ttl=None)  # no expiry for this one
    store.put(("docs",), "c", {"n": 3}, ttl=5)
    clock.now += 50
    assert store.get(("docs",), "a") is not None  # read at 50 s: refreshed to expire at 110 s
    clock.now += 50
    assert store.get(("docs",), "a", refresh_ttl=False) is not None
    clock.now += 15
    assert store.get(("docs",), "a") is None
    assert {i.key for i in store.search(("docs",))} == {"b", "c"}
    clock.now += 400  # c was refreshed by the search at 115 s: it expires at 415 s
    assert {i.key for i in store.search(("docs",))} == {"b"}
    assert store.list_namespaces() == [("docs",)]
    store.put(("gone",), "x", {"n": 0}, ttl=0.5)
    clock.now += 31
    assert store.list_namespaces() == [("docs",)]
    assert store.sweep_ttl() == 3
    assert store.sweep_ttl() == 0
    assert store.get(("docs",), "b").value == {"n": 2}


def test_ttl_put_overwrite_keeps_created_at_and_expired_items_start_over(make_lg_store: Any, clock: Clock) -> None:
    store = make_lg_store(ttl={"default_ttl": 1.0})
    store.put(("n",), "k", {"v": 1})
    first = store.get(("n",), "k")
    clock.now += 10
    store.put(("n",), "k", {"v": 2})
    second = store.get(("n",), "k")
    assert second.created_at == first.created_at and second.updated_at > first.updated_at
    clock.now += 120
    store.put(("n",), "k", {"v": 3})
    assert store.get(("n",), "k").created_at > second.created_at


def test_sync_sweeper_runs_in_background_and_stops(db_url: str, prefix: str, clock: Clock) -> None:
    with ms.SQLStorage(db_url, table_prefix=prefix) as storage:
        store = MemStateStore(storage, ttl={"default_ttl": 1.0, "sweep_interval_minutes": 1})
        for i in range(3):
            store.put(("s",), str(i), {"i": i})
        clock.now += 120
        future = store.start_ttl_sweeper(sweep_interval_minutes=0.001)  # type: ignore[arg-type]
        assert store.start_ttl_sweeper() is future
        deadline = time.monotonic() + 20
        while storage.count(lg.ITEM) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert storage.count(lg.ITEM) == 0
        assert store.stop_ttl_sweeper(timeout=10)
        assert future.result(timeout=10) is None
        assert not [t for t in threading.enumerate() if t.name == "memstate-sql-ttl-sweeper"]


def test_async_sweeper_runs_in_background_and_stops(db_url: str, prefix: str, clock: Clock) -> None:
    async def run() -> None:
        storage = ms.AsyncSQLStorage(db_url, table_prefix=prefix)
        store = AsyncMemStateStore(storage, ttl={"default_ttl": 1.0})
        await store.aput(("s",), "k", {"i": 1})
        clock.now += 120
        task = await store.start_ttl_sweeper(sweep_interval_minutes=0.001)  # type: ignore[arg-type]
        for _ in range(400):
            if not await storage.count(lg.ITEM):
                break
            await asyncio.sleep(0.05)
        assert await storage.count(lg.ITEM) == 0
        assert await store.stop_ttl_sweeper(timeout=10)
        assert task.done()
        await storage.close()

    asyncio.run(run())


def test_store_refuses_index_and_ignores_query_like_in_memory(make_lg_store: Any) -> None:
    from langgraph.store.memory import InMemoryStore

    with pytest.raises(NotImplementedError, match="vector search"):
        make_lg_store(index={"dims": 3, "embed": lambda texts: [[0.0] * 3 for _ in texts]})
    store = make_lg_store()
    reference = InMemoryStore()
    for target in (store, reference):
        target.put(("q",), "a", {"text": "apples"})
        target.put(("q",), "b", {"text": "pears"})
    ours = store.search(("q",), query="apples")
    theirs = reference.search(("q",), query="apples")
    assert [(i.key, i.value, i.score) for i in ours] == [(i.key, i.value, i.score) for i in theirs]


def test_store_namespace_validation_like_langgraph(make_lg_store: Any) -> None:
    from langgraph.store.base import InvalidNamespaceError

    store = make_lg_store()
    for bad in [(), ("langgraph", "x"), ("a.b",), ("",), ("a", 1)]:
        with pytest.raises(InvalidNamespaceError):
            store.put(bad, "k", {"v": 1})
    with pytest.raises(InvalidNamespaceError):
        store.search(("a.b",))
    with pytest.raises(InvalidNamespaceError):
        store.list_namespaces(prefix=("x.y",))


def test_store_used_from_a_graph_node(db_url: str, prefix: str) -> None:
    def remember(state: State, *, store: BaseStore) -> dict[str, Any]:
        store.put(("users", "u1", "memories"), "last", {"items": state["items"]})
        found = store.search(("users", "u1"))
        return {"items": [f"memories:{len(found)}"]}

    graph = StateGraph(State)
    graph.add_node("remember", remember)
    graph.add_edge(START, "remember")
    graph.add_edge("remember", END)
    with ms.SQLStorage(db_url, table_prefix=prefix) as storage:
        store = MemStateStore(storage)
        app = graph.compile(checkpointer=MemStateCheckpointer(ms.MemoryStore(storage)), store=store)
        out = app.invoke({"items": ["hi"]}, {"configurable": {"thread_id": "n"}})
        assert out["items"] == ["hi", "memories:1"]
        assert store.get(("users", "u1", "memories"), "last").value == {"items": ["hi"]}  # type: ignore[union-attr]


def test_reads_use_the_declared_indexes(db_url: str, prefix: str, db: str) -> None:
    """get_tuple/list find a thread's checkpoints by the thread index, search finds items by the namespace index:
    never a scan of all checkpoints or items. (The plan text is collected by EXPLAINing the statements.)"""
    import contextlib

    from langgraph.checkpoint.base import empty_checkpoint

    from tests.test_query_indexes import explained

    with ms.SQLStorage(db_url, table_prefix=prefix) as storage:
        saver = MemStateCheckpointer(ms.MemoryStore(storage))
        store = MemStateStore(storage)
        for t in range(30):
            cfg: Any = {"configurable": {"thread_id": f"t{t}", "checkpoint_ns": ""}}
            for step in range(4):
                cfg = saver.put(cfg, empty_checkpoint(), {"source": "loop", "step": step}, {})
            store.put(("users", f"u{t}"), "k", {"n": t})
        analyze = {"postgresql": "ANALYZE {t}", "sqlite": "ANALYZE"}.get(db, "ANALYZE TABLE {t}")
        storage.transaction(lambda repo: repo.conn.exec_driver_sql(analyze.format(t=repo.facts.name)))
        facts = f"{prefix}_facts"
        for read, spec in [
            (lambda: saver.get_tuple({"configurable": {"thread_id": "t7"}}), lg.CHECKPOINT_PATHS[0]),
            (lambda: list(saver.list({"configurable": {"thread_id": "t7"}}, limit=2)), lg.CHECKPOINT_PATHS[0]),
            (lambda: store.search(("users", "u7")), lg.STORE_PATHS[0]),
        ]:
            with explained(storage) as plans, contextlib.suppress(Exception):
                read()  # the EXPLAIN rows are not results: the reader fails after the first statement
            assert plans and spec.index_name(facts) in plans[0], plans[:1]
