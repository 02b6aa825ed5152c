"""The decision loss: what the operator confirmed is pulled together, what they rejected pushed apart.

Every epoch of Stage I and Stage III (``stages/homogeneous.py``, ``stages/heterogeneous.py``), on
top of the cluster-memory losses.  The enforcement in :mod:`itkm_engine.constraints` only moves
*labels*; this loss moves the *features*, which is what reaches the pairs no label can carry
(a confirm across scenarios, an outlier confirmed with someone) and what the next round's
clustering sees.

Batch items carry the must-link component of their image in the decisions' closure
(``Closure.component_of``, ``-1`` for an undecided image).  Over the batch's ordered pairs
``(i, j)``, ``i != j``, with cosine ``s_ij``::

    L = mean_{comp_i = comp_j >= 0} (1 - s_ij)  +  mean_{ban[comp_i, comp_j]} max(0, s_ij - (m + margin))

so a confirmed pair (or any two members of one confirmed group) is pulled together and a rejected
pair (or any member of one group against any of a group it was rejected from) pushed below a
margin.  The margin is relative: ``m`` is the batch's mean cosine over its pairs that no decision
relates (detached), so a rejected pair ends up no more alike than two images picked at random --
an absolute margin does not fit features whose cosines all sit high (the quick tower's round-1
features: strangers at 0.43, one person's sightings at 0.56) or all sit low.  Each mean is zero
(with graph) when the batch holds no such pair; the batches bring decided pairs together on
purpose (``PKSampler(decided=...)``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import ItkmError

__all__ = ["decision_loss"]


def decision_loss(feats: Tensor, comp: Tensor | np.ndarray, ban: Tensor | np.ndarray, margin: float = 0.0) -> Tensor:
    """Pull confirmed, push rejected (see the module text).

    Args:
        feats: ``[B, D]`` L2-normalised features.
        comp: ``[B]`` component of each item (``-1``: no decision names it).
        ban: ``bool [K, K]`` components that must stay apart (symmetric).
        margin: a rejected pair costs nothing once its cosine is at or below the batch's mean
            cosine of unrelated pairs plus this.
    """
    if feats.dim() != 2:
        raise ItkmError(f"feats must be [B, D], got shape {tuple(feats.shape)}")
    c = torch.as_tensor(comp, device=feats.device).long()
    if c.shape != feats.shape[:1]:
        raise ItkmError(f"comp must have shape [{feats.shape[0]}], got {tuple(c.shape)}")
    if c.numel() < 2:
        return feats.sum() * 0.0
    banned = torch.as_tensor(ban, device=feats.device).bool()
    f = feats.float()
    sims = f @ f.t()
    has = c >= 0
    eye = torch.eye(len(c), dtype=torch.bool, device=feats.device)
    pos = (c[:, None] == c[None, :]) & has[:, None] & has[None, :] & ~eye
    zero = sims.sum() * 0.0
    loss = zero
    n_pos = pos.sum()
    loss = loss + torch.where(n_pos > 0, ((1.0 - sims) * pos).sum() / n_pos.clamp_min(1), zero)
    if banned.numel():
        cc = c.clamp_min(0)
        neg = banned[cc[:, None], cc[None, :]] & has[:, None] & has[None, :]
        n_neg = neg.sum()
        free = ~(pos | neg | eye)
        ref = (sims.detach() * free).sum() / free.sum().clamp_min(1)
        hinge = (sims - ref - margin).clamp_min(0.0)
        loss = loss + torch.where(n_neg > 0, (hinge * neg).sum() / n_neg.clamp_min(1), zero)
    return loss
