"""`demo`: the product's story in a few seconds, on an embedded SQLite file.

Every step prints what the database holds afterwards, read back with a
separate connection (what any other process would see).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel
from sqlalchemy import Engine, Table, create_engine, func, select

from memstate_sql import jsondoc
from memstate_sql.cli.base import command
from memstate_sql.cli.context import bring_to_head
from memstate_sql.cli.errors import USAGE, CliError
from memstate_sql.cli.output import compact, table_text
from memstate_sql.errors import HookError, ValidationFailed
from memstate_sql.facts import Fact, Operation, SearchResult
from memstate_sql.registry import Constraint
from memstate_sql.storage import SQLStorage
from memstate_sql.store import MemoryStore


class User(BaseModel):
    email: str
    name: str
    age: int


class Vault:
    """A hook that refuses to let secrets into memory (say, a vector index that rejects them)."""

    def __call__(self, op: Operation, fact_id: str, fact: Fact | None) -> None:
        if fact is not None and fact.type == "secret":
            raise RuntimeError("secrets are not indexed")

    def search(
        self, query: str, limit: int = 5, filters: dict[str, Any] | None = None, score_threshold: float | None = None
    ) -> list[SearchResult]:
        return []


class Show:
    """Prints the story and the database's state."""

    def __init__(self, engine: Engine, storage: SQLStorage) -> None:
        self.engine = engine
        self.facts: Table = storage.models.facts
        self.log: Table = storage.models.log
        self.step = 0

    def title(self, text: str) -> None:
        self.step += 1
        print()
        print(f"{self.step}. {text}")
        print("-" * (len(text) + 3))

    @staticmethod
    def say(text: str) -> None:
        print(f"   {text}")

    def counts(self) -> tuple[int, int]:
        with self.engine.connect() as conn:
            facts = conn.execute(select(func.count()).select_from(self.facts)).scalar_one()
            log = conn.execute(select(func.count()).select_from(self.log)).scalar_one()
        return int(facts), int(log)

    def rows(self, *types: str) -> None:
        """The facts table as stored (version = how many writes the row has seen)."""
        c = self.facts.c
        stmt = select(c.id, c.type, c.session_id, c.version, c.payload).order_by(c.ts, c.id)
        if types:
            stmt = stmt.where(c.type.in_(types))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        text = table_text(
            ["id", "type", "session", "version", "payload"],
            [[r.id, r.type, r.session_id or "(global)", r.version, compact(r.payload)] for r in rows],
        )
        facts, log = self.counts()
        print("\n".join("   | " + line for line in text.splitlines()))
        print(f"   | database: {facts} fact row(s), {log} log entr{'y' if log == 1 else 'ies'}")


def run_demo(path: Path) -> None:
    url = f"sqlite:///{path}"
    storage = SQLStorage(url)
    reader = create_engine(url)
    started = time.monotonic()
    try:
        bring_to_head(storage)
        store = MemoryStore(storage)
        show = Show(reader, storage)
        print(f"memstate-sql demo: an agent's memory in a SQLite file, {path}")
        print("(the same code runs on PostgreSQL and MySQL/MariaDB; every operation below is one transaction)")

        show.title("Typed commits: a pydantic schema and a singleton constraint")
        store.register_schema("user", User, Constraint(singleton_key="email"))
        show.say('register_schema("user", User, Constraint(singleton_key="email"))')
        first = store.commit_model(User(email="ada@example.com", name="Ada", age=36))
        show.say(f"commit User(ada@example.com, Ada, 36)            -> {first} (COMMIT)")
        again = store.commit(Fact(type="user", payload={"email": "ada@example.com", "name": "Ada Lovelace", "age": 36}))
        same = "the same fact, updated" if again == first else "a new fact"
        show.say(f"commit user(ada@example.com, Ada Lovelace, 36)  -> {again} ({same}: one row per email)")
        try:
            store.commit(Fact(type="user", payload={"email": "bob@example.com", "name": "Bob", "age": "forty"}))
        except ValidationFailed as error:
            problem = str(error).splitlines()[-2].strip().split(" [type=")[0]
            show.say(f"commit user(bob@example.com, Bob, 'forty')      -> rejected: age: {problem}")
        show.rows("user")

        show.title("A hook that fails leaves nothing behind")
        store.add_hook(Vault())
        before = show.counts()
        show.say(f"before: {before[0]} fact row(s), {before[1]} log entries; a hook refuses facts of type 'secret'")
        try:
            store.commit(Fact(type="secret", payload={"api_key": "sk-123"}))
        except HookError as error:
            show.say(f"commit secret(api_key=...) -> HookError: {error.__cause__}")
        after = show.counts()
        verdict = "nothing was written" if after == before else "SOMETHING WAS WRITTEN"
        show.say(f"after:  {after[0]} fact row(s), {after[1]} log entries: {verdict}")
        show.say("(the row, its log entry and the hook call were one transaction, rolled back together)")
        store.hooks.clear()

        show.title('Typed filters: true, 1 and "1" are three different values')
        for name, value in (("bool", True), ("int", 1), ("str", "1")):
            store.commit(Fact(type="flag", payload={"name": name, "value": value}))
        show.rows("flag")
        probes: tuple[Any, ...] = (True, 1, "1", 1.0)
        for probe in probes:
            hits = [d["payload"]["name"] for d in store.query("flag", {"payload.value": probe})]
            show.say(f'query("flag", {{"payload.value": {jsondoc.dumps(probe)}}})'.ljust(41) + f"-> {', '.join(hits)}")
        hits = [d["payload"]["name"] for d in store.query("flag", {"payload.value": {"$in": [True, "1"]}})]
        show.say('query("flag", {"payload.value": {"$in": [true, "1"]}}) -> ' + ", ".join(hits))

        show.title("Sessions: one promoted to long-term memory, one discarded")
        store.commit(Fact(type="note", payload={"text": "Ada prefers email"}), session_id="draft-a")
        store.commit(Fact(type="note", payload={"text": "Meeting moved to Friday"}), session_id="draft-a")
        store.commit(Fact(type="note", payload={"text": "maybe she likes phone calls?"}), session_id="draft-b")
        show.rows("note")
        promoted = store.promote_session("draft-a")
        discarded = store.discard_session("draft-b")
        show.say(f"promote_session('draft-a') -> {len(promoted)} fact(s) made global")
        show.say(f"discard_session('draft-b') -> {discarded} fact(s) deleted (logged, so it can be rolled back)")
        show.rows("note")

        show.title("Rollback: undo the last operation of a session")
        pref = store.commit(Fact(type="pref", payload={"theme": "dark"}), session_id="chat-1")
        store.update(pref, {"payload": {"theme": "light"}}, actor="agent", reason="user said so")
        show.say("commit pref(theme=dark), then update(theme=light) in session chat-1")
        show.rows("pref")
        store.rollback("chat-1", steps=1)
        show.say("rollback('chat-1', steps=1)")
        show.rows("pref")
        history = storage.history(pref)
        show.say(
            "log of that fact: " + ", ".join(f"{e['op']}{' (undone)' if e['reverted_by'] else ''}" for e in history)
        )
    finally:
        storage.close()
        reader.dispose()
    elapsed = time.monotonic() - started
    print()
    print(f"Done in {elapsed * 1000:.0f} ms. The database is still there; look around:")
    print(f"   memstate-sql --url {path} stats")
    print(f"   memstate-sql --url {path} facts --type user")
    print(f"   memstate-sql --url {path} log --session chat-1")
    print(f"   memstate-sql --url {path} history {pref}")


@command("demo", "tell the product's story on a fresh embedded SQLite file (no server needed)")
@click.option("--path", metavar="FILE", help="where to create the demo database (default: a new temporary directory)")
def demo_cmd(path: str | None) -> int:
    """Run a short tour on a fresh SQLite file: typed commits, a failing hook that leaves nothing behind,
    typed filters, sessions promoted and discarded, a rollback. Ignores --url.

    Ids are shown in full: `get` and `history` take them as printed.
    """
    if path:
        where = Path(path).expanduser().resolve()
        if where.exists():
            raise CliError(f"{where} already exists; the demo writes a fresh database (choose another --path)", USAGE)
        if not where.parent.is_dir():
            raise CliError(f"directory {where.parent} does not exist", USAGE)
    else:
        where = Path(tempfile.mkdtemp(prefix="memstate-sql-demo-")) / "demo.db"
    run_demo(where)
    return 0
