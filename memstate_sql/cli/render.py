"""Output: human tables, JSON documents, a progress bar on stderr."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from memstate_sql import jsondoc


def to_json(value: Any) -> str:
    """One compact JSON document (what ``--json`` prints)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def compact(value: Any) -> str:
    """A JSON value on one line, for a table cell."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return jsondoc.dumps(value)


def _clip(text: str, width: int) -> str:
    text = text.replace("\n", " ").replace("\r", " ")
    if width <= 0 or len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, out: TextIO | None = None) -> str:
    """A plain-text table; on a terminal the last column is clipped to the terminal's width."""
    out = out or sys.stdout
    cells = [[_clip("" if c is None else str(c), 0) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    if out.isatty() and widths:
        room = shutil.get_terminal_size((120, 24)).columns - sum(w + 2 for w in widths[:-1])
        widths[-1] = max(min(widths[-1], room), len(headers[-1]), 10)
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(_clip(c, w).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def short(identifier: str | None, width: int = 8) -> str:
    """The head of a uuid-like identifier (enough to recognise it in a table)."""
    if identifier is None:
        return ""
    return identifier if len(identifier) <= width + 1 else identifier[:width]


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, total: int | None, *, enabled: bool | None = None, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.total = total
        self.done = 0
        self._last = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or (self.total is not None and self.done >= self.total)):
            self._last = now
            self._draw()

    def _draw(self) -> None:
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            text = f"\r{self.label} [{bar:<30}] {self.done}/{self.total}"
        else:
            text = f"\r{self.label} {self.done}"
        self.stream.write(text)
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
