"""Exact cosine scores of packed vectors, and the top-k rule (best score first, ties by fact id).

The one place the exact arithmetic lives: the portable scan (`memstate_sql.vectors.scan`) and the
re-rank of a database's approximate candidates (`memstate_sql.dialects.pgvector`) both use it, so
an answer computed by the database is the exact scan's answer whenever its candidates contain it.
Vectors are unit length, packed little-endian float32; a score is their dot product in float64,
rounded to `SCORE_DECIMALS` (numpy when installed, else pure Python).
"""

from __future__ import annotations

import functools
import heapq
import operator
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from memstate_sql.errors import ValidationFailed


@functools.cache
def _numpy() -> Any:
    """numpy, imported on first use (an import costs ~0.2 s, which a store without a vector index never
    pays); None when it is not installed. Optional: the exact scan is several times faster with it."""
    try:
        import numpy
    except ImportError:  # pragma: no cover - the pure-Python scanner is tested with numpy installed too
        return None
    return numpy


#: Scores are rounded to this many decimals, so float64 summation order never reorders a tie.
SCORE_DECIMALS = 12


@functools.cache
def _layout(dim: int) -> struct.Struct:
    return struct.Struct(f"<{dim}f")


def unpack(blob: bytes, dim: int) -> tuple[float, ...]:
    return _layout(dim).unpack(blob)


def _scores_numpy(blobs: Sequence[bytes], query: Sequence[float], dim: int) -> list[float]:
    _np = _numpy()
    assert _np is not None
    matrix = _np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(_np.float64)
    scores = matrix @ _np.asarray(query, dtype=_np.float64)
    rounded: list[float] = _np.round(scores, SCORE_DECIMALS).tolist()
    return rounded


def _scores_python(blobs: Sequence[bytes], query: Sequence[float], dim: int) -> list[float]:
    layout = _layout(dim)
    unpack_one, mul = layout.unpack, operator.mul
    return [round(sum(map(mul, unpack_one(blob), query)), SCORE_DECIMALS) for blob in blobs]


def scorer(use_numpy: bool | None = None) -> Callable[[Sequence[bytes], Sequence[float], int], list[float]]:
    """The exact scanner's scoring function: numpy's when installed (or asked for), else pure Python."""
    if use_numpy is None:
        use_numpy = _numpy() is not None
    if use_numpy and _numpy() is None:
        raise ValidationFailed("numpy is not installed: pip install 'memstate_sql[search]'")
    return _scores_numpy if use_numpy else _scores_python


def best_of(
    best: Iterable[tuple[float, str]],
    ids: Sequence[str],
    scores: Sequence[float],
    limit: int,
    score_threshold: float | None,
) -> list[tuple[float, str]]:
    """The best `limit` ``(score, fact id)`` among `best` (an earlier answer) and these scored ids, best
    first, ties by fact id; `score_threshold`: the lowest score kept."""
    candidates = [(s, i) for s, i in zip(scores, ids, strict=True) if score_threshold is None or s >= score_threshold]
    return heapq.nsmallest(limit, [*best, *candidates], key=lambda pair: (-pair[0], pair[1]))
