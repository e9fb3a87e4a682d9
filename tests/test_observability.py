"""Logging (one record per operation, no payloads, no passwords) and pool settings."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import memstate_sql as ms
from memstate_sql import ConnectionLost, Fact
from tests.servers import free_port

SECRET = "TOP-SECRET-PAYLOAD-VALUE"


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("memstate_sql")]


def test_each_write_logs_operation_fact_session_duration_attempts(store: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="memstate_sql")
    fid = store.commit(Fact(type="t", payload={"secret": SECRET}), session_id="s1")
    store.update(fid, {"payload": {"secret": SECRET + "2"}}, actor="a")
    with pytest.raises(ms.ConflictError):
        store.update(fid, {"payload": {"x": SECRET}}, expected_version=1)
    store.rollback("s1")
    found = records(caplog)
    assert all(SECRET not in r.getMessage() and SECRET not in str(r.__dict__) for r in found)
    writes = [r for r in found if r.levelno == logging.INFO]
    assert [(r.memstate_op, r.memstate_fact_id) for r in writes] == [  # type: ignore[attr-defined]
        ("commit", fid),
        ("update", fid),
        ("update", fid),
        ("rollback", None),
    ]
    commit = writes[0]
    assert commit.memstate_session_id is None or commit.memstate_session_id == "s1"  # type: ignore[attr-defined]
    assert commit.memstate_attempts == 1 and commit.memstate_duration_ms >= 0  # type: ignore[attr-defined]
    assert "failed" in writes[2].getMessage() and writes[2].memstate_error == "ConflictError"  # type: ignore[attr-defined]
    assert writes[3].memstate_session_id == "s1"  # type: ignore[attr-defined]
    assert all(r.levelno <= logging.INFO for r in found)  # routine refusals are not warnings


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg://memuser:{pw}@127.0.0.1:{port}/x", "mysql+pymysql://memuser:{pw}@127.0.0.1:{port}/x"]
)
def test_the_password_never_reaches_logs_errors_or_repr(url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    password = "pw-Never-Log-Me-42"
    storage = ms.SQLStorage(url.format(pw=password, port=free_port()), table_prefix="logtest")
    try:
        with pytest.raises(ConnectionLost) as info:
            ms.MemoryStore(storage).get("x")
        with pytest.raises(ConnectionLost):
            storage.load("x")
    finally:
        storage.close()
    assert password not in str(info.value) and password not in repr(storage)
    assert password not in caplog.text
    assert all(password not in str(r.__dict__) for r in caplog.records)


def test_pool_settings_pass_through(db: str, db_url: str, prefix: str) -> None:
    options = {"pool_size": 3, "max_overflow": 2, "pool_timeout": 7, "pool_recycle": 600}
    storage = ms.SQLStorage(db_url, table_prefix=prefix, engine_options=options)
    try:
        pool: Any = storage.engine.pool
        assert pool.size() == 3 and pool._max_overflow == 2 and pool._timeout == 7 and pool._recycle == 600
        # No pre-ping by default (a round trip per checkout): the unit of work replaces a connection
        # found dead at an operation's first statement (tests/test_transient.py, tests/test_restart.py).
        assert pool._pre_ping is False
        ms.MemoryStore(storage).commit(Fact(type="t", payload={}))
    finally:
        storage.close()
    on = ms.SQLStorage(db_url, table_prefix=prefix, engine_options={"pool_pre_ping": True})
    try:
        assert on.engine.pool._pre_ping is True  # type: ignore[attr-defined]
    finally:
        on.close()
