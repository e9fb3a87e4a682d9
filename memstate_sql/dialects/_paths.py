"""JSON-path rendering shared by the dialects that use SQL/JSON path strings (SQLite, MySQL)."""

from __future__ import annotations

from memstate_sql.dialects.base import json_label


def dollar_path(keys: tuple[str, ...]) -> str:
    return "$" + "".join("." + json_label(key) for key in keys)
