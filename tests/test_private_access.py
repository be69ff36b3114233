"""The seams stay honest: no module reaches into another module's private names (read from the source).

``obj._name`` is allowed where ``obj`` is ``self``, ``cls`` or ``super()``, or where ``_name`` is
defined in the same module (a module's own classes may share their privates: ``SampleDecoder``
calls ``HostPreparation._decode`` in host.py). Anything else is a part using another's internals;
give that part a public method or a read-only view instead. ``from vito_fast.x import _name``
counts too. The loader's tests are held to the same rule (they read public views such as
``loader.host.decode_worker_pids`` and ``FrameStore.frame_offsets``).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import List, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vito_fast"
LOADER_TESTS = ["test_loader.py", "test_loader_faults.py", "test_frame_store.py", "test_decode_pool.py"]

# Underscored names that are public APIs of other libraries, not anyone's internals.
ALLOWED_ATTRIBUTES = {
    "_asdict", "_replace", "_fields",  # namedtuple's API (the underscore keeps it apart from field names)
    "_exit",  # os._exit: leave a forked child without running the parent's cleanup
}
ALLOWED_PREFIXES = ("_foreach_",)  # torch._foreach_*: PyTorch's multi-tensor ops (its optimizers use them)
# vito_fast._cpp is the one module that loads the compiled extension vito_fast._C (STYLE.md); others import _cpp
ALLOWED_IMPORTS = {"vito_fast/_cpp.py": {"_C"}, "*": {"_cpp"}}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined_names(tree: ast.AST) -> Set[str]:
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _is_own(value: ast.expr) -> bool:
    if isinstance(value, ast.Name):
        return value.id in ("self", "cls")
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super"


def private_accesses(path: Path, *, own_names_allowed: bool) -> List[str]:
    """``file:line: expression`` for each access to another module's private name in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    own = _defined_names(tree) if own_names_allowed else set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if (_is_own(node.value) or node.attr in own or node.attr in ALLOWED_ATTRIBUTES
                    or node.attr.startswith(ALLOWED_PREFIXES)):
                continue
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vito_fast"):
            for alias in node.names:
                allowed = ALLOWED_IMPORTS["*"] | ALLOWED_IMPORTS.get(str(where), set())
                if _private(alias.name) and alias.name not in allowed:
                    found.append(f"{where}:{node.lineno}: from {node.module} import {alias.name}")
    return found


def test_no_module_reaches_into_another_modules_private_names():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in private_accesses(path, own_names_allowed=True)]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_loader_tests_use_public_views_only():
    found = [hit for name in LOADER_TESTS for hit in private_accesses(ROOT / "tests" / name, own_names_allowed=False)]
    assert not found, "tests reaching into private members:\n" + "\n".join(found)


def test_the_check_sees_a_private_access(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("class A:\n    def f(self, other):\n        self._mine = 1\n        return other._pool._workers\n")
    hits = private_accesses(sample, own_names_allowed=True)
    assert len(hits) == 2 and all("other._pool" in hit for hit in hits)
