"""FeatureIndex (exact and IVF), persistence, and k-reciprocal re-ranking."""

from __future__ import annotations

import numpy as np
import pytest

from itkm_engine.errors import Cancelled, ItkmError
from itkm_engine.index import FeatureIndex, FeatureIndexError, k_reciprocal_rerank, rerank_query, search_features, _num_gpus
from itkm_engine.metrics import evaluate_rank
from itkm_engine.progress import CancelToken, Reporter


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, *, n_clusters: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    labels = rng.integers(0, n_clusters, n)
    return normalise(centres[labels] + spread * rng.standard_normal((n, dim))), labels


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q @ x.T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


@pytest.fixture(scope="module")
def clustered_20k():
    x, _ = clustered(20_000, 48, n_clusters=200, spread=0.35, seed=1)
    rng = np.random.default_rng(2)  # queries: perturbed copies of indexed points
    q = normalise(x[rng.choice(len(x), 200, replace=False)] + 0.05 * rng.standard_normal((200, 48)))
    return x, q


@pytest.fixture(scope="module")
def ivf_index(clustered_20k):
    x, _ = clustered_20k
    return FeatureIndex.build(x, exact_limit=1000, seed=0)


def test_exact_index_returns_brute_force_topk():
    rng = np.random.default_rng(0)
    x = normalise(rng.standard_normal((3000, 32)))
    q = normalise(rng.standard_normal((25, 32)))
    index = FeatureIndex.build(x)
    assert index.kind == "exact" and len(index) == 3000 and index.dim == 32
    sims, idx = index.search(q, 10)
    ref_sims, ref_idx = brute_force(x, q, 10)
    assert sims.dtype == np.float32 and idx.dtype == np.int64 and sims.shape == (25, 10)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


def test_search_edge_cases():
    rng = np.random.default_rng(1)
    x = normalise(rng.standard_normal((7, 8)))
    index = FeatureIndex.build(x)
    sims, idx = index.search(x[3], 50)  # one vector; k above the size is clipped
    assert sims.shape == (1, 7) and idx[0, 0] == 3 and sorted(idx[0]) == list(range(7))
    with pytest.raises(FeatureIndexError, match="dimension"):
        index.search(np.ones((1, 9), np.float32), 2)
    with pytest.raises(FeatureIndexError, match="k must"):
        index.search(x[:1], 0)
    with pytest.raises(FeatureIndexError, match="normalised"):
        FeatureIndex.build(x * 2.0)
    with pytest.raises(FeatureIndexError, match="2-D"):
        FeatureIndex.build(np.ones((2, 3, 4), np.float32))
    with pytest.raises(FeatureIndexError, match="nprobe"):
        index.nprobe = 4


def test_ivf_recall_on_clustered_points(clustered_20k, ivf_index):
    x, q = clustered_20k
    assert ivf_index.kind == "ivf-flat"
    assert ivf_index.nlist == 128  # 2**round(log2(sqrt(20000)))
    assert 1 <= ivf_index.nprobe <= ivf_index.nlist
    assert ivf_index.tuned_recall is not None and ivf_index.tuned_recall >= 0.95
    _, idx = ivf_index.search(q, 10)
    _, ref = brute_force(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, ref)])
    assert recall >= 0.9


def test_ivf_build_is_reproducible(clustered_20k, ivf_index):
    x, q = clustered_20k
    again = FeatureIndex.build(x, exact_limit=1000, seed=0)
    assert again.nprobe == ivf_index.nprobe
    np.testing.assert_array_equal(again.search(q[:20], 5)[1], ivf_index.search(q[:20], 5)[1])


@pytest.mark.parametrize("kind", ["exact", "ivf-flat"])
def test_save_load_roundtrip(tmp_path, kind, clustered_20k, ivf_index):
    x, q = clustered_20k
    index = ivf_index if kind == "ivf-flat" else FeatureIndex.build(x[:2000])
    index_path = tmp_path / "sub" / "features.faiss"
    index.save(index_path)
    assert [p.name for p in index_path.parent.iterdir()] == ["features.faiss"]  # no temporaries left
    loaded = FeatureIndex.load(index_path, use_gpu=False)
    assert loaded.kind == kind and len(loaded) == len(index) and loaded.nprobe == index.nprobe
    s1, i1 = index.search(q[:30], 10)
    s2, i2 = loaded.search(q[:30], 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)


def test_load_rejects_missing_and_garbage(tmp_path):
    with pytest.raises(FeatureIndexError, match="no index file"):
        FeatureIndex.load(tmp_path / "missing.faiss")
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"not a faiss index at all")
    with pytest.raises(ItkmError):
        FeatureIndex.load(bad)


@pytest.mark.skipif(_num_gpus() > 0, reason="this machine has a GPU")
def test_gpu_required_without_gpu_is_a_clear_error():
    x = normalise(np.random.default_rng(0).standard_normal((10, 4)))
    with pytest.raises(FeatureIndexError, match="no GPU"):
        FeatureIndex.build(x, use_gpu=True)
    assert FeatureIndex.build(x, device="cpu").gpu is None


def test_build_can_be_cancelled(clustered_20k):
    x, _ = clustered_20k
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        FeatureIndex.build(x, exact_limit=1000, reporter=Reporter(cancel=token))


# -- re-ranking ----------------------------------------------------------------------------------


def planted_case(seed: int):
    """40 identities x 8 gallery images, one noisy query per identity."""
    rng = np.random.default_rng(seed)
    ids, per, dim = 40, 8, 32
    centres = rng.standard_normal((ids, dim))
    gallery = normalise(np.repeat(centres, per, axis=0) + rng.standard_normal((ids * per, dim)))
    queries = normalise(centres + rng.standard_normal((ids, dim)))
    return queries, gallery, np.arange(ids), np.repeat(np.arange(ids), per)


def ranked_map(sims, idx, q_pids, g_pids):
    dist = np.full((len(q_pids), len(g_pids)), 10.0, dtype=np.float32)  # unranked: far away
    np.put_along_axis(dist, idx, 1.0 - sims, axis=1)
    return evaluate_rank(dist, q_pids, g_pids, np.zeros(len(q_pids), int), np.ones(len(g_pids), int))


def test_rerank_permutes_the_candidates():
    q, g, _, _ = planted_case(0)
    sims, idx = k_reciprocal_rerank(q, g, top_n=50)
    _, cand = FeatureIndex.build(g).search(q, 50)
    assert sims.shape == idx.shape == (40, 50)
    for row, c in zip(idx, cand):
        assert sorted(row) == sorted(c)
    assert np.all(np.diff(sims, axis=1) <= 0)  # sorted by re-ranked similarity


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rerank_improves_map_on_identity_clusters(seed):
    q, g, q_pids, g_pids = planted_case(seed)
    raw_sims, raw_idx = FeatureIndex.build(g).search(q, 100)
    _, map_raw = ranked_map(raw_sims, raw_idx, q_pids, g_pids)
    sims, idx = k_reciprocal_rerank(q, g, top_n=100, k1=20, k2=6, lambda_value=0.3)
    _, map_rr = ranked_map(sims, idx, q_pids, g_pids)
    assert map_rr > map_raw + 0.03


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rerank_lifts_true_matches_above_a_non_reciprocal_distractor(seed):
    # The query's nearest image is a distractor that sits inside its own tight group (identity B):
    # the query is not among the distractor's k1 nearest, so they are not k-reciprocal.  The
    # query's identity A (a tight group a little further away) does have the query among its
    # nearest neighbours.  Re-ranking must put A first.
    rng = np.random.default_rng(seed)
    dim = 16
    e = np.linalg.qr(rng.standard_normal((dim, dim)))[0].T  # orthonormal directions
    query = normalise(e[0])
    distractor = normalise(np.cos(0.45) * e[0] + np.sin(0.45) * e[1])  # cosine 0.90 to the query
    b_group = normalise(np.cos(0.75) * e[0] + np.sin(0.75) * e[1] + 0.08 * rng.standard_normal((6, dim)))
    a_group = normalise(np.cos(0.55) * e[0] - np.sin(0.55) * e[1] + 0.06 * rng.standard_normal((6, dim)))
    others = normalise(rng.standard_normal((40, dim)))
    gallery = np.concatenate([a_group, [distractor], b_group, others])
    raw = FeatureIndex.build(gallery).search(query, 5)[1][0]
    assert raw[0] == 6  # the distractor wins before re-ranking
    sims, idx = rerank_query(query, gallery, top_n=30, k1=6, k2=3, lambda_value=0.3)
    assert sims.shape == idx.shape == (30,)
    assert set(idx[:4].tolist()) <= set(range(6))  # identity A on top
    assert list(idx).index(6) > 3


def test_rerank_with_ivf_index_and_search_features(clustered_20k, ivf_index):
    x, q = clustered_20k
    sims, idx = search_features(ivf_index, q[:8], 10, rerank=True, gallery_feats=x, top_n=40)
    assert sims.shape == idx.shape == (8, 10)
    plain = search_features(ivf_index, q[:8], 40)[1]
    for row, cand in zip(idx, plain):
        assert set(row) <= set(cand)
    with pytest.raises(FeatureIndexError, match="gallery"):
        search_features(ivf_index, q[:2], 5, rerank=True)
    with pytest.raises(FeatureIndexError, match="holds"):
        k_reciprocal_rerank(q[:2], x[:100], index=ivf_index)


def test_rerank_small_gallery_clips_k():
    rng = np.random.default_rng(3)
    g = normalise(rng.standard_normal((5, 8)))
    sims, idx = k_reciprocal_rerank(g[:2], g, top_n=200, k1=20, k2=6)
    assert idx.shape == (2, 5) and np.isfinite(sims).all()
    assert idx[0, 0] == 0 and idx[1, 0] == 1  # each query finds itself first
    with pytest.raises(FeatureIndexError, match="normalised"):
        k_reciprocal_rerank(g[:1], g * 3.0)
