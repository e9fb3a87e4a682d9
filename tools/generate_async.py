"""Generate the asyncio facades in ``memstate_sql/aio.py`` from the sync classes.

The sync classes (`SQLStorage`, `MemoryStore`) are the one source of truth:
each public method of theirs gets a twin on the async facade with the same
parameters, annotations, defaults and docstring, whose body runs the sync
method through SQLAlchemy's greenlet bridge. The code is written into aio.py
between ``# START GENERATED ...`` / ``# END GENERATED ...`` markers, as
SQLAlchemy's ``tools/generate_proxy_methods.py`` does for ``AsyncSession`` and
``scoped_session``: type checkers and readers see ordinary methods, and the
result is committed like hand-written code. Like psycopg 3's
``tools/async_to_sync.py``, ``--check`` regenerates in memory and fails when
the committed file differs (``tests/test_async_parity.py`` runs it).

Methods whose async form is not "await the sync method" are declared in the
`FACADES` table below (and nowhere else). Everything outside the markers in
aio.py (constructors, the bridge helpers) is hand-written.

Usage, from the repository root::

    python -m tools.generate_async          # rewrite the generated blocks of memstate_sql/aio.py
    python -m tools.generate_async --check  # exit status 1 (and a diff) when they are stale
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import copy
import dataclasses
import difflib
import importlib
import inspect
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "memstate_sql" / "aio.py"
TARGET_NAME = "memstate_sql/aio.py"
NOTICE = "# code within this block is **programmatically, statically generated** by tools/generate_async.py"

Kind = Literal["await", "sync", "aiter", "custom", "skip"]


@dataclasses.dataclass(frozen=True)
class Shape:
    """How one sync method becomes its async twin.

    * ``await`` (the default for every method not in the table): a coroutine that
      runs the sync method in the greenlet bridge and returns its result.
    * ``sync``: a plain method calling the sync one directly (no I/O, e.g. registration).
    * ``aiter``: the sync method validates its arguments and returns a lazy iterator;
      the twin calls it at once (so bad arguments raise at the call, as in sync code)
      and returns an async iterator that reads `chunk` items per bridge call.
    * ``custom``: the signature and docstring are generated, the body is `body`.
    * ``skip``: no async twin, for the reason given in `body`.
    """

    kind: Kind
    name: str | None = None
    body: str = ""
    chunk: str = ""


def sync() -> Shape:
    return Shape("sync")


def aiter(chunk: str) -> Shape:
    return Shape("aiter", chunk=chunk)


def custom(body: str, name: str | None = None) -> Shape:
    return Shape("custom", name=name, body=body)


def skip(why: str) -> Shape:
    return Shape("skip", body=why)


@dataclasses.dataclass(frozen=True)
class Facade:
    """One async class generated from one sync class."""

    name: str  #: the async class in aio.py
    sync: str  #: ``module:Class`` of the sync class whose public API it mirrors
    target: str  #: the expression, inside the async class, of the sync object it drives
    shapes: Mapping[str, Shape]  #: methods that are not plain ``await`` twins


FACADES: tuple[Facade, ...] = (
    Facade(
        "AsyncSQLStorage",
        "memstate_sql.storage:SQLStorage",
        "self.sync_storage",
        {
            "select": skip("the readers' common step on a checked QuerySpec: reached through the sync store"),
            "tally": skip("the readers' common step on a checked QuerySpec: reached through the sync store"),
            "page": skip("one page of a stream, which the facade's iter_query drives"),
            "stream": skip("a stream of a checked QuerySpec: reached through the sync store"),
            "transaction": skip("runs sync work in one transaction: the sync store calls it inside the bridge"),
            "bridged": skip("builds the sync storage this facade drives"),
            "register_constraint": sync(),
            "sweep_with": skip("takes the store's operations: reached through the sync store"),
            "make_operations": skip("builds the sync store's operations: reached through the sync store"),
            "for_namespace": skip("returns a facade, not a coroutine: written by hand in aio.py"),
            "declare_indexed_paths": sync(),
            "iter_query": aiter("batch_size"),
            "close": custom("if self._owns:\n    await self.engine.dispose()"),
            "__enter__": custom("return self", name="__aenter__"),
            "__exit__": custom("await self.close()", name="__aexit__"),
        },
    ),
    Facade(
        "AsyncMemoryStore",
        "memstate_sql.store:MemoryStore",
        "self.sync_store",
        {
            "add_hook": sync(),
            "register_schema": sync(),
            "iter_query": aiter("batch_size"),
        },
    ),
)

#: Names in sync signatures and what they are called on the async side.
RENAMES: Mapping[str, str] = {
    "SQLStorage": "AsyncSQLStorage",
    "MemoryStore": "AsyncMemoryStore",
    "MemoryHook": "AsyncMemoryHook",
}


# ---------------------------------------------------------------------------- reading the sync classes


@dataclasses.dataclass(frozen=True)
class Member:
    """A public method or property of a sync class."""

    name: str
    owner: type  #: the class that defines it (a base class of the sync class, say)
    obj: Any  #: the function, or the property

    @property
    def function(self) -> Callable[..., Any]:
        fn = self.obj.fget if isinstance(self.obj, property) else self.obj
        assert callable(fn), self.name
        return fn

    @property
    def doc(self) -> str | None:
        raw = self.function.__doc__
        return inspect.cleandoc(raw) if raw else None


def load_class(path: str) -> type:
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type), path
    return cls


def public_members(cls: type, shapes: Mapping[str, Shape]) -> list[Member]:
    """The public methods and properties of `cls` (inherited ones included), in source order.

    Dunder methods count only when the table gives them a shape (``__enter__``...).
    """
    found: dict[str, Member] = {}
    for owner in reversed(cls.__mro__[:-1]):  # base classes first, `object` left out
        for name, obj in vars(owner).items():
            if name.startswith("__") and name.endswith("__"):
                if name not in shapes:
                    continue
            elif name.startswith("_"):
                continue
            if isinstance(obj, staticmethod | classmethod):
                if name in shapes and shapes[name].kind == "skip":
                    found[name] = Member(name, owner, obj.__func__)  # declared, never mirrored
                    continue
                raise SystemExit(f"{owner.__name__}.{name}: static and class methods are not supported; see FACADES")
            if inspect.isfunction(obj) or isinstance(obj, property):
                found.pop(name, None)  # an override moves to where its class defines it
                found[name] = Member(name, owner, obj)
    return list(found.values())


def function_node(fn: Callable[..., Any]) -> ast.FunctionDef:
    node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    assert isinstance(node, ast.FunctionDef), fn
    return node


class _Rename(ast.NodeTransformer):
    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.copy_location(ast.Name(RENAMES.get(node.id, node.id), node.ctx), node)

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        # A quoted (forward-reference) annotation: rename inside it too.
        if isinstance(node.value, str):
            try:
                inner = ast.parse(node.value, mode="eval")
            except SyntaxError:
                return node
            return ast.copy_location(ast.Constant(ast.unparse(self.visit(inner.body))), node)
        return node


def renamed(text: str) -> str:
    """An annotation (or default) of a sync signature as the async side spells it."""
    return ast.unparse(_Rename().visit(ast.parse(text, mode="eval").body))


def root_names(node: ast.AST) -> Iterator[str]:
    """The module-level names an annotation or default refers to (``flt`` for ``flt.Node``)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            yield sub.id
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            with contextlib.suppress(SyntaxError):
                yield from root_names(ast.parse(sub.value, mode="eval"))


# ---------------------------------------------------------------------------- writing the async methods


@dataclasses.dataclass
class Rendered:
    code: list[str]
    annotation_names: set[str]
    runtime_names: set[str]


def call_arguments(fn: Callable[..., Any]) -> str:
    """How the twin passes its parameters on to the sync method: as the sync signature takes them."""
    parts = []
    for param in list(inspect.signature(fn).parameters.values())[1:]:
        if param.kind is param.VAR_POSITIONAL:
            parts.append(f"*{param.name}")
        elif param.kind is param.VAR_KEYWORD:
            parts.append(f"**{param.name}")
        elif param.kind is param.KEYWORD_ONLY:
            parts.append(f"{param.name}={param.name}")
        else:
            parts.append(param.name)
    return ", ".join(parts)


def docstring(doc: str | None) -> list[str]:
    if doc is None:
        return []
    text = doc.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if text.endswith('"'):
        text = text[:-1] + '\\"'
    lines = text.splitlines()
    if len(lines) == 1:
        return [f'"""{lines[0]}"""']
    return [f'"""{lines[0]}', *lines[1:], '"""']


def render(member: Member, shape: Shape, target: str) -> Rendered:
    fn = member.function
    node = function_node(fn)
    args = _Rename().visit(copy.deepcopy(node.args))
    returns = None if node.returns is None else _Rename().visit(copy.deepcopy(node.returns))
    if shape.kind == "aiter":
        # Iterator[X] -> AsyncIterator[X]
        if not (isinstance(returns, ast.Subscript) and ast.unparse(returns.value) == "Iterator"):
            raise SystemExit(f"{member.owner.__name__}.{member.name}: an 'aiter' method must return an Iterator[...]")
        returns.value = ast.Name("AsyncIterator", ast.Load())
    annotation_names: set[str] = set()
    runtime_names: set[str] = set()
    for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
        if arg is not None and arg.annotation is not None:
            annotation_names.update(root_names(arg.annotation))
    for default in [*args.defaults, *args.kw_defaults]:
        if default is not None:
            runtime_names.update(root_names(default))
    if returns is not None:
        annotation_names.update(root_names(returns))
    signature = f"({ast.unparse(args)})" + ("" if returns is None else f" -> {ast.unparse(returns)}")
    name = shape.name or member.name
    passed = call_arguments(fn)
    call = f"{target}.{member.name}({passed})"
    # `return` only what the sync method returns (mypy refuses `return f()` of a `-> None` f).
    give = "" if returns is not None and ast.unparse(returns) == "None" else "return "
    # A parameter whose type has an async spelling (an async hook) goes to the sync method, which
    # awaits it inside the bridge; its declared type is the sync one.
    ignore = "  # type: ignore[arg-type]" if ast.unparse(args) != ast.unparse(node.args) else ""
    if isinstance(member.obj, property):
        head, body = ["@property", f"def {name}{signature}:"], [f"return {target}.{member.name}"]
    elif shape.kind == "await":
        head = [f"async def {name}{signature}:"]
        body = [f"{give}await _spawn({target}.{member.name}{', ' + passed if passed else ''})"]
    elif shape.kind == "sync":
        head, body = [f"def {name}{signature}:"], [f"{give}{call}{ignore}"]
    elif shape.kind == "aiter":
        params = inspect.signature(fn).parameters
        if shape.chunk not in params:
            raise SystemExit(f"{member.owner.__name__}.{member.name} has no parameter {shape.chunk!r} (see FACADES)")
        head, body = [f"def {name}{signature}:"], [f"return _aiterate({call}, {shape.chunk}){ignore}"]
    elif shape.kind == "custom":
        head, body = [f"async def {name}{signature}:"], shape.body.splitlines()
    else:  # pragma: no cover - skip is filtered out by the caller
        raise AssertionError(shape)
    code = [*head, *("    " + line if line else "" for line in [*docstring(member.doc), *body])]
    return Rendered(code, annotation_names, runtime_names)


def shape_of(facade: Facade, member: Member) -> Shape:
    if isinstance(member.obj, property):
        return Shape("sync")
    return facade.shapes.get(member.name, Shape("await"))


def stale_table_entries(facade: Facade, members: Sequence[Member]) -> list[str]:
    names = {m.name for m in members}
    return [name for name in facade.shapes if name not in names]


def generate_class(facade: Facade) -> Rendered:
    cls = load_class(facade.sync)
    members = public_members(cls, facade.shapes)
    stale = stale_table_entries(facade, members)
    if stale:
        raise SystemExit(
            f"tools/generate_async.py: FACADES[{facade.name}] names {', '.join(stale)}, which "
            f"{cls.__name__} no longer has: update the table"
        )
    lines: list[str] = []
    annotation_names: set[str] = set()
    runtime_names: set[str] = set()
    for member in members:
        shape = shape_of(facade, member)
        if shape.kind == "skip":
            continue
        part = render(member, shape, facade.target)
        annotation_names |= part.annotation_names
        runtime_names |= part.runtime_names
        lines.extend(["", *part.code])
    return Rendered(lines, annotation_names, runtime_names)


# ---------------------------------------------------------------------------- imports


def module_bindings(tree: ast.Module, module: str) -> dict[str, str]:
    """Name → the import statement that binds it at a module's level (or in its TYPE_CHECKING block)."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                spelled = alias.name if alias.asname is None else f"{alias.name} as {alias.asname}"
                found[alias.asname or alias.name] = f"from {node.module} import {spelled}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.partition(".")[0]
                found[bound] = f"import {alias.name}" + ("" if alias.asname is None else f" as {alias.asname}")
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            found.setdefault(node.name, f"from {module} import {node.name}")
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, f"from {module} import {target.id}")
    return found


def handwritten_names(text: str) -> set[str]:
    """Names aio.py binds at module level outside its generated import block."""
    without = _block(text, "IMPORTS").sub("", text)
    tree = ast.parse(without)
    names = set(module_bindings(tree, "memstate_sql.aio"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names.add(node.name)
    return names


def import_lines(facades: Sequence[Facade], needed: set[str], runtime: set[str], bound: set[str]) -> list[str]:
    sources: dict[str, str] = {}
    for facade in facades:
        cls = load_class(facade.sync)
        for owner in cls.__mro__[:-1]:
            module = sys.modules[owner.__module__]
            tree = ast.parse(inspect.getsource(module))
            for name, statement in module_bindings(tree, owner.__module__).items():
                sources.setdefault(name, statement)
    missing_runtime = sorted(runtime - bound - set(dir(builtins)))
    if missing_runtime:
        raise SystemExit(
            f"tools/generate_async.py: a default value of a generated method uses {', '.join(missing_runtime)}; "
            f"import it in {TARGET_NAME} (outside the generated block)"
        )
    lines = []
    for name in sorted(needed - bound - set(dir(builtins))):
        if name not in sources:
            raise SystemExit(f"tools/generate_async.py: cannot tell where {name!r} (in a sync signature) comes from")
        lines.append(sources[name])
    return lines


# ---------------------------------------------------------------------------- the file


def _block(text: str, label: str) -> re.Pattern[str]:
    return re.compile(
        rf"(?P<indent>[ \t]*)# START GENERATED {re.escape(label)}\n.*?^(?P=indent)# END GENERATED {re.escape(label)}\n",
        re.DOTALL | re.MULTILINE,
    )


def _replace(text: str, label: str, lines: Sequence[str]) -> str:
    pattern = _block(text, label)
    found = pattern.search(text)
    if found is None:
        raise SystemExit(f"tools/generate_async.py: {TARGET_NAME} has no '# START GENERATED {label}' block")
    indent = found.group("indent")
    body = [f"# START GENERATED {label}", NOTICE, *lines, "", f"# END GENERATED {label}"]
    block = "".join(f"{indent}{line}\n" if line else "\n" for line in body)
    return text[: found.start()] + block + text[found.end() :]


def ruff(args: Sequence[str], text: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", TARGET_NAME, "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"tools/generate_async.py: ruff {' '.join(args)} failed:\n{done.stderr}{done.stdout}")
    return done.stdout


def generate(current: str) -> str:
    """aio.py with its generated blocks rewritten from the sync classes (formatted by ruff)."""
    text = current
    needed: set[str] = set()
    runtime: set[str] = set()
    for facade in FACADES:
        part = generate_class(facade)
        needed |= part.annotation_names
        runtime |= part.runtime_names
        text = _replace(text, f"METHODS {facade.name}", part.code)
    imports = import_lines(FACADES, needed, runtime, handwritten_names(text))
    text = _replace(text, "IMPORTS", ["if TYPE_CHECKING:", *("    " + line for line in imports)])
    text = ruff(["check", "--select", "I", "--fix", "--exit-zero", "--quiet"], text)
    return ruff(["format", "--quiet"], text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 when aio.py is stale")
    options = parser.parse_args(argv)
    current = TARGET.read_text()
    fresh = generate(current)
    if fresh == current:
        return 0
    if options.check:
        sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), fresh.splitlines(True), TARGET_NAME))
        print(f"{TARGET_NAME} is stale: run `python -m tools.generate_async`", file=sys.stderr)
        return 1
    TARGET.write_text(fresh)
    print(f"rewrote {TARGET_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
