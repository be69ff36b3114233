"""The one place that loads the compiled extension ``vito_fast._C``.

Everything else asks this module: ``available()`` says whether the extension loaded, and
``require(name)`` returns one of its functions or raises an error that says how to fix the install.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, Optional

_extension: Optional[ModuleType] = None
_load_error: Optional[BaseException] = None

try:
    from vito_fast import _C as _extension  # type: ignore[attr-defined, no-redef]
except ImportError as error:  # pragma: no cover - depends on how the package was installed
    _load_error = error

_FIX = (
    "rebuild it with `pip install -e .` from the repository root "
    "(needs a C++17 compiler and pybind11)"
)


def available() -> bool:
    """True when ``vito_fast._C`` was built and imported."""
    return _extension is not None


def load_error() -> Optional[BaseException]:
    """The ImportError that stopped ``vito_fast._C`` from loading, or None."""
    return _load_error


def require(name: str) -> Callable[..., Any]:
    """Return ``vito_fast._C.<name>`` or raise a RuntimeError saying how to get it."""
    if _extension is None:
        raise RuntimeError(f"vito_fast._C is not available ({_load_error}); {_FIX}")
    function = getattr(_extension, name, None)
    if function is None:
        raise RuntimeError(f"vito_fast._C has no function {name!r}: the build is stale; {_FIX}")
    return function
