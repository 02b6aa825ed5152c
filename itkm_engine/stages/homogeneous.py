"""Stage I -- scenario-adaptive homogeneous learning.

Every epoch: features of all images with the current model, pseudo-labels per group (infrared
clusters never mix with visible ones at this stage), one cluster memory per group initialised from
cluster means, and PK batches trained with the contrastive loss against the sample's own group's
centroids.  The scenario embedding and the group stems live in the model (model/backbone.py); this
stage is where they learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..memory import ClusterMemory
from ..progress import Reporter
from .context import RoundContext, cluster_centroids, image_optimizer
from .loop import EpochPlan, epoch_seed


class GroupMemories:
    """One :class:`ClusterMemory` per group, addressed by global pseudo-label."""

    def __init__(self, feats: np.ndarray, labels: np.ndarray, group_keys: np.ndarray, *, temperature: float,
                 momentum: float, device: torch.device) -> None:
        self.memories: dict[str, ClusterMemory] = {}
        self.local = np.full(int(labels.max()) + 1 if (labels >= 0).any() else 0, -1, dtype=np.int64)
        self.group_of = np.empty(len(self.local), dtype=object)
        for key in sorted(set(group_keys[labels >= 0])):
            sel = (group_keys == key) & (labels >= 0)
            glob = np.unique(labels[sel])
            self.local[glob] = np.arange(len(glob))
            self.group_of[glob] = key
            local_labels = self.local[labels[sel]]
            mem = ClusterMemory(feats.shape[1], len(glob), temperature=temperature, momentum=momentum).to(device)
            mem.init_from(torch.as_tensor(feats[sel], device=device), torch.as_tensor(local_labels, device=device))
            self.memories[key] = mem
        self.local_t = torch.as_tensor(self.local, device=device)
        self._pending: list[tuple[ClusterMemory, torch.Tensor, torch.Tensor]] = []

    def loss(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of each sample's contrastive loss against its group's centroids."""
        total = feats.new_zeros(())
        keys = self.group_of[labels.cpu().numpy()]
        n = max(len(labels), 1)
        for key, mem in self.memories.items():
            m = torch.as_tensor(keys == key, device=feats.device)
            if not bool(m.any()):
                continue
            f, lab = feats[m], self.local_t[labels[m]]
            total = total + mem.loss(f, lab) * (f.shape[0] / n)
            self._pending.append((mem, f.detach(), lab))
        return total

    def update(self) -> None:
        for mem, f, lab in self._pending:
            mem.update(f.float(), lab)
        self._pending.clear()


class HomogeneousStage:
    name = "stage1"

    def __init__(self, ctx: RoundContext) -> None:
        self.ctx = ctx
        s = ctx.cfg.stage1
        self.epochs, self.warmup_epochs = s.epochs, s.warmup_epochs
        ctx.model.set_image_trainable(True)
        self.optimizer = image_optimizer(ctx.model, s.lr, s.new_param_lr, s.weight_decay)
        self.memories: GroupMemories | None = None
        self.labels: np.ndarray | None = None

    def begin_epoch(self, epoch: int, reporter: Reporter) -> EpochPlan:
        ctx, s = self.ctx, self.ctx.cfg.stage1
        fs = ctx.extract(reporter.child(0.0, 0.6), "stage1")
        labels, metrics = ctx.cluster_per_group(fs, reporter.child(0.6, 1.0))
        self.labels, self.fs = labels, fs
        if not (labels >= 0).any():
            reporter.warning("no clusters found this epoch (all images are outliers); skipping its training steps")
            return EpochPlan([], 0, metrics)
        keys = ctx.group_keys[ctx.rows(fs)]
        self.memories = GroupMemories(fs.feats, labels, keys, temperature=s.temperature, momentum=s.memory_momentum,
                                      device=ctx.device)
        seed = epoch_seed(ctx.cfg.seed, ctx.round_no, self.name, epoch)
        loader = ctx.pk_loader(fs, labels, batches=s.iters_per_epoch, seed=seed)
        return EpochPlan(loader, s.iters_per_epoch, metrics)

    def losses(self, batch) -> dict[str, torch.Tensor]:
        if len(batch.failed):
            self.ctx.failed_ids.update(int(self.fs.ids[i]) for i in batch.failed)
        if not len(batch):
            return {}
        b = batch.to(self.ctx.device, non_blocking=True)
        out = self.ctx.model.forward_image(b.images, b.scenario_idx, b.group_idx)
        feats = self.ctx.model.retrieval_feature(out)
        return {"homogeneous": self.memories.loss(feats.float(), b.labels)}

    def after_step(self) -> None:
        self.memories.update()

    def end_epoch(self, epoch: int, reporter: Reporter) -> dict[str, float]:
        return {}

    # Memories are rebuilt from fresh clusters every epoch, so model + optimiser is all there is.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


__all__ = ["HomogeneousStage", "GroupMemories", "cluster_centroids"]
