"""`completion bash|zsh|fish`: click's shell-completion script for the command.

The script asks the command itself for completions at each <TAB> (click's
``_MEMSTATE_SQL_COMPLETE`` protocol), so it always matches the installed
version's commands and options. ``_MEMSTATE_SQL_COMPLETE=bash_source memstate-sql``
prints the same script.
"""

from __future__ import annotations

import click

from memstate_sql.cli.base import CONTEXT, EPILOG, PROG
from memstate_sql.cli.context import common_options

COMPLETE_VAR = "_MEMSTATE_SQL_COMPLETE"


@click.command("completion", short_help="print a shell-completion script", epilog=EPILOG, context_settings=CONTEXT)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@common_options
@click.pass_context
def completion_cmd(ctx: click.Context, shell: str) -> int:
    """Print the shell-completion script for SHELL (bash, zsh or fish)."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    root = ctx.find_root().command
    click.echo(cls(root, {}, PROG, COMPLETE_VAR).source())
    return 0
