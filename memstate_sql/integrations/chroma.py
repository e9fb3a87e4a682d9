"""Chroma hook: memstate's `ChromaSyncHook`, with an outbox behind it.

Same constructor as ``memstate.integrations.chroma.ChromaSyncHook`` (``client, collection_name,
embedding_fn, target_types, text_field, text_formatter, metadata_fields, metadata_formatter``); delivery
modes, versions and removals as for the Qdrant hooks (`memstate_sql.integrations.qdrant`, docs/search.md).
Entries carry ``memstate_version`` in their metadata. Extra ``chroma`` (chromadb).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from memstate_sql.facts import Fact, SearchResult
from memstate_sql.outbox import DEFAULT_LEASE, IndexHook

try:
    from chromadb.api import ClientAPI
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("To use ChromaSyncHook, run: pip install 'memstate-sql[chroma]'") from exc

TextFormatter = Callable[[dict[str, Any]], str]
MetadataFormatter = Callable[[dict[str, Any]], dict[str, Any]]

__all__ = ["ChromaSyncHook"]


class ChromaSyncHook(IndexHook):
    """memstate's Chroma hook on memstate_sql. `score_threshold` of `search` is a maximum distance."""

    def __init__(
        self,
        client: ClientAPI,
        collection_name: str,
        embedding_fn: Any = None,
        target_types: set[str] | None = None,
        text_field: str | None = None,
        text_formatter: TextFormatter | None = None,
        metadata_fields: list[str] | None = None,
        metadata_formatter: MetadataFormatter | None = None,
        *,
        delivery: str = "after_commit",
        index_name: str | None = None,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self.client = client
        self.collection_name = collection_name
        self.collection = client.get_or_create_collection(name=collection_name, embedding_function=embedding_fn)
        self.target_types = set(target_types or ())
        if text_formatter is not None:
            self._extract_text: TextFormatter = text_formatter
        elif text_field:
            self._extract_text = lambda data: str(data.get(text_field, ""))
        else:
            self._extract_text = lambda data: str(data)
        self.metadata_fields = list(metadata_fields or [])
        self.metadata_formatter = metadata_formatter
        self.lease = lease
        self._setup_delivery(delivery, index_name or f"chroma:{collection_name}")

    def __repr__(self) -> str:
        return f"ChromaSyncHook({self.collection_name!r}, delivery={self.delivery!r})"

    def document(self, fact: Fact) -> str | None:
        return self._extract_text(fact.payload)

    def _get_metadata(self, data: dict[str, Any]) -> dict[str, Any]:
        if self.metadata_formatter is not None:
            return self.metadata_formatter(data)
        meta: dict[str, Any] = {}
        for name in self.metadata_fields:
            value = data.get(name)
            if value is not None:
                meta[name] = value if isinstance(value, str | int | float | bool) else str(value)
        return meta

    def put(self, fact_id: str, fact: Fact, version: int) -> None:
        text = self._extract_text(fact.payload)
        meta: dict[str, Any] = {"type": fact.type, "source": fact.source or "", "ts": str(fact.ts)}
        meta.update(self._get_metadata(fact.payload))
        meta["memstate_version"] = version
        self.collection.upsert(ids=[fact_id], documents=[text], metadatas=[meta])

    def remove(self, fact_ids: Sequence[str]) -> None:
        if fact_ids:
            self.collection.delete(ids=list(fact_ids))

    def entries(self) -> dict[str, int | None]:
        found: dict[str, int | None] = {}
        offset = 0
        while True:
            got = self.collection.get(include=["metadatas"], limit=1000, offset=offset)
            ids = got.get("ids") or []
            metas: list[Any] = list(got.get("metadatas") or [])
            metas += [None] * (len(ids) - len(metas))
            for fid, meta in zip(ids, metas, strict=False):
                version = (meta or {}).get("memstate_version")
                found[fid] = version if isinstance(version, int) else None
            if len(ids) < 1000:
                return found
            offset += len(ids)

    def search(
        self, query: str, limit: int = 5, filters: dict[str, Any] | None = None, score_threshold: float | None = None
    ) -> list[SearchResult]:
        results = self.collection.query(query_texts=[query], n_results=limit, where=filters, include=["distances"])
        ids = (results.get("ids") or [[]])[0]
        distances = (results.get("distances") or [[]])[0]
        hits = []
        for fid, dist in zip(ids, distances, strict=False):
            value = float(dist)
            if score_threshold is not None and value > score_threshold:
                continue
            hits.append(SearchResult(fact_id=fid, score=value))
        return hits
