"""The asyncio facades mirror the sync classes: one twin per public method, same signature and docstring.

`memstate_sql/aio.py` is generated from the sync classes by `tools/generate_async.py`; these
tests fail when a sync method has no async twin, when a twin's parameters, defaults, kinds,
annotations or docstring differ from the sync method's, or when aio.py is older than the
generator's output (``python -m tools.generate_async`` rewrites it).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from typing import Any

import pytest

from memstate_sql import aio
from memstate_sql.dialects import async_url, support_for
from tools import generate_async as gen

#: Public names of the async classes that are not twins of a sync method, and why.
ASYNC_ONLY = {
    ("AsyncSQLStorage", "constraints"): "an instance attribute of the sync storage, read through a property",
    ("AsyncSQLStorage", "vector_index"): "an instance attribute of the sync storage, read through a property",
    ("AsyncSQLStorage", "run_sync"): "runs sync work on the sync storage in the bridge (AsyncConnection.run_sync)",
}


def public_names(cls: type, shapes: dict[str, gen.Shape]) -> list[str]:
    """The public methods and properties of `cls` (and the dunders the table maps)."""
    names = []
    for name, _ in inspect.getmembers(cls):
        if name.startswith("_") and name not in shapes:
            continue
        raw = inspect.getattr_static(cls, name)
        callable_member = inspect.isfunction(raw) or isinstance(raw, property | classmethod | staticmethod)
        if callable_member and raw is not getattr(object, name, None):
            names.append(name)
    return names


def pairs() -> list[Any]:
    found = []
    for facade in gen.FACADES:
        sync_cls = gen.load_class(facade.sync)
        async_cls = getattr(aio, facade.name)
        for name in public_names(sync_cls, dict(facade.shapes)):
            shape = facade.shapes.get(name, gen.Shape("await"))
            if shape.kind != "skip":
                found.append(pytest.param(sync_cls, async_cls, name, shape, id=f"{facade.name}.{name}"))
    return found


def spelled(annotation: Any) -> Any:
    """An annotation (a string under ``from __future__ import annotations``) in one canonical spelling."""
    if annotation is inspect.Parameter.empty or not isinstance(annotation, str):
        return annotation
    return ast.unparse(ast.parse(annotation, mode="eval"))


def expected_return(sync_fn: Any, shape: gen.Shape) -> Any:
    returns = inspect.signature(sync_fn).return_annotation
    if returns is inspect.Signature.empty:
        return returns
    returns = gen.renamed(returns)
    if shape.kind == "aiter":
        assert returns.startswith("Iterator["), "a streamed method returns an Iterator"
        returns = "Async" + returns
    return spelled(returns)


@pytest.mark.parametrize("facade", gen.FACADES, ids=lambda f: f.name)
def test_every_public_sync_method_has_an_async_twin(facade: gen.Facade) -> None:
    sync_cls = gen.load_class(facade.sync)
    async_cls = getattr(aio, facade.name)
    missing = [
        f"{sync_cls.__name__}.{name}"
        for name in public_names(sync_cls, dict(facade.shapes))
        if facade.shapes.get(name, gen.Shape("await")).kind != "skip"
        and not hasattr(async_cls, facade.shapes.get(name, gen.Shape("await")).name or name)
    ]
    assert not missing, f"no async twin in {facade.name} (run `python -m tools.generate_async`): {missing}"


@pytest.mark.parametrize("facade", gen.FACADES, ids=lambda f: f.name)
def test_async_classes_have_no_methods_of_their_own(facade: gen.Facade) -> None:
    sync_cls = gen.load_class(facade.sync)
    twins = {facade.shapes.get(n, gen.Shape("await")).name or n for n in public_names(sync_cls, dict(facade.shapes))}
    extra = [
        name
        for name in public_names(getattr(aio, facade.name), {"__aenter__": gen.Shape("custom")})
        if name not in twins and (facade.name, name) not in ASYNC_ONLY
    ]
    assert not extra, f"{facade.name} has public methods that {sync_cls.__name__} lacks: {extra}"


@pytest.mark.parametrize("facade", gen.FACADES, ids=lambda f: f.name)
def test_the_table_names_only_existing_methods(facade: gen.Facade) -> None:
    sync_cls = gen.load_class(facade.sync)
    assert set(facade.shapes) <= set(public_names(sync_cls, dict(facade.shapes)))


@pytest.mark.parametrize(("sync_cls", "async_cls", "name", "shape"), pairs())
def test_twin_signature_matches(sync_cls: type, async_cls: type, name: str, shape: gen.Shape) -> None:
    sync_raw = inspect.getattr_static(sync_cls, name)
    twin_raw = inspect.getattr_static(async_cls, shape.name or name)
    if isinstance(sync_raw, property):
        assert isinstance(twin_raw, property), f"{async_cls.__name__}.{name} must be a property"
        sync_fn, twin_fn = sync_raw.fget, twin_raw.fget
    else:
        sync_fn, twin_fn = sync_raw, twin_raw
    sync_sig, twin_sig = inspect.signature(sync_fn), inspect.signature(twin_fn)
    expected = [
        (
            p.name,
            p.kind,
            p.default,
            spelled(gen.renamed(p.annotation)) if isinstance(p.annotation, str) else p.annotation,
        )
        for p in sync_sig.parameters.values()
    ]
    actual = [(p.name, p.kind, p.default, spelled(p.annotation)) for p in twin_sig.parameters.values()]
    assert actual == expected, f"{async_cls.__name__}.{name}: parameters differ from {sync_cls.__name__}.{name}"
    assert spelled(twin_sig.return_annotation) == expected_return(sync_fn, shape)
    awaited = shape.kind in ("await", "custom") and not isinstance(sync_raw, property)
    assert inspect.iscoroutinefunction(twin_fn) is awaited, (
        f"{async_cls.__name__}.{name} must {'' if awaited else 'not '}be a coroutine function"
    )


@pytest.mark.parametrize(("sync_cls", "async_cls", "name", "shape"), pairs())
def test_twin_docstring_matches(sync_cls: type, async_cls: type, name: str, shape: gen.Shape) -> None:
    def doc(obj: Any) -> str | None:
        fn = obj.fget if isinstance(obj, property) else obj
        return inspect.cleandoc(fn.__doc__) if fn.__doc__ else None

    sync_doc = doc(inspect.getattr_static(sync_cls, name))
    assert doc(inspect.getattr_static(async_cls, shape.name or name)) == sync_doc


def test_aio_is_what_the_generator_writes(capsys: pytest.CaptureFixture[str]) -> None:
    status = gen.main(["--check"])
    assert status == 0, capsys.readouterr().out


def test_the_generator_refuses_a_stale_table(monkeypatch: pytest.MonkeyPatch) -> None:
    facade = gen.FACADES[0]
    stale = dataclasses.replace(facade, shapes={**facade.shapes, "no_such_method": gen.skip("gone")})
    monkeypatch.setattr(gen, "FACADES", (stale, *gen.FACADES[1:]))
    with pytest.raises(SystemExit, match="no_such_method"):
        gen.generate(gen.TARGET.read_text())


def test_the_generator_check_detects_a_stale_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "aio.py"
    text = gen.TARGET.read_text()
    end = "    # END GENERATED METHODS AsyncMemoryStore"
    assert end in text
    copy.write_text(text.replace(end, "    async def hand_written(self) -> None:\n        pass\n\n" + end))
    monkeypatch.setattr(gen, "TARGET", copy)
    assert gen.main(["--check"]) == 1
    assert copy.read_text() != text  # --check never writes
    assert gen.main([]) == 0
    assert "hand_written" not in copy.read_text()
    assert gen.main(["--check"]) == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql", "mariadb"])
def test_every_dialect_names_its_asyncio_driver(backend: str) -> None:
    support = support_for(backend)
    assert support.async_driver in support.async_drivers
    assert async_url(f"{backend}+{support.sync_driver}://u@h/db").get_driver_name() == support.async_driver
