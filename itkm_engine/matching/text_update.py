"""Dynamic text representation update (DRU, ITKM Stage III).

Stage II learns one text feature per Stage I cluster (the *offline* text representations).  In
Stage III the pseudo-labels are recomputed every epoch from the improving image encoder, so the
clusters change and the Stage II text features no longer index them.  DRU carries the text
knowledge over to each epoch's clusters:

1. every instance inherits the offline text of its Stage II cluster
   (:func:`instance_offline_text`);
2. a new cluster's *offline mean* is the mean of its members' offline texts;
3. if the new cluster continues a cluster of the previous epoch, its text moves from that
   cluster's text toward the offline mean with momentum ``m``, otherwise it is the offline mean::

       t_new = normalise( m * t_prev[p(c)] + (1 - m) * mean_{i in c} offline_i )   if p(c) exists
       t_new = normalise( mean_{i in c} offline_i )                                otherwise

The momentum keeps the anchors stable across epochs (the i2t loss and IHM's text space would
otherwise jump whenever DBSCAN relabels), while the offline mean lets them follow what the
clusters now contain.

Correspondence rule ``p(c)``: the previous-epoch cluster holding the largest share of ``c``'s
members, **if that share is a strict majority** (more than half of all of ``c``'s members,
counting members that were outliers before).  Several new clusters may continue one old cluster
(a split: each half keeps the old text as its prior); a new cluster built mostly from previous
outliers or from several old clusters has no predecessor.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ItkmError
from ._inputs import float_matrix, int_vector

__all__ = ["cluster_correspondence", "instance_offline_text", "update_text_features"]




def cluster_correspondence(
    prev_labels: Tensor | np.ndarray,
    new_labels: Tensor | np.ndarray,
    num_new: int | None = None,
) -> np.ndarray:
    """Predecessor of each new cluster (``[num_new]``, previous cluster id or ``-1``).

    ``p(c)`` is the previous cluster with the most members of ``c`` if it holds strictly more
    than half of ``c``'s members (see the module docstring).  Both label arrays index the same
    ``N`` instances; ``-1`` is an outlier.  ``num_new`` defaults to ``max(new_labels) + 1``.
    """
    prev = int_vector(prev_labels, "prev_labels")
    new = int_vector(new_labels, "new_labels")
    if prev.shape != new.shape:
        raise ItkmError(f"prev_labels and new_labels must cover the same instances: {prev.shape} vs {new.shape}")
    if num_new is None:
        num_new = int(new.max()) + 1 if new.size else 0
    if new.size and int(new.max()) >= num_new:
        raise ItkmError(f"a new label is >= num_new ({num_new})")
    out = np.full(num_new, -1, dtype=np.int64)
    in_new = new >= 0
    size = np.bincount(new[in_new], minlength=num_new)
    both = in_new & (prev >= 0)
    if not both.any():
        return out
    n_prev = int(prev[both].max()) + 1
    key, overlap = np.unique(new[both] * n_prev + prev[both], return_counts=True)
    k_new, k_prev = key // n_prev, key % n_prev
    # Per new cluster: the largest overlap (ties: smallest previous id).
    order = np.lexsort((k_prev, -overlap, k_new))
    first = np.ones(len(order), dtype=bool)
    first[1:] = k_new[order][1:] != k_new[order][:-1]
    c, p, ov = k_new[order][first], k_prev[order][first], overlap[order][first]
    majority = 2 * ov > size[c]
    out[c[majority]] = p[majority]
    return out


def instance_offline_text(
    stage2_labels: Tensor | np.ndarray,
    stage2_text: Tensor | np.ndarray,
    *,
    image_embeds: Tensor | np.ndarray | None = None,
) -> Tensor:
    """Each instance's offline text: the Stage II text feature of its Stage II cluster.

    Args:
        stage2_labels: ``[N]`` Stage II cluster of each instance (``-1`` = outlier then).
        stage2_text: ``[C2, E]`` the offline text representations learned in Stage II.
        image_embeds: optional ``[N, E]`` image embeddings in the joint space.  When given, an
            outlier instance takes the text of the Stage II cluster its image is most similar to
            (the text knowledge it is closest to); when not, its row is zero.

    Returns:
        ``[N, E]`` float32 on ``stage2_text``' device.  Zero rows mean "no offline text" and are
        skipped by :func:`update_text_features`.
    """
    lab = int_vector(stage2_labels, "stage2_labels")
    text = float_matrix(stage2_text, "stage2_text")
    if lab.size and int(lab.max()) >= text.shape[0]:
        raise ItkmError(f"a Stage II label is >= the number of Stage II text features ({text.shape[0]})")
    out = torch.zeros(lab.shape[0], text.shape[1], dtype=torch.float32, device=text.device)
    valid = lab >= 0
    rows = torch.from_numpy(np.flatnonzero(valid)).to(text.device)
    out[rows] = text[torch.from_numpy(lab[valid]).to(text.device)]
    if image_embeds is not None and (~valid).any() and text.shape[0] > 0:
        emb = float_matrix(image_embeds, "image_embeds").to(text.device)
        if emb.shape != (lab.shape[0], text.shape[1]):
            raise ItkmError(f"image_embeds must be [{lab.shape[0]}, {text.shape[1]}], got {tuple(emb.shape)}")
        miss = torch.from_numpy(np.flatnonzero(~valid)).to(text.device)
        nearest = (F.normalize(emb[miss], dim=1) @ F.normalize(text, dim=1).t()).argmax(dim=1)
        out[miss] = text[nearest]
    return out


def update_text_features(
    prev_text: Tensor | np.ndarray | None,
    prev_labels: Tensor | np.ndarray | None,
    new_labels: Tensor | np.ndarray,
    offline_text_per_instance: Tensor | np.ndarray,
    momentum: float = 0.9,
    *,
    num_clusters: int | None = None,
) -> Tensor:
    """Text feature of each new cluster (DRU)::

        t_new[c] = normalise( m * t_prev[p(c)] + (1 - m) * mean_{i in c, offline_i != 0} offline_i )

    with ``p(c)`` from :func:`cluster_correspondence`; clusters without predecessor (or every
    cluster when ``prev_text`` is ``None``, e.g. the first Stage III epoch) take the normalised
    offline mean.  A cluster none of whose members has offline text keeps ``t_prev[p(c)]`` if it
    has a predecessor and is a zero row otherwise (callers may test ``norm == 0``).

    Args:
        prev_text: ``[Cprev, E]`` the previous epoch's output (or ``None``).
        prev_labels: ``[N]`` previous epoch's cluster per instance (ignored when ``prev_text`` is
            ``None``).
        new_labels: ``[N]`` this epoch's cluster per instance (``-1`` outlier).
        offline_text_per_instance: ``[N, E]`` from :func:`instance_offline_text`.
        momentum: ``m`` in the formula; 0 = follow the offline mean, 1 = freeze.
        num_clusters: ``Cnew``; defaults to ``max(new_labels) + 1``.

    Returns:
        ``[Cnew, E]`` float32 text features on the offline texts' device, rows L2-normalised.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ItkmError(f"momentum must be in [0, 1], got {momentum}")
    new = int_vector(new_labels, "new_labels")
    off = float_matrix(offline_text_per_instance, "offline_text_per_instance")
    if off.shape[0] != new.shape[0]:
        raise ItkmError(f"offline text has {off.shape[0]} rows for {new.shape[0]} instances")
    if num_clusters is None:
        num_clusters = int(new.max()) + 1 if new.size else 0
    if new.size and int(new.max()) >= num_clusters:
        raise ItkmError(f"a new label is >= num_clusters ({num_clusters})")
    device = off.device

    has_text = off.abs().sum(dim=1) > 0
    member = torch.from_numpy(new >= 0).to(device) & has_text
    idx = torch.from_numpy(new).to(device)
    sums = torch.zeros(num_clusters, off.shape[1], dtype=torch.float32, device=device)
    counts = torch.zeros(num_clusters, dtype=torch.float32, device=device)
    sums.index_add_(0, idx[member], off[member])
    counts.index_add_(0, idx[member], torch.ones_like(idx[member], dtype=torch.float32))
    mean = sums / counts.clamp_min(1.0)[:, None]

    if prev_text is None:
        return F.normalize(mean, dim=1)
    if prev_labels is None:
        raise ItkmError("prev_labels are needed with prev_text")
    prev_t = float_matrix(prev_text, "prev_text").to(device)
    if prev_t.shape[1] != off.shape[1]:
        raise ItkmError(f"prev_text has size {prev_t.shape[1]}, offline text {off.shape[1]}")
    prev = int_vector(prev_labels, "prev_labels")
    if prev.size and int(prev.max()) >= prev_t.shape[0]:
        raise ItkmError(f"a previous label is >= the number of previous text features ({prev_t.shape[0]})")
    pred = cluster_correspondence(prev, new, num_clusters)
    has_pred = torch.from_numpy(pred >= 0).to(device)
    prior = torch.zeros_like(mean)
    prior[has_pred] = prev_t[torch.from_numpy(pred[pred >= 0]).to(device)]
    blended = torch.where(has_pred[:, None], momentum * prior + (1.0 - momentum) * mean, mean)
    return F.normalize(blended, dim=1)
