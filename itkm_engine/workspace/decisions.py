"""The operator's decisions store: must-/cannot-links and identity names, with undo and redo.

Schema v3 tables ``decisions`` and ``identity_names`` (:mod:`itkm_engine.workspace.schema`);
every function takes the :class:`~itkm_engine.workspace.Workspace` to read and write:

* a decision is a pair of image ids, ``must`` (same person) or ``cannot`` (not), when, and the OS
  user; the latest active decision on a pair wins (a reject after a confirm overrides it);
* every action writes one ``batch`` (a confirm, a whole selection, a merge, a split, a name), and
  undo / redo move whole batches: undo flags the newest active batch ``state=1``; redo
  re-activates the oldest undone one; a new action after an undo retires the undone batches
  (``state=2``, kept for the record) -- the usual editor semantics;
* identity names and notes are anchored to the image ids the identity held when it was named, so
  they survive re-clustering (identity numbers change every round; image ids never do).

:func:`load_constraints` hands the effective decisions to the pure enforcement in
:mod:`itkm_engine.constraints`.
"""

from __future__ import annotations

import getpass
import json
import time
from dataclasses import dataclass

import numpy as np

from ..constraints import KINDS, ConstraintError, Constraints, split_pairs
from ..records import rows_of

__all__ = [
    "Decision",
    "load_constraints",
    "revision",
    "decide",
    "confirm",
    "reject",
    "answer",
    "undo",
    "redo",
    "history",
    "record_split",
    "cannot_between",
    "name_identity",
    "identity_names",
]


@dataclass(frozen=True)
class Decision:
    id: int
    batch: int
    kind: str
    image_a: int
    image_b: int
    at: float
    user: str
    state: int  # 0 active, 1 undone (redoable), 2 undone and retired


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers): still record the decision
        return ""


def load_constraints(ws) -> Constraints:
    """Effective constraints of the workspace: per pair, its latest active decision."""
    rows = ws.query("SELECT image_a, image_b, kind FROM decisions WHERE state = 0 ORDER BY id DESC")
    latest: dict[tuple[int, int], str] = {}
    for a, b, kind in rows:  # newest first: the first decision seen on a pair is its latest
        latest.setdefault((int(a), int(b)), kind)
    out = {k: [p for p, v in latest.items() if v == k] for k in KINDS}
    return Constraints(*(np.array(out[k], dtype=np.int64).reshape(-1, 2) for k in KINDS))


def revision(ws) -> tuple:
    """Changes whenever a decision, undo, redo or name changes (cache key for derived results)."""
    return tuple(
        ws.query(f"SELECT COUNT(*), COALESCE(MAX(id), 0), COALESCE(SUM(state), 0) FROM {t}")[0]
        for t in ("decisions", "identity_names")
    )


def _record_batch(ws, rows: list[tuple[str, int, int]], user: str | None) -> int:
    """Store ``rows`` ((kind, image_a, image_b)) as one new decision batch (one undo step),
    stamped now and with ``user`` (the login name when None); the batch number."""
    now, who = time.time(), _user() if user is None else user
    with ws.transaction() as con:
        batch = _new_batch(con)
        con.executemany(
            "INSERT INTO decisions (batch, kind, image_a, image_b, at, user, state) VALUES (?, ?, ?, ?, ?, ?, 0)",
            [(batch, k, a, b, now, who) for k, a, b in rows],
        )
    return batch


def _new_batch(con) -> int:
    """Next batch id; retires undone batches (a new action clears the redo stack)."""
    for t in ("decisions", "identity_names"):
        con.execute(f"UPDATE {t} SET state = 2 WHERE state = 1")
    row = con.execute(
        "SELECT MAX(b) FROM (SELECT MAX(batch) AS b FROM decisions UNION ALL SELECT MAX(batch) FROM identity_names)"
    ).fetchone()
    return int(row[0] or 0) + 1


def _check_images(ws, ids: set[int]) -> None:
    if not ids:
        return
    known = set()
    lst = sorted(ids)
    for i in range(0, len(lst), 500):
        chunk = lst[i : i + 500]
        q = ",".join("?" * len(chunk))
        known.update(r[0] for r in ws.query(f"SELECT id FROM images WHERE id IN ({q})", chunk))
    missing = ids - known
    if missing:
        raise ConstraintError(f"unknown image id(s) {sorted(missing)[:5]}: use ids or paths of images in this workspace")


def _image_sites(ws, ids) -> dict[int, str]:
    """Site of each image id (its camera's source's site)."""
    out: dict[int, str] = {}
    lst = sorted({int(i) for i in ids})
    for i in range(0, len(lst), 500):
        chunk = lst[i : i + 500]
        q = ",".join("?" * len(chunk))
        out.update((int(a), str(b)) for a, b in ws.query(
            "SELECT i.id, s.site FROM images i JOIN cameras c ON c.id = i.camera_id "
            f"JOIN sources s ON s.id = c.source_id WHERE i.id IN ({q})", chunk))
    return out


def _check_same_site(ws, pairs) -> None:
    """A must-link joins two images of one site only: people are never shared between sites
    (a reject across sites is allowed: it says what is true anyway)."""
    if not pairs:
        return
    site = _image_sites(ws, {i for p in pairs for i in p})
    for a, b in pairs:
        if site.get(a) != site.get(b):
            raise ConstraintError(
                f"images {a} and {b} were filmed at different sites ({site.get(a)!r} and {site.get(b)!r}): people are "
                "never shared between sites, so they cannot be confirmed as one person (if a site is wrong, set it "
                "again with: itkm ingest WORKSPACE FOLDER --site NAME)")


def decide(ws, pairs, kind: str, *, user: str | None = None) -> int:
    """Record ``kind`` ('must' or 'cannot') for every ``(a, b)`` in ``pairs`` as one undo step.
    Returns the batch id (0 when ``pairs`` is empty)."""
    if kind not in KINDS:
        raise ConstraintError(f"a decision is 'must' or 'cannot', not {kind!r}")
    norm = []
    for a, b in pairs:
        a, b = int(a), int(b)
        if a == b:
            raise ConstraintError(f"image {a} was paired with itself: pick two different images")
        norm.append((min(a, b), max(a, b)))
    norm = list(dict.fromkeys(norm))
    if not norm:
        return 0
    _check_images(ws, {i for p in norm for i in p})
    if kind == "must":
        _check_same_site(ws, norm)
    return _record_batch(ws, [(kind, a, b) for a, b in norm], user)


def answer(ws, query: int, yes=(), no=(), *, user: str | None = None) -> int:
    """Search-and-answer: the images in ``yes`` show the person of image ``query``, those in
    ``no`` do not; all of it one undo step (a batch mixing must- and cannot-links).  Returns the
    batch id (0 when there is nothing to record)."""
    q = int(query)
    yes = list(dict.fromkeys(int(i) for i in yes))
    no = list(dict.fromkeys(int(i) for i in no))
    both = set(yes) & set(no)
    if both:
        raise ConstraintError(f"image {sorted(both)[0]} was answered both yes and no: give each result one answer")
    if q in yes or q in no:
        raise ConstraintError(f"image {q} was answered about itself: answer about its results")
    rows = [("must", min(q, i), max(q, i)) for i in yes] + [("cannot", min(q, i), max(q, i)) for i in no]
    if not rows:
        return 0
    _check_images(ws, {q, *yes, *no})
    _check_same_site(ws, [(q, i) for i in yes])
    return _record_batch(ws, rows, user)


def confirm(ws, pairs, *, user: str | None = None) -> int:
    """Same person (must-link) for every pair, one undo step."""
    return decide(ws, pairs, "must", user=user)


def reject(ws, pairs, *, user: str | None = None) -> int:
    """Not the same person (cannot-link) for every pair, one undo step."""
    return decide(ws, pairs, "cannot", user=user)


def _move(ws, from_state: int, to_state: int, newest: bool) -> int | None:
    agg = "MAX" if newest else "MIN"
    with ws.transaction() as con:
        row = con.execute(
            f"SELECT {agg}(b) FROM (SELECT batch AS b FROM decisions WHERE state = ? "
            "UNION ALL SELECT batch FROM identity_names WHERE state = ?)",
            (from_state, from_state),
        ).fetchone()
        if row[0] is None:
            return None
        for t in ("decisions", "identity_names"):
            con.execute(f"UPDATE {t} SET state = ? WHERE batch = ? AND state = ?", (to_state, row[0], from_state))
        return int(row[0])


def undo(ws) -> int | None:
    """Undo the newest active step (one batch).  Returns its batch id, None when nothing to undo."""
    return _move(ws, 0, 1, newest=True)


def redo(ws) -> int | None:
    """Redo the oldest undone step.  Returns its batch id, None when nothing to redo."""
    return _move(ws, 1, 0, newest=False)


def history(ws, *, limit: int | None = None) -> list[Decision]:
    sql = "SELECT id, batch, kind, image_a, image_b, at, user, state FROM decisions ORDER BY id DESC"
    rows = ws.query(sql + (f" LIMIT {int(limit)}" if limit else ""))
    return [Decision(*r) for r in rows]


def record_split(ws, moved, rest, keys_moved, keys_rest, *, together: bool = True, user: str | None = None) -> int:
    """Write a split as one undo step.  ``together``: the moved sightings are one person (chained
    by must-links); otherwise each moved sighting only leaves the rest (cannot-links to it) and
    nothing is said about the moved ones among themselves."""
    must, cannot = split_pairs(moved, rest, keys_moved, keys_rest) if together else \
        _split_off_pairs(moved, rest, keys_moved, keys_rest)
    _check_images(ws, {i for p in must + cannot for i in p})
    rows = [(k, min(a, b), max(a, b)) for k, prs in (("must", must), ("cannot", cannot)) for a, b in prs]
    return _record_batch(ws, rows, user)


def _split_off_pairs(moved, rest, keys_moved, keys_rest) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(must, cannot) pairs that take each of ``moved`` off ``rest`` without joining the moved
    ones: the rest chained by must-links (as :func:`~itkm_engine.constraints.split_pairs`), each
    moved sighting cannot-linked to the rest's first sighting overall and in its own group key."""
    moved, rest = np.asarray(moved, np.int64), np.asarray(rest, np.int64)
    km, kr = np.asarray(keys_moved, object).astype(str), np.asarray(keys_rest, object).astype(str)
    if not len(moved) or not len(rest):
        raise ConstraintError("a split needs at least one sighting on each side: select some, not all, of them")
    chain = rest[np.lexsort((rest, kr))]  # sorted by group key: every group sees its own chain
    must = [(int(a), int(b)) for a, b in zip(chain[:-1], chain[1:])]
    first = {k: int(rest[kr == k].min()) for k in set(kr)}
    cannot = set()
    for m, k in zip(moved.tolist(), km.tolist()):
        cannot.add((m, int(rest.min())))
        if k in first:
            cannot.add((m, first[k]))
    return must, sorted(cannot)


def cannot_between(ws, groups) -> list[Decision]:
    """The rejections in effect (the latest active decision on the pair is ``cannot``) between
    sightings of two different ``groups`` (lists of image ids), newest first."""
    where: dict[int, int] = {}
    for g, ids in enumerate(groups):
        for i in np.asarray(ids, np.int64).tolist():
            where[int(i)] = g
    seen: set[tuple[int, int]] = set()
    out = []
    for r in ws.query("SELECT id, batch, kind, image_a, image_b, at, user, state FROM decisions WHERE state = 0 "
                      "ORDER BY id DESC"):
        d = Decision(*r)
        pair = (d.image_a, d.image_b)
        if pair in seen:
            continue
        seen.add(pair)
        ga, gb = where.get(d.image_a), where.get(d.image_b)
        if d.kind == "cannot" and ga is not None and gb is not None and ga != gb:
            out.append(d)
    return out


def name_identity(ws, anchor_ids, name: str, note: str = "", *, user: str | None = None) -> int:
    """Name (and note) the identity that holds ``anchor_ids`` now; one undo step."""
    anchors = sorted({int(i) for i in anchor_ids})
    if not anchors:
        raise ConstraintError("naming needs an identity with at least one sighting")
    name, note = str(name).strip(), str(note)
    with ws.transaction() as con:
        batch = _new_batch(con)
        con.execute(
            "INSERT INTO identity_names (batch, anchors, name, note, at, user, state) VALUES (?, ?, ?, ?, ?, ?, 0)",
            (batch, json.dumps(anchors), name, note, time.time(), _user() if user is None else user),
        )
    return batch


def identity_names(ws, image_ids: np.ndarray, identity: np.ndarray) -> dict[int, tuple[str, str]]:
    """``{identity: (name, note)}`` for the current identities: a name goes to the identity holding
    most of its anchor images; where two names land on one identity, the newer wins."""
    rows = ws.query("SELECT id, anchors, name, note FROM identity_names WHERE state = 0 ORDER BY id")
    out: dict[int, tuple[str, str]] = {}
    ids = np.asarray(image_ids, np.int64)
    for row_id, anchors, name, note in rows:
        anchor_ids = _anchor_ids(anchors)
        if anchor_ids is None:  # edited outside ITKM Studio: left out, said once, never a crash
            _warn_damaged_name(ws, row_id, name)
            continue
        hit = rows_of(ids, anchor_ids)
        hit = hit[hit >= 0]
        if not len(hit):
            continue
        vals, counts = np.unique(np.asarray(identity)[hit], return_counts=True)
        out[int(vals[np.argmax(counts)])] = (name, note)
    return out


def _anchor_ids(text) -> np.ndarray | None:
    """A stored name's anchor image ids, or ``None`` when the text is not a JSON list of ids."""
    try:
        values = json.loads(text)
    except (TypeError, ValueError):
        return None
    if not isinstance(values, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in values):
        return None
    return np.asarray(values, np.int64)


def _warn_damaged_name(ws, row_id: int, name) -> None:
    warned = ws.__dict__.setdefault("_damaged_names_warned", set())
    if row_id in warned:
        return
    warned.add(row_id)
    reporter = getattr(ws, "_reporter", None)
    if reporter is not None:
        reporter.warning(f"the identity name {str(name)!r} (identity_names row {row_id}) has damaged anchors (not a "
                         "list of image ids: the database was edited outside ITKM Studio); it is left out -- name "
                         "the identity again")


def describe_step(ws, batch: int | None) -> str:
    """What one undo step holds, in words ("confirming images 12 and 40 as the same person",
    "rejecting 3 pairs", "a split", "naming an identity 'Visitor 7'"): what undo / redo say."""
    if batch is None:
        return ""
    named = ws.query("SELECT name FROM identity_names WHERE batch = ? ORDER BY id LIMIT 1", (int(batch),))
    if named:
        return f"naming an identity {named[0][0]!r}" if named[0][0] else "clearing an identity's name"
    rows = ws.query("SELECT kind, image_a, image_b FROM decisions WHERE batch = ?", (int(batch),))
    must = [(a, b) for k, a, b in rows if k == "must"]
    cannot = [(a, b) for k, a, b in rows if k == "cannot"]
    if must and cannot:
        return f"a split ({len(must) + len(cannot)} links)"
    pairs, what = (must, "as the same person") if must else (cannot, "as different people")
    verb = "confirming" if must else "rejecting"
    if len(pairs) == 1:
        return f"{verb} images {pairs[0][0]} and {pairs[0][1]} {what}"
    return f"{verb} {len(pairs)} pairs {what}" if pairs else f"step {batch}"
