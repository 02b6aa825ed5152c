"""Plain records the workspace hands out and takes in.

They live apart from :mod:`itkm_engine.workspace` so that data loading, training, evaluation and
the app can name them (type hints, construction in tests) without importing SQLite code.

:class:`ImageTable` and :class:`IdentityTable` are *columnar*: one numpy array (or list) per field,
all of length N, because the engine works on whole sets of images at once (a million rows as
Python objects would cost seconds and gigabytes; as arrays they cost milliseconds and megabytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_STATUSES",
    "ROUND_STATUSES",
    "ImageRecord",
    "ImageTable",
    "Source",
    "Camera",
    "Reject",
    "RoundInfo",
    "RoundResult",
    "IdentityTable",
    "rows_of",
]

#: ``ok``: usable; ``missing``: not found at the last scan of its source (kept, never deleted, so
#: results that refer to it stay valid); ``unreadable``: found but could not be decoded.
IMAGE_STATUSES: tuple[str, ...] = ("ok", "missing", "unreadable")

#: ``running`` is also what a round looks like after a crash; the trainer resumes it.
ROUND_STATUSES: tuple[str, ...] = ("running", "done", "cancelled", "failed")


@dataclass(frozen=True)
class ImageRecord:
    """One image found by ingestion, as handed to :meth:`Workspace.upsert_images`.

    ``relpath`` is relative to the source root, with ``/`` separators on every platform, so a
    workspace survives moving the dataset (only the source root changes).
    """

    relpath: str
    camera: str
    width: int
    height: int
    timestamp: float  # seconds since the epoch: from the file name when it carries one, else mtime
    mtime: float
    size_bytes: int
    person_id: int = -1  # from the layout; -1 when unknown.  Only used for evaluation.


@dataclass
class ImageTable:
    """Images as columns, sorted by ``id``.

    ``path`` is the absolute path (source root joined with ``relpath``) ready to open.
    ``camera``/``scenario``/``group``/``status`` are numpy object arrays of ``str`` so that
    ``table.camera == "cam1"`` gives a boolean mask.  ``camera_id``/``source_id`` are extra
    integer columns (cheap, and handy for grouping without string compares).
    """

    id: np.ndarray  # int64
    path: list[str]
    relpath: list[str]
    camera: np.ndarray  # object (str)
    scenario: np.ndarray  # object (str)
    group: np.ndarray  # object (str)
    width: np.ndarray  # int32
    height: np.ndarray  # int32
    timestamp: np.ndarray  # float64 (NaN when unknown)
    person_id: np.ndarray  # int64
    status: np.ndarray  # object (str), one of IMAGE_STATUSES
    camera_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64
    source_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64

    def __post_init__(self) -> None:
        n = len(self.id)
        # Tables built by hand (tests) may leave the integer id columns out.
        if len(self.camera_id) != n:
            self.camera_id = np.full(n, -1, np.int64)
        if len(self.source_id) != n:
            self.source_id = np.full(n, -1, np.int64)
        for f in fields(self):
            if len(getattr(self, f.name)) != n:
                raise ValueError(f"ImageTable column {f.name!r} has {len(getattr(self, f.name))} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.id)

    @classmethod
    def empty(cls) -> "ImageTable":
        obj = np.zeros(0, dtype=object)
        return cls(
            id=np.zeros(0, np.int64),
            path=[],
            relpath=[],
            camera=obj,
            scenario=obj.copy(),
            group=obj.copy(),
            width=np.zeros(0, np.int32),
            height=np.zeros(0, np.int32),
            timestamp=np.zeros(0, np.float64),
            person_id=np.zeros(0, np.int64),
            status=obj.copy(),
        )

    def group_key(self) -> np.ndarray:
        """``"scenario/group"`` per image (object array): pseudo-labels are computed per group key."""
        if len(self) == 0:
            return np.zeros(0, dtype=object)
        # Few distinct (scenario, group) pairs: build each key once and scatter (string ops on a
        # million rows would cost seconds).
        if len(self.camera_id) and int(self.camera_id.min()) >= 0:
            uniq, first, inverse = np.unique(self.camera_id, return_index=True, return_inverse=True)
            keys = np.array([f"{self.scenario[i]}/{self.group[i]}" for i in first], dtype=object)
            return keys[inverse.reshape(-1)]
        cache: dict[tuple[str, str], str] = {}
        return np.array(
            [cache.get((s, g)) or cache.setdefault((s, g), f"{s}/{g}") for s, g in zip(self.scenario, self.group)],
            dtype=object,
        )

    def subset(self, mask: np.ndarray | list[int] | slice) -> "ImageTable":
        """Rows selected by a boolean mask, an index array or a slice (order kept)."""
        if isinstance(mask, slice):
            idx = np.arange(len(self))[mask]
        else:
            m = np.asarray(mask)
            if m.dtype == bool:
                if m.shape != (len(self),):
                    raise ValueError(f"boolean mask has shape {m.shape}, expected ({len(self)},)")
                idx = np.flatnonzero(m)
            else:
                idx = m.astype(np.int64, copy=False)
        out = {}
        for f in fields(self):
            col = getattr(self, f.name)
            if isinstance(col, list):
                out[f.name] = [col[i] for i in idx]
            else:
                out[f.name] = col[idx]
        return ImageTable(**out)

    def index_of(self, image_ids: np.ndarray | list[int]) -> np.ndarray:
        """Row positions of ``image_ids`` (``-1`` where absent).  ``id`` is sorted, so this is a binary search."""
        ids = np.asarray(image_ids, dtype=np.int64)
        pos = np.searchsorted(self.id, ids)
        pos_c = np.minimum(pos, max(len(self) - 1, 0))
        ok = (pos < len(self)) & (self.id[pos_c] == ids) if len(self) else np.zeros(len(ids), bool)
        return np.where(ok, pos_c, -1)


@dataclass(frozen=True)
class Source:
    """One ingested root folder.  ``root`` is absolute; images keep paths relative to it."""

    id: int
    root: Path
    layout: str
    added_at: float
    site: str = "default"  # people are shared only within a site (Stage II separation)


@dataclass(frozen=True)
class Camera:
    """A camera and its scenario/group.

    ``scenario``/``group`` are what training uses; ``guessed_*`` what ingestion guessed.  When the
    operator corrected them (``user_set``), re-ingestion updates only the guesses.
    ``n_images`` counts usable (``ok``) images, ``n_missing``/``n_unreadable`` the others, and
    ``n_rejected`` files refused at ingestion (see :meth:`Workspace.rejects`).
    """

    id: int
    name: str
    source_id: int
    scenario: str
    group: str
    guessed_scenario: str | None
    guessed_group: str | None
    flag: str | None  # e.g. "mixed" when the guess saw both infrared and visible images
    user_set: bool
    n_images: int
    n_missing: int
    n_rejected: int
    median_height: float | None
    sample_path: str | None
    n_unreadable: int = 0

    @property
    def group_key(self) -> str:
        return f"{self.scenario}/{self.group}"


@dataclass(frozen=True)
class Reject:
    """A file ingestion refused (unreadable, too small, not an image...), with why."""

    source_id: int
    relpath: str
    reason: str
    seen_at: float
    camera: str | None = None
    path: str = ""  # absolute


@dataclass(frozen=True)
class RoundInfo:
    """One training round as recorded (``stage``/``epoch`` = last reached, for resume)."""

    number: int
    status: str  # one of ROUND_STATUSES
    started: float
    finished: float | None
    checkpoint: str | None
    stage: str | None
    epoch: int | None
    config_json: str
    base_checkpoint: str | None = None


@dataclass
class RoundResult:
    """A finished training round, as ``trainer.train`` returns it -- and as the app learns it from
    the child process that trained (``child_job.run_child("train", ...)``)."""

    round: int
    checkpoint: Path
    seconds: float
    epochs: list[dict] = field(default_factory=list)  # the round's epoch log (Workspace.epoch_log)


@dataclass
class IdentityTable:
    """Final identity per image for one checkpoint (columns of equal length, sorted by image id).

    From :meth:`Session.identities <itkm_engine.session.Session.identities>` ``identity`` is the
    stable id and ``provisional`` marks images that joined their nearest identity after it was
    computed (ingested since); ``None`` where not known (all False)."""

    checkpoint: str | None
    image_id: np.ndarray  # int64
    identity: np.ndarray  # int64
    confidence: np.ndarray  # float32
    provisional: np.ndarray | None = None  # bool

    def __len__(self) -> int:
        return len(self.image_id)


def rows_of(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Position of each ``wanted`` id in the (unsorted, unique) ``ids`` array; -1 where absent.

    The one ids -> rows lookup of the engine: use it instead of a hand-written searchsorted.
    Sorted ``ids`` (image tables, identity tables) are searched as they are, without a sort."""
    ids = np.asarray(ids)
    wanted = np.asarray(wanted)
    if not len(ids):
        return np.full(len(wanted), -1, dtype=np.int64)
    if bool((ids[1:] > ids[:-1]).all()):
        rows = np.clip(np.searchsorted(ids, wanted), 0, len(ids) - 1)
    else:
        order = np.argsort(ids)
        rows = order[np.clip(np.searchsorted(ids, wanted, sorter=order), 0, len(ids) - 1)]
    return np.where(ids[rows] == wanted, rows, -1)
