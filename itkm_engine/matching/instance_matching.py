"""Instance-level heterogeneous matching (IHM, ITKM Stage III).

CHM pairs whole clusters; many people on the two sides of a scenario are never clustered cleanly
enough for that.  IHM looks for reliable *instance* pairs instead: image ``i`` of side A and image
``j`` of side B form a pair when they are **mutual top-k neighbours in both spaces**:

* image space -- cosine of the retrieval features;
* text space -- each instance is described by how it relates to all cluster text features,
  ``p_i = softmax(e_i @ T.T / temperature)`` (:func:`text_space`, ``e_i`` the image embedding in
  the joint CLIP space, ``T [C, E]`` the cluster text features), and two instances are compared
  by the cosine of their ``p`` vectors.  The text features summarise identities across both
  sides, so two images of one person land on the same text anchors even when their pixels differ
  (infrared vs. visible).

Requiring mutual neighbourhood *and* agreement of two independent views keeps precision high,
which matters more than recall for a positive pair that the instance loss will pull together.

The neighbour search is chunked: at most ``chunk_size x N_other`` similarities exist at once,
and ``torch.topk`` reduces each chunk to ``chunk_size x k`` indices.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ItkmError
from ._inputs import float_matrix
from ..progress import Reporter

__all__ = ["text_space", "topk_neighbours", "mutual_topk_pairs"]



@torch.no_grad()
def text_space(
    feats: Tensor | np.ndarray,
    cluster_text: Tensor | np.ndarray,
    temperature: float = 0.05,
    *,
    chunk_size: int = 4096,
) -> Tensor:
    """Text-space vector of each instance: ``softmax(normalise(feats) @ normalise(T).T / temperature)``.

    Args:
        feats: ``[N, E]`` image embeddings in the joint image-text space (projected CLS).
        cluster_text: ``[C, E]`` one text feature per cluster (Stage II / DRU).
        temperature: softmax temperature; small values make each vector peak on few clusters.

    Returns:
        ``[N, C]`` float32 rows summing to 1, on ``feats``' device; computed without gradient
        (IHM is a mining step between epochs, not part of the loss graph).
    """
    f = float_matrix(feats, "feats")
    t = float_matrix(cluster_text, "cluster_text").to(f.device)
    if f.shape[1] != t.shape[1]:
        raise ItkmError(
            f"feats and cluster_text must share the joint embedding size, got {f.shape[1]} and {t.shape[1]}"
        )
    if temperature <= 0:
        raise ItkmError(f"temperature must be positive, got {temperature}")
    if t.shape[0] == 0:
        raise ItkmError("text_space needs at least one cluster text feature")
    t = F.normalize(t, dim=1)
    out = torch.empty(f.shape[0], t.shape[0], dtype=torch.float32, device=f.device)
    for lo in range(0, f.shape[0], chunk_size):
        hi = min(lo + chunk_size, f.shape[0])
        out[lo:hi] = torch.softmax(F.normalize(f[lo:hi], dim=1) @ t.t() / temperature, dim=1)
    return out


@torch.no_grad()
def topk_neighbours(
    query: Tensor,
    base: Tensor,
    k: int,
    *,
    chunk_size: int = 4096,
    reporter: Reporter | None = None,
) -> Tensor:
    """Indices ``[Nq, min(k, Nb)]`` of each query row's ``k`` most cosine-similar ``base`` rows
    (best first), computed ``chunk_size`` query rows at a time."""
    if chunk_size <= 0:
        raise ItkmError(f"chunk_size must be positive, got {chunk_size}")
    q = F.normalize(query, dim=1)
    b = F.normalize(base.to(q.device), dim=1)
    kk = min(k, b.shape[0])
    out = torch.empty(q.shape[0], kk, dtype=torch.long, device=q.device)
    if kk == 0:
        return out
    for lo in range(0, q.shape[0], chunk_size):
        if reporter is not None:
            reporter.check()
        hi = min(lo + chunk_size, q.shape[0])
        out[lo:hi] = torch.topk(q[lo:hi] @ b.t(), kk, dim=1).indices
    return out


@torch.no_grad()
def mutual_topk_pairs(
    img_a: Tensor | np.ndarray,
    img_b: Tensor | np.ndarray,
    txt_a: Tensor | np.ndarray,
    txt_b: Tensor | np.ndarray,
    k: int = 5,
    *,
    chunk_size: int = 4096,
    reporter: Reporter | None = None,
) -> np.ndarray:
    """Reliable cross-side pairs: mutual top-k neighbours in image space *and* text space.

    ``(i, j)`` is returned when ``j in topk_B(i)`` and ``i in topk_A(j)`` by image cosine, and
    the same holds by the cosine of the text-space vectors.

    Args:
        img_a, img_b: ``[Na, D]``, ``[Nb, D]`` image (retrieval) features of side A / B.
        txt_a, txt_b: ``[Na, C]``, ``[Nb, C]`` text-space vectors (:func:`text_space`) of the
            same instances, against the same cluster texts.
        k: neighbourhood size (clamped to the other side's size).
        chunk_size: query rows per similarity block.
        reporter: checked for cancellation once per chunk; told the fraction done.

    Returns:
        ``int64 [M, 2]`` rows ``(i, j)``: ``i`` indexes side A, ``j`` side B; sorted.
    """
    reporter = reporter or Reporter()
    ia, ib = float_matrix(img_a, "img_a"), float_matrix(img_b, "img_b")
    ta, tb = float_matrix(txt_a, "txt_a"), float_matrix(txt_b, "txt_b")
    if ia.shape[1] != ib.shape[1]:
        raise ItkmError(f"img_a and img_b must share a size, got {ia.shape[1]} and {ib.shape[1]}")
    if ta.shape[1] != tb.shape[1]:
        raise ItkmError(f"txt_a and txt_b must share a size, got {ta.shape[1]} and {tb.shape[1]}")
    if ta.shape[0] != ia.shape[0] or tb.shape[0] != ib.shape[0]:
        raise ItkmError("image and text-space features must describe the same instances")
    if k <= 0:
        raise ItkmError(f"k must be positive, got {k}")
    na, nb = ia.shape[0], ib.shape[0]
    if na == 0 or nb == 0:
        return np.zeros((0, 2), dtype=np.int64)
    device = ia.device
    ib, ta, tb = ib.to(device), ta.to(device), tb.to(device)

    steps = [(ia, ib), (ib, ia), (ta, tb), (tb, ta)]
    nn = []
    for s, (q, b) in enumerate(steps):
        nn.append(topk_neighbours(q, b, k, chunk_size=chunk_size, reporter=reporter))
        reporter.update((s + 1) / len(steps), message="instance matching")
    img_ab, img_ba, txt_ab, txt_ba = nn

    # Candidates: j in topk_B(i) by image, then keep those that pass the three other checks.
    i = torch.arange(na, device=device).repeat_interleave(img_ab.shape[1])
    j = img_ab.reshape(-1)
    keep = (img_ba[j] == i[:, None]).any(dim=1)
    keep &= (txt_ab[i] == j[:, None]).any(dim=1)
    keep &= (txt_ba[j] == i[:, None]).any(dim=1)
    pairs = torch.stack([i[keep], j[keep]], dim=1).cpu().numpy().astype(np.int64)
    # Already unique; sort by (i, j) for a stable, comparable result.
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order]
