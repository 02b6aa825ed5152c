"""Stage III in a round: IHM pairs reach the batches, the "no DRU" ablation keeps CHM, CHM
precision is logged, and the round stores its final (cross-group) pseudo-labels."""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from itkm_engine.config import preset
from itkm_engine.data.loading import PKSampler
from itkm_engine.losses.instance import pairs_in_batch
from itkm_engine.trainer import train
from itkm_engine.workspace import Workspace


def _batches(sampler):
    items = [i for i, _ in sampler]
    bs = sampler.batch_size
    return [np.array(items[s : s + bs]) for s in range(0, len(items), bs)]


def _planted_pairs(seed=0, n_clusters=40, per=4, paired=0.3):
    """Cross-group labels of 40 clusters x 4 and IHM pairs that cross label boundaries (as IHM's
    do: an infrared and a visible image of one person sit in two different clusters)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_clusters), per)
    n = len(labels)
    a = rng.choice(n, size=int(paired * n), replace=False)
    b = (a + per * rng.integers(1, n_clusters, size=len(a))) % n  # always another cluster
    return labels, np.stack([a, b], axis=1)


def test_pair_aware_pk_batches_hold_both_ends_of_ihm_pairs():
    labels, pairs = _planted_pairs()
    plain = PKSampler(labels, 4, 4, 50, seed=0)
    aware = PKSampler(labels, 4, 4, 50, seed=0, pairs=pairs)
    used_plain = [len(pairs_in_batch(pairs, b)) for b in _batches(plain)]
    used_aware = [len(pairs_in_batch(pairs, b)) for b in _batches(aware)]
    # Plain PK batches rarely hold both ends of a pair; pair-aware ones almost always do.
    assert np.mean(np.array(used_plain) > 0) < 0.5
    assert np.mean(np.array(used_aware) > 0) >= 0.9
    assert sum(used_aware) > 4 * sum(used_plain)
    # Batches keep their size, and every sampled item still has a label (partners included).
    assert all(len(b) == aware.batch_size for b in _batches(aware))
    assert all((labels[b] >= 0).all() for b in _batches(aware))
    # Deterministic per seed.
    assert [b.tolist() for b in _batches(aware)] == [b.tolist() for b in _batches(PKSampler(labels, 4, 4, 50, seed=0, pairs=pairs))]


def test_partner_centroid_loss_pulls_toward_the_partners_centroid():
    from itkm_engine.losses.instance import partner_centroid_loss

    g = torch.Generator().manual_seed(0)
    centroids = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    feats = F.normalize(torch.randn(6, 8, generator=g), dim=1).requires_grad_(True)
    partner = torch.tensor([3, -1, 0, -1, -1, 2])
    loss = partner_centroid_loss(feats @ centroids.t() / 0.05, partner)
    expect = F.cross_entropy((feats @ centroids.t() / 0.05)[[0, 2, 5]], partner[[0, 2, 5]])
    assert torch.allclose(loss, expect)
    loss.backward()
    assert feats.grad[[1, 3, 4]].abs().sum() == 0  # no partner, no pull
    none = partner_centroid_loss(feats @ centroids.t(), torch.full((6,), -1))
    assert none.item() == 0.0 and none.requires_grad


def _tiny(**stage3):
    cfg = preset("tiny")
    cfg.stage2.epochs = 1
    for k, v in stage3.items():
        setattr(cfg.stage3, k, v)
    return cfg


def test_no_dru_ablation_keeps_chm_on_the_current_clusters(fresh_ws, monkeypatch):
    """stage3.dru = false: CHM must see one text feature per *current* cluster, the mean of its
    members' offline (Stage II) text -- not Stage II's rows indexed by today's cluster ids."""
    import itkm_engine.stages.heterogeneous as het
    from itkm_engine.stages.context import RoundContext

    seen = {"labels": None, "offline": None, "calls": []}
    real_cluster, real_offline, real_match = RoundContext.cluster_per_group, het.instance_offline_text, het.match_scenario

    def cluster(self, fs, reporter):
        labels, metrics = real_cluster(self, fs, reporter)
        if "stage2" in self.outputs:  # Stage III: DBSCAN numbers its clusters anew every epoch
            labels = np.where(labels >= 0, labels.max() - labels, -1)
        seen["labels"] = labels.copy()
        return labels, metrics

    def offline(*a, **kw):
        out = real_offline(*a, **kw)
        seen["offline"] = torch.as_tensor(out).clone()
        return out

    def match(feats, labels, sides, cluster_text=None, **kw):
        seen["calls"].append((seen["labels"], seen["offline"], np.asarray(labels).copy(), torch.as_tensor(cluster_text).clone()))
        return real_match(feats, labels, sides, cluster_text, **kw)

    monkeypatch.setattr(RoundContext, "cluster_per_group", cluster)
    monkeypatch.setattr(het, "instance_offline_text", offline)
    monkeypatch.setattr(het, "match_scenario", match)
    with Workspace.open(fresh_ws) as ws:
        train(ws, _tiny(dru=False), rounds=1)
    assert seen["calls"], "CHM was switched off by the no-DRU ablation"
    for all_labels, off, labels_m, text in seen["calls"]:
        for c in np.unique(labels_m[labels_m >= 0]):
            expect = F.normalize(off[all_labels == c].mean(0), dim=0)
            assert torch.allclose(text[c], expect, atol=1e-5), f"cluster {c}: wrong text row"


def test_round_logs_ihm_use_and_chm_precision_and_stores_final_labels(fresh_ws):
    cfg = _tiny(chm_threshold=-1.0, chm_margin=0.0, chm_mutual=False)  # accept every Hungarian pair
    with Workspace.open(fresh_ws) as ws:
        train(ws, cfg, rounds=1)
        s3 = [e["values"] for e in ws.epoch_log(1) if e["stage"] == "stage3"][-1]
        assert s3["chm_pairs"] >= 1
        assert 0.0 <= s3["chm_precision"] <= 1.0  # person ids exist in the demo
        assert "ihm_pairs_used" in s3 and "ihm_batch_share" in s3
        if s3["ihm_pairs"] > 0:
            assert s3["ihm_pairs_used"] > 0
        # The round's stored pseudo-labels are Stage III's final cross-group labels: matched
        # clusters share one label, so there are fewer labels than homogeneous clusters.
        ids, labels = ws.assignments(1)
        final = np.load(ws.round_dir(1) / "final_labels.npz")
        assert np.array_equal(ids, final["ids"]) and np.array_equal(labels, final["cross"])
        n_homog = len(np.unique(final["labels"][final["labels"] >= 0]))
        assert len(np.unique(labels[labels >= 0])) == n_homog - int(s3["chm_pairs"])


def test_an_epoch_is_one_pass_over_the_labelled_images_when_iters_is_zero():
    """iters_per_epoch 0 (the quick preset): one pass over the pseudo-labelled images, so a
    bigger camera set trains proportionally more; a positive value stays a fixed count."""
    from types import SimpleNamespace

    from itkm_engine.config import preset
    from itkm_engine.stages.context import RoundContext

    ctx = SimpleNamespace(cfg=preset("quick"))  # PK 16 x 4 = 64 images per batch
    per_epoch = lambda iters, labels: RoundContext.batches_per_epoch(ctx, iters, labels)  # noqa: E731
    labels = np.r_[np.arange(640) % 80, -np.ones(360, np.int64)]  # 640 labelled, 360 outliers
    assert per_epoch(0, labels) == 10
    assert per_epoch(0, np.r_[labels, np.zeros(10, np.int64)]) == 11  # a partial batch counts
    assert per_epoch(0, -np.ones(5, np.int64)) == 1
    assert per_epoch(7, labels) == 7
