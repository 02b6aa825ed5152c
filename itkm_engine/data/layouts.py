"""Folder layouts: how a folder of person crops maps to cameras, person ids and timestamps.

A *layout* knows one way people store ReID crops on disk.  It can tell cheaply whether a folder
looks like it (:meth:`Layout.matches`, a few directory listings) and walk it
(:meth:`Layout.scan`), yielding one :class:`FoundImage` per image file and one :class:`Rejected`
per thing it cannot use (a file outside any camera folder, an unreadable folder, a symlink loop,
an unsupported file type).  Layouts never open image files: headers are read later, in parallel,
by :mod:`itkm_engine.data.ingest`.

Supported layouts, in the order :func:`detect_layout` tries them (most specific first):

=================== ===============================================================================
scenario-folders    ``ROOT/<scenario>/<camera>/...`` with scenario names from ``SCENARIOS``
sysu                SYSU-MM01: ``cam1..cam6/<pid>/*.jpg``; cam3 and cam6 are infrared
regdb               RegDB: ``Visible/<pid>/...`` and ``Thermal/<pid>/...``
prcc                PRCC: ``A/``, ``B/``, ``C/`` camera folders of ``<pid>/`` crops (clothing change)
ltcc                LTCC: flat folder(s) of ``PPP_CC_cCC_FFFFFF.png`` (pid, clothes, camera, frame)
market              Market-1501 / DukeMTMC / MSMT17 names in flat (split) folders
identity-folders    ``ROOT/<pid>/*.jpg`` (camera from Market-style names when present)
camera-folders      ``ROOT/<camera>/...``: one folder per camera (the general case)
=================== ===============================================================================

Paths
    ``FoundImage.relpath`` is the file-system path relative to the root, ``/``-separated, as a
    ``str`` that may hold surrogate escapes for non-UTF-8 bytes (so ``root / relpath`` opens the
    file).  Ingestion turns it into the storable text form with
    :func:`itkm_engine.data.imageio.relpath_to_text`.  Camera names are already in text form.

Timestamps
    Layouts whose file names carry a frame number give a *synthetic* time:
    ``NAME_EPOCH + (sequence - 1) * 1 day + frame / fps`` (Market-1501 and LTCC at 25 fps,
    DukeMTMC at 60 fps, MSMT17 from its date, time-of-day and frame).  Order and spacing are right
    within one video sequence of one camera; they are not wall-clock times.  Layouts without a
    frame leave ``timestamp`` as ``None`` and ingestion uses the file's mtime.

Scanning
    Every layout walks its folder with :class:`itkm_engine.data.walk.Walker` (entries sorted by
    name, hidden entries skipped, each folder visited once, links out of the root not followed);
    what it cannot use becomes a :class:`~itkm_engine.data.walk.Rejected` entry, not an error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

from ..errors import LayoutError
from .imageio import describe_path, is_image_name, relpath_to_text
from .walk import Rejected, Walker, peek, top_level
from ..vocabulary import SCENARIOS

__all__ = [
    "FoundImage",
    "ParsedName",
    "Layout",
    "LAYOUTS",
    "NAME_EPOCH",
    "parse_name",
    "detect_layout",
    "check_root",
    "get_layout",
    "supported_layouts_text",
]

#: Epoch of name-derived timestamps: 2000-01-01T00:00:00Z.  Fixed so re-ingest gives equal values.
NAME_EPOCH: float = 946_684_800.0
_DAY = 86_400.0

#: Name-convention layouts (market, ltcc) match when at least this fraction of sampled names parse.
MATCH_FRACTION = 2 / 3

#: Folder names of the standard splits of Market-1501, DukeMTMC-reID, MSMT17 and LTCC.
_SPLIT_DIRS = frozenset(
    {
        "bounding_box_train",
        "bounding_box_test",
        "query",
        "gt_bbox",
        "train",
        "test",
        "val",
        "gallery",
        "mask_train_v2",
        "mask_test_v2",
        "images",
    }
)


# --------------------------------------------------------------------------------------------
# results of a scan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FoundImage:
    """An image file a layout found (its header is not read yet).

    ``scenario`` / ``group`` are set when the layout itself says them (scenario folders, SYSU's
    infrared cameras, RegDB's thermal folder, PRCC/LTCC clothing change); otherwise ingestion
    guesses them from the pixels.
    """

    relpath: str
    camera: str
    person_id: int = -1
    timestamp: float | None = None
    scenario: str | None = None
    group: str | None = None


ScanItem = FoundImage | Rejected


@runtime_checkable
class Layout(Protocol):
    name: str
    description: str

    def matches(self, root: Path) -> bool:
        """Cheap test (a few directory listings) whether ``root`` looks like this layout."""
        ...

    def scan(self, root: Path) -> Iterator[ScanItem]:
        """Every image (and every reject) under ``root``, in a deterministic order."""
        ...


# --------------------------------------------------------------------------------------------
# file-name conventions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedName:
    """What a dataset-style file name says."""

    person_id: int
    camera: str
    timestamp: float | None
    convention: str  # "market" | "duke" | "msmt" | "ltcc"
    clothes: int | None = None


_MARKET = re.compile(r"^(-1|\d+)_c(\d+)s(\d+)_(\d+)_\d+")  # 0002_c1s1_000451_03.jpg, -1_c1s1_...
_DUKE = re.compile(r"^(-1|\d+)_c(\d+)_f(\d+)")  # 0001_c2_f0046182.jpg
_MSMT = re.compile(r"^(\d{4})_(\d{3})_(\d{2})_(?:(\d{2})(\d{2})(morning|noon|afternoon)_(\d+)_)?")
_LTCC = re.compile(r"^(\d+)_(\d+)_c(\d+)_(\d+)")  # 001_1_c11_015880.png
_MSMT_TIME_OF_DAY = {"morning": 8 * 3600.0, "noon": 12 * 3600.0, "afternoon": 15 * 3600.0}


def _frame_time(frame: int, fps: float, sequence: int = 1) -> float:
    return NAME_EPOCH + (sequence - 1) * _DAY + frame / fps


def parse_name(name: str) -> ParsedName | None:
    """Person id, camera and synthetic timestamp from a Market/Duke/MSMT/LTCC-style file name.

    Person id ``-1`` (Market's junk boxes) stays -1 (unknown); ``0000`` (distractors) stays 0.
    """
    m = _MARKET.match(name)
    if m:
        pid, cam, seq, frame = int(m[1]), int(m[2]), int(m[3]), int(m[4])
        return ParsedName(pid, f"c{cam}", _frame_time(frame, 25.0, max(seq, 1)), "market")
    m = _DUKE.match(name)
    if m:
        return ParsedName(int(m[1]), f"c{int(m[2])}", _frame_time(int(m[3]), 60.0), "duke")
    m = _LTCC.match(name)
    if m:
        return ParsedName(int(m[1]), f"c{int(m[3])}", _frame_time(int(m[4]), 25.0), "ltcc", clothes=int(m[2]))
    m = _MSMT.match(name)
    if m:
        ts = None
        if m[4] is not None:
            month, day = int(m[4]), int(m[5])
            ts = NAME_EPOCH + (month * 31 + day) * _DAY + _MSMT_TIME_OF_DAY[m[6]] + int(m[7]) / 25.0
        return ParsedName(int(m[1]), f"c{int(m[3])}", ts, "msmt")
    return None


_INT_DIR = re.compile(r"^-?\d+$")
_PRCC_TRAIN_NAME = re.compile(r"^([ABC])_cropped")  # PRCC train: <pid>/A_cropped_rgb001.jpg


def _int_dir(name: str) -> int | None:
    return int(name) if _INT_DIR.match(name) else None


def _has_images(folder: Path, depth: int = 1) -> bool:
    """True when ``folder`` holds an image directly or within ``depth`` levels (peeking only)."""
    dirs, images = peek(folder)
    if images:
        return True
    if depth > 0:
        return any(_has_images(Path(folder) / d, depth - 1) for d in sorted(dirs)[:3])
    return False


def _sample_names(root: Path, limit: int = 64) -> list[str]:
    """Image file names at the root and in split-like sub-folders (for name-convention layouts)."""
    dirs, images = top_level(root)
    names = list(images[:limit])
    for d in dirs:
        if len(names) >= limit:
            break
        sub_dirs, sub_images = peek(root / d, limit)
        names.extend(sub_images[: limit - len(names)])
        for sd in sorted(sub_dirs)[:3]:  # MSMT17: train/<pid>/...
            if len(names) >= limit:
                break
            names.extend(peek(root / d / sd, limit)[1][: limit - len(names)])
    return names


def _find(items: list[str], wanted: str) -> str | None:
    """The entry of ``items`` equal to ``wanted`` ignoring case (exact match preferred)."""
    if wanted in items:
        return wanted
    for it in items:
        if it.lower() == wanted.lower():
            return it
    return None


# --------------------------------------------------------------------------------------------
# the layouts
# --------------------------------------------------------------------------------------------


def _found(relpath: str, camera: str, *, pid_dir: int | None = None, scenario: str | None = None,
           group: str | None = None) -> FoundImage:
    """A FoundImage for a file in a known camera: person id / time from the name when it has them."""
    parsed = parse_name(os.path.basename(relpath))
    pid = parsed.person_id if parsed is not None else (-1 if pid_dir is None else pid_dir)
    if parsed is not None and pid_dir is not None:
        pid = pid_dir  # the identity folder is the dataset's own label; names may be per-split
    ts = parsed.timestamp if parsed is not None else None
    return FoundImage(relpath, camera, pid, ts, scenario, group)


def _camera_folder_items(walker: Walker, rel: str, camera: str, *, scenario: str | None = None,
                         group: str | None = None, pid_folders: bool = False) -> Iterator[ScanItem]:
    """Everything under a camera folder ``rel``.

    ``pid_folders``: the first level below the camera is ``<pid>/`` (SYSU, RegDB, PRCC); otherwise
    a numeric first-level folder is still taken as the person id when file names carry none.
    """
    prefix = len(rel) + 1
    for item in walker.files(rel):
        if isinstance(item, Rejected):
            yield Rejected(item.relpath, item.reason, camera)
            continue
        inner = item[prefix:].split("/")
        pid_dir = _int_dir(inner[0]) if len(inner) > 1 else None
        if pid_folders and pid_dir is None:
            yield Rejected(item, "not inside a person-id folder", camera)
            continue
        yield _found(item, camera, pid_dir=pid_dir, scenario=scenario, group=group)


class _Base:
    name = ""
    description = ""

    def __repr__(self) -> str:
        return f"<layout {self.name}>"


class CameraFolders(_Base):
    name = "camera-folders"
    description = "ROOT/<camera>/...: one folder of person crops per camera (any nesting below it)"

    def matches(self, root: Path) -> bool:
        dirs, _ = top_level(root)
        return any(_has_images(root / d, depth=2) for d in dirs[:16])

    def scan(self, root: Path) -> Iterator[ScanItem]:
        walker = Walker(root)
        entries, bad = walker.entries("")
        if bad is not None:
            yield bad
            return
        for name, is_dir in entries:
            if not is_dir:
                if is_image_name(name):
                    yield Rejected(name, "not inside a camera folder")
                continue
            yield from _camera_folder_items(walker, name, relpath_to_text(name))


class ScenarioFolders(_Base):
    name = "scenario-folders"
    description = "ROOT/<scenario>/<camera>/...: scenario folders named " + ", ".join(SCENARIOS)

    def _scenario_dirs(self, root: Path) -> dict[str, str]:
        dirs, _ = top_level(root)
        return {d: d.lower() for d in dirs if d.lower() in SCENARIOS}

    def matches(self, root: Path) -> bool:
        dirs, _ = top_level(root)
        found = self._scenario_dirs(root)
        return bool(found) and len(found) == len(dirs)

    def scan(self, root: Path) -> Iterator[ScanItem]:
        walker = Walker(root)
        entries, bad = walker.entries("")
        if bad is not None:
            yield bad
            return
        plan: list[tuple[str, str, str]] = []  # (scenario, folder relpath, camera name)
        for name, is_dir in entries:
            if not is_dir:
                if is_image_name(name):
                    yield Rejected(name, "not inside a scenario/camera folder")
                continue
            scenario = name.lower()
            if scenario not in SCENARIOS:
                yield Rejected(name, "not a scenario folder (expected " + ", ".join(SCENARIOS) + ")")
                continue
            cams, bad = walker.listing(name)
            if bad is not None:
                yield bad
                continue
            for cam, cam_is_dir in cams:
                rel = f"{name}/{cam}"
                if cam_is_dir:
                    plan.append((scenario, rel, relpath_to_text(cam)))
                elif is_image_name(cam):
                    yield Rejected(rel, "not inside a camera folder")
        # A camera folder name used in two scenarios names two different cameras.
        counts: dict[str, int] = {}
        for _, _, cam in plan:
            counts[cam] = counts.get(cam, 0) + 1
        for scenario, rel, cam in plan:
            camera = cam if counts[cam] == 1 else f"{cam} ({scenario})"
            yield from _camera_folder_items(walker, rel, camera, scenario=scenario)


class Sysu(_Base):
    name = "sysu"
    description = "SYSU-MM01: cam1..cam6/<pid>/*.jpg; cam3 and cam6 are infrared (visible-infrared)"
    _CAM = re.compile(r"^cam(\d+)$", re.IGNORECASE)
    INFRARED = frozenset({3, 6})

    def _cams(self, root: Path) -> dict[str, int]:
        dirs, _ = top_level(root)
        return {d: int(m[1]) for d in dirs if (m := self._CAM.match(d))}

    def matches(self, root: Path) -> bool:
        cams = self._cams(root)
        nums = set(cams.values())
        if not (nums & self.INFRARED and nums - self.INFRARED):
            return False
        first = sorted(cams)[0]
        sub_dirs, _ = peek(root / first)
        return any(_int_dir(d) is not None for d in sub_dirs)

    def scan(self, root: Path) -> Iterator[ScanItem]:
        walker = Walker(root)
        for folder, num in sorted(self._cams(root).items(), key=lambda kv: kv[1]):
            group = "infrared" if num in self.INFRARED else "visible"
            yield from _camera_folder_items(walker, folder, f"cam{num}", scenario="visible-infrared",
                                            group=group, pid_folders=True)


class RegDB(_Base):
    name = "regdb"
    description = "RegDB: Visible/<pid>/... and Thermal/<pid>/... (cameras 'visible' and 'thermal')"

    def matches(self, root: Path) -> bool:
        dirs, _ = top_level(root)
        return _find(dirs, "Visible") is not None and _find(dirs, "Thermal") is not None

    def scan(self, root: Path) -> Iterator[ScanItem]:
        walker = Walker(root)
        dirs, _ = top_level(root)
        for wanted, camera, group in (("Visible", "visible", "visible"), ("Thermal", "thermal", "infrared")):
            folder = _find(dirs, wanted)
            if folder is not None:
                yield from _camera_folder_items(walker, folder, camera, scenario="visible-infrared",
                                                group=group, pid_folders=True)


class Prcc(_Base):
    name = "prcc"
    description = "PRCC: A/, B/, C/ camera folders of <pid>/ crops (clothing-change; C wears other clothes)"

    def _cams(self, root: Path) -> list[str]:
        dirs, _ = top_level(root)
        return [d for d in dirs if d in ("A", "B", "C")]

    def matches(self, root: Path) -> bool:
        cams = self._cams(root)
        if len(cams) < 2:
            return False
        sub_dirs, _ = peek(root / cams[0])
        return any(_int_dir(d) is not None for d in sub_dirs)

    def scan(self, root: Path) -> Iterator[ScanItem]:
        walker = Walker(root)
        for cam in self._cams(root):
            yield from _camera_folder_items(walker, cam, cam, scenario="clothing-change", pid_folders=True)


class _NamedFiles(_Base):
    """Flat (split) folders whose file names carry person id, camera and frame."""

    conventions: tuple[str, ...] = ()
    scenario: str | None = None
    reject_reason = ""

    def _parse(self, name: str) -> ParsedName | None:
        parsed = parse_name(name)
        return parsed if parsed is not None and parsed.convention in self.conventions else None

    def matches(self, root: Path) -> bool:
        dirs, images = top_level(root)
        if not images and not any(d.lower() in _SPLIT_DIRS for d in dirs):
            return False
        names = _sample_names(root)
        hits = sum(self._parse(n) is not None for n in names)
        return bool(names) and hits >= MATCH_FRACTION * len(names)

    def scan(self, root: Path) -> Iterator[ScanItem]:
        walker = Walker(root)
        for item in walker.files("", enter=False):
            if isinstance(item, Rejected):
                yield item
                continue
            parsed = self._parse(os.path.basename(item))
            if parsed is None:
                yield Rejected(item, self.reject_reason)
                continue
            yield FoundImage(item, parsed.camera, parsed.person_id, parsed.timestamp, self.scenario)


class OneCamera(_Base):
    """A folder of loose crops from one camera (what "Add camera folders" is given most often).

    Matches when ``ROOT`` holds images directly, no sub-folder holds any, and the names do not
    spread over several cameras (a Market-1501 split folder does: that stays ``market``).  The
    camera is named after the folder; person ids and times still come from the names when they
    carry them.
    """

    name = "one-camera"
    description = "ROOT/*.jpg: the person crops of one camera, directly in the folder (camera = folder name)"
    #: Named explicitly (``--layout one-camera``; the app's "Add camera folders" picks it for a
    #: folder it matches), not detected: loose crops elsewhere may be a mistake worth a question.
    auto_detect = False

    def matches(self, root: Path) -> bool:
        dirs, images = top_level(root)
        if not images or any(_has_images(root / d, depth=1) for d in dirs[:16]):
            return False
        cams = {p.camera for p in (parse_name(n) for n in images[:256]) if p is not None}
        return len(cams) <= 1

    def scan(self, root: Path) -> Iterator[ScanItem]:
        walker = Walker(root)
        camera = Path(root).name
        for item in walker.files("", enter=False):
            yield item if isinstance(item, Rejected) else _found(item, camera)


class Market(_NamedFiles):
    name = "market"
    description = ("Market-1501 / DukeMTMC / MSMT17 names (0002_c1s1_000451_03.jpg, 0001_c2_f0046182.jpg, "
                   "0000_000_01_...jpg) in flat or split folders; camera = c<N>")
    conventions = ("market", "duke", "msmt")
    reject_reason = "name does not follow the Market-1501 / DukeMTMC / MSMT17 pattern"


class Ltcc(_NamedFiles):
    name = "ltcc"
    description = "LTCC: PPP_CC_cCC_FFFFFF.png names (person, clothes, camera, frame); clothing-change"
    conventions = ("ltcc",)
    scenario = "clothing-change"
    reject_reason = "name does not follow the LTCC pattern PPP_CC_cCC_FFFFFF"


class IdentityFolders(_Base):
    name = "identity-folders"
    description = ("ROOT/<pid>/*.jpg: one folder per person (numeric names); camera from Market-style "
                   "names, else one camera for the whole folder")

    def matches(self, root: Path) -> bool:
        dirs, _ = top_level(root)
        return bool(dirs) and all(_int_dir(d) is not None for d in dirs) and any(
            _has_images(root / d, depth=0) for d in dirs[:8]
        )

    def scan(self, root: Path) -> Iterator[ScanItem]:
        walker = Walker(root)
        default_camera = relpath_to_text(root.name or "camera")
        entries, bad = walker.entries("")
        if bad is not None:
            yield bad
            return
        for name, is_dir in entries:
            pid = _int_dir(name) if is_dir else None
            if pid is None:
                if is_dir or is_image_name(name):
                    yield Rejected(name, "not inside a person-id folder (numeric name)")
                continue
            for item in walker.files(name):
                if isinstance(item, Rejected):
                    yield item
                    continue
                base = os.path.basename(item)
                parsed = parse_name(base)
                scenario = None
                if parsed is not None:
                    camera = parsed.camera
                elif m := _PRCC_TRAIN_NAME.match(base):
                    camera, scenario = m[1], "clothing-change"
                else:
                    camera = default_camera
                ts = parsed.timestamp if parsed is not None else None
                yield FoundImage(item, camera, pid, ts, scenario)


#: Every layout, in the order :func:`detect_layout` tries them.
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        ScenarioFolders(),
        Sysu(),
        RegDB(),
        Prcc(),
        OneCamera(),
        Ltcc(),
        Market(),
        IdentityFolders(),
        CameraFolders(),
    )
}


def supported_layouts_text() -> str:
    """One line per layout: its name and what it expects (for error messages and ``--help``)."""
    width = max(len(n) for n in LAYOUTS)
    return "\n".join(f"  {name.ljust(width)}  {layout.description}" for name, layout in LAYOUTS.items())


def get_layout(name: str) -> Layout:
    """The layout called ``name``; :class:`LayoutError` listing all of them when unknown."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise LayoutError(f"unknown layout {name!r}. Supported layouts:\n{supported_layouts_text()}") from None


def check_root(root: str | os.PathLike) -> Path:
    """``root`` as a Path after checking it is a readable folder (LayoutError otherwise)."""
    path = Path(root)
    shown = describe_path(path)
    if not path.exists():
        raise LayoutError(f"folder not found: {shown}")
    if not path.is_dir():
        raise LayoutError(f"not a folder: {shown} (point at the folder that holds the camera folders)")
    try:
        with os.scandir(path) as it:
            next(it, None)
    except OSError as exc:
        raise LayoutError(f"cannot read folder {shown}: {exc.strerror or exc}") from None
    return path


def detect_layout(root: str | os.PathLike) -> str:
    """The name of the first layout (in :data:`LAYOUTS` order) that ``root`` matches.

    Raises :class:`LayoutError` for a missing, unreadable or empty folder and for a folder no
    layout recognises; the message lists every supported layout with a line on each.
    """
    path = check_root(root)
    dirs, images = top_level(path)
    shown = describe_path(path)
    if not dirs and not images:
        raise LayoutError(
            f"folder {shown} has no images and no sub-folders. Put one folder per camera with person "
            f"crops (jpg, png, bmp, webp) inside it. Supported layouts:\n{supported_layouts_text()}"
        )
    for name, layout in LAYOUTS.items():
        if getattr(layout, "auto_detect", True) and layout.matches(path):
            return name
    what = "loose images whose names carry no camera" if images and not dirs else "no image files in its sub-folders"
    raise LayoutError(
        f"cannot tell the layout of {shown} ({what}). Use one of the supported layouts "
        f"(or name one explicitly):\n{supported_layouts_text()}"
    )

