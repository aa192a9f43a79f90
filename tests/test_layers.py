"""The package layout is the flow: each layer imports only from the layers before it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "creditflow"
# top-level module or subpackage -> its layer; a module imports only from its own package or lower layers
LAYERS = {
    "errors": 0, "scoped": 0, "specs": 1, "data": 2,
    "model": 3,  # with creditflow.pipeline, the class path of models logged before the layout
    "train": 4, "registry": 5, "serving": 6, "monitor": 7, "pipelines": 8, "ops": 8, "cli": 9,
}
MAY_PRINT = {"creditflow.cli"}  # the command line; the library logs
MAX_LINES = 400


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    return "model" if top == "pipeline" else top


def creditflow_imports(tree: ast.Module) -> list[tuple[str, int, bool, tuple[str, ...]]]:
    """(imported creditflow module, line, whether inside a function, names) for every import in a module."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function, ()) for a in child.names
                             if a.name.startswith("creditflow"))
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("creditflow"):
                found.append((child.module, child.lineno, in_function, tuple(a.name for a in child.names)))
            visit(child, inner)

    visit(tree, False)
    return found


def problems(root: Path) -> list[str]:
    """Every breach of the layer rule under a package root: upward imports, cycles, function-level imports."""
    found, graph = [], {}
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        source = package_of(module)
        imports = creditflow_imports(ast.parse(path.read_text()))
        graph[module] = {f"{target}.{name}" for target, _, _, names in imports for name in names}
        graph[module] |= {target for target, _, _, _ in imports}  # `from package import module` names a module
        for target, line, in_function, _ in imports:
            where = f"{path.relative_to(root.parent)}:{line}"
            wanted = package_of(target)
            if wanted and source != wanted and LAYERS.get(wanted, 99) >= LAYERS.get(source, -1):
                found.append(f"{where}: {module} ({source}) imports {target} ({wanted}), not a lower layer")
            if in_function and module != "creditflow.cli":
                found.append(f"{where}: {module} imports {target} inside a function")
    found += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles among the modules.

    Importing a module imports its packages' __init__ first, except the packages the importer is in
    (they are initialised before any of their modules is imported).
    """
    def targets(module: str) -> set[str]:
        parts = module.split(".")
        own = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        out = set()
        for target in graph.get(module, ()):
            parts = target.split(".")
            out |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & graph.keys()
        return out - own

    found, done, stack = [], set(), []

    def visit(module: str) -> None:
        if module in stack:
            found.append(stack[stack.index(module):] + [module])
            return
        if module in done:
            return
        stack.append(module)
        for target in sorted(targets(module)):
            visit(target)
        stack.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    return found


def test_every_package_has_a_layer() -> None:
    packages = {package_of(module_name(p, SRC)) for p in SRC.rglob("*.py")} - {""}
    assert packages <= LAYERS.keys(), f"give these a layer in LAYERS: {sorted(packages - LAYERS.keys())}"


def test_imports_go_only_downward_without_cycles() -> None:
    assert problems(SRC) == []


@pytest.mark.parametrize(("module", "line", "breach"), [
    ("data/io.py", "from creditflow.model.pipeline import OPS", "not a lower layer"),
    ("serving/online.py", "from creditflow.monitor import drift", "not a lower layer"),
    ("model/shap.py", "def f():\n    from creditflow.data import io", "inside a function"),
])
def test_the_check_catches_a_breach(tmp_path: Path, module: str, line: str, breach: str) -> None:
    """The same check on a copy of the package with one bad import added must report it."""
    import shutil

    root = tmp_path / "creditflow"
    shutil.copytree(SRC, root, ignore=shutil.ignore_patterns("__pycache__"))
    target = root / module
    target.write_text(target.read_text() + "\n\n" + line + "\n")
    found = problems(root)
    assert any(breach in p and module in p for p in found), found


def test_the_check_catches_a_cycle(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "creditflow"
    shutil.copytree(SRC, root, ignore=shutil.ignore_patterns("__pycache__"))
    io = root / "data" / "io.py"
    io.write_text(io.read_text() + "\nfrom creditflow.data import dataset\n")
    found = problems(root)
    assert len(found) == 1 and found[0].startswith("import cycle: "), found
    assert "creditflow.data.io" in found[0] and "creditflow.data.dataset" in found[0]


def test_only_the_command_lines_print() -> None:
    printing = []
    for path in SRC.rglob("*.py"):
        module = module_name(path, SRC)
        calls = [n.lineno for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"]
        printing += [f"{module}:{line}" for line in calls if module not in MAY_PRINT]
    assert printing == [], "library code logs (logging.getLogger(__name__)); only the CLI prints"


def test_modules_stay_small() -> None:
    big = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f"split these along their seams: {big}"


@pytest.mark.parametrize("module", ["creditflow.registry.promote", "creditflow.serving.online",
                                    "creditflow.serving.stream", "creditflow.monitor.drift"])
def test_registry_serving_and_monitoring_do_not_import_the_training_stack(module: str) -> None:
    import subprocess
    import sys

    heavy = ("optuna", "shap", "matplotlib", "creditflow.train.search", "creditflow.train.explain")
    code = f"import sys, {module}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
