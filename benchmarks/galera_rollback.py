"""Issue 15's Galera case under apply lag, as a repeatable experiment (not a timed benchmark).

    MEMSTATE_SQL_TEST_GALERA_URLS=mysql+pymysql://root@127.0.0.1:4306/db,...:4307/db,...:4308/db \
        python -m benchmarks.galera_rollback [rounds]

A loader thread writes big transactions on node 1, so nodes 2 and 3 apply node 1's commits late. Each
round: a commit in session s on node 1, a later (acknowledged) commit in s on node 2, then
``rollback(s, 1)`` on node 3, which must undo node 2's commit. Prints how many rounds undid the wrong
entry and in how many the later commit got the lower ``seq``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid

import sqlalchemy as sa

import memstate_sql as ms
from memstate_sql import Fact


def main() -> None:
    urls = [u for u in os.environ.get("MEMSTATE_SQL_TEST_GALERA_URLS", "").split(",") if u]
    if len(urls) < 3:
        sys.exit("set MEMSTATE_SQL_TEST_GALERA_URLS to three node URLs of one Galera cluster")
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    prefix = "g" + uuid.uuid4().hex[:8]
    storages = [ms.SQLStorage(u, table_prefix=prefix) for u in urls[:3]]
    for st in storages:
        st.load("warm-up")
    stores = [ms.MemoryStore(st) for st in storages]
    stop = threading.Event()

    def load() -> None:
        engine = sa.create_engine(urls[0])
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE {prefix}_load (id INT AUTO_INCREMENT PRIMARY KEY, v LONGTEXT)")
        blob = "x" * 200_000
        while not stop.is_set():
            with engine.begin() as conn:
                conn.exec_driver_sql(f"INSERT INTO {prefix}_load (v) VALUES " + ",".join(["(%s)"] * 20), (blob,) * 20)
        engine.dispose()

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(2)
    wrong = inverted = 0
    try:
        for r in range(rounds):
            session = f"s{r}"
            earlier = stores[0].commit(Fact(type="note", payload={"n": 1}), session_id=session)
            later = stores[1].commit(Fact(type="note", payload={"n": 2}), session_id=session)
            stores[2].rollback(session, 1)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(storages[0].history(earlier) + storages[0].history(later)) < 3:
                time.sleep(0.1)  # node 1 applies the rollback
            if stores[0].get(later) is not None or stores[0].get(earlier) is None:
                wrong += 1
            if storages[0].history(later)[0]["seq"] < storages[0].history(earlier)[0]["seq"]:
                inverted += 1
    finally:
        stop.set()
        loader.join()
        for st in storages:
            st.close()
        engine = sa.create_engine(urls[0])
        with engine.begin() as conn:
            for name in ("tx", "facts", "sessions", "alembic_version", "load"):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {prefix}_{name}")
        engine.dispose()
    print(f"{rounds} rounds: wrong entry undone in {wrong}; the later commit got the lower seq in {inverted}")


if __name__ == "__main__":
    main()
