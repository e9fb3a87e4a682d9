"""The test matrix: `nox -s tests-sqlite tests-postgresql tests-mysql lint typing`.

Database URLs come from MEMSTATE_SQL_TEST_POSTGRES_URL / MEMSTATE_SQL_TEST_MYSQL_URL
(defaults: the local servers of the development machine).
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests-sqlite", "tests-postgresql", "tests-mysql", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True

DEFAULT_URLS = {
    "MEMSTATE_SQL_TEST_POSTGRES_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "MEMSTATE_SQL_TEST_MYSQL_URL": "mysql+pymysql://root@127.0.0.1:3306/test",
}


@nox.session
@nox.parametrize("db", ["sqlite", "postgresql", "mysql"])
def tests(session: nox.Session, db: str) -> None:
    session.install("-e", ".[test]")
    env = {key: os.environ.get(key, url) for key, url in DEFAULT_URLS.items()}
    env["MEMSTATE_SQL_REQUIRE_DATABASES"] = os.environ.get("MEMSTATE_SQL_REQUIRE_DATABASES", "1")
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
