"""Cluster memory and its contrastive loss (Cluster Contrast, Dai et al., ACCV 2022).

Stage I (and the cross-group part of Stage III) learn from pseudo-labels through a *memory* of
one centroid per cluster instead of a classifier: the number of clusters changes every epoch, so
a learned classifier would have to be thrown away each time, and a memory of centroids can be
built directly from the features the clustering just saw.

For a batch of L2-normalised features ``f_b`` with pseudo-labels ``y_b`` and the memory
``M [C, D]`` (rows L2-normalised) the loss is the cluster-level InfoNCE

    L = - 1/|B| * sum_b log( exp(f_b . M[y_b] / tau) / sum_c exp(f_b . M[c] / tau) )
      = cross_entropy(f @ M.T / tau, y)

and after the optimiser step every sample moves its own centroid, one sample at a time, in
batch order (exactly what Cluster Contrast's ``CM.backward`` does):

    M[y_b] <- m * M[y_b] + (1 - m) * f_b ;   M[y_b] <- M[y_b] / ||M[y_b]||

The memory is a buffer, not a parameter: gradients flow only into the features, never into the
centroids, and the centroids travel with ``.to(device)`` and ``state_dict()``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ItkmError

__all__ = ["ClusterMemory", "cluster_means"]


def _labels_tensor(labels: Tensor | np.ndarray, device: torch.device) -> Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(np.ascontiguousarray(labels))
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ItkmError(f"cluster labels must be integers, got {labels.dtype}")
    return labels.to(device=device, dtype=torch.long)


def cluster_means(features: Tensor, labels: Tensor | np.ndarray, num_clusters: int) -> Tensor:
    """L2-normalised mean feature of each cluster ``0..num_clusters-1`` (label ``-1`` ignored).

    A cluster without members gets a zero row (it then scores a constant logit of 0 until an
    update fills it), so callers should number clusters contiguously.
    """
    if features.dim() != 2:
        raise ItkmError(f"features must be [N, D], got shape {tuple(features.shape)}")
    labels = _labels_tensor(labels, features.device)
    if labels.shape != (features.shape[0],):
        raise ItkmError(
            f"labels must be [N] = [{features.shape[0]}], got shape {tuple(labels.shape)}"
        )
    valid = labels >= 0
    if bool((labels[valid] >= num_clusters).any()):
        raise ItkmError(
            f"a cluster label is >= num_clusters ({num_clusters}); labels must be 0..C-1 or -1"
        )
    feats = features.detach().float()
    sums = torch.zeros(num_clusters, feats.shape[1], dtype=torch.float32, device=feats.device)
    sums.index_add_(0, labels[valid], feats[valid])
    # Normalising the sum is the same as normalising the mean.
    return F.normalize(sums, dim=1)


class ClusterMemory(nn.Module):
    """One L2-normalised centroid per pseudo-label cluster, with Cluster Contrast's loss and update.

    Typical use in an epoch::

        memory = ClusterMemory(dim, num_clusters, temperature=0.05, momentum=0.2).to(device)
        memory.init_from(all_features, all_labels)        # once per epoch, after clustering
        for images, labels in loader:
            f = model(images)                              # normalised [B, D]
            loss = memory.loss(f, labels)
            loss.backward(); optimiser.step()
            memory.update(f, labels)                       # after the backward

    Labels are ``0..C-1``; ``-1`` marks a sample to ignore (an outlier) in both ``loss`` and
    ``update``.
    """

    features: Tensor

    def __init__(
        self,
        num_features: int,
        num_clusters: int,
        temperature: float = 0.05,
        momentum: float = 0.2,
    ) -> None:
        super().__init__()
        if num_features <= 0:
            raise ItkmError(f"num_features must be positive, got {num_features}")
        if num_clusters < 0:
            raise ItkmError(f"num_clusters must be >= 0, got {num_clusters}")
        if temperature <= 0:
            raise ItkmError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= momentum <= 1.0:
            raise ItkmError(f"momentum must be in [0, 1], got {momentum}")
        self.num_features = int(num_features)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.register_buffer("features", torch.zeros(num_clusters, num_features))

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_centroids(
        cls, centroids: Tensor, *, temperature: float = 0.05, momentum: float = 0.2
    ) -> "ClusterMemory":
        """A memory holding ``centroids [C, D]`` (normalised here), on their device."""
        if centroids.dim() != 2:
            raise ItkmError(f"centroids must be [C, D], got shape {tuple(centroids.shape)}")
        mem = cls(centroids.shape[1], centroids.shape[0], temperature, momentum)
        mem.to(centroids.device)
        with torch.no_grad():
            mem.features.copy_(F.normalize(centroids.detach().float(), dim=1))
        return mem

    @classmethod
    def from_features(
        cls,
        features: Tensor,
        labels: Tensor | np.ndarray,
        *,
        num_clusters: int | None = None,
        temperature: float = 0.05,
        momentum: float = 0.2,
    ) -> "ClusterMemory":
        """A memory whose centroids are the cluster means of ``features`` (``C = max label + 1``
        unless ``num_clusters`` is given), on the features' device."""
        lab = _labels_tensor(labels, features.device)
        if num_clusters is None:
            num_clusters = int(lab.max().item()) + 1 if lab.numel() else 0
        return cls.from_centroids(
            cluster_means(features, lab, max(num_clusters, 0)),
            temperature=temperature,
            momentum=momentum,
        )

    @property
    def num_clusters(self) -> int:
        return int(self.features.shape[0])

    @torch.no_grad()
    def init_from(self, features: Tensor, labels: Tensor | np.ndarray) -> None:
        """Set every centroid to its cluster's normalised mean feature (label ``-1`` ignored).

        ``features [N, D]`` may live on any device; the memory keeps its own device and dtype.
        """
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ItkmError(
                f"features must be [N, {self.num_features}], got shape {tuple(features.shape)}"
            )
        means = cluster_means(features, labels, self.num_clusters)
        self.features.copy_(means.to(self.features.device, self.features.dtype))

    # -- loss and update -------------------------------------------------------------------
    def _check_batch(self, feats: Tensor, labels: Tensor | np.ndarray) -> Tensor:
        if feats.dim() != 2 or feats.shape[1] != self.num_features:
            raise ItkmError(
                f"features must be [B, {self.num_features}], got shape {tuple(feats.shape)}"
            )
        lab = _labels_tensor(labels, feats.device)
        if lab.shape != (feats.shape[0],):
            raise ItkmError(f"labels must be [B] = [{feats.shape[0]}], got {tuple(lab.shape)}")
        # Checked where it is free (CPU tensors); on a GPU the check would cost a host sync every
        # step, and cross_entropy's own device-side assert still catches a bad label there.
        if lab.device.type == "cpu" and lab.numel() and bool(((lab < -1) | (lab >= self.num_clusters)).any()):
            raise ItkmError(
                f"labels must be -1 or 0..{self.num_clusters - 1} for a memory of "
                f"{self.num_clusters} clusters"
            )
        return lab

    def logits(self, feats: Tensor) -> Tensor:
        """``feats @ M.T / temperature`` in float32 (safe under autocast), ``[B, C]``."""
        return feats.float() @ self.features.float().t() / self.temperature

    def loss(self, feats: Tensor, labels: Tensor | np.ndarray) -> Tensor:
        """Cross-entropy of ``feats @ M.T / tau`` against ``labels``, mean over labelled samples.

        ``feats [B, D]`` must be L2-normalised.  With no labelled sample the result is a zero
        that keeps the graph (``feats.sum() * 0``), so ``backward()`` still works.
        """
        lab = self._check_batch(feats, labels)
        if self.num_clusters == 0 or lab.numel() == 0:
            return feats.sum() * 0.0
        # Masked mean instead of indexing by `valid`: no data-dependent shape, so no host sync.
        valid = lab >= 0
        ce = F.cross_entropy(self.logits(feats), lab.clamp_min(0), reduction="none")
        return (ce * valid).sum() / valid.sum().clamp_min(1)

    forward = loss

    @torch.no_grad()
    def update(self, feats: Tensor, labels: Tensor | np.ndarray) -> None:
        """Momentum-update the centroids with the batch, sample by sample in batch order.

        ``M[y] <- normalise(m * M[y] + (1 - m) * f)`` for each labelled sample ``(f, y)``.
        Samples of different clusters do not interact, so the k-th sample of every cluster is
        applied in one vectorised step; the result equals Cluster Contrast's per-sample loop.
        Call it after ``backward()`` (it writes the memory the loss read).
        """
        lab = self._check_batch(feats, labels)
        valid = lab >= 0
        if not bool(valid.any()):
            return
        f = feats.detach()[valid].to(self.features.dtype)
        y = lab[valid]
        # rank[b] = how many earlier samples of the batch carry the same label.
        order = torch.argsort(y, stable=True)
        ys = y[order]
        idx = torch.arange(ys.numel(), device=ys.device)
        is_start = torch.ones_like(ys, dtype=torch.bool)
        is_start[1:] = ys[1:] != ys[:-1]
        start_pos = torch.cummax(torch.where(is_start, idx, torch.zeros_like(idx)), dim=0).values
        rank = torch.empty_like(y)
        rank[order] = idx - start_pos
        m = self.momentum
        for r in range(int(rank.max().item()) + 1):
            sel = rank == r
            ids = y[sel]
            new = m * self.features[ids] + (1.0 - m) * f[sel]
            self.features[ids] = F.normalize(new, dim=1)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # The cluster count changes every epoch: accept a saved memory of any C (same D) by
        # resizing the buffer first, so a resumed epoch can restore its memory into a fresh one.
        key = prefix + "features"
        saved = state_dict.get(key)
        if (
            isinstance(saved, Tensor)
            and saved.dim() == 2
            and saved.shape[1] == self.num_features
            and saved.shape[0] != self.features.shape[0]
        ):
            self.features = torch.zeros(
                saved.shape[0], self.num_features, dtype=self.features.dtype, device=self.features.device
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, num_clusters={self.num_clusters}, "
            f"temperature={self.temperature}, momentum={self.momentum}"
        )
