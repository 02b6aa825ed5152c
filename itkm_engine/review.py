"""What to ask the operator next: the review queue, and simulated answers for benchmarks.

:func:`review_queue` ranks candidate pairs (nearest neighbours in the current features) by how
much a decision on them would teach: nearest the decision boundary first, pairs across scenarios
before pairs inside one, pairs already decided left out.  :func:`simulate_confirmations` answers
the queue from the true person ids (``benchmarks/bench_confirmations.py`` and the tests only).
Both work on an open :class:`~itkm_engine.session.Session`; decisions are written through
:mod:`itkm_engine.workspace.decisions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .workspace.decisions import decide, load_constraints

__all__ = ["ReviewPair", "review_queue", "simulate_confirmations"]


@dataclass(frozen=True)
class ReviewPair:
    image_a: int
    image_b: int
    similarity: float
    same_identity: bool
    cross_scenario: bool
    margin: float  # |similarity - boundary|


def review_queue(session, n: int = 100, *, k: int = 10) -> list[ReviewPair]:
    """Pairs to review, most informative first: candidate pairs are every image's ``k`` nearest
    neighbours; the decision boundary is the similarity midway between the mean of same-identity
    and the mean of different-identity candidate pairs; pairs nearest it come first, pairs across
    scenarios before pairs inside one.  Pairs already decided are left out."""
    fs = session.ranking()  # the space the index searches (inference.camera_centre)
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


def simulate_confirmations(session, n: int, seed: int = 0, *, user: str = "simulated") -> int:
    """Add up to ``n`` decisions taken from the true person ids (benchmarks only): the review
    queue's pairs, nearest the boundary first (ties broken by ``seed``), each confirmed when the
    ids agree and rejected when they differ; pairs with an unknown id are skipped.  One batch per
    kind.  Returns the number of decisions written."""
    if not hasattr(session, "features"):
        raise TypeError("simulate_confirmations needs an open Session (Session(ws) opens one on a workspace)")
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
