"""ITKM Studio's desktop app (PySide6 + pyqtgraph) over the Qt-free ``itkm_engine``."""

from .compat import protect_none_refcount

protect_none_refcount()  # PySide6 6.12 + Python 3.11 None refcount bug: see compat.py
