"""Operator decisions as constraints, and how rounds obey them (pure functions, no storage).

The decisions themselves are stored by :mod:`itkm_engine.workspace.decisions`
(:func:`~itkm_engine.workspace.decisions.load_constraints` hands them over as :class:`Constraints`);
the review queue that asks for them is :mod:`itkm_engine.review`.

The decisions are first *closed over all images* (:class:`Closure`, ``Constraints.closure``):
must-links joined transitively into components (newest first; a join that would put a
cannot-linked pair together is skipped), and a cannot-link between two images becomes one between
their whole components.  Only then are they cut down to the rows at hand
(:meth:`Closure.within`), so the per-group pseudo-labels see the links a chain of decisions across
groups implies (A = B across groups and B = C across groups make A = C inside one group), and a
reject between two confirmed groups keeps every member of one from every member of the other.

Enforcement (:func:`enforce_on_labels`) is one function used wherever labels are produced: the
per-group pseudo-labels of Stage I/III (``stages/context.py``), the cross-group CHM labels per
scenario (``stages/heterogeneous.py``) and the final identities (``session.py``).  Confirmed
cross-group pairs are also IHM positives (:func:`instance_pairs`); the decision loss and the
batches that bring decided pairs together read the same closure (``stages/context.py``,
:mod:`itkm_engine.losses.decision`).  An identity merge or split becomes must/cannot pairs with
:func:`merge_pairs` / :func:`split_pairs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import ItkmError
from .records import rows_of

__all__ = [
    "KINDS",
    "Constraints",
    "Closure",
    "ConstraintError",
    "merge_pairs",
    "split_pairs",
    "enforce_on_labels",
    "enforce_cross_labels",
    "instance_pairs",
    "decided_pairs",
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

    @cached_property
    def closure(self) -> "Closure":
        """The decisions closed over all images (computed once per Constraints)."""
        return Closure.of(self)


@dataclass(frozen=True)
class Closure:
    """Decisions closed over every image they name.

    ``ids``: the decided image ids (sorted); ``comp``: the must-link component of each, ``0..K-1``
    (joined newest decision first; a join that would put a cannot-linked pair together is
    skipped, so inconsistent decisions keep the cannot-link); ``ban``: ``int64[B, 2]`` pairs of
    components that must stay apart (``a < b``, unique): a cannot-link between two images applies
    to every member of their components."""

    ids: np.ndarray
    comp: np.ndarray
    ban: np.ndarray

    @classmethod
    def of(cls, constraints: "Constraints") -> "Closure":
        pairs = np.concatenate([constraints.must, constraints.cannot]).astype(np.int64).reshape(-1, 2)
        ids = np.unique(pairs)
        if not len(ids):
            return cls(ids, np.zeros(0, np.int64), np.zeros((0, 2), np.int64))
        must = np.searchsorted(ids, np.asarray(constraints.must, np.int64).reshape(-1, 2))
        cannot = np.searchsorted(ids, np.asarray(constraints.cannot, np.int64).reshape(-1, 2))
        roots = _components(len(ids), must, cannot)
        _, comp = np.unique(roots, return_inverse=True)
        comp = comp.astype(np.int64).reshape(-1)
        ban = np.sort(comp[cannot], axis=1) if len(cannot) else np.zeros((0, 2), np.int64)
        ban = np.unique(ban[ban[:, 0] != ban[:, 1]], axis=0).reshape(-1, 2)
        return cls(ids, comp, ban)

    @property
    def n_components(self) -> int:
        return int(self.comp.max()) + 1 if len(self.comp) else 0

    def component_of(self, image_ids) -> np.ndarray:
        """Component of each image id (``-1`` for an image no decision names)."""
        rows = rows_of(self.ids, np.asarray(image_ids, np.int64))
        return np.where(rows >= 0, self.comp[np.maximum(rows, 0)] if len(self.comp) else -1, -1)

    def banned_with(self, component: int) -> np.ndarray:
        """The components ``component`` must stay apart from."""
        b = self.ban
        return np.concatenate([b[b[:, 0] == component, 1], b[b[:, 1] == component, 0]])

    def ban_matrix(self) -> np.ndarray:
        """``bool[K, K]``: components that must stay apart (symmetric)."""
        k = self.n_components
        out = np.zeros((k, k), bool)
        if len(self.ban):
            out[self.ban[:, 0], self.ban[:, 1]] = True
            out[self.ban[:, 1], self.ban[:, 0]] = True
        return out

    def within(self, image_ids) -> tuple[np.ndarray, np.ndarray]:
        """``(must, cannot)`` as row pairs of ``image_ids`` (``int64[M, 2]``) that carry every link
        the closure implies among those images: each component's present members chained, and one
        cannot pair per banned pair of components that both have members present."""
        comp = self.component_of(image_ids)
        rows = np.flatnonzero(comp >= 0)
        if not len(rows):
            return np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64)
        order = rows[np.lexsort((rows, comp[rows]))]
        c = comp[order]
        same = c[1:] == c[:-1]
        must = np.stack([order[:-1][same], order[1:][same]], axis=1).astype(np.int64)
        first = np.full(self.n_components, -1, np.int64)
        starts = np.concatenate([[True], ~same])
        first[c[starts]] = order[starts]
        if len(self.ban):
            fa, fb = first[self.ban[:, 0]], first[self.ban[:, 1]]
            ok = (fa >= 0) & (fb >= 0)
            cannot = np.stack([fa[ok], fb[ok]], axis=1).astype(np.int64)
        else:
            cannot = np.zeros((0, 2), np.int64)
        return must.reshape(-1, 2), cannot.reshape(-1, 2)


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


# -- enforcement ----------------------------------------------------------------------------------
class _UnionFind:
    def __init__(self, n: int) -> None:
        self.p = list(range(n))

    def find(self, x: int) -> int:
        while self.p[x] != x:
            self.p[x] = self.p[self.p[x]]
            x = self.p[x]
        return x


def _pair_rows(pairs: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row pairs for the id pairs whose both ends are among ``ids`` (``int64[K, 2]``)."""
    if not len(pairs) or not len(ids):
        return np.zeros((0, 2), np.int64)
    rows = rows_of(ids, pairs)
    return rows[(rows >= 0).all(axis=1)]


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
    """Labels that obey ``constraints``: every link their closure over all images implies among
    ``image_ids`` (:meth:`Closure.within`), so a chain of decisions through other groups counts.

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
    must, cannot = constraints.closure.within(ids)
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
    """IHM pairs (rows of ``image_ids``) that obey the operator: pairs between components the
    closure keeps apart dropped, and confirmed cross-group pairs added -- every member of a
    must-link component paired with members of each other group key in it (each member at least
    once per other key, so a component of n images adds O(n) pairs, not n^2)."""
    ids = np.asarray(image_ids, np.int64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if not len(constraints):
        return pairs
    cl = constraints.closure
    comp = cl.component_of(ids)
    if len(pairs) and len(cl.ban):
        ca, cb = comp[pairs[:, 0]], comp[pairs[:, 1]]
        ok = (ca < 0) | (cb < 0)
        ban = cl.ban_matrix()
        pairs = pairs[ok | ~ban[np.maximum(ca, 0), np.maximum(cb, 0)]]
    keys = np.asarray(group_keys, object)
    add: list[tuple[int, int]] = []
    rows = np.flatnonzero(comp >= 0)
    for c in np.unique(comp[rows]):
        members = rows[comp[rows] == c]
        kk = keys[members].astype(str)
        blocks = [members[kk == k] for k in np.unique(kk)]
        for i in range(len(blocks)):
            for j in range(i + 1, len(blocks)):
                a, b = blocks[i], blocks[j]
                add += [(int(a[t % len(a)]), int(b[t % len(b)])) for t in range(max(len(a), len(b)))]
    if add:
        have = {(int(a), int(b)) for a, b in pairs} | {(int(b), int(a)) for a, b in pairs}
        new = [p for p in dict.fromkeys(add) if p not in have]
        if new:
            pairs = np.concatenate([pairs, np.array(new, np.int64)])
    return pairs


def decided_pairs(image_ids, constraints: Constraints) -> tuple[np.ndarray, np.ndarray]:
    """The operator's own pairs (not the implied ones) with both images among ``image_ids``, as
    rows: ``(must, cannot)``, ``int64[M, 2]`` each -- what the training batches bring together.
    A confirm the closure had to drop (it contradicts a reject) is left out."""
    ids = np.asarray(image_ids, np.int64)
    must = _pair_rows(np.asarray(constraints.must, np.int64).reshape(-1, 2), ids)
    cannot = _pair_rows(np.asarray(constraints.cannot, np.int64).reshape(-1, 2), ids)
    if len(must):
        comp = constraints.closure.component_of(ids)
        must = must[comp[must[:, 0]] == comp[must[:, 1]]]
    return must, cannot
