"""Workspaces for the tests: a private copy of a prepared one (:func:`copy_ws`, milliseconds)
and the builders behind the session's prepared workspaces (``conftest.py``)."""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_ws(src: Path, dst: Path) -> Path:
    """A private copy of the workspace ``src`` at ``dst`` (its writer lock, if any, left behind)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("workspace.lock"))
    return dst


def ingested(path: Path, folders: list[Path], **ingest_kw) -> Path:
    """A new workspace at ``path`` holding ``folders`` (``ingest``'s keywords: scenario, layout...)."""
    from itkm_engine.data.ingest import ingest
    from itkm_engine.workspace import Workspace

    with Workspace.open(path, create=True) as ws:
        ingest(ws, [Path(f) for f in folders], **ingest_kw)
    return path


def use_preset(ws_path: Path, name: str = "tiny") -> None:
    """Write ``name``'s settings as the workspace's config.toml (what ``--preset`` does)."""
    from itkm_engine.config import preset

    preset(name).save(ws_path / "config.toml")


def trained(path: Path, rounds: int = 1, preset_name: str = "tiny") -> Path:
    """``rounds`` rounds of ``preset_name`` on the workspace at ``path`` (in this process)."""
    from itkm_engine.config import preset
    from itkm_engine.trainer import train
    from itkm_engine.workspace import Workspace

    cfg = preset(preset_name)
    with Workspace.open(path) as ws:
        cfg.save(ws.path / "config.toml")
        train(ws, cfg, rounds=rounds)
    return path


def embedded(path: Path) -> Path:
    """The workspace at ``path`` with its current model's features cached (the ``quick`` preset's
    initial model where nothing was trained): what opening it in the app computes first, in a
    child process, unless the cache is complete."""
    from itkm_engine.session import Session

    with Session.open(path, device="cpu") as session:
        session.features()
    return path
