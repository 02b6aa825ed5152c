"""What a workspace holds: sources (ingested folders and their sites), cameras, images, rejects.

A part of :class:`~itkm_engine.workspace.Workspace` (:class:`CatalogMixin`).  Images are
*referenced* (source root + relative path), never copied or modified; rows are never deleted
(a vanished file becomes ``missing``), so results that refer to them stay valid.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..data.imageio import text_to_relpath
from ..errors import ItkmError, WorkspaceError
from ..records import IMAGE_STATUSES, Camera, ImageRecord, ImageTable, Reject, Source
from ..vocabulary import DEFAULT_SITE, SCENARIOS, allowed_groups, default_group, validate as validate_scenario_group
from .connection import _parse_ints

__all__ = ["CatalogMixin"]

#: images() reads this many rows per aggregated SELECT (keeps each text value far below SQLite's
#: 1 GB string limit whatever the path lengths).
_IMAGE_CHUNK = 500_000
_NULL_TS = -9223372036854775807  # a NULL timestamp in the integer-microseconds column
_STATUS_NAMES = np.array(["ok", "missing", "unreadable"], dtype=object)  # status codes 0, 1, 2
_SCENARIO_SET = frozenset(SCENARIOS)

_UPSERT_IMAGE = """
INSERT INTO images (source_id, camera_id, relpath, width, height, timestamp, mtime, size_bytes,
                    person_id, status, reason, added_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'ok', '', ?)
ON CONFLICT (source_id, relpath) DO UPDATE SET
    camera_id  = excluded.camera_id,
    width      = excluded.width,
    height     = excluded.height,
    timestamp  = excluded.timestamp,
    mtime      = excluded.mtime,
    size_bytes = excluded.size_bytes,
    person_id  = excluded.person_id,
    -- back to 'ok' when it reappeared, or when the file changed (a fixed 'unreadable' file)
    status = CASE WHEN images.status = 'missing'
                    OR images.mtime IS NOT excluded.mtime
                    OR images.size_bytes IS NOT excluded.size_bytes
                  THEN 'ok' ELSE images.status END,
    reason = CASE WHEN images.status = 'missing'
                    OR images.mtime IS NOT excluded.mtime
                    OR images.size_bytes IS NOT excluded.size_bytes
                  THEN '' ELSE images.reason END
WHERE images.status = 'missing'
   OR images.camera_id  IS NOT excluded.camera_id
   OR images.width      IS NOT excluded.width
   OR images.height     IS NOT excluded.height
   OR images.timestamp  IS NOT excluded.timestamp
   OR images.mtime      IS NOT excluded.mtime
   OR images.size_bytes IS NOT excluded.size_bytes
   OR images.person_id  IS NOT excluded.person_id
"""


def _check_site(site: Any) -> str:
    if not isinstance(site, str) or not site.strip():
        raise ItkmError(f"a site needs a non-empty name, got {site!r}")
    if len(site) > 200 or any(ord(ch) < 32 for ch in site):
        raise ItkmError("a site name must be one line of at most 200 characters")
    return site.strip()


class CatalogMixin:
    """Sources, cameras, images and rejects of a workspace."""

    # -- sources -----------------------------------------------------------------------------
    def add_source(self, root: str | Path, layout: str, *, site: str | None = None) -> int:
        """Register an ingested root folder; idempotent on the (absolute) root, updates its layout.

        ``site``: where the source was filmed (people are shared only within one site); ``None``
        keeps an existing source's site and gives a new one :data:`DEFAULT_SITE`.
        """
        root_s = str(Path(root).expanduser().resolve())
        site_s = None if site is None else _check_site(site)
        with self.transaction() as con:
            con.execute(
                "INSERT INTO sources (root, layout, added_at, site) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (root) DO UPDATE SET layout = excluded.layout, "
                "site = CASE WHEN ? IS NULL THEN sources.site ELSE excluded.site END",
                (root_s, str(layout), time.time(), site_s or DEFAULT_SITE, site_s),
            )
            return int(con.execute("SELECT id FROM sources WHERE root = ?", (root_s,)).fetchone()[0])

    def set_source_root(self, source_id: int, root: str | Path) -> None:
        """Point a source at its new location after the user moved the dataset (paths are relative)."""
        root_s = str(Path(root).expanduser().resolve())
        with self.transaction() as con:
            other = con.execute("SELECT id FROM sources WHERE root = ? AND id != ?", (root_s, int(source_id))).fetchone()
            if other:
                raise ItkmError(f"{root_s} is already source {other[0]} of this workspace")
            if con.execute("UPDATE sources SET root = ? WHERE id = ?", (root_s, int(source_id))).rowcount == 0:
                raise ItkmError(f"no source with id {source_id} in this workspace")

    def set_source_site(self, source_id: int, site: str) -> None:
        """The operator names the site a source was filmed at (Stage II separates sites only)."""
        site_s = _check_site(site)
        with self.transaction() as con:
            if con.execute("UPDATE sources SET site = ? WHERE id = ?", (site_s, int(source_id))).rowcount == 0:
                raise ItkmError(f"no source with id {source_id} in this workspace")

    def sources(self) -> list[Source]:
        return [
            Source(id=int(i), root=Path(r), layout=l, added_at=float(a), site=st)
            for i, r, l, a, st in self.query("SELECT id, root, layout, added_at, site FROM sources ORDER BY id")
        ]

    def camera_sites(self) -> dict[str, str]:
        """Camera name -> site of the source the camera was first seen in."""
        return dict(self.query("SELECT c.name, s.site FROM cameras c JOIN sources s ON s.id = c.source_id"))

    # -- cameras -----------------------------------------------------------------------------
    def upsert_camera(
        self,
        name: str,
        source_id: int,
        *,
        scenario: str,
        group: str,
        guessed_scenario: str | None,
        guessed_group: str | None,
        flag: str | None = None,
        median_height: float | None = None,
        sample_path: str | None = None,
    ) -> int:
        """Add a camera or refresh its guesses; returns its id.

        Camera names are workspace-wide.  When the operator set the scenario/group
        (:meth:`set_camera`), they are kept and only the guesses, flag and statistics are updated.
        ``source_id`` of an existing camera stays the source it was first seen in.
        """
        if not isinstance(name, str) or not name:
            raise ItkmError(f"a camera needs a non-empty name, got {name!r}")
        validate_scenario_group(scenario, group)
        if guessed_scenario is not None and guessed_group is not None:
            validate_scenario_group(guessed_scenario, guessed_group)
        mh = None if median_height is None or not math.isfinite(float(median_height)) else float(median_height)
        with self.transaction() as con:
            self._require_source(con, source_id)
            con.execute(
                """
                INSERT INTO cameras (name, source_id, scenario, grp, guessed_scenario, guessed_group, flag,
                                     user_set, median_height, sample_path, added_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET
                    scenario = CASE WHEN cameras.user_set THEN cameras.scenario ELSE excluded.scenario END,
                    grp      = CASE WHEN cameras.user_set THEN cameras.grp ELSE excluded.grp END,
                    guessed_scenario = excluded.guessed_scenario,
                    guessed_group    = excluded.guessed_group,
                    flag             = excluded.flag,
                    median_height    = COALESCE(excluded.median_height, cameras.median_height),
                    sample_path      = COALESCE(excluded.sample_path, cameras.sample_path)
                """,
                (name, int(source_id), scenario, group, guessed_scenario, guessed_group, flag, mh,
                 None if sample_path is None else str(sample_path), time.time()),
            )
            return int(con.execute("SELECT id FROM cameras WHERE name = ?", (name,)).fetchone()[0])

    def set_camera(self, name: str, *, scenario: str | None = None, group: str | None = None) -> None:
        """The operator's correction of a camera's scenario and/or group; kept over re-ingestion.

        Changing only the scenario keeps the group when it is valid there, else takes the
        scenario's default group.
        """
        with self.transaction() as con:
            row = con.execute("SELECT scenario, grp FROM cameras WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise ItkmError(f"no camera named {name!r} in this workspace")
            cur_scenario, cur_group = row
            new_scenario = cur_scenario if scenario is None else scenario
            if group is None:
                new_group = cur_group if new_scenario in _SCENARIO_SET and cur_group in allowed_groups(new_scenario) else (
                    default_group(new_scenario) if new_scenario in _SCENARIO_SET else cur_group
                )
            else:
                new_group = group
            validate_scenario_group(new_scenario, new_group)
            con.execute(
                "UPDATE cameras SET scenario = ?, grp = ?, user_set = 1 WHERE name = ?", (new_scenario, new_group, name)
            )

    def reset_camera(self, name: str) -> None:
        """Drop the operator's setting: back to the guessed scenario/group (where there is a guess)."""
        with self.transaction() as con:
            n = con.execute(
                "UPDATE cameras SET user_set = 0, scenario = COALESCE(guessed_scenario, scenario), "
                "grp = CASE WHEN guessed_scenario IS NOT NULL THEN COALESCE(guessed_group, grp) ELSE grp END "
                "WHERE name = ?",
                (name,),
            ).rowcount
            if n == 0:
                raise ItkmError(f"no camera named {name!r} in this workspace")

    def cameras(self) -> list[Camera]:
        """All cameras (in the order they were added) with their image counts.

        The counts come from one GROUP BY over the ``(camera_id, status)`` index: a covering
        index scan, ~0.1 s per million images, and never out of date.
        """
        with self._snapshot() as con:
            cams = con.execute(
                "SELECT id, name, source_id, scenario, grp, guessed_scenario, guessed_group, flag, user_set, "
                "median_height, sample_path FROM cameras ORDER BY id"
            ).fetchall()
            counts: dict[tuple[int, str], int] = {
                (c, s): n
                for c, s, n in con.execute(
                    "SELECT camera_id, status, COUNT(*) FROM images INDEXED BY images_camera_status "
                    "GROUP BY camera_id, status"
                )
            }
            rejected = dict(
                con.execute(
                    "SELECT camera_id, COUNT(*) FROM rejects WHERE camera_id IS NOT NULL GROUP BY camera_id"
                ).fetchall()
            )
        return [
            Camera(
                id=int(cid), name=name, source_id=int(sid), scenario=sc, group=gr,
                guessed_scenario=gs, guessed_group=gg, flag=flag, user_set=bool(us),
                n_images=counts.get((cid, "ok"), 0), n_missing=counts.get((cid, "missing"), 0),
                n_rejected=rejected.get(cid, 0), median_height=mh, sample_path=sp,
                n_unreadable=counts.get((cid, "unreadable"), 0),
            )
            for cid, name, sid, sc, gr, gs, gg, flag, us, mh, sp in cams
        ]

    def _camera_ids(self, con: sqlite3.Connection, names: Iterable[str], source_id: int) -> dict[str, int]:
        """Name -> id, creating cameras that do not exist yet (cross-camera/all until guessed)."""
        known = dict(con.execute("SELECT name, id FROM cameras").fetchall())
        new = sorted({n for n in names if n not in known})
        if new:
            for n in new:
                if not isinstance(n, str) or not n:
                    raise ItkmError(f"an image record has an empty camera name ({n!r})")
            now = time.time()
            con.executemany(
                "INSERT INTO cameras (name, source_id, scenario, grp, user_set, added_at) "
                "VALUES (?, ?, 'cross-camera', 'all', 0, ?)",
                [(n, int(source_id), now) for n in new],
            )
            known = dict(con.execute("SELECT name, id FROM cameras").fetchall())
        return known

    @staticmethod
    def _require_source(con: sqlite3.Connection, source_id: int) -> None:
        if con.execute("SELECT 1 FROM sources WHERE id = ?", (int(source_id),)).fetchone() is None:
            raise ItkmError(f"no source with id {source_id} in this workspace; add_source() it first")

    # -- images ------------------------------------------------------------------------------
    def upsert_images(self, source_id: int, records: Sequence[ImageRecord]) -> tuple[int, int]:
        """Add new images and refresh known ones (same ``relpath``) in one transaction.

        Idempotent: re-ingesting unchanged files changes nothing.  A known image whose size,
        mtime, dimensions, camera, timestamp or person id changed is updated; a ``missing`` one
        that reappeared goes back to ``ok``; an ``unreadable`` one goes back to ``ok`` only when
        its file changed.  Cameras named by the records are created when unknown
        (``cross-camera``/``all`` until :meth:`upsert_camera` gives the guess).  A file that was
        rejected before and now ingests fine leaves the rejects list.  Returns ``(added, updated)``.
        """
        if not records:
            return (0, 0)
        now = time.time()
        with self.transaction() as con:
            self._require_source(con, source_id)
            cam = self._camera_ids(con, {r.camera for r in records}, source_id)
            sid = int(source_id)
            bad = next((r.relpath for r in records if not r.relpath or r.relpath[0] in "/\\" or r.relpath[1:2] == ":"
                        or "\0" in r.relpath), None)
            if bad is not None:
                raise ItkmError(f"image path {bad!r} must be relative to its source folder (and contain no NUL)")
            # One comprehension (this loop is most of the Python cost of a 100k batch).  NaN
            # timestamps become NULL (ts == ts is False only for NaN); numpy scalars become plain.
            rows = [
                (sid, cam[r.camera], r.relpath, int(r.width), int(r.height),
                 float(r.timestamp) if r.timestamp is not None and r.timestamp == r.timestamp else None,
                 None if r.mtime is None else float(r.mtime),
                 None if r.size_bytes is None else int(r.size_bytes),
                 int(r.person_id), now)
                for r in records
            ]
            (max_before,) = con.execute("SELECT COALESCE(MAX(id), 0) FROM images").fetchone()
            changed = con.executemany(_UPSERT_IMAGE, rows).rowcount
            # INTEGER PRIMARY KEY without AUTOINCREMENT hands out max(id)+1, and images are never
            # deleted, so the new rows are exactly those above the previous maximum.
            (added,) = con.execute("SELECT COUNT(*) FROM images WHERE id > ?", (max_before,)).fetchone()
            if con.execute("SELECT 1 FROM rejects WHERE source_id = ? LIMIT 1", (sid,)).fetchone():
                con.executemany(
                    "DELETE FROM rejects WHERE source_id = ? AND relpath = ?", [(sid, row[2]) for row in rows]
                )
        return int(added), int(changed - added)

    def mark_missing(self, source_id: int, present_relpaths: Iterable[str]) -> int:
        """Mark the source's images not in ``present_relpaths`` as ``missing`` (never deleted).

        Returns how many became missing now.  Rows stay so that pseudo-labels, identities and
        features that refer to them stay valid; they come back with :meth:`upsert_images`.
        """
        present = present_relpaths if isinstance(present_relpaths, (set, frozenset)) else set(present_relpaths)
        with self.transaction() as con:
            self._require_source(con, source_id)
            # Aggregated like images() (a million (id, relpath) tuples would cost seconds), read
            # from the covering UNIQUE(source_id, relpath) index: no table lookups at all.  Rows
            # already missing are filtered by the UPDATE.
            n, ids_text, rels_text = con.execute(
                "SELECT count(*), group_concat(id), group_concat(relpath, char(0)) FROM images WHERE source_id = ?",
                (int(source_id),),
            ).fetchone()
            if n:
                ids = _parse_ints(ids_text, n).tolist()
                rels = rels_text.split("\0")
                if len(rels) != n:
                    raise WorkspaceError(f"the workspace database {self.db_path} is damaged: an image path contains NUL")
            else:
                ids, rels = [], []
            gone = [(i,) for i, rel in zip(ids, rels) if rel not in present]
            if not gone:
                return 0
            return con.executemany(
                "UPDATE images SET status = 'missing', reason = 'not found at the last scan' "
                "WHERE id = ? AND status != 'missing'",
                gone,
            ).rowcount

    def relpaths(self, source_id: int) -> set[str]:
        """Relative paths of all the source's image rows, any status.

        Read from the covering ``(source_id, relpath)`` index, aggregated: far cheaper than
        ``images(include_missing=True)`` when ingestion only needs to know what is known.
        """
        ((n, text),) = self.query(
            "SELECT count(*), group_concat(relpath, char(0)) FROM images WHERE source_id = ?", (int(source_id),)
        )
        return set(text.split("\0")) if n else set()

    def set_image_status(self, image_ids: Iterable[int], status: str, reason: str = "") -> None:
        """Set the status of images (e.g. ``unreadable`` when training failed to decode one)."""
        if status not in IMAGE_STATUSES:
            raise ItkmError(f"unknown image status {status!r}; one of {', '.join(IMAGE_STATUSES)}")
        ids = [(status, str(reason), int(i)) for i in np.asarray(list(image_ids) if not isinstance(image_ids, np.ndarray) else image_ids).ravel()]
        if not ids:
            return
        with self.transaction() as con:
            con.executemany("UPDATE images SET status = ?, reason = ? WHERE id = ?", ids)

    def image_count(self, *, include_missing: bool = False) -> int:
        """Usable (``ok``) images, or all rows with ``include_missing=True``."""
        sql = "SELECT COUNT(*) FROM images" + ("" if include_missing else " WHERE status = 'ok'")
        return int(self.query(sql)[0][0])

    def images(self, *, include_missing: bool = False, camera: str | None = None) -> ImageTable:
        """The images as an :class:`ImageTable`, sorted by id.

        Only usable (``ok``) images unless ``include_missing=True`` (then ``missing`` and
        ``unreadable`` rows too; see ``status``).  ``camera`` restricts to one camera.

        Speed: a million rows as Python tuples cost ~2 s of CPU, so each column is aggregated by
        SQLite into one text value (``group_concat``) and parsed by numpy in C; the rows are read
        in chunks of ``_IMAGE_CHUNK`` by id within one read transaction (one consistent
        snapshot).  Timestamps travel as integer microseconds.
        """
        where, params = ["id > ?"], []
        if not include_missing:
            where.append("status = 'ok'")
        with self._snapshot() as con:
            cams = con.execute("SELECT id, name, scenario, grp FROM cameras").fetchall()
            srcs = con.execute("SELECT id, root FROM sources").fetchall()
            if camera is not None:
                match = [c for c in cams if c[1] == camera]
                if not match:
                    return ImageTable.empty()
                where.append("camera_id = ?")
                params.append(match[0][0])
            sql = (
                "SELECT count(*), group_concat(id), group_concat(source_id), group_concat(camera_id), "
                "group_concat(width), group_concat(height), "
                f"group_concat(IFNULL(CAST(round(timestamp * 1000000) AS INTEGER), {_NULL_TS})), "
                "group_concat(person_id), "
                "group_concat(CASE status WHEN 'ok' THEN 0 WHEN 'missing' THEN 1 ELSE 2 END), "
                "group_concat(relpath, char(0)) "
                "FROM (SELECT id, source_id, camera_id, width, height, timestamp, person_id, status, relpath "
                f"FROM images WHERE {' AND '.join(where)} ORDER BY id LIMIT ?)"
            )
            chunks: list[tuple[list[np.ndarray], list[str]]] = []
            last = 0
            while True:
                row = con.execute(sql, [last, *params, _IMAGE_CHUNK]).fetchone()
                n = int(row[0])
                if n == 0:
                    break
                ints = [_parse_ints(row[i], n) for i in range(1, 9)]
                rel = row[9].split("\0")
                if len(rel) != n:
                    raise WorkspaceError(
                        f"the workspace database {self.db_path} is damaged: an image path contains a NUL character"
                    )
                chunks.append((ints, rel))
                last = int(ints[0][-1])
                if n < _IMAGE_CHUNK:
                    break
        if not chunks:
            return ImageTable.empty()
        if len(chunks) == 1:
            (cols, relpath), = chunks
        else:
            cols = [np.concatenate([c[0][i] for c in chunks]) for i in range(8)]
            relpath = [r for c in chunks for r in c[1]]
        ids, source_id, camera_id, width, height, ts_us, person_id, status_code = cols
        n = len(ids)
        if n > 1 and not bool(np.all(ids[1:] > ids[:-1])):  # never seen; cheap to guarantee
            order = np.argsort(ids, kind="stable")
            ids, source_id, camera_id, width, height, ts_us, person_id, status_code = (
                a[order] for a in (ids, source_id, camera_id, width, height, ts_us, person_id, status_code)
            )
            relpath = [relpath[i] for i in order]

        # Camera columns: small per-camera lookup tables indexed by camera id.
        max_cam = max(c[0] for c in cams)
        names = np.empty(max_cam + 1, dtype=object)
        scen = np.empty(max_cam + 1, dtype=object)
        grps = np.empty(max_cam + 1, dtype=object)
        for cid, name, sc, gr in cams:
            names[cid], scen[cid], grps[cid] = name, sc, gr

        # Absolute paths: the source root joined with the '/'-separated relative path.
        sep = os.sep
        prefixes = {sid: (root if root.endswith(sep) else root + sep) for sid, root in srcs}
        rel_native = relpath if sep == "/" else [r.replace("/", sep) for r in relpath]
        if any(r.startswith("%%") for r in rel_native):
            # A non-UTF-8 file name is stored in ingest's percent-escaped text form; ``path`` must
            # open the real file, so map those back (surrogate-escaped str, as os.fsdecode gives).
            rel_native = [text_to_relpath(r) if r.startswith("%%") else r for r in rel_native]
        if len(prefixes) == 1:
            (prefix,) = prefixes.values()
            path = [prefix + r for r in rel_native]
        else:
            path = [prefixes[s] + r for s, r in zip(source_id.tolist(), rel_native)]

        timestamp = ts_us.astype(np.float64) / 1e6
        timestamp[ts_us == _NULL_TS] = np.nan
        return ImageTable(
            id=ids,
            path=path,
            relpath=relpath,
            camera=names[camera_id],
            scenario=scen[camera_id],
            group=grps[camera_id],
            width=width.astype(np.int32),
            height=height.astype(np.int32),
            timestamp=timestamp,
            person_id=person_id,
            status=_STATUS_NAMES[status_code],
            camera_id=camera_id,
            source_id=source_id,
        )

    # -- rejects -----------------------------------------------------------------------------
    def add_rejects(self, source_id: int, rejects: Iterable[tuple[str, str] | tuple[str, str, str | None]]) -> None:
        """Record files ingestion refused, with the reason; idempotent on (source, relpath).

        Items are ``(relpath, reason)`` or ``(relpath, reason, camera_name)``; without a camera the
        camera of an image row with that path is used, if any.  An image row with that path is
        marked ``unreadable`` (a file that was fine before and is broken now).
        """
        items = list(rejects)
        if not items:
            return
        now, sid = time.time(), int(source_id)
        with self.transaction() as con:
            self._require_source(con, sid)
            cam_names = {it[2] for it in items if len(it) > 2 and it[2] is not None}
            cam = self._camera_ids(con, cam_names, sid) if cam_names else {}
            rows = []
            for it in items:
                rel, reason = str(it[0]), str(it[1])
                cname = it[2] if len(it) > 2 else None
                rows.append((sid, rel, None if cname is None else cam[cname], sid, rel, reason, now))
            con.executemany(
                """
                INSERT INTO rejects (source_id, relpath, camera_id, reason, seen_at)
                VALUES (?, ?, COALESCE(?, (SELECT camera_id FROM images WHERE source_id = ? AND relpath = ?)), ?, ?)
                ON CONFLICT (source_id, relpath) DO UPDATE SET
                    reason = excluded.reason, seen_at = excluded.seen_at,
                    camera_id = COALESCE(excluded.camera_id, rejects.camera_id)
                """,
                rows,
            )
            con.executemany(
                "UPDATE images SET status = 'unreadable', reason = ? "
                "WHERE source_id = ? AND relpath = ? AND status != 'unreadable'",
                [(r[5], sid, r[1]) for r in rows],
            )

    def rejects(self, camera: str | None = None) -> list[Reject]:
        """Files refused at ingestion (all, or one camera's), oldest first."""
        sql = (
            "SELECT r.source_id, r.relpath, r.reason, r.seen_at, c.name, s.root FROM rejects r "
            "JOIN sources s ON s.id = r.source_id LEFT JOIN cameras c ON c.id = r.camera_id"
        )
        params: tuple = ()
        if camera is not None:
            sql += " WHERE c.name = ?"
            params = (camera,)
        sql += " ORDER BY r.id"
        return [
            Reject(source_id=int(s), relpath=rel, reason=reason, seen_at=float(t), camera=cname,
                   path=str(Path(root) / rel))
            for s, rel, reason, t, cname, root in self.query(sql, params)
        ]
