"""evaluate_rank against a plain per-query loop of the Market-1501 protocol; pseudo-label quality."""

from __future__ import annotations

import numpy as np
import pytest

from itkm_engine import metrics
from itkm_engine.errors import ItkmError
from itkm_engine.metrics import evaluate_rank, evaluate_rank_detailed, pseudo_label_quality


def loop_protocol(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, skip_cameras=None):
    """The protocol written out the obvious way, one query and one gallery item at a time."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    cmc_sum = np.zeros(max_rank, dtype=np.float64)
    aps, inps = [], []
    for q in range(num_q):
        order = np.argsort(distmat[q])  # torchreid's tie order: np.argsort on the row
        rel = []
        for g in order:
            if g_pids[g] == q_pids[q] and g_camids[g] == q_camids[q]:
                continue  # same person, same camera: ignored
            if skip_cameras is not None and skip_cameras[q_camids[q], g_camids[g]]:
                continue  # the protocol leaves this camera out for this query's camera
            rel.append(1 if g_pids[g] == q_pids[q] else 0)
        if sum(rel) == 0:
            continue
        hits, precision_sum, first, last = 0, 0.0, None, None
        for i, r in enumerate(rel):
            if r:
                hits += 1
                precision_sum += hits / (i + 1)
                first = i if first is None else first
                last = i
        for i in range(max_rank):
            cmc_sum[i] += 1.0 if first <= i else 0.0
        aps.append(precision_sum / hits)
        inps.append(hits / (last + 1))
    if not aps:
        raise AssertionError("no valid query")
    return (cmc_sum / len(aps)).astype(np.float32), float(np.mean(aps)), float(np.mean(inps)), len(aps)


def random_case(rng, num_q, num_g, num_ids, num_cams, *, distinct_values=None):
    q_pids = rng.integers(0, num_ids, num_q)
    g_pids = rng.integers(0, num_ids, num_g)
    q_cams = rng.integers(0, num_cams, num_q)
    g_cams = rng.integers(0, num_cams, num_g)
    if distinct_values is None:
        dist = rng.random((num_q, num_g)).astype(np.float32)
    else:  # few distinct values: many ties, including between matches and non-matches
        dist = rng.integers(0, distinct_values, (num_q, num_g)).astype(np.float32)
    # Make true matches somewhat closer so the curves are not trivial (by a whole step when
    # the values are integers, so matches still tie with non-matches).
    dist -= (q_pids[:, None] == g_pids[None, :]) * (0.3 if distinct_values is None else 1.0)
    return dist, q_pids, g_pids, q_cams, g_cams


def assert_same(case, max_rank=50):
    dist, q_pids, g_pids, q_cams, g_cams = case
    cmc_ref, map_ref, inp_ref, valid_ref = loop_protocol(dist, q_pids, g_pids, q_cams, g_cams, max_rank)
    res = evaluate_rank_detailed(dist, q_pids, g_pids, q_cams, g_cams, max_rank)
    np.testing.assert_allclose(res.cmc, cmc_ref, rtol=1e-6)
    np.testing.assert_allclose(res.mAP, map_ref, rtol=1e-6)
    np.testing.assert_allclose(res.mINP, inp_ref, rtol=1e-6)
    assert res.num_valid == valid_ref
    assert res.num_valid + res.num_skipped == dist.shape[0]
    assert res.cmc.dtype == np.float32


@pytest.mark.parametrize("seed", range(6))
def test_matches_loop_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    assert_same(random_case(rng, 23, 157, num_ids=12, num_cams=3), max_rank=20)


@pytest.mark.parametrize("seed", range(6))
def test_matches_loop_with_many_ties(seed, monkeypatch):
    rng = np.random.default_rng(100 + seed)
    # Only 4 distinct distance values: ties between matches and non-matches everywhere, so the
    # rows must take the argsort path that reproduces the reference's tie order.
    calls = []
    reference_row = metrics._reference_row
    monkeypatch.setattr(metrics, "_reference_row", lambda *a: calls.append(1) or reference_row(*a))
    assert_same(random_case(rng, 19, 131, num_ids=6, num_cams=2, distinct_values=4), max_rank=30)
    assert calls, "tied rows were not recomputed with argsort"


def test_matches_loop_float64_and_chunking(monkeypatch):
    # Tiny chunks force many chunk boundaries; float64 distances take the same path.
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 300)
    rng = np.random.default_rng(7)
    dist, *rest = random_case(rng, 41, 97, num_ids=9, num_cams=4)
    assert_same((dist.astype(np.float64), *rest), max_rank=10)
    dist, *rest = random_case(rng, 41, 97, num_ids=9, num_cams=4, distinct_values=3)
    assert_same((dist, *rest), max_rank=10)


def test_only_same_camera_matches_are_skipped():
    # Query 0's only match is in its own camera -> skipped; query 1 has a cross-camera match.
    dist = np.array([[0.1, 0.5, 0.9], [0.2, 0.3, 0.1]], dtype=np.float32)
    q_pids, q_cams = np.array([1, 2]), np.array([0, 0])
    g_pids, g_cams = np.array([1, 2, 3]), np.array([0, 1, 1])
    cmc, mAP, skipped = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=3, return_skipped=True)
    assert skipped == 1
    # Query 1: order g2 (pid 3), g0 (pid 1), g1 (pid 2) -> first match at rank 3, AP = 1/3.
    np.testing.assert_allclose(cmc, [0.0, 0.0, 1.0])
    assert mAP == pytest.approx(1 / 3)
    assert_same((dist, q_pids, g_pids, q_cams, g_cams), max_rank=3)


def test_hand_computed_average_precision():
    # Ranked relevance (after removal): 1 0 1 0 1 -> AP = (1/1 + 2/3 + 3/5) / 3.
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.05]], dtype=np.float32)
    g_pids = np.array([7, 8, 7, 9, 7, 7])
    g_cams = np.array([1, 1, 2, 1, 3, 0])  # the closest one (index 5) is same pid + same cam: removed
    cmc, mAP = evaluate_rank(dist, np.array([7]), g_pids, np.array([0]), g_cams, max_rank=5)
    assert mAP == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    np.testing.assert_allclose(cmc, [1, 1, 1, 1, 1])
    res = evaluate_rank_detailed(dist, np.array([7]), g_pids, np.array([0]), g_cams, max_rank=5)
    assert res.mINP == pytest.approx(3 / 5)
    assert res.as_dict()["rank1"] == 1.0


def test_duplicated_pids_and_short_gallery():
    rng = np.random.default_rng(3)
    # Every gallery item shares one of two pids; max_rank above the gallery size is clipped.
    dist = rng.random((8, 6))
    q_pids = np.array([0, 1] * 4)
    g_pids = np.array([0, 0, 0, 1, 1, 1])
    q_cams = rng.integers(0, 3, 8)
    g_cams = rng.integers(0, 3, 6)
    cmc, _ = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    assert cmc.shape == (6,)
    assert_same((dist, q_pids, g_pids, q_cams, g_cams), max_rank=50)


def test_no_valid_query_raises_value_error():
    dist = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="no query"):
        evaluate_rank(dist, np.array([5, 6]), np.array([1, 2, 3]), np.array([0, 0]), np.array([1, 1, 1]))


def test_bad_input_is_reported():
    with pytest.raises(ItkmError, match="g_pids"):
        evaluate_rank(np.zeros((2, 3)), np.array([1, 2]), np.array([1, 2]), np.array([0, 0]), np.array([1, 1, 1]))
    with pytest.raises(ItkmError, match="NaN"):
        evaluate_rank(np.full((1, 2), np.nan), np.array([1]), np.array([1, 2]), np.array([0]), np.array([1, 1]))


# -- pseudo-label quality ----------------------------------------------------------------------


def test_perfect_labels_score_one():
    true = np.array([0, 0, 1, 1, 1, 2, 2])
    q = pseudo_label_quality(np.array([5, 5, 3, 3, 3, 9, 9]), true)
    assert q["precision"] == q["recall"] == q["fscore"] == q["ari"] == 1.0
    assert q["n_clusters"] == 3 and q["n_outliers"] == 0


def test_all_in_one_cluster():
    true = np.array([0, 0, 1, 1, 2, 2])
    q = pseudo_label_quality(np.zeros(6, dtype=int), true)
    # 15 predicted pairs, 3 of them true; all 3 true pairs found.
    assert q["precision"] == pytest.approx(3 / 15)
    assert q["recall"] == 1.0
    assert q["fscore"] == pytest.approx(2 * 0.2 / 1.2)
    assert q["ari"] == pytest.approx(0.0)
    assert q["n_clusters"] == 1


def test_outliers_are_singletons_and_unknown_ids_ignored():
    true = np.array([0, 0, 0, 1, 1, -1, -1])
    pred = np.array([4, 4, -1, 7, -1, 4, 7])
    q = pseudo_label_quality(pred, true)
    # Scored: first five. Pred pairs: (0,1) only -> precision 1. True pairs: 3 + 1 = 4 -> recall 1/4.
    assert q["precision"] == 1.0
    assert q["recall"] == pytest.approx(0.25)
    assert q["n_outliers"] == 2 and q["n_clusters"] == 2 and q["n_items"] == 5
    from sklearn.metrics import adjusted_rand_score

    assert q["ari"] == pytest.approx(adjusted_rand_score([0, 0, 0, 1, 1], [4, 4, 100, 7, 101]))


def test_pairwise_counts_match_brute_force():
    rng = np.random.default_rng(11)
    true = rng.integers(-1, 8, 60)
    pred = rng.integers(-1, 6, 60)
    q = pseudo_label_quality(pred, true)
    keep = true >= 0
    t, p = true[keep], pred[keep]
    same_t = t[:, None] == t[None, :]
    same_p = (p[:, None] == p[None, :]) & (p[:, None] >= 0)
    iu = np.triu_indices(len(t), 1)
    tp = np.sum(same_t[iu] & same_p[iu])
    assert q["precision"] == pytest.approx(tp / np.sum(same_p[iu]))
    assert q["recall"] == pytest.approx(tp / np.sum(same_t[iu]))


def test_pseudo_label_quality_rejects_bad_input():
    with pytest.raises(ItkmError):
        pseudo_label_quality(np.array([0, 1]), np.array([0]))
    with pytest.raises(ItkmError, match="known identity"):
        pseudo_label_quality(np.array([0, 1]), np.array([-1, -1]))


# -- skip_cameras: the cross-camera and SYSU-MM01 protocols -------------------------------------


@pytest.mark.parametrize("distinct_values", [None, 3])
def test_skip_cameras_matches_the_loop(distinct_values):
    rng = np.random.default_rng(11)
    dist, q_pids, g_pids, q_cams, g_cams = random_case(rng, 37, 83, num_ids=7, num_cams=4,
                                                       distinct_values=distinct_values)
    skip = np.eye(4, dtype=bool)
    skip[2, 1] = True  # like SYSU: a query of camera 2 also ignores camera 1
    res = evaluate_rank_detailed(dist, q_pids, g_pids, q_cams, g_cams, 10, skip_cameras=skip)
    cmc, mAP, mINP, n_valid = loop_protocol(dist, q_pids, g_pids, q_cams, g_cams, 10, skip_cameras=skip)
    np.testing.assert_allclose(res.cmc, cmc)
    assert res.mAP == pytest.approx(mAP) and res.mINP == pytest.approx(mINP) and res.num_valid == n_valid


def test_cross_camera_protocol_drops_same_camera_non_matches():
    # One query (pid 1, camera 0); the closest gallery item is another person in the query's own
    # camera.  Standard protocol: it counts, the match is rank 2.  Cross-camera: it is left out.
    dist = np.array([[0.1, 0.2, 0.3]], dtype=np.float32)
    g_pids, g_cams = np.array([5, 1, 6]), np.array([0, 1, 1])
    cmc, mAP = evaluate_rank(dist, np.array([1]), g_pids, np.array([0]), g_cams, max_rank=3)
    assert cmc[0] == 0.0 and mAP == pytest.approx(0.5)
    cmc, mAP = evaluate_rank(dist, np.array([1]), g_pids, np.array([0]), g_cams, max_rank=3,
                             skip_cameras=np.eye(2, dtype=bool))
    assert cmc[0] == 1.0 and mAP == pytest.approx(1.0)


def test_skip_cameras_needs_camera_codes():
    with pytest.raises(ItkmError, match="codes"):
        evaluate_rank(np.zeros((1, 2)), np.array([1]), np.array([1, 2]), np.array([0]), np.array([1, 5]),
                      skip_cameras=np.eye(2, dtype=bool))
