"""Operator decisions: must-link / cannot-link constraints, their store, and how rounds obey them.

The store (schema v3 tables ``decisions`` and ``identity_names``, see workspace.py):

* a decision is a pair of image ids, ``must`` (same person) or ``cannot`` (not), when, and the OS
  user; the latest active decision on a pair wins (a reject after a confirm overrides it);
* every action writes one ``batch`` (a confirm, a whole selection, a merge, a split, a name), and
  undo / redo move whole batches: undo flags the newest active batch ``state=1``; redo
  re-activates the oldest undone one; a new action after an undo retires the undone batches
  (``state=2``, kept for the record) -- the usual editor semantics;
* identity names and notes are anchored to the image ids the identity held when it was named, so
  they survive re-clustering (identity numbers change every round; image ids never do).

Enforcement (:func:`enforce_on_labels`) is one function used wherever labels are produced: the
per-group pseudo-labels of Stage I/III (``stages/context.py``), the cross-group CHM labels per
scenario (``stages/heterogeneous.py``) and the final identities (``session.py``).  Constraints
whose two images are not both among the rows given are ignored there, so per-group clustering
sees only its own must/cannot-links and CHM only its scenario's.  Confirmed cross-group pairs are
also IHM positives (:func:`instance_pairs`).
"""

from __future__ import annotations

import getpass
import json
import time
from dataclasses import dataclass

import numpy as np

from .errors import ItkmError

__all__ = [
    "Constraints",
    "Decision",
    "ReviewPair",
    "ConstraintError",
    "load_constraints",
    "revision",
    "decide",
    "confirm",
    "reject",
    "undo",
    "redo",
    "history",
    "merge_pairs",
    "split_pairs",
    "name_identity",
    "identity_names",
    "enforce_on_labels",
    "enforce_cross_labels",
    "instance_pairs",
    "review_queue",
    "simulate_confirmations",
]

KINDS = ("must", "cannot")


class ConstraintError(ItkmError):
    """A decision that cannot be recorded as asked (same image twice, unknown image, ...)."""


@dataclass(frozen=True)
class Constraints:
    """The effective constraints: ``must`` and ``cannot`` as ``int64[M, 2]`` image-id pairs (a < b),
    newest decision first (enforcement joins newer must-links first, so a later split beats the
    must-links of an earlier merge)."""

    must: np.ndarray
    cannot: np.ndarray

    @classmethod
    def empty(cls) -> "Constraints":
        return cls(np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64))

    def __len__(self) -> int:
        return len(self.must) + len(self.cannot)

    def decision(self, a: int, b: int) -> str | None:
        a, b = min(a, b), max(a, b)
        for kind, arr in (("must", self.must), ("cannot", self.cannot)):
            if len(arr) and ((arr[:, 0] == a) & (arr[:, 1] == b)).any():
                return kind
        return None


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


@dataclass(frozen=True)
class ReviewPair:
    image_a: int
    image_b: int
    similarity: float
    same_identity: bool
    cross_scenario: bool
    margin: float  # |similarity - boundary|


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers): still record the decision
        return ""


# -- the store -------------------------------------------------------------------------------------
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
    now, who = time.time(), _user() if user is None else user
    with ws.transaction() as con:
        batch = _new_batch(con)
        con.executemany(
            "INSERT INTO decisions (batch, kind, image_a, image_b, at, user, state) VALUES (?, ?, ?, ?, ?, ?, 0)",
            [(batch, kind, a, b, now, who) for a, b in norm],
        )
    return batch


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


# -- identity actions as constraints ----------------------------------------------------------
def _chain(ids: np.ndarray, keys: np.ndarray) -> list[tuple[int, int]]:
    """Must-link pairs that connect ``ids``: consecutive after sorting by group key, so every group
    (and every scenario) sees a connected chain of its own members."""
    order = np.lexsort((ids, keys.astype(str)))
    s = np.asarray(ids)[order]
    return [(int(a), int(b)) for a, b in zip(s[:-1], s[1:])]


def merge_pairs(members) -> list[tuple[int, int]]:
    """Must-links that make several identities one person; ``members`` is a list of
    ``(image ids, group keys)``, one per identity."""
    ids = np.concatenate([np.asarray(i, np.int64) for i, _ in members])
    keys = np.concatenate([np.asarray(k, object) for _, k in members])
    return _chain(ids, keys)


def split_pairs(moved, rest, keys_moved, keys_rest) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(must, cannot) pairs that split ``moved`` off ``rest``: each side chained by must-links,
    and a cannot-link between the sides in every group key both have (plus one overall), so every
    stage -- per group, per scenario, final -- sees the split."""
    moved, rest = np.asarray(moved, np.int64), np.asarray(rest, np.int64)
    km, kr = np.asarray(keys_moved, object).astype(str), np.asarray(keys_rest, object).astype(str)
    if not len(moved) or not len(rest):
        raise ConstraintError("a split needs at least one sighting on each side: select some, not all, of them")
    must = _chain(moved, km) + _chain(rest, kr)
    cannot = [(int(moved.min()), int(rest.min()))]
    for k in sorted(set(km) & set(kr)):
        cannot.append((int(moved[km == k].min()), int(rest[kr == k].min())))
    return must, cannot


def record_split(ws, moved, rest, keys_moved, keys_rest, *, user: str | None = None) -> int:
    """Write a split as one undo step."""
    must, cannot = split_pairs(moved, rest, keys_moved, keys_rest)
    now, who = time.time(), _user() if user is None else user
    _check_images(ws, {i for p in must + cannot for i in p})
    rows = [(k, min(a, b), max(a, b)) for k, prs in (("must", must), ("cannot", cannot)) for a, b in prs]
    with ws.transaction() as con:
        batch = _new_batch(con)
        con.executemany(
            "INSERT INTO decisions (batch, kind, image_a, image_b, at, user, state) VALUES (?, ?, ?, ?, ?, ?, 0)",
            [(batch, k, a, b, now, who) for k, a, b in rows],
        )
    return batch


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
    rows = ws.query("SELECT anchors, name, note FROM identity_names WHERE state = 0 ORDER BY id")
    out: dict[int, tuple[str, str]] = {}
    ids = np.asarray(image_ids, np.int64)
    order = np.argsort(ids)
    for anchors, name, note in rows:
        a = np.asarray(json.loads(anchors), np.int64)
        pos = np.searchsorted(ids, a, sorter=order)
        pos = np.minimum(pos, max(len(ids) - 1, 0))
        hit = order[pos][ids[order[pos]] == a] if len(ids) else np.zeros(0, np.int64)
        if not len(hit):
            continue
        vals, counts = np.unique(np.asarray(identity)[hit], return_counts=True)
        out[int(vals[np.argmax(counts)])] = (name, note)
    return out


# -- enforcement ----------------------------------------------------------------------------------
class _UnionFind:
    def __init__(self, n: int) -> None:
        self.p = list(range(n))

    def find(self, x: int) -> int:
        while self.p[x] != x:
            self.p[x] = self.p[self.p[x]]
            x = self.p[x]
        return x


def _rows_of(pairs: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row pairs for the id pairs whose both ends are among ``ids`` (``int64[K, 2]``)."""
    if not len(pairs) or not len(ids):
        return np.zeros((0, 2), np.int64)
    order = np.argsort(ids)
    pos = np.minimum(np.searchsorted(ids, pairs, sorter=order), len(ids) - 1)
    rows = order[pos]
    ok = (ids[rows] == pairs).all(axis=1)
    return rows[ok]


def _components(n: int, must: np.ndarray, cannot: np.ndarray) -> np.ndarray:
    """Must-link components over rows (-1 for rows in no constraint), joined in the given order
    (newest first); a must-link that would join two components with a cannot-link between them is
    skipped (inconsistent decisions: the cannot-link holds)."""
    comp = np.full(n, -1, np.int64)
    nodes = np.unique(np.concatenate([must.ravel(), cannot.ravel()]))
    local = {int(r): i for i, r in enumerate(nodes)}
    uf = _UnionFind(len(nodes))
    members = {i: {i} for i in range(len(nodes))}
    banned: dict[int, set[int]] = {i: set() for i in range(len(nodes))}
    for a, b in cannot:
        banned[local[int(a)]].add(local[int(b)])
        banned[local[int(b)]].add(local[int(a)])
    for a, b in must:
        ra, rb = uf.find(local[int(a)]), uf.find(local[int(b)])
        if ra == rb or any(banned[x] & members[rb] for x in members[ra]):
            continue
        uf.p[rb] = ra
        members[ra] |= members.pop(rb)
    for r, i in local.items():
        comp[r] = uf.find(i)
    return comp


def enforce_on_labels(labels, image_ids, constraints: Constraints, feats: np.ndarray | None = None) -> np.ndarray:
    """Labels that obey ``constraints`` (only pairs with both images among ``image_ids`` count).

    1. Cannot-link splits: a cluster holding two must-link components with a cannot-link between
       them is split into parts (components dealt greedily to the first part they do not conflict
       with); its unconstrained members join the part whose constrained members they are closest
       to (cosine of ``feats``; without ``feats`` they stay in the first part).
    2. Must-link joins: the clusters a component touches are merged (its outlier members join
       too; a component of outliers only becomes a new cluster), unless that would put a
       cannot-linked pair together -- then only the component's own rows move.
    Returns ``int64`` labels renumbered ``0..C-1`` in order of first appearance, ``-1`` outliers.
    Where no constraint applies the labels come back unchanged.
    """
    lab = np.asarray(labels, np.int64).copy()
    ids = np.asarray(image_ids, np.int64)
    must, cannot = _rows_of(constraints.must, ids), _rows_of(constraints.cannot, ids)
    if not len(must) and not len(cannot):
        return lab
    comp = _components(len(lab), must, cannot)
    ban = {(int(comp[a]), int(comp[b])) for a, b in cannot if comp[a] != comp[b]}
    ban |= {(y, x) for x, y in ban}
    lab = _split(lab, comp, ban, feats)
    lab = _join(lab, comp, ban, must)
    if len(cannot):  # a move in step 2 can only have created violations step 1 removes
        lab = _split(lab, comp, ban, feats)
    return _renumber(lab)


def enforce_cross_labels(labels, offset: int, image_ids, constraints: Constraints,
                         feats: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """CHM's cross-group labels of one scenario (numbered from ``offset``) made to obey the
    constraints: a cannot-linked pair is never merged, a must-linked pair always is.  Returns the
    labels (again from ``offset``) and how many there are."""
    lab = np.asarray(labels, np.int64)
    out = enforce_on_labels(np.where(lab >= 0, lab - offset, -1), image_ids, constraints, feats)
    n = int(out.max()) + 1 if (out >= 0).any() else 0
    return np.where(out >= 0, out + offset, -1), n


def _split(lab: np.ndarray, comp: np.ndarray, ban: set, feats: np.ndarray | None) -> np.ndarray:
    if not ban:
        return lab
    nxt = int(lab.max()) + 1 if len(lab) else 0
    for c in np.unique(lab[(comp >= 0) & (lab >= 0)]):
        rows = np.flatnonzero(lab == c)
        comps = [int(x) for x in np.unique(comp[rows]) if x >= 0]
        if not any((x, y) in ban for x in comps for y in comps):
            continue
        parts: list[list[int]] = []
        for x in comps:
            for part in parts:
                if not any((x, y) in ban for y in part):
                    part.append(x)
                    break
            else:
                parts.append([x])
        part_of = {x: i for i, part in enumerate(parts) for x in part}
        anchored = comp[rows] >= 0
        assign = np.zeros(len(rows), np.int64)
        assign[anchored] = [part_of[int(x)] for x in comp[rows[anchored]]]
        free = rows[~anchored]
        if len(free) and feats is not None:
            cent = np.stack([feats[rows[anchored][assign[anchored] == i]].mean(axis=0) for i in range(len(parts))])
            cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
            assign[~anchored] = (feats[free] @ cent.T).argmax(axis=1)
        for i in range(1, len(parts)):
            lab[rows[assign == i]] = nxt
            nxt += 1
    return lab


def _join(lab: np.ndarray, comp: np.ndarray, ban: set, must: np.ndarray) -> np.ndarray:
    if not len(must):
        return lab
    nxt = int(lab.max()) + 1 if len(lab) else 0
    for c in np.unique(comp[must[:, 0]]):
        rows = np.flatnonzero(comp == c)
        targets = [int(t) for t in np.unique(lab[rows]) if t >= 0]
        if not targets:
            lab[rows] = nxt
            nxt += 1
            continue
        keep = targets[0]
        for t in targets[1:]:
            merged = np.flatnonzero((lab == keep) | (lab == t))
            cs = {int(x) for x in comp[merged] if x >= 0}
            if any((x, y) in ban for x in cs for y in cs):
                lab[rows[lab[rows] == t]] = keep  # move only the component's own rows
            else:
                lab[lab == t] = keep
        lab[rows[lab[rows] < 0]] = keep
    return lab


def _renumber(lab: np.ndarray) -> np.ndarray:
    out = np.full(lab.shape, -1, np.int64)
    inl = lab >= 0
    if inl.any():
        uniq, first = np.unique(lab[inl], return_index=True)
        new = np.empty(len(uniq), np.int64)
        new[np.argsort(first, kind="stable")] = np.arange(len(uniq))
        out[inl] = new[np.searchsorted(uniq, lab[inl])]
    return out


def instance_pairs(pairs: np.ndarray, image_ids, group_keys, constraints: Constraints) -> np.ndarray:
    """IHM pairs (rows of ``image_ids``) that obey the operator: cannot-linked pairs dropped,
    confirmed cross-group pairs (both images present, different group keys) added."""
    ids = np.asarray(image_ids, np.int64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if not len(constraints):
        return pairs
    cannot = _rows_of(constraints.cannot, ids)
    if len(cannot) and len(pairs):
        bad = {(int(a), int(b)) for a, b in cannot} | {(int(b), int(a)) for a, b in cannot}
        pairs = pairs[[(int(a), int(b)) not in bad for a, b in pairs]]
    must = _rows_of(constraints.must, ids)
    keys = np.asarray(group_keys, object)
    must = must[keys[must[:, 0]] != keys[must[:, 1]]] if len(must) else must
    if len(must):
        have = {(int(a), int(b)) for a, b in pairs} | {(int(b), int(a)) for a, b in pairs}
        add = [(int(a), int(b)) for a, b in must if (int(a), int(b)) not in have]
        if add:
            pairs = np.concatenate([pairs, np.array(add, np.int64)])
    return pairs


# -- review ---------------------------------------------------------------------------------------
def review_queue(session, n: int = 100, *, k: int = 10) -> list[ReviewPair]:
    """Pairs to review, most informative first: candidate pairs are every image's ``k`` nearest
    neighbours; the decision boundary is the similarity midway between the mean of same-identity
    and the mean of different-identity candidate pairs; pairs nearest it come first, pairs across
    scenarios before pairs inside one.  Pairs already decided are left out."""
    fs = session.features()
    images = session.images()
    table = session.identities()
    k = max(1, min(k, len(fs.ids) - 1))
    if len(fs.ids) < 2:
        return []
    sims, idx = session.index().search(fs.feats, k + 1)
    rows = np.repeat(np.arange(len(fs.ids)), idx.shape[1])
    cols, s = idx.ravel(), sims.ravel()
    ok = (cols >= 0) & (cols != rows)
    rows, cols, s = rows[ok], cols[ok], s[ok]
    a, b = np.minimum(rows, cols), np.maximum(rows, cols)
    _, first = np.unique(a * len(fs.ids) + b, return_index=True)
    a, b, s = a[first], b[first], s[first]
    ident_rows = np.searchsorted(table.image_id, fs.ids)
    ident = table.identity[np.minimum(ident_rows, len(table.image_id) - 1)]
    same = ident[a] == ident[b]
    boundary = 0.5 * (s[same].mean() + s[~same].mean()) if same.any() and (~same).any() else float(np.median(s))
    img_rows = images.index_of(fs.ids)
    scen = np.asarray(images.scenario, object)[img_rows]
    cross = scen[a] != scen[b]
    margin = np.abs(s - boundary)
    cons = load_constraints(session.ws)
    decided = {tuple(p) for p in np.concatenate([cons.must, cons.cannot]).tolist()}
    out = []
    for i in np.lexsort((margin, ~cross)):
        ia, ib = int(fs.ids[a[i]]), int(fs.ids[b[i]])
        if (min(ia, ib), max(ia, ib)) in decided:
            continue
        out.append(ReviewPair(ia, ib, float(s[i]), bool(same[i]), bool(cross[i]), float(margin[i])))
        if len(out) >= n:
            break
    return out


def simulate_confirmations(ws_or_session, n: int, seed: int = 0, *, user: str = "simulated") -> int:
    """Add up to ``n`` decisions taken from the true person ids (benchmarks only): the review
    queue's pairs, nearest the boundary first (ties broken by ``seed``), each confirmed when the
    ids agree and rejected when they differ; pairs with an unknown id are skipped.  One batch per
    kind.  Returns the number of decisions written."""
    from .session import Session

    session = ws_or_session if isinstance(ws_or_session, Session) else Session(ws_or_session)
    queue = review_queue(session, n=4 * n + 100)
    rng = np.random.default_rng(seed)
    margins = np.array([p.margin for p in queue])
    cross = np.array([p.cross_scenario for p in queue])
    order = np.lexsort((rng.random(len(queue)), margins, ~cross)) if queue else []
    images = session.images()
    pid = np.asarray(images.person_id, np.int64)
    must, cannot = [], []
    for i in order:
        p = queue[i]
        ra, rb = images.index_of([p.image_a, p.image_b])
        if ra < 0 or rb < 0 or pid[ra] < 0 or pid[rb] < 0:
            continue
        (must if pid[ra] == pid[rb] else cannot).append((p.image_a, p.image_b))
        if len(must) + len(cannot) >= n:
            break
    decide(session.ws, must, "must", user=user)
    decide(session.ws, cannot, "cannot", user=user)
    return len(must) + len(cannot)
