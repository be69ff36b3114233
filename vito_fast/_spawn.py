"""Worker processes started by ``multiprocessing``'s spawn that do not run the user's main module again.

Spawn prepares each new process by importing the parent's ``__main__`` again: by its path for a
script (the whole script runs again when it has no ``if __name__ == "__main__":``, and the new
process dies starting its own workers), or by name under ``python -m``; code piped to ``python -``
has the path ``<stdin>``, which cannot be imported at all. The workers of this package run only
functions of the package, so they need none of it: ``main_left_alone()`` hides what spawn reads
(``__main__.__file__`` and ``__spec__``) while processes start, and puts it back. A notebook's
``__main__`` has neither, and is left as it is.
"""
from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["main_left_alone"]

_lock = threading.Lock()
_HIDDEN = ("__file__", "__spec__")


@contextmanager
def main_left_alone() -> Iterator[None]:
    """While the block starts processes by spawn, they do not import ``__main__`` (module docstring)."""
    main = sys.modules.get("__main__")
    with _lock:
        saved = {name: main.__dict__[name] for name in _HIDDEN if main is not None and name in main.__dict__}
        for name in saved:
            if name == "__spec__":
                main.__spec__ = None
            else:
                del main.__dict__[name]
        try:
            yield
        finally:
            if saved:
                main.__dict__.update(saved)
