"""Opening a workspace: the SQLite connection, the writer lock, lending it, transactions, reads.

Concurrency: one *writer* process per workspace (the writer lock, :mod:`itkm_engine.lock`) and any
number of read-only openers (``Workspace.open(path, readonly=True)``: no lock, SQLite ``mode=ro``;
WAL lets them read a consistent snapshot while the writer commits).  A long-lived opener that
writes now and then -- the app -- opens with ``hold_lock=False``: it reads without the lock and
takes it only for each write (:meth:`Connection.writing`; a transaction outside one takes it for
itself), so a terminal's ``itkm train`` / ``ingest`` / ``cameras --set`` run while it sits open.  Inside a process one
:class:`~itkm_engine.workspace.Workspace` object owns one connection guarded by an ``RLock``, so
worker threads may share it (their calls serialise); for truly parallel reads open one read-only
Workspace per thread.

Every write runs inside :meth:`Connection.transaction` (``BEGIN IMMEDIATE`` ... ``COMMIT``), so a
crash or a full disk leaves the previous state, never half a batch; every read goes through
:meth:`Connection.query` (or a ``_snapshot`` for several SELECTs that must agree).  SQLite's
disk/file failures become :class:`~itkm_engine.errors.WorkspaceError` s with a message for the user
(:meth:`Connection._map_error`).

:class:`Connection` is the base of ``Workspace``; ``_open`` calls the schema hooks
(``_create_schema``, ``_check_version_and_migrate``, ``_check_version_readonly``) that
:class:`~itkm_engine.workspace.schema.SchemaMixin` provides.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator, Self, Sequence

import numpy as np

from ..atomic import remove_stale_temporaries
from ..errors import ItkmError, ReadOnlyWorkspaceError, WorkspaceError, WorkspaceLockedError
from ..lock import LOCK_NAME, LockInfo, WriterLock, pid_alive, read_lock_info
from ..progress import Reporter
from ..vocabulary import CONFIG_FILE

__all__ = ["DB_NAME", "FOLDERS", "Connection", "WorkspaceOlderError"]

DB_NAME = "itkm.sqlite"
#: Sub-folders every workspace has (created on create, re-created on writer open if deleted).
FOLDERS: tuple[str, ...] = ("checkpoints", "features", "rounds", "cache", "exports")

_BUSY_TIMEOUT_MS = 10_000


class WorkspaceOlderError(WorkspaceError):
    """A read-only open of a workspace with an older schema (a writer upgrades it)."""


def _parse_ints(text: str | None, n: int) -> np.ndarray:
    """A ``group_concat`` of integers -> int64 array of length ``n`` (parsed in C by numpy)."""
    if text is None:
        return np.zeros(0, np.int64)
    arr = np.fromstring(text, dtype=np.int64, sep=",")
    if len(arr) != n:  # a value numpy could not parse: fall back to Python, which raises on garbage
        arr = np.array([int(v) for v in text.split(",")], dtype=np.int64)
    return arr


def new_db(db: Path) -> bool:
    """Whether ``db`` is not a database yet (missing or empty)."""
    return not db.exists() or db.stat().st_size == 0


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


class Connection:
    """The connection, the writer lock and transactions of a :class:`~itkm_engine.workspace.Workspace`."""

    # -- opening / closing -------------------------------------------------------------------
    def __init__(
        self,
        path: str | Path,
        *,
        readonly: bool = False,
        create: bool = False,
        reporter: Reporter | None = None,
        hold_lock: bool = True,
        owner: str | None = None,
    ) -> None:
        self.path: Path = Path(path).expanduser().absolute()
        self.readonly: bool = bool(readonly)
        self._reporter = reporter or Reporter()
        self._rlock = threading.RLock()
        self._turn_done = threading.Condition(self._rlock)  # a write turn ended (lend_writer waits)
        self._tx_depth = 0
        self._con: sqlite3.Connection | None = None
        self._lock: WriterLock | None = None
        self._pid = os.getpid()  # a connection must not be used across fork()
        #: True: the writer lock is taken only for each write (:meth:`writing`), not held while idle
        self.lock_on_demand: bool = not hold_lock and not readonly
        self._owner = owner  # names this process in the lock file (``itkm-app``), else its argv
        self._turns = 0  # nested write turns in progress (lock_on_demand)
        #: write turns this object has finished (lock_on_demand): tells its own writes from others'
        self.writes_done = 0
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
        hold_lock: bool = True,
        owner: str | None = None,
    ) -> Self:
        """Open the workspace at ``path``.

        ``create=True`` makes it (and its folders) when ``path`` is missing or empty, and simply
        opens it when it already is a workspace.  A writer (``readonly=False``) takes the writer
        lock, migrates an older schema (after a backup) and clears stale temporaries.  Raises
        :class:`WorkspaceError` for a folder that is not a workspace, :class:`WorkspaceLockedError`
        when another live process writes it, :class:`SchemaTooNewError` for a newer schema.

        ``hold_lock=False`` (the app): after that opening the lock is released; the workspace
        reads without it and takes it for each write (:meth:`writing`).  ``owner`` names this
        process in the lock file (what another process's refusal says), default its command line.
        """
        if readonly and not create:
            try:
                return cls(path, readonly=True, reporter=reporter)
            except WorkspaceOlderError:
                # A reader of a workspace an older ITKM Studio wrote: upgrade it once (a writer
                # migrates after a backup), then read.  Where it cannot be written (a live writer,
                # a read-only place) the reason is raised instead.
                cls(path, reporter=reporter).close()
        return cls(path, readonly=readonly, create=create, reporter=reporter, hold_lock=hold_lock, owner=owner)

    @classmethod
    def create(cls, path: str | Path, *, reporter: Reporter | None = None) -> Self:
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
        try:
            self._lock = self._writer_lock("opening the workspace" if self.lock_on_demand else "").acquire()
        except WorkspaceLockedError:
            if not self.lock_on_demand or new_db(db):
                raise
            # Another process writes it now (a terminal's itkm train): read meanwhile; each write
            # asks for the lock when it comes.  Only an older schema needs the lock to open.
            self._con = self._connect_readonly(db)
            self._check_version_readonly()
            return
        # Before anything is written (the schema upgrade's backup included): stale temporaries
        # go, and a folder of the workspace that is a link stops the writer -- it would write
        # wherever the link points.
        n = remove_stale_temporaries(path)
        if n:
            self._reporter.log(f"removed {n} unfinished temporary file(s) left by an interrupted write")
        self._refuse_folder_links()
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
        if self.lock_on_demand:
            self._end_turn()  # opened, upgraded, cleaned: read without the lock until a write

    @property
    def owner(self) -> str | None:
        """How this process is named in the lock file (``itkm-app``), or None (its command line)."""
        return self._owner

    def _writer_lock(self, doing: str = "") -> WriterLock:
        argv = [self._owner] if self._owner else None
        return WriterLock(self.path / LOCK_NAME, argv=argv, on_message=self._reporter.warning, doing=doing,
                          brief=self.lock_on_demand)

    # -- the writer lock, taken for each write (hold_lock=False) ---------------------------------
    @contextlib.contextmanager
    def writing(self, what: str = "") -> Iterator[Self]:
        """Hold the writer lock for the block: one write of a workspace opened with
        ``hold_lock=False`` (several transactions and files that belong together, e.g. an
        ingest).  Raises :class:`WorkspaceLockedError` naming the process that writes it now
        (nothing was written); ``what`` is what this process's lock says it is doing.  Nested
        blocks (any thread of this process) share one turn.  A workspace that holds its lock
        anyway just runs the block; a read-only one raises :class:`ReadOnlyWorkspaceError`."""
        self._check_writable()
        if not self.lock_on_demand:
            yield self
            return
        with self._rlock:
            self._check_writable()  # lent meanwhile?
            if self._turns == 0:
                self._begin_turn(what)
            self._turns += 1
        try:
            yield self
        finally:
            with self._rlock:
                self._turns -= 1
                if self._turns == 0:
                    self.writes_done += 1
                    self._end_turn()
                    self._turn_done.notify_all()

    @contextlib.contextmanager
    def writing_if_free(self, what: str = "") -> Iterator[bool]:
        """Like :meth:`writing` where the workspace can be written now; else the block runs
        without a turn and gets ``False``: a read that keeps what it computed (identities,
        features, a map) only when no other process writes and the workspace is not read-only."""
        if self.readonly:
            yield False
            return
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self.writing(what))
            except (WorkspaceLockedError, ReadOnlyWorkspaceError):
                got = False
            else:
                got = True
            yield got

    def other_writer(self) -> LockInfo | None:
        """The live process other than this one that holds the writer lock now, or ``None``."""
        info = read_lock_info(self.path / LOCK_NAME)
        if info is None or info.pid == os.getpid() or not pid_alive(info.pid):
            return None
        return info

    def _begin_turn(self, what: str) -> None:
        lock = self._writer_lock(what)
        lock.acquire()  # WorkspaceLockedError naming the holder: nothing changed
        db = self.path / DB_NAME
        try:
            if lock.took_over is not None:  # a killed writer (a child job) may have left temporaries
                remove_stale_temporaries(self.path)
            self._refuse_folder_links()
            con = self._connect_writer(db)
        except BaseException:
            lock.release()
            raise
        old, self._con, self._lock = self._con, con, lock
        if old is not None:
            with contextlib.suppress(sqlite3.Error):
                old.close()

    def _drop_connection_and_lock(self, *, optimize: bool) -> None:
        """Roll back what is open, close the connection (``optimize``: let SQLite refresh its
        statistics first) and release the writer lock; errors of a connection already gone are
        ignored."""
        con, self._con = self._con, None
        if con is not None:
            with contextlib.suppress(sqlite3.Error):
                if con.in_transaction:
                    con.execute("ROLLBACK")
            if optimize:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("PRAGMA optimize")
            with contextlib.suppress(sqlite3.Error):
                con.close()
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def _end_turn(self) -> None:
        db = self.path / DB_NAME
        self._drop_connection_and_lock(optimize=False)
        self._con = self._connect_readonly(db)

    def _refuse_folder_links(self) -> None:
        """The workspace's own folders (and the folders in them, such as ``features/<key>``) must
        be real folders: a workspace someone sent may hold links to anywhere (``checkpoints ->
        ~/other-project``), and a writer would replace files there.  Readers are unaffected."""
        for name in FOLDERS:
            top = self.path / name
            links = [top] if top.is_symlink() else []
            if not links and name != "exports" and top.is_dir():  # exports/ is the user's: only itself
                with contextlib.suppress(OSError), os.scandir(top) as it:
                    links = [Path(e.path) for e in it if e.is_symlink() and e.is_dir()]
            if links:
                try:
                    where = f" (to {os.readlink(links[0])})"
                except OSError:
                    where = ""
                raise WorkspaceError(
                    f"{links[0]} is a symbolic link{where}, not a folder: ITKM Studio never writes through a link "
                    "inside a workspace (it would change files elsewhere). Replace the link by a real folder (move "
                    "what it points to there), then run the command again; reading the workspace (status, query, "
                    "identities, exports) works meanwhile")

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
            self._drop_connection_and_lock(optimize=not self.readonly)

    @property
    def closed(self) -> bool:
        return self._con is None

    @contextlib.contextmanager
    def lend_writer(self) -> Iterator[Self]:
        """Hand the writer lock to another process (a child job) for the duration of the block.

        Inside the block this object is read-only (``readonly`` is ``True``; reads see the other
        process's commits); on exit it takes the writer lock back -- over a stale lock when the
        child was killed -- and is writable again.  A read-only workspace has nothing to lend
        and raises :class:`ReadOnlyWorkspaceError`.  See ``docs/adr/0008-jobs-in-a-child-process.md``.
        """
        self._check_writable()
        if self.lock_on_demand:  # no lock held while idle: the child takes it; no writes here meanwhile
            with self._rlock:
                self._turn_done.wait_for(lambda: self._turns == 0)
                self.readonly = True
            try:
                yield self
            finally:
                self.readonly = False
            return
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "closed" if self.closed else ("read-only" if self.readonly else
                                             "writer" if self._lock is not None else "reader, writes on demand")
        return f"<Workspace {self.path} ({mode})>"

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
        workspace's RLock, so other threads' calls wait until it ends.  On a workspace opened
        with ``hold_lock=False`` a transaction outside :meth:`writing` takes the writer lock for
        itself (one decision, one camera edit).
        """
        self._check_writable()
        turn = self.writing() if self.lock_on_demand else contextlib.nullcontext()
        with turn, self._transaction() as con:
            yield con

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
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

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """The rows of one SELECT (read in one snapshot; SQLite failures mapped to WorkspaceError)."""
        with self._snapshot() as con:
            return con.execute(sql, params).fetchall()
