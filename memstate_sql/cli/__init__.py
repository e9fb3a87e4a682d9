"""The ``memstate-sql`` command: see, fix, move and migrate an agent's memory without writing Python.

``main(argv)`` parses the arguments, runs one command and returns its exit
code (`memstate_sql.cli.errors`); every failure is one line on stderr,
without a traceback (set ``MEMSTATE_SQL_DEBUG=1`` to get one).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from sqlalchemy import exc

from memstate_sql import __version__
from memstate_sql.cli import errors as codes
from memstate_sql.cli.completion import cmd_completion
from memstate_sql.cli.context import DEFAULT_FILE, ENV_URL
from memstate_sql.cli.demo import cmd_demo
from memstate_sql.cli.from_memstate import cmd_import_memstate
from memstate_sql.cli.reading import cmd_facts, cmd_get, cmd_history, cmd_log, cmd_stats
from memstate_sql.cli.rollback import cmd_rollback
from memstate_sql.cli.schema_cmds import cmd_check, cmd_current, cmd_downgrade, cmd_upgrade
from memstate_sql.cli.transfer import cmd_export, cmd_import
from memstate_sql.errors import (
    ConflictError,
    ConnectionLost,
    FactNotFound,
    HookError,
    MemoryStoreError,
    SchemaVersionError,
    StorageError,
    ValidationFailed,
)
from memstate_sql.models import DEFAULT_PREFIX

PROG = "memstate-sql"
EPILOG = f"""database: --url, else ${ENV_URL}, else ./{DEFAULT_FILE} (SQLite).
exit codes: 0 ok, 1 failed, 2 bad input, 3 database unreachable, 4 schema version problem."""


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options every command accepts, before or after the command name."""
    default: Any = argparse.SUPPRESS
    group = parser.add_argument_group("database options")
    group.add_argument(
        "--url",
        default=None if top else default,
        help=f"SQLAlchemy URL or SQLite file path (default: ${ENV_URL}, else ./{DEFAULT_FILE})",
    )
    group.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX if top else default,
        help=f"table prefix of the store (default: {DEFAULT_PREFIX})",
    )
    group.add_argument("--schema", default=None if top else default, help="database schema (PostgreSQL)")
    parser.add_argument(
        "--json", action="store_true", default=False if top else default, help="machine-readable JSON output"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect, repair, migrate, export and import a memstate_sql store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def command(name: str, help_text: str, handler: Any, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=description or help_text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common(p, top=False)
        p.set_defaults(handler=handler)
        return p

    p = command(
        "demo",
        "tell the product's story on a fresh embedded SQLite file (no server needed)",
        cmd_demo,
        "Run a short tour on a fresh SQLite file: typed commits, a failing hook that leaves nothing behind, "
        "typed filters, sessions promoted and discarded, a rollback. Ignores --url.",
    )
    p.add_argument("--path", help="where to create the demo database (default: a new temporary directory)")

    p = command("upgrade", "create or upgrade the store's tables", cmd_upgrade)
    p.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    p = command("downgrade", "downgrade the store's schema (base removes the tables)", cmd_downgrade)
    p.add_argument("revision", help="target revision, e.g. -1 or base")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    command("current", "show the schema revision of the database", cmd_current)
    command(
        "check",
        "exit 0 when the schema is current, 4 when it is behind or ahead",
        cmd_check,
    )

    p = command(
        "facts",
        "list facts, with filters",
        cmd_facts,
        'List facts. Example: memstate-sql facts --type user --filter \'{"payload.age": {"$ne": null}}\' '
        "--order-by payload.age --desc --limit 10",
    )
    p.add_argument("--type", help="only facts of this type")
    p.add_argument("--session", help="only facts of this session")
    p.add_argument("--filter", help="a filter as JSON (the store's filter language)")
    p.add_argument(
        "--order-by",
        default="ts",
        help="ts, id, type, session_id, source or payload.<key> (default: ts)",
    )
    p.add_argument("--desc", action="store_true", help="descending order")
    p.add_argument("--limit", type=int, default=100, help="at most this many facts; 0 = all (default: 100)")

    p = command("get", "show one fact", cmd_get)
    p.add_argument("id", help="fact id")
    p = command("history", "the log entries of one fact, oldest first (rolled-back ones included)", cmd_history)
    p.add_argument("id", help="fact id")

    p = command("log", "a session's log, newest first", cmd_log)
    p.add_argument("--session", help="session id (default: entries without a session)")
    p.add_argument("--limit", type=int, default=20, help="entries to show (default: 20)")
    p.add_argument("--offset", type=int, default=0, help="skip this many newest entries")

    command("stats", "counts by type and session, log size, schema revision", cmd_stats)

    p = command("rollback", "undo a session's newest operations", cmd_rollback)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--session", help="the session to roll back")
    who.add_argument("--no-session", action="store_true", help="roll back operations logged without a session")
    p.add_argument("--steps", type=int, default=1, help="how many operations to undo (default: 1)")
    p.add_argument("--dry-run", action="store_true", help="show what would change and stop")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    p = command("export", "write every fact and log entry as JSON Lines", cmd_export)
    p.add_argument("-o", "--output", help="output file (default: standard output)")
    p.add_argument("--batch-size", type=int, default=1000, help="rows read per query (default: 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    p = command(
        "import",
        "load an export into the store, in one transaction",
        cmd_import,
        "Load a file written by `export` (facts and log) in one transaction: a bad or truncated file, "
        "or an id already present, changes nothing. Creates the tables when needed.",
    )
    p.add_argument("file", help="the JSON Lines file, or - for standard input")
    p.add_argument("--batch-size", type=int, default=1000, help="rows written per statement (default: 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    p = command(
        "import-memstate",
        "copy a memstate 0.5.1 database (SQLite file or PostgreSQL tables) into the store",
        cmd_import_memstate,
        "Copy the facts and the log of a memstate 0.5.1 database into the store, keeping ids and order, "
        "in one transaction. Re-running it adds only what is new (facts that changed are updated).",
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="URL",
        help="memstate's database: a SQLite file path or URL, or a PostgreSQL URL",
    )
    p.add_argument(
        "--from-prefix", default="memstate", help="memstate's table prefix on PostgreSQL (default: memstate)"
    )
    p.add_argument("--batch-size", type=int, default=1000, help="rows per batch (default: 1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    p = command("completion", "print a shell-completion script", cmd_completion)
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(root_parser=parser)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _code_for(error: BaseException) -> int:
    if isinstance(error, codes.CliError):
        return error.code
    if isinstance(error, SchemaVersionError):
        return codes.SCHEMA
    if isinstance(error, ValidationFailed):
        return codes.USAGE
    if isinstance(error, ConnectionLost):
        return codes.UNREACHABLE
    if isinstance(error, (FactNotFound, ConflictError, HookError, StorageError, MemoryStoreError)):
        return codes.FAILED
    if isinstance(error, (exc.OperationalError, exc.InterfaceError)):
        return codes.UNREACHABLE
    return codes.FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return codes.USAGE
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return codes.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return codes.OK
    except OSError as error:
        if os.environ.get("MEMSTATE_SQL_DEBUG") == "1":
            raise
        sys.stderr.write(f"{PROG}: error: {_one_line(error)}\n")
        return codes.FAILED
    except (codes.CliError, MemoryStoreError, exc.SQLAlchemyError) as error:
        if os.environ.get("MEMSTATE_SQL_DEBUG") == "1":
            raise
        message = _one_line(error)
        if isinstance(error, exc.SQLAlchemyError) and not isinstance(error, exc.DBAPIError):
            message = f"database error: {message}"
        elif isinstance(error, exc.DBAPIError):
            message = f"database error: {_one_line(error.orig) if error.orig is not None else message}"
        sys.stderr.write(f"{PROG}: error: {message}\n")
        return _code_for(error)
