"""The workspace: one folder per project holding everything ITKM Studio knows about it.

::

    WS/ itkm.sqlite (WAL)   cameras, images, rejects, rounds, epochs, pseudo-label assignments,
                            metrics, identities, meta (schema_version)
        workspace.lock      the writer lock (:mod:`itkm_engine.lock`)
        config.toml         the project's Config
        checkpoints/ features/ rounds/ cache/ exports/    big arrays and files, written atomically

Images are *referenced* (source root + relative path), never copied or modified.  Rows are small
and many (a million images), so the database keeps them and the heavy arrays (features, text
features, UMAP) live on disk as ``.npy``/``.npz`` keyed by checkpoint (see docs/adr/0001).

Concurrency: one *writer* process per workspace (the writer lock) and any number of read-only
openers (``Workspace.open(path, readonly=True)``: no lock, SQLite ``mode=ro``; WAL lets them read a
consistent snapshot while the writer commits).  Inside a process one :class:`Workspace` object owns
one connection guarded by an ``RLock``, so worker threads may share it (their calls serialise);
for truly parallel reads open one read-only Workspace per thread.

Every write runs inside :meth:`Workspace.transaction` (``BEGIN IMMEDIATE`` ... ``COMMIT``), so a crash
or a full disk leaves the previous state, never half a batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .atomic import TMP_PREFIX, remove_stale_temporaries
from .vocabulary import CONFIG_FILE, DEFAULT_SITE, SCENARIOS, allowed_groups, default_group, validate as validate_scenario_group
from .errors import ItkmError, ReadOnlyWorkspaceError, SchemaTooNewError, WorkspaceError
from .lock import LOCK_NAME, LockInfo, WriterLock, read_lock_info
from .progress import Reporter
from .records import (
    IMAGE_STATUSES,
    ROUND_STATUSES,
    Camera,
    IdentityTable,
    ImageRecord,
    ImageTable,
    Reject,
    RoundInfo,
    Source,
)

__all__ = [
    "Workspace",
    "SCHEMA_VERSION",
    "MIGRATIONS",
    "DB_NAME",
    "FOLDERS",
    "ImageRecord",
    "ImageTable",
    "Camera",
    "Source",
    "Reject",
    "RoundInfo",
    "IdentityTable",
]

DB_NAME = "itkm.sqlite"
#: Sub-folders every workspace has (created on create, re-created on writer open if deleted).
FOLDERS: tuple[str, ...] = ("checkpoints", "features", "rounds", "cache", "exports")

#: The schema this code writes.  Bump it together with a new entry in MIGRATIONS.
SCHEMA_VERSION = 3

#: ``MIGRATIONS[n](con)`` upgrades a version-``n`` database to ``n + 1``.  Each runs inside its own
#: ``BEGIN IMMEDIATE`` transaction together with the ``schema_version`` bump, after the database was
#: copied to ``itkm.sqlite.bak-v<n>``.  A migration that rebuilds a table must not rely on
#: ``foreign_keys`` being off (it is on); use ``ALTER TABLE ... ADD/RENAME/DROP COLUMN`` where it can.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}

#: Default site of a source: everything ingested is one site unless the operator says otherwise.


def _migrate_1_to_2(con: sqlite3.Connection) -> None:
    """Version 2: a site per source (the same person can appear in every camera of one site)."""
    if "site" not in {row[1] for row in con.execute("PRAGMA table_info(sources)")}:
        con.execute(f"ALTER TABLE sources ADD COLUMN site TEXT NOT NULL DEFAULT '{DEFAULT_SITE}'")


MIGRATIONS[1] = _migrate_1_to_2

# -- operator decisions (schema v3; the logic lives in itkm_engine/constraints.py) -----------------
#: ``decisions``: one row per must-link / cannot-link between two images (``image_a < image_b``),
#: with when and who; ``batch`` groups the rows one action wrote (a merge, a split, a selection) so
#: undo/redo treats them as one step; ``state`` 0 active, 1 undone (redoable), 2 undone and then
#: superseded by a newer decision (kept for the record, never redone).  ``identity_names``: a name
#: and note for an identity, anchored to the image ids it held when named (identity numbers change
#: every round; images do not), on the same undo stack.
_DECISION_TABLES = """
CREATE TABLE IF NOT EXISTS decisions (
    id      INTEGER PRIMARY KEY,
    batch   INTEGER NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('must', 'cannot')),
    image_a INTEGER NOT NULL,
    image_b INTEGER NOT NULL,
    at      REAL NOT NULL,
    user    TEXT NOT NULL DEFAULT '',
    state   INTEGER NOT NULL DEFAULT 0,
    CHECK (image_a < image_b)
);
CREATE INDEX IF NOT EXISTS decisions_batch ON decisions (batch);
CREATE INDEX IF NOT EXISTS decisions_pair ON decisions (image_a, image_b);
CREATE TABLE IF NOT EXISTS identity_names (
    id      INTEGER PRIMARY KEY,
    batch   INTEGER NOT NULL,
    anchors TEXT NOT NULL,
    name    TEXT NOT NULL DEFAULT '',
    note    TEXT NOT NULL DEFAULT '',
    at      REAL NOT NULL,
    user    TEXT NOT NULL DEFAULT '',
    state   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS identity_names_batch ON identity_names (batch);
"""


def _migrate_2_to_3(con: sqlite3.Connection) -> None:
    """Version 3: the operator's decisions (must/cannot-links, identity names) with undo/redo."""
    for stmt in _statements(_DECISION_TABLES):
        con.execute(stmt)


MIGRATIONS[2] = _migrate_2_to_3

_BUSY_TIMEOUT_MS = 10_000
#: images() reads this many rows per aggregated SELECT (keeps each text value far below SQLite's
#: 1 GB string limit whatever the path lengths).
_IMAGE_CHUNK = 500_000
_NULL_TS = -9223372036854775807  # a NULL timestamp in the integer-microseconds column
_STATUS_NAMES = np.array(["ok", "missing", "unreadable"], dtype=object)  # status codes 0, 1, 2
_SCENARIO_SET = frozenset(SCENARIOS)

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT
) WITHOUT ROWID;

CREATE TABLE sources (
    id       INTEGER PRIMARY KEY,
    root     TEXT NOT NULL UNIQUE,          -- absolute folder
    layout   TEXT NOT NULL,
    added_at REAL NOT NULL,
    site     TEXT NOT NULL DEFAULT 'default'  -- people are shared only within a site (Stage II separation)
);

CREATE TABLE cameras (
    id               INTEGER PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,  -- workspace-wide camera name
    source_id        INTEGER NOT NULL REFERENCES sources(id),   -- where it was first seen
    scenario         TEXT NOT NULL,         -- what training uses
    grp              TEXT NOT NULL,
    guessed_scenario TEXT,                  -- what ingestion guessed
    guessed_group    TEXT,
    flag             TEXT,                  -- e.g. 'mixed'
    user_set         INTEGER NOT NULL DEFAULT 0,  -- 1: scenario/grp set by the operator, keep them
    median_height    REAL,
    sample_path      TEXT,
    added_at         REAL NOT NULL
);

CREATE TABLE images (
    id         INTEGER PRIMARY KEY,
    source_id  INTEGER NOT NULL REFERENCES sources(id),
    camera_id  INTEGER NOT NULL REFERENCES cameras(id),
    relpath    TEXT NOT NULL,               -- '/'-separated, relative to the source root
    width      INTEGER NOT NULL,
    height     INTEGER NOT NULL,
    timestamp  REAL,
    mtime      REAL,
    size_bytes INTEGER,
    person_id  INTEGER NOT NULL DEFAULT -1,
    status     TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'missing', 'unreadable')),
    reason     TEXT NOT NULL DEFAULT '',
    added_at   REAL NOT NULL,
    UNIQUE (source_id, relpath)
);
-- cameras(): per-camera counts by a covering index scan, images(camera=...): one camera
CREATE INDEX images_camera_status ON images (camera_id, status);

CREATE TABLE rejects (
    id        INTEGER PRIMARY KEY,
    source_id INTEGER NOT NULL REFERENCES sources(id),
    relpath   TEXT NOT NULL,
    camera_id INTEGER REFERENCES cameras(id),
    reason    TEXT NOT NULL,
    seen_at   REAL NOT NULL,
    UNIQUE (source_id, relpath)
);
CREATE INDEX rejects_camera ON rejects (camera_id);

CREATE TABLE rounds (
    number          INTEGER PRIMARY KEY,
    status          TEXT NOT NULL CHECK (status IN ('running', 'done', 'cancelled', 'failed')),
    stage           TEXT,
    epoch           INTEGER,
    checkpoint      TEXT,                   -- relative to the workspace when inside it
    base_checkpoint TEXT,
    config_json     TEXT NOT NULL,
    started         REAL NOT NULL,
    finished        REAL
);

CREATE TABLE epochs (
    round       INTEGER NOT NULL REFERENCES rounds(number) ON DELETE CASCADE,
    stage       TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    values_json TEXT NOT NULL,
    finished    REAL NOT NULL,
    PRIMARY KEY (round, stage, epoch)
);

CREATE TABLE assignments (
    round    INTEGER NOT NULL REFERENCES rounds(number) ON DELETE CASCADE,
    image_id INTEGER NOT NULL REFERENCES images(id),
    label    INTEGER NOT NULL,
    PRIMARY KEY (round, image_id)
) WITHOUT ROWID;

CREATE TABLE metrics (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL,
    round       INTEGER REFERENCES rounds(number) ON DELETE SET NULL,
    checkpoint  TEXT,
    values_json TEXT NOT NULL,
    created     REAL NOT NULL
);
CREATE INDEX metrics_key ON metrics (key);

CREATE TABLE identities (
    checkpoint TEXT NOT NULL,
    image_id   INTEGER NOT NULL REFERENCES images(id),
    identity   INTEGER NOT NULL,
    confidence REAL NOT NULL,
    PRIMARY KEY (checkpoint, image_id)
);
""" + _DECISION_TABLES

_UPSERT_IMAGE = """
INSERT INTO images (source_id, camera_id, relpath, width, height, timestamp, mtime, size_bytes,
                    person_id, status, reason, added_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'ok', '', ?)
ON CONFLICT (source_id, relpath) DO UPDATE SET
    camera_id  = excluded.camera_id,
    width      = excluded.width,
    height     = excluded.height,
    timestamp  = excluded.timestamp,
    mtime      = excluded.mtime,
    size_bytes = excluded.size_bytes,
    person_id  = excluded.person_id,
    -- back to 'ok' when it reappeared, or when the file changed (a fixed 'unreadable' file)
    status = CASE WHEN images.status = 'missing'
                    OR images.mtime IS NOT excluded.mtime
                    OR images.size_bytes IS NOT excluded.size_bytes
                  THEN 'ok' ELSE images.status END,
    reason = CASE WHEN images.status = 'missing'
                    OR images.mtime IS NOT excluded.mtime
                    OR images.size_bytes IS NOT excluded.size_bytes
                  THEN '' ELSE images.reason END
WHERE images.status = 'missing'
   OR images.camera_id  IS NOT excluded.camera_id
   OR images.width      IS NOT excluded.width
   OR images.height     IS NOT excluded.height
   OR images.timestamp  IS NOT excluded.timestamp
   OR images.mtime      IS NOT excluded.mtime
   OR images.size_bytes IS NOT excluded.size_bytes
   OR images.person_id  IS NOT excluded.person_id
"""


class WorkspaceOlderError(WorkspaceError):
    """A read-only open of a workspace with an older schema (a writer upgrades it)."""


def _check_site(site: Any) -> str:
    if not isinstance(site, str) or not site.strip():
        raise ItkmError(f"a site needs a non-empty name, got {site!r}")
    if len(site) > 200 or any(ord(ch) < 32 for ch in site):
        raise ItkmError("a site name must be one line of at most 200 characters")
    return site.strip()


def _json_default(obj: Any) -> Any:
    """Let values dicts carry numpy scalars/arrays and tensors' ``.item()`` results."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(values: dict) -> str:
    if not isinstance(values, dict):
        raise TypeError(f"values must be a dict, got {type(values).__name__}")
    # NaN/inf (a diverged loss) are kept: Python's json writes and reads them back.
    return json.dumps(values, default=_json_default, sort_keys=True)


def _statements(script: str) -> Iterator[str]:
    """Split a script into statements (``executescript`` would COMMIT our open transaction)."""
    buf: list[str] = []
    for line in script.splitlines(keepends=True):
        buf.append(line)
        text = "".join(buf)
        if sqlite3.complete_statement(text):
            yield text
            buf = []
    if "".join(buf).strip():
        raise ValueError("incomplete SQL statement at the end of the schema")


def _parse_ints(text: str | None, n: int) -> np.ndarray:
    """A ``group_concat`` of integers -> int64 array of length ``n`` (parsed in C by numpy)."""
    if text is None:
        return np.zeros(0, np.int64)
    arr = np.fromstring(text, dtype=np.int64, sep=",")
    if len(arr) != n:  # a value numpy could not parse: fall back to Python, which raises on garbage
        arr = np.array([int(v) for v in text.split(",")], dtype=np.int64)
    return arr


def _error_name(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name:
        return name
    text = str(exc).lower()
    if "disk is full" in text or "database or disk is full" in text:
        return "SQLITE_FULL"
    if "readonly" in text or "read-only" in text:
        return "SQLITE_READONLY"
    if "locked" in text or "busy" in text:
        return "SQLITE_BUSY"
    if "not a database" in text or "malformed" in text:
        return "SQLITE_CORRUPT"
    return ""


class Workspace:
    """A project folder: SQLite database + arrays on disk + writer lock.  See the module docstring.

    Open with :meth:`open` (``create=True`` makes a new one).  Use as a context manager or call
    :meth:`close`; the writer lock is also released at interpreter exit.
    """

    SCHEMA_VERSION: int = SCHEMA_VERSION

    # -- opening / closing -------------------------------------------------------------------
    def __init__(
        self,
        path: str | Path,
        *,
        readonly: bool = False,
        create: bool = False,
        reporter: Reporter | None = None,
    ) -> None:
        self.path: Path = Path(path).expanduser().absolute()
        self.readonly: bool = bool(readonly)
        self._reporter = reporter or Reporter()
        self._rlock = threading.RLock()
        self._tx_depth = 0
        self._con: sqlite3.Connection | None = None
        self._lock: WriterLock | None = None
        self._pid = os.getpid()  # a connection must not be used across fork()
        if readonly and create:
            raise WorkspaceError("a workspace cannot be created read-only; open it with readonly=False to create it")
        try:
            self._open(create)
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        readonly: bool = False,
        create: bool = False,
        reporter: Reporter | None = None,
    ) -> "Workspace":
        """Open the workspace at ``path``.

        ``create=True`` makes it (and its folders) when ``path`` is missing or empty, and simply
        opens it when it already is a workspace.  A writer (``readonly=False``) takes the writer
        lock, migrates an older schema (after a backup) and clears stale temporaries.  Raises
        :class:`WorkspaceError` for a folder that is not a workspace, :class:`WorkspaceLockedError`
        when another live process writes it, :class:`SchemaTooNewError` for a newer schema.
        """
        if readonly and not create:
            try:
                return cls(path, readonly=True, reporter=reporter)
            except WorkspaceOlderError:
                # A reader of a workspace an older ITKM Studio wrote: upgrade it once (a writer
                # migrates after a backup), then read.  Where it cannot be written (a live writer,
                # a read-only place) the reason is raised instead.
                cls(path, reporter=reporter).close()
        return cls(path, readonly=readonly, create=create, reporter=reporter)

    @classmethod
    def create(cls, path: str | Path, *, reporter: Reporter | None = None) -> "Workspace":
        """Shorthand for ``open(path, create=True)``."""
        return cls(path, create=True, reporter=reporter)

    @staticmethod
    def is_workspace(path: str | Path) -> bool:
        """Whether ``path`` looks like a workspace folder (cheap; opens nothing)."""
        return (Path(path) / DB_NAME).is_file()

    def _open(self, create: bool) -> None:
        path, db = self.path, self.path / DB_NAME
        if create:
            if path.exists() and not path.is_dir():
                raise WorkspaceError(f"cannot create a workspace at {path}: it is a file, not a folder")
            if not db.exists() and path.is_dir():
                leftovers = [p.name for p in path.iterdir() if p.name not in (*FOLDERS, LOCK_NAME, CONFIG_FILE)]
                if leftovers:
                    raise WorkspaceError(
                        f"cannot create a workspace in {path}: the folder is not empty "
                        f"({', '.join(sorted(leftovers)[:5])}{'...' if len(leftovers) > 5 else ''}); "
                        "choose a new or empty folder"
                    )
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise WorkspaceError(f"cannot create the workspace folder {path}: {exc.strerror or exc}") from exc
        else:
            if not path.exists():
                raise WorkspaceError(f"no workspace at {path}: the folder does not exist")
            if not path.is_dir():
                raise WorkspaceError(f"{path} is a file, not a workspace folder")
            if not db.is_file():
                raise WorkspaceError(
                    f"{path} is not an ITKM workspace (it has no {DB_NAME}); "
                    "create one with Workspace.open(path, create=True) / `itkm ingest WORKSPACE FOLDER`"
                )

        if self.readonly:
            self._con = self._connect_readonly(db)
            self._check_version_readonly()
            return

        if not os.access(path, os.W_OK):
            raise WorkspaceError(
                f"cannot write in the workspace folder {path} (read-only disk or no permission); "
                "open it read-only (Workspace.open(..., readonly=True); itkm status / query / cameras without --set read it without a lock)"
            )
        self._lock = WriterLock(path / LOCK_NAME, on_message=self._reporter.warning).acquire()
        new = not db.exists() or db.stat().st_size == 0
        self._con = self._connect_writer(db)
        if not new and self._is_empty_database():
            new = True  # a create that crashed before its first commit: start it again
        if new:
            self._create_schema()
        else:
            self._check_version_and_migrate()
        for name in FOLDERS:
            try:
                (path / name).mkdir(exist_ok=True)
            except OSError as exc:
                raise WorkspaceError(f"cannot create {path / name}: {exc.strerror or exc}") from exc
        n = remove_stale_temporaries(path)
        if n:
            self._reporter.log(f"removed {n} unfinished temporary file(s) left by an interrupted write")

    def _is_empty_database(self) -> bool:
        try:
            return self._conn().execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        except sqlite3.Error:
            return False  # unreadable: let the version check report it

    def _connect_writer(self, db: Path) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(
                str(db), timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            # WAL: readers (the app's read-only views, a second process) never block the writer and
            # see a consistent snapshot.  synchronous=NORMAL: in WAL mode a commit is durable
            # against application crashes and the database can never be corrupted; only the last
            # transactions before a *power loss* may be lost, which a rerun redoes (every write is
            # idempotent), for a large gain on the many small commits of training logs.
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                self._reporter.warning(f"SQLite could not use WAL mode here (got {mode}); readers may block the writer")
            self._pragmas(con)
            return con
        except sqlite3.Error as exc:
            raise (self._map_error(exc, "opening the database") or WorkspaceError(f"cannot open {db}: {exc}")) from exc

    def _connect_readonly(self, db: Path) -> sqlite3.Connection:
        uri = db.as_uri() + "?mode=ro"
        con = None
        try:
            con = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError as first:
            if con is not None:
                con.close()
            # A WAL database on a read-only medium without its -shm file cannot be opened with
            # mode=ro; nothing can be writing it there, so reading it as immutable is safe.  Only
            # then: immutable reads beside a live writer could see a torn state.
            if os.access(db.parent, os.W_OK) or not _error_name(first).startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_IOERR")):
                raise (self._map_error(first, "opening the database read-only")
                       or WorkspaceError(f"cannot open {db} read-only: {first}")) from first
            try:
                con = sqlite3.connect(
                    db.as_uri() + "?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False
                )
                con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error as exc:
                raise (self._map_error(exc, "opening the database read-only") or WorkspaceError(f"cannot open {db}: {exc}")) from exc
        except sqlite3.Error as exc:
            raise (self._map_error(exc, "opening the database read-only") or WorkspaceError(f"cannot open {db}: {exc}")) from exc
        self._pragmas(con)
        return con

    @staticmethod
    def _pragmas(con: sqlite3.Connection) -> None:
        con.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute("PRAGMA temp_store=MEMORY")
        con.execute("PRAGMA cache_size=-65536")  # 64 MiB: the images table of 1M rows stays hot

    def close(self) -> None:
        """Close the database and release the writer lock.  Idempotent."""
        if os.getpid() != self._pid:
            # A forked child (e.g. a data-loader worker) inherited this object: the connection
            # and the lock belong to the parent; touching them here could disturb the parent.
            self._con = None
            self._lock = None
            return
        with self._rlock:
            con, self._con = self._con, None
            if con is not None:
                with contextlib.suppress(sqlite3.Error):
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                with contextlib.suppress(sqlite3.Error):
                    if not self.readonly:
                        con.execute("PRAGMA optimize")
                with contextlib.suppress(sqlite3.Error):
                    con.close()
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.release()

    @property
    def closed(self) -> bool:
        return self._con is None

    @contextlib.contextmanager
    def lend_writer(self) -> Iterator["Workspace"]:
        """Hand the writer lock to another process (a child job) for the duration of the block.

        Inside the block this object is read-only (``readonly`` is ``True``; reads see the other
        process's commits); on exit it takes the writer lock back -- over a stale lock when the
        child was killed -- and is writable again.  A read-only workspace has nothing to lend
        and raises :class:`ReadOnlyWorkspaceError`.  See ``docs/adr/0008-jobs-in-a-child-process.md``.
        """
        self._check_writable()
        with self._rlock:
            db = self.path / DB_NAME
            self.close()
            self.readonly = True
            try:
                self._con = self._connect_readonly(db)
            except BaseException:
                self._take_writer_back(db)
                raise
        try:
            yield self
        finally:
            with self._rlock:
                self._take_writer_back(db)

    def _take_writer_back(self, db: Path) -> None:
        self.close()
        try:
            self._lock = WriterLock(self.path / LOCK_NAME, on_message=self._reporter.warning).acquire()
        except BaseException:  # someone else writes it now: stay a reader rather than closed
            self._con = self._connect_readonly(db)
            raise
        self.readonly = False
        self._con = self._connect_writer(db)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "closed" if self.closed else ("read-only" if self.readonly else "writer")
        return f"<Workspace {self.path} ({mode})>"

    # -- folders -----------------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.path / DB_NAME

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def features_dir(self) -> Path:
        return self.path / "features"

    @property
    def rounds_dir(self) -> Path:
        return self.path / "rounds"

    @property
    def cache_dir(self) -> Path:
        return self.path / "cache"

    @property
    def exports_dir(self) -> Path:
        return self.path / "exports"

    def checkpoint_path(self, round: int) -> Path:
        """Where round ``round``'s checkpoint goes: ``checkpoints/round_0001.pt``."""
        return self.checkpoints_dir / f"round_{int(round):04d}.pt"

    def round_dir(self, round: int) -> Path:
        """Per-round arrays (text features, pseudo labels): ``rounds/round_0001/``."""
        return self.rounds_dir / f"round_{int(round):04d}"

    def writer_info(self) -> LockInfo | None:
        """Who holds the writer lock now (a :class:`itkm_engine.lock.LockInfo`) or ``None``."""
        return read_lock_info(self.lock_path)

    # -- connection plumbing -----------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._con is None:
            raise WorkspaceError(f"the workspace {self.path} is closed")
        if os.getpid() != self._pid:
            raise WorkspaceError(
                "a Workspace cannot be used in a forked child process; open one there "
                "(Workspace.open(path, readonly=True)) instead"
            )
        return self._con

    def _check_writable(self) -> None:
        if self.readonly:
            raise ReadOnlyWorkspaceError(
                f"the workspace {self.path} is open read-only; close it and open it without readonly=True "
                "(only one process can write a workspace at a time)"
            )

    def _map_error(self, exc: sqlite3.Error, action: str) -> ItkmError | None:
        """A user-facing error for a SQLite failure that is about the disk/file, else ``None``."""
        name = _error_name(exc)
        if name.startswith("SQLITE_FULL"):
            return WorkspaceError(
                f"disk full while {action} in {self.path}: the change was rolled back and the workspace is "
                "unchanged; free some disk space and retry"
            )
        if name.startswith("SQLITE_READONLY"):
            return ReadOnlyWorkspaceError(
                f"cannot write the workspace {self.path} while {action}: the database is read-only "
                f"({exc}); open it read-only or fix the folder's permissions"
            )
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return WorkspaceError(
                f"the workspace database {self.path / DB_NAME} stayed busy while {action} ({exc}); "
                "another program is using it, retry when it is done"
            )
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            return WorkspaceError(
                f"the workspace database {self.path / DB_NAME} is damaged or not a database ({exc}); "
                "restore it from a backup (itkm.sqlite.bak-*) or create a new workspace"
            )
        if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
            # On a full disk SQLite often reports an I/O error (growing the WAL or its -shm index)
            # rather than SQLITE_FULL; say what the user must fix.
            full = ""
            with contextlib.suppress(OSError):
                if shutil.disk_usage(self.path).free < (1 << 20):
                    full = " -- the disk is full; free some disk space and retry"
            return WorkspaceError(f"cannot access the workspace database {self.path / DB_NAME} while {action}: {exc}{full}")
        if isinstance(exc, sqlite3.IntegrityError):
            return WorkspaceError(f"refused while {action}: it would break the workspace's consistency ({exc})")
        return None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``with ws.transaction() as con:`` -- one atomic write (``BEGIN IMMEDIATE``/``COMMIT``).

        Rolled back on any exception; SQLite disk/permission failures surface as
        :class:`WorkspaceError`.  Nested use (same thread) becomes a SAVEPOINT.  Holds the
        workspace's RLock, so other threads' calls wait until it ends.
        """
        self._check_writable()
        with self._rlock:
            con = self._conn()
            if self._tx_depth > 0:
                name = f"itkm_sp{self._tx_depth}"
                con.execute(f"SAVEPOINT {name}")
                self._tx_depth += 1
                try:
                    yield con
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        con.execute(f"ROLLBACK TO {name}")
                        con.execute(f"RELEASE {name}")
                    raise
                else:
                    con.execute(f"RELEASE {name}")
                finally:
                    self._tx_depth -= 1
                return
            try:
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                mapped = self._map_error(exc, "starting a write")
                if mapped is None:
                    raise
                raise mapped from exc
            self._tx_depth = 1
            try:
                yield con
                con.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    mapped = self._map_error(exc, "writing")
                    if mapped is not None:
                        raise mapped from exc
                raise
            finally:
                self._tx_depth = 0

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """Several SELECTs that must see one consistent state (a read transaction)."""
        with self._rlock:
            con = self._conn()
            if con.in_transaction:
                yield con
                return
            try:
                con.execute("BEGIN")
                try:
                    yield con
                finally:
                    with contextlib.suppress(sqlite3.Error):
                        if con.in_transaction:
                            con.execute("COMMIT")
            except sqlite3.Error as exc:
                mapped = self._map_error(exc, "reading")
                if mapped is None:
                    raise
                raise mapped from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._snapshot() as con:
            return con.execute(sql, params).fetchall()

    # -- schema ------------------------------------------------------------------------------
    def _create_schema(self) -> None:
        with self.transaction() as con:
            for stmt in _statements(_SCHEMA):
                con.execute(stmt)
            con.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("schema_version", str(self.SCHEMA_VERSION)), ("created_at", repr(time.time()))],
            )

    def schema_version(self) -> int:
        return self._read_version()

    def _read_version(self) -> int:
        try:
            rows = self._conn().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc):
                raise WorkspaceError(
                    f"{self.path / DB_NAME} is not an ITKM workspace database (it has no meta table)"
                ) from exc
            mapped = self._map_error(exc, "reading the schema version")
            raise (mapped or WorkspaceError(f"cannot read {self.path / DB_NAME}: {exc}")) from exc
        if not rows:
            raise WorkspaceError(f"{self.path / DB_NAME} is not an ITKM workspace database (no schema_version)")
        try:
            return int(rows[0][0])
        except (TypeError, ValueError) as exc:
            raise WorkspaceError(f"{self.path / DB_NAME} has a damaged schema_version {rows[0][0]!r}") from exc

    def _too_new(self, version: int) -> SchemaTooNewError:
        return SchemaTooNewError(
            f"the workspace {self.path} was written by a newer ITKM Studio (schema version {version}; "
            f"this version understands up to {self.SCHEMA_VERSION}); update ITKM Studio to open it"
        )

    def _check_version_readonly(self) -> None:
        version = self._read_version()
        if version > self.SCHEMA_VERSION:
            raise self._too_new(version)
        if version < self.SCHEMA_VERSION:
            raise WorkspaceOlderError(
                f"the workspace {self.path} has an older format (schema version {version}, current "
                f"{self.SCHEMA_VERSION}); open it once for writing to upgrade it (a backup is kept), then read-only"
            )

    def _check_version_and_migrate(self) -> None:
        version = self._read_version()
        if version > self.SCHEMA_VERSION:
            raise self._too_new(version)
        if version == self.SCHEMA_VERSION:
            return
        missing = [v for v in range(version, self.SCHEMA_VERSION) if v not in MIGRATIONS]
        if missing:
            raise WorkspaceError(
                f"the workspace {self.path} has schema version {version} and this ITKM Studio cannot upgrade it "
                f"(no migration from version {missing[0]}); use the version that wrote it"
            )
        backup = self._backup(version)
        self._reporter.log(f"upgrading workspace schema from version {version} to {self.SCHEMA_VERSION} (backup: {backup.name})")
        for v in range(version, self.SCHEMA_VERSION):
            try:
                with self.transaction() as con:
                    MIGRATIONS[v](con)
                    problems = con.execute("PRAGMA foreign_key_check").fetchall()
                    if problems:
                        raise WorkspaceError(
                            f"upgrading the workspace from schema version {v} broke {len(problems)} references; "
                            f"nothing was changed (backup kept at {backup})"
                        )
                    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(v + 1),))
            except ItkmError:
                raise
            except sqlite3.Error as exc:
                raise WorkspaceError(
                    f"upgrading the workspace from schema version {v} failed ({exc}); it was left at version {v} "
                    f"and a backup is at {backup}"
                ) from exc

    def _backup(self, version: int) -> Path:
        """Copy the database (WAL included, consistent) to ``itkm.sqlite.bak-v<version>``."""
        target = self.path / f"{DB_NAME}.bak-v{version}"
        if target.exists():
            return target  # a previous upgrade attempt already saved this version
        tmp = self.path / f"{TMP_PREFIX}{target.name}"
        try:
            dst = sqlite3.connect(str(tmp))
            try:
                with self._rlock:
                    self._conn().backup(dst)
            finally:
                dst.close()
            os.replace(tmp, target)
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            reason = "disk full" if isinstance(exc, sqlite3.Error) and _error_name(exc).startswith("SQLITE_FULL") else str(exc)
            raise WorkspaceError(
                f"cannot back up the workspace before upgrading it ({reason}); nothing was changed"
            ) from exc
        return target

    # -- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value: Any) -> None:
        """Store ``str(value)`` under ``key`` (``schema_version`` is managed by the workspace)."""
        if key == "schema_version":
            raise ValueError("schema_version is managed by the workspace's migrations")
        with self.transaction() as con:
            con.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, None if value is None else str(value)),
            )

    # -- sources -----------------------------------------------------------------------------
    def add_source(self, root: str | Path, layout: str, *, site: str | None = None) -> int:
        """Register an ingested root folder; idempotent on the (absolute) root, updates its layout.

        ``site``: where the source was filmed (people are shared only within one site); ``None``
        keeps an existing source's site and gives a new one :data:`DEFAULT_SITE`.
        """
        root_s = str(Path(root).expanduser().resolve())
        site_s = None if site is None else _check_site(site)
        with self.transaction() as con:
            con.execute(
                "INSERT INTO sources (root, layout, added_at, site) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (root) DO UPDATE SET layout = excluded.layout, "
                "site = CASE WHEN ? IS NULL THEN sources.site ELSE excluded.site END",
                (root_s, str(layout), time.time(), site_s or DEFAULT_SITE, site_s),
            )
            return int(con.execute("SELECT id FROM sources WHERE root = ?", (root_s,)).fetchone()[0])

    def set_source_root(self, source_id: int, root: str | Path) -> None:
        """Point a source at its new location after the user moved the dataset (paths are relative)."""
        root_s = str(Path(root).expanduser().resolve())
        with self.transaction() as con:
            other = con.execute("SELECT id FROM sources WHERE root = ? AND id != ?", (root_s, int(source_id))).fetchone()
            if other:
                raise ItkmError(f"{root_s} is already source {other[0]} of this workspace")
            if con.execute("UPDATE sources SET root = ? WHERE id = ?", (root_s, int(source_id))).rowcount == 0:
                raise ItkmError(f"no source with id {source_id} in this workspace")

    def set_source_site(self, source_id: int, site: str) -> None:
        """The operator names the site a source was filmed at (Stage II separates sites only)."""
        site_s = _check_site(site)
        with self.transaction() as con:
            if con.execute("UPDATE sources SET site = ? WHERE id = ?", (site_s, int(source_id))).rowcount == 0:
                raise ItkmError(f"no source with id {source_id} in this workspace")

    def sources(self) -> list[Source]:
        return [
            Source(id=int(i), root=Path(r), layout=l, added_at=float(a), site=st)
            for i, r, l, a, st in self._query("SELECT id, root, layout, added_at, site FROM sources ORDER BY id")
        ]

    def camera_sites(self) -> dict[str, str]:
        """Camera name -> site of the source the camera was first seen in."""
        return dict(self._query("SELECT c.name, s.site FROM cameras c JOIN sources s ON s.id = c.source_id"))

    # -- cameras -----------------------------------------------------------------------------
    def upsert_camera(
        self,
        name: str,
        source_id: int,
        *,
        scenario: str,
        group: str,
        guessed_scenario: str | None,
        guessed_group: str | None,
        flag: str | None = None,
        median_height: float | None = None,
        sample_path: str | None = None,
    ) -> int:
        """Add a camera or refresh its guesses; returns its id.

        Camera names are workspace-wide.  When the operator set the scenario/group
        (:meth:`set_camera`), they are kept and only the guesses, flag and statistics are updated.
        ``source_id`` of an existing camera stays the source it was first seen in.
        """
        if not isinstance(name, str) or not name:
            raise ItkmError(f"a camera needs a non-empty name, got {name!r}")
        validate_scenario_group(scenario, group)
        if guessed_scenario is not None and guessed_group is not None:
            validate_scenario_group(guessed_scenario, guessed_group)
        mh = None if median_height is None or not math.isfinite(float(median_height)) else float(median_height)
        with self.transaction() as con:
            self._require_source(con, source_id)
            con.execute(
                """
                INSERT INTO cameras (name, source_id, scenario, grp, guessed_scenario, guessed_group, flag,
                                     user_set, median_height, sample_path, added_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET
                    scenario = CASE WHEN cameras.user_set THEN cameras.scenario ELSE excluded.scenario END,
                    grp      = CASE WHEN cameras.user_set THEN cameras.grp ELSE excluded.grp END,
                    guessed_scenario = excluded.guessed_scenario,
                    guessed_group    = excluded.guessed_group,
                    flag             = excluded.flag,
                    median_height    = COALESCE(excluded.median_height, cameras.median_height),
                    sample_path      = COALESCE(excluded.sample_path, cameras.sample_path)
                """,
                (name, int(source_id), scenario, group, guessed_scenario, guessed_group, flag, mh,
                 None if sample_path is None else str(sample_path), time.time()),
            )
            return int(con.execute("SELECT id FROM cameras WHERE name = ?", (name,)).fetchone()[0])

    def set_camera(self, name: str, *, scenario: str | None = None, group: str | None = None) -> None:
        """The operator's correction of a camera's scenario and/or group; kept over re-ingestion.

        Changing only the scenario keeps the group when it is valid there, else takes the
        scenario's default group.
        """
        with self.transaction() as con:
            row = con.execute("SELECT scenario, grp FROM cameras WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise ItkmError(f"no camera named {name!r} in this workspace")
            cur_scenario, cur_group = row
            new_scenario = cur_scenario if scenario is None else scenario
            if group is None:
                new_group = cur_group if new_scenario in _SCENARIO_SET and cur_group in allowed_groups(new_scenario) else (
                    default_group(new_scenario) if new_scenario in _SCENARIO_SET else cur_group
                )
            else:
                new_group = group
            validate_scenario_group(new_scenario, new_group)
            con.execute(
                "UPDATE cameras SET scenario = ?, grp = ?, user_set = 1 WHERE name = ?", (new_scenario, new_group, name)
            )

    def reset_camera(self, name: str) -> None:
        """Drop the operator's setting: back to the guessed scenario/group (where there is a guess)."""
        with self.transaction() as con:
            n = con.execute(
                "UPDATE cameras SET user_set = 0, scenario = COALESCE(guessed_scenario, scenario), "
                "grp = CASE WHEN guessed_scenario IS NOT NULL THEN COALESCE(guessed_group, grp) ELSE grp END "
                "WHERE name = ?",
                (name,),
            ).rowcount
            if n == 0:
                raise ItkmError(f"no camera named {name!r} in this workspace")

    def cameras(self) -> list[Camera]:
        """All cameras (in the order they were added) with their image counts.

        The counts come from one GROUP BY over the ``(camera_id, status)`` index: a covering
        index scan, ~0.1 s per million images, and never out of date.
        """
        with self._snapshot() as con:
            cams = con.execute(
                "SELECT id, name, source_id, scenario, grp, guessed_scenario, guessed_group, flag, user_set, "
                "median_height, sample_path FROM cameras ORDER BY id"
            ).fetchall()
            counts: dict[tuple[int, str], int] = {
                (c, s): n
                for c, s, n in con.execute(
                    "SELECT camera_id, status, COUNT(*) FROM images INDEXED BY images_camera_status "
                    "GROUP BY camera_id, status"
                )
            }
            rejected = dict(
                con.execute(
                    "SELECT camera_id, COUNT(*) FROM rejects WHERE camera_id IS NOT NULL GROUP BY camera_id"
                ).fetchall()
            )
        return [
            Camera(
                id=int(cid), name=name, source_id=int(sid), scenario=sc, group=gr,
                guessed_scenario=gs, guessed_group=gg, flag=flag, user_set=bool(us),
                n_images=counts.get((cid, "ok"), 0), n_missing=counts.get((cid, "missing"), 0),
                n_rejected=rejected.get(cid, 0), median_height=mh, sample_path=sp,
                n_unreadable=counts.get((cid, "unreadable"), 0),
            )
            for cid, name, sid, sc, gr, gs, gg, flag, us, mh, sp in cams
        ]

    def _camera_ids(self, con: sqlite3.Connection, names: Iterable[str], source_id: int) -> dict[str, int]:
        """Name -> id, creating cameras that do not exist yet (cross-camera/all until guessed)."""
        known = dict(con.execute("SELECT name, id FROM cameras").fetchall())
        new = sorted({n for n in names if n not in known})
        if new:
            for n in new:
                if not isinstance(n, str) or not n:
                    raise ItkmError(f"an image record has an empty camera name ({n!r})")
            now = time.time()
            con.executemany(
                "INSERT INTO cameras (name, source_id, scenario, grp, user_set, added_at) "
                "VALUES (?, ?, 'cross-camera', 'all', 0, ?)",
                [(n, int(source_id), now) for n in new],
            )
            known = dict(con.execute("SELECT name, id FROM cameras").fetchall())
        return known

    @staticmethod
    def _require_source(con: sqlite3.Connection, source_id: int) -> None:
        if con.execute("SELECT 1 FROM sources WHERE id = ?", (int(source_id),)).fetchone() is None:
            raise ItkmError(f"no source with id {source_id} in this workspace; add_source() it first")

    # -- images ------------------------------------------------------------------------------
    def upsert_images(self, source_id: int, records: Sequence[ImageRecord]) -> tuple[int, int]:
        """Add new images and refresh known ones (same ``relpath``) in one transaction.

        Idempotent: re-ingesting unchanged files changes nothing.  A known image whose size,
        mtime, dimensions, camera, timestamp or person id changed is updated; a ``missing`` one
        that reappeared goes back to ``ok``; an ``unreadable`` one goes back to ``ok`` only when
        its file changed.  Cameras named by the records are created when unknown
        (``cross-camera``/``all`` until :meth:`upsert_camera` gives the guess).  A file that was
        rejected before and now ingests fine leaves the rejects list.  Returns ``(added, updated)``.
        """
        if not records:
            return (0, 0)
        now = time.time()
        with self.transaction() as con:
            self._require_source(con, source_id)
            cam = self._camera_ids(con, {r.camera for r in records}, source_id)
            sid = int(source_id)
            bad = next((r.relpath for r in records if not r.relpath or r.relpath[0] in "/\\" or r.relpath[1:2] == ":"
                        or "\0" in r.relpath), None)
            if bad is not None:
                raise ItkmError(f"image path {bad!r} must be relative to its source folder (and contain no NUL)")
            # One comprehension (this loop is most of the Python cost of a 100k batch).  NaN
            # timestamps become NULL (ts == ts is False only for NaN); numpy scalars become plain.
            rows = [
                (sid, cam[r.camera], r.relpath, int(r.width), int(r.height),
                 float(r.timestamp) if r.timestamp is not None and r.timestamp == r.timestamp else None,
                 None if r.mtime is None else float(r.mtime),
                 None if r.size_bytes is None else int(r.size_bytes),
                 int(r.person_id), now)
                for r in records
            ]
            (max_before,) = con.execute("SELECT COALESCE(MAX(id), 0) FROM images").fetchone()
            changed = con.executemany(_UPSERT_IMAGE, rows).rowcount
            # INTEGER PRIMARY KEY without AUTOINCREMENT hands out max(id)+1, and images are never
            # deleted, so the new rows are exactly those above the previous maximum.
            (added,) = con.execute("SELECT COUNT(*) FROM images WHERE id > ?", (max_before,)).fetchone()
            if con.execute("SELECT 1 FROM rejects WHERE source_id = ? LIMIT 1", (sid,)).fetchone():
                con.executemany(
                    "DELETE FROM rejects WHERE source_id = ? AND relpath = ?", [(sid, row[2]) for row in rows]
                )
        return int(added), int(changed - added)

    def mark_missing(self, source_id: int, present_relpaths: Iterable[str]) -> int:
        """Mark the source's images not in ``present_relpaths`` as ``missing`` (never deleted).

        Returns how many became missing now.  Rows stay so that pseudo-labels, identities and
        features that refer to them stay valid; they come back with :meth:`upsert_images`.
        """
        present = present_relpaths if isinstance(present_relpaths, (set, frozenset)) else set(present_relpaths)
        with self.transaction() as con:
            self._require_source(con, source_id)
            # Aggregated like images() (a million (id, relpath) tuples would cost seconds), read
            # from the covering UNIQUE(source_id, relpath) index: no table lookups at all.  Rows
            # already missing are filtered by the UPDATE.
            n, ids_text, rels_text = con.execute(
                "SELECT count(*), group_concat(id), group_concat(relpath, char(0)) FROM images WHERE source_id = ?",
                (int(source_id),),
            ).fetchone()
            if n:
                ids = _parse_ints(ids_text, n).tolist()
                rels = rels_text.split("\0")
                if len(rels) != n:
                    raise WorkspaceError(f"the workspace database {self.db_path} is damaged: an image path contains NUL")
            else:
                ids, rels = [], []
            gone = [(i,) for i, rel in zip(ids, rels) if rel not in present]
            if not gone:
                return 0
            return con.executemany(
                "UPDATE images SET status = 'missing', reason = 'not found at the last scan' "
                "WHERE id = ? AND status != 'missing'",
                gone,
            ).rowcount

    def relpaths(self, source_id: int) -> set[str]:
        """Relative paths of all the source's image rows, any status.

        Read from the covering ``(source_id, relpath)`` index, aggregated: far cheaper than
        ``images(include_missing=True)`` when ingestion only needs to know what is known.
        """
        ((n, text),) = self._query(
            "SELECT count(*), group_concat(relpath, char(0)) FROM images WHERE source_id = ?", (int(source_id),)
        )
        return set(text.split("\0")) if n else set()

    def set_image_status(self, image_ids: Iterable[int], status: str, reason: str = "") -> None:
        """Set the status of images (e.g. ``unreadable`` when training failed to decode one)."""
        if status not in IMAGE_STATUSES:
            raise ItkmError(f"unknown image status {status!r}; one of {', '.join(IMAGE_STATUSES)}")
        ids = [(status, str(reason), int(i)) for i in np.asarray(list(image_ids) if not isinstance(image_ids, np.ndarray) else image_ids).ravel()]
        if not ids:
            return
        with self.transaction() as con:
            con.executemany("UPDATE images SET status = ?, reason = ? WHERE id = ?", ids)

    def image_count(self, *, include_missing: bool = False) -> int:
        """Usable (``ok``) images, or all rows with ``include_missing=True``."""
        sql = "SELECT COUNT(*) FROM images" + ("" if include_missing else " WHERE status = 'ok'")
        return int(self._query(sql)[0][0])

    def images(self, *, include_missing: bool = False, camera: str | None = None) -> ImageTable:
        """The images as an :class:`ImageTable`, sorted by id.

        Only usable (``ok``) images unless ``include_missing=True`` (then ``missing`` and
        ``unreadable`` rows too; see ``status``).  ``camera`` restricts to one camera.

        Speed: a million rows as Python tuples cost ~2 s of CPU, so each column is aggregated by
        SQLite into one text value (``group_concat``) and parsed by numpy in C; the rows are read
        in chunks of ``_IMAGE_CHUNK`` by id within one read transaction (one consistent
        snapshot).  Timestamps travel as integer microseconds.
        """
        where, params = ["id > ?"], []
        if not include_missing:
            where.append("status = 'ok'")
        with self._snapshot() as con:
            cams = con.execute("SELECT id, name, scenario, grp FROM cameras").fetchall()
            srcs = con.execute("SELECT id, root FROM sources").fetchall()
            if camera is not None:
                match = [c for c in cams if c[1] == camera]
                if not match:
                    return ImageTable.empty()
                where.append("camera_id = ?")
                params.append(match[0][0])
            sql = (
                "SELECT count(*), group_concat(id), group_concat(source_id), group_concat(camera_id), "
                "group_concat(width), group_concat(height), "
                f"group_concat(IFNULL(CAST(round(timestamp * 1000000) AS INTEGER), {_NULL_TS})), "
                "group_concat(person_id), "
                "group_concat(CASE status WHEN 'ok' THEN 0 WHEN 'missing' THEN 1 ELSE 2 END), "
                "group_concat(relpath, char(0)) "
                "FROM (SELECT id, source_id, camera_id, width, height, timestamp, person_id, status, relpath "
                f"FROM images WHERE {' AND '.join(where)} ORDER BY id LIMIT ?)"
            )
            chunks: list[tuple[list[np.ndarray], list[str]]] = []
            last = 0
            while True:
                row = con.execute(sql, [last, *params, _IMAGE_CHUNK]).fetchone()
                n = int(row[0])
                if n == 0:
                    break
                ints = [_parse_ints(row[i], n) for i in range(1, 9)]
                rel = row[9].split("\0")
                if len(rel) != n:
                    raise WorkspaceError(
                        f"the workspace database {self.db_path} is damaged: an image path contains a NUL character"
                    )
                chunks.append((ints, rel))
                last = int(ints[0][-1])
                if n < _IMAGE_CHUNK:
                    break
        if not chunks:
            return ImageTable.empty()
        if len(chunks) == 1:
            (cols, relpath), = chunks
        else:
            cols = [np.concatenate([c[0][i] for c in chunks]) for i in range(8)]
            relpath = [r for c in chunks for r in c[1]]
        ids, source_id, camera_id, width, height, ts_us, person_id, status_code = cols
        n = len(ids)
        if n > 1 and not bool(np.all(ids[1:] > ids[:-1])):  # never seen; cheap to guarantee
            order = np.argsort(ids, kind="stable")
            ids, source_id, camera_id, width, height, ts_us, person_id, status_code = (
                a[order] for a in (ids, source_id, camera_id, width, height, ts_us, person_id, status_code)
            )
            relpath = [relpath[i] for i in order]

        # Camera columns: small per-camera lookup tables indexed by camera id.
        max_cam = max(c[0] for c in cams)
        names = np.empty(max_cam + 1, dtype=object)
        scen = np.empty(max_cam + 1, dtype=object)
        grps = np.empty(max_cam + 1, dtype=object)
        for cid, name, sc, gr in cams:
            names[cid], scen[cid], grps[cid] = name, sc, gr

        # Absolute paths: the source root joined with the '/'-separated relative path.
        sep = os.sep
        prefixes = {sid: (root if root.endswith(sep) else root + sep) for sid, root in srcs}
        rel_native = relpath if sep == "/" else [r.replace("/", sep) for r in relpath]
        if any(r.startswith("%%") for r in rel_native):
            # A non-UTF-8 file name is stored in ingest's percent-escaped text form; ``path`` must
            # open the real file, so map those back (surrogate-escaped str, as os.fsdecode gives).
            from .data.imageio import text_to_relpath

            rel_native = [text_to_relpath(r) if r.startswith("%%") else r for r in rel_native]
        if len(prefixes) == 1:
            (prefix,) = prefixes.values()
            path = [prefix + r for r in rel_native]
        else:
            path = [prefixes[s] + r for s, r in zip(source_id.tolist(), rel_native)]

        timestamp = ts_us.astype(np.float64) / 1e6
        timestamp[ts_us == _NULL_TS] = np.nan
        return ImageTable(
            id=ids,
            path=path,
            relpath=relpath,
            camera=names[camera_id],
            scenario=scen[camera_id],
            group=grps[camera_id],
            width=width.astype(np.int32),
            height=height.astype(np.int32),
            timestamp=timestamp,
            person_id=person_id,
            status=_STATUS_NAMES[status_code],
            camera_id=camera_id,
            source_id=source_id,
        )

    # -- rejects -----------------------------------------------------------------------------
    def add_rejects(self, source_id: int, rejects: Iterable[tuple[str, str] | tuple[str, str, str | None]]) -> None:
        """Record files ingestion refused, with the reason; idempotent on (source, relpath).

        Items are ``(relpath, reason)`` or ``(relpath, reason, camera_name)``; without a camera the
        camera of an image row with that path is used, if any.  An image row with that path is
        marked ``unreadable`` (a file that was fine before and is broken now).
        """
        items = list(rejects)
        if not items:
            return
        now, sid = time.time(), int(source_id)
        with self.transaction() as con:
            self._require_source(con, sid)
            cam_names = {it[2] for it in items if len(it) > 2 and it[2] is not None}
            cam = self._camera_ids(con, cam_names, sid) if cam_names else {}
            rows = []
            for it in items:
                rel, reason = str(it[0]), str(it[1])
                cname = it[2] if len(it) > 2 else None
                rows.append((sid, rel, None if cname is None else cam[cname], sid, rel, reason, now))
            con.executemany(
                """
                INSERT INTO rejects (source_id, relpath, camera_id, reason, seen_at)
                VALUES (?, ?, COALESCE(?, (SELECT camera_id FROM images WHERE source_id = ? AND relpath = ?)), ?, ?)
                ON CONFLICT (source_id, relpath) DO UPDATE SET
                    reason = excluded.reason, seen_at = excluded.seen_at,
                    camera_id = COALESCE(excluded.camera_id, rejects.camera_id)
                """,
                rows,
            )
            con.executemany(
                "UPDATE images SET status = 'unreadable', reason = ? "
                "WHERE source_id = ? AND relpath = ? AND status != 'unreadable'",
                [(r[5], sid, r[1]) for r in rows],
            )

    def rejects(self, camera: str | None = None) -> list[Reject]:
        """Files refused at ingestion (all, or one camera's), oldest first."""
        sql = (
            "SELECT r.source_id, r.relpath, r.reason, r.seen_at, c.name, s.root FROM rejects r "
            "JOIN sources s ON s.id = r.source_id LEFT JOIN cameras c ON c.id = r.camera_id"
        )
        params: tuple = ()
        if camera is not None:
            sql += " WHERE c.name = ?"
            params = (camera,)
        sql += " ORDER BY r.id"
        return [
            Reject(source_id=int(s), relpath=rel, reason=reason, seen_at=float(t), camera=cname,
                   path=str(Path(root) / rel))
            for s, rel, reason, t, cname, root in self._query(sql, params)
        ]

    # -- rounds & epochs ---------------------------------------------------------------------
    def start_round(self, config_json: str, base_checkpoint: str | Path | None) -> int:
        """Record a new running round; returns its number (1, 2, ...)."""
        if not isinstance(config_json, str):
            raise TypeError("config_json must be a JSON string")
        try:
            json.loads(config_json)
        except ValueError as exc:
            raise ItkmError(f"the round's configuration is not valid JSON: {exc}") from exc
        with self.transaction() as con:
            (number,) = con.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM rounds").fetchone()
            con.execute(
                "INSERT INTO rounds (number, status, config_json, base_checkpoint, started) VALUES (?, 'running', ?, ?, ?)",
                (number, config_json, self._store_path(base_checkpoint), time.time()),
            )
        return int(number)

    _ROUND_COLS = "number, status, started, finished, checkpoint, stage, epoch, config_json, base_checkpoint"

    def _round(self, row: tuple) -> RoundInfo:
        number, status, started, finished, ckpt, stage, epoch, cfg, base = row
        return RoundInfo(
            number=int(number), status=status, started=float(started),
            finished=None if finished is None else float(finished),
            checkpoint=None if ckpt is None else str(self.resolve_path(ckpt)), stage=stage,
            epoch=None if epoch is None else int(epoch), config_json=cfg,
            base_checkpoint=None if base is None else str(self.resolve_path(base)),
        )

    def rounds(self) -> list[RoundInfo]:
        return [self._round(r) for r in self._query(f"SELECT {self._ROUND_COLS} FROM rounds ORDER BY number")]

    def get_round(self, number: int) -> RoundInfo:
        rows = self._query(f"SELECT {self._ROUND_COLS} FROM rounds WHERE number = ?", (int(number),))
        if not rows:
            raise ItkmError(f"no round {number} in this workspace")
        return self._round(rows[0])

    _ROUND_FIELDS = frozenset({"status", "stage", "epoch", "checkpoint", "finished", "base_checkpoint", "config_json"})

    def update_round(self, number: int, **fields: Any) -> None:
        """Update a round's ``status``/``stage``/``epoch``/``checkpoint``/``finished``.

        A final status (done/cancelled/failed) sets ``finished`` to now unless given; ``running``
        clears it (a resumed round).  Checkpoint paths inside the workspace are stored relative
        to it, so the workspace can be moved.
        """
        unknown = set(fields) - self._ROUND_FIELDS
        if unknown:
            raise TypeError(f"update_round() got unknown field(s): {', '.join(sorted(unknown))}")
        if not fields:
            return
        if "status" in fields:
            if fields["status"] not in ROUND_STATUSES:
                raise ItkmError(f"unknown round status {fields['status']!r}; one of {', '.join(ROUND_STATUSES)}")
            if "finished" not in fields:
                fields["finished"] = None if fields["status"] == "running" else time.time()
        for key in ("checkpoint", "base_checkpoint"):
            if key in fields:
                fields[key] = self._store_path(fields[key])
        if "epoch" in fields and fields["epoch"] is not None:
            fields["epoch"] = int(fields["epoch"])
        cols = sorted(fields)
        with self.transaction() as con:
            n = con.execute(
                f"UPDATE rounds SET {', '.join(c + ' = ?' for c in cols)} WHERE number = ?",
                [fields[c] for c in cols] + [int(number)],
            ).rowcount
            if n == 0:
                raise ItkmError(f"no round {number} in this workspace")

    def log_epoch(self, round: int, stage: str, epoch: int, values: dict) -> None:
        """Record (or replace) one epoch's losses and counts; a resumed epoch overwrites its row."""
        with self.transaction() as con:
            con.execute(
                "INSERT INTO epochs (round, stage, epoch, values_json, finished) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (round, stage, epoch) DO UPDATE SET values_json = excluded.values_json, "
                "finished = excluded.finished",
                (int(round), str(stage), int(epoch), _dumps(values), time.time()),
            )

    def epoch_log(self, round: int | None = None) -> list[dict]:
        """Epoch rows ``{"round", "stage", "epoch", "finished", "values": {...}}`` in the order logged."""
        sql = "SELECT round, stage, epoch, finished, values_json FROM epochs"
        params: tuple = ()
        if round is not None:
            sql += " WHERE round = ?"
            params = (int(round),)
        sql += " ORDER BY round, rowid"
        return [
            {"round": r, "stage": s, "epoch": e, "finished": f, "values": json.loads(v)}
            for r, s, e, f, v in self._query(sql, params)
        ]

    # -- assignments, metrics, identities ----------------------------------------------------
    def save_assignments(self, round: int, image_ids: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> None:
        """The round's pseudo-labels (``-1`` = outlier); replaces what the round had."""
        ids = np.asarray(image_ids, dtype=np.int64).ravel()
        lab = np.asarray(labels, dtype=np.int64).ravel()
        if ids.shape != lab.shape:
            raise ValueError(f"{len(ids)} image ids but {len(lab)} labels")
        rnd = int(round)
        with self.transaction() as con:
            con.execute("DELETE FROM assignments WHERE round = ?", (rnd,))
            con.executemany(
                "INSERT INTO assignments (round, image_id, label) VALUES (?, ?, ?)",
                zip([rnd] * len(ids), ids.tolist(), lab.tolist()),
            )

    def assignments(self, round: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image_ids, labels)`` of the round, sorted by image id (empty arrays when none)."""
        ((n, ids, labels),) = self._query(
            "SELECT count(*), group_concat(image_id), group_concat(label) FROM "
            "(SELECT image_id, label FROM assignments WHERE round = ? ORDER BY image_id)",
            (int(round),),
        )
        ids_a, labels_a = _parse_ints(ids, n), _parse_ints(labels, n)
        if n > 1 and not bool(np.all(ids_a[1:] > ids_a[:-1])):
            order = np.argsort(ids_a, kind="stable")
            ids_a, labels_a = ids_a[order], labels_a[order]
        return ids_a, labels_a

    def save_metrics(self, key: str, round: int | None, checkpoint: str | Path | None, values: dict) -> int:
        """Append one metrics record (e.g. key ``"rank/visible-infrared"``); returns its id."""
        with self.transaction() as con:
            cur = con.execute(
                "INSERT INTO metrics (key, round, checkpoint, values_json, created) VALUES (?, ?, ?, ?, ?)",
                (str(key), None if round is None else int(round), None if checkpoint is None else str(checkpoint),
                 _dumps(values), time.time()),
            )
            return int(cur.lastrowid)

    def metrics(self, key: str | None = None) -> list[dict]:
        """Metrics records ``{"id", "key", "round", "checkpoint", "created", "values": {...}}``, oldest first."""
        sql = "SELECT id, key, round, checkpoint, created, values_json FROM metrics"
        params: tuple = ()
        if key is not None:
            sql += " WHERE key = ?"
            params = (key,)
        sql += " ORDER BY id"
        return [
            {"id": i, "key": k, "round": r, "checkpoint": c, "created": t, "values": json.loads(v)}
            for i, k, r, c, t, v in self._query(sql, params)
        ]

    def save_identities(
        self,
        checkpoint: str | Path,
        image_ids: Sequence[int] | np.ndarray,
        identity_ids: Sequence[int] | np.ndarray,
        confidences: Sequence[float] | np.ndarray,
    ) -> None:
        """Final identity per image for ``checkpoint``; replaces what that checkpoint had."""
        ids = np.asarray(image_ids, dtype=np.int64).ravel()
        ident = np.asarray(identity_ids, dtype=np.int64).ravel()
        conf = np.asarray(confidences, dtype=np.float64).ravel()
        if not (ids.shape == ident.shape == conf.shape):
            raise ValueError(f"lengths differ: {len(ids)} image ids, {len(ident)} identities, {len(conf)} confidences")
        key = str(checkpoint)
        with self.transaction() as con:
            con.execute("DELETE FROM identities WHERE checkpoint = ?", (key,))
            con.executemany(
                "INSERT INTO identities (checkpoint, image_id, identity, confidence) VALUES (?, ?, ?, ?)",
                zip([key] * len(ids), ids.tolist(), ident.tolist(), conf.tolist()),
            )

    def identities(self, checkpoint: str | Path | None = None) -> IdentityTable:
        """Identities of ``checkpoint``, or of the most recently saved checkpoint when ``None``."""
        with self._snapshot() as con:
            if checkpoint is None:
                row = con.execute("SELECT checkpoint FROM identities ORDER BY rowid DESC LIMIT 1").fetchone()
                if row is None:
                    return IdentityTable(None, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
                key = row[0]
            else:
                key = str(checkpoint)
            rows = con.execute(
                "SELECT image_id, identity, confidence FROM identities WHERE checkpoint = ? ORDER BY image_id", (key,)
            ).fetchall()
        if not rows:
            return IdentityTable(key, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        a, b, c = zip(*rows)
        return IdentityTable(
            key,
            np.fromiter(a, np.int64, len(rows)),
            np.fromiter(b, np.int64, len(rows)),
            np.fromiter(c, np.float64, len(rows)).astype(np.float32),
        )

    def latest_checkpoint(self) -> Path | None:
        """Checkpoint file of the last ``done`` round whose file still exists (absolute), else ``None``."""
        rows = self._query(
            "SELECT checkpoint FROM rounds WHERE status = 'done' AND checkpoint IS NOT NULL ORDER BY number DESC"
        )
        for (ckpt,) in rows:
            p = self.resolve_path(ckpt)
            if p.is_file():
                return p
        return None

    # -- paths stored in the database --------------------------------------------------------
    def _store_path(self, p: str | Path | None) -> str | None:
        """Paths inside the workspace are stored relative (``checkpoints/round_0001.pt``) so the
        workspace can be moved; :meth:`rounds` hands them back absolute."""
        if p is None:
            return None
        s = str(p)
        pp = Path(s)
        if pp.is_absolute():
            try:
                return pp.relative_to(self.path).as_posix()
            except ValueError:
                return s
        return s

    def resolve_path(self, stored: str | Path) -> Path:
        """The absolute path of a path stored in the database (relative ones are inside the workspace)."""
        p = Path(stored)
        return p if p.is_absolute() else self.path / p

