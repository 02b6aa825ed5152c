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

:class:`Workspace` is put together from the package's parts:

=================== ============================================================================
``connection.py``   opening, the writer lock and lending it, transactions, ``query``, error mapping
``schema.py``       the schema SQL, creating it, version checks and migrations (after a backup)
``catalog.py``      sources, cameras, images, rejects
``history.py``      rounds, epochs, assignments, metrics, identities
``decisions.py``    the operator's decisions and identity names (functions taking a Workspace)
=================== ============================================================================

This module adds the folder layout, the ``meta`` table and the paths stored in the database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ReadOnlyWorkspaceError, SchemaTooNewError, WorkspaceError
from ..lock import LOCK_NAME, LockInfo, read_lock_info
from ..records import Camera, IdentityTable, ImageRecord, ImageTable, Reject, RoundInfo, Source
from ..vocabulary import CONFIG_FILE
from .catalog import CatalogMixin
from .connection import DB_NAME, FOLDERS, Connection, WorkspaceOlderError
from .history import HistoryMixin
from .schema import MIGRATIONS, SCHEMA_VERSION, SchemaMixin

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
    "WorkspaceError",
    "WorkspaceOlderError",
    "ReadOnlyWorkspaceError",
    "SchemaTooNewError",
]


class Workspace(CatalogMixin, HistoryMixin, SchemaMixin, Connection):
    """A project folder: SQLite database + arrays on disk + writer lock.  See the module docstring.

    Open with :meth:`open` (``create=True`` makes a new one).  Use as a context manager or call
    :meth:`close`; the writer lock is also released at interpreter exit.
    """

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

    def change_stamp(self) -> dict[str, tuple]:
        """A small summary per part of the workspace that differs whenever that part changed,
        whichever process changed it: ``images`` (sources and their sites, cameras and their
        scenario/group, images), ``model`` (the finished rounds' checkpoints), ``rounds`` (every
        round's state and the epochs logged) and ``decisions``.  The app compares two to follow a
        terminal's ``itkm`` commands (one read, a few ms)."""
        with self._snapshot() as con:
            one = lambda sql: tuple(con.execute(sql).fetchone())  # noqa: E731
            return {
                "images": one("SELECT (SELECT count(*) FROM images), (SELECT coalesce(max(id), 0) FROM images), "
                              "(SELECT count(*) FROM images WHERE status = 'ok'), "
                              "(SELECT group_concat(id || ':' || site, ',') FROM sources), "
                              "(SELECT group_concat(id || ':' || scenario || ':' || grp, ',') FROM cameras)"),
                "model": one("SELECT group_concat(number || ':' || coalesce(checkpoint, ''), ',') FROM rounds "
                             "WHERE status = 'done'"),
                "rounds": one("SELECT (SELECT group_concat(number || ':' || status || ':' || coalesce(stage, '') || ':' "
                              "|| coalesce(epoch, ''), ',') FROM rounds), (SELECT count(*) FROM epochs)"),
                "decisions": one("SELECT (SELECT count(*) || ':' || coalesce(max(id), 0) || ':' || coalesce(sum(state), 0) "
                                 "FROM decisions), (SELECT count(*) || ':' || coalesce(max(id), 0) || ':' || "
                                 "coalesce(sum(state), 0) FROM identity_names)"),
            }

    # -- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
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
