"""The package stays readable: no function in cifar_dist/ runs past 80 lines, train() reads as a short
story, and no module reaches into another's private names.

    python -m pytest tests/test_codebase.py
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cifar_dist"


def _functions():
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.name}:{node.name}", node.end_lineno - node.lineno + 1


def test_no_function_over_80_lines():
    long = {name: n for name, n in _functions() if n > 80}
    assert not long, f"split these functions: {long}"


def test_train_reads_as_a_short_story():
    lengths = dict(_functions())
    assert lengths["trainer.py:train"] <= 70, lengths["trainer.py:train"]


def test_no_module_imports_another_modules_private_names():
    private = []
    for path in sorted(PACKAGE.glob("*.py")):
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


def _is_main_guard(node) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def _imported_modules(node, own: str, modules: set[str]) -> set[str]:
    """The package modules one import statement names (relative or absolute, any depth)."""
    out = set()
    if isinstance(node, ast.ImportFrom):
        if node.level == 1 or (node.module or "").startswith("cifar_dist"):
            base = node.module or "" if node.level == 1 else (node.module or "").removeprefix("cifar_dist")
            base = base.strip(".")
            if base:
                out.add(base.split(".")[0])
            else:  # from . import x / from cifar_dist import x
                out |= {a.name for a in node.names if a.name in modules}
    elif isinstance(node, ast.Import):
        out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("cifar_dist.")}
    return out - {own}


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, at module level or inside functions. The imports of
    an `if __name__ == "__main__":` block belong to the entry point `<module>:__main__`."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        graph.setdefault(path.stem, set())
        for top in tree.body:
            owner = f"{path.stem}:__main__" if _is_main_guard(top) else path.stem
            for node in ast.walk(top):
                graph.setdefault(owner, set()).update(_imported_modules(node, path.stem, modules))
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
    modules = {p.stem for p in PACKAGE.glob("*.py")}
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
        level = top if source.endswith(":__main__") else layers.get(source, top)
        upward += [f"{source} (layer {level}) -> {t} (layer {layers[t]})" for t in targets if layers.get(t, 0) > level]
    assert not upward, upward


def test_the_graph_sees_imports_inside_functions_and_main_blocks():
    # The checks above are only as good as the graph: imports inside functions and __main__ blocks count.
    graph = import_graph()
    assert "trainer" in graph["cli"]  # cli imports the trainer inside a function
    assert "cli" in graph["export:__main__"] and "cli" not in graph["export"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_over_400_lines():
    long = {p.name: n for p in PACKAGE.glob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these modules: {long}"
