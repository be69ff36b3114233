"""The package's layout: imports flow one way and never in a circle (read from the source, nothing imported).

Layers, lowest first; a module may import its own layer and the ones below, never above:

    0  errors, version, _lazy, _cpp (the C++ extension), distributed, reference, kernels,
       storage (bytes where they lie: object storage, tar shards, ranged reads, read-ahead)
    1  ops            autograd + dispatch
    2  nn             thin modules
    3  model, data,   the VITO model; sampling, sources, loading (manifest and store formats);
       decoders       video decoders behind one contract and the choice among them
    4  prepare, curate, synthetic   making data: scans, frame stores, curation, built-in videos
    5  train, eval
    6  demo           the built-in demo (a package: settings, evaluation, claims, report)
    7  cli, __main__, the package root (its lazy public API)

``kernels/`` is installed as ``vito_fast.kernels`` and must import torch and triton only.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE, KERNELS = ROOT / "vito_fast", ROOT / "kernels"
LAYERS = {
    "errors": 0, "version": 0, "_lazy": 0, "_spawn": 0, "_cpp": 0, "_C": 0, "distributed": 0, "reference": 0, "kernels": 0,
    "storage": 0, "ops": 1, "nn": 2, "model": 3, "data": 3, "decoders": 3, "prepare": 4, "curate": 4, "synthetic": 4,
    "train": 5, "eval": 5, "demo": 6, "cli": 7, "__main__": 7, "": 7,
}


def package_modules() -> Dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The vito_fast modules ``name`` imports anywhere in its source (also inside functions)."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "vito_fast":
                continue
            if target.split(".")[:2] in (["vito_fast", "kernels"], ["vito_fast", "_C"]):
                found.add(".".join(target.split(".")[:2]))
                continue
            while target not in modules and target.count(".") > 0:
                target = target.rsplit(".", 1)[0]
            if target != name:
                found.add(target)
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


@pytest.fixture(scope="module")
def graph() -> Dict[str, Set[str]]:
    modules = package_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def test_every_package_has_a_layer(graph):
    unknown = sorted({name.split(".")[1] for name in graph if "." in name} - set(LAYERS))
    assert not unknown, f"no layer for {unknown}: add them to LAYERS (and the docstring)"


def test_imports_never_go_up(graph):
    upward = [f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
              for module, targets in sorted(graph.items()) for target in sorted(targets)
              if layer(target) > layer(module)]
    assert not upward, "\n".join(upward)


def test_no_import_circles(graph):
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    circles: List[List[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.get(module, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(circle) for circle in circles)


def test_kernels_import_torch_and_triton_only():
    allowed = {"torch", "triton", "math", "functools", "typing", "__future__", "dataclasses", "os", "contextlib"}
    for path in KERNELS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                own = name.startswith("vito_fast.kernels")  # the kernels' own helpers
                assert own or name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_no_folder_holds_more_than_a_third_of_the_package():
    lines = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in PACKAGE.rglob("*.py")}
    total = sum(lines.values())
    folders: Dict[str, int] = {}
    for path, count in lines.items():
        folder = path.relative_to(PACKAGE).parts[0] if len(path.relative_to(PACKAGE).parts) > 1 else "(root)"
        folders[folder] = folders.get(folder, 0) + count
    largest = max(folders, key=folders.get)
    assert folders[largest] <= 0.36 * total, f"{largest}/ holds {folders[largest]} of {total} lines"
