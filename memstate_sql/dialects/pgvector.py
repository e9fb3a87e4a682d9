"""pgvector on PostgreSQL: an approximate (HNSW) index over the packed vectors, re-ranked exactly.

The portable table (``<prefix>_vectors``, revision ms_0006) keeps each embedding as packed
little-endian float32 in a BYTEA column, written by the store in the fact's transaction. Where the
``vector`` extension is installed, revision ms_0008 adds one SQL function per prefix,
``<prefix>_vector_of(bytea) -> vector`` (IMMUTABLE: it only decodes the bytes), and a storage whose
`VectorIndex` has ``ann=True`` creates, once, a partial HNSW expression index per dimension:

    CREATE INDEX ix_<prefix>_vectors_ann_<dim> ON <prefix>_vectors
        USING hnsw ((<prefix>_vector_of(vector)::vector(<dim>)) vector_cosine_ops) WHERE dim = <dim>

So nothing else is stored and no writer has to know about pgvector: PostgreSQL computes the index
entry from the row in the same transaction (a write without the extension-aware code is indexed
too), and a rolled-back write leaves no entry.

A search (`nearest`) asks the index for ``limit * MARGIN`` candidates (at least `MIN_CANDIDATES`, at
most `MAX_CANDIDATES`, with ``hnsw.ef_search`` raised to match, for this transaction only), with the
store's filters and the version join in the same SQL, then scores them exactly from their packed
vectors (`memstate_sql.scoring`, the exact scan's arithmetic and tie rule). The answer is the exact
scan's whenever the candidates contain the exact top-k, which HNSW makes likely but does not
guarantee, least of all with filters (pgvector 0.6 filters the graph search's ``ef_search`` entries
afterwards). When the filters leave fewer candidates than asked, the graph search is repeated once
with ``ef_search = MAX_CANDIDATES``; when that is still too few (a selective filter, a small set),
nothing is known about what the index missed: `nearest` answers None and the exact scan runs, over
the few candidates the filters select. ``VectorIndex(ann=False)``: always exact.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Float, Table, cast, literal, literal_column, select, text
from sqlalchemy.sql.functions import Function
from sqlalchemy.types import UserDefinedType

from memstate_sql.dialects.base import NearestRequest
from memstate_sql.scoring import best_of, scorer

#: Candidates asked of the HNSW index per result wanted.
MARGIN = 4
#: Fewest candidates asked (pgvector's default ``hnsw.ef_search``).
MIN_CANDIDATES = 40
#: Most candidates asked (``hnsw.ef_search`` accepts up to 1000): a larger `limit` scans exactly.
MAX_CANDIDATES = 1000
#: pgvector 0.6 indexes ``vector`` columns of at most 2000 dimensions: larger ones scan exactly.
MAX_HNSW_DIM = 2000
EXTENSION = "vector"


def function_name(vectors_table: str) -> str:
    """The decoding function of a prefix's vectors table (``<prefix>_vector_of``)."""
    return vectors_table.removesuffix("_vectors") + "_vector_of"


def index_name(vectors_table: str, dim: int) -> str:
    """The HNSW index of the vectors of dimension `dim`."""
    return f"ix_{vectors_table}_ann_{dim}"


def _qualified(conn: Connection, name: str, schema: str | None) -> str:
    preparer = conn.dialect.identifier_preparer
    return (f"{preparer.quote_schema(schema)}." if schema else "") + preparer.quote(name)


def extension_schema(conn: Connection) -> str | None:
    """The schema the ``vector`` extension is installed in (None: not installed)."""
    found = conn.execute(
        text("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = :x"),
        {"x": EXTENSION},
    ).scalar()
    return None if found is None else str(found)


def available(conn: Connection) -> bool:
    """Whether the server has the ``vector`` extension to install (``pg_available_extensions``)."""
    query = text("SELECT 1 FROM pg_available_extensions WHERE name = :x")
    return conn.execute(query, {"x": EXTENSION}).scalar() is not None


def status(conn: Connection, approximate: bool) -> tuple[bool, str]:
    """`DialectSupport.nearest_status` for PostgreSQL."""
    if not approximate:
        return False, "PostgreSQL ranks vectors only through pgvector's approximate index: VectorIndex(ann=True)"
    if extension_schema(conn) is None:
        return False, "the vector extension (pgvector) is not installed in this database"
    return True, "pgvector HNSW (approximate candidates, re-ranked exactly)"


def install(conn: Connection, vectors_table: str, schema: str | None, *, create_extension: bool = True) -> bool:
    """Make pgvector usable for a prefix's vectors table (revision ms_0008): the extension (created when
    `create_extension` and the server has it; a failure, e.g. a missing privilege, is no error) and the
    decoding function. Returns whether pgvector is now usable; False changes nothing."""
    ext = extension_schema(conn)
    if ext is None and create_extension and available(conn):
        try:
            with conn.begin_nested():
                conn.execute(text(f"CREATE EXTENSION IF NOT EXISTS {EXTENSION}"))
        except Exception:
            return False
        ext = extension_schema(conn)
    if ext is None:
        return False
    vector = f"{conn.dialect.identifier_preparer.quote_schema(ext)}.vector"
    fn = _qualified(conn, function_name(vectors_table), schema)
    # Bits of each little-endian float32 -> sign, exponent, mantissa -> the same float (exact in float8;
    # subnormals included; the store never writes NaN or infinities). IMMUTABLE: usable in an index.
    conn.execute(
        text(
            f"CREATE OR REPLACE FUNCTION {fn}(b bytea) RETURNS {vector} "  # noqa: S608 - quoted identifiers
            "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ "
            "SELECT CAST(CAST(array_agg(CASE WHEN p.e = 0 THEN p.m * 2.0::float8 ^ (-149) "
            "ELSE (p.m + 8388608) * 2.0::float8 ^ (p.e - 150) END * (1 - 2 * p.s) ORDER BY p.i) "
            f"AS real[]) AS {vector}) "
            "FROM (SELECT i, get_byte(b, 4 * i + 3) >> 7 AS s, "
            "((get_byte(b, 4 * i + 3) & 127) << 1) | (get_byte(b, 4 * i + 2) >> 7) AS e, "
            "((get_byte(b, 4 * i + 2) & 127) << 16) | (get_byte(b, 4 * i + 1) << 8) | get_byte(b, 4 * i) AS m "
            "FROM generate_series(0, length(b) / 4 - 1) AS i) AS p $$"
        ).execution_options(no_parameters=True)
    )
    return True


def uninstall(conn: Connection, vectors_table: str, schema: str | None) -> None:
    """Drop the decoding function and with it every HNSW index of the prefix (the extension stays:
    other tables may use it). The packed vectors are untouched."""
    fn = _qualified(conn, function_name(vectors_table), schema)
    conn.execute(text(f"DROP FUNCTION IF EXISTS {fn}(bytea) CASCADE"))


def _function_exists(conn: Connection, vectors: Table) -> bool:
    signature = _qualified(conn, function_name(vectors.name), vectors.schema) + "(bytea)"
    return conn.execute(text("SELECT to_regprocedure(:s) IS NOT NULL"), {"s": signature}).scalar() is True


def ensure_index(conn: Connection, vectors: Table, dim: int) -> bool:
    """Create the HNSW index of dimension `dim` if pgvector is installed and it does not exist yet (the
    decoding function too, when the extension was installed after ms_0008 ran). Returns whether the
    index exists. Building it on a table that already holds many vectors of `dim` takes a while
    (and blocks writes to the vectors table meanwhile)."""
    if dim > MAX_HNSW_DIM:
        return False
    ext = extension_schema(conn)
    if ext is None:
        return False
    if not _function_exists(conn, vectors) and not install(conn, vectors.name, vectors.schema, create_extension=False):
        return False
    preparer = conn.dialect.identifier_preparer
    quoted_ext = preparer.quote_schema(ext)
    fn = _qualified(conn, function_name(vectors.name), vectors.schema)
    table = preparer.format_table(vectors)
    name = preparer.quote(index_name(vectors.name, dim))
    conn.execute(
        text(
            f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING hnsw "
            f"(CAST({fn}(vector) AS {quoted_ext}.vector({dim})) {quoted_ext}.vector_cosine_ops) WHERE dim = {dim}"
        )
    )
    return True


class _Vector(UserDefinedType[Any]):
    """pgvector's ``vector(dim)``, qualified by the extension's schema (for casts only)."""

    cache_ok = True

    def __init__(self, schema: str, dim: int) -> None:
        self.schema = schema
        self.dim = dim

    def get_col_spec(self, **kw: Any) -> str:
        return f"{self.schema}.vector({self.dim})"


def candidates(conn: Connection, request: NearestRequest, count: int, ext: str) -> Any:
    """The statement that asks the HNSW index for `count` candidates ``(fact_id, vector)``, nearest first
    (`ext`: the schema of the ``vector`` extension)."""
    vectors = request.vectors
    quoted_ext = conn.dialect.identifier_preparer.quote_schema(ext)
    vector_type = _Vector(quoted_ext, request.dim)
    packages = (vectors.schema,) if vectors.schema else ()
    decoded: Function[Any] = Function(function_name(vectors.name), vectors.c.vector, packagenames=packages)
    query = "[" + ",".join(repr(float(x)) for x in request.query) + "]"
    distance = cast(decoded, vector_type).op(f"OPERATOR({quoted_ext}.<=>)", return_type=Float())(
        cast(literal(query), vector_type)
    )
    # The partial index's predicate as a literal: a bound ``dim = $1`` would not prove it in a generic plan.
    same_dim = vectors.c.dim == literal_column(str(int(request.dim)))
    return (
        select(vectors.c.fact_id, vectors.c.vector)
        .select_from(request.source)
        .where(request.where & same_dim)
        .order_by(distance)
        .limit(count)
    )


def nearest(conn: Connection, request: NearestRequest) -> list[tuple[str, float]] | None:
    """The top-k from the HNSW index's candidates, re-ranked exactly (see the module's docstring); None
    where there is no index for this table and dimension, or the candidates cannot be trusted."""
    count = max(MIN_CANDIDATES, request.limit * MARGIN)
    if not request.approximate or count > MAX_CANDIDATES or request.dim > MAX_HNSW_DIM:
        return None
    vectors = request.vectors
    index = _qualified(conn, index_name(vectors.name, request.dim), vectors.schema)
    probe = text(
        "SELECT to_regclass(:ix) IS NOT NULL, current_setting('hnsw.ef_search', true), "
        "(SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = :x)"
    )
    present, previous, ext = conn.execute(probe, {"ix": index, "x": EXTENSION}).one()
    if not present or ext is None:
        return None
    setting = text("SELECT set_config('hnsw.ef_search', :v, true)")  # this transaction only (SET LOCAL)
    statement = candidates(conn, request, count, str(ext))
    rows: list[Any] = []
    # The graph search visits ``ef_search`` entries, which the filters then thin out: if too few are left,
    # search once more with the widest graph search before giving up (to the exact scan).
    for ef in sorted({count, MAX_CANDIDATES}):
        conn.execute(setting, {"v": str(ef)})
        rows = list(conn.execute(statement).all())
        if len(rows) >= count:
            break
    # Put it back for the rest of the transaction (a host's own, for a storage bound to it); a failure
    # above rolls the transaction back, which restores it anyway.
    conn.execute(setting, {"v": previous or str(MIN_CANDIDATES)})
    if len(rows) < count:
        return None  # the index ran out (filters, a small set): what it missed is unknown
    scores = scorer()([bytes(row[1]) for row in rows], request.query, request.dim)
    best = best_of([], [row[0] for row in rows], scores, request.limit, request.score_threshold)
    return [(fact_id, score) for score, fact_id in best]
