"""The ``memstate-sql`` command: see, fix, move and migrate an agent's memory without writing Python.

``main(argv)`` parses the arguments (click), runs one command and returns its
exit code (`memstate_sql.cli.errors`); every failure is one line on stderr,
without a traceback (set ``MEMSTATE_SQL_DEBUG=1`` to get one). The commands
call the library and only parse arguments and render answers; rich, alembic and
the database drivers are imported inside the commands that need them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click
from sqlalchemy import exc

from memstate_sql._version import __version__
from memstate_sql.cli import errors as codes
from memstate_sql.cli.base import CONTEXT, EPILOG, PROG
from memstate_sql.cli.completion import completion_cmd
from memstate_sql.cli.context import common_options
from memstate_sql.cli.demo import demo_cmd
from memstate_sql.cli.from_memstate import import_memstate_cmd
from memstate_sql.cli.outbox_cmds import outbox_group
from memstate_sql.cli.reading import facts_cmd, get_cmd, history_cmd, log_cmd, stats_cmd
from memstate_sql.cli.retention import prune_log_cmd, sweep_cmd
from memstate_sql.cli.rollback import rollback_cmd
from memstate_sql.cli.schema_cmds import check_cmd, current_cmd, downgrade_cmd, upgrade_cmd
from memstate_sql.cli.transfer import export_cmd, import_cmd
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


class Commands(click.Group):
    """Lists the commands in the order they are added (not alphabetically)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(
    PROG,
    cls=Commands,
    invoke_without_command=True,
    epilog=EPILOG,
    context_settings=CONTEXT,
)
@click.version_option(__version__, "--version", prog_name=PROG, message="%(prog)s %(version)s")
@common_options
@click.pass_context
def app(ctx: click.Context) -> None:
    """Inspect, repair, migrate, export and import a memstate_sql store.

    The options --url, --prefix, --schema and --json may be given before or after the command.
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help(), err=True)
        ctx.exit(codes.USAGE)


for _command in (
    demo_cmd,
    upgrade_cmd,
    downgrade_cmd,
    current_cmd,
    check_cmd,
    facts_cmd,
    get_cmd,
    history_cmd,
    log_cmd,
    stats_cmd,
    rollback_cmd,
    sweep_cmd,
    prune_log_cmd,
    outbox_group,
    export_cmd,
    import_cmd,
    import_memstate_cmd,
    completion_cmd,
):
    app.add_command(_command)


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


def _fail(message: str) -> None:
    """One line on stderr (``error:`` in red on a terminal; click.echo drops colour elsewhere)."""
    click.echo(f"{PROG}: {click.style('error:', fg='red', bold=True)} {message}", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    debug = os.environ.get("MEMSTATE_SQL_DEBUG") == "1"
    try:
        result = app.main(args=list(argv) if argv is not None else None, prog_name=PROG, standalone_mode=False)
    except click.UsageError as error:
        command = error.ctx.command_path if error.ctx is not None else PROG
        _fail(f"{_one_line(Exception(error.format_message()))} (see {command} --help)")
        return codes.USAGE
    except click.ClickException as error:
        _fail(_one_line(Exception(error.format_message())))
        return error.exit_code
    except (click.Abort, KeyboardInterrupt):
        sys.stderr.write(f"{PROG}: interrupted\n")
        return codes.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return codes.OK
    except OSError as error:
        if debug:
            raise
        _fail(_one_line(error))
        return codes.FAILED
    except (codes.CliError, MemoryStoreError, exc.SQLAlchemyError) as error:
        if debug:
            raise
        message = _one_line(error)
        if isinstance(error, exc.DBAPIError):
            message = f"database error: {_one_line(error.orig) if error.orig is not None else message}"
        elif isinstance(error, exc.SQLAlchemyError):
            message = f"database error: {message}"
        _fail(message)
        return _code_for(error)
    return result if isinstance(result, int) else codes.OK


__all__ = ["app", "main"]
