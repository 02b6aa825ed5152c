"""Checkpoint files: atomic writes, loads that never run code, and content keys.

* :func:`save_checkpoint` writes through :func:`itkm_engine.atomic.atomic_open`, so a crash
  mid-write leaves the previous checkpoint intact.
* :func:`load_checkpoint` uses ``torch.load(weights_only=True)``: tensors, numbers, strings,
  lists and dicts only.  A checkpoint is a file users pass around; one whose pickle would
  import and call code (a crafted ``__reduce__``) is refused with :class:`UnsafeCheckpointError`
  before anything runs.  Before any tensor is read, :func:`check_archive` compares the zip
  archive's sizes with what its tensors (and the model's architecture) need, so a file re-zipped
  with gigabytes of deflated zeros is refused instead of decompressed.
* :func:`checkpoint_key` names a checkpoint by its content, so cached features follow the
  weights, not the file name; hashing is cached by (path, size, mtime) because checkpoints of a
  ViT-B are hundreds of MB.
* :func:`check_model_config` / :func:`check_model_state` refuse a checkpoint's model before it is
  built.  Building it is :mod:`.loading`'s (this module never imports the model).
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
from ..config import MAX_IMAGE_AREA
from ..errors import ItkmError, UnsafeCheckpointError
from ..vocabulary import GROUPS, SCENARIOS
from .towers import TOWERS
from .weights import register_configs

__all__ = ["save_checkpoint", "load_checkpoint", "check_archive", "checkpoint_key", "KEY_LENGTH", "CheckpointWriteError",
           "check_model_config", "check_model_state", "MAX_PARAMETERS"]

#: Rough parameter count above which a checkpoint's architecture is refused before it is built
#: (ViT-H-14 is ~1e9; ViT-bigG-14, ~2.5e9, took a process past 8 GB just to be built).
MAX_PARAMETERS = 1.2e9
#: Most scenarios / groups a checkpoint may list (each one is an embedding row or a stem copy).
MAX_NAMES = 64

#: Largest pickle (``data.pkl``: the structure, names, settings) a checkpoint may hold; ITKM's
#: are well under a megabyte.
MAX_PICKLE_BYTES = 64 << 20
#: Largest archive entry that is neither the pickle nor a tensor (version and byte-order marks).
_SMALL_ENTRY = 64 << 10
#: How much an entry may expand beyond its size in the file: torch.save stores entries as they
#: are, and weights barely compress, so anything more is a decompression bomb.
_MAX_EXPANSION = 4
_EXPANSION_SLACK = 1 << 20

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
        check_archive(path)  # sizes first: nothing of a bomb is decompressed
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


def check_archive(path: str | os.PathLike) -> None:
    """Refuse a checkpoint archive whose content is larger than what it holds needs, before any
    tensor is read (:class:`ItkmError` naming the file and the entry):

    * the pickle (``data.pkl``) above :data:`MAX_PICKLE_BYTES`; any entry that expands more than
      a few times its stored size (``torch.save`` stores entries uncompressed) -- from the zip's
      directory alone;
    * a tensor's entry (``data/<key>``) larger than the bytes the pickle declares for that key,
      another entry above a few KB -- the declarations are read from the pickle's opcodes
      (:func:`_declared_storages`: nothing is unpickled);
    * model weights (``model.state_dict``) larger than twice what the architecture named in
      ``model.model_config`` has (:func:`_estimated_parameters`, float32) -- the tensors' sizes
      come from a ``map_location="meta"`` load, which reads no tensor data.

    A file that is not a zip archive is left to ``torch.load`` (an old format, or damaged)."""
    import zipfile

    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    with zf:
        infos = zf.infolist()
        pickles = [i for i in infos if i.filename.endswith("data.pkl")]
        for info in infos:
            name = info.filename
            if info in pickles and info.file_size > MAX_PICKLE_BYTES:
                raise ItkmError(f"checkpoint {path} was refused: its pickle {name} would expand to "
                                f"{_mb(info.file_size)}; ITKM checkpoints hold well under {_mb(MAX_PICKLE_BYTES)}")
            if info.file_size > _MAX_EXPANSION * info.compress_size + _EXPANSION_SLACK:
                raise ItkmError(f"checkpoint {path} was refused: its entry {name} would expand from "
                                f"{_mb(info.compress_size)} to {_mb(info.file_size)} (a decompression bomb; "
                                "checkpoints store their tensors uncompressed). Use a checkpoint from a source you "
                                "trust, or train the round again.")
        if len(pickles) != 1:
            return  # not torch's layout: torch.load says what is wrong with it
        prefix = pickles[0].filename[: -len("data.pkl")]
        declared = _declared_storages(zf.read(pickles[0]))
    for info in infos:
        name = info.filename
        if info in pickles:
            continue
        key = name[len(prefix) + len("data/"):] if name.startswith(prefix + "data/") else None
        if declared is not None and key is not None:
            allowed, what = declared.get(key, 0), "its tensor needs"
        elif key is None:
            allowed, what = _SMALL_ENTRY, "such an entry needs at most"
        else:
            continue  # opcodes this check does not follow: the expansion check above still holds
        if info.file_size > max(allowed, 0):
            raise ItkmError(f"checkpoint {path} was refused: its entry {name} holds {_mb(info.file_size)} where "
                            f"{what} {_mb(allowed)}; it was not written by ITKM Studio")
    skeleton = torch.load(path, map_location="meta", weights_only=True)
    model = skeleton.get("model") if isinstance(skeleton, dict) else None
    if isinstance(model, dict) and isinstance(model.get("state_dict"), dict) and isinstance(model.get("model_config"), dict):
        name = model["model_config"].get("name")
        if isinstance(name, str) and name in _known_architectures():
            weights = sum(int(t.untyped_storage().nbytes()) for t in _unique_storages(model["state_dict"]))
            budget = 2 * 4 * _estimated_parameters(name) + (16 << 20)
            if weights > budget:
                raise ItkmError(f"checkpoint {path} was refused: its weights take {_mb(weights)}, more than the "
                                f"model {name!r} needs (about {_mb(budget // 2)}); it was not written by ITKM Studio")


#: Bytes per element of the storage types torch.save names in a checkpoint's pickle.
_STORAGE_BYTES = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
                  "Byte": 1, "Bool": 1, "ComplexFloat": 8, "ComplexDouble": 16, "Untyped": 1}


def _declared_storages(data: bytes) -> dict[str, int] | None:
    """``{key: bytes}`` of every storage a torch.save pickle refers to (its persistent ids
    ``('storage', <type>, key, location, numel)``), found by following the pickle's opcodes on a
    small stack of plain values -- nothing is built or imported.  ``None`` for opcodes this does
    not follow (the size checks that need it are then skipped)."""
    import pickletools

    mark = object()
    stack: list = []
    memo: dict = {}
    out: dict[str, int] = {}

    def pop_mark() -> list:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is mark:
                items = stack[i + 1:]
                del stack[i:]
                return items
        raise ValueError("no mark")

    try:
        for op, arg, _ in pickletools.genops(data):
            code = op.name
            if code in ("PROTO", "FRAME"):
                continue
            if code == "STOP":
                break
            if code == "MARK":
                stack.append(mark)
            elif code in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BININT", "BININT1",
                          "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT", "SHORT_BINSTRING",
                          "BINSTRING", "STRING", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8"):
                stack.append(arg)
            elif code == "GLOBAL":
                stack.append(("global", arg))
            elif code == "STACK_GLOBAL":
                name, module = stack.pop(), stack.pop()
                stack.append(("global", f"{module} {name}"))
            elif code in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[arg] = stack[-1]
            elif code == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif code in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo[arg])
            elif code == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif code in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(code[-1])
                items = stack[-n:]
                del stack[-n:]
                stack.append(tuple(items))
            elif code in ("EMPTY_TUPLE", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET", "NONE", "NEWTRUE", "NEWFALSE"):
                stack.append(None if code != "EMPTY_TUPLE" else ())
            elif code == "BINPERSID":
                pid = stack.pop()
                if (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[4], int)
                        and isinstance(pid[2], str)):
                    kind = pid[1][1].split(" ")[-1] if isinstance(pid[1], tuple) else ""
                    size = _STORAGE_BYTES.get(kind.removesuffix("Storage"), 16)
                    out[pid[2]] = max(out.get(pid[2], 0), pid[4] * size)
                else:
                    return None
                stack.append(None)
            elif code in ("REDUCE", "NEWOBJ"):
                del stack[-2:]
                stack.append(None)
            elif code in ("BUILD", "APPEND", "POP"):
                stack.pop()
            elif code == "SETITEM":
                del stack[-2:]
            elif code in ("SETITEMS", "APPENDS", "ADDITEMS", "POP_MARK"):
                pop_mark()
            elif code in ("DICT", "LIST", "FROZENSET"):
                pop_mark()
                stack.append(None)
            elif code == "DUP":
                stack.append(stack[-1])
            else:
                return None
    except (ValueError, IndexError, KeyError, TypeError):
        return None
    return out


def _unique_storages(obj):
    seen = set()
    for t in _tensors(obj):
        key = getattr(t.untyped_storage(), "_checkpoint_offset", None)
        key = id(t) if key is None else key
        if key not in seen:
            seen.add(key)
            yield t


def _tensors(obj, depth: int = 0):
    """Every tensor inside nested dicts / lists / tuples."""
    if depth > 32:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v, depth + 1)


def _mb(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MB" if n < (1 << 30) else f"{n / (1 << 30):,.2f} GB"


def check_model_config(d: dict) -> None:
    """Refuse a checkpoint's ``model_config`` that would build something unknown or absurdly large,
    BEFORE anything is built: unknown architecture or tower, image sides outside 16..1024 or an
    area above the cap, ``n_ctx`` outside 1..16, an unknown feature kind, a non-finite scale, or an
    architecture whose estimated size passes :data:`MAX_PARAMETERS`.  Raises :class:`ItkmError`."""
    import math

    if not isinstance(d, dict):
        raise ItkmError(f"the checkpoint's model settings are a {type(d).__name__}, not a table")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise ItkmError("the checkpoint names no model architecture")
    tower = d.get("tower", "clip")
    if tower not in TOWERS:
        raise ItkmError(f"the checkpoint asks for an unknown image tower {tower!r} (known: {', '.join(TOWERS)})")
    known = _known_architectures()
    if name not in known:
        raise ItkmError(f"the checkpoint asks for an unknown model architecture {name!r}; it was not written "
                        "by ITKM Studio, or by a version with other models")
    size = d.get("image_size")
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        raise ItkmError(f"the checkpoint's image_size {size!r} is not [height, width]")
    if not all(16 <= v <= 1024 for v in size) or size[0] * size[1] > MAX_IMAGE_AREA:
        raise ItkmError(f"the checkpoint's image_size {list(size)} is out of range (each side 16..1024, "
                        f"at most {MAX_IMAGE_AREA} pixels)")
    n_ctx = d.get("n_ctx", 4)
    if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or not 1 <= n_ctx <= 16:
        raise ItkmError(f"the checkpoint's n_ctx {n_ctx!r} is out of range (1..16)")
    if d.get("feature", "concat") not in ("concat", "proj"):
        raise ItkmError(f"the checkpoint's feature kind {d.get('feature')!r} is unknown (concat or proj)")
    scale = d.get("scenario_scale", 1.0)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ItkmError(f"the checkpoint's scenario_scale {scale!r} is not a finite number")
    est = _estimated_parameters(name)
    if est > MAX_PARAMETERS:
        raise ItkmError(f"the checkpoint asks for model {name!r} (~{est / 1e9:.1f} billion parameters), larger "
                        f"than ITKM Studio builds (~{MAX_PARAMETERS / 1e9:.1f} billion at most); refused")


def _known_architectures() -> set[str]:
    import open_clip

    register_configs()
    return set(open_clip.list_models())


def _estimated_parameters(name: str) -> float:
    """~12 * layers * width^2 per transformer tower (ResNet towers: counted as a ViT-L)."""
    import open_clip

    cfg = open_clip.get_model_config(name) or {}
    total = 0.0
    for part in ("vision_cfg", "text_cfg"):
        c = cfg.get(part) or {}
        layers, width = c.get("layers", 12), c.get("width", 768)
        if isinstance(layers, (list, tuple)):
            layers, width = 24, 1024
        total += 12.0 * float(layers) * float(width) ** 2
    return total


def check_model_state(state: dict, path: str | os.PathLike) -> None:
    """A model state (``state["model"]`` of a checkpoint or progress file) that may be built:
    its config passes :func:`check_model_config`, its scenario/group lists are short lists of
    names, and every weight is finite (a NaN weight makes every feature NaN and every query empty)."""
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise ItkmError(f"checkpoint {path} holds no model weights; it is not an ITKM checkpoint")
    try:
        check_model_config(state.get("model_config"))
    except ItkmError as exc:
        raise ItkmError(f"checkpoint {path} was refused: {exc}") from None
    for what, names, allowed in (("scenarios", state.get("scenarios"), SCENARIOS), ("groups", state.get("groups"), GROUPS)):
        if (not isinstance(names, (list, tuple)) or not 0 < len(names) <= MAX_NAMES
                or any(n not in allowed for n in names)):
            raise ItkmError(f"checkpoint {path} was refused: its {what} list is not a list of known names")
    bad = [k for k, v in state["state_dict"].items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ItkmError(f"checkpoint {path} holds NaN or infinite weights ({', '.join(bad[:3])}); training diverged "
                        "before it was written. Delete it and train that round again (itkm train --restart-round), "
                        "or use an earlier checkpoint.")


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
