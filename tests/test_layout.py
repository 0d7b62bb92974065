"""The shape the code keeps (docs/architecture.md): no module over 500 lines, no class over
250, no function with more than 7 parameters, and the core never imports a feature package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import transcache

SRC = Path(transcache.__file__).parent
MODULES = sorted(SRC.rglob("*.py"))
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 250
MAX_PARAMETERS = 7
# Feature packages the core (the modules at the top of the package, cache/ and store/) may
# not import: they register into the core instead.
FEATURES = ("transcache.install", "transcache.cli")
# The front ends (the CLI, the API, the pytest plugin) assemble the core with its features
# (the API registers install's doctor
# pages into the admin registry); they are not core.
FRONT_ENDS = ("__main__.py", "cli.py", "api.py", "pytest_plugin.py")
CORE = [
    path
    for path in MODULES
    if (path.parent == SRC and path.name not in FRONT_ENDS)
    or path.parent.name in ("cache", "store")
]


def name_of(path: Path) -> str:
    return str(path.relative_to(SRC))


@pytest.mark.parametrize("path", MODULES, ids=name_of)
def test_modules_classes_and_functions_stay_small(path: Path) -> None:
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            assert node.end_lineno - node.lineno + 1 <= MAX_CLASS_LINES, node.name
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            names = [a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs]
            names = [name for name in names if name not in ("self", "cls")]
            assert len(names) <= MAX_PARAMETERS, node.name


@pytest.mark.parametrize("path", CORE, ids=name_of)
def test_the_core_imports_no_feature_package(path: Path) -> None:
    package = "transcache" if path.parent == SRC else f"transcache.{path.parent.name}"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
            target = ".".join([*base, node.module] if node.module else base)
            assert not target.startswith(FEATURES), f"{name_of(path)} imports {target}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert not alias.name.startswith(FEATURES), f"{name_of(path)} imports {alias.name}"
