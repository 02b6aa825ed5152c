"""The engine's layering (House, issue 19): the import-linter contracts in pyproject.toml.

They forbid Qt / pyqtgraph / the app inside ``itkm_engine``, keep the layers (entry points >
trainer | session > stages and jobs > algorithms > data, model, store > ground; trainer and session
independent peers) and forbid import cycles between the modules of every engine package.  Imports
inside functions count like any other, so a lazy import cannot hide an arrow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_linter_contracts_are_kept(monkeypatch, capsys):
    cli = pytest.importorskip("importlinter.cli", reason="import-linter is in the test extra")
    monkeypatch.chdir(ROOT)  # root packages must import from this checkout
    monkeypatch.syspath_prepend(str(ROOT))
    code = cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code == cli.EXIT_STATUS_SUCCESS, out
    assert out.count(" KEPT") == 3, out


def test_the_layer_contract_catches_an_upward_import(tmp_path, monkeypatch, capsys):
    """The contracts are not vacuous: a copy of the engine where the pure constraints module imports
    the session (the arrow that closed the old 8-file loop) breaks the layers and the acyclic rule."""
    import shutil

    cli = pytest.importorskip("importlinter.cli", reason="import-linter is in the test extra")
    for pkg in ("itkm_engine", "itkm_app"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "itkm_engine" / "constraints.py").open("a") as fh:
        fh.write("\nfrom .session import Session  # an upward import\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in list(__import__("sys").modules) if m.split(".")[0] in ("itkm_engine", "itkm_app")]:
        monkeypatch.delitem(__import__("sys").modules, name)
    code = cli.lint_imports(config_filename=str(tmp_path / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code != cli.EXIT_STATUS_SUCCESS
    assert "itkm_engine.constraints is not allowed to import itkm_engine.session" in out
