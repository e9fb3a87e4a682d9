"""Which database a command talks to, and opening it.

The database comes from ``--url``, else the ``MEMSTATE_SQL_URL`` environment
variable, else the embedded SQLite file ``memstate.db`` in the working
directory. A ``--url`` without ``://`` is taken as the path of a SQLite file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, exc, inspect, make_url
from sqlalchemy.engine import URL

from memstate_sql import migrations
from memstate_sql.cli.errors import UNREACHABLE, USAGE, CliError
from memstate_sql.errors import StorageError, ValidationFailed
from memstate_sql.models import DEFAULT_PREFIX
from memstate_sql.storage import SQLStorage

ENV_URL = "MEMSTATE_SQL_URL"
DEFAULT_FILE = "memstate.db"


def parse_url(raw: str) -> URL:
    """A SQLAlchemy URL from a URL or a SQLite file path."""
    if "://" not in raw:
        return make_url(f"sqlite:///{Path(raw).expanduser().resolve()}")
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


def driver_problem(error: ImportError, url: URL) -> CliError:
    extra = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}.get(url.get_backend_name(), "all")
    return CliError(
        f"the database driver for {url.drivername!r} is not installed ({error}); "
        f"install it with: pip install 'memstate-sql[{extra}]'",
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

    @classmethod
    def from_args(cls, args: Any) -> Target:
        if args.url:
            raw, origin = args.url, "--url"
        elif os.environ.get(ENV_URL):
            raw, origin = os.environ[ENV_URL], ENV_URL
        else:
            raw, origin = str(Path.cwd() / DEFAULT_FILE), "default"
        return cls(url=parse_url(raw), origin=origin, prefix=args.prefix, schema=args.schema)

    @property
    def shown(self) -> str:
        return display(self.url)

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
                table_prefix=self.prefix,
                schema=self.schema,
                auto_migrate=create,
                max_attempts=max_attempts,
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
    migrations.migrate(storage.engine, table_prefix=storage.table_prefix, schema=storage.models.schema)


def verify_schema(storage: SQLStorage) -> None:
    """Raise `SchemaVersionError` unless the store's schema is the one this version expects."""
    migrations.check(storage.engine, table_prefix=storage.table_prefix, schema=storage.models.schema)


__all__ = ["DEFAULT_PREFIX", "Target"]
