"""Vector search in the facts' own database and transaction (docs/search.md).

A `VectorIndex` (given to `SQLStorage(..., vector_index=...)`) says which facts are embedded and how:
the user's embedding function (text -> vector, sync or async), the dimension, and per fact type the
payload fields whose text is embedded (or a formatter of one's own). Every store operation that
writes a fact writes its embedding into ``<prefix>_vectors`` in the same transaction (`apply`, called
by `memstate_sql.operations` before the hooks); one that deletes it (delete, discard_session, sweep,
a rollback of its creation) deletes the vector. A search (`scan`) joins each vector to its fact *at
the same version*, with the store's typed filters compiled into the same SQL: no vector is ever
returned for a fact that is gone, expired, filtered out, or changed by a writer that did not index it.

Embeddings are computed before the transaction where the text is known then (`prepared`: commit,
commit_many, update); inside it only for what could not be foreseen (a rollback's restored text, a
payload a schema's validation changed). A write that leaves the text unchanged (promote, an update of
another field) keeps the vector and only moves its version.

Similarity is cosine: vectors are stored unit-length (float32, little-endian), a score is the dot
product, computed in float64 (numpy when installed, else pure Python), rounded to 12 decimals; ties
are broken by fact id, so every database and both scanners return the same top-k.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.sql import ColumnElement

from memstate_sql.dialects import NearestRequest
from memstate_sql.errors import EmbeddingError, StorageError, ValidationFailed
from memstate_sql.facts import Operation
from memstate_sql.hooks import Notification, invoke
from memstate_sql.models import Models
from memstate_sql.repository import Repository
from memstate_sql.scoring import SCORE_DECIMALS as SCORE_DECIMALS
from memstate_sql.scoring import _layout, best_of, scorer
from memstate_sql.scoring import _numpy as _numpy
from memstate_sql.scoring import unpack as unpack
from memstate_sql.validation import query_spec

#: Largest dimension: 4 bytes per number in a BLOB column (64 KiB on MySQL/MariaDB).
MAX_DIM = 16000
#: `VectorIndex(in_database=...)`: whether the database's vector extension computes searches.
IN_DATABASE = ("auto", "off", "required")
_CHUNK = 500  # ids per IN (...) list
_ALL = query_spec(None, None, None)
_REMOVING = frozenset({Operation.DELETE, Operation.DISCARD_SESSION, Operation.EXPIRE})

#: Embeddings computed before the operation's transaction, by text hash (`prepared`).
_PREPARED: contextvars.ContextVar[Mapping[str, bytes] | None] = contextvars.ContextVar(
    "memstate_sql_prepared_vectors", default=None
)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True)
class VectorIndex:
    """What the in-database vector index embeds, and with what.

    `embed`: the user's embedding function, ``text -> sequence of floats`` (a list, a tuple, a numpy
    array), or a coroutine function (with `AsyncMemoryStore`). `dim`: its dimension. `fields`: for each
    fact type to index, the payload fields whose values are embedded (joined by newlines; strings as
    they are, other values as JSON; missing or empty fields skipped); types not named are not indexed.
    `text`: instead of (or as well as: it is asked first) `fields`, a function ``(type, payload) -> str
    | None`` giving the text to embed (None: the fact is not indexed). A fact whose text is empty gets
    no vector (it is not searchable). `metric`: ``"cosine"`` (the only one).
    """

    embed: Callable[[str], Any]
    dim: int
    fields: Mapping[str, Sequence[str]] = field(default_factory=dict)
    text: Callable[[str, Mapping[str, Any]], str | None] | None = None
    metric: str = "cosine"
    #: Vectors read per query of a scan (bounds the scanner's memory: about ``4 * dim * scan_batch`` bytes).
    scan_batch: int = 5000
    #: The exact scanner's arithmetic: ``"auto"`` (numpy when installed), ``"numpy"`` or ``"python"``.
    scanner: str = "auto"
    #: Searches computed by the database's own vector extension (sqlite-vec on SQLite, `nearest`):
    #: ``"auto"`` where it can be loaded, else the exact scan; ``"off"``: always the exact scan (the
    #: extension is never loaded); ``"required"``: a search fails (`StorageError`, saying why) where it
    #: cannot be used. Either way the answer is the exact top-k.
    in_database: str = "auto"
    #: Whether a database's approximate index may answer (pgvector's HNSW on PostgreSQL, where installed:
    #: candidates re-ranked exactly, but a true neighbour the index misses is missed; docs/search.md).
    #: False (the default): only exact in-database search (sqlite-vec) or the exact scan.
    ann: bool = False

    def __post_init__(self) -> None:
        if not callable(self.embed):
            raise ValidationFailed("VectorIndex(embed=...) must be a callable text -> vector")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or not 1 <= self.dim <= MAX_DIM:
            raise ValidationFailed(f"VectorIndex(dim=...) must be an integer from 1 to {MAX_DIM}, got {self.dim!r}")
        if self.metric != "cosine":
            raise ValidationFailed(f"VectorIndex(metric=...): only 'cosine' is supported, got {self.metric!r}")
        if self.text is not None and not callable(self.text):
            raise ValidationFailed("VectorIndex(text=...) must be a callable (type, payload) -> str | None")
        if not isinstance(self.fields, Mapping):
            raise ValidationFailed("VectorIndex(fields=...) must map fact types to lists of payload fields")
        checked: dict[str, tuple[str, ...]] = {}
        for typename, names in self.fields.items():
            if not isinstance(typename, str) or isinstance(names, str) or not isinstance(names, Sequence):
                raise ValidationFailed(
                    f"VectorIndex(fields=...): {typename!r} must map to a list of payload field names, got {names!r}"
                )
            if not names or not all(isinstance(n, str) and n for n in names):
                raise ValidationFailed(f"VectorIndex(fields=...): the fields of {typename!r} must be non-empty names")
            checked[typename] = tuple(names)
        if not checked and self.text is None:
            raise ValidationFailed("VectorIndex needs fields= (per fact type) or text= (a formatter)")
        object.__setattr__(self, "fields", checked)
        if self.scanner not in ("auto", "numpy", "python"):
            raise ValidationFailed(
                f"VectorIndex(scanner=...) must be 'auto', 'numpy' or 'python', got {self.scanner!r}"
            )
        if self.scanner == "numpy" and _numpy() is None:
            raise ValidationFailed(
                "VectorIndex(scanner='numpy'): numpy is not installed (pip install 'memstate_sql[search]')"
            )
        if self.in_database not in IN_DATABASE:
            raise ValidationFailed(
                f"VectorIndex(in_database=...) must be 'auto', 'off' or 'required', got {self.in_database!r}"
            )
        if not isinstance(self.ann, bool):
            raise ValidationFailed(f"VectorIndex(ann=...) must be True or False, got {self.ann!r}")
        if isinstance(self.scan_batch, bool) or not isinstance(self.scan_batch, int) or self.scan_batch < 1:
            raise ValidationFailed("VectorIndex(scan_batch=...) must be a positive integer")

    def text_for(self, typename: str, payload: Mapping[str, Any]) -> str | None:
        """The text embedded for a fact (None: the fact has no vector)."""
        if self.text is not None:
            text = self.text(typename, payload)
            if text is not None:
                if not isinstance(text, str):
                    raise ValidationFailed(f"VectorIndex(text=...) returned {type(text).__name__}, not a str")
                return text if text.strip() else None
        names = self.fields.get(typename)
        if names is None:
            return None
        parts = [_as_text(payload[n]) for n in names if payload.get(n) not in (None, "")]
        text = "\n".join(parts)
        return text if text.strip() else None

    def vector(self, text: str) -> bytes:
        """Embed `text` (awaiting an async function inside the asyncio bridge), checked and packed."""
        try:
            values = invoke(self.embed, text)
        except Exception as err:
            raise EmbeddingError(f"the embedding function failed on a text of {len(text)} characters: {err}") from err
        return pack(values, self.dim)

    def query_vector(self, query: str) -> tuple[float, ...]:
        if not isinstance(query, str) or not query.strip():
            raise ValidationFailed("search() needs a non-empty query text")
        return unpack(self.vector(query), self.dim)


def pack(values: Any, dim: int) -> bytes:
    """A vector as stored: checked (length `dim`, finite, not all zero), unit length, little-endian float32.

    The same arithmetic (float64, `math.fsum`) with or without numpy, so every process stores the same bytes."""
    try:
        numbers = [float(x) for x in (values.tolist() if hasattr(values, "tolist") else values)]
    except (TypeError, ValueError) as err:
        raise EmbeddingError(f"the embedding function must return a sequence of numbers, got {values!r:.80}") from err
    if len(numbers) != dim:
        raise EmbeddingError(f"the embedding function returned {len(numbers)} numbers for an index of dimension {dim}")
    if not all(map(math.isfinite, numbers)):
        raise EmbeddingError("the embedding function returned NaN or infinite numbers")
    norm = math.sqrt(math.fsum([x * x for x in numbers]))
    if norm == 0.0 or not math.isfinite(norm):
        raise EmbeddingError("the embedding function returned a zero vector (it has no direction to compare)")
    return _layout(dim).pack(*[x / norm for x in numbers])


@contextlib.contextmanager
def prepared(index: VectorIndex | None, texts: Sequence[tuple[str, Mapping[str, Any]]]) -> Iterator[None]:
    """Embed, before the transaction opens, the texts of these ``(type, payload)`` pairs; the
    operation run inside the block finds them (`apply`) instead of calling the model under its locks."""
    if index is None or not texts:
        yield
        return
    ready: dict[str, bytes] = dict(_PREPARED.get() or {})
    for typename, payload in texts:
        if not isinstance(payload, Mapping):
            continue  # the operation itself reports a bad payload
        text = index.text_for(typename, payload)
        if text is not None:
            key = text_hash(text)
            if key not in ready:
                ready[key] = index.vector(text)
    token = _PREPARED.set(ready)
    try:
        yield
    finally:
        _PREPARED.reset(token)


@functools.cache
def table_of(models: Models) -> Table:
    return models.vectors


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def apply(repo: Repository, index: VectorIndex, calls: Sequence[Notification]) -> None:
    """Bring the vectors of the facts an operation wrote or deleted in line with them, in its transaction."""
    if not calls:
        return
    final: dict[str, Any] = {}
    for op, fact_id, state in calls:
        final[fact_id] = None if (op in _REMOVING or state is None) else state
    table = table_of(repo.models)
    ns = repo.namespace
    wanted: dict[str, tuple[int, str, str]] = {}  # fact id -> (version, text, hash)
    drop: list[str] = []
    for fact_id, state in final.items():
        text = None if state is None else index.text_for(state.type, state.payload)
        if text is None:
            drop.append(fact_id)
        else:
            wanted[fact_id] = (state.version, text, text_hash(text))
    stored: dict[str, str] = {}
    ids = sorted(wanted)
    for part in _chunks(ids):
        stmt = select(table.c.fact_id, table.c.text_hash).where(
            (table.c.namespace == ns) & table.c.fact_id.in_(list(part))
        )
        stored.update((row[0], row[1]) for row in repo.conn.execute(stmt))
    ready = _PREPARED.get() or {}
    rows: list[dict[str, Any]] = []
    bumps: list[dict[str, Any]] = []
    for fact_id in ids:
        version, text, digest = wanted[fact_id]
        if stored.get(fact_id) == digest:
            bumps.append({"w_ns": ns, "w_id": fact_id, "w_version": version})
            continue
        blob = ready.get(digest)
        if blob is None:
            blob = index.vector(text)
        if fact_id in stored:
            drop.append(fact_id)
        rows.append(
            {
                "namespace": ns,
                "fact_id": fact_id,
                "version": version,
                "dim": index.dim,
                "text_hash": digest,
                "vector": blob,
            }
        )
    for part in _chunks(sorted(drop)):
        repo.conn.execute(delete(table).where((table.c.namespace == ns) & table.c.fact_id.in_(list(part))))
    if rows and repo.conn.dialect.driver == "aiomysql":
        # aiomysql 0.3 cannot bind bytes with PyMySQL >= 1.1 (it calls a helper PyMySQL removed): send hex.
        for r in rows:
            r["vector"] = func.unhex(r["vector"].hex())
        for start in range(0, len(rows), _CHUNK):
            repo.conn.execute(insert(table).values(rows[start : start + _CHUNK]))
    elif rows:
        repo.conn.execute(insert(table), rows)  # executemany of one cached statement
    if bumps:
        bump = (
            update(table)
            .where((table.c.namespace == bindparam("w_ns")) & (table.c.fact_id == bindparam("w_id")))
            .values(version=bindparam("w_version"))
        )
        repo.conn.execute(bump, bumps)


def scan(
    repo: Repository,
    index: VectorIndex,
    query: Sequence[float],
    limit: int,
    where: ColumnElement[bool],
    score_threshold: float | None,
    *,
    use_numpy: bool | None = None,
) -> list[tuple[str, float]]:
    """The exact top-`limit` ``(fact id, score)`` among the facts `where` selects (the store's filter,
    compiled to SQL), best first, ties by fact id; `score_threshold`: the lowest score kept.

    The vectors joined to their facts (same namespace, id and version) are read in one streamed query,
    `index.scan_batch` rows at a time, so memory stays bounded whatever the number of candidates."""
    table = table_of(repo.models)
    facts = repo.facts
    if use_numpy is None and index.scanner != "auto":
        use_numpy = index.scanner == "numpy"
    score = scorer(use_numpy)
    joined = table.join(
        facts,
        and_(
            facts.c.namespace == table.c.namespace,
            facts.c.id == table.c.fact_id,
            facts.c.version == table.c.version,
        ),
    )
    cond = (table.c.namespace == repo.namespace) & (table.c.dim == index.dim) & where
    if index.in_database != "off":
        request = NearestRequest(table, joined, cond, query, index.dim, limit, score_threshold, index.ann)
        answered = repo.dialect.nearest(repo.conn, request)
        if answered is not None:
            return answered
        if index.in_database == "required":
            why = repo.dialect.nearest_status(repo.conn, index.ann)[1]
            raise StorageError(f"VectorIndex(in_database='required'): {why}")
    # One pass over the candidates, fetched `scan_batch` rows at a time from a server-side cursor where the
    # driver has one (keyset pages made PostgreSQL join every page anew: quadratic at 100k candidates).
    stmt = select(table.c.fact_id, table.c.vector).select_from(joined).where(cond)
    result = repo.conn.execute(stmt.execution_options(yield_per=index.scan_batch))
    best: list[tuple[float, str]] = []  # the best `limit` so far as (score, id)
    try:
        for rows in result.partitions():
            ids = [row[0] for row in rows]
            scores = score([bytes(row[1]) for row in rows], query, index.dim)
            best = best_of(best, ids, scores, limit, score_threshold)
    finally:
        result.close()
    return [(fact_id, s) for s, fact_id in best]


@dataclass(frozen=True)
class SearchPlan:
    """How `MemoryStore.search` computes a search on a storage (`SQLStorage.explain_search`).

    `mode`: ``"in-database"`` (the database's vector extension ranks the vectors) or ``"exact scan"``
    (memstate_sql reads the candidates' vectors and scores them); `engine`: what computes it
    (``"sqlite-vec v0.1.9"``, ``"numpy"``, ``"python"``); `reason`: why the exact scan runs, if it does.
    Both modes give the same answer (the exact top-k)."""

    mode: str
    engine: str
    reason: str | None = None


def plan(repo: Repository, index: VectorIndex) -> SearchPlan:
    """The `SearchPlan` of a search through `scan` on this connection (loading the extension as a
    search would); raises like a search where ``in_database="required"`` cannot be honoured."""
    if index.in_database == "off":
        reason: str | None = "VectorIndex(in_database='off')"
    else:
        usable, detail = repo.dialect.nearest_status(repo.conn, index.ann)
        if usable:
            return SearchPlan("in-database", detail)
        if index.in_database == "required":
            raise StorageError(f"VectorIndex(in_database='required'): {detail}")
        reason = detail
    use_numpy = _numpy() is not None if index.scanner == "auto" else index.scanner == "numpy"
    return SearchPlan("exact scan", "numpy" if use_numpy else "python", reason)


def unindexed(repo: Repository, index: VectorIndex, after: str, limit: int) -> tuple[list[Any], str | None]:
    """Examine up to `limit` live facts of the namespace (ids after `after`, in id order) of the types
    `index` embeds; return those whose vector is missing, at another version or of another text (written
    before the index was configured, imported, changed or re-created by code without it), and the last id
    examined (None: no more facts). For `MemoryStore.reindex`."""
    table = table_of(repo.models)
    facts = repo.facts
    joined = facts.outerjoin(table, and_(table.c.namespace == facts.c.namespace, table.c.fact_id == facts.c.id))
    where = repo.filter_where(_ALL, None) & (facts.c.id > after)
    if index.text is None:
        where = where & facts.c.type.in_(sorted(index.fields))
    stmt = (
        select(facts, table.c.version, table.c.text_hash)
        .select_from(joined)
        .where(where)
        .order_by(facts.c.id)
        .limit(limit)
    )
    rows = repo.conn.execute(stmt).all()
    if not rows:
        return [], None
    n = len(facts.c)
    stale = []
    for row in rows:
        state = repo._fact(row)
        text = index.text_for(state.type, state.payload)
        version, digest = row[n], row[n + 1]
        if text is None:
            if version is not None:
                stale.append(state)  # a vector for a fact that has nothing to embed: apply() drops it
        elif version != state.version or digest != text_hash(text):
            stale.append(state)
    return stale, rows[-1][1]


def drop_orphans(repo: Repository) -> int:
    """Delete the vectors of the namespace whose fact no longer exists (deleted by code without the index)."""
    table = table_of(repo.models)
    facts = repo.facts
    alive = select(facts.c.id).where((facts.c.namespace == table.c.namespace) & (facts.c.id == table.c.fact_id))
    stmt = delete(table).where((table.c.namespace == repo.namespace) & ~alive.exists())
    return int(repo.conn.execute(stmt).rowcount or 0)


def reindex(repo: Repository, index: VectorIndex, fact_ids: Sequence[str]) -> int:
    """Write the vectors of these facts as they are now (locked); returns how many facts there were."""
    facts = repo.facts
    stmt = select(facts).where(repo.filter_where(_ALL, None) & facts.c.id.in_(list(fact_ids)))
    if repo.dialect.row_locks:
        stmt = stmt.with_for_update()
    states = [repo._fact(row) for row in repo.conn.execute(stmt)]
    apply(repo, index, [(Operation.UPDATE, f.id, f) for f in states])
    return len(states)


def count(repo: Repository) -> int:
    """Vectors stored in the repository's namespace (for tests, `verify` and the benchmark)."""
    table = table_of(repo.models)
    return int(
        repo.conn.execute(select(func.count()).select_from(table).where(table.c.namespace == repo.namespace)).scalar()
        or 0
    )
