"""Test-wide settings: no display, no network, small threads."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PYTHONHASHSEED", "0")

import shutil
from pathlib import Path

import pytest

#: Size of the shared demo camera set (people); small so the session fixture trains in seconds.
DEMO_IDENTITIES = 6


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A tiny multi-scenario demo camera set (written once per test session; never modified)."""
    from itkm_engine.data.demo import make_demo

    root = tmp_path_factory.mktemp("demo") / "cams"
    make_demo(root, identities=DEMO_IDENTITIES, seed=0)
    return root


@pytest.fixture(scope="session")
def ingested_ws_template(demo_dir, tmp_path_factory) -> Path:
    """A workspace holding the demo set, not trained.  Copy it before writing (``fresh_ws``)."""
    from itkm_engine.data.ingest import ingest
    from itkm_engine.workspace import Workspace

    path = tmp_path_factory.mktemp("ws") / "ingested"
    with Workspace.open(path, create=True) as ws:
        ingest(ws, [demo_dir])
    return path


@pytest.fixture(scope="session")
def trained_ws_template(ingested_ws_template, tmp_path_factory) -> Path:
    """The demo workspace after one round of the tiny preset.  Read-only use, or copy it."""
    from itkm_engine.atomic import atomic_write_text
    from itkm_engine.config import preset
    from itkm_engine.trainer import train
    from itkm_engine.workspace import Workspace

    path = tmp_path_factory.mktemp("ws") / "trained"
    shutil.copytree(ingested_ws_template, path)
    cfg = preset("tiny")
    with Workspace.open(path) as ws:
        atomic_write_text(ws.path / "config.toml", cfg.to_toml())
        train(ws, cfg, rounds=1)
    return path


def _copy_ws(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("workspace.lock"))
    return dst


@pytest.fixture
def fresh_ws(ingested_ws_template, tmp_path) -> Path:
    """A private copy of the ingested (untrained) demo workspace."""
    return _copy_ws(ingested_ws_template, tmp_path / "ws")


@pytest.fixture
def trained_ws(trained_ws_template, tmp_path) -> Path:
    """A private copy of the trained demo workspace."""
    return _copy_ws(trained_ws_template, tmp_path / "ws")


@pytest.fixture(scope="module", autouse=True)
def _automatic_gc_after_each_module():
    """A window turns Python's automatic garbage collection off (``itkm_app.gui_gc``) and back on
    when it closes; a test module that left a window open must not leave the rest of the
    session without collection."""
    yield
    import sys

    gui_gc = sys.modules.get("itkm_app.gui_gc")
    if gui_gc is not None:
        gui_gc.GuiThreadCollector.stop_all()
