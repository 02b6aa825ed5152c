"""Instance-level contrastive loss on reliable cross-group pairs (ITKM Stage III, IHM).

Instance-level heterogeneous matching finds pairs ``(i, j)`` of images from the two sides of a
scenario (visible/infrared, high-/low-res, or two camera sets) that are each other's top-k
neighbours in both image and text space.  Cluster-level matching only helps when whole clusters
correspond; these pairs give a direct, finer signal across the modality gap: pull ``i`` toward
its partner ``j`` and away from everything else in the batch.

For the batch features ``f [B, D]`` (L2-normalised) and pairs ``(i, j)`` of batch positions,
each direction of each pair is one InfoNCE term (the loss is symmetric)::

    l(i -> j) = - log( exp(f_i . f_j / tau) / sum_{k != i} exp(f_i . f_k / tau) )
    L = 1 / (2M) * sum_{(i, j)} ( l(i -> j) + l(j -> i) )

Negatives are all other batch items except the anchor itself.  Both ends meet in a batch because
the Stage III sampler is pair-aware (``data/loading.PKSampler(pairs=...)``); on top of that,
:func:`partner_centroid_loss` pulls an instance toward its partner's cross-group memory centroid,
which needs no partner in the batch.  When ``labels`` are given, batch
items that share the anchor's pseudo-label (other than the partner) are also left out of the
denominator, so this loss never pushes apart samples the homogeneous memory loss pulls together.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ItkmError
from ..records import rows_of

__all__ = ["instance_pair_loss", "pairs_in_batch", "partner_centroid_loss"]


def _long(x: Tensor | np.ndarray, device: torch.device, what: str) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise ItkmError(f"{what} must be integers, got {x.dtype}")
    return x.to(device=device, dtype=torch.long)


def instance_pair_loss(
    feats: Tensor,
    pair_index: Tensor | np.ndarray,
    temperature: float = 0.05,
    *,
    labels: Tensor | np.ndarray | None = None,
) -> Tensor:
    """Symmetric InfoNCE over reliable pairs within a batch.

    Args:
        feats: ``[B, D]`` L2-normalised features of the batch.
        pair_index: ``[M, 2]`` batch positions ``(i, j)``, ``i != j`` (see :func:`pairs_in_batch`).
        temperature: softmax temperature ``tau``.
        labels: optional ``[B]`` pseudo-labels; same-label items other than the partner are not
            negatives (``-1`` never matches anything).

    Returns:
        0-d float32 tensor; with ``M == 0`` a zero that keeps the graph (``feats.sum() * 0``).
    """
    if feats.dim() != 2:
        raise ItkmError(f"feats must be [B, D], got shape {tuple(feats.shape)}")
    if temperature <= 0:
        raise ItkmError(f"temperature must be positive, got {temperature}")
    pairs = _long(pair_index, feats.device, "pair_index")
    if pairs.numel() == 0:
        return feats.sum() * 0.0
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ItkmError(f"pair_index must be [M, 2], got shape {tuple(pairs.shape)}")
    b = feats.shape[0]
    # Checked on the caller's CPU tensor (free); pairs already on a GPU are trusted (no host sync).
    check = pair_index if isinstance(pair_index, np.ndarray) else pair_index.detach()
    if not (isinstance(check, Tensor) and check.device.type != "cpu"):
        check = torch.as_tensor(np.asarray(check)).reshape(-1, 2)
        if bool(((check < 0) | (check >= b)).any()):
            raise ItkmError(f"pair_index holds a position outside the batch of {b}")
        if bool((check[:, 0] == check[:, 1]).any()):
            raise ItkmError("pair_index holds a pair of an item with itself")

    anchors = torch.cat([pairs[:, 0], pairs[:, 1]])
    positives = torch.cat([pairs[:, 1], pairs[:, 0]])
    f = feats.float()
    logits = f[anchors] @ f.t() / temperature  # [2M, B]
    cols = torch.arange(b, device=feats.device)
    excluded = cols[None, :] == anchors[:, None]
    if labels is not None:
        y = _long(labels, feats.device, "labels")
        if y.shape != (b,):
            raise ItkmError(f"labels must have shape [{b}], got {tuple(y.shape)}")
        ya = y[anchors]
        same = (y[None, :] == ya[:, None]) & (ya[:, None] >= 0)
        excluded = excluded | (same & (cols[None, :] != positives[:, None]))
    logits = logits.masked_fill(excluded, float("-inf"))
    return F.cross_entropy(logits, positives)


def pairs_in_batch(pairs: Tensor | np.ndarray, batch_ids: Tensor | np.ndarray) -> Tensor:
    """Translate dataset-level pairs into batch positions for :func:`instance_pair_loss`.

    Args:
        pairs: ``[P, 2]`` instance indices (e.g. the output of IHM's ``mutual_topk_pairs``
            mapped to dataset indices).
        batch_ids: ``[B]`` the dataset index of each batch item.

    Returns:
        ``LongTensor [M, 2]`` on ``batch_ids``' device (CPU for numpy input): the pairs whose two
        ends are both in the batch, as batch positions (first occurrence when an instance was
        sampled twice).
    """
    ids = _long(batch_ids, torch.device("cpu"), "batch_ids")
    device = batch_ids.device if isinstance(batch_ids, Tensor) else torch.device("cpu")
    p = _long(pairs, torch.device("cpu"), "pairs").reshape(-1, 2)
    if ids.numel() == 0 or p.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.long, device=device)
    ids_np = ids.numpy()
    uniq, first = np.unique(ids_np, return_index=True)
    p_np = p.numpy()
    pos = np.full(p_np.shape, -1, dtype=np.int64)
    for col in range(2):
        loc = rows_of(uniq, p_np[:, col])
        hit = loc >= 0
        pos[hit, col] = first[loc[hit]]
    keep = (pos >= 0).all(axis=1) & (pos[:, 0] != pos[:, 1])
    return torch.from_numpy(pos[keep]).to(device)


def partner_centroid_loss(memory_logits: Tensor, partner_labels: Tensor | np.ndarray) -> Tensor:
    """Pull each instance toward the memory centroid of its IHM partner's cluster.

    Args:
        memory_logits: ``[B, C]`` the batch's logits against the cross-group cluster memory
            (``ClusterMemory.logits``: cosine / temperature).
        partner_labels: ``[B]`` cross-group label of each item's partner; ``-1`` = no partner (or
            a partner already in the item's own cluster), which adds nothing.

    Returns:
        0-d tensor: cross-entropy toward the partner's centroid, averaged over items with a
        partner; a zero that keeps the graph when there is none.
    """
    y = _long(partner_labels, memory_logits.device, "partner_labels")
    if y.shape != memory_logits.shape[:1]:
        raise ItkmError(f"partner_labels must have shape [{memory_logits.shape[0]}], got {tuple(y.shape)}")
    has = y >= 0
    if not bool(has.any()):
        return memory_logits.sum() * 0.0
    return F.cross_entropy(memory_logits[has].float(), y[has])
