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
