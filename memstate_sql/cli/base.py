"""How a command is declared: its name, help, the common options and the shared epilog."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from memstate_sql.cli.context import DEFAULT_FILE, ENV_URL, common_options

PROG = "memstate-sql"
#: ``\b`` keeps click from re-wrapping the lines.
EPILOG = f"""\b
database: --url, else ${ENV_URL}, else ./{DEFAULT_FILE} (SQLite).
exit codes: 0 ok, 1 failed, 2 bad input, 3 database unreachable, 4 schema version problem."""
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def command(name: str, short_help: str, *, example: str | None = None) -> Callable[[Callable[..., Any]], click.Command]:
    """A command with the common options (``--url --prefix --schema --json``) and the shared epilog;
    its help text is the function's docstring."""

    def decorate(f: Callable[..., Any]) -> click.Command:
        epilog = EPILOG if example is None else f"\b\nexample:\n  {example}\n\n{EPILOG}"
        return click.command(name, short_help=short_help, epilog=epilog, context_settings=CONTEXT)(common_options(f))

    return decorate
