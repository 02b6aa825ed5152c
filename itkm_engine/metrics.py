"""Re-identification metrics: CMC / mAP / mINP with the standard protocol, pseudo-label quality.

:func:`evaluate_rank` reproduces torchreid's ``eval_market1501`` exactly (same numbers, ties
included) but without its per-query Python loop and without a full ``argsort`` of the distance
matrix, which is what makes the reference slow: for each query only the ranks of its true
matches matter, and those follow from one ``np.sort`` of the row (values only, SIMD-fast) plus a
vectorised binary search of the match distances into the sorted row:

    rank of the k-th kept match = k + #(non-matching gallery items strictly closer).

The only case where this is not enough is a distance tie between a kept match and a non-match:
the reference's order then depends on ``np.argsort``'s (unstable) tie-breaking, so such rows --
rare with real-valued distances -- are recomputed with exactly the reference's ``np.argsort``.
Queries are processed in chunks, so memory stays bounded for any gallery size.

``skip_cameras`` widens what a query ignores beyond "same identity and same camera": a boolean
camera x camera matrix, ``skip_cameras[a, b]`` meaning "a query from camera ``a`` ignores every
gallery item of camera ``b``".  The identity matrix is the *cross-camera* protocol (the query's
whole camera is left out, non-matches included); SYSU-MM01's protocol adds ``[cam3, cam2]``.
Ignored gallery items are moved behind every other item (distance +inf) and never count as
matches, which leaves the ranks of the kept items exactly as if they had been removed.

:func:`pseudo_label_quality` scores a clustering against identity labels with pairwise
precision/recall from contingency counts (never the N^2 pairs) and the adjusted Rand index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ItkmError

__all__ = [
    "EvaluationError",
    "RankResult",
    "evaluate_rank",
    "evaluate_rank_detailed",
    "pseudo_label_quality",
]

# Elements of the distance matrix handled per chunk (~16 MB of float32 per buffer).
_CHUNK_ELEMENTS = 1 << 22


class EvaluationError(ItkmError, ValueError):
    """The evaluation input cannot be scored (shapes, NaN distances, no query with a match).

    Also a ``ValueError``, so code written against torchreid's ``assert`` keeps working.
    """


@dataclass(frozen=True)
class RankResult:
    """Full outcome of :func:`evaluate_rank_detailed`.

    ``cmc[r]`` is the fraction of valid queries with a true match within the first ``r + 1``
    results; ``mAP`` the mean average precision; ``mINP`` the mean inverse negative penalty
    (Ye et al., AGW: matches found / rank of the hardest match); ``num_valid`` queries were
    scored and ``num_skipped`` had no true match in the gallery once same-camera matches were
    removed.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid: int
    num_skipped: int

    def as_dict(self) -> dict[str, Any]:
        """Rank-1/5/10, mAP and mINP as plain floats (for storing in the workspace)."""
        out: dict[str, Any] = {"mAP": self.mAP, "mINP": self.mINP}
        for r in (1, 5, 10, 20):
            if r <= len(self.cmc):
                out[f"rank{r}"] = float(self.cmc[r - 1])
        out["num_valid"] = self.num_valid
        out["num_skipped"] = self.num_skipped
        return out


def evaluate_rank(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    *,
    return_skipped: bool = False,
    skip_cameras: np.ndarray | None = None,
) -> tuple[np.ndarray, float] | tuple[np.ndarray, float, int]:
    """CMC curve and mAP under the Market-1501 protocol (torchreid ``eval_market1501``).

    Smaller distance = better match.  For each query the gallery items with the query's
    identity *and* camera are removed (the same person seen by the same camera is too easy);
    queries left without any true match are skipped.  ``cmc`` (float32, length
    ``min(max_rank, num_gallery)``) and ``mAP`` are averaged over the remaining queries, with
    ``AP = sum_k precision@k * rel_k / num_rel``.

    Ties are ordered exactly as ``np.argsort(distmat, axis=1)`` orders them, as torchreid does.
    Where torchreid would fail (a valid query with fewer than ``max_rank`` gallery items left)
    the curve continues at 1 past the last item, since that query found its match.

    ``skip_cameras`` (camera ids must then be codes ``0..n-1``): see the module docstring.

    Raises :class:`EvaluationError` (a ``ValueError``) if no query has a match.  With
    ``return_skipped=True`` also returns the number of skipped queries.
    """
    res = evaluate_rank_detailed(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, skip_cameras=skip_cameras)
    if return_skipped:
        return res.cmc, res.mAP, res.num_skipped
    return res.cmc, res.mAP


def evaluate_rank_detailed(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
    *,
    skip_cameras: np.ndarray | None = None,
) -> RankResult:
    """:func:`evaluate_rank` plus mINP and the counts of valid and skipped queries."""
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids)
    num_q, num_g = distmat.shape
    if max_rank < 1:
        raise EvaluationError(f"max_rank must be at least 1, got {max_rank}")
    if skip_cameras is not None:
        skip_cameras = _check_skip(skip_cameras, q_camids, g_camids)
    max_rank = min(int(max_rank), num_g)

    first_hits = np.zeros(max_rank + 1, dtype=np.int64)  # first-match rank histogram, last bin = beyond
    ap_values: list[np.ndarray] = []
    inp_values: list[np.ndarray] = []
    num_valid = 0
    chunk = max(1, _CHUNK_ELEMENTS // max(num_g, 1))
    for start in range(0, num_q, chunk):
        stop = min(start + chunk, num_q)
        skip = None if skip_cameras is None else skip_cameras[q_camids[start:stop]][:, g_camids]
        first, ap, inp = _chunk_match_ranks(
            distmat[start:stop], q_pids[start:stop], q_camids[start:stop], g_pids, g_camids, skip
        )
        valid = first > 0
        num_valid += int(valid.sum())
        first_hits += np.bincount(np.minimum(first[valid], max_rank + 1) - 1, minlength=max_rank + 1)
        ap_values.append(ap[valid])
        inp_values.append(inp[valid])

    if num_valid == 0:
        raise EvaluationError(
            "no query has a true match in the gallery (after removing same-identity, same-camera "
            "images): the identities of the queries do not appear in the gallery"
        )
    # Same arithmetic as the reference: float32 counts divided by the number of valid queries.
    cmc = np.cumsum(first_hits[:max_rank]).astype(np.float32) / float(num_valid)
    return RankResult(
        cmc=cmc,
        mAP=float(np.mean(np.concatenate(ap_values))),
        mINP=float(np.mean(np.concatenate(inp_values))),
        num_valid=num_valid,
        num_skipped=num_q - num_valid,
    )


# -- internals ---------------------------------------------------------------------------------


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids):
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise EvaluationError(f"distmat must be 2-D (queries x gallery), got shape {distmat.shape}")
    if not np.issubdtype(distmat.dtype, np.floating):
        distmat = distmat.astype(np.float64)
    num_q, num_g = distmat.shape
    if num_q == 0 or num_g == 0:
        raise EvaluationError(f"distmat is empty (shape {distmat.shape})")
    arrays = []
    for name, arr, n in (
        ("q_pids", q_pids, num_q),
        ("g_pids", g_pids, num_g),
        ("q_camids", q_camids, num_q),
        ("g_camids", g_camids, num_g),
    ):
        arr = np.asarray(arr).reshape(-1)
        if arr.shape[0] != n:
            raise EvaluationError(f"{name} has {arr.shape[0]} entries but distmat implies {n}")
        arrays.append(arr)
    if np.isnan(distmat).any():
        raise EvaluationError("distmat contains NaN distances")
    return (distmat, *arrays)


def _check_skip(skip_cameras, q_camids, g_camids) -> np.ndarray:
    skip = np.asarray(skip_cameras, dtype=bool)
    if skip.ndim != 2 or skip.shape[0] != skip.shape[1]:
        raise EvaluationError(f"skip_cameras must be a square camera x camera matrix, got shape {skip.shape}")
    for name, cams in (("q_camids", q_camids), ("g_camids", g_camids)):
        if not np.issubdtype(cams.dtype, np.integer) or cams.min() < 0 or cams.max() >= skip.shape[0]:
            raise EvaluationError(f"with skip_cameras, {name} must be integer codes 0..{skip.shape[0] - 1}")
    return skip


def _searchsorted_rows(sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray, side: str) -> np.ndarray:
    """``np.searchsorted(sorted_rows[r], v, side)`` for many (r, v) pairs at once (binary search)."""
    lo = np.zeros(rows.shape[0], dtype=np.int64)
    hi = np.full(rows.shape[0], sorted_rows.shape[1], dtype=np.int64)
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        probe = sorted_rows[rows, np.minimum(mid, sorted_rows.shape[1] - 1)]
        go_right = (probe < values) if side == "left" else (probe <= values)
        go_right &= active
        go_left = active & ~go_right
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(go_left, mid, hi)


def _chunk_match_ranks(dist, q_pids, q_cams, g_pids, g_cams, skip=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query of the chunk: rank of its first kept match (0 = none), AP and INP.

    ``skip`` (queries x gallery, bool, or None): items the query ignores.  They are moved behind
    everything (+inf) and dropped from the matches; tied rows go to the reference with the
    original distances, so argsort breaks ties exactly as on the unmodified row."""
    nq, ng = dist.shape
    original = dist
    if skip is not None:
        dist = np.where(skip, np.inf, dist)
    match = g_pids[None, :] == q_pids[:, None]
    rows, cols = np.nonzero(match)  # row-major: rows ascending
    first = np.zeros(nq, dtype=np.int64)
    ap = np.zeros(nq, dtype=np.float64)
    inp = np.zeros(nq, dtype=np.float64)
    if rows.size == 0:
        return first, ap, inp

    sorted_dist = np.sort(dist, axis=1)
    dm = dist[rows, cols]
    kept = g_cams[cols] != q_cams[rows]
    if skip is not None:
        kept &= ~skip[rows, cols]
    less_all = _searchsorted_rows(sorted_dist, rows, dm, "left")
    leq_all = _searchsorted_rows(sorted_dist, rows, dm, "right")

    # Order the matches by (row, distance) and count, per match, the matches of its row that are
    # strictly closer and those at the same distance.
    order = np.lexsort((dm, rows))
    rows_s, dm_s, kept_s = rows[order], dm[order], kept[order]
    less_all, leq_all = less_all[order], leq_all[order]
    row_start = np.searchsorted(rows_s, np.arange(nq), side="left")
    # Group boundaries on (row, distance): a new group where either changes.
    change = np.ones(rows_s.shape[0], dtype=bool)
    change[1:] = (rows_s[1:] != rows_s[:-1]) | (dm_s[1:] != dm_s[:-1])
    gid = np.cumsum(change) - 1
    group_start = np.flatnonzero(change)
    group_end = np.append(group_start[1:], rows_s.shape[0])
    gfirst, gend = group_start[gid], group_end[gid]
    less_match = gfirst - row_start[rows_s]
    tie_match = gend - gfirst
    nonmatch_less = less_all - less_match
    nonmatch_tie = (leq_all - less_all) - tie_match

    # A kept match tied with a non-match: its position depends on argsort's tie-breaking.
    ambiguous_rows = np.unique(rows_s[kept_s & (nonmatch_tie > 0)])

    rows_k = rows_s[kept_s]
    if rows_k.size:
        counts = np.bincount(rows_k, minlength=nq)
        starts = np.cumsum(counts) - counts
        k = np.arange(rows_k.size) - starts[rows_k] + 1  # 1-based index among the row's kept matches
        rank = k + nonmatch_less[kept_s]  # 1-based rank among kept gallery items
        has = counts > 0
        first[has] = rank[starts[has]]
        ap = np.bincount(rows_k, weights=k / rank, minlength=nq)
        ap[has] /= counts[has]
        last_rank = np.zeros(nq, dtype=np.int64)
        last_rank[has] = rank[starts[has] + counts[has] - 1]
        inp[has] = counts[has] / last_rank[has]

    for r in ambiguous_rows:
        first[r], ap[r], inp[r] = _reference_row(original[r], q_pids[r], q_cams[r], g_pids, g_cams,
                                                  None if skip is None else skip[r])
    return first, ap, inp


def _reference_row(row, q_pid, q_cam, g_pids, g_cams, skip=None) -> tuple[int, float, float]:
    """torchreid's per-query computation with its ``np.argsort`` order (used for tied rows)."""
    order = np.argsort(row)
    keep = ~((g_pids[order] == q_pid) & (g_cams[order] == q_cam))
    if skip is not None:
        keep &= ~skip[order]
    raw = (g_pids[order][keep] == q_pid).astype(np.int64)
    hits = np.flatnonzero(raw)
    if hits.size == 0:
        return 0, 0.0, 0.0
    k = np.arange(1, hits.size + 1)
    rank = hits + 1
    return int(rank[0]), float(np.sum(k / rank) / hits.size), float(hits.size / rank[-1])


# -- pseudo-label quality -----------------------------------------------------------------------


def pseudo_label_quality(pred_labels: np.ndarray, true_ids: np.ndarray) -> dict[str, float | int]:
    """How well a clustering (pseudo-labels) matches identity labels.

    Only items whose ``true_ids`` is >= 0 (identity known) are scored.  An outlier (``-1`` in
    ``pred_labels``, DBSCAN's noise) is treated as a cluster of its own: it claims no pair, so it
    costs recall but never precision -- the same reading the training makes when it drops
    outliers.

    Pairwise scores over all unordered pairs of scored items:
    ``precision`` = same-cluster pairs that are the same identity / same-cluster pairs,
    ``recall`` = same-identity pairs put in one cluster / same-identity pairs, and their
    ``fscore``; computed from the cluster x identity contingency counts in O(N log N).
    A score with an empty denominator (no pair predicted, or no identity seen twice) is 1.0:
    nothing was claimed wrongly / nothing could be missed.
    ``ari`` is sklearn's adjusted Rand index with outliers as singletons.
    ``n_clusters`` counts the clusters (outliers excluded) and ``n_outliers`` the outliers,
    both among the scored items; ``n_items`` is how many items were scored.
    """
    from sklearn.metrics import adjusted_rand_score

    pred = np.asarray(pred_labels).reshape(-1)
    true = np.asarray(true_ids).reshape(-1)
    if pred.shape[0] != true.shape[0]:
        raise EvaluationError(f"pred_labels has {pred.shape[0]} entries, true_ids {true.shape[0]}")
    if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(true.dtype, np.integer)):
        raise EvaluationError("pred_labels and true_ids must be integer arrays")
    scored = true >= 0
    pred = pred[scored].astype(np.int64)
    true = true[scored].astype(np.int64)
    n = pred.shape[0]
    if n == 0:
        raise EvaluationError("no item has a known identity (true_ids >= 0); nothing to score")

    outlier = pred < 0
    # Outliers become singleton clusters with fresh labels.
    pred_single = pred.copy()
    pred_single[outlier] = pred.max(initial=-1) + 1 + np.arange(int(outlier.sum()))

    _, pred_idx = np.unique(pred_single, return_inverse=True)
    _, true_idx = np.unique(true, return_inverse=True)
    n_true = int(true_idx.max()) + 1
    _, joint_counts = np.unique(pred_idx.astype(np.int64) * n_true + true_idx, return_counts=True)

    def pairs(counts: np.ndarray) -> int:
        c = counts.astype(np.int64)
        return int(np.sum(c * (c - 1) // 2))

    tp = pairs(joint_counts)
    pred_pairs = pairs(np.bincount(pred_idx))
    true_pairs = pairs(np.bincount(true_idx))
    precision = tp / pred_pairs if pred_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "precision": float(precision),
        "recall": float(recall),
        "fscore": float(fscore),
        "ari": float(adjusted_rand_score(true, pred_single)),
        "n_clusters": int(np.unique(pred[~outlier]).size),
        "n_outliers": int(outlier.sum()),
        "n_items": int(n),
    }
