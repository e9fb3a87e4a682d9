"""Vector search computed by SQLite itself, with the sqlite-vec extension (docs/search.md).

`nearest` answers `DialectSupport.nearest` for SQLite: sqlite-vec's ``vec_distance_cosine`` over the
float32 vectors already stored (little-endian, unit length: the format sqlite-vec reads), with the
store's filters in the same SQL, ``ORDER BY distance LIMIT k`` inside SQLite. sqlite-vec computes in
float32; its order is only trusted where it cannot differ from the exact one: the rows it returns are
scored again exactly (float64, rounded like the exact scan), and when the k-th exact score is not clear
of what an unreturned row could reach (`_slack`: a bound on float32's error), every row that could is
fetched and ranked exactly too. The answer is therefore the exact scan's, ids, scores and order.

The extension is loaded into each connection on its first search (``enable_load_extension``, then
``sqlite_vec.load``), never for a storage whose index says ``in_database="off"``. CPython's ``sqlite3``
is often built without ``enable_load_extension`` (this one is): run SQLite through ``pysqlite3``
instead, ``engine_options={"module": pysqlite3.dbapi2}`` (`loadable_module`), and SQLAlchemy's pysqlite
dialect drives it unchanged. The asyncio driver (aiosqlite) wraps CPython's ``sqlite3``: there the
extension loads only where that module can load extensions, else the exact scan runs.
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, LargeBinary, bindparam, func, literal, select
from sqlalchemy.sql import ColumnElement

from memstate_sql.dialects.base import NearestRequest
from memstate_sql.scoring import SCORE_DECIMALS, _layout

NAME = "sqlite-vec"
#: Per DBAPI connection (its pool record's ``info``): None once loaded, else why it cannot be.
_STATE = "memstate_sql.sqlite_vec"
#: Rows asked of SQLite beyond k, so that a boundary blurred by float32 is usually settled in one query.
_EXTRA = 16


def loadable_module() -> Any:
    """A DBAPI module whose connections can load extensions: ``pysqlite3.dbapi2`` when installed
    (``pip install pysqlite3-binary``), else CPython's ``sqlite3`` when it can; None if neither.
    Pass it as ``engine_options={"module": ...}`` to a SQLite storage."""
    try:
        import pysqlite3.dbapi2 as module
    except ImportError:
        import sqlite3 as module
    return module if hasattr(module.Connection, "enable_load_extension") else None


def unavailable(conn: Connection) -> str | None:
    """None when sqlite-vec is loaded into this connection (loading it the first time), else why not."""
    record = conn.connection
    if _STATE not in record.info:
        record.info[_STATE] = _load(record.dbapi_connection)
    reason: str | None = record.info[_STATE]
    return reason


def version(conn: Connection) -> str:
    return str(conn.exec_driver_sql("SELECT vec_version()").scalar())


def _load(dbapi_conn: Any) -> str | None:
    try:
        import sqlite_vec
    except ImportError:
        return "the sqlite-vec package is not installed (pip install 'memstate-sql[sqlite-vec]')"
    driver = getattr(dbapi_conn, "driver_connection", None)
    if driver is not None and driver is not dbapi_conn:
        return _load_async(driver, sqlite_vec.loadable_path())
    enable = getattr(dbapi_conn, "enable_load_extension", None)
    if enable is None:
        return (
            f"this Python's {type(dbapi_conn).__module__} module cannot load extensions (built without "
            "enable_load_extension): run SQLite through pysqlite3, engine_options={'module': pysqlite3.dbapi2} "
            "(pip install pysqlite3-binary; docs/search.md)"
        )
    try:
        enable(True)
        try:
            dbapi_conn.load_extension(sqlite_vec.loadable_path())
        finally:
            enable(False)
    except Exception as err:  # any failure means: not loadable here, and why
        return f"sqlite-vec could not be loaded: {err}"
    return None


def _load_async(driver: Any, path: str) -> str | None:
    """Load into an aiosqlite connection, from inside SQLAlchemy's greenlet bridge."""
    from sqlalchemy.util import await_

    inner = getattr(driver, "_conn", None)
    if inner is None or not hasattr(inner, "enable_load_extension"):
        return (
            "the asyncio driver's sqlite3 module cannot load extensions (built without enable_load_extension): "
            "use the sync storage with pysqlite3 (docs/search.md)"
        )
    try:
        await_(driver.enable_load_extension(True))
        try:
            await_(driver.load_extension(path))
        finally:
            await_(driver.enable_load_extension(False))
    except Exception as err:  # any failure means: not loadable here, and why
        return f"sqlite-vec could not be loaded: {err}"
    return None


def _slack(dim: int) -> float:
    """A bound on |sqlite-vec's cosine distance - (1 - the exact score)|: float32 sums of `dim` products
    (and the two norms) err by at most about ``2 * dim`` units of 2**-24; four times that, for safety."""
    return (dim + 16) * 2.0**-21


def _exact(blob: bytes, query: Sequence[float], layout: struct.Struct) -> float:
    """The exact scan's score: the float64 dot product of the stored float32 numbers, rounded."""
    return round(math.fsum(map(operator.mul, layout.unpack(blob), query)), SCORE_DECIMALS)


def nearest(conn: Connection, request: NearestRequest) -> list[tuple[str, float]] | None:
    """`DialectSupport.nearest` with sqlite-vec; None when it cannot be loaded into this connection."""
    if unavailable(conn) is not None:
        return None
    layout = _layout(request.dim)
    vectors = request.vectors
    probe = layout.pack(*request.query)
    distance = func.vec_distance_cosine(vectors.c.vector, bindparam("q_vec", probe, type_=LargeBinary))
    slack = _slack(request.dim)
    threshold = request.score_threshold
    base = request.where
    if threshold is not None:
        base = base & (distance <= literal(1.0 - threshold + slack))
    stmt = select(vectors.c.fact_id, vectors.c.vector, distance).select_from(request.source)
    wanted = request.limit + _EXTRA

    def rows(where: ColumnElement[bool], limit: int | None) -> list[tuple[str, float, float]]:
        query = stmt.where(where).order_by(distance, vectors.c.fact_id)
        if limit is not None:
            query = query.limit(limit)
        found = [(str(r[0]), _exact(bytes(r[1]), request.query, layout), float(r[2])) for r in conn.execute(query)]
        return found

    first = rows(base, wanted)
    ranked = _ranked(first, request.limit, threshold)
    if len(first) < wanted:
        return ranked  # every candidate was scored exactly
    # Rows not returned are at least as far as the last one returned: their exact score is at most
    # ``1 - last + slack``. The k-th exact score clear of that settles it; else fetch all that could reach it.
    reach = 1.0 - first[-1][2] + slack
    if len(ranked) == request.limit and ranked[-1][1] > reach:
        return ranked
    if len(ranked) == request.limit:
        base = base & (distance <= literal(1.0 - ranked[-1][1] + slack))
    return _ranked(rows(base, None), request.limit, threshold)


def _ranked(found: list[tuple[str, float, float]], limit: int, threshold: float | None) -> list[tuple[str, float]]:
    kept = [(fact_id, score) for fact_id, score, _ in found if threshold is None or score >= threshold]
    kept.sort(key=lambda pair: (-pair[1], pair[0]))
    return kept[:limit]


def status(conn: Connection) -> tuple[bool, str]:
    """`DialectSupport.nearest_status` for SQLite."""
    reason = unavailable(conn)
    if reason is not None:
        return False, reason
    return True, f"{NAME} {version(conn)}"
