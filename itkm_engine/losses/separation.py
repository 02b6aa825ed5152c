"""Multi-scenario separation loss (ITKM Stage II).

Why: one model and one text encoder serve every scenario at once.  Without a constraint, the
learned prompts of clusters from different scenarios drift toward a common "person" direction
(the frozen text transformer maps most prompt tokens near the template's embedding), so one
scenario's prompts absorb another's and the text anchors stop carrying what is specific to each
scenario (infrared appearance, low-resolution appearance, clothes-changed appearance).  Clusters
of *different* scenarios are, by construction, different pseudo-identities living in different
imaging conditions; a hinge pushes their text features apart until their cosine is below a
margin.  Pairs from the *same* scenario are left to the supervised contrastive losses.

    L = mean_{(i, j) : s_i != s_j}  max(0, cos(t_i, t_j) - margin)

Which clusters "cannot be the same person" is the caller's call, passed as an integer code per
cluster.  In the paper every scenario is a separate dataset, so the code was the scenario.  In this
product the same person crosses a site's visible, infrared and low-res cameras, so Stage II passes
each cluster's *site* (stages/text.py): clusters of one site are never pushed apart.

Pairs are ordered, which gives the same mean as unordered pairs (the matrix is symmetric).
The loss is zero (never NaN) when every cluster belongs to one scenario.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ItkmError

__all__ = ["multi_scenario_separation_loss"]


def multi_scenario_separation_loss(
    text_feats: Tensor,
    cluster_scenarios: Tensor | np.ndarray,
    margin: float = 0.2,
    *,
    chunk_size: int = 4096,
) -> Tensor:
    """Hinge on the cosine of text features of clusters with different codes (scenarios, sites).

    Args:
        text_feats: ``[C, E]`` one text feature per cluster (normalised here, so the cosine is a
            true cosine whatever the caller passes).
        cluster_scenarios: ``[C]`` integer code of each cluster (Stage II: its site); only pairs
            with different codes count.
        margin: pairs whose cosine is at or below ``margin`` cost nothing.
        chunk_size: rows of the ``C x C`` cosine matrix computed at once.  Autograd keeps one
            ``chunk x C`` block per chunk (about ``C*C`` floats in all: 100 MB at C = 5,000);
            the chunks only bound the size of the transient temporaries.

    Returns:
        A 0-d float32 tensor; ``mean`` over cross-scenario pairs of ``max(0, cos - margin)``.
    """
    if text_feats.dim() != 2:
        raise ItkmError(f"text_feats must be [C, E], got shape {tuple(text_feats.shape)}")
    scen = cluster_scenarios
    if isinstance(scen, np.ndarray):
        scen = torch.from_numpy(np.ascontiguousarray(scen))
    if scen.dtype.is_floating_point or scen.dtype == torch.bool:
        raise ItkmError(f"cluster_scenarios must be integers, got {scen.dtype}")
    c = text_feats.shape[0]
    if scen.shape != (c,):
        raise ItkmError(f"cluster_scenarios must have shape [{c}], got {tuple(scen.shape)}")
    if chunk_size <= 0:
        raise ItkmError(f"chunk_size must be positive, got {chunk_size}")
    scen = scen.to(device=text_feats.device, dtype=torch.long)
    if c < 2:
        return text_feats.sum() * 0.0

    t = F.normalize(text_feats.float(), dim=1)
    total = t.new_zeros(())
    n_pairs = torch.zeros((), dtype=torch.long, device=t.device)
    for lo in range(0, c, chunk_size):
        hi = min(lo + chunk_size, c)
        cross = scen[lo:hi, None] != scen[None, :]
        hinge = (t[lo:hi] @ t.t() - margin).clamp_min(0.0)
        total = total + hinge.masked_fill(~cross, 0.0).sum()
        n_pairs = n_pairs + cross.sum()
    # No host sync, no NaN: zero pairs -> 0 / 1.
    return total / n_pairs.clamp_min(1)
