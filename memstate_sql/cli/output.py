"""Output: JSON documents for programs, rich tables and progress bars for people.

rich is imported inside the functions that draw, so that commands which only
print JSON (and ``--version``) never load it.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from memstate_sql import jsondoc

if TYPE_CHECKING:
    from rich.console import Console


def to_json(value: Any) -> str:
    """One compact JSON document (what ``--json`` prints)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def emit_json(value: Any) -> None:
    print(to_json(value))


def compact(value: Any) -> str:
    """A JSON value on one line, for a table cell."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return jsondoc.dumps(value)


def console(stream: TextIO | None = None) -> Console:
    """A rich console on `stream` (standard output by default). Off a terminal it draws no colour
    and never wraps or clips (a pipe gets whole lines); on a terminal rich fits tables to its width."""
    from rich.console import Console

    out = stream if stream is not None else sys.stdout
    if out.isatty():
        return Console(file=out, highlight=False)
    return Console(file=out, highlight=False, width=1_000_000, no_color=True, soft_wrap=True)


def _grid(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, boxed: bool) -> Any:
    from rich import box
    from rich.table import Table

    grid = Table(box=box.SIMPLE_HEAD if boxed else None, header_style="bold", pad_edge=False)
    for i, header in enumerate(headers):
        last = i == len(headers) - 1
        grid.add_column(header.upper(), overflow="fold" if last else "ellipsis", no_wrap=not last)
    for row in rows:
        grid.add_row(*("" if cell is None else str(cell) for cell in row))
    return grid


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, stream: TextIO | None = None) -> None:
    """Print a table: upper-case headers, one line per row; on a terminal it fits the width (the
    last column folds), off a terminal lines are never cut."""
    target = stream if stream is not None else sys.stdout
    if target.isatty():
        console(target).print(_grid(headers, rows, boxed=True))
    else:
        target.write(table_text(headers, rows) + "\n")


def table_text(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The lines `table` prints off a terminal, as one string (no trailing spaces)."""
    buffer = io.StringIO()
    console(buffer).print(_grid(headers, rows, boxed=False))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def say(text: str, *, style: str | None = None, stream: TextIO | None = None) -> None:
    """One line for people (coloured with `style` on a terminal); markup in `text` is not interpreted."""
    console(stream).print(text, style=style, markup=False, highlight=False)


class ProgressBar:
    """A progress bar on stderr (a `memstate_sql.transfer.ProgressCallback`), drawn only when the
    stream is a terminal; nothing is written otherwise."""

    def __init__(self, label: str, *, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream, force_terminal=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=None)
        return self

    def __call__(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total or None)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


@contextmanager
def progress_bar(label: str, *, disabled: bool) -> Iterator[ProgressBar]:
    """A `ProgressBar` on stderr unless `disabled` (``--no-progress``) or stderr is not a terminal."""
    with ProgressBar(label, enabled=False if disabled else None) as bar:
        yield bar
