"""Peak memory of streaming every fact with `MemoryStore.iter_query` (issue 12: growth <= 100 MB at 1M facts).

    python -m benchmarks.memory [--facts 1000000] [--db sqlite|postgresql|mariadb] [--batch-size 500]

Loads ``--facts`` facts (bulk multi-row inserts, as `benchmarks.run` loads its 1M data set) under a fresh table
prefix, then streams them in a fresh process: the figure is that process's peak resident set during the
stream (VmHWM, reset just before it) minus its resident set then, with the store opened and its schema checked.
`benchmarks.run` (without ``--quick``) adds the row for its own 1M data set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Reset the kernel's peak resident set of this process (VmHWM) to its current resident set."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def stream(url: str, prefix: str, batch_size: int) -> dict[str, float]:
    """In this process: open the store, stream every ``note`` fact, report the peak RSS growth."""
    import memstate_sql as ms

    storage = ms.SQLStorage(url, table_prefix=prefix)
    store = ms.MemoryStore(storage)
    store.count("note")  # schema check, first connection, statement caches: not part of the stream
    _reset_peak()  # at rest, store open: growth counts from here to the stream's peak
    before = _status_mb("VmRSS")
    start = time.perf_counter()
    n = 0
    for _ in store.iter_query("note", batch_size=batch_size):
        n += 1
    seconds = time.perf_counter() - start
    storage.close()
    return {"facts": n, "growth MB": _status_mb("VmHWM") - before, "facts/s": n / seconds}


def measure(url: str, prefix: str, batch_size: int = 500) -> dict[str, float]:
    """`stream` in a fresh interpreter (so that nothing this process allocated counts)."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--child", url, prefix, str(batch_size)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    ).stdout
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return figures


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        url, prefix, batch_size = argv[1], argv[2], int(argv[3])
        print(json.dumps(stream(url, prefix, batch_size)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql", "mariadb"])
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args(argv)
    from benchmarks.run import MY_URL, PG_URL, drop_prefix, memstate_sql

    prefix = "mem" + uuid.uuid4().hex[:8]
    workdir = tempfile.mkdtemp(prefix="memstate-mem-")
    db = {"mariadb": "mysql"}.get(args.db, args.db)
    url = {"sqlite": f"sqlite:///{workdir}/mem.db", "postgresql": PG_URL, "mysql": MY_URL}[db]
    system = memstate_sql(db, url, prefix)  # distinct timestamps (see there)
    try:
        start = time.perf_counter()
        for lo in range(0, args.facts, 100_000):
            system.bulk(lo, min(args.facts, lo + 100_000))
        print(f"loaded {args.facts} facts in {time.perf_counter() - start:.1f}s", flush=True)
        system.close()
        figures = measure(url, prefix, args.batch_size)
        print(
            f"{args.db}: iter_query over {figures['facts']:.0f} facts: peak RSS growth {figures['growth MB']:.1f} MB "
            f"(target <= 100 MB), {figures['facts/s']:.0f} facts/s"
        )
    finally:
        if db != "sqlite":
            drop_prefix(url, prefix)


if __name__ == "__main__":
    main()
