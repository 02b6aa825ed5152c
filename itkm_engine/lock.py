"""The workspace writer lock: one writing process per workspace, any number of readers.

SQLite alone would let two processes write the same workspace in turns, but two trainers (or a
trainer and an ingest) interleaving rounds, checkpoints and feature files would corrupt the
*meaning* of the workspace even if every single write is atomic.  So a writer first creates
``workspace.lock`` atomically (``O_CREAT | O_EXCL``) holding JSON ``{pid, host, started, argv}``,
which also lets the app tell the user *who* holds the workspace.

A holder that died (kill -9, power loss) leaves the file behind; that lock is *stale* and is taken
over when its pid is not alive on this host.  As a second guard the holder keeps an
``fcntl.flock`` on the file: the kernel drops it when the process dies, which catches a recycled
pid (the file names a pid that is alive again, but belongs to some other program).  A lock from
another host cannot be checked, so it is refused with advice to delete it if the user is sure.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import WorkspaceError, WorkspaceLockedError

try:  # POSIX only; on Windows the O_EXCL file and the pid check are the guard.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "LockInfo", "WriterLock", "read_lock_info", "pid_alive"]

LOCK_NAME = "workspace.lock"

# A lock file that exists but does not (yet) hold valid JSON is given this long to be written by
# its creator before it is treated as the remains of a crash between create and write.
_EMPTY_GRACE_S = 2.0


@dataclass(frozen=True)
class LockInfo:
    """Who holds (or held) a workspace lock."""

    pid: int
    host: str
    started: float
    argv: list[str]
    #: what the holder is writing now (the app names each write: "adding camera folders")
    doing: str = ""
    #: the holder takes the lock only while it writes (the app): the answer is "try again"
    brief: bool = False

    def command(self, limit: int = 60) -> str:
        """The holder's command line, shortened for a message (``itkm train --rounds 2``)."""
        if not self.argv:
            return "?"
        parts = [os.path.basename(self.argv[0])] + list(self.argv[1:])
        text = " ".join(parts)
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def since(self) -> str:
        """Start time for a message: ``12:03`` today, else ``2024-05-01 12:03``."""
        t = time.localtime(self.started)
        if time.strftime("%Y-%m-%d", t) == time.strftime("%Y-%m-%d"):
            return time.strftime("%H:%M", t)
        return time.strftime("%Y-%m-%d %H:%M", t)

    def describe(self) -> str:
        return f"pid {self.pid} ({self.what()}) on {self.host} since {self.since()}"

    def what(self) -> str:
        """The holder and what it is doing: ``itkm train WS`` or ``itkm-app: adding camera folders``."""
        return self.command() + (f": {self.doing}" if self.doing else "")

    def advice(self) -> str:
        """What the refused process can do."""
        if self.brief:
            return "it holds the workspace only while it writes: try again when it is done"
        return "open it read-only or stop that process"


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host (signal 0 probes without sending)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        ctypes.windll.kernel32.CloseHandle(handle)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _host() -> str:
    return socket.gethostname()


def read_lock_info(path: str | Path) -> LockInfo | None:
    """The holder recorded in a lock file; ``None`` when absent or unreadable.

    The app uses this to say "read-only: being written by pid ..." beside a read-only workspace.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    return _parse(raw)


def _parse(raw: bytes) -> LockInfo | None:
    try:
        data = json.loads(raw.decode("utf-8"))
        return LockInfo(
            pid=int(data["pid"]),
            host=str(data["host"]),
            started=float(data["started"]),
            argv=[str(a) for a in data.get("argv", [])],
            doing=str(data.get("doing") or ""),
            brief=bool(data.get("brief", False)),
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def _flock(fd: int) -> bool | None:
    """Try a non-blocking exclusive flock: True got it, False held elsewhere, None unsupported."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK / EINVAL / ENOTSUP: file system without flock


class WriterLock:
    """Exclusive writer lock on a workspace (``workspace.lock`` beside ``itkm.sqlite``).

    ``acquire()`` raises :class:`WorkspaceLockedError` naming the live holder; takes over a stale
    lock (reported through ``on_message``); raises :class:`WorkspaceError` when the folder cannot
    be written.  Released by ``release()``, as a context manager, or at interpreter exit.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        argv: list[str] | None = None,
        on_message: Callable[[str], None] | None = None,
        doing: str = "",
        brief: bool = False,
    ) -> None:
        self.path = Path(path)
        self.argv = list(sys.argv if argv is None else argv)
        self.on_message = on_message
        self.doing = doing
        self.brief = brief
        self.info: LockInfo | None = None  # ours, while held
        self.took_over: LockInfo | None = None  # the stale holder we replaced, if any
        self._fd: int | None = None
        self._owner_pid: int | None = None

    # -- public -------------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        return self._fd is not None and self._owner_pid == os.getpid()

    def acquire(self) -> "WriterLock":
        if self.held:
            return self
        for _attempt in range(50):
            if self._try_create():
                atexit.register(self.release)
                return self
            self._handle_existing()  # raises if live; removes it if stale; returns to retry
        raise WorkspaceLockedError(
            f"could not take the workspace lock {self.path}: it keeps changing hands; "
            "another program may be opening and closing this workspace in a loop"
        )

    def release(self) -> None:
        """Remove the lock file if it is still ours, then drop the flock.  Idempotent."""
        fd = self._fd
        if fd is None:
            return
        if self._owner_pid != os.getpid():
            # A forked child inherited the object: the lock belongs to the parent.
            return
        self._fd = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.release)
        try:
            st_fd = os.fstat(fd)
            with contextlib.suppress(OSError):
                st_path = os.stat(self.path)
                if (st_path.st_dev, st_path.st_ino) == (st_fd.st_dev, st_fd.st_ino):
                    os.unlink(self.path)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)  # also releases the flock
            self.info = None

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- internals ----------------------------------------------------------------------------
    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise _unwritable(self.path.parent, exc) from exc
        try:
            got = _flock(fd)
            if got is False:  # pragma: no cover - impossible for a file we just created
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                return False
            info = LockInfo(pid=os.getpid(), host=_host(), started=time.time(), argv=self.argv, doing=self.doing,
                            brief=self.brief)
            payload = json.dumps(
                {"pid": info.pid, "host": info.host, "started": info.started, "argv": info.argv,
                 **({"doing": info.doing} if info.doing else {}), **({"brief": True} if info.brief else {})}
            ).encode("utf-8")
            os.write(fd, payload)
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise _unwritable(self.path.parent, exc) from exc
        self._fd = fd
        self._owner_pid = os.getpid()
        self.info = info
        return True

    def _handle_existing(self) -> None:
        """Raise if the existing lock is live; remove it if stale.  Returning means: retry."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return  # released meanwhile
        except PermissionError:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return
            except OSError as exc:
                raise _unwritable(self.path.parent, exc) from exc
        except OSError as exc:
            raise _unwritable(self.path.parent, exc) from exc
        try:
            st = os.fstat(fd)
            raw = os.read(fd, 1 << 16)
            info = _parse(raw)
            flocked = _flock(fd)  # True: nobody holds it; False: a live process does
            if info is None:
                if flocked is False or time.time() - st.st_mtime < _EMPTY_GRACE_S:
                    # Being written right now by its creator (or held by a live process whose
                    # lock file got garbled): wait a little and look again.
                    time.sleep(0.05)
                    if flocked is False and time.time() - st.st_mtime >= _EMPTY_GRACE_S:
                        raise WorkspaceLockedError(
                            f"the workspace is being written by another process (lock file {self.path} "
                            "is held but unreadable); open it read-only or stop that process"
                        )
                    return
                self._remove_stale(st, "an unreadable lock file left by a crash")
                return
            if info.host != _host():
                exc = WorkspaceLockedError(
                    f"the workspace is locked by {info.describe()}, another computer; "
                    f"open it read-only, or if you are sure nothing on {info.host} uses it, delete {self.path}"
                )
                exc.holder = info  # type: ignore[attr-defined]
                raise exc
            alive = pid_alive(info.pid)
            # flock acquirable => the holder process is gone even if its pid was recycled.
            if alive and flocked is not True:
                who = "this process" if info.pid == os.getpid() else info.what()
                exc = WorkspaceLockedError(
                    f"workspace is being written by pid {info.pid} ({who}) since {info.since()}; {info.advice()}"
                )
                exc.holder = info  # type: ignore[attr-defined]
                raise exc
            why = "its process is gone" if not alive else "its pid now belongs to another program"
            self._remove_stale(st, f"the lock of {info.describe()} ({why})")
            self.took_over = info
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _remove_stale(self, st: os.stat_result, what: str) -> None:
        try:
            cur = os.stat(self.path)
        except FileNotFoundError:
            return
        if (cur.st_dev, cur.st_ino) != (st.st_dev, st.st_ino):
            return  # replaced meanwhile by someone else; look again
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _unwritable(self.path.parent, exc) from exc
        if self.on_message is not None:
            self.on_message(f"took over a stale workspace lock: {what}")


def _unwritable(folder: Path, exc: OSError) -> WorkspaceError:
    return WorkspaceError(
        f"cannot write in the workspace folder {folder} ({exc.strerror or exc}); "
        "open it read-only (Workspace.open(..., readonly=True); itkm status / query / cameras without --set read it without a lock), or copy it to a writable place"
    )
