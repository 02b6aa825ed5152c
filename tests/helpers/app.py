"""Shared tools of the app tests: error dialogs recorded instead of shown."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from itkm_app import errors


class ErrorRecorder:
    """Stands in for ``errors.show_error``: keeps (title, message, details) of every dialog."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, parent, title, message, details=""):
        self.calls.append((title, message, details))


@contextlib.contextmanager
def recording_errors() -> Iterator[ErrorRecorder]:
    """Error dialogs recorded (a modal dialog would block an offscreen test forever)."""
    rec = ErrorRecorder()
    mp = pytest.MonkeyPatch()
    mp.setattr(errors, "show_error", rec)
    try:
        yield rec
    finally:
        mp.undo()


def wait_idle(qtbot, window, timeout: int = 120_000) -> None:
    """Until the window runs no read or write job."""
    qtbot.waitUntil(lambda: not window.jobs.busy("read") and not window.jobs.busy("write"), timeout=timeout)


def open_window(qtbot, path, settings_path, size=(1600, 1000)):
    """A MainWindow (tiny preset, no warm-up) on the workspace at ``path``, its session loaded and
    its jobs finished."""
    from itkm_app.main_window import MainWindow
    from itkm_app.settings import Settings

    settings = Settings(settings_path)
    settings.set("training/preset", "tiny")
    window = MainWindow(settings, dev=True, warm=False)
    window.resize(*size)
    window.show()
    window.open_workspace(path)
    qtbot.waitUntil(lambda: window.ctx.session is not None, timeout=120_000)
    wait_idle(qtbot, window)
    return window


def close_window(window) -> None:
    """Cancel and wait for the window's jobs (a job still ending would make close() ask), close it."""
    window.jobs.cancel_all()
    window.jobs.wait_idle(120)
    window.close()


def fake_cached_map(ws_path) -> "np.ndarray":
    """A random 2-D map written to the workspace's projection cache, so the Clusters view never
    computes one (UMAP takes tens of seconds)."""
    import numpy as np

    from itkm_engine.projection import projection_path
    from itkm_engine.session import Session

    with Session.open(ws_path, device="cpu") as s:
        fs = s.features()
        path = projection_path(s.ws.cache_dir, s.checkpoint_key())
        xy = np.random.default_rng(0).normal(size=(len(fs.ids), 2)).astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, xy)
        np.save(path.with_suffix(".ids.npy"), np.asarray(fs.ids, np.int64))
    return xy
