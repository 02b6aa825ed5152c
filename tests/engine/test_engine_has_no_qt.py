"""The engine never imports Qt: every ``itkm_engine`` module imports in a fresh interpreter
without PySide6, shiboken6, pyqtgraph (or any other Qt binding) appearing in ``sys.modules``."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import itkm_engine

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import importlib, json, pkgutil, sys
import itkm_engine
names = sorted(m.name for m in pkgutil.walk_packages(itkm_engine.__path__, "itkm_engine."))
failed = {}
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:  # reported, so a broken module does not hide a Qt import
        failed[name] = repr(exc)
banned = ("PySide6", "PySide2", "PyQt5", "PyQt6", "shiboken6", "shiboken2", "pyqtgraph", "qtpy")
qt = sorted(m for m in sys.modules if m.split(".")[0] in banned)
print(json.dumps({"modules": names, "failed": failed, "qt": qt}))
"""


def test_every_engine_module_imports_without_qt():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"})
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    expected = {m.name for m in pkgutil.walk_packages(itkm_engine.__path__, "itkm_engine.")}
    assert set(res["modules"]) == expected
    assert {"itkm_engine.jobs", "itkm_engine.projection", "itkm_engine.session"} <= expected
    assert not res["failed"], res["failed"]
    assert res["qt"] == [], f"the engine imported Qt: {res['qt']}"
