"""MySQL/MariaDB's scripted lone writes as a statement listener sees them (tests/test_scripted_writes.py,
tests/test_lone_writes.py)."""

from __future__ import annotations

import re
import time
from typing import Any

import sqlalchemy as sa

COMMIT = "START TRANSACTION; INSERT facts; INSERT sessions; INSERT tx; COMMIT"
UPDATE = "START TRANSACTION; UPDATE facts; SET; INSERT sessions; INSERT tx; COMMIT"
#: An update as a transaction: the row read under lock, then written with its position and entry.
LOCKED_UPDATE = ["BEGIN", "SELECT facts", "UPDATE facts", "INSERT sessions", "INSERT tx"]


def kind(statement: str) -> str:
    """``START TRANSACTION; INSERT facts; ...`` for a script, ``SELECT facts`` for one statement."""
    kinds = []
    for part in statement.split(";"):
        words = part.split()
        table = {"INSERT": 2, "UPDATE": 1, "SELECT": -1}.get(words[0])
        if words[0] == "SELECT":
            found = re.split(r"\sFROM\s", part, maxsplit=1)[1].split()[0]
        else:
            found = "" if table is None else words[table]
        name = found.strip("`").rsplit("_", 1)[-1]
        kinds.append(" ".join(words[:2]) if words[0] == "START" else f"{words[0]} {name}".strip())
    return "; ".join(kinds)


Sent = list[tuple[str, bool]]


def in_transaction(driver: Any) -> bool:
    driver = getattr(driver, "_connection", driver)  # SQLAlchemy's asyncio adapter: aiomysql's connection
    return bool(driver.server_status & 1)  # SERVER_STATUS_IN_TRANS


def status(conn: Any, statement: str) -> tuple[str, bool]:
    """(kind of the statement, whether a transaction was open before it)."""
    return kind(statement), in_transaction(conn.connection.dbapi_connection)


def kill_session(db_url: str, thread_id: int) -> None:
    """End a server session from another connection, as a server restart or ``wait_timeout`` would."""
    engine = sa.create_engine(db_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql(f"KILL CONNECTION {int(thread_id)}")
        alive = sa.text("SELECT count(*) FROM information_schema.processlist WHERE id = :id")
        for _ in range(200):
            if conn.execute(alive, {"id": thread_id}).scalar() == 0:
                break
            time.sleep(0.01)
    engine.dispose()
