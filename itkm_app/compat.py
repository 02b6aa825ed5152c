"""Work-arounds for bugs in the Qt bindings this app runs on.  Each one says when it can go.

PySide6 6.12.0 on Python 3.11: ``QGraphicsLayoutItem``/``QGraphicsWidget`` setters
(``setMinimumHeight``, ``setMaximumHeight``, ``setMinimumWidth``, ``resize``, ...) return
``None`` one reference short, and some bool-returning paths do the same to ``True``.
pyqtgraph calls them on every axis update, so the reference counts (about 5,600 for ``None``
at start) run down and the interpreter aborts with "Fatal Python error: none_dealloc" (or
"bool_dealloc") after a few minutes of live plotting.  Python 3.12+ is unaffected: these
singletons are immortal there (PEP 683).  We do what 3.12 does: give them a reference count
they can never exhaust.  They are static objects that are never freed, so the only visible
effect is ``sys.getrefcount``.  Remove once PySide6 is pinned to a fixed release or
Python >= 3.12 is required.
"""

from __future__ import annotations

import ctypes
import sys

#: Headroom added to None's reference count (2**40: centuries of calls at any rate).
NONE_HEADROOM = 1 << 40
_applied = False


def protect_none_refcount() -> bool:
    """Make ``None``, ``True`` and ``False`` effectively immortal on CPython < 3.12.

    Idempotent; returns whether it was applied now."""
    global _applied
    if _applied or sys.implementation.name != "cpython" or sys.version_info >= (3, 12):
        return False
    for obj in (None, True, False):
        # CPython < 3.12: ob_refcnt (Py_ssize_t) is the first field of every object, at id(obj)
        ref = ctypes.c_ssize_t.from_address(id(obj))
        ref.value += NONE_HEADROOM
    _applied = True
    return True
