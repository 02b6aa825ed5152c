"""Checkpoint files: atomic writes, loads that never run code, and content keys.

* :func:`save_checkpoint` writes through :func:`itkm_engine.atomic.atomic_open`, so a crash
  mid-write leaves the previous checkpoint intact.
* :func:`load_checkpoint` uses ``torch.load(weights_only=True)``: tensors, numbers, strings,
  lists and dicts only.  A checkpoint is a file users pass around; one whose pickle would
  import and call code (a crafted ``__reduce__``) is refused with :class:`UnsafeCheckpointError`
  before anything runs.
* :func:`checkpoint_key` names a checkpoint by its content, so cached features follow the
  weights, not the file name; hashing is cached by (path, size, mtime) because checkpoints of a
  ViT-B are hundreds of MB.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import threading
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_open
from ..errors import ItkmError, UnsafeCheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "checkpoint_key", "KEY_LENGTH", "CheckpointWriteError"]

#: Hex digits of the sha256 kept in :func:`checkpoint_key`.
KEY_LENGTH = 16
_HASH_CHUNK = 4 << 20

_key_cache: dict[tuple[str, int, int], str] = {}
_key_lock = threading.Lock()


class CheckpointWriteError(ItkmError, OSError):
    """A checkpoint could not be written (disk full, read-only folder).  An ItkmError, so the user
    sees one clear line; still an OSError, so code that handles failed writes keeps doing so."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically."""
    if not isinstance(state, dict):
        raise TypeError(f"a checkpoint state is a dict, got {type(state).__name__}")
    path = Path(path)
    try:
        with atomic_open(path, "wb") as fh:
            torch.save(state, fh)
    except (OSError, RuntimeError) as e:
        # A full disk surfaces as OSError(ENOSPC) from our file, or as a RuntimeError from
        # torch's zip writer ("unexpected pos ...") when its own write came up short.
        raise CheckpointWriteError(f"cannot write the checkpoint {path}: {_write_failure(path, e)}; "
                                   "the previous file there is unchanged") from e
    return path


def _write_failure(path: Path, e: BaseException) -> str:
    """Why a write failed, in words: a full disk is named as such (with the space left)."""
    import errno
    import shutil

    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < 64 << 20):
        return f"the disk is full ({(free or 0) // (1 << 20)} MB free); free some space and run it again"
    return _short(e) or type(e).__name__


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` without executing any code.

    Raises :class:`UnsafeCheckpointError` for a pickle that needs code to load, and
    :class:`ItkmError` for a missing, unreadable, truncated or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise ItkmError(f"checkpoint {path} does not exist" if not path.exists() else f"checkpoint {path} is not a file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text or "GLOBAL" in text:
            what = re.search(r"GLOBAL ([\w.]+)", text)
            why = (
                f"loading it would run code ({what.group(1)})"
                if what
                else "it cannot be read without a full pickle load, which can run code"
            )
            raise UnsafeCheckpointError(
                f"checkpoint {path} was refused: {why}. ITKM checkpoints hold only tensors and "
                "plain values; do not use this file unless you trust where it came from, and then "
                "re-save it as plain weights."
            ) from None
        raise ItkmError(f"checkpoint {path} is damaged (not a readable checkpoint): {_short(e)}") from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, IndexError, AttributeError, TypeError) as e:
        raise ItkmError(
            f"checkpoint {path} is damaged or truncated (an interrupted copy or a full disk?): "
            f"{_short(e) or type(e).__name__}. Use an earlier checkpoint or train the round again."
        ) from None
    if not isinstance(state, dict):
        raise ItkmError(f"checkpoint {path} holds a {type(state).__name__}, not an ITKM checkpoint dict")
    return state


def checkpoint_key(path: str | os.PathLike) -> str:
    """Short content hash of a checkpoint file (first 16 hex digits of its sha256).

    Cached per (absolute path, size, mtime): rehashing happens only when the file changed.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise ItkmError(f"checkpoint {path} cannot be read: {e.strerror or e}") from None
    ident = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _key_lock:
        cached = _key_cache.get(ident)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise ItkmError(f"checkpoint {path} cannot be read: {e.strerror or e}") from None
    key = digest.hexdigest()[:KEY_LENGTH]
    with _key_lock:
        _key_cache[ident] = key
    return key


def _short(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
