"""Exports: identity tracks (CSV) and features (NPZ), both written atomically.

CSV cells that a spreadsheet would run as a formula (starting with ``= + - @``, tab or carriage
return) are prefixed with a single quote (OWASP's advice on CSV injection); everything else goes
through Python's csv module, so commas, quotes, newlines and any unicode round-trip.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import os
import stat
from pathlib import Path

import numpy as np

from .atomic import TMP_PREFIX, atomic_open, folder_id
from .data.imageio import relpath_to_text
from .data.timestamps import is_derived, seconds_from_start, time_source
from .errors import ItkmError
from .progress import Reporter
from .records import rows_of

TRACK_COLUMNS = ("identity_id", "camera", "scenario", "group", "timestamp", "time_source", "image_path", "confidence",
                 "identity_name", "confirmed", "provisional")
# identity_id: the stable id (itkm_engine.identity_ids: it keeps naming the same people across
# decisions and rounds); name: the operator's; confirmed: 1 if in a confirmed pair; provisional: 1
# if the image was ingested after the identities were computed and joined its nearest identity.
# timestamp: an ISO date-time (time_source "file_mtime"), or -- for a time made from frame numbers
# (time_source "frame_number") -- seconds from the recording's start, never a made-up date
LINEAGE_COLUMNS = ("identity_id", "event", "other_identity_id", "step", "round", "time")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value) -> str:
    """A cell value that no spreadsheet will evaluate."""
    s = "" if value is None else str(value)
    return "'" + s if s.startswith(_FORMULA_START) else s


def path_text(path: str) -> str:
    """A path as CSV text: itself, or -- when the file name is not valid UTF-8 (legal on Linux) --
    the workspace's percent-escaped text form (``%%`` + escaped bytes; reverse it with
    :func:`itkm_engine.data.imageio.text_to_relpath`).  A CSV file is UTF-8 text and cannot hold
    the raw bytes; writing them would abort the whole export."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return relpath_to_text(path)


def iso_time(ts: float) -> str:
    """The CSV's timestamp cell: an ISO date-time, or seconds from the recording's start for a time
    made from frame numbers (it has no date: see ``data/timestamps.py``)."""
    if ts is None or not math.isfinite(ts):
        return ""
    if is_derived(ts):
        return f"{seconds_from_start(ts):.2f}"
    return dt.datetime.fromtimestamp(float(ts), tz=dt.timezone.utc).isoformat()


class ExportDestinationError(ItkmError):
    """An export was asked to write somewhere it must not (a folder, a link, a device, a user's
    image, the workspace's own files)."""


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def check_export_destination(ws, out: str | os.PathLike) -> Path:
    """The one check every export (tracks CSV, features NPZ, ONNX, config files) makes before it
    computes or writes anything.  Returns the absolute destination.

    Allowed: a new name, or an existing *regular* file (replaced atomically, keeping its mode).
    Refused with :class:`ExportDestinationError`: an empty name; folders, symbolic links, FIFOs,
    devices, sockets; anything inside a folder the workspace ingested (the user's images); anything
    inside the workspace folder except its ``exports/`` folder, which must be a real folder (not a
    link), and there no name starting ``.tmp-`` (the workspace's temporaries).
    """
    return export_destination(ws, out)[0]


def export_destination(ws, out: str | os.PathLike) -> tuple[Path, tuple[int, int]]:
    """:func:`check_export_destination`, and the identity of the folder it checked
    (:func:`~itkm_engine.atomic.folder_id`): pass it to ``atomic_open(..., folder=...)``, which
    writes into that folder only, so a folder swapped for a link after the check is refused
    instead of followed.  The workspace's ``exports/`` is created here when missing."""
    text = os.fspath(out) if out is not None else ""
    if not str(text).strip():
        raise ExportDestinationError("no output file given; name a new file, e.g. tracks.csv")
    path = Path(os.path.abspath(os.path.expanduser(text)))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise ExportDestinationError(f"cannot use {path} as the output file: {exc.strerror or exc}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        what = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise ExportDestinationError(f"{path} is {what}; write the export to a new file name or over a regular file")
    ws_root = Path(os.path.realpath(ws.path))
    exports = ws_root / ws.exports_dir.name  # the real folder exports/ of the real workspace, never a link
    through_exports = _inside(path, Path(os.path.abspath(ws.exports_dir))) or _inside(path, exports)
    if through_exports and os.path.islink(ws.exports_dir):
        raise ExportDestinationError(
            f"{ws.exports_dir} is a symbolic link (to {os.readlink(ws.exports_dir)}), not a folder: exports inside "
            "the workspace go only to its real exports/ folder. Remove the link (ITKM Studio makes the folder), or "
            "write the export outside the workspace")
    parent = Path(os.path.realpath(path.parent))
    if not parent.is_dir() and parent == exports and not os.path.lexists(exports):
        try:  # the workspace's exports/ is made on first use
            exports.mkdir()
        except OSError as exc:
            raise ExportDestinationError(f"cannot create {exports}: {exc.strerror or exc}") from None
    if not parent.is_dir():
        raise ExportDestinationError(f"the folder {path.parent} does not exist (or is not a folder); create it "
                                     "first, or choose a file in an existing folder")
    real = parent / path.name
    if _inside(real, ws_root) and not _inside(real, exports):
        raise ExportDestinationError(
            f"{path} is inside the workspace, whose files only ITKM Studio writes; "
            f"write exports to {ws.exports_dir} or outside the workspace")
    if _inside(real, exports) and path.name.startswith(TMP_PREFIX):
        raise ExportDestinationError(
            f"{path.name}: names starting with {TMP_PREFIX!r} inside the workspace are its temporary files; "
            "choose another name")
    for src in ws.sources():
        root = Path(os.path.realpath(src.root))
        if _inside(real, root):
            raise ExportDestinationError(
                f"{path} is inside the ingested camera folder {src.root}; exports never write among the "
                "user's images -- choose a file outside it")
    try:
        return path, folder_id(parent)
    except OSError as exc:
        raise ExportDestinationError(f"cannot use the folder {path.parent}: {exc.strerror or exc}") from None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def export_tracks(session, out_csv: str | Path, reporter: Reporter | None = None) -> int:
    """One row per sighting, grouped by identity (largest first), each identity's sightings in
    time order.  Returns rows."""
    out_csv, folder = export_destination(session.ws, out_csv)
    reporter = reporter or Reporter(job="export")
    images = session.images()
    table = session.identities(reporter=reporter.child(0.0, 0.7))
    rows = images.index_of(table.image_id)
    keep = rows >= 0
    ident, rows, conf = table.identity[keep], rows[keep], table.confidence[keep]
    prov = table.provisional[keep] if table.provisional is not None else np.zeros(len(ident), bool)
    sizes = np.bincount(ident) if len(ident) else np.zeros(0, np.int64)
    ts = np.nan_to_num(np.asarray(images.timestamp, dtype=np.float64), nan=np.inf)
    order = np.lexsort((ts[rows], ident, -sizes[ident])) if len(ident) else np.zeros(0, np.int64)
    n = len(order)
    names, confirmed = session.identity_names(), session.confirmed_image_ids()
    img_ids = table.image_id[keep]
    with atomic_open(Path(out_csv), "w", encoding="utf-8", newline="", folder=folder) as fh:
        w = csv.writer(fh)
        w.writerow(TRACK_COLUMNS)
        for i, o in enumerate(order):
            r = rows[o]
            w.writerow([
                int(ident[o]),
                escape_cell(images.camera[r]),
                escape_cell(images.scenario[r]),
                escape_cell(images.group[r]),
                iso_time(images.timestamp[r]),
                time_source(images.timestamp[r]),
                escape_cell(path_text(images.path[r])),
                f"{float(conf[o]):.4f}",
                escape_cell(names.get(int(ident[o]), ("", ""))[0]),
                int(int(img_ids[o]) in confirmed),
                int(bool(prov[o])),
            ])
            if i % 5000 == 0:
                reporter.check()
                reporter.update(0.7 + 0.3 * i / max(n, 1), stage="export", step=i, steps=n)
    reporter.update(1.0, stage="export", step=n, steps=n, message=f"{n} sightings written")
    return n


def export_lineage(session, out_csv: str | Path) -> int:
    """The identities' lineage in effect, oldest first: an id is new, merged into another, split
    from another or retired into another, by a decision step or a round.  Returns rows."""
    out_csv, folder = export_destination(session.ws, out_csv)
    session.identities()  # the lineage of what the operator sees now
    events = session.identity_lineage()
    with atomic_open(Path(out_csv), "w", encoding="utf-8", newline="", folder=folder) as fh:
        w = csv.writer(fh)
        w.writerow(LINEAGE_COLUMNS)
        for e in events:
            w.writerow([e.identity, e.event, "" if e.other is None else e.other, "" if e.batch is None else e.batch,
                        "" if e.round is None else e.round, iso_time(e.at)])
    return len(events)


def export_features(session, out_npz: str | Path, reporter: Reporter | None = None) -> int:
    """Features with their metadata: features, image_id, path, camera, scenario, group,
    person_id (-1 unknown), identity_id.  Returns rows."""
    out_npz, folder = export_destination(session.ws, out_npz)
    reporter = reporter or Reporter(job="export")
    images = session.images()
    fs = session.features(reporter=reporter.child(0.0, 0.6))
    table = session.identities(reporter=reporter.child(0.6, 0.9))
    rows = images.index_of(fs.ids)
    ident_rows = rows_of(table.image_id, fs.ids)
    identity = np.where(ident_rows >= 0, table.identity[ident_rows], -1) if len(table) else np.full(len(fs.ids), -1)
    with atomic_open(Path(out_npz), "wb", folder=folder) as fh:
        np.savez_compressed(
            fh,
            features=fs.feats.astype(np.float32),
            image_id=fs.ids,
            path=np.array([images.path[r] for r in rows], dtype=str),
            camera=np.asarray(images.camera[rows]).astype(str),
            scenario=np.asarray(images.scenario[rows]).astype(str),
            group=np.asarray(images.group[rows]).astype(str),
            person_id=np.asarray(images.person_id[rows], dtype=np.int64),
            identity_id=identity.astype(np.int64),
            checkpoint=np.array(fs.key),
        )
    reporter.update(1.0, stage="export", message=f"{len(fs.ids)} features written")
    return len(fs.ids)
