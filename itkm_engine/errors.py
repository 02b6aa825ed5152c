"""Exceptions the engine raises on purpose.

Every error a user can cause (bad folder, locked workspace, missing weights, a crafted checkpoint)
is an :class:`ItkmError` with a message written for that user; the CLI prints it without a
traceback and the app shows it in a dialog.  Anything else is a bug.
"""

from __future__ import annotations


class ItkmError(Exception):
    """Base class: an error whose message is meant for the user."""


class WorkspaceError(ItkmError):
    """The workspace folder is missing, damaged or not a workspace."""


class WorkspaceLockedError(WorkspaceError):
    """Another live process holds the workspace's writer lock."""


class SchemaTooNewError(WorkspaceError):
    """The workspace was written by a newer ITKM Studio."""


class ReadOnlyWorkspaceError(WorkspaceError):
    """A write was attempted on a workspace opened read-only (or on a read-only disk)."""


class LayoutError(ItkmError):
    """A folder's layout is unknown or does not match the named layout."""


class WeightsUnavailableError(ItkmError):
    """CLIP weights could not be found or downloaded."""


class UnsafeCheckpointError(ItkmError):
    """A checkpoint file would need arbitrary code execution (pickle) to load; it was refused."""


class NothingToDoError(ItkmError):
    """The requested step has no input (no images, no checkpoint, no features yet)."""


class TrainingDivergedError(ItkmError):
    """A training step produced a NaN or infinite loss (or weights); the round was rolled back to
    its last good epoch."""


class NotEnoughMemoryError(ItkmError):
    """A job ran out of memory; the message names the setting to lower (and, for training, that
    the round resumes from its last completed epoch)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the allocator giving up: ``MemoryError``, torch's (CUDA)
    ``OutOfMemoryError``, or the ``RuntimeError`` torch's CPU allocator raises ("can't allocate
    memory").  Looked at by name and text, so nothing here imports torch."""
    if isinstance(exc, NotEnoughMemoryError):
        return False  # already explained
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    if isinstance(exc, RuntimeError):
        low = str(exc).lower()
        return "out of memory" in low or "can't allocate memory" in low or "cannot allocate memory" in low
    return False


class Cancelled(Exception):
    """A job stopped because its cancel token was set. Not an error: state is resumable."""
