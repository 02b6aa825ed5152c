"""The safe directory walker every layout scans with.

``os.scandir``, entries sorted by name (deterministic order), hidden entries (``.*``) and
``__MACOSX`` skipped.  Symlinks to folders are followed, but every folder is identified by
``(st_dev, st_ino)`` and visited once: a loop or a second link to the same folder becomes a
:class:`Rejected` entry, not an endless walk.  A link to a folder outside the ingested folder is
not followed, an ITKM workspace inside a source is never scanned, and unreadable folders become
rejects too.  :class:`Walker` walks one scan; :func:`top_level` and :func:`peek` are the cheap
listings layout detection looks at.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .imageio import is_image_name

__all__ = ["MAX_DEPTH", "WORKSPACE_MARKER", "Rejected", "Walker", "top_level", "peek"]

#: Deepest folder nesting a scan follows below a camera (or dataset) folder.
MAX_DEPTH = 8

#: Image types users commonly have that we do not ingest: reported, so the user knows why.
_OTHER_IMAGE_EXTENSIONS = frozenset(
    {".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jp2", ".j2k", ".jxl", ".ppm", ".pgm", ".pbm", ".ico"}
)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A file or folder under the root that cannot be used, and why (a few words for the user)."""

    relpath: str
    reason: str
    camera: str | None = None


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in ("__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information")


def _join(rel: str, name: str) -> str:
    return name if not rel else f"{rel}/{name}"


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:  # ELOOP on a self-referencing link, EACCES ...: handled as a (bad) file
        return False


#: The file that marks an ITKM workspace folder; a workspace inside a source is never scanned
#: (its checkpoints/features folders would otherwise change layout detection).
WORKSPACE_MARKER = "itkm.sqlite"


def _is_workspace(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(path, WORKSPACE_MARKER))


def _inside_root(path: str, real_root: str) -> bool:
    """True when ``path`` (links resolved) is the root or below it."""
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _folder_error(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "folder not readable (permission denied)"
    if exc.errno in (errno.ELOOP, errno.ENOENT):
        return "broken or looping link"
    return f"folder not readable ({exc.strerror or exc})"


class Walker:
    """One scan's directory walker: remembers visited folders by (st_dev, st_ino)."""

    def __init__(self, root: Path) -> None:
        self.root = os.fspath(root)
        self.real_root = os.path.realpath(self.root)
        self.seen: dict[tuple[int, int], str] = {}
        try:
            st = os.stat(self.root)
            self.seen[(st.st_dev, st.st_ino)] = ""
        except OSError:
            pass

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def enter(self, rel: str) -> Rejected | None:
        """Register folder ``rel`` as visited; a reject when it cannot or must not be entered."""
        try:
            st = os.stat(self.path(rel))
        except OSError as exc:
            return Rejected(rel, _folder_error(exc))
        if not _inside_root(self.path(rel), self.real_root):
            return Rejected(rel, "link to a folder outside the ingested folder (not followed; ingest that folder "
                                 "itself if its images belong here)")
        key = (st.st_dev, st.st_ino)
        if key in self.seen:
            first = self.seen[key] or "the root folder"
            return Rejected(rel, f"folder already scanned as {first} (symlink loop or duplicate link)")
        self.seen[key] = rel
        return None

    def entries(self, rel: str) -> tuple[list[tuple[str, bool]], Rejected | None]:
        """Sorted (name, is_dir) of the visible entries of folder ``rel``."""
        try:
            with os.scandir(self.path(rel)) as it:
                out = [(e.name, d) for e in it if not _hidden(e.name)
                       for d in (_is_dir(e),) if not (d and _is_workspace(e.path))]
        except OSError as exc:
            return [], Rejected(rel, _folder_error(exc))
        out.sort()
        return out, None

    def listing(self, rel: str, *, enter: bool = True) -> tuple[list[tuple[str, bool]], Rejected | None]:
        """Enter folder ``rel`` (:meth:`enter`; ``enter=False`` when the caller already did) and list
        it (:meth:`entries`): its entries, or no entries and the reject that says why."""
        if enter:
            bad = self.enter(rel)
            if bad is not None:
                return [], bad
        return self.entries(rel)

    def files(self, rel: str, depth: int = MAX_DEPTH, *, enter: bool = True) -> Iterator[str | Rejected]:
        """Relpaths of image files under folder ``rel`` (recursively), and rejects.

        ``enter=False`` when the caller already registered ``rel`` with :meth:`enter`.
        """
        entries, bad = self.listing(rel, enter=enter)
        if bad is not None:
            yield bad
            return
        for name, is_dir in entries:
            child = _join(rel, name)
            if is_dir:
                if depth <= 0:
                    yield Rejected(child, "folder nested too deep")
                else:
                    yield from self.files(child, depth - 1)
            elif is_image_name(name):
                yield child
            else:
                ext = os.path.splitext(name)[1].lower()
                if ext in _OTHER_IMAGE_EXTENSIONS:
                    yield Rejected(child, f"unsupported file type {ext} (use jpg, png, bmp or webp)")


def top_level(root: Path) -> tuple[list[str], list[str]]:
    """(sub-folder names, image file names) directly in ``root``; empty lists when unreadable."""
    dirs, images = [], []
    real_root = os.path.realpath(root)
    try:
        with os.scandir(root) as it:
            for e in it:
                if _hidden(e.name):
                    continue
                if _is_dir(e):
                    if _is_workspace(e.path) or (e.is_symlink() and not _inside_root(e.path, real_root)):
                        continue  # never part of the layout (see Walker.enter)
                    dirs.append(e.name)
                elif is_image_name(e.name):
                    images.append(e.name)
    except OSError:
        pass
    dirs.sort()
    images.sort()
    return dirs, images


def peek(folder: Path | str, limit: int = 64) -> tuple[list[str], list[str]]:
    """Like :func:`top_level` but stops after ``limit`` entries: cheap on folders of 100k files."""
    dirs, images = [], []
    try:
        with os.scandir(folder) as it:
            for i, e in enumerate(it):
                if i >= limit:
                    break
                if _hidden(e.name):
                    continue
                if _is_dir(e):
                    if not _is_workspace(e.path):
                        dirs.append(e.name)
                elif is_image_name(e.name):
                    images.append(e.name)
    except OSError:
        pass
    return dirs, images
