"""Stage I -- scenario-adaptive homogeneous learning.

Every epoch: features of all images with the current model, pseudo-labels per group (infrared
clusters never mix with visible ones at this stage), one cluster memory per group initialised from
cluster means, and PK batches trained with the contrastive loss against the sample's own group's
centroids.  Where the operator decided pairs, the batches bring some of them in (outliers with
their partner) and the decision loss pulls confirmed pairs together and pushes rejected ones
apart (:mod:`itkm_engine.losses.decision`).  The scenario embedding and the group stems live in the model (model/backbone.py); this
stage is where they learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..losses.decision import decision_loss
from ..memory import ClusterMemory
from ..progress import Reporter
from ..distributed import image_forward
from .context import RoundContext, image_optimizer
from .loop import EpochPlan, epoch_seed


class GroupMemories:
    """Per-group cluster memories as one memory with group-masked logits.

    A sample is contrasted only against the centroids of its own group (so infrared clusters
    never compete with visible ones in Stage I): logits of other groups' clusters are set to
    -inf.  One matrix product and one cross-entropy per batch, with no per-group indexing -- so
    no host synchronisation in the training step.
    """

    def __init__(self, feats: np.ndarray, labels: np.ndarray, group_keys: np.ndarray, *, temperature: float,
                 momentum: float, device: torch.device) -> None:
        n = int(labels.max()) + 1 if (labels >= 0).any() else 0
        group_of = np.zeros(n, dtype=np.int64)
        keep = labels >= 0
        codes = {k: i for i, k in enumerate(sorted(set(group_keys[keep])))}
        group_of[labels[keep]] = [codes[k] for k in group_keys[keep]]  # clusters are per group
        self.group_of = torch.as_tensor(group_of, device=device)
        self.memory = ClusterMemory(feats.shape[1], n, temperature=temperature, momentum=momentum).to(device)
        self.memory.init_from(torch.as_tensor(feats[keep], device=device), torch.as_tensor(labels[keep], device=device))

    def loss(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against the own group's centroids, mean over the samples with a label;
        ``-1`` (an outlier: in Stage III one that a decision or CHM gave a cross-group label, or a
        decided image brought into a batch with its partner) adds nothing."""
        logits = self.memory.logits(feats)
        valid = labels >= 0
        safe = labels.clamp_min(0)
        if logits.shape[1] == 0:
            return feats.sum() * 0.0
        other = self.group_of[None, :] != self.group_of[safe][:, None]
        ce = F.cross_entropy(logits.masked_fill(other, float("-inf")), safe, reduction="none")
        return (ce * valid).sum() / valid.sum().clamp_min(1)

    def update(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        self.memory.update(feats.float(), labels)


class DecisionTerm:
    """The decision loss of one epoch (Stage I and Stage III): the rows' components and bans on
    the device, weighted as ``decisions.weight``."""

    def __init__(self, rows, cfg, device: torch.device) -> None:
        self.rows = rows
        self.weight, self.margin = cfg.weight, cfg.margin
        self.comp = torch.as_tensor(rows.comp, device=device)
        self.ban = torch.as_tensor(rows.ban, device=device)

    @classmethod
    def of(cls, ctx: RoundContext, fs) -> "DecisionTerm | None":
        rows = ctx.decided(fs)
        return None if rows is None else cls(rows, ctx.cfg.decisions, ctx.device)

    def loss(self, feats: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.weight <= 0:
            return feats.sum() * 0.0
        return self.weight * decision_loss(feats, self.comp[index], self.ban, self.margin)


class HomogeneousStage:
    name = "stage1"

    def __init__(self, ctx: RoundContext) -> None:
        self.ctx = ctx
        s = ctx.cfg.stage1
        self.epochs, self.warmup_epochs = s.epochs, s.warmup_epochs
        ctx.model.set_image_trainable(True)
        self.optimizer = image_optimizer(ctx.model, s.lr, s.new_param_lr, s.weight_decay)
        self.forward = image_forward(ctx.model, ctx.dist)
        self.memories: GroupMemories | None = None
        self.labels: np.ndarray | None = None
        self.decided = None

    def prepare(self, reporter: Reporter, resume: dict[str, Any] | None) -> None:
        pass  # every epoch starts from fresh clusters: nothing is shared or resumed beyond the model

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
        steps = ctx.batches_per_epoch(s.iters_per_epoch, labels)
        self.decided = DecisionTerm.of(ctx, fs)
        if self.decided is not None:
            metrics.update(self.decided.rows.metrics())
        loader = ctx.pk_loader(fs, labels, batches=steps, seed=seed,
                               decided=self.decided.rows if self.decided is not None else None)
        return EpochPlan(loader, steps, metrics)

    def losses(self, batch) -> dict[str, torch.Tensor]:
        if len(batch.failed):
            self.ctx.failed_ids.update(int(self.fs.ids[i]) for i in batch.failed)
        if not len(batch):
            return {}
        b = batch.to(self.ctx.device, non_blocking=True)
        out = self.forward(b.images, b.scenario_idx, b.group_idx, b.prefix)
        feats = self.ctx.model.retrieval_feature(out).float()
        self._step = (feats.detach(), b.labels)
        terms = {"homogeneous": self.memories.loss(feats, b.labels)}
        if self.decided is not None:
            terms["decision"] = self.decided.loss(feats, b.index)
        return terms

    def after_backward(self) -> None:
        pass  # the model's gradients are DDP's

    def after_step(self) -> None:
        feats, labels = self._step
        self.memories.update(self.ctx.dist.gather_rows(feats), self.ctx.dist.gather_rows(labels))

    def end_epoch(self, epoch: int, reporter: Reporter) -> dict[str, float]:
        return {}

    def publish(self) -> None:
        pass  # Stage I hands on its model only

    # Memories are rebuilt from fresh clusters every epoch, so model + optimiser is all there is.
    def state_dict(self) -> dict[str, Any]:
        return {}


__all__ = ["HomogeneousStage", "GroupMemories", "DecisionTerm"]
