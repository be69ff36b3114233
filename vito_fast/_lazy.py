"""Lazy attribute loading for package ``__init__`` modules.

``import vito_fast`` stays cheap and never touches Triton, DALI or CUDA: each public name is
imported from its home module on first use.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List


def lazy_exports(package: str, exports: Dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """Build ``__getattr__`` and ``__dir__`` for ``package``.

    exports maps a public name to the module that defines it, relative to ``package``
    (``{"info_nce": ".ops.info_nce"}``).
    """

    def __getattr__(name: str) -> Any:
        module_name = exports.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(module_name, package)
        if module.__name__ == f"{package}.{name}":  # the name is a subpackage itself
            return module
        return getattr(module, name)

    def __dir__() -> List[str]:
        return sorted(exports)

    return __getattr__, __dir__
