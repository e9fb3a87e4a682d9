"""The test matrix: `nox -s tests-sqlite tests-postgresql tests-mysql lint typing`.

Without MEMSTATE_SQL_TEST_POSTGRES_URL / MEMSTATE_SQL_TEST_MYSQL_URL the suite starts private servers of its
own (tests/servers.py); a URL that is set is passed through and takes precedence. Every selected database is
required (MEMSTATE_SQL_REQUIRE_DATABASES defaults to 1 here): one that cannot be provided fails the session.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests-sqlite", "tests-postgresql", "tests-mysql", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
@nox.parametrize("db", ["sqlite", "postgresql", "mysql"])
def tests(session: nox.Session, db: str) -> None:
    session.install("-e", ".[test]")
    # the session inherits the environment, so URLs that are set reach pytest
    env = {"MEMSTATE_SQL_REQUIRE_DATABASES": os.environ.get("MEMSTATE_SQL_REQUIRE_DATABASES", "1")}
    session.run("pytest", "--db", db, *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    paths = ("memstate_sql", "alembic", "tests", "tools", "benchmarks", "noxfile.py", "setup.py")
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def typing(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("mypy")
    session.run("python", "-m", "tools.generate_async", "--check")
