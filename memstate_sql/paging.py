"""Keyset pagination, written once: every reader that walks a table in batches (streamed queries,
export, the memstate import) asks for the rows after the last key it saw, never for an OFFSET."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")
K = TypeVar("K")


def keyset_pages(
    fetch: Callable[[K | None], Sequence[T]], key: Callable[[T], K], size: int | None = None
) -> Iterator[Sequence[T]]:
    """The pages `fetch(after)` returns, `after` being the key of the previous page's last row (None for
    the first page), until a page comes back empty — or, with `size` (the most rows `fetch` returns),
    shorter than `size`: the rows after it did not exist when it was read (one read fewer)."""
    after: K | None = None
    while page := fetch(after):
        yield page
        if size is not None and len(page) < size:
            return
        after = key(page[-1])
