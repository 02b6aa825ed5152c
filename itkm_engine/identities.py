"""Final identities: who is who across every camera, after training.

All images are clustered together on the final features (the same sparse k-reciprocal Jaccard +
DBSCAN as the pseudo-labels, ``clustering.jaccard_knn``), so an identity can span groups and
scenarios wherever the trained model puts the two sides close: that is what Stage III's
cross-group matching trains for.  An outlier joins its nearest identity when it is as close to
that identity's centroid as the identity's own members typically are (the 10th percentile of the
members' cosines); otherwise it stays a single-sighting identity with confidence 0.

Cross-group matches merged (DESIGN.md): the round's CHM matches (the per-group clusters Stage III
gave one cross-group label, :func:`round_links`) are *links*: for each matched pair of clusters,
the identity holding most of one cluster and the identity holding most of the other become one.
A link joins the two identities it names and nothing else, so merges never chain through a
third cluster unless another link says so.  Operator must-links can be passed the same way.

Confidence of a sighting = cosine between its feature and its identity's centroid (the merged
identity's centroid after a merge).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .clustering import pseudo_labels
from .progress import Reporter
from .records import IdentityTable, rows_of
from .vocabulary import FINAL_LABELS_FILE


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
    links: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
    sites: np.ndarray | None = None,
    reporter: Reporter | None = None,
) -> IdentityTable:
    """Identity and confidence for every row of ``feats`` (L2-normalised).

    ``links``: pairs ``(rows_a, rows_b)`` of row sets that show one person (e.g. two clusters CHM
    matched, from :func:`round_links`); the majority identities of the two sets are merged.
    ``sites``: the site of every row; people are never shared across sites, so each site is
    clustered on its own and a link between two sites is dropped."""
    reporter = reporter or Reporter()
    n = len(ids)
    if n == 0:
        return IdentityTable(checkpoint, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    if sites is not None and len(np.unique(np.asarray(sites, object))) > 1:
        return _per_site(np.asarray(ids, np.int64), feats, np.asarray(sites, object), links, reporter,
                         dict(k1=k1, k2=k2, eps=eps, min_samples=min_samples, checkpoint=checkpoint))
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
    if links is not None:
        labels, conf = _merge_links(labels, conf, feats, links)
    conf = np.clip(conf, -1.0, 1.0)  # stored features are unit length only to ~1e-4
    order = np.argsort(ids)
    return IdentityTable(checkpoint, np.asarray(ids, np.int64)[order], labels[order].astype(np.int64), conf[order])


def _per_site(ids: np.ndarray, feats: np.ndarray, sites: np.ndarray, links, reporter: Reporter,
              kw: dict) -> IdentityTable:
    """:func:`compute_identities` of each site on its own, identities numbered on across sites."""
    links = list(links or [])
    names = sorted({str(x) for x in sites})
    parts, offset = [], 0
    for i, site in enumerate(names):
        rows = np.flatnonzero(sites == site)
        local = np.full(len(ids), -1, np.int64)
        local[rows] = np.arange(len(rows))
        site_links = []
        for a, b in links:  # rows of this site only: a link across sites joins nobody
            a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
            la, lb = local[a[(a >= 0) & (a < len(ids))]], local[b[(b >= 0) & (b < len(ids))]]
            if (la >= 0).sum() * 2 > len(la) and (lb >= 0).sum() * 2 > len(lb):
                site_links.append((la[la >= 0], lb[lb >= 0]))
        t = compute_identities(ids[rows], feats[rows], links=site_links,
                               reporter=reporter.child(i / len(names), (i + 1) / len(names)), **kw)
        parts.append((t.image_id, t.identity + offset, t.confidence))
        offset += int(t.identity.max()) + 1 if len(t.identity) else 0
    img = np.concatenate([p[0] for p in parts])
    order = np.argsort(img)
    return IdentityTable(kw["checkpoint"], img[order], np.concatenate([p[1] for p in parts])[order],
                         np.concatenate([p[2] for p in parts])[order])


def spans_sites(table: IdentityTable, sites_of_ids) -> bool:
    """Whether an identity of ``table`` holds images of two sites (``sites_of_ids``: the site of each
    of ``table.image_id``): a table computed before identities were clustered per site."""
    if not len(table):
        return False
    _, s = np.unique(np.asarray(sites_of_ids, object).astype(str), return_inverse=True)
    pairs = np.unique(np.stack([table.identity, s.reshape(-1)], axis=1), axis=0)
    return len(pairs) > len(np.unique(table.identity))


def join_provisional(ids: np.ndarray, identity: np.ndarray, feats: np.ndarray, sites: np.ndarray,
                     new_feats: np.ndarray, new_sites: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images that came after the identities were computed (ingested since) join the nearest
    identity of their own site (cosine to its centroid): ``(identity or -1, confidence)`` per new
    image; -1 where its site has no identity yet."""
    out = np.full(len(new_feats), -1, np.int64)
    conf = np.zeros(len(new_feats), np.float32)
    sites, new_sites = np.asarray(sites, object).astype(str), np.asarray(new_sites, object).astype(str)
    for site in np.unique(new_sites):
        want = np.flatnonzero(new_sites == site)
        have = sites == site
        if not have.any():
            continue
        uniq, inv = np.unique(identity[have], return_inverse=True)
        cent = np.zeros((len(uniq), feats.shape[1]), np.float64)
        np.add.at(cent, inv.reshape(-1), feats[have])
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
        for start in range(0, len(want), 8192):
            blk = want[start : start + 8192]
            sims = new_feats[blk] @ cent.T
            best = sims.argmax(axis=1)
            out[blk] = uniq[best]
            conf[blk] = np.clip(sims[np.arange(len(blk)), best], -1.0, 1.0)
    return out, conf


def _merge_links(labels: np.ndarray, conf: np.ndarray, feats: np.ndarray,
                 links: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Union the majority identities of each link's two row sets; identities renumbered in order
    of first appearance of their smallest old id; confidences of merged identities recomputed."""
    parent = np.arange(int(labels.max()) + 1 if len(labels) else 0)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def majority(rows: np.ndarray) -> int | None:
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[(rows >= 0) & (rows < len(labels))]
        if not len(rows):
            return None
        vals, counts = np.unique(labels[rows], return_counts=True)
        return int(vals[np.argmax(counts)])

    merged = False
    for rows_a, rows_b in links:
        a, b = majority(rows_a), majority(rows_b)
        if a is None or b is None:
            continue
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
            merged = True
    if not merged:
        return labels, conf
    roots = np.array([find(x) for x in range(len(parent))])
    new = roots[labels]
    changed = new != labels
    touched = np.unique(new[changed])
    _, labels = np.unique(new, return_inverse=True)  # compact ids, order kept
    labels = labels.astype(np.int64)
    conf = conf.copy()
    for root in touched:
        rows = np.flatnonzero(new == root)
        f = feats[rows].astype(np.float64)
        cent = f.mean(axis=0)
        cent /= max(float(np.linalg.norm(cent)), 1e-12)
        conf[rows] = f @ cent
    return labels, conf


def round_links(ws, ids: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The latest finished round's CHM matches as links for :func:`compute_identities`: for every
    cross-group label that joins several per-group clusters, ``(rows of one cluster, rows of
    another)`` as rows of ``ids``.  Empty before the first round or for a round without them."""

    latest = ws.latest_checkpoint()
    rnd = next((r for r in reversed(ws.rounds()) if r.status == "done" and r.checkpoint
                and ws.resolve_path(r.checkpoint) == latest), None)
    if rnd is None:
        return []
    path = ws.round_dir(rnd.number) / FINAL_LABELS_FILE
    try:
        with np.load(path) as z:
            f_ids, labels, cross = z["ids"], z["labels"], z["cross"]
    except (OSError, KeyError, ValueError):
        return []
    rows = rows_of(np.asarray(ids, dtype=np.int64), f_ids)
    keep = (labels >= 0) & (cross >= 0) & (rows >= 0)
    labels, cross, rows = labels[keep], cross[keep], rows[keep]
    pairs = np.unique(np.stack([cross, labels], axis=1), axis=0)  # sorted by cross label
    if not len(pairs):
        return []
    bounds = np.flatnonzero(np.diff(pairs[:, 0])) + 1
    groups = [g[:, 1] for g in np.split(pairs, bounds) if len(g) > 1]
    if not groups:
        return []
    by_label = np.argsort(labels, kind="stable")
    uniq, start = np.unique(labels[by_label], return_index=True)
    members = dict(zip(uniq.tolist(), np.split(rows[by_label], start[1:])))
    return [(members[int(g[0])], members[int(other)]) for g in groups for other in g[1:]]


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
