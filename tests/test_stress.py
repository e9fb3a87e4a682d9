"""Eight processes mixing every kind of write on shared facts; afterwards every invariant holds.

The short run (a few seconds per database) is always on; ``--run-slow`` adds a minute-long run.
"""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests import workload
from tests.invariants import check_tables

WORKERS = 8
MUST_LOG_ONE = {"commit", "singleton_commit", "update", "delete"}


def log_entries_by_reason(url: str, prefix: str) -> dict[str, list[tuple[int, str | None]]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT seq, reason, reverted_by FROM {prefix}_tx")).all()
    finally:
        engine.dispose()
    found: dict[str, list[tuple[int, str | None]]] = defaultdict(list)
    for seq, reason, reverted_by in rows:
        found[reason].append((seq, reverted_by))
    return found


def singleton_counts(url: str, prefix: str) -> Counter[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT singleton FROM {prefix}_facts WHERE type = 'user'")).all()
    finally:
        engine.dispose()
    return Counter(row[0] for row in rows)


def run_workers(db_url: str, prefix: str, tmp_path: Path, seconds: float) -> list[dict[str, Any]]:
    workload.make_store(db_url, prefix).storage.schema_gate.ensure()  # create the tables once, before the race
    ctx = multiprocessing.get_context("fork")
    paths = [str(tmp_path / f"worker{i}.json") for i in range(WORKERS)]
    procs = [
        ctx.Process(target=workload.run_worker, args=(db_url, prefix, i, seconds, 1000 + i, paths[i]))
        for i in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=seconds + 120)
        assert proc.exitcode == 0, f"worker exited with {proc.exitcode}"
    return [json.loads(Path(p).read_text()) for p in paths]


@pytest.mark.parametrize(
    "seconds", [pytest.param(3.0, id="short"), pytest.param(60.0, id="long", marks=pytest.mark.slow)]
)
def test_eight_processes_keep_every_invariant(
    db: str, db_url: str, prefix: str, tmp_path: Path, seconds: float, capsys: pytest.CaptureFixture[str]
) -> None:
    results = run_workers(db_url, prefix, tmp_path, seconds)

    report = check_tables(db_url, prefix)  # one fact per key, log replays to the facts, no lost change
    singles = singleton_counts(db_url, prefix)
    assert all(n == 1 for n in singles.values()), singles
    assert len(singles) <= workload.EMAILS

    by_reason = log_entries_by_reason(db_url, prefix)
    lost: list[str] = []
    for wid, result in enumerate(results):
        last_seq = 0
        for n, kind in result["acked"]:
            entries = by_reason.get(f"w{wid}:{n}", [])
            if kind in MUST_LOG_ONE and len(entries) != 1:
                lost.append(f"worker {wid} op {n} ({kind}) has {len(entries)} log entries")
            if entries:
                seq = min(seq for seq, _ in entries)
                # An operation that began after another was acknowledged is logged after it.
                assert seq > last_seq, f"worker {wid}: op {n} got seq {seq} after seq {last_seq}"
                last_seq = max(seq for seq, _ in entries)
    assert not lost, lost[:20]

    totals: Counter[str] = Counter()
    for result in results:
        totals.update(result["outcomes"])
    acknowledged = sum(len(r["acked"]) for r in results)
    with capsys.disabled():
        print(
            f"\n[stress {db} {seconds:.0f}s x {WORKERS} processes] acknowledged={acknowledged} "
            f"outcomes={dict(sorted(totals.items()))} tables={report.counts()} singleton_keys={len(singles)}"
        )
    assert acknowledged > WORKERS  # the run did real work
    assert totals["update"] > 0 and totals["singleton_commit"] > 0 and totals["rollback"] > 0
