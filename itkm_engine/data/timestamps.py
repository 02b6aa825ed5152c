"""Where an image's time comes from, and how to write a time that carries no date.

Ingest takes a time from the file name when it carries a frame number (Market-1501, DukeMTMC,
MSMT17, LTCC and the demo's names): ``NAME_EPOCH + (sequence - 1) days + frame / fps``
(``layouts.py``).  Such a time orders the sightings of a recording but is no date: 2000-01-01 is
an arbitrary origin.  Otherwise the time is the file's modification time, a real date.  The app's
time line and the tracks CSV (``time_source``) tell the two apart with :func:`time_source`.
"""

from __future__ import annotations

import math

from .layouts import NAME_EPOCH

__all__ = ["NAME_EPOCH", "DERIVED_SPAN_S", "FRAME_NUMBER", "FILE_TIME", "is_derived", "time_source",
           "seconds_from_start"]

#: Times made from frame numbers lie within this many seconds after :data:`NAME_EPOCH`.
DERIVED_SPAN_S = 400 * 86400.0
#: ``time_source`` values.
FRAME_NUMBER = "frame_number"
FILE_TIME = "file_mtime"


def is_derived(ts) -> bool:
    """True for a time made from frame numbers (no real date)."""
    return ts is not None and math.isfinite(ts) and NAME_EPOCH <= ts < NAME_EPOCH + DERIVED_SPAN_S


def time_source(ts) -> str:
    """:data:`FRAME_NUMBER`, :data:`FILE_TIME`, or ``""`` for no time."""
    if ts is None or not math.isfinite(ts):
        return ""
    return FRAME_NUMBER if is_derived(ts) else FILE_TIME


def seconds_from_start(ts: float) -> float:
    """A frame-number time as seconds from the first frame of the first recording (day 1 00:00)."""
    return float(ts) - NAME_EPOCH
