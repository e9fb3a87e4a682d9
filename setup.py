"""Build hook: ship the repository's top-level ``alembic/`` inside the package.

The migration scripts live in ``alembic/`` (env.py, script.py.mako, versions/)
so that ``alembic`` works from the repository as usual; a wheel carries them as
``memstate_sql/_alembic``, where `memstate_sql.migrations.script_location`
finds them after a plain ``pip install``. Editable installs use the
repository's directory directly. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent / "alembic"
PACKAGED = Path("memstate_sql") / "_alembic"


class build_py_with_migrations(build_py):  # noqa: N801 - setuptools command naming
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / PACKAGED
        if target.exists():
            shutil.rmtree(target)
        for path in sorted(SOURCE.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".mako"):
                dest = target / path.relative_to(SOURCE)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)


setup(cmdclass={"build_py": build_py_with_migrations})
