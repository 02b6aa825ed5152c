"""2-D UMAP of retrieval features, for the Clusters view; cached per checkpoint.

The plain ``umap.UMAP(...).fit_transform`` is too slow and too rude for an interactive tool at
100k points on a laptop-class CPU: pynndescent's neighbour search and UMAP's per-epoch layout
kernel are numba functions that hold the GIL for seconds at a time (the GUI thread freezes even
though the work runs on a worker thread), nothing in between can be cancelled, and spectral
initialisation of a 100k graph can take minutes.  So :func:`umap_2d` runs the same algorithm in
explicit steps:

1. ``reduce``: PCA to at most 64 dimensions (BLAS, releases the GIL).  Neighbourhoods of
   L2-normalised CLIP features survive this well and every later step gets ~8x cheaper.
2. ``neighbors``: k nearest neighbours with faiss (exact below ``EXACT_KNN_LIMIT`` points, HNSW
   above), in chunks -- faiss releases the GIL, and ``reporter.check()`` runs between chunks.
3. ``layout``: ``umap.UMAP(precomputed_knn=...)`` builds the fuzzy graph and optimises the
   layout.  Its epoch kernel is recompiled with ``nogil=True`` (same Python source, see
   :func:`_install_nogil_layout`), and a tqdm hook reports every epoch and checks for cancel.

Parameters adapt to N: spectral init and UMAP's default epochs (500) for small sets, PCA init
(the first two principal components, as openTSNE / scanpy do for large data) and fewer epochs
above 10k and 50k points.  Above ``PARALLEL_LIMIT`` points the layout runs multi-threaded, which
UMAP only allows without a fixed random state: large projections are then not bit-for-bit
reproducible, which is fine because they are cached per checkpoint and computed once.

Numba compiles UMAP's kernels on first use (~10 s per process); :func:`warm_up` does that on a
tiny input so the app can pay it in the background at start-up.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np

from .atomic import atomic_save_npy
from .errors import ItkmError, NothingToDoError
from .progress import Reporter

__all__ = ["umap_2d", "cached_projection", "projection_path", "warm_up", "umap_parameters"]

#: Reduce features to this many dimensions (PCA) before the neighbour search.
PCA_DIMS = 64
#: Exact (brute-force) faiss kNN up to this many points; HNSW above.
EXACT_KNN_LIMIT = 20_000
#: Multi-threaded layout above this many points (no fixed seed there).
PARALLEL_LIMIT = 20_000
#: Rows per faiss add/search call: the granularity of progress and cancel.
KNN_CHUNK = 4096

_patch_lock = threading.Lock()
_patched = False


def umap_parameters(n: int) -> dict:
    """The UMAP settings used for ``n`` points (documented here so the choice is visible)."""
    n_neighbors = int(max(2, min(15, n - 1)))
    if n <= 10_000:
        n_epochs = None  # UMAP's default: 500 below 10k points
        init = "spectral" if n > n_neighbors + 2 else "random"
    elif n <= 50_000:
        n_epochs, init = 200, "pca"
    else:
        n_epochs, init = 120, "pca"
    return {
        "n_neighbors": n_neighbors,
        "n_epochs": n_epochs,
        "init": init,
        "parallel": n > PARALLEL_LIMIT,
        "min_dist": 0.1,
        "low_memory": True,
    }


def umap_2d(feats: np.ndarray, *, seed: int = 0, reporter: Reporter | None = None) -> np.ndarray:
    """2-D UMAP layout of ``feats`` (N x D, any float dtype) -> float32 array N x 2.

    Reports ``job="projection"`` events with stages ``reduce``, ``neighbors`` and ``layout``
    (``epoch``/``epochs`` during the layout) and is cancellable between chunks and epochs.
    """
    reporter = reporter or Reporter(job="projection")
    x = np.asarray(feats)
    if x.ndim != 2:
        raise ItkmError(f"features must be a 2-D array (N x D), got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
        raise NothingToDoError("there are no features to project yet")
    if not np.isfinite(x).all():
        raise ItkmError("features contain NaN or infinite values; re-extract them")
    if n <= 3:  # UMAP needs a neighbourhood; a handful of points gets a trivial layout
        out = np.zeros((n, 2), np.float32)
        out[:, 0] = np.arange(n, dtype=np.float32)
        reporter.update(1.0, stage="layout", message="done")
        return out

    params = umap_parameters(n)
    reporter.update(0.0, stage="reduce", message=f"reducing {n:,} x {x.shape[1]} features")
    xr = _reduce(x.astype(np.float32, copy=False), seed)
    reporter.check()

    knn_rep = reporter.child(0.05, 0.35)
    knn_idx, knn_dist = knn(xr, params["n_neighbors"], reporter=knn_rep)

    reporter.check()
    layout_rep = reporter.child(0.35, 1.0)
    layout_rep.update(0.0, stage="layout", message="building the neighbour graph")
    return _layout(xr, knn_idx, knn_dist, params, seed, layout_rep)


def _reduce(x: np.ndarray, seed: int) -> np.ndarray:
    """PCA to at most ``PCA_DIMS`` dimensions (centred), float32."""
    n, d = x.shape
    if d <= PCA_DIMS or n <= PCA_DIMS:
        return np.ascontiguousarray(x - x.mean(axis=0), dtype=np.float32)
    from sklearn.decomposition import PCA

    solver = "randomized" if n > 5 * PCA_DIMS else "full"
    pca = PCA(n_components=PCA_DIMS, svd_solver=solver, random_state=seed)
    return np.ascontiguousarray(pca.fit_transform(x), dtype=np.float32)


def knn(x: np.ndarray, k: int, *, reporter: Reporter | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each point's ``k`` nearest neighbours (itself first, distance 0), euclidean.

    Returns ``(indices int64[N,k], distances float32[N,k])`` in the format UMAP's
    ``precomputed_knn`` expects.  Exact below ``EXACT_KNN_LIMIT`` points, HNSW above.
    """
    import faiss

    reporter = reporter or Reporter(job="projection")
    n, d = x.shape
    x = np.ascontiguousarray(x, dtype=np.float32)
    if n <= EXACT_KNN_LIMIT:
        index = faiss.IndexFlatL2(d)
        index.add(x)
        build = 0.0
    else:
        # M=16 / efConstruction=48: ~0.95 recall@15 on 64-d PCA features, which is plenty for a
        # 2-D picture, at about half the build time of M=32
        index = faiss.IndexHNSWFlat(d, 16)
        index.hnsw.efConstruction = 48
        build = 0.6
        for lo in range(0, n, KNN_CHUNK * 4):
            reporter.check()
            index.add(x[lo : lo + KNN_CHUNK * 4])
            reporter.update(build * min(1.0, (lo + KNN_CHUNK * 4) / n), stage="neighbors",
                            message=f"indexing {min(n, lo + KNN_CHUNK * 4):,} / {n:,} points")
        index.hnsw.efSearch = max(64, 2 * k)
    kk = min(k + 1, n)
    idx = np.empty((n, kk), np.int64)
    dist = np.empty((n, kk), np.float32)
    for lo in range(0, n, KNN_CHUNK):
        reporter.check()
        d2, i = index.search(x[lo : lo + KNN_CHUNK], kk)
        idx[lo : lo + len(i)] = i
        dist[lo : lo + len(i)] = d2
        done = min(n, lo + KNN_CHUNK)
        reporter.update(build + (1 - build) * done / n, stage="neighbors",
                        message=f"neighbours of {done:,} / {n:,} points")
    return _self_first(idx, dist, k)


def _self_first(idx: np.ndarray, d2: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Put each point itself in column 0 (UMAP's convention) and keep ``k`` columns.

    faiss may return a duplicate point before the point itself, or (HNSW) miss it, or pad with
    -1 when a graph search finds fewer than asked: all handled here.
    """
    n = idx.shape[0]
    rows = np.arange(n)
    is_self = idx == rows[:, None]
    # drop self wherever it appears, and -1 padding; keep order of the rest
    keep = ~is_self & (idx >= 0)
    out_idx = np.empty((n, k), np.int64)
    out_d = np.zeros((n, k), np.float32)
    out_idx[:, 0] = rows
    order = np.argsort(~keep, axis=1, kind="stable")  # kept columns first, in order
    take = np.take_along_axis(idx, order, 1)[:, : k - 1]
    take_d = np.take_along_axis(d2, order, 1)[:, : k - 1]
    valid = np.take_along_axis(keep, order, 1)[:, : k - 1]
    # rows short of neighbours (HNSW padding) repeat their last valid neighbour
    if not valid.all():
        for r in np.nonzero(~valid.all(axis=1))[0]:
            good = np.nonzero(valid[r])[0]
            last = good[-1] if len(good) else None
            for c in np.nonzero(~valid[r])[0]:
                take[r, c] = take[r, last] if last is not None else r
                take_d[r, c] = take_d[r, last] if last is not None else 0.0
    out_idx[:, 1:] = take
    out_d[:, 1:] = np.sqrt(np.maximum(take_d, 0.0))
    return out_idx, out_d


def _install_nogil_layout() -> None:
    """Recompile UMAP's per-epoch layout kernel with ``nogil=True``.

    ``umap.layouts`` compiles ``_optimize_layout_euclidean_single_epoch`` with plain
    ``numba.njit``, which keeps the GIL for the whole epoch (~0.5 s at 100k points), so a GUI
    thread stalls for that long even though the projection runs elsewhere.  The kernel is
    nopython code touching only arrays, so releasing the GIL is safe; we compile the *same*
    Python function with ``nogil=True`` and put it where ``umap.layouts`` looks it up.  If a
    future umap-learn moves these names, we leave it alone (correct, just less responsive).
    """
    global _patched
    with _patch_lock:
        if _patched:
            return
        import numba
        import umap.layouts as L

        src = getattr(L, "_optimize_layout_euclidean_single_epoch", None)
        if src is not None and hasattr(L, "_nb_optimize_layout_euclidean_single_epoch"):
            L._nb_optimize_layout_euclidean_single_epoch = numba.njit(
                src, fastmath=True, parallel=False, nogil=True)
            L._nb_optimize_layout_euclidean_single_epoch_parallel = numba.njit(
                src, fastmath=True, parallel=True, nogil=True)
        _patched = True


class _EpochHook:
    """A file-like object for UMAP's tqdm: turns its "n/total" writes into progress + cancel."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self._pat = re.compile(r"(\d+)/(\d+)")

    def write(self, s: str) -> int:
        m = self._pat.search(s)
        if m:
            done, total = int(m.group(1)), int(m.group(2))
            if total:
                self.reporter.update(done / total, stage="layout", epoch=done, epochs=total,
                                     message=f"layout epoch {done} / {total}")
        self.reporter.check()  # raises Cancelled out of UMAP's epoch loop
        return len(s)

    def flush(self) -> None:
        pass


def _layout(xr: np.ndarray, knn_idx: np.ndarray, knn_dist: np.ndarray, params: dict, seed: int,
            reporter: Reporter) -> np.ndarray:
    import warnings

    import umap

    _install_nogil_layout()
    init: str | np.ndarray = params["init"]
    if init == "pca" and xr.shape[1] < 2:
        init = "random"
    if init == "pca":
        # first two principal components (xr is the centred PCA projection), scaled to UMAP's
        # usual init range; deterministic, linear-time, and keeps global structure
        init = xr[:, :2].astype(np.float64)
        init = 10.0 * init / max(float(np.abs(init).max()), 1e-12)
        init = init.astype(np.float32)
    parallel = params["parallel"]
    model = umap.UMAP(
        n_neighbors=params["n_neighbors"],
        n_components=2,
        metric="euclidean",
        n_epochs=params["n_epochs"],
        min_dist=params["min_dist"],
        init=init,
        low_memory=params["low_memory"],
        random_state=None if parallel else seed,
        n_jobs=-1 if parallel else 1,
        precomputed_knn=(knn_idx, knn_dist),
        verbose=False,
        tqdm_kwds={"disable": False, "file": _EpochHook(reporter), "mininterval": 0.2,
                   "bar_format": "{n}/{total}", "ascii": True},
    )
    with warnings.catch_warnings():
        # UMAP warns about disconnected vertices / spectral fallbacks on tiny or duplicate-rich
        # sets; the layout is still valid, and the engine reports through its reporter instead
        warnings.simplefilter("ignore")
        y = model.fit_transform(xr)
    reporter.update(1.0, stage="layout", message="done")
    return np.ascontiguousarray(y, dtype=np.float32)


# -- cache ---------------------------------------------------------------------------------

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def projection_path(cache_dir: str | Path, key: str) -> Path:
    """``cache_dir/umap_<key>.npy`` (the key made safe for a file name)."""
    safe = _SAFE.sub("_", str(key)).strip("._") or "default"
    return Path(cache_dir) / f"umap_{safe}.npy"


def load_cached_projection(cache_dir: str | Path, key: str, n: int, *, ids: np.ndarray | None = None
                           ) -> np.ndarray | None:
    """The layout stored for ``key`` if it has ``n`` rows (and was made for ``ids``), else
    ``None``.  Reads only numpy files: no UMAP import, so a cached map shows in milliseconds
    (also from a read-only workspace)."""
    path = projection_path(cache_dir, key)
    ids_path = path.with_suffix(".ids.npy")
    if not path.exists():
        return None
    try:
        y = np.load(path, allow_pickle=False)
        if ids is not None and not (ids_path.exists() and np.array_equal(np.load(ids_path, allow_pickle=False),
                                                                         np.asarray(ids, np.int64))):
            return None
    except (OSError, ValueError):
        return None  # unreadable cache: recomputed and overwritten
    return y.astype(np.float32, copy=False) if y.shape == (n, 2) else None


def cached_projection(
    cache_dir: str | Path | None,
    key: str,
    feats: np.ndarray,
    reporter: Reporter | None = None,
    *,
    ids: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The UMAP of ``feats``, computed once per ``key`` (normally the checkpoint key).

    Stored atomically as ``cache_dir/umap_<key>.npy``.  A cached layout is reused only when it
    has one row per feature and, if ``ids`` is given, was made for the same image ids (stored
    beside it as ``umap_<key>.ids.npy``): ingesting more images under the same checkpoint
    recomputes it instead of showing a misaligned plot.  ``cache_dir=None`` (a read-only
    workspace) computes without caching.
    """
    reporter = reporter or Reporter(job="projection")
    if cache_dir is None:
        return umap_2d(feats, seed=seed, reporter=reporter)
    path = projection_path(cache_dir, key)
    ids_path = path.with_suffix(".ids.npy")
    n = int(np.asarray(feats).shape[0]) if np.ndim(feats) else 0
    y = load_cached_projection(cache_dir, key, n, ids=ids)
    if y is not None:
        reporter.update(1.0, stage="layout", message="projection loaded from cache")
        return y
    y = umap_2d(feats, seed=seed, reporter=reporter)
    if ids is not None:
        atomic_save_npy(ids_path, np.asarray(ids, np.int64))
    atomic_save_npy(path, y)
    return y


def warm_up() -> None:
    """Compile UMAP's numba kernels on a tiny input (both serial and parallel layouts).

    Costs ~10 s once per process; the app runs it in the background at start so the first real
    projection does not pay it.
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6 * PCA_DIMS, 2 * PCA_DIMS)).astype(np.float32)
    xr = _reduce(x, 0)  # imports and runs the PCA path too
    idx, dist = knn(xr, 5)
    for parallel in (False, True):
        params = {**umap_parameters(len(x)), "n_neighbors": 5, "n_epochs": 5, "init": "pca",
                  "parallel": parallel}
        _layout(xr, idx, dist, params, 0, Reporter(job="projection"))
