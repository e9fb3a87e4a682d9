"""Qdrant hooks: memstate's `QdrantSyncHook` / `AsyncQdrantSyncHook`, with an outbox behind them.

Same constructors as ``memstate.integrations.qdrant`` (``client, collection_name, embedding_fn,
target_types, text_field, text_formatter, metadata_fields, metadata_formatter, distance``), so memstate
code keeps working after the import switch. What differs (docs/search.md, "External indexes"):

* ``delivery="after_commit"`` (default): the change is recorded in the outbox inside the operation's
  transaction and sent to Qdrant right after COMMIT, in the same store call. A rolled-back operation never
  reaches Qdrant; a failed send leaves the change for `memstate_sql.dispatcher.Dispatcher`.
  ``delivery="outbox"`` leaves every send to a dispatcher; ``delivery="in_transaction"`` is memstate's
  behaviour (Qdrant written before COMMIT).
* Points carry ``fact_id`` and ``memstate_version`` in their payload (`reconcile` compares versions).
  A fact id that is not a UUID (Qdrant accepts only UUIDs and integers) gets a derived UUID point id;
  search still answers with the fact id.
* A deleted fact, and every fact of a discarded session, is removed from the collection (memstate leaves
  a discarded session's points behind).

Extra ``qdrant`` (qdrant-client).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from memstate_sql.facts import Fact, SearchResult
from memstate_sql.outbox import DEFAULT_LEASE, IndexHook

try:
    from qdrant_client import AsyncQdrantClient, QdrantClient, models
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("To use QdrantSyncHook, run: pip install 'memstate-sql[qdrant]'") from exc

TextFormatter = Callable[[dict[str, Any]], str]
MetadataFormatter = Callable[[dict[str, Any]], dict[str, Any]]
EmbeddingFunction = Callable[[str], list[float]]

__all__ = ["AsyncQdrantSyncHook", "FastEmbedEncoder", "QdrantSyncHook", "point_id"]

_POINT_NS = uuid.UUID("6f1d3a52-8f44-4d0e-9a57-6d2a4e0c1b7e")


def point_id(fact_id: str) -> str:
    """Qdrant's id for a fact: the fact id itself when it is a UUID, else a UUID derived from it."""
    try:
        return str(uuid.UUID(fact_id))
    except ValueError:
        return str(uuid.uuid5(_POINT_NS, fact_id))


class FastEmbedEncoder:
    """The default embedding (as memstate's): a FastEmbed model, loaded on first construction."""

    def __init__(
        self, model_name: str = "sentence-transformers/all-MiniLM-L6-v2", options: dict[str, Any] | None = None
    ) -> None:
        try:
            from fastembed import TextEmbedding
        except ImportError as exc:
            raise ImportError(
                "FastEmbed is not installed. Install it via `pip install fastembed` or pass a custom `embedding_fn`."
            ) from exc
        self.model = TextEmbedding(model_name, **(options or {}))

    def __call__(self, text: str) -> list[float]:
        return [float(x) for x in next(iter(self.model.embed(text)))]


class _QdrantBase(IndexHook):
    def _configure(
        self,
        client: Any,
        collection_name: str,
        embedding_fn: EmbeddingFunction | None,
        target_types: set[str] | None,
        text_field: str | None,
        text_formatter: TextFormatter | None,
        metadata_fields: list[str] | None,
        metadata_formatter: MetadataFormatter | None,
        distance: models.Distance,
        delivery: str,
        index_name: str | None,
        lease: float,
    ) -> None:
        self.client = client
        self.collection_name = collection_name
        self.embedding_fn: EmbeddingFunction = embedding_fn or FastEmbedEncoder()
        self.target_types = set(target_types or ())
        self.distance = distance
        if text_formatter is not None:
            self._extract_text: TextFormatter = text_formatter
        elif text_field:
            self._extract_text = lambda data: str(data.get(text_field, ""))
        else:
            self._extract_text = lambda data: str(data)
        self.metadata_fields = list(metadata_fields or [])
        self.metadata_formatter = metadata_formatter
        self.lease = lease
        self._setup_delivery(delivery, index_name or f"qdrant:{collection_name}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.collection_name!r}, delivery={self.delivery!r})"

    def document(self, fact: Fact) -> str | None:
        return self._extract_text(fact.payload)

    def _get_metadata(self, data: dict[str, Any]) -> dict[str, Any]:
        if self.metadata_formatter is not None:
            return self.metadata_formatter(data)
        meta: dict[str, Any] = {}
        for name in self.metadata_fields:
            value = data.get(name)
            if value is not None:
                meta[name] = value if isinstance(value, str | int | float | bool | list) else str(value)
        return meta

    def _vector_size(self) -> int:
        try:
            return len(self.embedding_fn("test"))
        except Exception as exc:
            raise RuntimeError(f"Failed to initialize embedding function: {exc}") from exc

    def _check_size(self, info: Any, size: int) -> None:
        config = info.config.params.vectors
        existing = None
        if isinstance(config, models.VectorParams):
            existing = config.size
        elif isinstance(config, dict) and "" in config:
            existing = config[""].size
        if existing and existing != size:
            raise ValueError(
                f"Collection '{self.collection_name}' expects vector size {existing}, "
                f"but your embedding function produces {size}. Mismatch detected."
            )

    def _point(self, fact_id: str, fact: Fact, version: int) -> models.PointStruct:
        text = self._extract_text(fact.payload)
        meta: dict[str, Any] = {"type": fact.type, "source": fact.source or "", "ts": str(fact.ts), "document": text}
        meta.update(self._get_metadata(fact.payload))
        meta["fact_id"] = fact_id
        meta["memstate_version"] = version
        return models.PointStruct(id=point_id(fact_id), vector=self.embedding_fn(text), payload=meta)

    def _build_filter(self, filters: dict[str, Any] | Any | None) -> Any:
        if not filters:
            return None
        if isinstance(filters, models.Filter):
            return filters
        if isinstance(filters, dict):
            if any(k in filters for k in ("must", "should", "must_not", "min_should")):
                return filters
            return models.Filter(
                must=[models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in filters.items()]
            )
        return filters

    @staticmethod
    def _results(points: Sequence[Any]) -> list[SearchResult]:
        return [
            SearchResult(fact_id=str((p.payload or {}).get("fact_id") or p.id), score=float(p.score)) for p in points
        ]

    @staticmethod
    def _entries(points: Sequence[Any], into: dict[str, int | None]) -> None:
        for p in points:
            payload = p.payload or {}
            version = payload.get("memstate_version")
            into[str(payload.get("fact_id") or p.id)] = version if isinstance(version, int) else None


class QdrantSyncHook(_QdrantBase):
    """memstate's Qdrant hook on memstate_sql (see the module's docstring for what differs)."""

    def __init__(
        self,
        client: QdrantClient,
        collection_name: str,
        embedding_fn: EmbeddingFunction | None = None,
        target_types: set[str] | None = None,
        text_field: str | None = None,
        text_formatter: TextFormatter | None = None,
        metadata_fields: list[str] | None = None,
        metadata_formatter: MetadataFormatter | None = None,
        distance: models.Distance = models.Distance.COSINE,
        *,
        delivery: str = "after_commit",
        index_name: str | None = None,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self._configure(
            client, collection_name, embedding_fn, target_types, text_field, text_formatter,
            metadata_fields, metadata_formatter, distance, delivery, index_name, lease,
        )  # fmt: skip
        self._ensure_collection()

    def _ensure_collection(self) -> None:
        size = self._vector_size()
        if not self.client.collection_exists(self.collection_name):
            self.client.create_collection(
                collection_name=self.collection_name,
                vectors_config=models.VectorParams(size=size, distance=self.distance),
            )
        else:
            self._check_size(self.client.get_collection(self.collection_name), size)

    def put(self, fact_id: str, fact: Fact, version: int) -> None:
        self.client.upsert(collection_name=self.collection_name, points=[self._point(fact_id, fact, version)])

    def remove(self, fact_ids: Sequence[str]) -> None:
        self.client.delete(
            collection_name=self.collection_name,
            points_selector=models.PointIdsList(points=[point_id(f) for f in fact_ids]),
        )

    def entries(self) -> dict[str, int | None]:
        found: dict[str, int | None] = {}
        offset = None
        while True:
            points, offset = self.client.scroll(
                collection_name=self.collection_name,
                limit=512,
                offset=offset,
                with_payload=["fact_id", "memstate_version"],
                with_vectors=False,
            )
            self._entries(points, found)
            if offset is None:
                return found

    def search(
        self, query: str, limit: int = 5, filters: dict[str, Any] | None = None, score_threshold: float | None = None
    ) -> list[SearchResult]:
        """Nearest points to `query` (cosine: higher is better; `score_threshold` is a minimum score)."""
        resp = self.client.query_points(
            collection_name=self.collection_name,
            query=self.embedding_fn(query),
            query_filter=self._build_filter(filters),
            limit=limit,
            score_threshold=score_threshold,
        )
        return self._results(resp.points)


class AsyncQdrantSyncHook(_QdrantBase):
    """memstate's async Qdrant hook on memstate_sql (for `AsyncMemoryStore`; an `AsyncQdrantClient`)."""

    def __init__(
        self,
        client: AsyncQdrantClient,
        collection_name: str,
        embedding_fn: EmbeddingFunction | None = None,
        target_types: set[str] | None = None,
        text_field: str | None = None,
        text_formatter: TextFormatter | None = None,
        metadata_fields: list[str] | None = None,
        metadata_formatter: MetadataFormatter | None = None,
        distance: models.Distance = models.Distance.COSINE,
        *,
        delivery: str = "after_commit",
        index_name: str | None = None,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self._configure(
            client, collection_name, embedding_fn, target_types, text_field, text_formatter,
            metadata_fields, metadata_formatter, distance, delivery, index_name, lease,
        )  # fmt: skip
        self._collection_checked = False

    async def _ensure_collection(self) -> None:
        if self._collection_checked:
            return
        size = self._vector_size()
        if not await self.client.collection_exists(self.collection_name):
            await self.client.create_collection(
                collection_name=self.collection_name,
                vectors_config=models.VectorParams(size=size, distance=self.distance),
            )
        else:
            self._check_size(await self.client.get_collection(self.collection_name), size)
        self._collection_checked = True

    async def put(self, fact_id: str, fact: Fact, version: int) -> None:
        await self._ensure_collection()
        await self.client.upsert(collection_name=self.collection_name, points=[self._point(fact_id, fact, version)])

    async def remove(self, fact_ids: Sequence[str]) -> None:
        await self._ensure_collection()
        await self.client.delete(
            collection_name=self.collection_name,
            points_selector=models.PointIdsList(points=[point_id(f) for f in fact_ids]),
        )

    async def entries(self) -> dict[str, int | None]:
        await self._ensure_collection()
        found: dict[str, int | None] = {}
        offset = None
        while True:
            points, offset = await self.client.scroll(
                collection_name=self.collection_name,
                limit=512,
                offset=offset,
                with_payload=["fact_id", "memstate_version"],
                with_vectors=False,
            )
            self._entries(points, found)
            if offset is None:
                return found

    async def search(
        self, query: str, limit: int = 5, filters: dict[str, Any] | None = None, score_threshold: float | None = None
    ) -> list[SearchResult]:
        await self._ensure_collection()
        resp = await self.client.query_points(
            collection_name=self.collection_name,
            query=self.embedding_fn(query),
            query_filter=self._build_filter(filters),
            limit=limit,
            score_threshold=score_threshold,
        )
        return self._results(resp.points)
