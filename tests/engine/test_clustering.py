"""Stage I pseudo-labels: sparse k-reciprocal Jaccard distance + DBSCAN.

The sparse implementation is checked entry by entry against a dense, loop-by-loop transcription
of the reference algorithm (Zhong et al. 2017 / torchreid ``re_ranking`` / Cluster Contrast
``compute_jaccard_distance``), and end to end on planted clusters.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from itkm_engine.clustering import (
    ClusteringInputError,
    jaccard_knn,
    nearest_neighbors,
    pseudo_labels,
)
from itkm_engine.errors import Cancelled, ItkmError
from itkm_engine.progress import Reporter


# ---------------------------------------------------------------------------------------------
# data and the dense reference
# ---------------------------------------------------------------------------------------------
def planted(seed=0, clusters=12, per=20, n_noise=40, dim=256, spread=1.5):
    """``clusters`` x ``per`` points around random unit centres plus isotropic noise points.

    ``spread`` is the per-point noise norm relative to the unit centre: mates have cosine ~0.3,
    unrelated points ~0 +- 1/sqrt(dim), the regime of ReID features.  Noise points are random
    directions whose nearest neighbours come from many clusters, so they are outliers.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    pts = np.repeat(centres, per, axis=0) + spread * rng.standard_normal((clusters * per, dim)) / np.sqrt(dim)
    noise = rng.standard_normal((n_noise, dim))
    x = np.vstack([pts, noise])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    truth = np.r_[np.repeat(np.arange(clusters), per), -np.ones(n_noise, dtype=int)]
    perm = rng.permutation(len(x))
    return x[perm].astype(np.float32), truth[perm]


def dense_rank(x: np.ndarray) -> np.ndarray:
    sim = x.astype(np.float64) @ x.T.astype(np.float64)
    return np.argsort(-sim, axis=1, kind="stable")


def dense_jaccard(x: np.ndarray, k1: int, k2: int, rank: np.ndarray) -> np.ndarray:
    """Dense transcription of the reference (torchreid re_ranking's loops, all-vs-all, with
    Cluster Contrast's kernel exp(-(2 - 2 cos)))."""
    x64 = x.astype(np.float64)
    n = len(x)
    dist = 2.0 - 2.0 * (x64 @ x64.T)
    half = int(np.around(k1 / 2.0))

    def k_reciprocal(i, k):
        forward = rank[i, : k + 1]
        backward = rank[forward, : k + 1]
        return forward[np.where(backward == i)[0]]

    V = np.zeros((n, n))
    for i in range(n):
        r = k_reciprocal(i, k1)
        expansion = r
        for c in r:
            rc = k_reciprocal(c, half)
            if len(np.intersect1d(rc, r)) > 2.0 / 3.0 * len(rc):
                expansion = np.append(expansion, rc)
        expansion = np.unique(expansion)
        w = np.exp(-dist[i, expansion])
        V[i, expansion] = w / w.sum()
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(n)])
    inv = [np.where(V[:, i] != 0)[0] for i in range(n)]
    jac = np.zeros((n, n))
    for i in range(n):
        tmin = np.zeros(n)
        nz = np.where(V[i] != 0)[0]
        for k in nz:
            tmin[inv[k]] += np.minimum(V[i, k], V[inv[k], k])
        jac[i] = 1.0 - tmin / (2.0 - tmin)
    jac[jac < 0] = 0.0
    return jac


def assert_matches_dense(sparse_d: sp.csr_matrix, dense_d: np.ndarray, tol=1e-5):
    n = dense_d.shape[0]
    assert sparse_d.shape == (n, n)
    coo = sparse_d.tocoo()
    present = np.zeros((n, n), dtype=bool)
    present[coo.row, coo.col] = True
    # Every stored entry agrees with the dense value.
    assert np.max(np.abs(coo.data - dense_d[coo.row, coo.col])) < tol
    # Every absent pair is exactly 1.0 in the dense reference (no overlap at all).
    assert np.all(dense_d[~present] == 1.0)
    # And every overlapping pair (< 1) is present.
    assert np.all(present[dense_d < 1.0])


# ---------------------------------------------------------------------------------------------
# Jaccard against the dense reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k1,k2", [(20, 6), (30, 6), (7, 1)])
def test_sparse_jaccard_matches_dense_reference(k1, k2):
    x, _ = planted(seed=1, clusters=8, per=20, n_noise=40)  # N = 200
    rank = dense_rank(x)
    dense = dense_jaccard(x, k1, k2, rank)
    # Given the same neighbour ranking the two must agree entry by entry.
    got = jaccard_knn(x, k1, k2, neighbors=rank[:, : k1 + 2])
    assert got.dtype == np.float32
    assert_matches_dense(got, dense)
    # faiss finds the same ranking on this data, so the default path agrees too.
    sims, knn = nearest_neighbors(x, max(k1 + 1, k2))
    np.testing.assert_array_equal(knn, rank[:, : max(k1 + 1, k2)])
    np.testing.assert_allclose(sims, np.take_along_axis(x @ x.T, knn, 1), atol=1e-5)
    assert_matches_dense(jaccard_knn(x, k1, k2), dense)


def test_jaccard_structure_self_zero_stored_symmetric():
    x, _ = planted(seed=2, clusters=6, per=15, n_noise=10)
    d = jaccard_knn(x, 20, 6)
    n = len(x)
    assert isinstance(d, sp.csr_matrix)
    assert d.has_sorted_indices
    # The diagonal is stored (explicit zeros) so DBSCAN counts every point in its own neighbourhood.
    diag_stored = np.array([i in d.indices[d.indptr[i] : d.indptr[i + 1]] for i in range(n)])
    assert diag_stored.all()
    assert np.all(d.diagonal() == 0.0)
    assert d.data.min() >= 0.0 and d.data.max() < 1.0
    assert abs(d - d.T).max() < 1e-6
    assert d.nnz < n * n  # sparse: non-overlapping pairs are absent


def test_max_distance_prunes_only_far_pairs():
    x, _ = planted(seed=3, clusters=6, per=15, n_noise=10)
    full = jaccard_knn(x, 20, 6)
    pruned = jaccard_knn(x, 20, 6, max_distance=0.6)
    assert pruned.nnz < full.nnz
    assert pruned.data.max() <= 0.6
    coo_full, coo_pruned = full.tocoo(), pruned.tocoo()
    near = coo_full.data <= 0.6
    kept = set(zip(coo_full.row[near].tolist(), coo_full.col[near].tolist()))
    assert kept == set(zip(coo_pruned.row.tolist(), coo_pruned.col.tolist()))
    np.testing.assert_array_equal(np.sort(coo_pruned.data), np.sort(coo_full.data[near]))


def low_rank(n=1500, dim=256, rank=16, per=15, seed=0):
    """Identities in a low-dimensional subspace plus a shared mean, like CLIP/ReID embeddings."""
    rng = np.random.default_rng(seed)
    ids = n // per
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T
    centres = rng.standard_normal((ids, rank)) / np.sqrt(rank)
    labels = np.repeat(np.arange(ids), per)
    z = centres[labels] + 0.5 / np.sqrt(rank) * rng.standard_normal((n, rank))
    mean = rng.standard_normal(dim)
    x = 0.8 * mean / np.linalg.norm(mean) + z @ basis + 0.1 / np.sqrt(dim) * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def test_projected_knn_is_verified_and_matches_exact():
    x, _ = low_rank()
    logs = []
    rep = Reporter(on_log=lambda m: logs.append(m.text))
    sims, idx = nearest_neighbors(x, 31, exact_limit=500, reporter=rep)
    assert any("projection" in t and "recall@31" in t for t in logs), logs
    exact_sims, exact_idx = nearest_neighbors(x, 31)  # N <= exact_limit: exhaustive
    recall = np.mean([len(np.intersect1d(a, b)) / 31 for a, b in zip(idx, exact_idx)])
    assert recall >= 0.99
    np.testing.assert_array_equal(idx[:, 0], np.arange(len(x)))
    # Similarities are exact inner products of the returned pairs, in decreasing order.
    np.testing.assert_allclose(sims, np.einsum("id,ikd->ik", x, x[idx]), atol=1e-5)
    assert np.all(np.diff(sims[:, 1:], axis=1) <= 1e-6)
    a = pseudo_labels(x, exact_limit=500)
    b = pseudo_labels(x)
    assert adjusted_rand_score(a, b) >= 0.99


def test_projection_refused_on_isotropic_features():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1500, 96)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    logs = []
    _, idx = nearest_neighbors(x, 11, exact_limit=100, reporter=Reporter(on_log=lambda m: logs.append(m.text)))
    assert any("exhaustive" in t for t in logs), logs
    _, exact_idx = nearest_neighbors(x, 11)
    np.testing.assert_array_equal(idx, exact_idx)


# ---------------------------------------------------------------------------------------------
# pseudo_labels end to end
# ---------------------------------------------------------------------------------------------
def test_pseudo_labels_recover_planted_clusters():
    x, truth = planted(seed=0)
    labels = pseudo_labels(x, k1=30, k2=6, eps=0.6, min_samples=4)
    assert labels.dtype == np.int64 and labels.shape == (len(x),)
    inl = truth >= 0
    assert adjusted_rand_score(truth[inl], labels[inl]) >= 0.95
    assert (labels[inl] >= 0).mean() >= 0.95  # clustered points are not called outliers
    assert (labels[~inl] == -1).mean() >= 0.7  # isolated points mostly are
    # Labels 0..C-1, numbered in order of first appearance.
    c = labels.max() + 1
    assert c == 12
    first = [int(np.flatnonzero(labels == j)[0]) for j in range(c)]
    assert first == sorted(first)


def test_pseudo_labels_match_dbscan_on_dense_reference():
    x, _ = planted(seed=4, clusters=8, per=20, n_noise=40, spread=2.0)
    dense = dense_jaccard(x, 30, 6, dense_rank(x))
    ref = DBSCAN(eps=0.6, min_samples=4, metric="precomputed").fit(dense).labels_
    got = pseudo_labels(x, k1=30, k2=6, eps=0.6, min_samples=4)
    assert adjusted_rand_score(ref, got) == 1.0
    np.testing.assert_array_equal(got == -1, ref == -1)


def test_deterministic():
    x, _ = planted(seed=5, clusters=10, per=15, n_noise=20)
    a = pseudo_labels(x)
    b = pseudo_labels(x.copy())
    np.testing.assert_array_equal(a, b)
    d1, d2 = jaccard_knn(x, 30, 6), jaccard_knn(x, 30, 6)
    assert (d1 != d2).nnz == 0


def test_unnormalised_and_float64_input_are_normalised():
    x, _ = planted(seed=6, clusters=6, per=15, n_noise=5)
    scaled = (x.astype(np.float64) * np.linspace(0.5, 3.0, len(x))[:, None])
    warnings = []
    rep = Reporter(on_log=lambda m: warnings.append(m))
    np.testing.assert_array_equal(pseudo_labels(scaled, reporter=rep), pseudo_labels(x))
    assert any(m.level == "warning" and "normalis" in m.text for m in warnings)


# ---------------------------------------------------------------------------------------------
# edge cases
# ---------------------------------------------------------------------------------------------
def test_empty_and_single_point():
    empty = pseudo_labels(np.zeros((0, 8), np.float32))
    assert empty.shape == (0,) and empty.dtype == np.int64
    assert jaccard_knn(np.zeros((0, 8), np.float32)).shape == (0, 0)
    one = np.ones((1, 8), np.float32) / np.sqrt(8)
    np.testing.assert_array_equal(pseudo_labels(one), [-1])
    np.testing.assert_array_equal(pseudo_labels(one, min_samples=1), [0])
    d = jaccard_knn(one)
    assert d.shape == (1, 1) and d.nnz == 1 and d[0, 0] == 0.0


def test_fewer_points_than_k1():
    rng = np.random.default_rng(0)
    centre = rng.standard_normal(32)
    x = centre + 0.05 * rng.standard_normal((5, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    labels = pseudo_labels(x, k1=30, k2=6, min_samples=4)  # k clamped to N - 1
    np.testing.assert_array_equal(labels, np.zeros(5))
    d = jaccard_knn(x, 30, 6).toarray()
    assert d.shape == (5, 5) and np.allclose(d, 0.0, atol=1e-5)  # identical encodings


def test_duplicate_points_cluster_together():
    x, truth = planted(seed=7, clusters=6, per=10, n_noise=0)
    dup = np.vstack([x, x[:10], x[:10]])  # every one of the first 10 points three times
    labels = pseudo_labels(dup, k1=20, k2=6, min_samples=4)
    _, knn = nearest_neighbors(dup, 5)
    np.testing.assert_array_equal(knn[:, 0], np.arange(len(dup)))  # self first despite ties
    n = len(x)
    np.testing.assert_array_equal(labels[n : n + 10], labels[:10])
    np.testing.assert_array_equal(labels[n + 10 :], labels[:10])
    assert adjusted_rand_score(truth, labels[:n]) >= 0.95
    # All-identical input: a single cluster.
    same = np.tile(x[:1], (12, 1))
    np.testing.assert_array_equal(pseudo_labels(same, k1=5, k2=3), np.zeros(12))


def test_bad_input_raises_user_error():
    good = planted(seed=0, clusters=2, per=5, n_noise=0)[0]
    with pytest.raises(ClusteringInputError, match="2-D"):
        pseudo_labels(np.zeros(5, np.float32))
    with pytest.raises(ClusteringInputError, match="NaN"):
        bad = good.copy()
        bad[3, 0] = np.nan
        pseudo_labels(bad)
    with pytest.raises(ClusteringInputError, match="zeros"):
        bad = good.copy()
        bad[2] = 0
        pseudo_labels(bad)
    with pytest.raises(ClusteringInputError, match="eps"):
        pseudo_labels(good, eps=1.0)
    with pytest.raises(ClusteringInputError, match="k1"):
        pseudo_labels(good, k1=0)
    with pytest.raises(ClusteringInputError, match="neighbors"):
        jaccard_knn(good, 5, 2, neighbors=np.zeros((len(good), 2), np.int64))
    with pytest.raises(ClusteringInputError, match="repeat"):
        jaccard_knn(good, 2, 2, neighbors=np.zeros((len(good), 3), np.int64))
    with pytest.raises(ClusteringInputError, match="max_distance"):
        jaccard_knn(good, 2, 2, max_distance=1.5)
    with pytest.raises(ClusteringInputError, match="floating"):
        pseudo_labels(np.ones((4, 3), dtype=np.int64))
    assert issubclass(ClusteringInputError, ItkmError)


def test_reports_stages_and_cancels():
    x, _ = planted(seed=8, clusters=6, per=15, n_noise=10)
    events = []
    pseudo_labels(x, reporter=Reporter(on_event=events.append))
    stages = [e.stage for e in events]
    for s in ("knn", "encoding", "jaccard", "dbscan"):
        assert s in stages
    fractions = [e.fraction for e in events if e.fraction is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    rep = Reporter()
    rep.cancel.cancel()
    with pytest.raises(Cancelled):
        pseudo_labels(x, reporter=rep)
