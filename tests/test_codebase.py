"""The package stays readable: no function in cifar_dist/ runs past 80 lines, train() reads as a short
story, and no module reaches into another's private names.

    python -m pytest tests/test_codebase.py
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cifar_dist"


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.relative_to(PACKAGE)}:{node.name}", node.end_lineno - node.lineno + 1


def test_no_function_over_80_lines():
    long = {name: n for name, n in _functions() if n > 80}
    assert not long, f"split these functions: {long}"


def test_train_reads_as_a_short_story():
    lengths = dict(_functions())
    assert lengths["trainer.py:train"] <= 70, lengths["trainer.py:train"]


def test_no_module_imports_another_modules_private_names():
    private = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not private, private


# -- layers (docs/architecture.md) ------------------------------------------------------------------
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def documented_layers() -> dict[str, int]:
    """module -> layer number, from docs/architecture.md's table (`| 3 config | presets, config |`)."""
    layers = {}
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0][:1].isdigit():
            for name in cells[1].replace("\\_", "_").split(","):
                layers[name.strip()] = int(cells[0].split()[0])
    return layers


def package_modules() -> dict[str, Path]:
    """module name -> file, for every module of the package: `config` for cifar_dist/config.py, `export`
    for cifar_dist/export/__init__.py, `export.__main__` for cifar_dist/export/__main__.py."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _base_package(name: str, path: Path, level: int) -> str:
    """The package a relative import of `level` dots starts from, as a module name ("" = cifar_dist)."""
    package = name if path.name == "__init__.py" and name != "__init__" else name.rpartition(".")[0]
    parts = package.split(".") if package else []
    return ".".join(parts[: len(parts) - (level - 1)])


def _owner(dotted: str, modules) -> str | None:
    """The package module a dotted name (relative to cifar_dist) lives in: the longest known prefix."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def _imported_modules(node, name: str, path: Path, modules) -> set[str]:
    """The package modules one import statement names (relative or absolute, any depth)."""
    targets = []
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = _base_package(name, path, node.level)
        elif (node.module or "").split(".")[0] == "cifar_dist":
            base, node_module = "", node.module.removeprefix("cifar_dist").strip(".")
            targets += [f"{node_module}.{a.name}".strip(".") for a in node.names] + [node_module]
            base = None
        else:
            return set()
        if base is not None:
            module = ".".join(p for p in (base, node.module or "") if p)
            targets += [f"{module}.{a.name}".strip(".") for a in node.names] + [module]
    elif isinstance(node, ast.Import):
        targets += [a.name.removeprefix("cifar_dist.") for a in node.names if a.name.startswith("cifar_dist.")]
    found = {_owner(t, modules) for t in targets if t}
    return {m for m in found if m and m != name}


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file: at module level, inside
    functions and in an `if __name__ == "__main__":` block alike."""
    modules = package_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            graph[name] |= _imported_modules(node, name, path, modules)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w) :] + [w]
            if w not in state and (found := visit(w)):
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_every_module_has_a_documented_layer():
    layers = documented_layers()
    modules = set(package_modules())
    assert not modules - set(layers), f"add these to docs/architecture.md's table: {sorted(modules - set(layers))}"
    assert not set(layers) - modules, f"docs/architecture.md names modules that do not exist: {set(layers) - modules}"


def test_imports_form_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_from_a_layer_above():
    layers = documented_layers()
    top = max(layers.values())
    upward = []
    for source, targets in import_graph().items():
        level = layers.get(source, top)
        upward += [f"{source} (layer {level}) -> {t} (layer {layers[t]})" for t in targets if layers.get(t, 0) > level]
    assert not upward, upward


def test_the_graph_sees_imports_inside_functions_and_main_blocks():
    # The checks above are only as good as the graph: imports inside functions and __main__ blocks count.
    graph = import_graph()
    assert "trainer" in graph["cli"]  # cli imports the trainer inside a function
    assert "cli" in graph["export.__main__"] and "export" in graph["export.__main__"]  # in its __main__ block
    assert "run_dir" in graph["export"] and "cli" not in graph["export"]  # from ..run_dir, in a package
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_over_400_lines():
    long = {p.name: n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these modules: {long}"
