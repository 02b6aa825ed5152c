"""Decision-aware ranking: every ranking obeys the operator's decisions at once, before retraining.

One pure function, :func:`decision_ranking`, applied where the session ranks
(``Session._top``: the gallery, ``itkm query``, re-ranked or not) and by the benchmark that
measures what it does (``benchmarks/bench_confirmations.py``).  It takes the ranking's scores as
they are (cosine, camera-centred cosine, re-ranked similarity: whatever the ranking computed) and
changes only what the decisions say:

* **confirmed images are grouped**: the images of one must-link component (the decisions'
  closure, :class:`~itkm_engine.constraints.Closure`) are one person, so each is scored by the
  best-scoring member of its group -- confirming a hard sighting with an easy one lifts the hard
  one wherever the easy one ranks high;
* **confirmed to the top**: the images the operator confirmed as the query's person (its own
  component) rank above everything else;
* **rejected to the bottom**: the images of every component the query's component was rejected
  from rank below everything else.

An image no decision names keeps its score and place.  A query that is not a workspace image (a
file from outside, a text) has no component: only the grouping applies.
"""

from __future__ import annotations

import numpy as np

from .constraints import Closure

__all__ = ["decision_ranking", "TIER_STEP"]

#: Distance between tiers in the sort key (scores are similarities within [-1, 1], or close).
TIER_STEP = 10.0


def decision_ranking(scores, ids, closure: Closure, query_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(key, shown)`` for the rows ``ids`` ranked by ``scores``.

    Args:
        scores: ``float[N]`` the ranking's score of each row; ``-inf`` where the ranking has none
            (not a candidate).
        ids: ``int64[N]`` the image id of each row.
        closure: the decisions' closure (``Constraints.closure``).
        query_id: the query's image id when the query is a workspace image.

    Returns:
        ``shown``: each row's score after grouping (the best score of its confirmed group);
        ``key``: the sort key, descending = best first: ``shown`` plus ``TIER_STEP`` for the
        query's confirmed images and minus ``TIER_STEP`` for the images it was rejected from.  A
        confirmed image the ranking had no score for still ranks first (shown with its group's
        best score, else the best score of all rows); a rejected one without a score stays out
        (``-inf``).  The query's own row is ``-inf`` (never its own match).
    """
    s = np.asarray(scores, dtype=np.float64)
    ids = np.asarray(ids, dtype=np.int64)
    shown = s.copy()
    key = s.copy()
    if not len(closure.ids) or not len(s):
        return key, shown
    comp = closure.component_of(ids)
    q = -1
    if query_id is not None:
        q = int(closure.component_of(np.array([int(query_id)]))[0])
    member = comp >= 0
    is_query = ids == query_id if query_id is not None else np.zeros(len(ids), bool)
    # group: the best score of each component (the query itself left out)
    best = np.full(closure.n_components, -np.inf)
    use = member & np.isfinite(s) & ~is_query
    np.maximum.at(best, comp[use], s[use])
    shown[member] = np.maximum(s[member], best[comp[member]])
    tier = np.zeros(len(s), np.int64)
    if q >= 0:
        tier[comp == q] = 1
        tier[member & np.isin(comp, closure.banned_with(q))] = -1
    top = tier == 1
    if top.any():
        missing = top & ~np.isfinite(shown)
        if missing.any():
            finite = shown[np.isfinite(shown)]
            shown[missing] = finite.max() if len(finite) else 0.0
    key = shown + TIER_STEP * tier
    key[(tier == -1) & ~np.isfinite(s)] = -np.inf
    key[is_query] = -np.inf
    shown[is_query] = s[is_query]
    return key, shown
