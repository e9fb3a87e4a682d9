"""The layers of README's "How it works": every import inside the package goes downward.

The contract lives in pyproject.toml (``[tool.importlinter]``); this test runs it, and proves
that it can fail by checking a graph with one upward import added.
"""

from __future__ import annotations

from pathlib import Path

import pytest

importlinter = pytest.importorskip("importlinter")
from importlinter.application import use_cases  # noqa: E402
from importlinter.configuration import configure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_imports_follow_the_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    configure()
    monkeypatch.chdir(ROOT)
    assert use_cases.lint_imports(config_filename=str(ROOT / "pyproject.toml")) == use_cases.SUCCESS


def test_an_upward_import_breaks_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    configure()
    monkeypatch.chdir(ROOT)
    from grimp import ImportGraph

    real = use_cases._build_graph if hasattr(use_cases, "_build_graph") else None
    assert real is not None, "import-linter's graph builder moved; update this test"

    def with_violation(*args: object, **kwargs: object) -> ImportGraph:
        graph: ImportGraph = real(*args, **kwargs)
        graph.add_import(
            importer="memstate_sql.records", imported="memstate_sql.store", line_number=1, line_contents=""
        )
        return graph

    monkeypatch.setattr(use_cases, "_build_graph", with_violation)
    assert use_cases.lint_imports(config_filename=str(ROOT / "pyproject.toml")) != use_cases.SUCCESS
