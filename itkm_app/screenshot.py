"""``itkm-app WORKSPACE --screenshot DIR``: render each main view to ``DIR/<view>.png``.

Each panel is brought to the front, allowed to load (its background jobs finished, its
thumbnails decoded), given a representative state (a gallery query, a selected identity), then
the window is grabbed at its current size (1280x800 by default).
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QEventLoop

SIZE = (1280, 800)


def pump(seconds: float = 0.0) -> None:
    """Process events for at least ``seconds`` (and at least once)."""
    end = time.monotonic() + seconds
    while True:
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        if time.monotonic() >= end:
            return
        time.sleep(0.005)


def wait_until(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        pump(0.02)
    return bool(cond())


def _busy(window) -> bool:
    return window.jobs.busy("read") or window.jobs.busy("write")


def wait_settled(window, panel=None, timeout: float = 600.0) -> bool:
    """Until no user-visible job runs, ``panel`` is not loading and thumbnails are decoded."""

    def settled() -> bool:
        if _busy(window) or (panel is not None and panel.loading()):
            return False
        return window.ctx.thumbs.pending() == 0

    ok = wait_until(settled, timeout)
    pump(0.15)  # let queued repaints and late thumbnails land
    window.ctx.thumbs.wait(5000)
    pump(0.1)
    return ok and settled()


def capture(window, out_dir: str | Path, *, size: tuple[int, int] = SIZE, timeout: float = 900.0) -> list[Path]:
    """Screenshot every panel of ``window`` into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    window.resize(*size)
    window.show()
    pump(0.1)
    deadline = time.monotonic() + timeout
    # the workspace's session (model, images) first, if a workspace is being opened
    wait_until(lambda: window.ctx.ws is None or window.ctx.session is not None or not _busy(window),
               max(1.0, deadline - time.monotonic()))
    wait_settled(window, None, max(1.0, deadline - time.monotonic()))
    files = []
    for panel in window.panels:
        window.show_panel(panel.key)
        panel.activate()
        pump(0.05)
        wait_settled(window, panel, max(1.0, deadline - time.monotonic()))
        panel.prepare_screenshot()
        pump(0.05)
        wait_settled(window, panel, max(1.0, deadline - time.monotonic()))
        path = out / f"{panel.key}.png"
        if not window.grab().save(str(path)):
            raise OSError(f"could not write {path}")
        files.append(path)
    return files
