"""CPU time (not wall time) per store commit, get and update on SQLite, for A/B comparisons on a busy machine.

    python -m benchmarks.cpu_per_op [label]

Wall-clock figures (`benchmarks.run`) swing several-fold when other processes load the machine; the
process's own CPU time per operation is far steadier, and it is what a change to the Python path
(statements, parameters, row mapping) moves. Run it alternately on two checkouts (``PYTHONPATH=...``).
"""

from __future__ import annotations

import sys
import tempfile
import time

import memstate_sql as ms

N = 1500


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "run"
    with tempfile.TemporaryDirectory() as workdir:
        storage = ms.SQLStorage(f"sqlite:///{workdir}/cpu.db", sqlite_synchronous="normal")
        store = ms.MemoryStore(storage)
        store.commit(ms.Fact(id="warm", type="t", payload={}))
        start = time.process_time()
        ids = [store.commit(ms.Fact(type="note", payload={"i": i, "text": "x" * 50})) for i in range(N)]
        commit = (time.process_time() - start) / N * 1e6
        start = time.process_time()
        for fid in ids:
            store.get(fid)
        get = (time.process_time() - start) / N * 1e6
        start = time.process_time()
        for fid in ids[:500]:
            store.update(fid, {"payload": {"j": 1}})
        update = (time.process_time() - start) / 500 * 1e6
        storage.close()
    print(f"{label}: commit {commit:.0f} µs CPU, get {get:.0f} µs CPU, update {update:.0f} µs CPU ({ms.__file__})")


if __name__ == "__main__":
    main()
