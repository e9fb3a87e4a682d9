"""LangGraph on memstate_sql: checkpointers and a long-term memory `BaseStore` (extra ``langgraph``).

* `MemStateCheckpointer(memory: MemoryStore)` / `AsyncMemStateCheckpointer(memory: AsyncMemoryStore)`:
  LangGraph ``BaseCheckpointSaver`` s (``put``, ``put_writes``, ``get_tuple``, ``list``, ``delete_thread``,
  ``copy_thread``, ``delete_for_runs``, ``prune``, sync and async), the names and constructors of
  ``memstate.integrations.langgraph``: switching the import is the whole migration.
* `MemStateStore(storage: SQLStorage)` / `AsyncMemStateStore(storage: AsyncSQLStorage)`: LangGraph ``BaseStore`` s
  (``batch``/``abatch`` and everything built on them), with TTL.

Design (docs/langgraph.md has the long form). No table of its own: everything is stored as facts of four
dedicated types in the store's ``<prefix>_facts`` table, written with the storage-level backend API
(``save``/``query``; not logged in ``<prefix>_tx``, no hooks), so the schema and its migrations are untouched:

=========================  ===============================================================================
``langgraph.checkpoint``   one per checkpoint: id = hash(thread, ns, checkpoint id); the checkpoint without its
                           channel values and the metadata, both as serde ``dumps_typed`` output (type +
                           base64 bytes: exact on every database), a JSON mirror of the metadata for
                           ``list(filter=...)``, the parent id, ``run_id`` and the ids of its blobs
``langgraph.blob``         one per (thread, ns, channel, version): the channel's serialized value
``langgraph.write``        one per pending write (thread, ns, checkpoint, task, idx); ``cp`` = its checkpoint's id
``langgraph.item``         one per store item: id = hash(namespace, key); namespace as an order-preserving
                           encoded string, labels by position from both ends (for wildcards), value, times,
                           TTL
=========================  ===============================================================================

Declared payload indexes (`SQLStorage.declare_indexed_paths`, created on first use): ``payload.thread_id``,
``payload.cp``, ``payload.run_id`` (checkpointer), ``payload.ns``, ``payload.expires_at`` (store). A
checkpoint named by id is a primary-key read; the latest checkpoint of a thread, ``list`` and the pending
writes of the checkpoints read are index lookups ordered and limited in SQL (keyset pages), never scans of
all checkpoints. Every public call is one database transaction (``SQLStorage.transaction``: the storage
calls it makes join it); ``list`` streams, one transaction per page of checkpoints.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import concurrent.futures
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

try:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import (
        WRITES_IDX_MAP,
        BaseCheckpointSaver,
        ChannelVersions,
        Checkpoint,
        CheckpointMetadata,
        CheckpointTuple,
        PendingWrite,
        get_checkpoint_id,
        get_checkpoint_metadata,
    )
    from langgraph.checkpoint.serde.base import SerializerProtocol
    from langgraph.store.base import (
        BaseStore,
        GetOp,
        IndexConfig,
        InvalidNamespaceError,
        Item,
        ListNamespacesOp,
        MatchCondition,
        Op,
        PutOp,
        Result,
        SearchItem,
        SearchOp,
        TTLConfig,
        validate_op_namespace,
    )
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "memstate_sql.integrations.langgraph needs LangGraph: pip install 'memstate-sql[langgraph]'"
    ) from exc

from memstate_sql import jsondoc
from memstate_sql.aio import AsyncMemoryStore, AsyncSQLStorage
from memstate_sql.errors import ValidationFailed
from memstate_sql.indexes import IndexedPath
from memstate_sql.storage import SQLStorage
from memstate_sql.store import MemoryStore
from memstate_sql.timeutil import format_iso
from memstate_sql.validation import query_spec

if TYPE_CHECKING:
    from memstate_sql.repository import Repository
    from memstate_sql.validation import QuerySpec

__all__ = [
    "AsyncMemStateCheckpointer",
    "AsyncMemStateStore",
    "MemStateCheckpointer",
    "MemStateStore",
]

T = TypeVar("T")

CHECKPOINT = "langgraph.checkpoint"
BLOB = "langgraph.blob"
WRITE = "langgraph.write"
ITEM = "langgraph.item"

#: The checkpointer's declared payload paths: a thread's rows, a checkpoint's writes, a run's checkpoints.
CHECKPOINT_PATHS = (
    IndexedPath("payload.thread_id", "string"),
    IndexedPath("payload.cp", "string"),
    IndexedPath("payload.run_id", "string"),
)
#: The store's: the namespace (prefix ranges, list_namespaces seeks) and the expiry (sweeps).
STORE_PATHS = (IndexedPath("payload.ns", "string"), IndexedPath("payload.expires_at", "number"))

#: Checkpoints read per transaction by `list`; rows deleted per statement; items deleted per sweep transaction.
PAGE = 100
DELETE_BATCH = 500
SWEEP_BATCH = 500


def _digest(kind: str, *parts: Any) -> str:
    text = json.dumps([kind, *parts], ensure_ascii=False, separators=(",", ":"), default=str)
    return f"lg{kind}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:40]}"


def _checkpoint_id(thread_id: str, ns: str, checkpoint_id: str) -> str:
    return _digest("c", thread_id, ns, checkpoint_id)


def _blob_id(thread_id: str, ns: str, channel: str, version: Any) -> str:
    return _digest("b", thread_id, ns, channel, version)


def _write_id(thread_id: str, ns: str, checkpoint_id: str, task_id: str, idx: int) -> str:
    return _digest("w", thread_id, ns, checkpoint_id, task_id, idx)


def _pack(typed: tuple[str, bytes]) -> dict[str, str]:
    """A serde ``dumps_typed`` result as JSON: the bytes in base64 survive every database exactly."""
    kind, data = typed
    return {"t": kind, "b": base64.b64encode(bytes(data)).decode("ascii")}


def _unpack(packed: Mapping[str, str]) -> tuple[str, bytes]:
    return packed["t"], base64.b64decode(packed["b"])


def _path(*keys: str) -> str:
    """A filter path naming payload keys literally (dots and backslashes escaped)."""
    return ".".join(["payload", *(k.replace("\\", "\\\\").replace(".", "\\.") for k in keys)])


def _json_or_none(value: Any) -> tuple[bool, Any]:
    try:
        return True, jsondoc.check_value(value, "value")
    except ValidationFailed:
        return False, None


def _python_eq(path: str, value: Any) -> dict[str, Any]:
    """A typed filter matching what Python's ``stored.get(key) == value`` matches (LangGraph's in-memory
    semantics): None also matches a missing key, True/1/1.0 and False/0/0.0 are equal."""
    if value is None:
        return {"$or": [{path: {"$eq": None}}, {path: {"$exists": False}}]}
    if isinstance(value, bool):
        return {path: {"$in": [value, int(value)]}}
    if isinstance(value, int | float) and value in (0, 1):
        return {path: {"$in": [value, bool(value)]}}
    ok, checked = _json_or_none(value)
    if not ok:
        raise ValueError(f"filter value for {path!r} is not a JSON value: {value!r}")
    return {path: {"$eq": checked}}


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}


# ============================================================================ checkpoints


def _fact_doc(fact_id: str, type_: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A fact document in the canonical form the columns render (docs/contract.md): stored in the
    columns alone, with no copy of the document kept beside them."""
    return {
        "id": fact_id,
        "type": type_,
        "payload": payload,
        "source": None,
        "session_id": None,
        "ts": format_iso(datetime.now(timezone.utc)),
    }


class _Checkpoints:
    """The checkpointer's work on a sync `SQLStorage`, each public method one transaction. The async saver
    runs the same methods inside the greenlet bridge (`AsyncSQLStorage.run_sync`)."""

    def __init__(self, storage: SQLStorage, serde: SerializerProtocol) -> None:
        self.storage = storage
        self.serde = serde

    def _save(self, fact_id: str, type_: str, payload: dict[str, Any]) -> None:
        self.storage.save(_fact_doc(fact_id, type_, payload))

    def _delete_where(self, repo: Repository, type_: str, filters: dict[str, Any]) -> int:
        """Delete every fact of `type_` matching `filters`, `DELETE_BATCH` rows per statement."""
        deleted = 0
        while True:
            docs = self.storage.query(type_, filters, limit=DELETE_BATCH, order_by="id")
            if not docs:
                return deleted
            deleted += repo.delete_many([d["id"] for d in docs])

    def _delete_ids(self, repo: Repository, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), DELETE_BATCH):
            repo.delete_many(ids[start : start + DELETE_BATCH])

    # ------------------------------------------------------------------ writes

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns", "") or ""
        parent = conf.get("checkpoint_id")
        stripped = dict(checkpoint)
        values: dict[str, Any] = stripped.pop("channel_values", None) or {}  # type: ignore[assignment]
        cid = checkpoint["id"]
        meta = get_checkpoint_metadata(config, metadata)
        mirror = {}
        for key, value in meta.items():
            ok, checked = _json_or_none(value)
            if ok:
                mirror[key] = checked
        payload: dict[str, Any] = {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": cid,
            "parent_checkpoint_id": parent,
            "checkpoint": _pack(self.serde.dumps_typed(stripped)),
            "metadata": _pack(self.serde.dumps_typed(meta)),
            "meta": mirror,
            "blobs": [_blob_id(thread_id, ns, ch, v) for ch, v in checkpoint["channel_versions"].items()],
        }
        run_id = meta.get("run_id")
        if run_id is not None:
            payload["run_id"] = str(run_id)

        def work(repo: Repository) -> None:
            for channel, version in new_versions.items():
                typed = self.serde.dumps_typed(values[channel]) if channel in values else ("empty", b"")
                blob = {"thread_id": thread_id, "checkpoint_ns": ns, "channel": channel, "version": version}
                self._save(_blob_id(thread_id, ns, channel, version), BLOB, {**blob, "value": _pack(typed)})
            self._save(_checkpoint_id(thread_id, ns, cid), CHECKPOINT, payload)

        self.storage.transaction(work, name="langgraph.put")
        return _config(thread_id, ns, cid)

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns", "") or ""
        cid = conf["checkpoint_id"]
        cp = _checkpoint_id(thread_id, ns, cid)
        rows = {}
        for position, (channel, value) in enumerate(writes):
            idx = WRITES_IDX_MAP.get(channel, position)
            rows[_write_id(thread_id, ns, cid, task_id, idx)] = (idx, channel, value)

        def work(repo: Repository) -> None:
            regular = [wid for wid, (idx, _, _) in rows.items() if idx >= 0]
            found = self.storage.query(WRITE, {"id": {"$in": regular}}) if regular else []
            existing = {d["id"] for d in found}
            for wid, (idx, channel, value) in rows.items():
                if idx >= 0 and wid in existing:
                    continue  # a regular write is stored once (LangGraph's savers keep the first)
                self._save(
                    wid,
                    WRITE,
                    {
                        "thread_id": thread_id,
                        "checkpoint_ns": ns,
                        "checkpoint_id": cid,
                        "cp": cp,
                        "task_id": task_id,
                        "task_path": task_path,
                        "idx": idx,
                        "channel": channel,
                        "value": _pack(self.serde.dumps_typed(value)),
                    },
                )

        self.storage.transaction(work, name="langgraph.put_writes")

    # ------------------------------------------------------------------ reads

    def _tuples(self, docs: Sequence[dict[str, Any]], given: RunnableConfig | None = None) -> list[CheckpointTuple]:
        """Checkpoint documents as tuples, with their blobs and pending writes (two indexed reads)."""
        if not docs:
            return []
        ids = [d["id"] for d in docs]
        writes: dict[str, list[PendingWrite]] = {i: [] for i in ids}
        order = ["payload.cp", "payload.task_path", "payload.task_id", "payload.idx"]
        for w in self.storage.query(WRITE, {"payload.cp": {"$in": ids}}, order_by=order):
            p = w["payload"]
            writes[p["cp"]].append((p["task_id"], p["channel"], self.serde.loads_typed(_unpack(p["value"]))))
        blob_ids = sorted({b for d in docs for b in d["payload"].get("blobs", ())})
        blobs = {}
        if blob_ids:
            blobs = {b["id"]: b["payload"]["value"] for b in self.storage.query(BLOB, {"id": {"$in": blob_ids}})}
        out = []
        for doc in docs:
            p = doc["payload"]
            thread_id, ns, cid = p["thread_id"], p["checkpoint_ns"], p["checkpoint_id"]
            checkpoint = self.serde.loads_typed(_unpack(p["checkpoint"]))
            values = {}
            for channel, version in checkpoint["channel_versions"].items():
                packed = blobs.get(_blob_id(thread_id, ns, channel, version))
                if packed is not None and packed["t"] != "empty":
                    values[channel] = self.serde.loads_typed(_unpack(packed))
            parent = p.get("parent_checkpoint_id")
            out.append(
                CheckpointTuple(
                    config=given if given is not None else _config(thread_id, ns, cid),
                    checkpoint={**checkpoint, "channel_values": values},  # type: ignore[typeddict-item]
                    metadata=self.serde.loads_typed(_unpack(p["metadata"])),
                    parent_config=_config(thread_id, ns, parent) if parent else None,
                    pending_writes=writes[doc["id"]],
                )
            )
        return out

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns", "") or ""
        cid = get_checkpoint_id(config)

        def work(repo: Repository) -> CheckpointTuple | None:
            if cid:
                doc = self.storage.load(_checkpoint_id(thread_id, ns, cid))
                docs = [doc] if doc is not None and doc["type"] == CHECKPOINT else []
            else:
                docs = self.storage.query(
                    CHECKPOINT,
                    {"payload.thread_id": thread_id, "payload.checkpoint_ns": ns},
                    limit=1,
                    order_by="-payload.checkpoint_id",
                )
            found = self._tuples(docs, config if cid else None)
            return found[0] if found else None

        return self.storage.transaction(work, write=False, name="langgraph.get_tuple")

    @staticmethod
    def list_spec(
        config: RunnableConfig | None, filter: dict[str, Any] | None, before: RunnableConfig | None
    ) -> QuerySpec:
        conditions: list[dict[str, Any]] = []
        if config is not None:
            conf = config.get("configurable", {})
            if conf.get("thread_id") is not None:
                conditions.append({"payload.thread_id": str(conf["thread_id"])})
            if conf.get("checkpoint_ns") is not None:
                conditions.append({"payload.checkpoint_ns": conf["checkpoint_ns"]})
            if conf.get("checkpoint_id"):
                conditions.append({"payload.checkpoint_id": conf["checkpoint_id"]})
        if before is not None and (before_id := get_checkpoint_id(before)):
            conditions.append({"payload.checkpoint_id": {"$lt": before_id}})
        for key, value in (filter or {}).items():
            conditions.append(_python_eq(_path("meta", key), value))
        return query_spec(CHECKPOINT, {"$and": conditions} if conditions else None, order_by="-payload.checkpoint_id")

    def list_page(
        self, spec: QuerySpec, size: int, after: tuple[Any, ...] | None
    ) -> tuple[list[CheckpointTuple], tuple[Any, ...] | None]:
        """One page of `list`, read in one transaction: the checkpoints after the row keyed `after`."""

        def work(repo: Repository) -> tuple[list[CheckpointTuple], tuple[Any, ...] | None]:
            docs, last = self.storage.page(spec, size, after)
            return self._tuples(docs), last

        return self.storage.transaction(work, write=False, name="langgraph.list")

    # ------------------------------------------------------------------ deletions and copies

    def delete_thread(self, thread_id: str) -> None:
        def work(repo: Repository) -> None:
            for type_ in (WRITE, CHECKPOINT, BLOB):
                self._delete_where(repo, type_, {"payload.thread_id": str(thread_id)})

        self.storage.transaction(work, name="langgraph.delete_thread")

    def _collect_blob_garbage(self, repo: Repository, candidates: dict[tuple[str, str], set[str]]) -> None:
        """Delete the candidate blobs that no remaining checkpoint of their thread and namespace refers to."""
        for (thread_id, ns), blob_ids in candidates.items():
            pending = sorted(blob_ids)
            for start in range(0, len(pending), 50):
                chunk = pending[start : start + 50]
                users = self.storage.query(
                    CHECKPOINT,
                    {
                        "payload.thread_id": thread_id,
                        "payload.checkpoint_ns": ns,
                        "$or": [{"payload.blobs": {"$contains": b}} for b in chunk],
                    },
                )
                used = {b for d in users for b in d["payload"].get("blobs", ())}
                self._delete_ids(repo, [b for b in chunk if b not in used])

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        runs = sorted({str(r) for r in run_ids})
        if not runs:
            return

        def work(repo: Repository) -> None:
            candidates: dict[tuple[str, str], set[str]] = {}
            while True:
                docs = self.storage.query(CHECKPOINT, {"payload.run_id": {"$in": runs}}, limit=PAGE, order_by="id")
                if not docs:
                    break
                ids = [d["id"] for d in docs]
                self._delete_where(repo, WRITE, {"payload.cp": {"$in": ids}})
                self._delete_ids(repo, ids)
                for d in docs:
                    p = d["payload"]
                    candidates.setdefault((p["thread_id"], p["checkpoint_ns"]), set()).update(p.get("blobs", ()))
            self._collect_blob_garbage(repo, candidates)

        self.storage.transaction(work, name="langgraph.delete_for_runs")

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        source, target = str(source_thread_id), str(target_thread_id)
        if source == target:
            return

        def pages(type_: str) -> Iterator[dict[str, Any]]:
            spec = query_spec(type_, {"payload.thread_id": source}, order_by="id")
            after: tuple[Any, ...] | None = None
            while True:
                docs, after = self.storage.page(spec, PAGE, after)
                yield from docs
                if after is None:
                    return

        def work(repo: Repository) -> None:
            for doc in pages(BLOB):
                p = {**doc["payload"], "thread_id": target}
                self._save(_blob_id(target, p["checkpoint_ns"], p["channel"], p["version"]), BLOB, p)
            for doc in pages(CHECKPOINT):
                p = doc["payload"]
                ns, cid = p["checkpoint_ns"], p["checkpoint_id"]
                checkpoint = self.serde.loads_typed(_unpack(p["checkpoint"]))
                blobs = [_blob_id(target, ns, ch, v) for ch, v in checkpoint["channel_versions"].items()]
                copied = {**p, "thread_id": target, "blobs": blobs}
                self._save(_checkpoint_id(target, ns, cid), CHECKPOINT, copied)
            for doc in pages(WRITE):
                p = doc["payload"]
                ns, cid = p["checkpoint_ns"], p["checkpoint_id"]
                copied = {**p, "thread_id": target, "cp": _checkpoint_id(target, ns, cid)}
                self._save(_write_id(target, ns, cid, p["task_id"], p["idx"]), WRITE, copied)

        self.storage.transaction(work, name="langgraph.copy_thread")

    def prune(self, thread_ids: Sequence[str], strategy: str = "keep_latest") -> None:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")
        threads = sorted({str(t) for t in thread_ids})

        def work(repo: Repository) -> None:
            for thread_id in threads:
                if strategy == "delete":
                    for type_ in (WRITE, CHECKPOINT, BLOB):
                        self._delete_where(repo, type_, {"payload.thread_id": thread_id})
                    continue
                # Newest first within each namespace: the first of each namespace is kept.
                spec = query_spec(
                    CHECKPOINT,
                    {"payload.thread_id": thread_id},
                    order_by=["payload.checkpoint_ns", "-payload.checkpoint_id"],
                )
                kept_ns: set[str] = set()
                kept_blobs: set[str] = set()
                doomed: list[str] = []
                after: tuple[Any, ...] | None = None
                while True:
                    docs, after = self.storage.page(spec, PAGE, after)
                    for d in docs:
                        p = d["payload"]
                        if p["checkpoint_ns"] in kept_ns:
                            doomed.append(d["id"])
                        else:
                            kept_ns.add(p["checkpoint_ns"])
                            kept_blobs.update(p.get("blobs", ()))
                    if after is None:
                        break
                for start in range(0, len(doomed), PAGE):
                    chunk = doomed[start : start + PAGE]
                    self._delete_where(repo, WRITE, {"payload.cp": {"$in": chunk}})
                    self._delete_ids(repo, chunk)
                blob_filter: dict[str, Any] = {"payload.thread_id": thread_id}
                if kept_blobs:
                    blob_filter["id"] = {"$nin": sorted(kept_blobs)}
                self._delete_where(repo, BLOB, blob_filter)

        self.storage.transaction(work, name="langgraph.prune")


def _next_version(current: str | int | float | None) -> str:
    """Channel versions as LangGraph's own savers make them: a zero-padded counter and a random suffix."""
    import random

    if current is None:
        number = 0
    elif isinstance(current, int | float):
        number = int(current)
    else:
        number = int(current.split(".")[0])
    return f"{number + 1:032}.{random.random():016}"


class MemStateCheckpointer(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer on a `MemoryStore`'s database (sync; its async methods run the sync ones in
    a worker thread). Every call is one database transaction; see the module docstring for the layout.

    Checkpoints are stored with the storage-level API of ``memory.storage``: they are not entries of the
    store's log (``get_tx_log``), are not passed to the store's hooks and are not affected by ``rollback``.
    """

    def __init__(self, memory: MemoryStore, serde: SerializerProtocol | None = None) -> None:
        if not isinstance(memory, MemoryStore):
            raise ValidationFailed(
                f"MemStateCheckpointer needs a memstate_sql.MemoryStore, got {type(memory).__name__}"
            )
        super().__init__(serde=serde)
        self.memory = memory
        memory.storage.declare_indexed_paths(CHECKPOINT_PATHS)

    @property
    def _core(self) -> _Checkpoints:
        return _Checkpoints(self.memory.storage, self.serde)

    def get_next_version(self, current: str | None, channel: None) -> str:
        return _next_version(current)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._core.get_tuple(config)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        core = self._core
        spec = core.list_spec(config, filter, before)
        pages = _Pages(limit)
        while pages.more:
            yield from pages.took(core.list_page(spec, pages.size, pages.after))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._core.put(config, checkpoint, metadata, new_versions)

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        self._core.put_writes(config, writes, task_id, task_path)

    def delete_thread(self, thread_id: str) -> None:
        self._core.delete_thread(thread_id)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._core.delete_for_runs(run_ids)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._core.copy_thread(source_thread_id, target_thread_id)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._core.prune(thread_ids, strategy)

    # The async interface: the sync calls in a worker thread (the event loop is never blocked).

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        items = self.list(config, filter=filter, before=before, limit=limit)
        while True:
            page = await asyncio.to_thread(_take, items, PAGE)
            for item in page:
                yield item
            if len(page) < PAGE:
                return

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)


class _Pages:
    """The pages of one ``list`` call, for the sync and the async checkpointer alike: at most `PAGE`
    checkpoints a page (fewer on the last page of a `limit`), each continued from the previous page's
    keyset position; done after a short page, a page with no continuation, or `limit` checkpoints."""

    def __init__(self, limit: int | None) -> None:
        self.remaining = limit
        self.after: tuple[Any, ...] | None = None
        self.size = PAGE if limit is None else min(PAGE, limit)
        self.more = self.size > 0

    def took(
        self, page: tuple[builtins.list[CheckpointTuple], tuple[Any, ...] | None]
    ) -> builtins.list[CheckpointTuple]:
        tuples, self.after = page
        if self.remaining is not None:
            self.remaining -= len(tuples)
        self.more = self.after is not None and len(tuples) == self.size and self.remaining != 0
        if self.remaining is not None:
            self.size = min(PAGE, self.remaining)
        return tuples


def _take(items: Iterator[T], count: int) -> builtins.list[T]:
    out = []
    for item in items:
        out.append(item)
        if len(out) == count:
            break
    return out


class _LoopBound:
    """The sync methods of an asyncio object, as LangGraph's async savers offer them: from another thread,
    the coroutine runs on the event loop the object is used on; on that loop's own thread they refuse
    (they would block it)."""

    loop: asyncio.AbstractEventLoop | None = None

    def _remember_loop(self) -> None:
        self.loop = asyncio.get_running_loop()

    def _blocking(self, make: Callable[[], Awaitable[T]], name: str) -> T:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        loop = self.loop
        if running is not None and running is loop:
            raise asyncio.InvalidStateError(
                f"Synchronous {type(self).__name__}.{name}() cannot run on the event loop it uses: "
                f"await a{name}() instead (or call {name}() from another thread)"
            )
        if loop is None or loop.is_closed() or not loop.is_running():
            raise RuntimeError(
                f"Synchronous {type(self).__name__}.{name}() needs the event loop this object is used on to be "
                f"running in another thread; use the async a{name}() (or the sync class) instead"
            )

        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), loop).result()


class AsyncMemStateCheckpointer(_LoopBound, BaseCheckpointSaver[str]):
    """The asyncio LangGraph checkpointer on an `AsyncMemoryStore`'s database: the same work as
    `MemStateCheckpointer`, run in SQLAlchemy's greenlet bridge on the async driver, one transaction per call.

    Its sync methods (LangGraph's sync ``get_state`` and friends) work from threads other than the event
    loop's, as LangGraph's own async savers do.
    """

    def __init__(self, memory: AsyncMemoryStore, serde: SerializerProtocol | None = None) -> None:
        if not isinstance(memory, AsyncMemoryStore):
            raise ValidationFailed(
                f"AsyncMemStateCheckpointer needs a memstate_sql.AsyncMemoryStore, got {type(memory).__name__}"
            )
        super().__init__(serde=serde)
        self.memory = memory
        memory.storage.declare_indexed_paths(CHECKPOINT_PATHS)
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None

    @property
    def _core(self) -> _Checkpoints:
        return _Checkpoints(self.memory.storage.sync_storage, self.serde)

    async def _bridge(self, fn: Callable[..., T], *args: Any) -> T:
        self._remember_loop()
        return await self.memory.storage.run_sync(fn, *args)

    def get_next_version(self, current: str | None, channel: None) -> str:
        return _next_version(current)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._bridge(self._core.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        core = self._core
        spec = core.list_spec(config, filter, before)
        pages = _Pages(limit)
        while pages.more:
            for item in pages.took(await self._bridge(core.list_page, spec, pages.size, pages.after)):
                yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._bridge(self._core.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        await self._bridge(self._core.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._bridge(self._core.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._bridge(self._core.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._bridge(self._core.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._bridge(self._core.prune, thread_ids, strategy)

    # Sync forms, from another thread than the event loop's.

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._blocking(lambda: self.aget_tuple(config), "get_tuple")

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        async def collect() -> builtins.list[CheckpointTuple]:
            return [t async for t in self.alist(config, filter=filter, before=before, limit=limit)]

        yield from self._blocking(collect, "list")

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._blocking(lambda: self.aput(config, checkpoint, metadata, new_versions), "put")

    def put_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        self._blocking(lambda: self.aput_writes(config, writes, task_id, task_path), "put_writes")

    def delete_thread(self, thread_id: str) -> None:
        self._blocking(lambda: self.adelete_thread(thread_id), "delete_thread")

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._blocking(lambda: self.adelete_for_runs(run_ids), "delete_for_runs")

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._blocking(lambda: self.acopy_thread(source_thread_id, target_thread_id), "copy_thread")

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._blocking(lambda: self.aprune(thread_ids, strategy=strategy), "prune")


# ============================================================================ the BaseStore

#: Namespace encoding: labels joined by SEP, with U+0001 inside labels escaped as ESC. The encoding is
#: injective and keeps LangGraph's tuple order as code-point order; the namespaces under a prefix P are
#: exactly the strings in [enc(P), enc(P) + ESC).
SEP, ESC = "\x01\x02", "\x01\x03"


def _encode(namespace: Sequence[str]) -> str:
    return SEP.join(label.replace("\x01", ESC) for label in namespace)


def _under(prefix: Sequence[str]) -> dict[str, Any]:
    """The namespaces equal to `prefix` or below it: one range on the indexed ``payload.ns``."""
    if not prefix:
        return {}
    start = _encode(prefix)
    return {"payload.ns": {"$gte": start, "$lt": start + ESC}}


def _item_id(namespace: Sequence[str], key: str) -> str:
    return _digest("i", list(namespace), key)


#: The store's clock (epoch seconds), one name for the tests to move.
_now: Callable[[], float] = time.time


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


class _Expiry:
    """TTL, behind one seam: an ``expires_at`` (epoch seconds) kept in the item's payload, compared with the
    typed ``$gt`` on reads and swept in bounded batches. When facts get native expiry, only this class changes.
    """

    path = "payload.expires_at"

    @staticmethod
    def stamp(payload: dict[str, Any], ttl_minutes: float | None, now: float) -> None:
        payload.pop("ttl", None)
        payload.pop("expires_at", None)
        if ttl_minutes is not None:
            payload["ttl"] = ttl_minutes
            payload["expires_at"] = now + float(ttl_minutes) * 60.0

    @staticmethod
    def live(now: float) -> dict[str, Any]:
        return {"$or": [{_Expiry.path: {"$exists": False}}, {_Expiry.path: {"$gt": now}}]}

    @staticmethod
    def expired(payload: Mapping[str, Any], now: float) -> bool:
        at = payload.get("expires_at")
        return at is not None and not at > now

    @staticmethod
    def refresh(payload: dict[str, Any], now: float) -> bool:
        """Restart the item's TTL; False when it has none."""
        ttl = payload.get("ttl")
        if ttl is None:
            return False
        payload["expires_at"] = now + float(ttl) * 60.0
        return True

    @staticmethod
    def sweep_batch(storage: SQLStorage, now: float, batch: int) -> int:
        """Delete up to `batch` expired items in one transaction; returns how many."""

        def work(repo: Repository) -> int:
            docs = storage.query(ITEM, {_Expiry.path: {"$lte": now}}, limit=batch, order_by=_Expiry.path)
            return repo.delete_many([d["id"] for d in docs]) if docs else 0

        return storage.transaction(work, name="langgraph.store.sweep")


def _value_filter(keys: tuple[str, ...], wanted: Any) -> dict[str, Any]:
    """LangGraph's filter on ``value[key]`` (InMemoryStore's meaning) in the store's typed filter language."""
    path = _path("value", *keys)
    if isinstance(wanted, Mapping):
        if any(str(k).startswith("$") for k in wanted):
            conditions = []
            for op, arg in wanted.items():
                if op == "$eq":
                    conditions.append(_python_eq(path, arg))
                elif op == "$ne":
                    conditions.append({"$not": _python_eq(path, arg)})
                elif op in ("$gt", "$gte", "$lt", "$lte"):
                    if isinstance(arg, bool) or not isinstance(arg, int | float | str):
                        raise ValueError(f"{op} compares with a number or a string, not {arg!r}")
                    conditions.append({path: {op: arg}})
                else:
                    raise ValueError(f"Unsupported operator: {op}")
            return {"$and": conditions}
        if not wanted:
            raise ValueError(f"an empty object as the filter of {'.'.join(keys)!r} is not supported")
        return {"$and": [_value_filter((*keys, str(k)), v) for k, v in wanted.items()]}
    if isinstance(wanted, list | tuple):
        ok, checked = _json_or_none(list(wanted))
        if not ok:
            raise ValueError(f"filter value for {'.'.join(keys)!r} is not a JSON value")
        return {path: {"$eq": checked}}
    return _python_eq(path, wanted)


def _check_namespace_for_put(namespace: tuple[str, ...]) -> None:
    if not namespace:
        raise InvalidNamespaceError("Namespace cannot be empty.")
    if namespace[0] == "langgraph":
        raise InvalidNamespaceError(f'Root label for namespace cannot be "langgraph". Got: {namespace}')


def _condition(condition: MatchCondition) -> list[dict[str, Any]]:
    """A `list_namespaces` match condition (``*`` matches any one label) as typed filters."""
    path = tuple(condition.path)
    out: list[dict[str, Any]] = [{"payload.depth": {"$gte": len(path)}}] if path else []
    if condition.match_type == "prefix":
        literal = []
        for label in path:
            if label == "*":
                break
            literal.append(label)
        if literal:
            out.append(_under(literal))
        out += [{_path("labels", str(i)): label} for i, label in enumerate(path) if label != "*"]
    elif condition.match_type == "suffix":
        out += [{_path("rlabels", str(i)): label} for i, label in enumerate(reversed(path)) if label != "*"]
    else:
        raise ValueError(f"Unsupported match type: {condition.match_type}")
    return out


class _Items:
    """The store's work on a sync `SQLStorage`: one `batch` is one transaction."""

    def __init__(self, storage: SQLStorage, ttl: TTLConfig | None) -> None:
        self.storage = storage
        self.ttl = ttl

    def batch(self, ops: Iterable[Op]) -> builtins.list[Result]:
        todo = builtins.list(ops)
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        refresh = False
        for op in todo:
            if not isinstance(op, GetOp | SearchOp | ListNamespacesOp | PutOp):
                raise ValueError(f"Unknown operation type: {type(op)}")
            validate_op_namespace(op)
            if isinstance(op, PutOp):
                if op.value is not None:
                    _check_namespace_for_put(tuple(op.namespace))
                puts[(tuple(op.namespace), op.key)] = op  # the last put of a key wins, as in InMemoryStore
            elif isinstance(op, GetOp | SearchOp) and op.refresh_ttl:
                refresh = True
        now = _now()

        def work(repo: Repository) -> builtins.list[Result]:
            results: builtins.list[Result] = []
            for op in todo:  # reads see the state before this batch's writes (InMemoryStore's order)
                if isinstance(op, GetOp):
                    results.append(self._get(op, now))
                elif isinstance(op, SearchOp):
                    results.append(self._search(op, now))
                elif isinstance(op, ListNamespacesOp):
                    results.append(self._list_namespaces(op, now))
                else:
                    results.append(None)
            for put in puts.values():
                self._apply(repo, put, now)
            return results

        write = bool(puts) or (refresh and self.ttl is not None)
        return self.storage.transaction(work, write=write, name="langgraph.store.batch")

    @staticmethod
    def _item(doc: Mapping[str, Any], cls: type[Item] = Item) -> Any:
        p = doc["payload"]
        fields = {
            "namespace": tuple(p["namespace"]),
            "key": p["key"],
            "value": p["value"],
            "created_at": datetime.fromisoformat(p["created_at"]),
            "updated_at": datetime.fromisoformat(p["updated_at"]),
        }
        return cls(**fields)

    def _refreshed(self, doc: dict[str, Any], refresh: bool, now: float) -> None:
        if refresh and _Expiry.refresh(doc["payload"], now):
            self.storage.save(_fact_doc(doc["id"], ITEM, doc["payload"]))

    def _get(self, op: GetOp, now: float) -> Item | None:
        doc = self.storage.load(_item_id(op.namespace, str(op.key)))
        if doc is None or doc["type"] != ITEM or _Expiry.expired(doc["payload"], now):
            return None
        self._refreshed(doc, op.refresh_ttl, now)
        item: Item = self._item(doc)
        return item

    def _search(self, op: SearchOp, now: float) -> builtins.list[SearchItem]:
        conditions = [_under(tuple(op.namespace_prefix)), _Expiry.live(now)]
        for key, wanted in (op.filter or {}).items():
            conditions.append(_value_filter((str(key),), wanted))
        docs = self.storage.query(
            ITEM,
            {"$and": [c for c in conditions if c]},
            limit=op.limit,
            offset=op.offset,
            order_by=["payload.ns", "payload.key"],
        )
        found = []
        for doc in docs:
            self._refreshed(doc, op.refresh_ttl, now)
            found.append(self._item(doc, SearchItem))
        return found

    def _list_namespaces(self, op: ListNamespacesOp, now: float) -> builtins.list[tuple[str, ...]]:
        """Distinct namespaces in LangGraph's (tuple) order: one indexed seek per namespace returned."""
        base: builtins.list[dict[str, Any]] = [_Expiry.live(now)]
        for condition in op.match_conditions or ():
            base += _condition(condition)
        depth = op.max_depth
        wanted = op.offset + op.limit
        found: builtins.list[tuple[str, ...]] = []
        cursor: dict[str, Any] = {}
        while len(found) < wanted:
            docs = self.storage.query(ITEM, {"$and": [*base, cursor]}, limit=1, order_by="payload.ns")
            if not docs:
                break
            labels = tuple(docs[0]["payload"]["namespace"])
            if depth is not None and len(labels) >= depth:
                labels = labels[: max(depth, 0)]
                # skip the whole subtree: every namespace below it truncates to the same labels
                cursor = {"payload.ns": {"$gte": _encode(labels) + ESC}} if labels else {"payload.ns": {"$lt": ""}}
            else:
                cursor = {"payload.ns": {"$gt": _encode(labels)}}
            found.append(labels)
        return found[op.offset : op.offset + op.limit]

    def _apply(self, repo: Repository, op: PutOp, now: float) -> None:
        namespace = tuple(op.namespace)
        fact_id = _item_id(namespace, str(op.key))
        if op.value is None:
            repo.delete_many([fact_id])
            return
        current = self.storage.load(fact_id)
        created = now
        if current is not None and current["type"] == ITEM and not _Expiry.expired(current["payload"], now):
            created_at = datetime.fromisoformat(current["payload"]["created_at"]).timestamp()
            created = created_at
        payload: dict[str, Any] = {
            "ns": _encode(namespace),
            "namespace": builtins.list(namespace),
            "depth": len(namespace),
            "labels": {str(i): label for i, label in enumerate(namespace)},
            "rlabels": {str(i): label for i, label in enumerate(reversed(namespace))},
            "key": str(op.key),
            "value": dict(op.value),
            "created_at": _iso(created),
            "updated_at": _iso(now),
        }
        _Expiry.stamp(payload, op.ttl, now)
        self.storage.save(_fact_doc(fact_id, ITEM, payload))

    def sweep(self, now: float | None = None) -> int:
        moment = _now() if now is None else now
        total = 0
        while True:
            count = _Expiry.sweep_batch(self.storage, moment, SWEEP_BATCH)
            total += count
            if count < SWEEP_BATCH:
                return total


def _refuse_index(index: IndexConfig | None) -> None:
    if index is not None:
        raise NotImplementedError(
            "memstate_sql's LangGraph store has no vector search yet: an index= configuration is refused. "
            "Without one, search(query=...) ignores the query, as LangGraph's InMemoryStore does."
        )


def _sweep_minutes(ttl: TTLConfig | None, given: int | None) -> float:
    minutes = given if given is not None else (ttl or {}).get("sweep_interval_minutes")
    if minutes is None:
        raise ValueError("no sweep interval: pass sweep_interval_minutes or set it in the TTLConfig")
    if minutes <= 0:
        raise ValueError("sweep_interval_minutes must be positive")
    return float(minutes)


class MemStateStore(BaseStore):
    """LangGraph's long-term memory store (``BaseStore``) on a `SQLStorage`; one transaction per `batch`.

    ``ttl``: a LangGraph ``TTLConfig`` (``default_ttl`` and ``sweep_interval_minutes`` in minutes,
    ``refresh_on_read``). Expired items are never returned; `sweep_ttl` deletes them and
    `start_ttl_sweeper` runs it in a background thread until `stop_ttl_sweeper` (or `close`).
    """

    supports_ttl = True

    def __init__(self, storage: SQLStorage, *, ttl: TTLConfig | None = None, index: IndexConfig | None = None) -> None:
        if not isinstance(storage, SQLStorage):
            raise ValidationFailed(f"MemStateStore needs a memstate_sql.SQLStorage, got {type(storage).__name__}")
        _refuse_index(index)
        self.storage = storage
        self.ttl_config = ttl
        self._items = _Items(storage, ttl)
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._sweeper_future: concurrent.futures.Future[None] | None = None
        storage.declare_indexed_paths(STORE_PATHS)

    def batch(self, ops: Iterable[Op]) -> builtins.list[Result]:
        return self._items.batch(ops)

    async def abatch(self, ops: Iterable[Op]) -> builtins.list[Result]:
        return await asyncio.to_thread(self._items.batch, builtins.list(ops))

    def sweep_ttl(self) -> int:
        """Delete the expired items now (bounded batches, one transaction each); returns how many."""
        return self._items.sweep()

    def start_ttl_sweeper(self, sweep_interval_minutes: int | None = None) -> concurrent.futures.Future[None]:
        """Sweep every `sweep_interval_minutes` (default: the TTLConfig's) in a daemon thread; the future
        completes when `stop_ttl_sweeper` stops it."""
        if self._sweeper_future is not None and not self._sweeper_future.done():
            return self._sweeper_future
        interval = _sweep_minutes(self.ttl_config, sweep_interval_minutes) * 60.0
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stop.clear()

        def loop() -> None:
            try:
                while not self._stop.wait(interval):
                    try:
                        self._items.sweep()
                    except Exception:  # a failed sweep is retried at the next interval
                        import logging

                        logging.getLogger("memstate_sql").exception("TTL sweep failed")
                future.set_result(None)
            except BaseException as exc:  # pragma: no cover - defensive
                future.set_exception(exc)

        self._sweeper = threading.Thread(target=loop, name="memstate-sql-ttl-sweeper", daemon=True)
        self._sweeper_future = future
        self._sweeper.start()
        return future

    def stop_ttl_sweeper(self, timeout: float | None = None) -> bool:
        """Stop the background sweeper; True when it has stopped within `timeout` seconds (or was not running)."""
        if self._sweeper is None:
            return True
        self._stop.set()
        self._sweeper.join(timeout)
        stopped = not self._sweeper.is_alive()
        if stopped:
            self._sweeper = None
        return stopped

    def close(self) -> None:
        """Stop the sweeper (the storage is the caller's to close)."""
        self.stop_ttl_sweeper()

    def __enter__(self) -> MemStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncMemStateStore(_LoopBound, BaseStore):
    """The asyncio form of `MemStateStore` on an `AsyncSQLStorage` (same work, in the greenlet bridge).

    Its sync `batch` (and ``get``/``put``/... built on it) works from threads other than the event loop's.
    `start_ttl_sweeper` starts an asyncio task; `stop_ttl_sweeper` (a coroutine) cancels it.
    """

    supports_ttl = True

    def __init__(
        self, storage: AsyncSQLStorage, *, ttl: TTLConfig | None = None, index: IndexConfig | None = None
    ) -> None:
        if not isinstance(storage, AsyncSQLStorage):
            raise ValidationFailed(
                f"AsyncMemStateStore needs a memstate_sql.AsyncSQLStorage, got {type(storage).__name__}"
            )
        _refuse_index(index)
        self.storage = storage
        self.ttl_config = ttl
        self._items = _Items(storage.sync_storage, ttl)
        self._sweeper: asyncio.Task[None] | None = None
        storage.declare_indexed_paths(STORE_PATHS)
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None

    async def abatch(self, ops: Iterable[Op]) -> builtins.list[Result]:
        self._remember_loop()
        return await self.storage.run_sync(self._items.batch, builtins.list(ops))

    def batch(self, ops: Iterable[Op]) -> builtins.list[Result]:
        todo = builtins.list(ops)
        return self._blocking(lambda: self.abatch(todo), "batch")

    async def sweep_ttl(self) -> int:
        """Delete the expired items now (bounded batches, one transaction each); returns how many."""
        return await self.storage.run_sync(self._items.sweep)

    async def start_ttl_sweeper(self, sweep_interval_minutes: int | None = None) -> asyncio.Task[None]:
        """Sweep every `sweep_interval_minutes` (default: the TTLConfig's) in an asyncio task."""
        if self._sweeper is not None and not self._sweeper.done():
            return self._sweeper
        interval = _sweep_minutes(self.ttl_config, sweep_interval_minutes) * 60.0

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.sweep_ttl()
                except Exception:  # a failed sweep is retried at the next interval
                    import logging

                    logging.getLogger("memstate_sql").exception("TTL sweep failed")

        self._sweeper = asyncio.get_running_loop().create_task(loop(), name="memstate-sql-ttl-sweeper")
        return self._sweeper

    async def stop_ttl_sweeper(self, timeout: float | None = None) -> bool:
        """Cancel the sweeper task; True when it has stopped within `timeout` seconds (or was not running)."""
        task, self._sweeper = self._sweeper, None
        if task is None or task.done():
            return True
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        return bool(done)

    async def aclose(self) -> None:
        await self.stop_ttl_sweeper()

    async def __aenter__(self) -> AsyncMemStateStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
