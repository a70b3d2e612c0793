"""The house's measures (docs/architecture.md): small modules, each ``__init__.py`` only handing
names on, no Airflow in the library."""

from __future__ import annotations

import ast

import pytest
from helpers import REPO

pytestmark = pytest.mark.unit

SRC = REPO / "src"
MODULE_LINES = 450
INIT_LINES = 40


def _lines() -> dict[str, int]:
    return {
        path.relative_to(SRC).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in SRC.rglob("*.py")
    }


def _limit(name: str) -> int:
    return INIT_LINES if name.endswith("__init__.py") else MODULE_LINES


def test_no_module_is_over_its_limit():
    lines = _lines()
    over = {name: count for name, count in lines.items() if count > _limit(name)}
    assert not over, f"split these (limit {MODULE_LINES} lines, {INIT_LINES} an __init__): {over}"


def test_every_init_only_hands_names_on():
    for path in SRC.rglob("__init__.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        kinds = {
            type(node).__name__
            for node in tree.body
            if not isinstance(node, ast.Import | ast.ImportFrom | ast.Assign)
            and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
        }
        assert not kinds, f"{path.relative_to(REPO)} holds {kinds}: move them into a module"


def test_the_library_imports_no_airflow():
    for path in (SRC / "glacier_sync").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not [n for n in names if n.split(".")[0] == "airflow"], path


def test_every_module_has_its_line_in_the_architecture():
    """docs/architecture.md names every module of the library (by its path in the package) and
    of the Airflow glue; the migrations are Alembic's files, listed as a folder."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    library = SRC / "glacier_sync"
    modules = [
        path.relative_to(library).as_posix()
        for path in library.rglob("*.py")
        if path.name != "__init__.py" and "migrations" not in path.parts
    ]
    modules += [path.name for path in (SRC / "glacier_sync_airflow").glob("*.py")]
    missing = [
        name for name in modules if not name.endswith("__init__.py") and f"`{name}`" not in text
    ]
    assert not missing, f"say what each does in docs/architecture.md's module tables: {missing}"
