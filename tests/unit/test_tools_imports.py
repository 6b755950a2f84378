"""The tools (`pystacker bench`, `pystacker chaos`) use the product only through the surface meant for
them: the SDK, the launcher of `pystacker cluster`, and `pystacker.testing`, which names everything
else they need and why; and the product never imports the tools. Read from the source files, every
import statement, nested ones too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from pystacker import testing

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools" / "src" / "pystacker_tools"
PRODUCT = ROOT / "src" / "pystacker"
SURFACE = {"pystacker.client", "pystacker.cluster", "pystacker.testing"}


def imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names) of each absolute import; `from pystacker import x` is module pystacker.x."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "pystacker":
                for alias in node.names:
                    yield node.lineno, f"pystacker.{alias.name}", []
            else:
                yield node.lineno, node.module, [alias.name for alias in node.names]


def python_files(folder: Path) -> list[Path]:
    files = sorted(folder.rglob("*.py"))
    assert files, folder
    return files


def tool_files() -> list[Path]:
    return python_files(TOOLS)


def test_the_tools_import_only_the_surface_meant_for_them() -> None:
    wrong = [f"{path.relative_to(ROOT)}:{line}: {module}" for path in tool_files()
             for line, module, _ in imports(path)
             if (module == "pystacker" or module.startswith("pystacker.")) and module not in SURFACE]
    assert wrong == []


def test_the_testing_surface_holds_only_what_a_tool_uses() -> None:
    used = {name for path in tool_files() for _, module, names in imports(path) if module == "pystacker.testing"
            for name in names}
    assert used == set(testing.__all__)


def test_the_product_imports_none_of_the_tools() -> None:
    wrong = [f"{path.relative_to(ROOT)}:{line}: {module}" for path in python_files(PRODUCT)
             for line, module, _ in imports(path) if module.partition(".")[0] == "pystacker_tools"]
    assert wrong == []
