"""Stable identity ids: the numbers a person can refer to, kept across decisions and rounds.

Clustering and decision enforcement hand out *labels* (positions ``0..C-1``) that change whenever
anything does.  The operator needs numbers that do not: "#12" today must be the same people
tomorrow, after a merge somewhere else and after the next training round.  :func:`assign_ids`
gives every new cluster the id of the earlier identity it continues, by overlap:

* the overlap matrix (earlier id x new cluster: images in both) is solved with the Hungarian method
  (``scipy.optimize.linear_sum_assignment``), in tiers: ids a merge keeps first, then named
  identities, then identities the operator touched (an image of theirs is in a decision), then the
  rest; a match is kept only when it covers at least half of the new cluster or half of the earlier
  identity;
* a merge keeps the named, else the older (smaller) id: where two or more earlier identities each
  lie mostly inside one new cluster, that one is matched first;
* a split leaves the id with the larger part (the larger overlap wins the Hungarian match);
* a cluster left without a match gets a new id, never used before (``next_id`` counts up); an
  earlier id left without a match is *retired* into the identity now holding most of its images
  (``merged`` when that is at least half of them).

:func:`separate_split_offs` makes sightings that were split off one by one identities of their own
(nobody said they are one person).  The store -- the assignment in effect, its undo stack and the
lineage log -- is :mod:`itkm_engine.workspace.identity_store`; :class:`~itkm_engine.session.Session`
puts the two together.  Pure functions of arrays, no storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .records import rows_of

__all__ = ["EVENTS", "LineageEvent", "IdAssignment", "assign_ids", "separate_split_offs", "must_components"]

#: Lineage events: a new id; an id merged into another (most of its images went there); an id
#: split from another (made of a part of it); an id retired (its images scattered; ``other`` holds
#: most of them).
EVENTS = ("new", "merged", "split", "retired")


@dataclass(frozen=True)
class LineageEvent:
    identity: int
    event: str  # one of EVENTS
    other: int | None = None  # merged into / split from / retired into


@dataclass
class IdAssignment:
    """Stable id per image (aligned with the ``ids`` given to :func:`assign_ids`), what happened to
    the ids, and the next id never used."""

    identity: np.ndarray
    events: list[LineageEvent] = field(default_factory=list)
    next_id: int = 1


def assign_ids(prev_ids, prev_identity, ids, labels, *, next_id: int, named: Iterable[int] = (),
               touched: Iterable[int] = ()) -> IdAssignment:
    """Stable ids for the clusters ``labels`` (one per image of ``ids``, all >= 0) given the
    assignment in effect before (``prev_ids`` -> ``prev_identity``).  See the module docstring."""
    ids = np.asarray(ids, np.int64)
    labels = np.asarray(labels, np.int64)
    prev_ids = np.asarray(prev_ids, np.int64)
    prev_identity = np.asarray(prev_identity, np.int64)
    next_id = max(int(next_id), 1)
    if len(ids) == 0:
        return IdAssignment(np.zeros(0, np.int64), [LineageEvent(int(o), "retired") for o in np.unique(prev_identity)],
                            next_id)
    cl, lab = np.unique(labels, return_inverse=True)
    n_new = len(cl)
    size_new = np.bincount(lab, minlength=n_new)
    rows = rows_of(prev_ids, ids)
    common = rows >= 0
    old_of = np.full(len(ids), -1, np.int64)
    old_of[common] = prev_identity[rows[common]]
    old_ids, old_inv = np.unique(old_of[common], return_inverse=True)
    size_old = np.bincount(old_inv, minlength=len(old_ids))
    pair, counts = np.unique(old_inv * n_new + lab[common], return_counts=True)
    p_old, p_new = pair // n_new, pair % n_new
    valid = (2 * counts >= size_new[p_new]) | (2 * counts >= size_old[p_old])

    named_set, touched_set = {int(i) for i in named}, {int(i) for i in touched}
    tier = np.array([1 if int(o) in named_set else 2 if int(o) in touched_set else 3 for o in old_ids], np.int64)
    weight = counts.astype(np.float64)
    # A merge keeps the named, else the older id: where several earlier identities lie mostly
    # inside one new cluster, the preferred one is matched to it before anything else.
    mostly = valid & (2 * counts >= size_old[p_old])
    for n in np.unique(p_new[mostly]):
        cand = np.flatnonzero(mostly & (p_new == n))
        if len(cand) < 2:
            continue
        best = min(cand, key=lambda i: (int(old_ids[p_old[i]]) not in named_set, int(old_ids[p_old[i]])))
        tier[p_old[best]] = 0
        weight[best] += float(counts.sum()) + 1.0

    match_new = np.full(n_new, -1, np.int64)  # new cluster -> index into old_ids
    match_old = np.full(len(old_ids), -1, np.int64)
    for t in range(4):
        sel = np.flatnonzero(valid & (tier[p_old] == t) & (match_old[p_old] < 0) & (match_new[p_new] < 0))
        if len(sel):
            for o, n in _max_weight_matching(p_old[sel], p_new[sel], weight[sel]):
                match_old[o], match_new[n] = n, o

    out = np.full(len(ids), -1, np.int64)
    stable_of_new = np.full(n_new, -1, np.int64)
    stable_of_new[match_new >= 0] = old_ids[match_new[match_new >= 0]]
    events: list[LineageEvent] = []
    fresh = np.flatnonzero(match_new < 0)
    if len(fresh):
        first = np.full(n_new, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first, lab, ids)
        fresh = fresh[np.lexsort((first[fresh], -size_new[fresh]))]  # largest first, then by first image
        # plurality earlier id of each fresh cluster (split from it, when that id lives on)
        plural_old = np.full(n_new, -1, np.int64)
        order = np.lexsort((p_old, -counts, p_new))
        head = order[np.r_[True, p_new[order][1:] != p_new[order][:-1]]] if len(order) else order
        plural_old[p_new[head]] = p_old[head]
        for n in fresh:
            stable_of_new[n] = next_id
            src = plural_old[n]
            if src >= 0 and match_old[src] >= 0:
                events.append(LineageEvent(next_id, "split", int(old_ids[src])))
            else:
                events.append(LineageEvent(next_id, "new"))
            next_id += 1
    out[:] = stable_of_new[lab]
    # earlier ids left without a match: retired into the identity holding most of their images
    order = np.lexsort((stable_of_new[p_new], -counts, p_old))
    top = order[np.r_[True, p_old[order][1:] != p_old[order][:-1]]] if len(order) else order
    for e in top[match_old[p_old[top]] < 0]:
        kind = "merged" if 2 * counts[e] >= size_old[p_old[e]] else "retired"
        events.append(LineageEvent(int(old_ids[p_old[e]]), kind, int(stable_of_new[p_new[e]])))
    gone = np.setdiff1d(np.unique(prev_identity), old_ids)  # none of their images is here any more
    events += [LineageEvent(int(o), "retired") for o in gone]
    return IdAssignment(out, events, next_id)


def _max_weight_matching(rows: np.ndarray, cols: np.ndarray, w: np.ndarray) -> list[tuple[int, int]]:
    """Maximum-weight matching of the bipartite graph given as edges (row, col, weight > 0): the
    Hungarian method (``linear_sum_assignment``) on each connected component, so a million
    identities that mostly match one to one cost no dense million-square matrix."""
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ur, ri = np.unique(rows, return_inverse=True)
    uc, ci = np.unique(cols, return_inverse=True)
    nr, nc = len(ur), len(uc)
    g = coo_matrix((np.ones(len(ri)), (ri, nr + ci)), shape=(nr + nc, nr + nc))
    _, comp = connected_components(g, directed=False)
    edge_comp = comp[ri]
    out: list[tuple[int, int]] = []
    order = np.argsort(edge_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    for blk in np.split(order, bounds):
        if len(blk) == 1:
            e = blk[0]
            out.append((int(rows[e]), int(cols[e])))
            continue
        br, bri = np.unique(ri[blk], return_inverse=True)
        bc, bci = np.unique(ci[blk], return_inverse=True)
        m = np.zeros((len(br), len(bc)))
        m[bri, bci] = w[blk]
        r_idx, c_idx = linear_sum_assignment(m, maximize=True)
        for r, c in zip(r_idx, c_idx):
            if m[r, c] > 0:
                out.append((int(ur[br[r]]), int(uc[bc[c]])))
    return out


def must_components(image_ids, must) -> np.ndarray:
    """Must-link component per image of ``image_ids`` (transitive, through any of them); an
    image in no must-link is a component of its own."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids = np.asarray(image_ids, np.int64)
    pairs = rows_of(ids, np.asarray(must, np.int64).reshape(-1, 2)) if len(ids) else np.zeros((0, 2), np.int64)
    pairs = pairs[(pairs >= 0).all(axis=1)] if len(pairs) else pairs
    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(ids), len(ids)))
    return connected_components(g, directed=False)[1].astype(np.int64)


def separate_split_offs(labels, image_ids, split_offs: Iterable[np.ndarray], must) -> np.ndarray:
    """Labels where sightings split off one by one are identities of their own: inside one split
    step, split-off sightings that share a label without being must-linked (transitively) are
    parted -- the label keeps the must-linked group with the most split-off sightings (ties: the
    smallest image id) and everything not split off; every other group gets a label of its own."""
    lab = np.asarray(labels, np.int64).copy()
    ids = np.asarray(image_ids, np.int64)
    offs = [np.asarray(m, np.int64) for m in split_offs]
    if not len(ids) or not any(len(m) > 1 for m in offs):
        return lab
    comp = must_components(ids, must)
    nxt = int(lab.max()) + 1
    for moved in offs:
        r = rows_of(ids, moved)
        r = r[r >= 0]
        if len(r) < 2:
            continue
        for c in np.unique(lab[r]):
            rc = r[lab[r] == c]
            groups = np.unique(comp[rc])
            if len(groups) < 2:
                continue
            sizes = [(-(comp[rc] == g).sum(), int(ids[rc[comp[rc] == g]].min()), int(g)) for g in groups]
            keep = min(sizes)[2]
            for g in groups:
                if g == keep:
                    continue
                lab[(lab == c) & (comp == g)] = nxt
                nxt += 1
    return lab
