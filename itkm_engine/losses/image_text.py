"""Image <-> text losses: CLIP-ReID stage-1 supervised contrast, and image-to-text cross-entropy.

Stage II (DESIGN.md section 2) learns one set of prompt tokens per pseudo-identity with the image
encoder frozen.  A batch holds ``B`` image features and the ``B`` text features of their own
clusters' prompts; items that share a pseudo-label are all positives of each other, so the loss
is the *supervised* contrastive loss of Khosla et al. as CLIP-ReID (Li et al., AAAI 2023) uses
it, in both directions (image anchors against texts, and text anchors against images).

Stage III then uses the learned (and DRU-updated) per-cluster text features as fixed
classifier anchors: :func:`i2t_cross_entropy` pulls each image toward its cluster's text.

All features are expected L2-normalised; ``logit_scale`` is the (already exponentiated) CLIP
scale, a float or a 0-d tensor (``clip.logit_scale.exp()``).  Everything is computed in float32
so it is safe under autocast.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ItkmError

__all__ = ["supcon", "supcon_i2t", "supcon_t2i", "i2t_cross_entropy"]


def _labels(labels: Tensor | np.ndarray, n: int, device: torch.device, what: str) -> Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(np.ascontiguousarray(labels))
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ItkmError(f"{what} must be integers, got {labels.dtype}")
    if labels.shape != (n,):
        raise ItkmError(f"{what} must have shape [{n}], got {tuple(labels.shape)}")
    return labels.to(device=device, dtype=torch.long)


def _check_pair(a: Tensor, b: Tensor, an: str, bn: str) -> None:
    if a.dim() != 2 or b.dim() != 2:
        raise ItkmError(f"{an} and {bn} must be 2-d, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ItkmError(
            f"{an} and {bn} must share the embedding size, got {a.shape[1]} and {b.shape[1]}"
        )


def supcon(
    anchors: Tensor,
    contrast: Tensor,
    anchor_labels: Tensor | np.ndarray,
    contrast_labels: Tensor | np.ndarray,
    logit_scale: float | Tensor = 1.0,
) -> Tensor:
    """Supervised contrastive loss of ``anchors [A, E]`` against ``contrast [K, E]``.

    With ``s_ak = logit_scale * anchors[a] . contrast[k]`` and ``P(a) = {k : y_k = y_a}``::

        L = - mean_a  1/|P(a)| * sum_{k in P(a)} ( s_ak - log sum_{k'} exp(s_ak') )

    i.e. CLIP-ReID's ``SupConLoss`` (mean log-probability over the positives, averaged over
    anchors).  Anchors with label ``-1`` or without any positive are skipped; contrast items with
    label ``-1`` stay in the denominator as negatives but are never positives.  When no anchor
    is usable the result is a zero that keeps the graph.
    """
    _check_pair(anchors, contrast, "anchors", "contrast")
    ya = _labels(anchor_labels, anchors.shape[0], anchors.device, "anchor_labels")
    yk = _labels(contrast_labels, contrast.shape[0], anchors.device, "contrast_labels")
    logits = (anchors.float() @ contrast.float().t()) * logit_scale
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (ya[:, None] == yk[None, :]) & (yk[None, :] >= 0) & (ya[:, None] >= 0)
    n_pos = pos.sum(dim=1)
    usable = n_pos > 0
    mean_log_prob_pos = (log_prob * pos).sum(dim=1) / n_pos.clamp_min(1)
    # Masked mean without a host sync: zero (with graph) when no anchor is usable.
    return -(mean_log_prob_pos * usable).sum() / usable.sum().clamp_min(1)


def supcon_i2t(
    img: Tensor, txt: Tensor, labels: Tensor | np.ndarray, logit_scale: float | Tensor = 1.0
) -> Tensor:
    """Image-to-text supervised contrast: each image ``img[b]`` is an anchor against all batch
    texts ``txt [B, E]``; the texts of its own pseudo-label are the positives (see :func:`supcon`)."""
    _check_pair(img, txt, "img", "txt")
    if img.shape[0] != txt.shape[0]:
        raise ItkmError(f"img and txt must have the same batch size, got {img.shape[0]} and {txt.shape[0]}")
    return supcon(img, txt, labels, labels, logit_scale)


def supcon_t2i(
    img: Tensor, txt: Tensor, labels: Tensor | np.ndarray, logit_scale: float | Tensor = 1.0
) -> Tensor:
    """Text-to-image supervised contrast: each text ``txt[b]`` is an anchor against all batch
    images ``img [B, E]``; the images of its pseudo-label are the positives.

    Same argument order as :func:`supcon_i2t` (images first) so the two calls read alike.
    """
    _check_pair(img, txt, "img", "txt")
    if img.shape[0] != txt.shape[0]:
        raise ItkmError(f"img and txt must have the same batch size, got {img.shape[0]} and {txt.shape[0]}")
    return supcon(txt, img, labels, labels, logit_scale)


def i2t_cross_entropy(
    img: Tensor,
    text_anchors: Tensor,
    labels: Tensor | np.ndarray,
    logit_scale: float | Tensor = 1.0,
) -> Tensor:
    """Cross-entropy of images against per-cluster text anchors::

        L = mean_{b : y_b >= 0}  CE( logit_scale * img[b] @ text_anchors.T , y_b )

    ``img [B, E]`` normalised image embeddings in the joint space, ``text_anchors [C, E]`` the
    (fixed, detached by the caller if it wants) normalised text feature of each cluster, labels
    ``0..C-1`` or ``-1`` (ignored).  Zero with graph when no label is usable.
    """
    _check_pair(img, text_anchors, "img", "text_anchors")
    y = _labels(labels, img.shape[0], img.device, "labels")
    c = text_anchors.shape[0]
    # Checked where it is free (CPU); on a GPU it would be a host sync every step.
    if y.device.type == "cpu" and y.numel() and bool(((y < -1) | (y >= c)).any()):
        raise ItkmError(f"labels must be -1 or 0..{c - 1} for {c} text anchors")
    if c == 0 or y.numel() == 0:
        return img.sum() * 0.0
    valid = y >= 0
    logits = (img.float() @ text_anchors.float().t()) * logit_scale
    ce = F.cross_entropy(logits, y.clamp_min(0), reduction="none")
    return (ce * valid).sum() / valid.sum().clamp_min(1)
