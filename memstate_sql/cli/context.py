"""Which database a command talks to, and opening it.

The database comes from ``--url``, else the ``MEMSTATE_SQL_URL`` environment
variable, else the embedded SQLite file ``memstate.db`` in the working
directory. A ``--url`` without ``://`` is taken as the path of a SQLite file.
``--url``, ``--prefix``, ``--schema``, ``--pooler`` and ``--json`` are accepted
before and after the command name (`common_options`); the value given last wins.
``--pooler transaction`` (or ``MEMSTATE_SQL_POOLER=transaction``) says that the
URL reaches PostgreSQL through a transaction-pooling proxy such as PgBouncer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import Engine, exc, inspect, make_url
from sqlalchemy.engine import URL

from memstate_sql.cli.errors import UNREACHABLE, USAGE, CliError
from memstate_sql.dialects import POOLERS
from memstate_sql.errors import StorageError, ValidationFailed
from memstate_sql.models import DEFAULT_PREFIX
from memstate_sql.storage import SQLStorage

ENV_URL = "MEMSTATE_SQL_URL"
ENV_POOLER = "MEMSTATE_SQL_POOLER"
DEFAULT_FILE = "memstate.db"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Settings:
    """The options shared by every command."""

    url: str | None = None
    prefix: str = DEFAULT_PREFIX
    schema: str | None = None
    namespace: str | None = None
    pooler: str | None = None
    json: bool = False


def settings() -> Settings:
    """The shared options of the running command."""
    return click.get_current_context().ensure_object(Settings)


def _keep(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None and value is not False:
            setattr(ctx.ensure_object(Settings), name, value)

    return callback


def common_options(f: F) -> F:
    """``--url``, ``--prefix``, ``--schema`` and ``--json``, stored in the context's `Settings`."""
    options = [
        click.option(
            "--url",
            metavar="URL",
            expose_value=False,
            callback=_keep("url"),
            help=f"SQLAlchemy URL or SQLite file path (default: ${ENV_URL}, else ./{DEFAULT_FILE})",
        ),
        click.option(
            "--prefix",
            metavar="PREFIX",
            expose_value=False,
            callback=_keep("prefix"),
            help=f"table prefix of the store (default: {DEFAULT_PREFIX})",
        ),
        click.option(
            "--schema",
            metavar="SCHEMA",
            expose_value=False,
            callback=_keep("schema"),
            help="database schema (PostgreSQL)",
        ),
        click.option(
            "--namespace",
            metavar="NAME",
            expose_value=False,
            callback=_keep("namespace"),
            help="the tenant whose facts the command sees and changes (default: the default namespace)",
        ),
        click.option(
            "--pooler",
            type=click.Choice(list(POOLERS)),
            expose_value=False,
            callback=_keep("pooler"),
            help=f"a connection pooler in front of PostgreSQL: transaction = PgBouncer pool_mode=transaction "
            f"(default: ${ENV_POOLER})",
        ),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            expose_value=False,
            callback=_keep("json"),
            help="machine-readable JSON output",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def parse_url(raw: str) -> URL:
    """A SQLAlchemy URL from a URL or a SQLite file path."""
    if "://" not in raw:
        return make_url(f"sqlite:///{Path(raw).expanduser().resolve()}")
    scheme = raw.split("://", 1)[0]
    if scheme.split("+", 1)[0] == "postgres":
        raise CliError(
            f"invalid database URL scheme {scheme!r}: SQLAlchemy spells PostgreSQL URLs postgresql:// "
            "(use postgresql+psycopg://...)",
            USAGE,
        )
    try:
        return make_url(raw)
    except exc.ArgumentError as error:
        raise CliError(f"invalid database URL {raw!r}: {error}", USAGE) from None


def display(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(str(url.database))


#: The fix for a missing driver, by SQLAlchemy driver name.
INSTALL_HINTS = {
    "psycopg": "pip install 'memstate-sql[postgres]'",
    "psycopg2": "pip install psycopg2-binary, or use a postgresql+psycopg:// URL (memstate-sql[postgres])",
    "pymysql": "pip install 'memstate-sql[mysql]'",
    "mysqldb": "pip install mysqlclient, or use a mysql+pymysql:// URL (memstate-sql[mysql])",
    "aiosqlite": "pip install 'memstate-sql[async]'",
    "aiomysql": "pip install 'memstate-sql[async]'",
    "asyncpg": "pip install asyncpg, or use a postgresql+psycopg:// URL",
}


def driver_problem(error: ImportError, url: URL) -> CliError:
    driver = url.get_driver_name()
    extra = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}.get(url.get_backend_name(), "all")
    hint = INSTALL_HINTS.get(driver, f"pip install 'memstate-sql[{extra}]'")
    return CliError(
        f"the database driver for {url.drivername!r} is not installed ({error}); install it with: {hint}",
        UNREACHABLE,
    )


def probe(engine: Engine, url: URL) -> None:
    """Connect once, so that an unreachable database is reported as such."""
    try:
        with engine.connect():
            pass
    except exc.DBAPIError as error:
        first = str(error.orig).strip().splitlines()[0] if str(error.orig).strip() else type(error.orig).__name__
        raise CliError(f"cannot connect to {display(url)}: {first}", UNREACHABLE) from None


@dataclass
class Target:
    """The database and table prefix a command works on."""

    url: URL
    origin: str
    prefix: str
    schema: str | None
    namespace: str | None = None
    pooler: str | None = None

    @classmethod
    def current(cls) -> Target:
        """The target named by the running command's options (`Settings`)."""
        opts = settings()
        if opts.url:
            raw, origin = opts.url, "--url"
        elif os.environ.get(ENV_URL):
            raw, origin = os.environ[ENV_URL], ENV_URL
        else:
            raw, origin = str(Path.cwd() / DEFAULT_FILE), "default"
        return cls(
            url=parse_url(raw),
            origin=origin,
            prefix=opts.prefix,
            schema=opts.schema,
            namespace=opts.namespace,
            pooler=opts.pooler or os.environ.get(ENV_POOLER) or None,
        )

    @property
    def shown(self) -> str:
        return display(self.url)

    def describe(self) -> str:
        """The database, prefix and (PostgreSQL) schema, for messages."""
        where = f"prefix {self.prefix}" + (f", schema {self.schema}" if self.schema else "")
        where += f", namespace {self.namespace!r}" if self.namespace else ""
        return f"{self.shown} ({where})"

    def open(self, *, create: bool, ensure: str = "", max_attempts: int = 10) -> SQLStorage:
        """A storage on the target.

        `create`: the command may create the database (a SQLite file); otherwise a missing SQLite
        file is an error. `ensure`: ``"head"`` brings the schema to the current version, ``"verify"``
        requires it to be current (`SchemaVersionError` otherwise), ``"none"`` leaves it alone; the
        default is ``"head"`` when `create` and ``"verify"`` otherwise.
        """
        ensure = ensure or ("head" if create else "verify")
        path = sqlite_file(self.url)
        if path is not None and not create and not path.exists():
            raise CliError(
                f"no database file at {path} (pass --url or set {ENV_URL}; `memstate-sql upgrade` creates one)",
                UNREACHABLE,
            )
        if path is not None and create and not path.parent.exists():
            raise CliError(f"cannot create {path}: directory {path.parent} does not exist", UNREACHABLE)
        try:
            storage = SQLStorage(
                self.url,
                namespace=self.namespace,
                table_prefix=self.prefix,
                schema=self.schema,
                auto_migrate=create,
                max_attempts=max_attempts,
                pooler=self.pooler,
            )
        except ImportError as error:
            raise driver_problem(error, self.url) from None
        except (ValidationFailed, StorageError, exc.ArgumentError) as error:
            raise CliError(str(error), USAGE) from None
        try:
            probe(storage.engine, self.url)
            self._check_foreign_tables(storage.engine)
            if ensure == "head":
                bring_to_head(storage)
            elif ensure == "verify":
                verify_schema(storage)
        except BaseException:
            storage.close()
            raise
        return storage

    def _check_foreign_tables(self, engine: Engine) -> None:
        """Refuse to work on tables of our names that memstate_sql did not create (memstate's own
        PostgreSQL tables are named ``memstate_facts`` too)."""
        facts = f"{self.prefix}_facts"
        insp = inspect(engine)
        if insp.has_table(facts, schema=self.schema):
            columns = {c["name"] for c in insp.get_columns(facts, schema=self.schema)}
            if "payload" not in columns or "singleton" not in columns:
                raise CliError(
                    f"table {facts} exists but is not a memstate_sql table (memstate's own tables use the same "
                    "name); choose another --prefix",
                    USAGE,
                )


def bring_to_head(storage: SQLStorage) -> None:
    """Create or upgrade the store's tables."""
    from memstate_sql import migrations

    migrations.migrate(storage.engine, table_prefix=storage.table_prefix, schema=storage.models.schema)


def verify_schema(storage: SQLStorage) -> None:
    """Raise `SchemaVersionError` unless the store's schema is the one this version expects."""
    from memstate_sql import migrations

    migrations.check(storage.engine, table_prefix=storage.table_prefix, schema=storage.models.schema)


__all__ = ["DEFAULT_PREFIX", "Settings", "Target", "common_options", "settings"]
