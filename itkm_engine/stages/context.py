"""What the three stages share within one round: the model, the images, and the per-group
pseudo-labelling that Stage I and Stage III both redo every epoch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..camera_norm import camera_centred
from ..clustering import pseudo_labels
from ..config import Config
from ..constraints import Constraints, decided_pairs, enforce_on_labels
from ..data.loading import Augment, CropDataset, CropTransform, PKSampler, make_loader
from ..data.stem_cache import StemCache
from ..vocabulary import DEFAULT_SITE, group_key
from ..distributed import SINGLE, DistContext
from ..features import FeatureSet, extract_features
from ..metrics import pseudo_label_quality
from ..progress import Reporter
from ..records import rows_of


@dataclass
class DecidedRows:
    """The operator's decisions over the rows of one epoch's features: the must-link component
    of each row in the decisions' closure (``-1``: undecided), the components that must stay
    apart (``bool [K, K]``), and the decided pairs (rows) the batches bring together."""

    comp: np.ndarray
    ban: np.ndarray
    pairs: np.ndarray
    n_must: int
    n_cannot: int

    def metrics(self) -> dict[str, float]:
        return {"decided_pairs": float(len(self.pairs)), "decided_images": float((self.comp >= 0).sum())}


@dataclass
class RoundContext:
    cfg: Config
    model: Any  # itkm_engine.model.backbone.ITKMModel
    images: Any  # itkm_engine.records.ImageTable (status ok only)
    device: torch.device
    round_no: int
    base_features: FeatureSet | None = None  # features of the round's starting checkpoint (cached on disk)
    dist: DistContext = SINGLE  # torchrun process group (single process: no-ops)
    failed_ids: set[int] = field(default_factory=set)  # images found unreadable during the round
    outputs: dict[str, Any] = field(default_factory=dict)  # stage outputs handed to later stages
    constraints: Constraints = field(default_factory=Constraints.empty)  # the operator's decisions
    camera_sites: dict[str, str] = field(default_factory=dict)  # camera -> site (Workspace.camera_sites)
    timing: dict[str, float] = field(default_factory=dict)  # seconds per part of the round (trainer.py)
    elapsed_s: Any = lambda: 0.0  # the round's active seconds so far, earlier runs included
    stem: StemCache | None = None  # the frozen stem's maps of the round's crops (stem_cache(); None: none)

    # -- images -----------------------------------------------------------------------------
    @property
    def group_keys(self) -> np.ndarray:
        return np.array([group_key(s, g) for s, g in zip(self.images.scenario, self.images.group)], dtype=object)

    def image_sites(self) -> np.ndarray:
        """Site of every image (its camera's source's site; the default site when unknown)."""

        return np.array([self.camera_sites.get(c, DEFAULT_SITE) for c in self.images.camera], dtype=object)

    def cluster_keys(self, rows: np.ndarray) -> np.ndarray:
        """What pseudo-labels are computed per: the group key, and the site where a workspace has
        several (people are never shared between sites, so no cluster may span two)."""
        keys = self.group_keys[rows]
        sites = self.image_sites()[rows]
        if len(set(sites)) > 1:
            keys = np.array([f"{k}@{s}" for k, s in zip(keys, sites)], dtype=object)
        return keys

    def decided(self, fs: FeatureSet) -> DecidedRows | None:
        """The decisions over the rows of ``fs`` (None when the workspace has none)."""
        if not len(self.constraints):
            return None
        cl = self.constraints.closure
        comp = cl.component_of(fs.ids)
        must, cannot = decided_pairs(fs.ids, self.constraints)
        return DecidedRows(comp, cl.ban_matrix(), np.concatenate([must, cannot]).reshape(-1, 2), len(must),
                           len(cannot))

    @property
    def has_ids(self) -> bool:
        return bool((np.asarray(self.images.person_id) >= 0).sum() > 1)

    def augment(self) -> Augment:
        d = self.cfg.data
        return Augment(d.flip, d.pad, d.random_erasing, d.grayscale)

    def stem_cache(self, reporter: Reporter | None = None, stage: str = "") -> StemCache | None:
        """The round's :class:`StemCache`, built at the first call (a tower without a frozen
        prefix has none; nor has a round with ``data.fixed_views`` and ``data.stem_cache_mb`` both
        0, which reads pixels every time as before the cache)."""
        d = self.cfg.data
        if self._stem_pending():
            self.stem = StemCache(
                self.model, self.images, image_size=self.cfg.model.image_size, augment=self.augment(),
                views=d.fixed_views, seed=(self.cfg.seed, self.round_no),
                budget_mb=d.stem_cache_mb, device=self.device, batch_size=d.extract_batch_size, workers=d.workers,
            ).build(reporter, stage)
        return self.stem

    def _stem_pending(self) -> bool:
        d = self.cfg.data
        return self.stem is None and self.model.has_frozen_prefix and (d.fixed_views > 0 or d.stem_cache_mb > 0)

    def extract(self, reporter: Reporter, stage: str) -> FeatureSet:
        """Features of every image with the model as it is now (the first call of a round may
        use the round's cached base features)."""
        if self._stem_pending():  # the round's first extraction builds the stem cache first
            self.stem_cache(reporter.child(0.0, 0.5), stage)
            reporter = reporter.child(0.5, 1.0)
        stem = self.stem
        if self.base_features is not None:
            fs, self.base_features = self.base_features, None
        else:
            fs = extract_features(
                self.model,
                self.images,
                cache_dir=None,
                key="in-training",
                device=self.device,
                batch_size=self.cfg.data.extract_batch_size,
                workers=self.cfg.data.workers,
                amp=self.cfg.amp,
                reporter=reporter,
                stage="extract",  # a sub-step: the stage is the event's part (Reporter.child(part=...))
                dist=self.dist,
                stem=stem,
            )
        if fs.failed is not None and len(fs.failed):
            self.failed_ids.update(int(i) for i in fs.failed)
            reporter.warning(f"{len(fs.failed)} images could not be read and are skipped")
        return fs

    def rows(self, fs: FeatureSet) -> np.ndarray:
        """Row in ``self.images`` of each row of ``fs`` (whose images are all the round's)."""
        return rows_of(self.images.id, fs.ids)

    # -- pseudo-labels ------------------------------------------------------------------------
    def cluster_per_group(self, fs: FeatureSet, reporter: Reporter) -> tuple[np.ndarray, dict[str, float]]:
        """Pseudo-labels for every row of ``fs``: clustered per group, ids offset so they are
        global; -1 for outliers.  Also the epoch's cluster metrics."""
        c = self.cfg.cluster
        keys = self.cluster_keys(self.rows(fs))
        cams = np.asarray(self.images.camera)[self.rows(fs)]
        labels = np.full(len(fs), -1, dtype=np.int64)
        offset = 0
        uniq = sorted(set(keys))
        for gi, key in enumerate(uniq):
            reporter.check()
            mask = np.flatnonzero(keys == key)
            feats = camera_centred(fs.feats[mask], cams[mask]) if c.camera_centre else fs.feats[mask]
            lab = pseudo_labels(
                np.ascontiguousarray(feats),
                k1=c.k1,
                k2=c.k2,
                eps=c.eps,
                min_samples=c.min_samples,
                reporter=reporter.child(gi / len(uniq), (gi + 1) / len(uniq)),
            )
            lab = enforce_on_labels(lab, fs.ids[mask], self.constraints, feats=fs.feats[mask])  # operator's links
            good = lab >= 0
            labels[mask[good]] = lab[good] + offset
            offset += int(lab.max()) + 1 if good.any() else 0
        metrics: dict[str, float] = {
            "n_clusters": float(len(np.unique(labels[labels >= 0]))),
            "n_outliers": float((labels < 0).sum()),
        }
        if self.has_ids:
            pid = np.asarray(self.images.person_id)[self.rows(fs)]
            q = pseudo_label_quality(labels, pid)
            metrics.update({k: float(q[k]) for k in ("precision", "recall", "fscore", "ari")})
            metrics.update(group_label_quality(labels, pid, keys))
        return labels, metrics

    # -- loaders ------------------------------------------------------------------------------
    def batches_per_epoch(self, iters: int, labels: np.ndarray) -> int:
        """PK batches of an epoch: ``iters`` when > 0, else one pass over the images that carry a
        pseudo-label (so an epoch means the same on 1,000 crops and on 100,000)."""
        if iters > 0:
            return int(iters)
        d = self.cfg.data
        return max(1, -(-int((np.asarray(labels) >= 0).sum()) // (d.num_identities * d.num_instances)))

    def pk_loader(self, fs: FeatureSet, labels: np.ndarray, *, batches: int, seed: int,
                  pairs: np.ndarray | None = None, decided: DecidedRows | None = None):
        """Augmented PK batches over the rows of ``fs`` that carry a label >= 0 (pair-aware with
        ``pairs``, rows of ``fs``; with ``decided``, the operator's pairs brought in, outliers
        included: see :class:`PKSampler`)."""
        d = self.cfg.data
        rows = self.rows(fs)
        ds = CropDataset(
            [self.images.path[r] for r in rows],
            self.model.scenario_index(list(self.images.scenario[rows])).numpy(),
            self.model.group_index(list(self.images.group[rows])).numpy(),
            CropTransform(self.cfg.model.image_size, self.augment()),
            labels=labels,
            seed=seed,
        )
        # Each rank draws its own batches (DDP averages their gradients).
        sampler = PKSampler(labels, d.num_identities, d.num_instances, batches, seed=seed + 7919 * self.dist.rank,
                            pairs=pairs, decided=None if decided is None else decided.pairs,
                            decided_share=self.cfg.decisions.batch_share)
        stem = self.stem_cache()
        if stem is not None and stem.views > 0:  # the fixed views' maps (data/stem_cache.py)
            return stem.training_batches(fs.ids, labels, sampler, seed)
        return make_loader(ds, batch_size=sampler.batch_size, sampler=sampler, workers=d.workers, device=self.device)


def group_label_quality(labels: np.ndarray, pid: np.ndarray, keys: np.ndarray) -> dict[str, float]:
    """Pseudo-label quality inside each group (where the clustering works), as
    ``"precision[<group key>]"``, ``"recall[...]"``, ``"ari[...]"``, ``"n_clusters[...]"``: the
    pooled numbers mix groups, and recall there can never count a person's pairs across groups."""
    out: dict[str, float] = {}
    for key in sorted(set(keys)):
        m = (keys == key) & (pid >= 0)
        if m.sum() < 2:
            continue
        q = pseudo_label_quality(labels[m], pid[m])
        out.update({f"{k}[{key}]": float(q[k]) for k in ("precision", "recall", "ari", "n_clusters")})
    return out


def image_optimizer(model, lr: float, new_lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam over the image encoder: pretrained weights at ``lr``, ITKM's new parts (scenario
    embedding, group stems) at ``new_lr``."""
    new = list(model.new_parameters())
    new_ids = {id(p) for p in new}
    old = [p for p in model.image_parameters() if id(p) not in new_ids and p.requires_grad]
    groups = [{"params": old, "lr": lr}]
    if new:
        groups.append({"params": [p for p in new if p.requires_grad], "lr": new_lr})
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
