"""Error reporting for the app: one dialog for job failures and for exceptions in slots.

Nothing is swallowed: a failed job and an exception escaping a Qt slot both end up in
:func:`show_error` (a message box with the traceback under "Show Details...") and in the log
dock, and the app stays usable.

Tests replace :func:`show_error` (``monkeypatch.setattr(itkm_app.errors, "show_error", ...)``)
or set :data:`MODAL` to ``False``; callers always go through the module attribute so a patch
takes effect everywhere.
"""

from __future__ import annotations

import sys
import traceback
from types import TracebackType
from typing import Callable

from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

#: ``True``: the dialog blocks (exec); ``False``: it is shown and returns at once (tests, screenshots).
MODAL = True
#: Dialogs shown while not modal (kept alive here; tests can inspect them).
open_dialogs: list[QMessageBox] = []
#: Extra listeners (the log dock): called with (title, message, details).
listeners: list[Callable[[str, str, str], None]] = []


def show_error(parent: QWidget | None, title: str, message: str, details: str = "") -> None:
    """Show an error: ``message`` for the user, ``details`` (a traceback) behind a button."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Critical)
    box.setWindowTitle(title)
    box.setText(message)
    if details:
        box.setInformativeText("The details below help when reporting this problem.")
        box.setDetailedText(details)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    if MODAL:
        box.exec()
        box.deleteLater()
    else:
        open_dialogs.append(box)
        box.finished.connect(lambda _r, b=box: open_dialogs.remove(b) if b in open_dialogs else None)
        box.show()


def report(parent: QWidget | None, title: str, message: str, details: str = "") -> None:
    """Tell the listeners (log) and show the dialog."""
    for cb in list(listeners):
        try:
            cb(title, message, details)
        except Exception:  # noqa: BLE001 - a broken listener must not hide the error itself
            traceback.print_exc()
    sys.modules[__name__].show_error(parent, title, message, details)


_previous_hook = None
_in_hook = False


def excepthook(etype: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    """``sys.excepthook`` while the app runs: an exception in a slot shows the error dialog."""
    global _in_hook
    details = "".join(traceback.format_exception(etype, value, tb))
    sys.stderr.write(details)
    if _in_hook or QApplication.instance() is None:  # an error inside the dialog itself: just print
        return
    _in_hook = True
    try:
        from itkm_engine.errors import ItkmError

        message = str(value) if isinstance(value, ItkmError) else (
            f"An unexpected error happened ({etype.__name__}: {value}). The app keeps running; "
            "the last action may not have completed.")
        report(QApplication.activeWindow(), "Unexpected error", message, details)
    finally:
        _in_hook = False


def install_excepthook() -> None:
    global _previous_hook
    if sys.excepthook is not excepthook:
        _previous_hook = sys.excepthook
        sys.excepthook = excepthook


def uninstall_excepthook() -> None:
    global _previous_hook
    if sys.excepthook is excepthook:
        sys.excepthook = _previous_hook or sys.__excepthook__
        _previous_hook = None
