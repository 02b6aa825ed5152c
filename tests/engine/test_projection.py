"""UMAP projection: kNN correctness, layout quality, progress/cancel, cache, bad input.

numba compiles UMAP's kernels once per process (~10-30 s here): everything that runs a layout
goes through the session-scoped ``umap_ready`` fixture, so the suite pays it once.
"""

from __future__ import annotations

import numpy as np
import pytest

from itkm_engine import projection as P
from itkm_engine.errors import Cancelled, ItkmError, NothingToDoError
from itkm_engine.progress import CancelToken, Reporter


@pytest.fixture(scope="session")
def umap_ready():
    P.warm_up()
    return True


def _blobs(n_per=60, k=4, d=96, seed=0, spread=0.15):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)).astype(np.float32)
    labels = np.repeat(np.arange(k), n_per)
    x = centers[labels] + spread * rng.normal(size=(len(labels), d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def _brute_knn(x, k):
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.argsort(d2, axis=1, kind="stable")[:, :k]


def test_umap_parameters_adapt_to_size():
    small, mid, big = P.umap_parameters(2_000), P.umap_parameters(30_000), P.umap_parameters(100_000)
    assert small["init"] == "spectral" and small["n_epochs"] is None and not small["parallel"]
    assert mid["init"] == "pca" and mid["n_epochs"] == 200 and mid["parallel"]
    assert big["init"] == "pca" and big["n_epochs"] < mid["n_epochs"]
    assert all(p["n_neighbors"] == 15 and p["low_memory"] for p in (small, mid, big))
    assert P.umap_parameters(6)["n_neighbors"] == 5


def test_exact_knn_matches_brute_force():
    x, _ = _blobs(n_per=30, d=16)
    idx, dist = P.knn(x, 8)
    assert idx.shape == dist.shape == (len(x), 8)
    assert (idx[:, 0] == np.arange(len(x))).all() and (dist[:, 0] == 0).all()
    ref = _brute_knn(x, 8)
    overlap = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(idx, ref)])
    assert overlap > 0.98
    assert np.all(np.diff(dist, axis=1) >= -1e-5)  # sorted by distance
    expect = np.linalg.norm(x[:, None] - x[idx], axis=-1)
    np.testing.assert_allclose(dist, expect, atol=1e-4)


def test_hnsw_knn_has_high_recall_and_reports(monkeypatch):
    monkeypatch.setattr(P, "EXACT_KNN_LIMIT", 50)
    monkeypatch.setattr(P, "KNN_CHUNK", 64)
    x, _ = _blobs(n_per=100, d=16, seed=1)
    events = []
    idx, _ = P.knn(x, 10, reporter=Reporter(events.append, job="projection"))
    ref = _brute_knn(x, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, ref)])
    assert recall > 0.9
    assert (idx[:, 0] == np.arange(len(x))).all()
    assert {e.stage for e in events} == {"neighbors"} and events[-1].fraction == pytest.approx(1.0)


def test_self_first_handles_duplicates_and_padding():
    # row 0: a duplicate comes before self; row 1: self missing, -1 padding at the end
    idx = np.array([[3, 0, 2, 1], [2, 3, 0, -1]], np.int64)
    d2 = np.array([[0, 0, 4, 9], [1, 4, 9, -1]], np.float32)
    out_i, out_d = P._self_first(idx, d2, 3)
    assert out_i.tolist() == [[0, 3, 2], [1, 2, 3]]
    np.testing.assert_allclose(out_d, [[0, 0, 2], [0, 1, 2]])


def test_umap_separates_clusters_and_is_deterministic(umap_ready):
    x, labels = _blobs(n_per=60, k=4, d=96)
    events = []
    y = P.umap_2d(x, seed=3, reporter=Reporter(events.append, job="projection"))
    assert y.shape == (len(x), 2) and y.dtype == np.float32 and np.isfinite(y).all()
    # nearest 2-D neighbour has the same blob label for nearly every point
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).mean() > 0.95
    stages = [e.stage for e in events]
    assert stages[0] == "reduce" and "neighbors" in stages and stages[-1] == "layout"
    assert any(e.epoch for e in events if e.stage == "layout")
    fr = [e.fraction for e in events if e.fraction is not None]
    assert fr == sorted(fr) and fr[-1] == pytest.approx(1.0)
    y2 = P.umap_2d(x, seed=3)
    np.testing.assert_array_equal(y, y2)


def test_parallel_layout_path(umap_ready, monkeypatch):
    monkeypatch.setattr(P, "PARALLEL_LIMIT", 10)
    x, labels = _blobs(n_per=40, k=3, d=32, seed=2)
    assert P.umap_parameters(len(x))["parallel"]
    y = P.umap_2d(x)
    assert y.shape == (len(x), 2) and np.isfinite(y).all()


def test_layout_kernel_releases_the_gil(umap_ready):
    import umap.layouts as L

    assert L._nb_optimize_layout_euclidean_single_epoch.targetoptions.get("nogil") is True
    assert L._nb_optimize_layout_euclidean_single_epoch_parallel.targetoptions.get("nogil") is True


def test_cancel_during_layout(umap_ready):
    x, _ = _blobs(n_per=50, k=3, d=32)
    token = CancelToken()

    def on_event(e):
        if e.stage == "layout" and e.epoch:
            token.cancel()

    with pytest.raises(Cancelled):
        P.umap_2d(x, reporter=Reporter(on_event, cancel=token, job="projection"))


def test_tiny_and_bad_input():
    assert P.umap_2d(np.ones((3, 4), np.float32)).shape == (3, 2)
    with pytest.raises(NothingToDoError):
        P.umap_2d(np.zeros((0, 8), np.float32))
    with pytest.raises(ItkmError, match="2-D"):
        P.umap_2d(np.zeros(8, np.float32))
    bad = np.ones((10, 4), np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(ItkmError, match="NaN"):
        P.umap_2d(bad)


def test_cached_projection_reuses_and_invalidates(tmp_path, monkeypatch, umap_ready):
    x, _ = _blobs(n_per=25, k=2, d=16)
    ids = np.arange(len(x), dtype=np.int64) + 100
    calls = []
    real = P.umap_2d

    def counting(feats, **kw):
        calls.append(len(feats))
        return real(feats, **kw)

    monkeypatch.setattr(P, "umap_2d", counting)
    key = "ckpt/ab:cd"  # unsafe characters are made file-name safe
    y1 = P.cached_projection(tmp_path, key, x, ids=ids)
    path = P.projection_path(tmp_path, key)
    assert path.name == "umap_ckpt_ab_cd.npy" and path.exists()
    assert not list(tmp_path.glob(".tmp-*"))
    y2 = P.cached_projection(tmp_path, key, x, ids=ids)
    np.testing.assert_array_equal(y1, y2)
    assert calls == [50]
    # same key, other image ids (new images ingested): recomputed
    P.cached_projection(tmp_path, key, x, ids=ids + 1)
    assert calls == [50, 50]
    # same key, more rows: recomputed
    x3 = np.concatenate([x, x[:5] + 0.01])
    assert P.cached_projection(tmp_path, key, x3).shape == (55, 2)
    assert calls == [50, 50, 55]
    # corrupted cache file: recomputed, not a crash
    path.write_bytes(b"not an npy")
    assert P.cached_projection(tmp_path, key, x3).shape == (55, 2)
    assert calls[-1] == 55 and len(calls) == 4


def test_cached_projection_without_cache_dir(monkeypatch):
    monkeypatch.setattr(P, "umap_2d", lambda feats, **kw: np.zeros((len(feats), 2), np.float32))
    assert P.cached_projection(None, "k", np.ones((7, 3), np.float32)).shape == (7, 2)
