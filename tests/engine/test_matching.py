"""Stage III matching: CHM (Hungarian), IHM (mutual top-k), DRU (momentum text update)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from itkm_engine.errors import ItkmError
from itkm_engine.matching import (
    ClusterMatch,
    cluster_centroids,
    cluster_correspondence,
    cluster_similarity,
    cross_group_labels,
    instance_offline_text,
    match_clusters,
    match_scenario,
    mutual_topk_pairs,
    sides_by_camera,
    text_space,
    update_text_features,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _norm(x):
    return F.normalize(x, dim=1)


# -- CHM -----------------------------------------------------------------------------------
def test_cluster_similarity_mixes_image_and_text_cosines():
    g = torch.Generator().manual_seed(0)
    ia, ib = torch.randn(3, 8, generator=g), torch.randn(4, 8, generator=g)
    ta, tb = torch.randn(3, 6, generator=g), torch.randn(4, 6, generator=g)
    sim = cluster_similarity(ia, ib, ta, tb, 0.3)
    expect = 0.7 * (_norm(ia) @ _norm(ib).t()) + 0.3 * (_norm(ta) @ _norm(tb).t())
    assert sim.shape == (3, 4) and sim.dtype == np.float64
    np.testing.assert_allclose(sim, expect.numpy(), atol=1e-6)
    np.testing.assert_allclose(cluster_similarity(ia, ib, None, None, 0.0), (_norm(ia) @ _norm(ib).t()).numpy(), atol=1e-6)
    with pytest.raises(ItkmError):
        cluster_similarity(ia, ib, None, None, 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_chm_recovers_a_planted_permutation_and_drops_a_decoy(device):
    g = torch.Generator().manual_seed(0)
    n, d, e = 12, 32, 16
    img_a = _norm(torch.randn(n, d, generator=g))
    txt_a = _norm(torch.randn(n, e, generator=g))
    perm = torch.randperm(n, generator=g)  # B row j is A row perm[j]
    img_b = img_a[perm] + 0.1 * torch.randn(n, d, generator=g)
    txt_b = txt_a[perm] + 0.1 * torch.randn(n, e, generator=g)
    # Decoys: one extra cluster per side, unrelated to everything (rectangular on purpose).
    img_a = torch.cat([img_a, torch.randn(1, d, generator=g)])
    txt_a = torch.cat([txt_a, torch.randn(1, e, generator=g)])
    img_b = torch.cat([img_b, torch.randn(2, d, generator=g)])
    txt_b = torch.cat([txt_b, torch.randn(2, e, generator=g)])
    args = [x.to(device) for x in (img_a, img_b, txt_a, txt_b)]
    matches = match_clusters(*args, text_weight=0.5, threshold=0.5)
    assert all(isinstance(m, ClusterMatch) for m in matches)
    got = {(m.a, m.b) for m in matches}
    expect = {(int(perm[j]), j) for j in range(n)}
    assert got == expect  # the decoys (rows n of A, n and n+1 of B) are gone
    assert all(m.similarity > 0.5 for m in matches)
    assert [m.a for m in matches] == sorted(m.a for m in matches)
    # Without a threshold the Hungarian pairs the decoy too, below 0.5.
    loose = match_clusters(*args, text_weight=0.5, threshold=-1.0)
    assert len(loose) == n + 1
    decoy = [m for m in loose if m.a == n]
    assert len(decoy) == 1 and decoy[0].similarity < 0.5
    assert match_clusters(img_a[:0], img_b, txt_a[:0], txt_b, 0.5, 0.0) == []


def test_cross_group_labels_numbering():
    labels_a = np.array([0, 0, 1, 2, -1, 2])
    labels_b = np.array([1, 0, 0, -1, 1])
    matches = [ClusterMatch(0, 1, 0.9), ClusterMatch(2, 0, 0.8)]
    cg = cross_group_labels(labels_a, labels_b, matches, offset=10)
    # matches -> 10, 11; unmatched A row 1 -> 12; B has no unmatched row.
    assert cg.a.tolist() == [10, 10, 12, 11, -1, 11]
    assert cg.b.tolist() == [10, 11, 11, -1, 10]
    assert cg.num_labels == 3 and cg.offset == 10
    # Global cluster ids via clusters_a / clusters_b.
    cg2 = cross_group_labels(
        np.array([7, 9, 9]), np.array([20, 21]), [(1, 0, 0.7)],
        clusters_a=np.array([7, 9]), clusters_b=np.array([20, 21]),
    )
    assert cg2.a.tolist() == [1, 0, 0]  # 9 matched -> 0; unmatched 7 -> 1
    assert cg2.b.tolist() == [0, 2]  # 20 matched -> 0; unmatched 21 -> 2
    assert cg2.num_labels == 3
    with pytest.raises(ItkmError):
        cross_group_labels(np.array([5]), np.array([0]), [], clusters_a=np.array([7]), clusters_b=np.array([0]))
    with pytest.raises(ItkmError):
        cross_group_labels(np.array([0, 1]), np.array([0]), [(0, 0, 1.0), (1, 0, 1.0)])


def test_sides_by_camera_majority_and_balance():
    #            cluster:  0  0  0  1  1  2  2  3  4  -1
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3, 4, -1])
    cameras = np.array(["c1", "c1", "c2", "c2", "c2", "c3", "c1", "c3", "c4", "c1"])
    sides = sides_by_camera(labels, cameras)
    # Majorities: 0->c1, 1->c2, 2->tie c1/c3 -> c1, 3->c3, 4->c4. Weights c1=2, c2=1, c3=1, c4=1.
    # Deal c1 (2) -> side 0; c2 -> side 1; c3 -> side 1 (load 1 < 2); c4 -> tie 2/2 -> side 0.
    assert sides.tolist() == [0, 0, 0, 1, 1, 0, 0, 1, 0, -1]
    assert sides_by_camera(np.array([0, 1, 1]), np.array([3, 3, 3])).tolist() == [0, 0, 0]
    shuffled = sides_by_camera(labels, cameras, shuffle_seed=5)
    assert set(shuffled[labels >= 0].tolist()) <= {0, 1}
    # A cluster never straddles sides.
    for c in range(5):
        assert len(set(shuffled[labels == c].tolist())) == 1


def test_match_scenario_end_to_end_on_planted_instances():
    g = torch.Generator().manual_seed(0)
    n_id, per, d, e = 6, 5, 24, 12
    ident = _norm(torch.randn(n_id, d, generator=g))
    text_id = _norm(torch.randn(n_id, e, generator=g))
    # Side A clusters have ids 0..5 (identity k), side B clusters ids 10..15 (identity 5-k).
    feats, labels, sides = [], [], []
    for k in range(n_id):
        feats.append(ident[k] + 0.2 * torch.randn(per, d, generator=g))
        labels += [k] * per
        sides += [0] * per
    for k in range(n_id):
        feats.append(ident[n_id - 1 - k] + 0.2 * torch.randn(per, d, generator=g))
        labels += [10 + k] * per
        sides += [1] * per
    feats = torch.cat(feats)
    labels = np.array(labels)
    sides = np.array(sides)
    labels[3] = -1  # an outlier stays one
    cluster_text = torch.zeros(16, e)
    cluster_text[:n_id] = text_id
    cluster_text[10:] = text_id.flip(0)
    res = match_scenario(feats, labels, sides, cluster_text, text_weight=0.5, threshold=0.5, offset=100)
    assert {(m.a, m.b) for m in res.matches} == {(k, 10 + n_id - 1 - k) for k in range(n_id)}
    assert res.num_labels == n_id
    assert res.labels[3] == -1
    for k in range(n_id):
        a_lab = set(res.labels[(labels == k)].tolist())
        b_lab = set(res.labels[(labels == 10 + n_id - 1 - k)].tolist())
        assert a_lab == b_lab and len(a_lab) == 1 and 100 <= a_lab.pop() < 100 + n_id
    # Sides must be per cluster.
    bad = sides.copy()
    bad[0] = 1
    with pytest.raises(ItkmError):
        match_scenario(feats, labels, bad, cluster_text)


def test_cluster_centroids_ids_and_means():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [5.0, 5.0]])
    ids, cen = cluster_centroids(f, np.array([4, 4, 1, -1]))
    assert ids.tolist() == [1, 4]
    assert torch.allclose(cen, torch.tensor([[1.0, 0.0], [math.sqrt(0.5), math.sqrt(0.5)]]), atol=1e-6)


# -- IHM -----------------------------------------------------------------------------------
def test_text_space_is_a_softmax_over_cluster_texts():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(7, 8, generator=g)
    text = torch.randn(4, 8, generator=g)
    p = text_space(feats, text, 0.1, chunk_size=3)
    expect = torch.softmax(_norm(feats) @ _norm(text).t() / 0.1, dim=1)
    assert p.shape == (7, 4)
    assert torch.allclose(p, expect, atol=1e-6)
    assert torch.allclose(p.sum(1), torch.ones(7), atol=1e-6)


def _planted_sides(n=150, d=32, c=64, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    img_a = _norm(torch.randn(n, d, generator=g))
    img_b = img_a + noise * torch.randn(n, d, generator=g)
    emb_a = _norm(torch.randn(n, 16, generator=g))
    emb_b = emb_a + noise * torch.randn(n, 16, generator=g)
    text = _norm(torch.randn(c, 16, generator=g))
    # A soft text space (many clusters, temperature 0.5) keeps instances distinguishable in it.
    return img_a, img_b, text_space(emb_a, text, 0.5), text_space(emb_b, text, 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_mutual_topk_finds_planted_pairs(device):
    img_a, img_b, txt_a, txt_b = (x.to(device) for x in _planted_sides())
    n = img_a.shape[0]
    exact = mutual_topk_pairs(img_a, img_b, txt_a, txt_b, k=1)
    assert exact.dtype == np.int64
    np.testing.assert_array_equal(exact, np.stack([np.arange(n), np.arange(n)], 1))
    pairs = mutual_topk_pairs(img_a, img_b, txt_a, txt_b, k=5)
    found = {tuple(p) for p in pairs.tolist()}
    assert {(i, i) for i in range(n)} <= found
    assert len(found) < 1.2 * n  # agreement of two spaces keeps accidental pairs rare


def test_mutual_topk_needs_agreement_of_both_spaces():
    img_a, img_b, txt_a, txt_b = _planted_sides(n=60)
    shift = torch.roll(torch.arange(60), 1)  # text says i <-> i+1, image says i <-> i
    pairs = mutual_topk_pairs(img_a, img_b, txt_a, txt_b[shift], k=1)
    assert pairs.shape == (0, 2)


def test_mutual_topk_chunking_is_identical_to_unchunked():
    g = torch.Generator().manual_seed(3)
    img_a, img_b = torch.randn(97, 16, generator=g), torch.randn(83, 16, generator=g)
    text = torch.randn(10, 8, generator=g)
    txt_a = text_space(torch.randn(97, 8, generator=g), text, 0.2)
    txt_b = text_space(torch.randn(83, 8, generator=g), text, 0.2)
    full = mutual_topk_pairs(img_a, img_b, txt_a, txt_b, k=10, chunk_size=4096)
    chunked = mutual_topk_pairs(img_a, img_b, txt_a, txt_b, k=10, chunk_size=25)
    assert len(full) > 0
    np.testing.assert_array_equal(full, chunked)
    # k larger than a side is clamped, empty sides give no pairs.
    assert mutual_topk_pairs(img_a[:3], img_b, txt_a[:3], txt_b, k=50).shape[1] == 2
    assert mutual_topk_pairs(img_a[:0], img_b, txt_a[:0], txt_b, k=5).shape == (0, 2)


# -- DRU -----------------------------------------------------------------------------------
def test_cluster_correspondence_majority_rule():
    prev = np.array([0, 0, 0, 1, 1, -1, -1, -1, 2, 3])
    new = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    # 0: all from prev 0 -> 0.  1: 2 of 3 from prev 1 -> 1.  2: previous outliers -> none.
    # 3: one from prev 2, one from prev 3 -> 1/2 is not a strict majority -> none.
    assert cluster_correspondence(prev, new).tolist() == [0, 1, -1, -1]


def test_dru_exact_momentum_numbers_on_a_hand_case():
    prev_text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    prev_labels = np.array([0, 0, 0, 1, 1, -1, -1, -1])
    new_labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    s2_labels = np.array([0, 0, 1, 1, 1, 1, 0, 1])
    s2_text = torch.tensor([[0.6, 0.8], [0.8, -0.6]])
    offline = instance_offline_text(s2_labels, s2_text)
    out = update_text_features(prev_text, prev_labels, new_labels, offline, momentum=0.9)
    assert out.shape == (3, 2)
    # Cluster 0 continues prev 0; offline mean = (2*[0.6,0.8] + [0.8,-0.6]) / 3 = [2/3, 1/3].
    # 0.9*[1,0] + 0.1*[2/3,1/3] = [0.966667, 0.033333] -> normalised.
    v0 = np.array([0.9 + 0.1 * 2 / 3, 0.1 / 3])
    # Cluster 1 (2 of 3 members were prev 1) continues prev 1; offline mean = [0.8,-0.6].
    v1 = np.array([0.1 * 0.8, 0.9 - 0.1 * 0.6])
    # Cluster 2 has no predecessor: plain mean of [0.6,0.8] and [0.8,-0.6] = [0.7, 0.1].
    v2 = np.array([0.7, 0.1])
    expect = np.stack([v / np.linalg.norm(v) for v in (v0, v1, v2)])
    np.testing.assert_allclose(out.numpy(), expect, atol=1e-6)
    np.testing.assert_allclose(out[0].numpy(), [0.999405, 0.034462], atol=1e-6)


def test_dru_without_previous_text_takes_the_plain_mean():
    offline = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    out = update_text_features(None, None, np.array([0, 0, 1, 1]), offline)
    # Cluster 0: mean [0.5, 0.5]; cluster 1: the zero row (no offline text) is skipped.
    np.testing.assert_allclose(out.numpy(), [[math.sqrt(0.5), math.sqrt(0.5)], [1.0, 0.0]], atol=1e-6)


def test_dru_cluster_without_offline_text_keeps_its_previous_text():
    prev_text = torch.tensor([[0.0, 1.0]])
    offline = torch.zeros(2, 2)
    out = update_text_features(prev_text, np.array([0, 0]), np.array([0, 0]), offline, 0.9)
    np.testing.assert_allclose(out.numpy(), [[0.0, 1.0]], atol=1e-6)


def test_instance_offline_text_fills_outliers_from_image_embeddings():
    s2_text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = np.array([1, -1, 0, -1])
    plain = instance_offline_text(labels, s2_text)
    assert plain.tolist() == [[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    emb = torch.tensor([[0.0, 1.0], [0.9, 0.1], [1.0, 0.0], [0.2, 0.7]])
    filled = instance_offline_text(labels, s2_text, image_embeds=emb)
    assert filled.tolist() == [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ItkmError):
        instance_offline_text(np.array([2]), s2_text)


# -- CHM acceptance (relative, not an absolute 0.5) --------------------------------------------
def _planted_sides_with_strangers(seed=0):
    """Side A: 6 people + 3 strangers; side B: the same 6 people (shuffled) + 3 other strangers.

    The text term is what it is in practice: every text feature shares one strong direction, so the
    text cosine of *any* two clusters is ~0.8 and adds ~0.4 to every pair's similarity.  Each
    stranger's image looks like a blend of two people (A's strangers share one of them with B's),
    so a stranger is close to several clusters and the clear favourite of none."""
    g = torch.Generator().manual_seed(seed)
    n, s, d, e = 6, 3, 32, 16
    people = _norm(torch.randn(n, d, generator=g))
    common = _norm(torch.randn(1, e, generator=g))
    text_p = _norm(2.0 * common + 0.5 * _norm(torch.randn(n, e, generator=g)))

    def stranger_img(k):
        i, j = k % n, (k + 1) % n
        return F.normalize(people[i] + people[j] + 0.1 * torch.randn(d, generator=g), dim=0)

    def stranger_txt():
        return _norm(2.0 * common + 0.5 * _norm(torch.randn(1, e, generator=g)))[0]

    perm = torch.randperm(n, generator=g)  # B row j is person perm[j]
    img_a = torch.cat([people + 0.05 * torch.randn(n, d, generator=g), torch.stack([stranger_img(2 * k) for k in range(s)])])
    txt_a = torch.cat([text_p, torch.stack([stranger_txt() for _ in range(s)])])
    img_b = torch.cat([people[perm] + 0.05 * torch.randn(n, d, generator=g),
                       torch.stack([stranger_img(2 * k + 1) for k in range(s)])])
    txt_b = torch.cat([text_p[perm] + 0.05 * torch.randn(n, e, generator=g),
                       torch.stack([stranger_txt() for _ in range(s)])])
    truth = {(int(perm[j]), j) for j in range(n)}
    return img_a, img_b, txt_a, txt_b, truth, n


def test_chm_absolute_threshold_merges_strangers_relative_acceptance_does_not():
    img_a, img_b, txt_a, txt_b, truth, n = _planted_sides_with_strangers()
    sim = cluster_similarity(img_a, img_b, txt_a, txt_b, 0.5)
    assert sim.min() > 0.2  # the text term lifts every pair, strangers included
    old = match_clusters(img_a, img_b, txt_a, txt_b, 0.5, 0.5)
    assert {(m.a, m.b) for m in old} - truth, "the absolute rule is expected to merge a stranger here"
    new = match_clusters(img_a, img_b, txt_a, txt_b, 0.5, 0.5, mutual=True, margin=0.05)
    assert {(m.a, m.b) for m in new} == truth  # every true pair kept, no stranger merged


def test_accept_matches_is_mutual_best_plus_margin():
    from itkm_engine.matching import accept_matches

    sim = np.array([
        [0.90, 0.20, 0.10],   # row 0: clearly best with col 0
        [0.50, 0.48, 0.10],   # row 1: col 0 best but col 0 prefers row 0 -> not mutual
        [0.10, 0.45, 0.44],   # row 2: col 1 best by 0.01 < margin
    ])
    pairs = [(0, 0), (1, 1), (2, 2)]
    got = accept_matches(sim, pairs, threshold=0.0, mutual=True, margin=0.05)
    assert [(m.a, m.b) for m in got] == [(0, 0)]
    # Without the relative test the absolute floor alone decides.
    loose = accept_matches(sim, pairs, threshold=0.3, mutual=False, margin=0.0)
    assert [(m.a, m.b) for m in loose] == [(0, 0), (1, 1), (2, 2)]
    # A lone cluster on each side has no runner-up: only the floor applies.
    assert [(m.a, m.b) for m in accept_matches(np.array([[0.7]]), [(0, 0)], threshold=0.5, mutual=True, margin=0.05)] == [(0, 0)]
    assert accept_matches(np.array([[0.4]]), [(0, 0)], threshold=0.5, mutual=True, margin=0.05) == []


def test_match_precision_counts_pairs_whose_clusters_hold_the_same_person():
    from itkm_engine.matching import match_precision

    labels = np.array([0, 0, 0, 1, 1, 5, 5, 6, 6, -1])
    pids = np.array([7, 7, 3, 8, 8, 7, 7, 9, -1, 8])
    # (0 -> person 7) ~ (5 -> person 7): right; (1 -> 8) ~ (6 -> 9): wrong.
    assert match_precision([ClusterMatch(0, 5, 0.9), ClusterMatch(1, 6, 0.8)], labels, pids) == 0.5
    assert match_precision([ClusterMatch(0, 5, 0.9)], labels, pids) == 1.0
    assert match_precision([], labels, pids) is None
    assert match_precision([ClusterMatch(0, 5, 0.9)], labels, np.full(10, -1)) is None
