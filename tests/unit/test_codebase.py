"""The package stays readable: no function in cifar_dist/ runs past 60 lines, train() reads as a short
story, the loop's epoch takes at most 3 parameters, no module reaches into another's private names, and
the folders keep their order (docs/architecture.md).

    python -m pytest tests/unit/test_codebase.py
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cifar_dist"


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.relative_to(PACKAGE)}:{node.name}", node.end_lineno - node.lineno + 1


def test_no_function_over_60_lines():
    long = {name: n for name, n in _functions() if n > 60}
    assert not long, f"split these functions: {long}"


def test_train_reads_as_a_short_story():
    lengths = dict(_functions())
    assert lengths["train/loop.py:train"] <= 60, lengths["train/loop.py:train"]


def test_the_epoch_takes_the_job_and_the_run_context():
    # The loop's collaborators travel together (RunContext), not as a row of loose parameters.
    tree = ast.parse((PACKAGE / "train" / "loop.py").read_text())
    [epoch] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train_epoch"]
    assert len(epoch.args.args) <= 3, [a.arg for a in epoch.args.args]


def test_no_module_imports_another_modules_private_names():
    private = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not private, private


# -- folders in layers (docs/architecture.md) ---------------------------------------------------------
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"
MAX_ROOT_MODULES = 8


def documented_order() -> dict[str, int]:
    """folder (`config`) or root module (`errors`) -> its order, from docs/architecture.md's table:
    `| 6 | `config/` | ... |` names a folder, `| 1 | errors, files | ... |` root modules."""
    order = {}
    for line in ARCHITECTURE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].isdigit():
            for name in cells[1].replace("\\_", "_").replace("`", "").split(","):
                order[name.strip().rstrip("/")] = int(cells[0])
    return order


def folder_of(module: str) -> str:
    """`config.schema` -> `config`; `config` (its __init__) -> `config`; a root module -> itself."""
    return module.split(".")[0]


def package_modules() -> dict[str, Path]:
    """module name -> file, for every module of the package: `errors` for cifar_dist/errors.py, `config`
    for cifar_dist/config/__init__.py, `config.schema` for cifar_dist/config/schema.py."""
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


def test_every_module_lives_in_a_documented_folder():
    order = documented_order()
    modules = package_modules()
    missing = sorted({folder_of(m) for m in modules} - set(order))
    assert not missing, f"add these folders or root modules to docs/architecture.md's table: {missing}"
    assert not set(order) - {folder_of(m) for m in modules}, "docs/architecture.md names what does not exist"
    for line in ARCHITECTURE.read_text().splitlines():  # a folder's row lists exactly its modules
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit() and cells[1].endswith("/"):
            folder = cells[1].rstrip("/")
            files = {m.partition(".")[2] for m in modules if folder_of(m) == folder and "." in m}
            named = {n.strip() for n in cells[2].replace("\\_", "_").split(",")}
            assert named == files, f"{folder}/ holds {sorted(files)}"
    root = [m for m, path in modules.items() if path.parent == PACKAGE]
    assert len(root) <= MAX_ROOT_MODULES, f"the package root holds {len(root)} modules: {root}"


def test_imports_form_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def upward_imports(graph: dict[str, set[str]], order: dict[str, int]) -> list[str]:
    """Every import of a module in a later folder of the table than the importer's."""
    return [
        f"{source} ({folder_of(source)}, {order[folder_of(source)]}) -> {t} ({folder_of(t)}, {order[folder_of(t)]})"
        for source, targets in sorted(graph.items())
        for t in sorted(targets)
        if order[folder_of(t)] > order[folder_of(source)]
    ]


def test_no_module_imports_from_a_later_folder():
    assert not upward_imports(import_graph(), documented_order())


def test_the_folder_rule_fails_on_a_planted_upward_import():
    graph = import_graph()
    graph["data.datasets"] = graph["data.datasets"] | {"train.loop"}  # data/ reaching up into train/
    assert upward_imports(graph, documented_order()) == ["data.datasets (data, 3) -> train.loop (train, 10)"]


def test_the_graph_sees_imports_inside_functions_and_main_blocks():
    # The checks above are only as good as the graph: imports inside functions and __main__ blocks count.
    graph = import_graph()
    assert "train.loop" in graph["cli.main"]  # cli imports the trainer inside a function
    assert "cli.export" in graph["export"] and "cli.main" in graph["export"]  # in its __main__ block
    assert "artifacts.run_dir" in graph["artifacts.export"] and "models.registry" in graph["artifacts.export"]
    assert "config.keys" in graph["config.rules"]  # from .keys, within a folder
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_over_400_lines():
    long = {
        str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, f"split these modules: {long}"
