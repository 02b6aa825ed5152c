"""Evaluation of a workspace's features against known person ids (when a layout carries them).

Protocol: every image with a known id is a query against all other images with a known id
(``metrics.evaluate_rank``: gallery items of the query's person *and* camera are ignored).
Reported overall, per scenario (query and gallery inside the scenario), and per cross-group
direction of each two-group scenario (e.g. infrared -> visible: infrared queries, visible
gallery), plus clothing-change camera directions.
"""

from __future__ import annotations

import numpy as np

from .data.scenarios import TWO_GROUP
from .metrics import evaluate_rank
from .progress import Reporter

MAX_QUERIES = 5000  # above this, a fixed-seed sample of queries (the gallery stays whole)


def rank_scores(feats: np.ndarray, pids: np.ndarray, cams: np.ndarray, q: np.ndarray, g: np.ndarray,
                seed: int = 0) -> dict[str, float] | None:
    """mAP and CMC for queries ``q`` against gallery ``g`` (row indices).  None without valid queries."""
    if len(q) == 0 or len(g) == 0:
        return None
    if len(q) > MAX_QUERIES:
        q = np.sort(np.random.default_rng(seed).choice(q, MAX_QUERIES, replace=False))
    dist = 1.0 - feats[q] @ feats[g].T
    _, cam_codes = np.unique(cams, return_inverse=True)
    try:
        cmc, mAP = evaluate_rank(dist, pids[q], pids[g], cam_codes[q], cam_codes[g], max_rank=10)
    except (ValueError, AssertionError):  # no query has a valid match
        return None
    cmc = np.asarray(cmc)
    return {
        "mAP": float(mAP),
        "rank1": float(cmc[0]),
        "rank5": float(cmc[min(4, len(cmc) - 1)]),
        "rank10": float(cmc[min(9, len(cmc) - 1)]),
        "queries": int(len(q)),
        "gallery": int(len(g)),
    }


def evaluate_features(feats: np.ndarray, images, *, reporter: Reporter | None = None) -> dict[str, dict]:
    """Scores per split name; ``images`` is an ImageTable aligned row-for-row with ``feats``."""
    reporter = reporter or Reporter()
    pids = np.asarray(images.person_id)
    known = np.flatnonzero(pids >= 0)
    cams = np.asarray(images.camera).astype(str)
    scen = np.asarray(images.scenario)
    grp = np.asarray(images.group)
    out: dict[str, dict] = {}
    splits: list[tuple[str, np.ndarray, np.ndarray]] = [("overall", known, known)]
    for sc in sorted(set(scen[known])):
        m = known[scen[known] == sc]
        splits.append((sc, m, m))
        if sc in TWO_GROUP:
            a, b = TWO_GROUP[sc]
            ma, mb = m[grp[m] == a], m[grp[m] == b]
            splits.append((f"{sc}: {b} -> {a}", mb, ma))
            splits.append((f"{sc}: {a} -> {b}", ma, mb))
    for i, (name, q, g) in enumerate(splits):
        reporter.check()
        res = rank_scores(feats, pids, cams, q, g)
        if res is not None:
            out[name] = res
        reporter.update((i + 1) / len(splits), stage="evaluate", message=name)
    return out


def format_scores(scores: dict[str, dict]) -> str:
    lines = [f"{'split':44s} {'mAP':>6s} {'R1':>6s} {'R5':>6s} {'R10':>6s} {'queries':>8s}"]
    for name, s in scores.items():
        lines.append(
            f"{name:44s} {100 * s['mAP']:6.1f} {100 * s['rank1']:6.1f} {100 * s['rank5']:6.1f} "
            f"{100 * s['rank10']:6.1f} {s['queries']:8d}"
        )
    return "\n".join(lines)
