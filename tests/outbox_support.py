"""Helpers of tests/test_outbox.py: a deterministic embedding, a recording external index, and a
dispatcher process (``python -m tests.outbox_support URL PREFIX LOG``) for the SIGKILL test."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import memstate_sql as ms
from memstate_sql.facts import SearchResult
from memstate_sql.outbox import IndexHook

DIM = 32


def hash_embedding(text: str) -> list[float]:
    """Bag of hashed words, normalised: the same text always gives the same vector, similar texts
    (shared words) similar vectors; no model to download."""
    vec = [0.0] * DIM
    for word in text.lower().split():
        digest = int(hashlib.sha256(word.strip(".,!?").encode()).hexdigest(), 16)
        vec[digest % DIM] += 1.0 if (digest >> 8) % 2 else -1.0
    norm = math.sqrt(sum(x * x for x in vec))
    if not norm:
        return [1.0] + [0.0] * (DIM - 1)
    return [x / norm for x in vec]


class IndexDown(ConnectionError):
    pass


class RecordingIndex(IndexHook):
    """An external index in memory that records every call; `down` makes every call fail; `log_path`
    appends each put as a JSON line (read across processes)."""

    def __init__(
        self,
        name: str = "rec",
        *,
        delivery: str = "after_commit",
        delay: float = 0.0,
        log_path: str | None = None,
        target_types: set[str] | None = None,
        lease: float = 60.0,
    ) -> None:
        self.target_types = set(target_types or ())
        self.lease = lease
        self._setup_delivery(delivery, name)
        self.held: dict[str, int] = {}
        self.puts: list[tuple[str, int]] = []
        self.removes: list[str] = []
        self.down = False
        self.delay = delay
        self.log_path = log_path
        self.lock = threading.Lock()

    def document(self, fact: ms.Fact) -> str | None:
        return str(fact.payload.get("text", ""))

    def put(self, fact_id: str, fact: ms.Fact, version: int) -> None:
        if self.down:
            raise IndexDown("index unreachable")
        if self.delay:
            time.sleep(self.delay / 2)
        with self.lock:
            self.held[fact_id] = version
            self.puts.append((fact_id, version))
            if self.log_path is not None:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps([os.getpid(), fact_id, version]) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
        if self.delay:
            time.sleep(self.delay / 2)

    def remove(self, fact_ids: Sequence[str]) -> None:
        if self.down:
            raise IndexDown("index unreachable")
        with self.lock:
            for fid in fact_ids:
                self.held.pop(fid, None)
                self.removes.append(fid)

    def entries(self) -> dict[str, int | None]:
        return dict(self.held)

    def search(
        self, query: str, limit: int = 5, filters: dict[str, Any] | None = None, score_threshold: float | None = None
    ) -> list[SearchResult]:
        return [SearchResult(fact_id=fid, score=1.0) for fid in list(self.held)[:limit]]


def main(argv: list[str]) -> int:
    url, prefix, log_path = argv
    storage = ms.SQLStorage(url, table_prefix=prefix)
    from memstate_sql.dispatcher import Dispatcher

    index = RecordingIndex("rec", log_path=log_path, delay=0.3)
    print("ready", flush=True)
    Dispatcher(storage, [index], batch_size=1, lease=3.0).deliver()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
