"""Imports flow one way between tunelib's packages, and no import hides in a function to dodge a cycle.

Every `import tunelib.X` / `from tunelib.X import ...` in tunelib/ is read from the source (at
any depth, functions included). An edge from one package to another must be in ALLOWED, the
layering docs/architecture.md draws; a new edge is a design decision, made by adding it there
and here. Outside the torch-free entry points (tunelib.cli, tunelib.config: `tune --help` must
start fast, so they import late on purpose), an import of another tunelib package inside a
function is refused: it usually hides a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

TUNELIB = Path(__file__).resolve().parents[1] / "tunelib"

# package -> the tunelib packages it may import (errors, dtensors, hub and families are leaves anyone
# may use; families reads the family modules' FAMILY literals from their source, importing nothing).
LEAVES = {"errors", "dtensors", "hub", "families", "__version__"}
ALLOWED = {
    "models": set(),
    "tokenizers": set(),
    "registry": set(),
    "checkpoint": {"models"},
    "quantization": {"checkpoint", "models"},
    "peft": {"quantization", "checkpoint", "models"},
    "data": {"tokenizers"},
    "config": {"registry"},
    "training": {"config", "data", "peft", "quantization", "checkpoint", "models", "tokenizers"},
    "generation": {"peft", "quantization", "checkpoint", "models", "tokenizers"},
    "experiments": set(),
    "export": {"peft", "checkpoint", "models"},
}
LATE_IMPORTS_ALLOWED = {"cli", "config"}


def _package(path: Path) -> str:
    return path.relative_to(TUNELIB).parts[0].removesuffix(".py")


def _imports(tree: ast.AST):
    """(module, line, inside a function) of every tunelib import in `tree`."""
    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("tunelib"):
                names = [f"{child.module}.{a.name}" for a in child.names] if child.module == "tunelib" else [child.module]
                yield from ((n, child.lineno, in_function) for n in names)
            elif isinstance(child, ast.Import):
                yield from ((a.name, child.lineno, in_function) for a in child.names if a.name.startswith("tunelib."))
            yield from visit(child, inside)

    yield from visit(tree, False)


def _edges():
    for path in sorted(TUNELIB.rglob("*.py")):
        source = _package(path)
        for module, line, in_function in _imports(ast.parse(path.read_text())):
            target = module.split(".")[1]
            if target != source:
                yield source, target, f"{path.relative_to(TUNELIB.parent)}:{line}", in_function


def test_packages_import_only_the_layers_below_them():
    wrong = [f"{where}: {source} imports {target}" for source, target, where, _ in _edges()
             if source in ALLOWED and target not in ALLOWED[source] | LEAVES]
    assert not wrong, "imports against the layering (see docs/architecture.md):\n" + "\n".join(wrong)


def test_the_allowed_layering_has_no_cycle():
    done, visiting = set(), []

    def walk(package):
        assert package not in visiting, f"cycle: {' -> '.join(visiting + [package])}"
        if package in done:
            return
        visiting.append(package)
        for target in ALLOWED.get(package, ()):
            walk(target)
        visiting.pop()
        done.add(package)

    for package in ALLOWED:
        walk(package)


def test_no_import_of_another_package_hides_in_a_function():
    hidden = [f"{where}: {source} imports {target} inside a function" for source, target, where, late in _edges()
              if late and source not in LATE_IMPORTS_ALLOWED]
    assert not hidden, "\n".join(hidden)
