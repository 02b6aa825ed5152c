"""Ingestion: turn camera folders into workspace rows (images, rejects, cameras with guesses).

``ingest(ws, folders)`` runs, for each folder:

1. **layout** -- the one named, or :func:`~itkm_engine.data.layouts.detect_layout`; every folder
   is checked (and its layout found) before anything is written, so a typo in the third folder
   does not leave the first two half-registered;
2. **scan** -- the layout walks the folder (no file is opened);
3. **headers** -- every image's header and ``stat`` are read in a thread pool (I/O bound: on a
   network drive the latency overlaps; on a local disk it runs at several thousand files/s) and
   turned into :class:`~itkm_engine.records.ImageRecord` rows or rejects with a reason.  Rows are
   upserted in batches, each batch one transaction: a kill -9 mid-ingest leaves whole batches,
   and running ingest again completes the rest (re-ingesting unchanged files changes nothing);
4. **missing** -- images of the source that were not found this time are marked ``missing``
   (never dropped: results that refer to them stay valid); rejects are recorded;
5. **guess** -- each camera's scenario and group are guessed from its pixels
   (:mod:`itkm_engine.data.guess`), unless nothing in the source changed since the last ingest,
   and stored with :meth:`Workspace.upsert_camera` (which keeps what the operator set).

Files already in the workspace are never added twice: a folder *inside* an ingested source is
refused before anything is written (its files are that source's; ingest the source again, and
give it its site there), and a folder *holding* an ingested source leaves that source's subtree
to it -- both said to the user.  A folder that looks like a copy of another source (same file
names and pixel sizes, confirmed by the bytes of a sample) is ingested with a warning.

Camera names are workspace-wide but a layout names cameras per folder (two datasets both have
a ``c1``).  Rule: a camera keeps its layout name unless another source already owns that name;
then it is named ``"<folder name>:<camera>"`` (``"<folder name>#<source id>:<camera>"`` if even that
is taken).  The first source to use a name keeps it, so names are stable across re-ingests.  Two
sources are never merged into one camera; to treat them as one, put them under one root.

Paths are stored in the text form of :func:`~itkm_engine.data.imageio.relpath_to_text` (valid
UTF-8 for SQLite; non-UTF-8 names are percent-escaped behind a ``%%`` marker), so readers must map
a stored relpath back with :func:`~itkm_engine.data.imageio.text_to_relpath` before opening it.
A source *root* that is not valid UTF-8 is refused with a message (rename it or link to it).

User files are only ever opened read-only (:mod:`itkm_engine.data.imageio`); nothing is written
into the user's folders.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import ItkmError, LayoutError
from ..progress import Reporter
from ..records import Camera, ImageRecord
from .guess import CameraGuess, assign_scenarios, guess_camera
from .imageio import BadImage, describe_path, probe, relpath_to_text
from .layouts import FoundImage, Layout, check_root, detect_layout, get_layout
from .walk import Rejected
from ..vocabulary import SCENARIOS, TWO_GROUP

__all__ = ["ingest", "IngestSummary", "CameraRow", "SourceRow", "BATCH_SIZE", "WORKERS"]

#: Images per upsert transaction (and per cancel check).
BATCH_SIZE = 2000
#: Header-reading threads.  Header parsing holds the GIL for most of its time, so more threads
#: only help on slow (network) storage; 4 overlaps the I/O without thrashing 2-core machines.
WORKERS = 4
#: Paths handed to one thread at a time (amortises the pool's per-task overhead).
_CHUNK = 128
#: Crops decoded per camera for the scenario/group guess.
GUESS_SAMPLE = 32

# Where each phase sits in one folder's progress (fractions of that folder's share).
_SCAN, _HEADERS, _GUESS = 0.10, 0.85, 0.97


@dataclass
class CameraRow:
    """One camera after ingestion.

    ``images``: usable images now; ``added``: new this run; ``missing``: not found at this scan
    (kept in the workspace with status ``missing``); ``rejected``: files refused at this scan.
    """

    camera: str
    scenario: str
    group: str
    images: int
    added: int
    missing: int
    rejected: int
    flag: str | None = None
    source: str = ""  # the folder (printable)
    user_set: bool = False


@dataclass
class SourceRow:
    """One ingested folder."""

    source_id: int
    root: str  # printable
    layout: str
    found: int
    added: int
    updated: int
    newly_missing: int
    rejected: int
    guessed: bool  # False when nothing changed and the stored guesses were kept


@dataclass
class IngestSummary:
    """What ingestion did, per camera and per folder, with every reject reason counted."""

    cameras: list[CameraRow] = field(default_factory=list)
    sources: list[SourceRow] = field(default_factory=list)
    reject_reasons: Counter = field(default_factory=Counter)
    unassigned_rejects: int = 0  # rejects outside any camera folder
    #: (folder ingested, the source already holding part of it, files left to that source)
    already_in_workspace: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def rows(self) -> list[CameraRow]:
        return self.cameras

    @property
    def images(self) -> int:
        return sum(r.images for r in self.cameras)

    @property
    def added(self) -> int:
        return sum(s.added for s in self.sources)

    @property
    def updated(self) -> int:
        return sum(s.updated for s in self.sources)

    @property
    def missing(self) -> int:
        return sum(r.missing for r in self.cameras)

    @property
    def newly_missing(self) -> int:
        return sum(s.newly_missing for s in self.sources)

    @property
    def rejected(self) -> int:
        return sum(self.reject_reasons.values())

    def format_table(self) -> str:
        """A plain-text table for the CLI: one line per camera, totals, then the reject reasons."""
        header = ["camera", "scenario", "group", "images", "added", "missing", "rejected", "flag"]
        lines_data = [
            [
                r.camera + (" *" if r.user_set else ""),
                r.scenario,
                r.group,
                str(r.images),
                str(r.added),
                str(r.missing),
                str(r.rejected),
                r.flag or "",
            ]
            for r in self.cameras
        ]
        totals = ["total", "", "", str(self.images), str(self.added), str(self.missing), str(self.rejected), ""]
        widths = [max(len(h), *(len(row[i]) for row in lines_data + [totals])) for i, h in enumerate(header)]
        numeric = {3, 4, 5, 6}

        def fmt(row: list[str]) -> str:
            cells = [c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(row)]
            return "  ".join(cells).rstrip()

        out = [fmt(header), fmt(["-" * w for w in widths])]
        out += [fmt(row) for row in lines_data]
        out += [fmt(["-" * w for w in widths]), fmt(totals)]
        for s in self.sources:
            note = "" if s.guessed else "; unchanged, kept previous guesses"
            out.append(f"{s.root}: layout {s.layout}, {s.found} images found, {s.added} new, "
                       f"{s.updated} updated, {s.newly_missing} newly missing{note}")
        if any(r.user_set for r in self.cameras):
            out.append("* scenario/group set by the operator (kept)")
        for folder, owner, n in self.already_in_workspace:
            out.append(f"{folder}: {n} files under {owner} were already in the workspace from that folder; "
                       "they were not added again")
        if self.unassigned_rejects:
            out.append(f"{self.unassigned_rejects} rejected entries were outside any camera folder")
        if self.reject_reasons:
            out.append("rejected files by reason:")
            for reason, n in self.reject_reasons.most_common():
                out.append(f"  {n:>7}  {reason}")
        return "\n".join(out)


# --------------------------------------------------------------------------------------------


def ingest(
    ws,
    folders: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    layout: str | None = None,
    scenario: str | None = None,
    reporter: Reporter | None = None,
    workers: int = WORKERS,
    batch_size: int = BATCH_SIZE,
    site: str | None = None,
) -> IngestSummary:
    """Ingest camera folders into the workspace ``ws`` (a writable :class:`Workspace`).

    ``layout``: a name from :data:`~itkm_engine.data.layouts.LAYOUTS` for every folder (default:
    detect per folder).  ``scenario``: the scenario of every camera in these folders (the groups
    are still guessed); default: from the layout where it says, else guessed.  Cancellable
    through ``reporter`` (already committed batches stay; run again to finish).  ``site``: where
    these folders were filmed (people are shared only within a site; Stage II separates sites);
    default: a new source joins the default site, a known one keeps its site.

    Raises :class:`LayoutError` for a missing/unreadable/empty folder, an unknown layout name or
    a folder no layout recognises -- before writing anything.
    """
    reporter = reporter or Reporter()
    if scenario is not None and scenario not in SCENARIOS:
        raise ItkmError(f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}")
    forced = get_layout(layout) if layout is not None else None
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    plan: list[tuple[Path, Layout]] = []
    for folder in folders:
        root = check_root(Path(folder).expanduser())
        root = Path(os.path.realpath(root))
        try:
            os.fsencode(root).decode("utf-8")
        except UnicodeDecodeError:
            # The workspace stores source roots (resolved) as UTF-8 text; names *inside* the folder
            # may be anything (see relpath_to_text), the root's own path may not.
            raise LayoutError(
                f"the folder path {describe_path(root)} is not valid UTF-8; rename the folder "
                "(or the folder above it that has the odd name) and ingest it again"
            ) from None
        plan.append((root, forced if forced is not None else get_layout(detect_layout(root))))
    if not plan:
        raise LayoutError("no folder to ingest")

    _refuse_nested_roots(ws, plan)
    ws_real = os.path.realpath(ws.path)
    for root, _ in plan:
        if ws_real == os.fspath(root) or ws_real.startswith(os.fspath(root).rstrip(os.sep) + os.sep):
            reporter.warning(f"the workspace folder {ws.path} is inside {describe_path(root)}; it is skipped "
                             "(keep workspaces outside camera folders)")

    summary = IngestSummary()
    # one write: the writer lock held throughout (the app takes it only for its writes)
    with ws.writing(f"adding {len(plan)} folder{'s' if len(plan) > 1 else ''} of camera images"):
        for i, (root, lay) in enumerate(plan):
            sub = reporter.child(i / len(plan), (i + 1) / len(plan))
            _ingest_folder(ws, root, lay, scenario, sub, summary, workers=max(1, workers),
                           batch_size=max(1, batch_size), site=site)
    warn_duplicate_sources(ws, [root for root, _ in plan], reporter)
    reporter.update(1.0, stage="done", message=f"{summary.images} images in {len(summary.cameras)} cameras")
    return summary


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is strictly inside ``folder`` (both absolute, resolved)."""
    return path != folder and os.fspath(path).startswith(os.fspath(folder).rstrip(os.sep) + os.sep)


def _refuse_nested_roots(ws, plan: Sequence[tuple[Path, Layout]]) -> None:
    """A folder inside an already ingested source (or inside another folder of the same command)
    is refused before anything is written: its files are in the workspace already, under that
    source's cameras, and a second copy of them would tell Stage II that the same people are
    different ones.  (A sub-folder given another ``--site`` added every image again.)"""
    roots = [root for root, _ in plan]
    for root in roots:
        for other in roots:
            if _inside(root, other):
                raise LayoutError(f"{describe_path(root)} is inside {describe_path(other)}, which is given too: "
                                  f"ingest {describe_path(other)} alone. Nothing was changed.")
    sources = [s for s in ws.sources() if any(_inside(root, Path(s.root)) for root in roots)]
    if not sources:
        return
    table = ws.images(include_missing=True)
    for root in roots:
        for src in sources:
            owner = Path(src.root)
            if not _inside(root, owner):
                continue
            prefix = relpath_to_text(os.path.relpath(root, owner)) + "/"
            n = sum(1 for sid, rel in zip(np.asarray(table.source_id).tolist(), table.relpath)
                    if sid == src.id and rel.startswith(prefix))
            raise LayoutError(
                f"{describe_path(root)} is inside {describe_path(owner)}, which is already in this workspace (site "
                f"{src.site!r}): its {n} images are there already, and adding them again would make every person in "
                f"them two people. To pick up new or changed files, ingest {describe_path(owner)} again; a site applies "
                f"to the whole of it (--site NAME with that folder). Nothing was changed.")


def _nested_sources(ws, root: Path) -> list[tuple[str, object]]:
    """(relative folder in text form + '/', source) of every ingested source inside ``root``."""
    return [(relpath_to_text(os.path.relpath(Path(s.root), root)) + "/", s) for s in ws.sources()
            if _inside(Path(s.root), root)]


def _same_bytes(a: str, b: str, limit: int = 1 << 22) -> bool:
    """Whether two files hold the same bytes (read only; at most ``limit`` bytes compared)."""
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read(limit) == fb.read(limit)
    except OSError:
        return False


def warn_duplicate_sources(ws, roots: Sequence[Path], reporter: Reporter, share: float = 0.5,
                           sample: int = 8) -> list[tuple[str, str]]:
    """Warn when a folder just ingested looks like a copy of another source of the workspace (at
    least ``share`` of its images have a file of the same name and pixel size there, and the files
    of a ``sample`` of those pairs hold the same bytes): a copy -- renamed, or of a sub-folder, so
    its relative paths differ -- is otherwise ingested again silently and every person in it
    appears twice.  Returns (folder, earlier folder) pairs."""
    sources = {os.fspath(s.root): s.id for s in ws.sources()}
    mine = {sources[os.fspath(r)] for r in roots if os.fspath(r) in sources}
    if not mine or len(sources) < 2:
        return []
    t = ws.images(include_missing=True)
    keys: dict[int, dict] = defaultdict(dict)  # source -> (file name, width, height) -> path
    for sid, rel, w, h, path in zip(np.asarray(t.source_id).tolist(), t.relpath, np.asarray(t.width).tolist(),
                                    np.asarray(t.height).tolist(), t.path):
        keys[sid].setdefault((rel.rsplit("/", 1)[-1], w, h), path)
    by_id = {v: k for k, v in sources.items()}
    out = []
    for sid in sorted(mine):
        own = keys.get(sid, {})
        for other, theirs in keys.items():
            if other == sid or not own:
                continue
            common = own.keys() & theirs.keys()
            same = len(common)
            if same < share * len(own):
                continue
            picked = sorted(common)[:: max(1, same // sample)][:sample]
            if sum(_same_bytes(own[k], theirs[k]) for k in picked) * 2 >= len(picked):
                out.append((by_id[sid], by_id[other]))
                reporter.warning(
                    f"{by_id[sid]} looks like a copy of the already ingested {by_id[other]} ({same} of {len(own)} "
                    "images have a file of the same name and size there, and the files compared hold the same "
                    "bytes): they are now in the workspace twice, so the same people appear twice. If it is a "
                    "copy, ingest into a new workspace without it.")
                break
    return out


def _probe_chunk(root: str, items: Sequence[FoundImage]) -> list:
    """Header + stat for each item: ``(header, stat)`` or the BadImage reason."""
    out = []
    for it in items:
        try:
            out.append(probe(os.path.join(root, it.relpath)))
        except BadImage as exc:
            out.append(exc.reason)
        except OSError as exc:  # anything the checks did not foresee must not stop ingestion
            out.append(f"cannot read file ({exc.strerror or exc})")
    return out


def _camera_namer(root: Path, source_id: int, known: dict[str, Camera]):
    """Layout camera name -> workspace camera name (see the module docstring)."""
    label = relpath_to_text(root.name) or f"source{source_id}"
    cache: dict[str, str] = {}

    def owned(name: str) -> bool:
        cam = known.get(name)
        return cam is None or cam.source_id == source_id

    def name_of(camera: str) -> str:
        if camera not in cache:
            for candidate in (camera, f"{label}:{camera}", f"{label}#{source_id}:{camera}"):
                if owned(candidate):
                    cache[camera] = candidate
                    break
            else:  # pragma: no cover - the id-qualified name is unique by construction
                cache[camera] = f"{label}#{source_id}:{camera}#"
        return cache[camera]

    return name_of


def _existing_relpaths(ws, source_id: int) -> set[str]:
    """Relpaths (text form) of the source's images already in the workspace, any status."""
    table = ws.images(include_missing=True)
    if len(table) == 0:
        return set()
    return {table.relpath[i] for i in np.flatnonzero(table.source_id == source_id)}


def _ingest_folder(ws, root: Path, lay: Layout, scenario: str | None, reporter: Reporter,
                   summary: IngestSummary, *, workers: int, batch_size: int, site: str | None = None) -> None:
    shown = describe_path(root)
    root_fs = os.fspath(root)

    # -- scan ------------------------------------------------------------------------------
    reporter.update(0.0, stage="scan", message=f"scanning {shown} ({lay.name})")
    found: list[FoundImage] = []
    scan_rejects: list[Rejected] = []
    for n, item in enumerate(lay.scan(root), 1):
        if isinstance(item, FoundImage):
            found.append(item)
        else:
            scan_rejects.append(item)
        if n % 5000 == 0:
            reporter.check()
            reporter.update(_SCAN * 0.5, stage="scan", message=f"{n} entries scanned in {shown}")
    # Ingested sources inside this folder keep their files: they are not added again here.
    left: Counter = Counter()
    for prefix, src in _nested_sources(ws, root):
        before_n = len(found)
        found = [it for it in found if not relpath_to_text(it.relpath).startswith(prefix)]
        scan_rejects = [r for r in scan_rejects if not relpath_to_text(r.relpath).startswith(prefix)]
        if len(found) != before_n:
            left[src.id] = before_n - len(found)
            summary.already_in_workspace.append((shown, describe_path(Path(src.root)), before_n - len(found)))
            reporter.warning(f"{before_n - len(found)} images under {describe_path(Path(src.root))} are already in the "
                             f"workspace from that folder (site {src.site!r}); they were not added again (ingest that "
                             "folder to pick up changes there)")
    if not found and left:
        reporter.update(1.0, stage="write", message=f"{shown}: every image is already in the workspace")
        return
    if not found:
        # Nothing to ingest: the wrong layout was named, or the folder holds no usable entries.
        why = ""
        if scan_rejects:
            top = Counter(r.reason for r in scan_rejects).most_common(3)
            why = "; rejected: " + ", ".join(f"{n} x {reason}" for reason, n in top)
        raise LayoutError(f"no images found in {shown} with layout {lay.name!r} ({lay.description}){why}")

    source_id = ws.add_source(root, lay.name, site=site)
    known = {c.name: c for c in ws.cameras()}
    name_of = _camera_namer(root, source_id, known)
    before = _existing_relpaths(ws, source_id)
    reporter.update(_SCAN, stage="scan", message=f"{len(found)} images found in {shown}")

    # -- headers (+ batched upserts) -------------------------------------------------------
    per_cam_added: Counter = Counter()
    per_cam_rejected: Counter = Counter()
    heights: dict[str, list[int]] = defaultdict(list)
    ok_paths: dict[str, list[str]] = defaultdict(list)
    hints: dict[str, FoundImage] = {}  # camera -> one of its items (scenario/group the layout says)
    present: set[str] = set()
    rejects: list[tuple[str, str, str | None]] = []
    added_total = updated_total = 0

    def reject(rel_fs: str, reason: str, camera: str | None) -> None:
        text = relpath_to_text(rel_fs)
        present.add(text)
        rejects.append((text, reason, camera))
        summary.reject_reasons[reason] += 1
        if camera is None:
            summary.unassigned_rejects += 1
        else:
            per_cam_rejected[camera] += 1

    for r in scan_rejects:
        reject(r.relpath, r.reason, None if r.camera is None else name_of(r.camera))

    total = len(found)
    done = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="itkm-header") as pool:
        for start in range(0, total, batch_size):
            reporter.check()
            batch = found[start : start + batch_size]
            chunks = [batch[i : i + _CHUNK] for i in range(0, len(batch), _CHUNK)]
            results = [r for part in pool.map(_probe_chunk, [root_fs] * len(chunks), chunks) for r in part]
            records: list[ImageRecord] = []
            for item, res in zip(batch, results):
                camera = name_of(item.camera)
                hints.setdefault(camera, item)
                if isinstance(res, str):
                    reject(item.relpath, res, camera)
                    continue
                header, st = res
                text = relpath_to_text(item.relpath)
                present.add(text)
                ts = item.timestamp if item.timestamp is not None else st.st_mtime
                records.append(
                    ImageRecord(
                        relpath=text,
                        camera=camera,
                        width=header.width,
                        height=header.height,
                        timestamp=float(ts),
                        mtime=float(st.st_mtime),
                        size_bytes=int(st.st_size),
                        person_id=int(item.person_id),
                    )
                )
                heights[camera].append(header.height)
                ok_paths[camera].append(os.path.join(root_fs, item.relpath))
                if text not in before:
                    per_cam_added[camera] += 1
            reporter.check()  # before the write: a cancel never leaves a batch half-done
            added, updated = ws.upsert_images(source_id, records)
            added_total += added
            updated_total += updated
            done += len(batch)
            reporter.update(
                _SCAN + (_HEADERS - _SCAN) * done / max(total, 1),
                stage="headers",
                message=f"{done}/{total} image headers read in {shown}",
                step=done,
                steps=total,
            )

    # -- missing and rejects ---------------------------------------------------------------
    reporter.update(_HEADERS, stage="write", message=f"recording missing and rejected files of {shown}")
    newly_missing = ws.mark_missing(source_id, present)
    ws.add_rejects(source_id, rejects)
    for r in rejects:
        if r[2] is not None:
            hints.setdefault(r[2], FoundImage("", r[2]))

    # -- guess -----------------------------------------------------------------------------
    cameras_now = {c.name: c for c in ws.cameras()}
    seen = sorted(hints)  # cameras with files at this scan
    # ... and the source's cameras whose folder vanished (all their images are missing now)
    mine = seen + sorted(n for n, c in cameras_now.items() if c.source_id == source_id and n not in hints)
    changed = (
        scenario is not None  # the operator named the scenario: (re)assign even if no file changed
        or added_total > 0
        or updated_total > 0
        or newly_missing > 0
        or any(n not in known for n in seen)
        or any(cameras_now[n].guessed_scenario is None for n in seen if n in cameras_now)
    )
    if changed and seen:
        _guess_and_store(ws, source_id, seen, cameras_now, hints, heights, ok_paths, scenario, reporter, shown)
        cameras_now = {c.name: c for c in ws.cameras()}

    # -- summary ---------------------------------------------------------------------------
    for name in mine:
        cam = cameras_now.get(name)
        if cam is None:
            continue
        summary.cameras.append(
            CameraRow(
                camera=name,
                scenario=cam.scenario,
                group=cam.group,
                images=cam.n_images,
                added=per_cam_added[name],
                missing=cam.n_missing,
                rejected=per_cam_rejected[name],
                flag=cam.flag,
                source=shown,
                user_set=cam.user_set,
            )
        )
    summary.sources.append(
        SourceRow(source_id, shown, lay.name, len(found), added_total, updated_total, newly_missing,
                  len(rejects), changed)
    )
    reporter.update(1.0, stage="write", message=f"{shown}: {len(found)} images, {added_total} new")


def _guess_and_store(ws, source_id: int, names: list[str], cameras_now: dict[str, Camera],
                     hints: dict[str, FoundImage], heights: dict[str, list[int]],
                     ok_paths: dict[str, list[str]], scenario: str | None, reporter: Reporter,
                     shown: str) -> None:
    """Guess every camera of the source (pixels for automatic ones, header heights for the
    operator's), assign scenario/group per scenario hint, and store them."""
    guesses: dict[str, CameraGuess] = {}
    for k, name in enumerate(names):
        reporter.check()
        reporter.update(_HEADERS + (_GUESS - _HEADERS) * k / len(names), stage="guess",
                        message=f"guessing scenario and group of camera {name}")
        median_h = float(np.median(heights[name])) if heights.get(name) else 0.0
        cam = cameras_now.get(name)
        if cam is not None and cam.user_set:
            # The operator decided; only the relative height matters for the other cameras' guess.
            guesses[name] = CameraGuess(
                infrared=cam.group == "infrared", mixed=False, mean_saturation=float("nan"),
                grey_fraction=float("nan"), median_height=median_h, sampled=len(heights.get(name, ())),
            )
            continue
        guesses[name] = guess_camera(ok_paths.get(name, []), sample=GUESS_SAMPLE, seed=0,
                                     median_height=median_h if heights.get(name) else None)

    # One assignment per scenario hint: --scenario for all, else what the layout says per camera.
    by_hint: dict[str | None, list[str]] = defaultdict(list)
    for name in names:
        by_hint[scenario if scenario is not None else hints[name].scenario].append(name)
    decided: dict[str, tuple[str, str, str | None]] = {}
    for hint, group_names in by_hint.items():
        decided.update(assign_scenarios({n: guesses[n] for n in group_names}, hint))

    reporter.update(_GUESS, stage="write", message=f"storing cameras of {shown}")
    for name in names:
        sc, grp, flag = decided[name]
        preset = hints[name].group
        g = guesses[name]
        if preset is not None and preset in TWO_GROUP.get(sc, ("all",)):
            # The layout knows the group (SYSU cam3/cam6, RegDB Thermal): it wins over pixels,
            # but a disagreement is worth the operator's look.
            if g.sampled and preset != grp and sc == "visible-infrared":
                looks = "grey" if g.infrared else "colour"
                flag = flag or f"layout says {preset} but crops look {looks}"
            grp = preset
        cam = cameras_now.get(name)
        gs, gg = sc, grp
        if cam is not None and cam.user_set:
            # Not re-guessed from pixels: keep its stored guess and flag.
            if cam.guessed_scenario is not None and cam.guessed_group is not None:
                gs, gg = cam.guessed_scenario, cam.guessed_group
            flag = cam.flag
        paths = ok_paths.get(name) or []
        sample = min(paths, key=os.fsencode) if paths else None
        if sample is not None:
            try:
                sample.encode("utf-8")
            except UnicodeEncodeError:
                sample = None
        ws.upsert_camera(
            name,
            source_id,
            scenario=sc,
            group=grp,
            guessed_scenario=gs,
            guessed_group=gg,
            flag=flag,
            median_height=g.median_height if g.median_height > 0 else None,
            sample_path=sample,
        )
