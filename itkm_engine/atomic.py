"""Write-to-temporary-then-rename, so a file is either the old one or the whole new one.

Used for checkpoints, feature chunks, exports and config files.  A crash (kill -9, power loss,
disk full) leaves at worst a stray temporary beside the target, which
:func:`remove_stale_temporaries` clears on the next writer open.

Nothing here follows a link it did not choose to follow: the temporary is created exclusively
(``O_CREAT | O_EXCL | O_NOFOLLOW``, a random name) inside the target's folder, opened once as a
descriptor, and renamed over the target within that folder (``renameat``), which replaces a
link of the target's name instead of writing through it.  ``folder=`` (what
:func:`folder_id` returned when the destination was checked) makes the write refuse a folder that
was swapped -- for a link elsewhere, say -- between the check and the write.

A temporary's name is ``.tmp-<target>.<random>.itkm-tmp``.  :func:`remove_stale_temporaries`
deletes any ``.tmp-*`` in the folders only ITKM Studio writes (earlier versions' temporaries
included), but in ``exports/`` -- the user's folder -- only names of that shape, so a user's own
``.tmp-notes.csv`` there is never taken for one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .errors import ItkmError

TMP_PREFIX = ".tmp-"
TMP_SUFFIX = ".itkm-tmp"

_DIR_FD = os.open in os.supports_dir_fd and os.replace in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class FolderChangedError(ItkmError):
    """The destination folder is no longer the one that was checked (replaced, e.g. by a link)."""


def temporary_name(target: str) -> str:
    """A fresh temporary name for ``target`` (random, recognisable by :func:`is_temporary`)."""
    return f"{TMP_PREFIX}{target[:100]}.{secrets.token_hex(6)}{TMP_SUFFIX}"


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of this module's temporaries."""
    return name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)


def folder_id(folder: str | os.PathLike) -> tuple[int, int]:
    """Identity of a folder (device, inode), following links: what a check saw, for
    ``atomic_open(..., folder=...)`` to compare with what it writes into."""
    st = os.stat(folder)
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, encoding: str | None = None, newline: str | None = None,
                folder: tuple[int, int] | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on clean exit fsync and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.  ``folder``: the
    :func:`folder_id` of ``path``'s folder when it was checked; the folder is then not created,
    and a different folder there now raises :class:`FolderChangedError` before anything is written.
    """
    path = Path(path)
    if folder is None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if not _DIR_FD:  # no openat/renameat here (Windows): the same steps by path
        with _atomic_open_by_path(path, mode, encoding, newline, folder) as fh:
            yield fh
        return
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        if folder is None:
            raise
        raise FolderChangedError(f"the folder {path.parent} is gone since it was checked; nothing was written") from None
    try:
        if folder is not None:
            st = os.fstat(dfd)
            if (st.st_dev, st.st_ino) != tuple(folder):
                raise FolderChangedError(
                    f"the folder {path.parent} was replaced (by a link, or another folder) after it was checked; "
                    "nothing was written -- look at that folder and run the command again")
        fd, tmp = _create_temporary(dfd, path.name)
        try:
            _give_mode(fd, path.name, dfd)
            with os.fdopen(fd, mode, encoding=encoding, newline=newline) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            with contextlib.suppress(OSError):
                os.fsync(dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    finally:
        os.close(dfd)


def _create_temporary(dfd: int, target: str) -> tuple[int, str]:
    """A new, empty, private temporary in the folder ``dfd``: created exclusively, never through
    a link (a name that exists -- a link planted there included -- is skipped)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
    for _ in range(100):
        name = temporary_name(target)
        try:
            return os.open(name, flags, 0o600, dir_fd=dfd), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {target}")


@contextlib.contextmanager
def _atomic_open_by_path(path: Path, mode: str, encoding, newline, folder) -> Iterator[IO]:
    if folder is not None and folder_id(path.parent) != tuple(folder):
        raise FolderChangedError(f"the folder {path.parent} was replaced after it was checked; nothing was written")
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name[:100] + ".", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        _give_mode(fd, str(path), None)
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _give_mode(fd: int, name: str, dfd: int | None) -> None:
    """The mode the file ``name`` will have: an existing regular file's own mode (replacing a
    file must not change who may read it), else what a plain ``open()`` would give (0666 less the
    umask) -- a temporary's private 0600 would otherwise leak into every export."""
    if os.name != "posix":
        return
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        mode = st.st_mode & 0o7777 if stat.S_ISREG(st.st_mode) else 0o666 & ~current_umask()
    except OSError:
        mode = 0o666 & ~current_umask()
    with contextlib.suppress(OSError):
        os.fchmod(fd, mode)


def current_umask() -> int:
    """The process umask, read without changing it (``/proc``), else by the set-and-restore dance."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes, *, folder: tuple[int, int] | None = None) -> None:
    with atomic_open(path, "wb", folder=folder) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding, newline="") as fh:
        fh.write(text)


def atomic_save_npy(path: str | Path, array) -> None:
    import numpy as np

    with atomic_open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def remove_stale_temporaries(folder: str | Path, user_folders: tuple[str, ...] = ("exports",)) -> int:
    """Delete leftover temporaries under ``folder`` (recursively, never following a link into
    another folder; a link that has a temporary's name is removed itself).  Returns how many.

    In the folders only ITKM Studio writes every ``.tmp-*`` goes (earlier versions' temporaries
    had other shapes); inside ``user_folders`` (``exports/``) only names :func:`is_temporary`
    recognises, since a file of the user's there may start with ``.tmp-``."""
    n = 0
    root = os.fspath(folder)
    if not os.path.isdir(root):
        return 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel = os.path.relpath(dirpath, root)
        users = rel != os.curdir and rel.split(os.sep)[0] in user_folders
        for name in list(dirnames) + filenames:
            if not (is_temporary(name) or (not users and name.startswith(TMP_PREFIX))):
                continue
            p = os.path.join(dirpath, name)
            try:
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                else:
                    os.unlink(p)
                n += 1
            except OSError:
                continue
            if name in dirnames:
                dirnames.remove(name)
    return n


@contextlib.contextmanager
def private_folder(parent: str | Path) -> Iterator[Path]:
    """A new, empty folder only this process knows (``mkdtemp``: created exclusively, mode 0700)
    inside ``parent``, named as a temporary; removed with what is left in it on exit.  For tools
    that write by path (SQLite's backup): nothing can have been planted in it."""
    path = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, suffix=TMP_SUFFIX, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fsync_folder(folder: str | Path) -> None:
    _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
