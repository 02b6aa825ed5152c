"""Write-to-temporary-then-rename, so a file is either the old one or the whole new one.

Used for checkpoints, feature chunks, exports and config files.  A crash (kill -9, power loss,
disk full) leaves at worst a stray ``.tmp-*`` file beside the target, which
:func:`remove_stale_temporaries` clears on the next writer open.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, encoding: str | None = None, newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on clean exit fsync and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        _give_mode(fd, path)
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _give_mode(fd: int, path: Path) -> None:
    """The mode the file at ``path`` will have: an existing regular file's own mode (replacing a
    file must not change who may read it), else what a plain ``open()`` would give (0666 less the
    umask) -- ``mkstemp``'s private 0600 would otherwise leak into every export."""
    if os.name != "posix":
        return
    try:
        st = os.stat(path, follow_symlinks=False)
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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding, newline="") as fh:
        fh.write(text)


def atomic_save_npy(path: str | Path, array) -> None:
    import numpy as np

    with atomic_open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete leftover temporaries under ``folder`` (recursively).  Returns how many."""
    n = 0
    folder = Path(folder)
    if not folder.exists():
        return 0
    for p in folder.rglob(TMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
