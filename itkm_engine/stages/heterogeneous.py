"""Stage III -- heterogeneous matching with dynamic text.

Every epoch: fresh features and per-group pseudo-labels (as Stage I), then

* **DRU** (matching/text_update.py): each new cluster's text anchor is the mean of its members'
  offline (Stage II) text features, blended with momentum into the previous epoch's anchor, so
  text anchors follow the improving image encoder;
* **CHM** (matching/cluster_matching.py): per scenario, the clusters of side A and side B (the two
  groups, or two camera sets in a one-group scenario) are paired by Hungarian assignment on a mix
  of image-centroid and text cosine; matched clusters share one cross-group label;
* **IHM** (matching/instance_matching.py): cross-side instance pairs that are mutual top-k in both
  image space and text space (softmax over cluster text features) are reliable positives.

Batches are PK-sampled over cross-group labels, so both sides of a matched identity meet in a
batch, and pair-aware: each sampled instance with an IHM partner brings it along (IHM pairs cross
pseudo-label boundaries, so plain PK batches almost never hold both ends).  Loss = homogeneous
memory loss + cross-group memory loss + instance pair loss (in-batch pairs, plus a pull toward the
partner's cross-group centroid) + image-to-text cross-entropy against the (updated) text anchors,
each weighted and switchable in the config, plus the decision loss on the operator's pairs (which
the batches bring in, as in Stage I).  CHM and IHM run per scenario and, where a workspace has
several sites, per site: they never join people of two sites.  Logged per epoch beside the losses: ``chm_pairs``,
``chm_precision`` (where person ids exist), ``ihm_pairs``, ``ihm_pairs_used`` (pairs with both
ends in a batch, summed over the epoch) and ``ihm_batch_share`` (batches holding one or more).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..constraints import enforce_cross_labels, instance_pairs
from ..vocabulary import TWO_GROUP
from ..distributed import image_forward
from ..losses.image_text import i2t_cross_entropy
from ..losses.instance import instance_pair_loss, pairs_in_batch, partner_centroid_loss
from ..matching.cluster_matching import match_precision, match_scenario, sides_by_camera
from ..matching.instance_matching import mutual_topk_pairs, text_space
from ..matching.text_update import instance_offline_text, update_text_features
from ..memory import ClusterMemory
from ..progress import Reporter
from ..records import rows_of
from .context import RoundContext, image_optimizer
from .homogeneous import DecisionTerm, GroupMemories
from .loop import EpochPlan, epoch_seed
from .text import logit_scale


class HeterogeneousStage:
    name = "stage3"

    def __init__(self, ctx: RoundContext) -> None:
        self.ctx = ctx
        s = ctx.cfg.stage3
        self.epochs, self.warmup_epochs = s.epochs, s.warmup_epochs
        ctx.model.set_image_trainable(True)
        self.optimizer = image_optimizer(ctx.model, s.lr, ctx.cfg.stage1.new_param_lr, s.weight_decay)
        self.forward = image_forward(ctx.model, ctx.dist)
        self.prev_text: np.ndarray | None = None  # DRU state: last epoch's anchors ...
        self.prev_ids: np.ndarray | None = None  # ... and the instances and labels they belonged to
        self.prev_labels: np.ndarray | None = None
        self.decided = None

    def prepare(self, reporter: Reporter, resume: dict[str, Any] | None) -> None:
        st2 = self.ctx.outputs.get("stage2")
        if st2 is None:
            raise RuntimeError("Stage III needs Stage II's text features")
        self.st2 = st2
        if resume and resume.get("prev_text") is not None:
            self.prev_text = resume["prev_text"].numpy()
            self.prev_ids = resume["prev_ids"].numpy()
            self.prev_labels = resume["prev_labels"].numpy()

    # -- per epoch ------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int, reporter: Reporter) -> EpochPlan:
        ctx, s = self.ctx, self.ctx.cfg.stage3
        fs = ctx.extract(reporter.child(0.0, 0.5), "stage3")
        labels, metrics = ctx.cluster_per_group(fs, reporter.child(0.5, 0.8))
        rows = ctx.rows(fs)
        self.fs, self.labels = fs, labels
        self.cross = np.full(len(fs), -1, dtype=np.int64)
        self.ihm_used = {"pairs": 0, "batches_with": 0, "batches": 0}
        if not (labels >= 0).any():
            reporter.warning("no clusters found this epoch (all images are outliers); skipping its training steps")
            return EpochPlan([], 0, metrics)

        # Offline text of each instance: the Stage II text feature of its Stage II cluster.
        st2_rows = rows_of(self.st2["ids"], fs.ids)
        st2_labels = np.where(st2_rows >= 0, self.st2["labels"][np.maximum(st2_rows, 0)], -1)
        offline = instance_offline_text(st2_labels, self.st2["text"], image_embeds=fs.proj)

        # Text of each current cluster (CHM's text term): with DRU the momentum-blended anchors;
        # without, the plain mean of its members' offline text (no memory of earlier epochs).
        # The i2t anchors: DRU's, or (switched off) the static Stage II ones with Stage II labels.
        prev_text, prev_labels = None, None
        if s.dru and self.prev_text is not None:
            prev_rows = rows_of(self.prev_ids, fs.ids)
            prev_labels = np.where(prev_rows >= 0, self.prev_labels[np.maximum(prev_rows, 0)], -1)
            prev_text = torch.as_tensor(self.prev_text)
        cluster_text = update_text_features(prev_text, prev_labels, labels, offline, momentum=s.dru_momentum)
        cluster_text = F.normalize(torch.as_tensor(cluster_text).float(), dim=1).numpy()
        if s.dru:
            self.prev_text, self.prev_ids, self.prev_labels = cluster_text, fs.ids.copy(), labels.copy()
            text, self.i2t_labels = cluster_text, labels
        else:
            text, self.i2t_labels = self.st2["text"], st2_labels
        self.text = text

        # CHM per scenario -> cross-group labels; IHM -> reliable instance pairs.
        # Per scenario, and per site where there are several: people are never shared between
        # sites, so neither CHM nor IHM may join two (Stage I's clusters are per site already).
        scen = np.asarray(ctx.images.scenario[rows])
        grp = np.asarray(ctx.images.group[rows])
        cams = np.asarray(ctx.images.camera[rows])
        pid = np.asarray(ctx.images.person_id)[rows]
        sites = ctx.image_sites()[rows]
        part = scen if len(set(sites)) < 2 else np.array([f"{a}@{b}" for a, b in zip(scen, sites)], dtype=object)
        cross = np.full(len(fs), -1, dtype=np.int64)
        offset, chm_pairs, pairs, chm_right, chm_judged = 0, 0, [], 0.0, 0
        for unit in sorted(set(part)):
            reporter.check()
            m = np.flatnonzero(part == unit)
            sc = scen[m[0]]
            if sc in TWO_GROUP:
                a_name, _ = TWO_GROUP[sc]
                sides = np.where(grp[m] == a_name, 0, 1)
                sides = np.where(labels[m] >= 0, sides, -1)
            else:
                sides = sides_by_camera(labels[m], cams[m], shuffle_seed=epoch_seed(ctx.cfg.seed, ctx.round_no, unit, epoch))
            if s.chm:
                res = match_scenario(
                    fs.feats[m], labels[m], sides, torch.as_tensor(cluster_text),
                    text_weight=s.chm_text_weight, threshold=s.chm_threshold, offset=offset,
                    mutual=s.chm_mutual, margin=s.chm_margin,
                )
                cross[m], n_cross = enforce_cross_labels(res.labels, offset, fs.ids[m], ctx.constraints, fs.feats[m])
                offset += n_cross
                chm_pairs += len(res.matches)
                if ctx.has_ids and res.matches:
                    prec = match_precision(res.matches, labels[m], pid[m])
                    if prec is not None:
                        n_judged = len(res.matches)  # weight each scenario by its kept pairs
                        chm_right += prec * n_judged
                        chm_judged += n_judged
            else:  # no CHM: the cross-group memory degenerates to the homogeneous clusters
                lab = labels[m]
                u, inv = np.unique(lab[lab >= 0], return_inverse=True)
                cross[m[lab >= 0]] = inv + offset
                offset += len(u)
            if s.ihm:
                inst_sides = _instance_sides(sc, grp[m], cams[m], sides, labels[m])
                a, b = m[inst_sides == 0], m[inst_sides == 1]
                if len(a) and len(b) and len(text):
                    tt = torch.as_tensor(text)
                    ta = text_space(torch.as_tensor(fs.proj[a]), tt, s.ihm_temperature)
                    tb = text_space(torch.as_tensor(fs.proj[b]), tt, s.ihm_temperature)
                    p = mutual_topk_pairs(torch.as_tensor(fs.feats[a]), torch.as_tensor(fs.feats[b]), ta, tb, k=s.ihm_k)
                    if len(p):
                        pairs.append(np.stack([a[p[:, 0]], b[p[:, 1]]], axis=1))
        self.cross = cross
        self.pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
        self.pairs = instance_pairs(self.pairs, fs.ids, ctx.group_keys[rows], ctx.constraints)  # operator's pairs
        if len(self.pairs) and part is not scen:  # a confirm across sites (recorded before they were refused)
            self.pairs = self.pairs[sites[self.pairs[:, 0]] == sites[self.pairs[:, 1]]]
        metrics.update({"chm_pairs": float(chm_pairs), "ihm_pairs": float(len(self.pairs))})
        if chm_judged:
            metrics["chm_precision"] = chm_right / chm_judged
        if self.ctx.has_ids and len(self.pairs):
            known = (pid[self.pairs[:, 0]] >= 0) & (pid[self.pairs[:, 1]] >= 0)
            if known.any():
                metrics["ihm_precision"] = float((pid[self.pairs[known, 0]] == pid[self.pairs[known, 1]]).mean())

        # Memories: per group (homogeneous) and over cross-group labels.
        dev = ctx.device
        keys = ctx.group_keys[rows]
        self.memories = GroupMemories(fs.feats, labels, keys, temperature=ctx.cfg.stage1.temperature,
                                      momentum=ctx.cfg.stage1.memory_momentum, device=dev)
        self.cross_memory = ClusterMemory(fs.feats.shape[1], max(offset, 1), temperature=ctx.cfg.stage1.temperature,
                                          momentum=ctx.cfg.stage1.memory_momentum).to(dev)
        keep = cross >= 0
        self.cross_memory.init_from(torch.as_tensor(fs.feats[keep], device=dev), torch.as_tensor(cross[keep], device=dev))
        self.labels_t = torch.as_tensor(labels, device=dev)
        self.i2t_t = torch.as_tensor(self.i2t_labels, device=dev)
        self.text_t = torch.as_tensor(text, device=dev).float()
        self.pairs_t = torch.as_tensor(self.pairs)
        self.partner_t = torch.as_tensor(_partner_labels(self.pairs, cross), device=dev)
        seed = epoch_seed(ctx.cfg.seed, ctx.round_no, self.name, epoch)
        pk_pairs = self.pairs if (s.ihm and s.ihm_pair_sampling) else None
        steps = ctx.batches_per_epoch(s.iters_per_epoch, cross)
        self.decided = DecisionTerm.of(ctx, fs)
        if self.decided is not None:
            metrics.update(self.decided.rows.metrics())
        loader = ctx.pk_loader(fs, cross, batches=steps, seed=seed, pairs=pk_pairs,
                               decided=self.decided.rows if self.decided is not None else None)
        return EpochPlan(loader, steps, metrics)

    def losses(self, batch) -> dict[str, torch.Tensor]:
        ctx, s = self.ctx, self.ctx.cfg.stage3
        if len(batch.failed):
            ctx.failed_ids.update(int(self.fs.ids[i]) for i in batch.failed)
        if not len(batch):
            return {}
        b = batch.to(ctx.device, non_blocking=True)
        out = self.forward(b.images, b.scenario_idx, b.group_idx, b.prefix)
        feats = ctx.model.retrieval_feature(out).float()
        homog = self.labels_t[b.index]
        terms = {
            "homogeneous": s.weight_homogeneous * self.memories.loss(feats, homog),
            "cross": s.weight_cross * self.cross_memory.loss(feats, b.labels),
        }
        self._step = (feats.detach(), homog, b.labels)
        if s.ihm:
            local = pairs_in_batch(self.pairs_t, batch.index)
            self.ihm_used["pairs"] += len(local)
            self.ihm_used["batches_with"] += int(len(local) > 0)
            self.ihm_used["batches"] += 1
            terms["instance"] = s.weight_instance * instance_pair_loss(
                feats, local.to(ctx.device), s.ihm_temperature, labels=b.labels)
            if s.ihm_centroid_pull:
                terms["instance_centroid"] = s.weight_instance * partner_centroid_loss(
                    self.cross_memory.logits(feats), self.partner_t[b.index])
        if self.decided is not None:
            terms["decision"] = self.decided.loss(feats, b.index)
        if s.weight_i2t > 0 and len(self.text_t):
            proj = F.normalize(out.proj.float(), dim=-1)
            lab = self.i2t_t[b.index]
            lab = torch.where(lab < len(self.text_t), lab, torch.full_like(lab, -1))
            terms["i2t"] = s.weight_i2t * i2t_cross_entropy(proj, self.text_t, lab, logit_scale(ctx.model))
        return terms

    def after_backward(self) -> None:
        pass  # the model's gradients are DDP's; the memories are not trained by gradients

    def after_step(self) -> None:
        gather = self.ctx.dist.gather_rows
        feats, homog, cross = (gather(t) for t in self._step)
        self.memories.update(feats, homog)
        self.cross_memory.update(feats, cross)

    def end_epoch(self, epoch: int, reporter: Reporter) -> dict[str, float]:
        if epoch == self.epochs - 1:
            # The round's final pseudo-labels: homogeneous (per group) and cross-group (CHM-merged).
            self.ctx.outputs["stage3"] = {"ids": self.fs.ids.copy(), "labels": self.labels.copy(),
                                          "cross": self.cross.copy(), "text": self.text}
        used = self.ihm_used
        if not used["batches"]:
            return {}
        return {"ihm_pairs_used": float(used["pairs"]), "ihm_batch_share": used["batches_with"] / used["batches"]}

    def publish(self) -> None:
        pass  # the round's final labels are handed over at the last epoch (end_epoch)

    def state_dict(self) -> dict[str, Any]:
        if self.prev_text is None:
            return {}
        return {
            "prev_text": torch.as_tensor(self.prev_text),
            "prev_ids": torch.as_tensor(self.prev_ids),
            "prev_labels": torch.as_tensor(self.prev_labels),
        }


def _partner_labels(pairs: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """Per instance: the cross-group label of its first IHM partner that sits in another cluster
    (``-1``: none), the target of :func:`partner_centroid_loss`."""
    out = np.full(len(cross), -1, dtype=np.int64)
    if not len(pairs):
        return out
    both = np.concatenate([pairs, pairs[:, ::-1]])
    la, lb = cross[both[:, 0]], cross[both[:, 1]]
    both = both[(la >= 0) & (lb >= 0) & (la != lb)]
    both = both[np.lexsort((both[:, 1], both[:, 0]))]
    heads, first = np.unique(both[:, 0], return_index=True)
    out[heads] = cross[both[first, 1]]
    return out


def _instance_sides(scenario, groups, cameras, cluster_sides, labels) -> np.ndarray:
    """Side of every instance (outliers included) for IHM: the group in a two-group scenario,
    else the side its camera was dealt to by CHM's camera split."""
    if scenario in TWO_GROUP:
        return np.where(groups == TWO_GROUP[scenario][0], 0, 1)
    cam_side: dict[str, int] = {}
    for cam, side in zip(cameras[labels >= 0], cluster_sides[labels >= 0]):
        cam_side.setdefault(cam, int(side))
    return np.array([cam_side.get(c, -1) for c in cameras], dtype=np.int64)
