"""Cluster-level heterogeneous matching (CHM, ITKM Stage III).

Pseudo-labels are computed per group (DESIGN.md section 2), so the same person seen by a visible
and an infrared camera ends up as two clusters, one per side.  CHM pairs those clusters up: the
similarity of cluster ``a`` of side A and cluster ``b`` of side B mixes the cosine of their image
centroids with the cosine of their (Stage II / DRU) text features,

    S[a, b] = (1 - w) * cos(c_a, c_b) + w * cos(t_a, t_b),

because the text features describe identity in the joint image-text space, where the modality
gap between infrared and visible pixels is smaller than in the raw image centroids.  A one-to-one
assignment maximising the total similarity (Hungarian, ``scipy.optimize.linear_sum_assignment``,
rectangular allowed) picks at most one partner per cluster, and :func:`accept_matches` keeps the
pairs that are mutual best with a margin over the runner-up (the text term lifts every pair, so
an absolute threshold alone merges strangers).  Matched clusters then share one *cross-group label*, the key of the cross-group
cluster memory, so the model learns to map both modalities of one person to one centroid.

Sides: in a two-group scenario side A / side B are the two groups (``TWO_GROUP``); in a
one-group scenario (clothing-change, cross-camera) they are two disjoint sets of cameras, from
:func:`sides_by_camera`.

Functions, lowest level first: :func:`cluster_centroids`, :func:`cluster_similarity`,
:func:`match_clusters` (rows of the two centroid matrices), :func:`cross_group_labels`
(instances of the two sides), :func:`sides_by_camera`, and :func:`match_scenario`, which does
the whole thing for one scenario's instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..errors import ItkmError
from ..records import rows_of
from ._inputs import float_matrix, int_vector

__all__ = [
    "ClusterMatch",
    "CrossGroupLabels",
    "ScenarioMatching",
    "cluster_centroids",
    "cluster_similarity",
    "match_clusters",
    "accept_matches",
    "match_precision",
    "cross_group_labels",
    "sides_by_camera",
    "match_scenario",
]

ArrayLike = Tensor | np.ndarray


class ClusterMatch(NamedTuple):
    """One kept assignment: row ``a`` of side A, row ``b`` of side B, their similarity.

    A plain tuple underneath, so ``for a, b, sim in matches`` works.
    """

    a: int
    b: int
    similarity: float


@dataclass
class CrossGroupLabels:
    """Cross-group label of every instance of side A and side B.

    Labels run ``offset .. offset + num_labels - 1``; ``-1`` stays ``-1`` (outliers).
    """

    a: np.ndarray
    b: np.ndarray
    num_labels: int
    offset: int = 0


@dataclass
class ScenarioMatching:
    """CHM result for one scenario (see :func:`match_scenario`)."""

    labels: np.ndarray  # [N] cross-group label per instance, offset.., -1 for outliers
    num_labels: int  # number of distinct cross-group labels (matched pairs count once)
    offset: int = 0
    # Kept matches as (cluster id on side A, cluster id on side B, similarity): original ids.
    matches: list[ClusterMatch] = field(default_factory=list)


# -- helpers ---------------------------------------------------------------------------------


def _cosine(x: Tensor, y: Tensor) -> Tensor:
    x = F.normalize(x, dim=1)
    y = F.normalize(y.to(x.device), dim=1)
    return x @ y.t()


# -- centroids and similarity ------------------------------------------------------------
def cluster_centroids(feats: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, Tensor]:
    """``(ids, centroids)``: the sorted distinct labels ``>= 0`` and their L2-normalised mean
    feature ``[len(ids), D]`` (float32, on the features' device)."""
    f = float_matrix(feats, "feats")
    lab = int_vector(labels, "labels")
    if lab.shape[0] != f.shape[0]:
        raise ItkmError(f"labels must have {f.shape[0]} entries, got {lab.shape[0]}")
    valid = lab >= 0
    ids, inverse = np.unique(lab[valid], return_inverse=True)
    sums = torch.zeros(len(ids), f.shape[1], dtype=torch.float32, device=f.device)
    if len(ids):
        rows = torch.from_numpy(np.flatnonzero(valid)).to(f.device)
        sums.index_add_(0, torch.from_numpy(inverse.astype(np.int64)).to(f.device), f[rows])
    return ids, F.normalize(sums, dim=1)


def cluster_similarity(
    img_a: ArrayLike,
    img_b: ArrayLike,
    txt_a: ArrayLike | None,
    txt_b: ArrayLike | None,
    text_weight: float,
) -> np.ndarray:
    """``S [Ca, Cb] = (1 - w) * cos(img_a, img_b) + w * cos(txt_a, txt_b)`` as float64 numpy.

    Inputs need not be normalised.  ``txt_a``/``txt_b`` may be ``None`` only when ``w == 0``
    (image-only matching, e.g. an ablation or a round without Stage II).
    """
    if not 0.0 <= text_weight <= 1.0:
        raise ItkmError(f"text_weight must be in [0, 1], got {text_weight}")
    ia, ib = float_matrix(img_a, "img_a"), float_matrix(img_b, "img_b")
    if ia.shape[1] != ib.shape[1]:
        raise ItkmError(f"img_a and img_b must share a feature size, got {ia.shape[1]} and {ib.shape[1]}")
    sim = _cosine(ia, ib) * (1.0 - text_weight)
    if text_weight > 0:
        if txt_a is None or txt_b is None:
            raise ItkmError("text features are needed when text_weight > 0")
        ta, tb = float_matrix(txt_a, "txt_a"), float_matrix(txt_b, "txt_b")
        if ta.shape[0] != ia.shape[0] or tb.shape[0] != ib.shape[0]:
            raise ItkmError(
                f"one text feature per cluster is needed: img {ia.shape[0]}x{ib.shape[0]}, "
                f"text {ta.shape[0]}x{tb.shape[0]}"
            )
        if ta.shape[1] != tb.shape[1]:
            raise ItkmError(f"txt_a and txt_b must share a size, got {ta.shape[1]} and {tb.shape[1]}")
        sim = sim + text_weight * _cosine(ta, tb).to(sim.device)
    out = sim.cpu().double().numpy()
    if not np.isfinite(out).all():
        raise ItkmError("cluster similarity is not finite (NaN or inf in the features)")
    return out


def match_clusters(
    img_a: ArrayLike,
    img_b: ArrayLike,
    txt_a: ArrayLike | None,
    txt_b: ArrayLike | None,
    text_weight: float,
    threshold: float,
    *,
    mutual: bool = False,
    margin: float = 0.0,
) -> list[ClusterMatch]:
    """Maximum-similarity one-to-one assignment between the rows of side A and side B, filtered
    by :func:`accept_matches`; sorted by ``a``.  Empty when either side is."""
    sim = cluster_similarity(img_a, img_b, txt_a, txt_b, text_weight)
    if sim.shape[0] == 0 or sim.shape[1] == 0:
        return []
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return accept_matches(sim, zip(rows, cols), threshold=threshold, mutual=mutual, margin=margin)


def accept_matches(
    sim: np.ndarray,
    pairs,
    *,
    threshold: float,
    mutual: bool = True,
    margin: float = 0.0,
) -> list[ClusterMatch]:
    """The assigned pairs ``(a, b)`` (rows / columns of ``sim``) that CHM trusts, sorted by ``a``.

    Why relative: the text term lifts every pair (text features of any two clusters share the
    prompt template's direction: ~0.8 cosine, +0.4 at weight 0.5), so an absolute cut cannot tell
    a person seen from both sides from two strangers.  What separates them is *preference*: a true
    pair is each cluster's clear favourite.  A pair is kept when

    * ``sim[a, b] > threshold`` (an absolute floor; the only test when a side has one cluster);
    * with ``mutual``: ``b`` is row ``a``'s best column and ``a`` is column ``b``'s best row;
    * ``sim[a, b]`` beats the runner-up of its row and of its column by at least ``margin``.

    A pure function of the similarity matrix, so further filters (e.g. operator cannot-links)
    can be applied to its output.
    """
    sim = np.asarray(sim, dtype=np.float64)
    out = []
    for a, b in pairs:
        a, b = int(a), int(b)
        s = float(sim[a, b])
        if not s > threshold:
            continue
        row = np.delete(sim[a], b)
        col = np.delete(sim[:, b], a)
        best_other = max(row.max() if row.size else -np.inf, col.max() if col.size else -np.inf)
        if mutual and best_other > s:
            continue
        if margin > 0 and s - best_other < margin:
            continue
        out.append(ClusterMatch(a, b, s))
    out.sort(key=lambda m: m.a)
    return out


def match_precision(matches: Sequence[ClusterMatch], labels: ArrayLike, person_ids: ArrayLike) -> float | None:
    """Share of kept matches whose two clusters hold the same person: each cluster stands for the
    most frequent known person id among its members.  ``None`` when no match has known ids on
    both sides (evaluation only: person ids never steer training)."""
    lab = int_vector(labels, "labels")
    pid = int_vector(person_ids, "person_ids")
    if lab.shape != pid.shape:
        raise ItkmError(f"labels and person_ids must have one entry per instance: {lab.shape} vs {pid.shape}")
    known = (lab >= 0) & (pid >= 0)
    majority: dict[int, int] = {}
    if known.any():
        key, counts = np.unique(np.stack([lab[known], pid[known]], axis=1), axis=0, return_counts=True)
        order = np.lexsort((key[:, 1], -counts, key[:, 0]))
        for c, p in key[order]:
            majority.setdefault(int(c), int(p))
    judged = [majority[int(m[0])] == majority[int(m[1])] for m in matches
              if int(m[0]) in majority and int(m[1]) in majority]
    return float(np.mean(judged)) if judged else None


# -- labels --------------------------------------------------------------------------------
def cross_group_labels(
    labels_a: ArrayLike,
    labels_b: ArrayLike,
    matches: Sequence[ClusterMatch | tuple[int, int, float]],
    *,
    clusters_a: ArrayLike | None = None,
    clusters_b: ArrayLike | None = None,
    offset: int = 0,
) -> CrossGroupLabels:
    """The shared cross-group label of every instance of the two sides.

    Args:
        labels_a, labels_b: cluster id of each instance of side A / B (``-1`` = outlier).
        matches: from :func:`match_clusters`; ``a``/``b`` are *rows* of the centroid matrices.
        clusters_a, clusters_b: the cluster id of each row (e.g. the ``ids`` of
            :func:`cluster_centroids`).  Default: row ``r`` is cluster ``r``, with as many rows
            as the largest id (in labels or matches) + 1.
        offset: first label, so several scenarios can share one label space (pass the previous
            call's ``offset + num_labels``).

    Numbering (deterministic):
        ``offset + k`` for the k-th match (in the order of ``matches``, sorted by ``a`` from
        :func:`match_clusters`), shared by both matched clusters; then every unmatched row of A
        in row order; then every unmatched row of B in row order.  Every row gets a label even
        if no instance carries it, so ``num_labels = Ca + Cb - len(matches)``.
    """
    la = int_vector(labels_a, "labels_a")
    lb = int_vector(labels_b, "labels_b")
    pairs = [(int(m[0]), int(m[1])) for m in matches]

    def cluster_ids(lab: np.ndarray, clusters: ArrayLike | None, side: int, name: str) -> np.ndarray:
        if clusters is not None:
            ids = int_vector(clusters, name)
            if len(np.unique(ids)) != len(ids):
                raise ItkmError(f"{name} holds a cluster id twice")
            return ids
        top = max([int(lab.max()) if lab.size else -1] + [p[side] for p in pairs])
        return np.arange(top + 1, dtype=np.int64)

    ids_a = cluster_ids(la, clusters_a, 0, "clusters_a")
    ids_b = cluster_ids(lb, clusters_b, 1, "clusters_b")
    ca, cb = len(ids_a), len(ids_b)
    new_a = np.full(ca, -1, dtype=np.int64)
    new_b = np.full(cb, -1, dtype=np.int64)
    for k, (ra, rb) in enumerate(pairs):
        if not (0 <= ra < ca and 0 <= rb < cb):
            raise ItkmError(f"match ({ra}, {rb}) refers to a row outside {ca} x {cb} clusters")
        if new_a[ra] >= 0 or new_b[rb] >= 0:
            raise ItkmError(f"match ({ra}, {rb}) reuses a cluster that is already matched")
        new_a[ra] = new_b[rb] = k
    nxt = len(pairs)
    free_a = np.flatnonzero(new_a < 0)
    new_a[free_a] = nxt + np.arange(len(free_a))
    nxt += len(free_a)
    free_b = np.flatnonzero(new_b < 0)
    new_b[free_b] = nxt + np.arange(len(free_b))
    nxt += len(free_b)

    def relabel(lab: np.ndarray, ids: np.ndarray, new: np.ndarray, name: str) -> np.ndarray:
        out = np.full(lab.shape, -1, dtype=np.int64)
        valid = lab >= 0
        if not valid.any():
            return out
        rows = rows_of(ids, lab[valid])
        if (rows < 0).any():
            raise ItkmError(f"{name} holds a cluster id that has no row in the matching")
        out[valid] = new[rows] + offset
        return out

    return CrossGroupLabels(
        a=relabel(la, ids_a, new_a, "labels_a"),
        b=relabel(lb, ids_b, new_b, "labels_b"),
        num_labels=nxt,
        offset=offset,
    )


def sides_by_camera(
    labels: ArrayLike,
    cameras: ArrayLike | Sequence,
    *,
    shuffle_seed: int | None = None,
) -> np.ndarray:
    """Split a one-group scenario's clusters into two sides by camera, for CHM.

    Each cluster belongs to its *majority camera* (the camera holding most of its members; ties
    go to the camera that sorts first).  Cameras are then dealt to side 0 / side 1 greedily so
    both sides hold about as many clusters: cameras in order of decreasing cluster count (ties by
    name), each to the side with fewer clusters so far (ties to side 0).  With ``shuffle_seed``
    the cameras are dealt in a seeded random order instead, so successive epochs can try
    different splits of a many-camera scenario.

    Args:
        labels: ``[N]`` cluster id per instance (``-1`` outlier).
        cameras: ``[N]`` camera of each instance (names or ids).

    Returns:
        ``[N]`` int64: the side (0 or 1) of each instance's cluster, ``-1`` for outliers.  With a
        single camera every cluster is on side 0 (nothing to match).
    """
    lab = int_vector(labels, "labels")
    cams = np.asarray(cameras.detach().cpu().numpy() if isinstance(cameras, Tensor) else cameras)
    if cams.shape != lab.shape:
        raise ItkmError(f"cameras must have shape {lab.shape}, got {cams.shape}")
    out = np.full(lab.shape, -1, dtype=np.int64)
    valid = lab >= 0
    if not valid.any():
        return out
    cam_names, cam_code = np.unique(cams[valid], return_inverse=True)
    clu_ids, clu_code = np.unique(lab[valid], return_inverse=True)
    n_cam = len(cam_names)
    key, counts = np.unique(clu_code.astype(np.int64) * n_cam + cam_code, return_counts=True)
    k_clu, k_cam = key // n_cam, key % n_cam
    # Per cluster: largest count first, then smallest camera code.
    order = np.lexsort((k_cam, -counts, k_clu))
    first = np.ones(len(order), dtype=bool)
    first[1:] = k_clu[order][1:] != k_clu[order][:-1]
    majority = np.empty(len(clu_ids), dtype=np.int64)
    majority[k_clu[order][first]] = k_cam[order][first]

    weight = np.bincount(majority, minlength=n_cam)
    used = np.flatnonzero(weight > 0)
    if shuffle_seed is None:
        deal = used[np.lexsort((used, -weight[used]))]
    else:
        deal = np.random.default_rng(shuffle_seed).permutation(used)
    cam_side = np.zeros(n_cam, dtype=np.int64)
    load = [0, 0]
    for cam in deal:
        side = 0 if load[0] <= load[1] else 1
        cam_side[cam] = side
        load[side] += int(weight[cam])
    out[valid] = cam_side[majority[clu_code]]
    return out


def match_scenario(
    feats: ArrayLike,
    labels: ArrayLike,
    sides: ArrayLike,
    cluster_text: ArrayLike | None = None,
    *,
    text_weight: float = 0.5,
    threshold: float = 0.5,
    offset: int = 0,
    mutual: bool = False,
    margin: float = 0.0,
) -> ScenarioMatching:
    """CHM for one scenario's instances: centroids, Hungarian matching, cross-group labels.

    Args:
        feats: ``[N, D]`` image features of the scenario's instances (current model).
        labels: ``[N]`` cluster ids (global ids are fine; ``-1`` outlier).
        sides: ``[N]`` 0 (side A) / 1 (side B) per instance: the group index in a two-group
            scenario, or :func:`sides_by_camera` in a one-group one; ``-1`` = leave out.  Every
            cluster must lie on one side.
        cluster_text: ``[K, E]`` text feature indexed by cluster id (``K > max label``), e.g. the
            DRU-updated anchors; ``None`` only with ``text_weight == 0``.
        text_weight, threshold, mutual, margin: see :func:`cluster_similarity` /
            :func:`accept_matches`.
        offset: first cross-group label (chain scenarios with ``offset + num_labels``).

    Returns:
        :class:`ScenarioMatching` whose ``labels`` give each instance its cross-group label
        (numbering of :func:`cross_group_labels`), and whose ``matches`` name cluster *ids*.
    """
    f = float_matrix(feats, "feats")
    lab = int_vector(labels, "labels")
    sd = int_vector(sides, "sides")
    if not (lab.shape[0] == sd.shape[0] == f.shape[0]):
        raise ItkmError(
            f"feats, labels and sides must have one entry per instance: "
            f"{f.shape[0]}, {lab.shape[0]}, {sd.shape[0]}"
        )
    if sd.size and not np.isin(sd, (-1, 0, 1)).all():
        raise ItkmError("sides must be 0, 1 or -1")
    lab = np.where(sd >= 0, lab, -1)
    # Each cluster on one side only.
    valid = lab >= 0
    if valid.any():
        pair = np.unique(np.stack([lab[valid], sd[valid]], axis=1), axis=0)
        if len(np.unique(pair[:, 0])) != len(pair):
            raise ItkmError("a cluster has members on both sides; sides must be per cluster")
    mask_a = sd == 0
    mask_b = sd == 1
    ids_a, cen_a = cluster_centroids(f[torch.from_numpy(mask_a).to(f.device)], lab[mask_a])
    ids_b, cen_b = cluster_centroids(f[torch.from_numpy(mask_b).to(f.device)], lab[mask_b])
    txt_a = txt_b = None
    if text_weight > 0:
        if cluster_text is None:
            raise ItkmError("cluster_text is needed when text_weight > 0")
        t = float_matrix(cluster_text, "cluster_text")
        top = int(lab.max()) if lab.size else -1
        if t.shape[0] <= top:
            raise ItkmError(f"cluster_text has {t.shape[0]} rows but cluster id {top} occurs")
        txt_a = t[torch.from_numpy(ids_a).to(t.device)]
        txt_b = t[torch.from_numpy(ids_b).to(t.device)]
    matches = match_clusters(cen_a, cen_b, txt_a, txt_b, text_weight, threshold, mutual=mutual, margin=margin)
    cg = cross_group_labels(
        lab[mask_a], lab[mask_b], matches, clusters_a=ids_a, clusters_b=ids_b, offset=offset
    )
    out = np.full(lab.shape, -1, dtype=np.int64)
    out[mask_a] = cg.a
    out[mask_b] = cg.b
    named = [ClusterMatch(int(ids_a[m.a]), int(ids_b[m.b]), m.similarity) for m in matches]
    return ScenarioMatching(labels=out, num_labels=cg.num_labels, offset=offset, matches=named)
