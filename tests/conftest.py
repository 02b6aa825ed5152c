"""Test-wide settings (no display, no network) and the session's prepared data: the demo camera
set and workspaces built from it once, lazily (the first test that asks pays), then copied per
test (a copy takes milliseconds, a training round tens of seconds).

This folder is on ``sys.path`` (pytest puts the folder of a conftest.py outside any package
there), so every test imports the shared helpers as ``helpers.*`` (``tests/helpers/``)."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PYTHONHASHSEED", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # The suite runs in one worker per core (pyproject.toml): torch's own threads in each worker
    # (and in the CLI and training processes it starts, which inherit this) would only compete
    # for the same cores, and on a busy machine wait for each other at every barrier.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

from pathlib import Path

import pytest

from helpers.workspaces import copy_ws, embedded, ingested, trained


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core this process may use, at least 2 (the suite's slowest tests
    wait on child processes, and a second worker runs meanwhile), at most 4 (each worker builds
    the session's workspaces once and holds torch: ~1 GB)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(2, min(4, cores))


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
    return ingested(tmp_path_factory.mktemp("ws") / "ingested", [demo_dir])


@pytest.fixture(scope="session")
def trained_ws_template(ingested_ws_template, tmp_path_factory) -> Path:
    """The demo workspace after one round of the tiny preset.  Read-only use, or copy it."""
    return trained(copy_ws(ingested_ws_template, tmp_path_factory.mktemp("ws") / "trained"))


@pytest.fixture(scope="session")
def embedded_ws_template(ingested_ws_template, tmp_path_factory) -> Path:
    """The untrained demo workspace with its initial model's features cached: the app opens it
    without starting a child process to embed every crop (a torch import and the embedding,
    seconds each time; once here).  Copy it before writing (``fresh_embedded_ws``)."""
    return embedded(copy_ws(ingested_ws_template, tmp_path_factory.mktemp("ws") / "embedded"))


@pytest.fixture(scope="session")
def small_ws_template(demo_dir, tmp_path_factory) -> Path:
    """One scenario of the demo set (visible-infrared: 3 cameras, ~80 crops) ingested, not
    trained: for the tests that run many rounds, or a trainer beside other commands, and can
    afford only seconds each.  Copy it before writing."""
    return ingested(tmp_path_factory.mktemp("ws") / "small", [demo_dir / "visible-infrared"],
                    scenario="visible-infrared")


@pytest.fixture
def fresh_ws(ingested_ws_template, tmp_path) -> Path:
    """A private copy of the ingested (untrained) demo workspace."""
    return copy_ws(ingested_ws_template, tmp_path / "ws")


@pytest.fixture
def fresh_embedded_ws(embedded_ws_template, tmp_path) -> Path:
    """A private copy of the untrained demo workspace with its initial features cached."""
    return copy_ws(embedded_ws_template, tmp_path / "ws")


@pytest.fixture
def trained_ws(trained_ws_template, tmp_path) -> Path:
    """A private copy of the trained demo workspace."""
    return copy_ws(trained_ws_template, tmp_path / "ws")


@pytest.fixture
def small_ws(small_ws_template, tmp_path) -> Path:
    """A private copy of the small (one-scenario) ingested workspace: for a test that trains
    and needs a model, not the whole demo set."""
    return copy_ws(small_ws_template, tmp_path / "ws")


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
