"""Final identities: who is who across every camera, after training.

All images are clustered together on the final features (the same sparse k-reciprocal Jaccard +
DBSCAN as the pseudo-labels, ``clustering.jaccard_knn``), so an identity can span groups and
scenarios wherever the trained model puts the two sides close: that is what Stage III's
cross-group matching trains for.  An outlier joins its nearest identity when it is as close to
that identity's centroid as the identity's own members typically are (the 10th percentile of the
members' cosines); otherwise it stays a single-sighting identity with confidence 0.

Confidence of a sighting = cosine between its feature and its identity's centroid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .clustering import pseudo_labels
from .progress import Reporter
from .records import IdentityTable


@dataclass(frozen=True)
class IdentitySummary:
    identity: int
    size: int
    cameras: tuple[str, ...]
    scenarios: tuple[str, ...]
    t_first: float
    t_last: float
    mean_confidence: float


def compute_identities(
    ids: np.ndarray,
    feats: np.ndarray,
    *,
    k1: int = 30,
    k2: int = 6,
    eps: float = 0.6,
    min_samples: int = 2,
    checkpoint: str | None = None,
    reporter: Reporter | None = None,
) -> IdentityTable:
    """Identity and confidence for every row of ``feats`` (L2-normalised)."""
    reporter = reporter or Reporter()
    n = len(ids)
    if n == 0:
        return IdentityTable(checkpoint, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    labels = pseudo_labels(np.ascontiguousarray(feats, dtype=np.float32), k1=k1, k2=k2, eps=eps,
                           min_samples=min_samples, reporter=reporter.child(0.0, 0.8))
    reporter.update(0.85, stage="identities", message="assigning outliers")
    n_id = int(labels.max()) + 1 if (labels >= 0).any() else 0
    conf = np.zeros(n, dtype=np.float32)
    if n_id:
        cent = np.zeros((n_id, feats.shape[1]), dtype=np.float32)
        np.add.at(cent, labels[labels >= 0], feats[labels >= 0])
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
        member = labels >= 0
        conf[member] = np.einsum("ij,ij->i", feats[member], cent[labels[member]])
        # Per identity: how close its members typically are.
        cut = np.full(n_id, np.inf, dtype=np.float32)
        order = np.argsort(labels[member], kind="stable")
        lab_sorted, conf_sorted = labels[member][order], conf[member][order]
        bounds = np.flatnonzero(np.diff(lab_sorted)) + 1
        for lab_block, conf_block in zip(np.split(lab_sorted, bounds), np.split(conf_sorted, bounds)):
            cut[lab_block[0]] = np.percentile(conf_block, 10)
        out = np.flatnonzero(~member)
        for start in range(0, len(out), 8192):
            blk = out[start : start + 8192]
            sims = feats[blk] @ cent.T
            best = sims.argmax(axis=1)
            bsim = sims[np.arange(len(blk)), best]
            join = bsim >= cut[best]
            labels[blk[join]] = best[join]
            conf[blk[join]] = bsim[join]
    singles = np.flatnonzero(labels < 0)
    labels[singles] = n_id + np.arange(len(singles))
    order = np.argsort(ids)
    return IdentityTable(checkpoint, np.asarray(ids, np.int64)[order], labels[order].astype(np.int64), conf[order])


def summarize(table: IdentityTable, images) -> list[IdentitySummary]:
    """One row per identity (largest first): size, cameras, scenarios, time span."""
    rows = images.index_of(table.image_id)
    keep = rows >= 0
    ident, rows, conf = table.identity[keep], rows[keep], table.confidence[keep]
    if not len(ident):
        return []
    order = np.argsort(ident, kind="stable")
    ident, rows, conf = ident[order], rows[order], conf[order]
    bounds = np.flatnonzero(np.diff(ident)) + 1
    out = []
    ts = np.asarray(images.timestamp, dtype=np.float64)
    for blk_id, blk_rows, blk_conf in zip(np.split(ident, bounds), np.split(rows, bounds), np.split(conf, bounds)):
        t = ts[blk_rows]
        out.append(
            IdentitySummary(
                identity=int(blk_id[0]),
                size=len(blk_rows),
                cameras=tuple(sorted(set(images.camera[blk_rows]))),
                scenarios=tuple(sorted(set(images.scenario[blk_rows]))),
                t_first=float(np.nanmin(t)) if np.isfinite(t).any() else float("nan"),
                t_last=float(np.nanmax(t)) if np.isfinite(t).any() else float("nan"),
                mean_confidence=float(blk_conf.mean()),
            )
        )
    out.sort(key=lambda s: (-s.size, s.identity))
    return out
