"""Stage II -- text knowledge: learned prompts per pseudo-identity.

The image encoder is frozen; its projected features are computed once and clustered per group
(these are the Stage I clusters of the round's final Stage I model).  Each cluster gets its own
learnable tokens X1..Xn in "A photo of a X1 .. Xn person.", run through CLIP's real frozen text
transformer (model/prompts.py).  Losses: image-to-text and text-to-image supervised contrast (as
CLIP-ReID's first stage) plus the multi-scenario separation hinge that keeps apart the text
features of clusters that cannot be the same person: clusters of different *sites* (a cluster's
site is the majority site of its members' cameras).  The paper's scenarios came from datasets that
share no people; at one site the same person crosses the visible, infrared and low-res cameras, so
pushing scenarios apart would split that person.  With one site the loss is 0 (and logged so,
beside ``n_sites``).  Output: one "offline" text feature per cluster.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..losses.image_text import supcon_i2t, supcon_t2i
from ..losses.separation import multi_scenario_separation_loss
from ..model.prompts import PromptLearner
from ..progress import Reporter
from ..records import rows_of
from .context import RoundContext
from .loop import EpochPlan, epoch_seed


def logit_scale(model) -> torch.Tensor:
    """CLIP's temperature as a multiplier (open_clip stores its log)."""
    return model.logit_scale.detach().exp()


def majority_per_cluster(labels: np.ndarray, codes: np.ndarray, num_clusters: int) -> np.ndarray:
    """Per cluster ``0..num_clusters-1``: the most frequent of its members' integer ``codes``
    (ties: the smallest code; 0 for a cluster without members).  Outliers (-1) are ignored."""
    labels, codes = np.asarray(labels, dtype=np.int64), np.asarray(codes, dtype=np.int64)
    out = np.zeros(num_clusters, dtype=np.int64)
    keep = labels >= 0
    if not keep.any():
        return out
    key, counts = np.unique(np.stack([labels[keep], codes[keep]], axis=1), axis=0, return_counts=True)
    order = np.lexsort((key[:, 1], -counts, key[:, 0]))
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order][1:, 0] != key[order][:-1, 0]
    out[key[order][first, 0]] = key[order][first, 1]
    return out


class TextStage:
    name = "stage2"

    def __init__(self, ctx: RoundContext) -> None:
        self.ctx = ctx
        s = ctx.cfg.stage2
        self.epochs, self.warmup_epochs = s.epochs, s.warmup_epochs
        self.learner: PromptLearner | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def prepare(self, reporter: Reporter, resume: dict[str, Any] | None) -> None:
        """Freeze the image encoder, compute features once, fix this round's clusters."""
        ctx, s = self.ctx, self.ctx.cfg.stage2
        ctx.model.set_image_trainable(False)
        fs = ctx.extract(reporter.child(0.0, 0.7), "stage2")
        if resume and "ids" in resume:  # the classes the saved prompts were learned for
            ids, labels = resume["ids"].numpy(), resume["labels"].numpy()
            fs = fs.subset(ids)
            labels = labels[rows_of(ids, fs.ids)]
            metrics = {}
        else:
            labels, metrics = ctx.cluster_per_group(fs, reporter.child(0.7, 1.0))
        self.fs, self.labels, self.cluster_metrics = fs, labels, metrics
        self.num_classes = int(labels.max()) + 1 if (labels >= 0).any() else 0
        rows = ctx.rows(fs)
        scen_idx = ctx.model.scenario_index(list(ctx.images.scenario[rows])).numpy()
        self.cluster_scenario = majority_per_cluster(labels, scen_idx, self.num_classes)  # per group: one each
        site_names, site_idx = np.unique(ctx.image_sites()[rows].astype(str), return_inverse=True)
        self.cluster_site = majority_per_cluster(labels, site_idx, self.num_classes)
        self.cluster_metrics = {**metrics, "n_sites": float(len(np.unique(self.cluster_site)))}
        self.learner = PromptLearner(ctx.model, max(self.num_classes, 1), n_ctx=ctx.cfg.model.n_ctx).to(ctx.device)
        self.optimizer = torch.optim.Adam(self.learner.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        self.img = torch.as_tensor(fs.proj, device=ctx.device)
        self.lab = torch.as_tensor(labels, device=ctx.device)
        self.site = torch.as_tensor(self.cluster_site, device=ctx.device)
        if resume and "learner" in resume:
            self.learner.load_state_dict(resume["learner"])

    def begin_epoch(self, epoch: int, reporter: Reporter) -> EpochPlan:
        s = self.ctx.cfg.stage2
        rows = np.flatnonzero(self.labels >= 0)
        rng = np.random.default_rng(epoch_seed(self.ctx.cfg.seed, self.ctx.round_no, self.name, epoch))
        rows = rows[rng.permutation(len(rows))]
        batches = [rows[i : i + s.batch_size] for i in range(0, len(rows), s.batch_size)]
        batches = [b for b in batches if len(b) > 1]
        d = self.ctx.dist
        if d.enabled:  # each rank its share; equal counts so the gradient all-reduces pair up
            per = len(batches) // d.world
            batches = batches[d.rank :: d.world][:per]
        return EpochPlan(batches, len(batches), dict(self.cluster_metrics))

    def losses(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        s = self.ctx.cfg.stage2
        dev = self.ctx.device
        # One pass of the text transformer per distinct cluster in the batch (labels repeat);
        # found on the host from the NumPy labels, so no device sync.
        uniq, inv = np.unique(self.labels[rows], return_inverse=True)
        idx = torch.as_tensor(rows, device=dev)
        img, lab = self.img[idx], self.lab[idx]
        uniq_t = torch.as_tensor(uniq, device=dev)
        txt_u = self.learner(uniq_t)
        txt = txt_u[torch.as_tensor(inv.reshape(-1), device=dev)]
        scale = logit_scale(self.ctx.model)
        terms = {
            "i2t": supcon_i2t(img, txt, lab, scale),
            "t2i": supcon_t2i(img, txt, lab, scale),
        }
        if s.separation:  # over the batch's distinct clusters, between sites only
            terms["separation"] = s.separation_weight * multi_scenario_separation_loss(
                txt_u, self.site[uniq_t], margin=s.separation_margin
            )
        return terms

    def after_backward(self) -> None:
        self.ctx.dist.all_reduce_mean_grads(self.learner.parameters())

    def after_step(self) -> None:
        pass

    def end_epoch(self, epoch: int, reporter: Reporter) -> dict[str, float]:
        if epoch == self.epochs - 1:
            self.publish()
        return {}

    def publish(self) -> None:
        """Hand the offline text representations to Stage III: at the last epoch, so that epoch's
        saved progress carries them; with zero epochs configured, the initial prompts when the
        trainer asks after the (empty) run."""
        if self.name in self.ctx.outputs:
            return  # handed over at the last epoch
        with torch.no_grad():
            text = self.learner.all_features().float().cpu().numpy() if self.num_classes else np.zeros((0, 1), np.float32)
        self.ctx.outputs["stage2"] = {
            "ids": self.fs.ids.copy(),
            "labels": self.labels.copy(),
            "text": text,
            "cluster_scenario": self.cluster_scenario.copy(),
            "cluster_site": self.cluster_site.copy(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "ids": torch.as_tensor(self.fs.ids),
            "labels": torch.as_tensor(self.labels),
            "learner": self.learner.state_dict(),
        }
