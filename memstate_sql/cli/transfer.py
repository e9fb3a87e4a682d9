"""`export` / `import`: a store as JSON Lines (the format and the data work: `memstate_sql.transfer`)."""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import click

from memstate_sql.cli.base import command
from memstate_sql.cli.context import Target, settings
from memstate_sql.cli.errors import USAGE, CliError
from memstate_sql.cli.output import emit_json, progress_bar


def check_batch_size(value: int) -> None:
    if value < 1:
        raise CliError("--batch-size must be >= 1", USAGE)


@command("export", "write every fact and log entry as JSON Lines")
@click.option("-o", "--output", metavar="FILE", help="output file (default: standard output)")
@click.option("--batch-size", type=int, default=1000, show_default=True, help="rows read per query")
@click.option("--no-progress", is_flag=True, help="no progress bar on stderr")
def export_cmd(output: str | None, batch_size: int, no_progress: bool) -> int:
    """Write every fact and log entry, from one consistent snapshot, as JSON Lines.

    A file is written as FILE.partial and renamed once complete.
    """
    from memstate_sql import transfer

    check_batch_size(batch_size)
    to_stdout = output in (None, "-")
    with Target.current().open(create=False) as storage, contextlib.ExitStack() as stack:
        out: IO[str]
        path = Path(output or "-")
        tmp = path.with_name(path.name + ".partial")
        if to_stdout:
            out = sys.stdout
        else:
            try:
                out = stack.enter_context(tmp.open("w", encoding="utf-8", newline="\n"))
            except OSError as error:
                raise CliError(f"cannot write {path}: {error.strerror}", USAGE) from None
            stack.callback(lambda: tmp.unlink(missing_ok=True))  # removed unless renamed into place
        with progress_bar("exporting", disabled=no_progress) as bar:
            summary = transfer.write_export(storage, out, batch_size, bar)
        if not to_stdout:
            out.close()
            tmp.replace(path)  # a complete file appears at once; a failed export leaves nothing
    text = f"exported {summary.facts} facts and {summary.log} log entries"
    if not to_stdout:
        if settings().json:
            emit_json({"facts": summary.facts, "log": summary.log, "output": str(path)})
        else:
            print(f"{text} to {path}")
    elif sys.stderr.isatty() and not no_progress:
        sys.stderr.write(text + "\n")
    return 0


@contextlib.contextmanager
def seekable_input(name: str) -> Iterator[IO[str]]:
    """The input file, or standard input spooled to a temporary file (it is read twice: checked, then
    loaded, and again if the transaction is retried)."""
    if name != "-":
        try:
            handle = open(name, encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as error:
            raise CliError(f"cannot read {name}: {error.strerror}", USAGE) from None
        with handle:
            yield handle
        return
    with tempfile.TemporaryFile("w+b") as spool:
        shutil.copyfileobj(sys.stdin.buffer, spool)
        spool.seek(0)
        text = io.TextIOWrapper(spool, encoding="utf-8")
        try:
            yield text
        finally:
            text.detach()


@command("import", "load an export into the store, in one transaction")
@click.argument("file", metavar="FILE")
@click.option("--batch-size", type=int, default=1000, show_default=True, help="rows written per statement")
@click.option("--no-progress", is_flag=True, help="no progress bar on stderr")
def import_cmd(file: str, batch_size: int, no_progress: bool) -> int:
    """Load FILE (written by `export`; - for standard input) into the store, in one transaction.

    The whole file is checked before the target is touched: a bad or truncated file changes
    nothing (not even creating the tables), nor does an id already present. Creates the tables
    when needed.
    """
    from memstate_sql import transfer

    check_batch_size(batch_size)
    with seekable_input(file) as stream:
        try:
            transfer.check_export(stream)
            with (
                Target.current().open(create=True, max_attempts=3) as storage,
                progress_bar("importing", disabled=no_progress) as bar,
            ):
                summary = transfer.load_export(storage, stream, batch_size, bar)
        except UnicodeDecodeError as error:
            raise CliError(f"{file} is not UTF-8 text: {error.reason}", USAGE) from None
    if settings().json:
        emit_json({"facts": summary.facts, "log": summary.log})
    else:
        print(f"imported {summary.facts} facts and {summary.log} log entries")
    return 0
