"""The layout rules of ARCHITECTURE.md, read from the source: layers, no import cycle, one
``map_batches`` call site, Ray only where a stage is wired to it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "raysynth"

# Lowest first; a module may import its own layer or a lower one.
LAYERS = [
    {"columns", "errors", "seeding", "devices", "files", "storage", "text", "config", "rundir", "ray_data",
     "warm_pools", "presets", "progress", "__init__"},
    {"data"},
    {"plan", "train", "mix"},
    {"generate", "filter", "tune", "pseudolabel"},
    {"report"},
    {"flows"},
    {"bench"},
    {"cli", "stderr_filter"},
]
# Modules that may import Ray: the adapters (Ray Data, the warm actor pools), the Train and Tune builders, the CLI, and the memory
# bench's child process (it starts its own local Ray to measure the driver's memory).
RAY_MODULES = {
    "raysynth.ray_data",
    "raysynth.warm_pools",
    "raysynth.train.session",
    "raysynth.train.epoch_relay",
    "raysynth.tune.tuner",
    "raysynth.tune.search",
    "raysynth.tune.ledger",
    "raysynth.tune.prompt",
    "raysynth.cli",
    "raysynth.bench.memory",
    "raysynth.bench.learn",
}


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path) -> list[str]:
    """Every module name an import statement anywhere in ``path`` names (function level too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def internal_edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for target in imports(path):
            if target in mods and target != m:
                edges[m].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer of ARCHITECTURE.md; add its folder")


def test_no_import_cycle_at_module_or_function_level():
    assert cycles(internal_edges(modules())) == []


def test_cycle_finder_finds_a_cycle(tmp_path):
    pkg = tmp_path / "raysynth"
    (pkg / "a").mkdir(parents=True)
    (pkg / "a" / "x.py").write_text("def f():\n    from raysynth.a.y import g\n")
    (pkg / "a" / "y.py").write_text("from raysynth.a import x\n")
    (pkg / "a" / "__init__.py").write_text("")
    assert cycles(internal_edges(modules(pkg))) == [["raysynth.a.x", "raysynth.a.y"]]


def test_every_module_imports_only_its_layer_or_below():
    mods = modules()
    wrong = [
        f"{m} -> {t}"
        for m, targets in internal_edges(mods).items()
        for t in targets
        if layer(t) > layer(m)
    ]
    assert wrong == []


def test_map_batches_is_called_in_the_adapter_only():
    callers = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "map_batches"
            ):
                callers.add(name)
    assert callers == {"raysynth.ray_data"}


def test_ray_is_imported_only_where_a_stage_is_wired_to_it():
    importers = {
        name
        for name, path in modules().items()
        if any(t == "ray" or t.startswith("ray.") for t in imports(path))
    }
    assert importers - RAY_MODULES == set(), "these import Ray; go through raysynth.ray_data"
    assert "raysynth.ray_data" in importers and "raysynth.cli" in importers


def sizes(root: Path = ROOT) -> tuple[dict[str, int], dict[str, int]]:
    """Lines per module over 300, and lines per function over 50."""
    big, long = {}, {}
    for name, path in modules(root).items():
        text = path.read_text()
        if (n := len(text.splitlines())) > 300:
            big[name] = n
        for node in ast.walk(ast.parse(text)):
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and (n := node.end_lineno - node.lineno + 1) > 50:
                long[f"{name}:{node.name}"] = n
    return big, long


def test_modules_and_functions_stay_small():
    """One responsibility per module: at most 4 modules over 300 lines (the config schema is
    one) and at most 8 functions over 50 lines."""
    big, long = sizes()
    assert len(big) <= 4, big
    assert len(long) <= 8, long
