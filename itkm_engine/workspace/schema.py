"""The workspace database's schema and its migrations (a part of :class:`~itkm_engine.workspace.Workspace`).

``_SCHEMA`` creates a new database at :data:`SCHEMA_VERSION`; ``MIGRATIONS[n]`` upgrades an older
one step by step, after a backup (:class:`SchemaMixin`, run by ``Workspace.open``).  A reader never
migrates: it refuses an older database (``WorkspaceOlderError``) and ``Workspace.open`` lets a
writer upgrade it first.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Callable, Iterator

from ..atomic import fsync_folder, private_folder
from ..errors import ItkmError, SchemaTooNewError, WorkspaceError
from ..vocabulary import DEFAULT_SITE
from .connection import DB_NAME, WorkspaceOlderError, _error_name

__all__ = ["SCHEMA_VERSION", "MIGRATIONS", "SchemaMixin"]

#: The schema this code writes.  Bump it together with a new entry in MIGRATIONS.
SCHEMA_VERSION = 4

#: ``MIGRATIONS[n](con)`` upgrades a version-``n`` database to ``n + 1``.  Each runs inside its own
#: ``BEGIN IMMEDIATE`` transaction together with the ``schema_version`` bump, after the database was
#: copied to ``itkm.sqlite.bak-v<n>``.  A migration that rebuilds a table must not rely on
#: ``foreign_keys`` being off (it is on); use ``ALTER TABLE ... ADD/RENAME/DROP COLUMN`` where it can.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}


def _migrate_1_to_2(con: sqlite3.Connection) -> None:
    """Version 2: a site per source (the same person can appear in every camera of one site)."""
    if "site" not in {row[1] for row in con.execute("PRAGMA table_info(sources)")}:
        con.execute(f"ALTER TABLE sources ADD COLUMN site TEXT NOT NULL DEFAULT '{DEFAULT_SITE}'")


MIGRATIONS[1] = _migrate_1_to_2

# -- operator decisions (schema v3; the store is itkm_engine/workspace/decisions.py) ---------------
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

# -- stable identity ids (schema v4; the store is itkm_engine/workspace/identity_store.py) ----------
#: ``identity_ids``: the identity id in effect for every image (ids are never reused).
#: ``identity_states``: one row per published assignment -- the ``key`` it was computed for (model,
#: active decision steps, images), the decision ``batch`` / ``round`` that caused it, and ``state``
#: 0 in effect, 1 undone (redoable), 2 dropped -- on an undo stack like the decisions'.
#: ``identity_changes``: what each state changed (``before``/``after`` id per image, -1 = none), so
#: undo and redo restore an earlier assignment exactly.  ``identity_lineage``: new / merged into /
#: split from / retired into, per state.  ``identity_split_offs``: sightings split off one by one
#: (each its own identity unless confirmed together), in effect while their decision step is.
_IDENTITY_ID_TABLES = """
CREATE TABLE IF NOT EXISTS identity_ids (
    image_id INTEGER PRIMARY KEY,
    identity INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS identity_ids_identity ON identity_ids (identity);
CREATE TABLE IF NOT EXISTS identity_states (
    id         INTEGER PRIMARY KEY,
    key        TEXT NOT NULL,
    checkpoint TEXT,
    batch      INTEGER,
    round      INTEGER,
    at         REAL NOT NULL,
    state      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS identity_changes (
    state_id INTEGER NOT NULL REFERENCES identity_states(id),
    image_id INTEGER NOT NULL,
    before   INTEGER NOT NULL,
    after    INTEGER NOT NULL,
    PRIMARY KEY (state_id, image_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS identity_lineage (
    id       INTEGER PRIMARY KEY,
    state_id INTEGER NOT NULL REFERENCES identity_states(id),
    identity INTEGER NOT NULL,
    event    TEXT NOT NULL CHECK (event IN ('new', 'merged', 'split', 'retired')),
    other    INTEGER
);
CREATE INDEX IF NOT EXISTS identity_lineage_identity ON identity_lineage (identity);
CREATE INDEX IF NOT EXISTS identity_lineage_other ON identity_lineage (other);
CREATE TABLE IF NOT EXISTS identity_split_offs (
    batch    INTEGER NOT NULL,
    image_id INTEGER NOT NULL,
    PRIMARY KEY (batch, image_id)
) WITHOUT ROWID;
"""


def _migrate_3_to_4(con: sqlite3.Connection) -> None:
    """Version 4: stable identity ids, their undo stack and lineage."""
    for stmt in _statements(_IDENTITY_ID_TABLES):
        con.execute(stmt)


MIGRATIONS[3] = _migrate_3_to_4

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
""" + _DECISION_TABLES + _IDENTITY_ID_TABLES


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


class SchemaMixin:
    """Creating, checking and upgrading the schema (``Workspace._open`` calls these)."""

    SCHEMA_VERSION: int = SCHEMA_VERSION

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
        self._reporter.log(f"upgrading workspace schema from version {version} to {self.SCHEMA_VERSION} (backup: {backup})")
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
        """Copy the database (WAL included, consistent) to ``itkm.sqlite.bak-v<version>``.

        Never through a link: SQLite writes the copy inside a new private folder
        (:func:`~itkm_engine.atomic.private_folder`: nothing can have been planted in it), which
        is then renamed onto the backup's name -- replacing whatever has that name (a link to
        another project's database, a dangling link) instead of writing where it points."""
        target = self.path / f"{DB_NAME}.bak-v{version}"
        try:
            st = os.lstat(target)
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            return target  # a previous upgrade attempt already saved this version
        try:
            with private_folder(self.path) as folder:
                tmp = folder / DB_NAME
                dst = sqlite3.connect(str(tmp))
                try:
                    with self._rlock:
                        self._conn().backup(dst)
                finally:
                    dst.close()
                os.replace(tmp, target)
            fsync_folder(self.path)
        except (sqlite3.Error, OSError) as exc:
            reason = "disk full" if isinstance(exc, sqlite3.Error) and _error_name(exc).startswith("SQLITE_FULL") else str(exc)
            raise WorkspaceError(
                f"cannot back up the workspace before upgrading it ({reason}); nothing was changed"
            ) from exc
        return target
