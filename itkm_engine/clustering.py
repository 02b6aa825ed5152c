"""Pseudo-labels for Stage I: faiss kNN -> sparse k-reciprocal Jaccard distance -> DBSCAN.

Why this file exists
--------------------
Stage I re-clusters every group's features every epoch.  The reference recipe (Zhong et al.,
"Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017, as used by Cluster
Contrast's ``compute_jaccard_distance`` and torchreid's ``re_ranking``) builds several dense
``N x N`` matrices and loops over them in Python: fine for Market-1501, hopeless for a
100,000-crop camera network on a laptop.  Everything here keeps the *same* algorithm but stores
only what is non-zero:

1. **kNN** (``nearest_neighbors``): exhaustive faiss inner-product search on the L2-normalised
   features (BLAS; the GPU when faiss sees one).  On large CPU inputs, candidates come from a
   PCA projection and are re-ranked exactly, with the projection's recall verified on a sample
   (an IVF index lost too much recall for the reciprocal tests; see the function).  Each point's
   own id is forced into column 0, so duplicate images (which tie with it) cannot push it out.
2. **k-reciprocal encoding** (``jaccard_knn``, stage ``"encoding"``): ``R(i, k)`` = the ``j`` in
   ``i``'s first ``k+1`` neighbours (itself included) that also have ``i`` in their first ``k+1``;
   computed as the element-wise product of the sparse kNN indicator matrix with its transpose.
   The expansion rule: a member ``c`` of ``R(i, k1)`` adds its whole ``R(c, round(k1/2))`` when
   more than 2/3 of that set already lies in ``R(i, k1)`` (a sparse product counts the
   overlaps).  Over the expanded set the weights are the Gaussian kernel ``exp(-d)`` with
   ``d = 2 - 2 cos`` (the squared Euclidean distance of unit vectors), normalised to sum 1 per
   row (a softmax, exactly as Cluster Contrast).  Local query expansion then averages the rows
   of the ``k2`` nearest neighbours (itself included): ``V <- Q V`` with ``Q`` sparse.
3. **Jaccard distance** (stage ``"jaccard"``): ``d_J(i, j) = 1 - sum_k min(V_ik, V_jk) /
   sum_k max(V_ik, V_jk)``; every row of ``V`` sums to 1, so ``sum max = 2 - sum min``.  The
   minimum-overlap is accumulated through the inverted index (the columns of ``V``), fully
   vectorised over blocks of rows sized to a memory budget: for each stored ``V_ik`` the column
   ``k``'s entries ``V_jk`` are gathered, ``min`` is taken, and duplicates ``(i, j)`` are summed
   by a COO -> CSR conversion.  Only pairs that share a column are ever touched; every other
   pair has distance exactly 1.0 and is simply absent from the result.
4. **DBSCAN** (stage ``"dbscan"``): ``sklearn.cluster.DBSCAN(metric="precomputed")`` on the sparse
   matrix.  scikit-learn treats a *stored* entry ``<= eps`` as a neighbour and an absent entry as
   no neighbour (``sklearn.neighbors._base._radius_neighbors_from_graph``), so absent = distance
   1.0 is exact as long as ``eps < 1``.  The diagonal is stored as explicit zeros so each point
   counts itself towards ``min_samples`` as in the dense formulation.

Conventions that differ between the predecessors, fixed here
------------------------------------------------------------
* ``k1`` neighbours *besides* the point itself (``k1 + 1`` columns), as in Zhong et al.'s and
  torchreid's code (Cluster Contrast passes ``k1`` columns including the point itself).
* The kernel uses ``d = 2 - 2 cos`` unscaled (Cluster Contrast), not torchreid's squared
  distance divided by its column maximum (which only makes sense for a query/gallery split).
* Pseudo-labels are renumbered ``0..C-1`` in order of first appearance (the lowest image index
  of each cluster gets the lower label), so the same input always gives the same labels;
  outliers are ``-1``.

Nothing here allocates an ``N x N`` dense array.  At N = 100,000 512-d features the whole
pipeline stays within a few GB on two CPU cores (see ``benchmarks/bench_pseudo_labels.py``).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import scipy.sparse as sp

from .errors import ItkmError
from .progress import Reporter

__all__ = [
    "ClusteringInputError",
    "nearest_neighbors",
    "jaccard_knn",
    "pseudo_labels",
    "EXACT_LIMIT",
    "MIN_RECALL",
]

#: Above this many points the CPU kNN searches a verified PCA projection (then re-ranks) instead
#: of the full features.  Exhaustive search costs ``2 N^2 D`` flops: ~12 s at 50,000 x 512 on
#: two idle cores, ~4x that when the cores are shared.
EXACT_LIMIT = 30_000

#: Recall of the exact top-k the projected kNN must reach on a sample to be used.  The k-reciprocal
#: clustering is sensitive to missed neighbours (recall 0.74 gave ARI 0.36 against exact kNN).
MIN_RECALL = 0.99

_QUERY_CHUNK = 8192  # kNN queries per faiss call (a cancel check between calls)
_ROW_CHUNK = 8192  # rows per block in the sparse encoding steps
_PAIR_CHUNK = 16384  # feature pairs gathered at once (a few MB: stays cheap, no page faults)
_JACCARD_BUDGET = 4_000_000  # gathered (i, k, j) triples per block in the Jaccard step (~150 MB)


class ClusteringInputError(ItkmError):
    """The features or parameters handed to the clustering cannot be used."""


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _as_unit_features(features: np.ndarray, reporter: Reporter) -> np.ndarray:
    """float32, C-contiguous, L2-normalised [N, D]; a copy only when needed."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise ClusteringInputError(
            f"features must be a 2-D array [N, D]; got an array of shape {x.shape}"
        )
    if x.shape[0] and x.shape[1] == 0:
        raise ClusteringInputError("features have zero dimensions (shape [N, 0])")
    if not np.issubdtype(x.dtype, np.floating):
        raise ClusteringInputError(f"features must be floating point; got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] == 0:
        return x
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    if not np.all(np.isfinite(norms)):
        bad = int(np.flatnonzero(~np.isfinite(norms))[0])
        raise ClusteringInputError(f"features contain NaN or infinite values (first at row {bad})")
    if np.any(norms == 0):
        bad = int(np.flatnonzero(norms == 0)[0])
        raise ClusteringInputError(f"feature row {bad} is all zeros and has no direction")
    if np.max(np.abs(norms - 1.0)) > 1e-3:
        reporter.warning("clustering: features were not L2-normalised; normalising a copy")
        x = (x / norms[:, None]).astype(np.float32)
    return x


def _check_k(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ClusteringInputError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# 1. kNN
# --------------------------------------------------------------------------------------------
def nearest_neighbors(
    features: np.ndarray,
    k: int,
    *,
    exact_limit: int = EXACT_LIMIT,
    min_recall: float = MIN_RECALL,
    reporter: Reporter | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each point's ``k`` nearest neighbours by cosine, the point itself first.

    ``features`` are L2-normalised float32 ``[N, D]``.  Returns ``(similarities, indices)``:
    float32 and int64 ``[N, min(k, N)]``, sorted by decreasing similarity with column 0 equal to
    the row index (a duplicate image ties with the point itself; forcing self first keeps the
    k-reciprocal definition well-posed).  The similarities are exact inner products.

    Exhaustive search (``faiss.knn``, BLAS) on a GPU when faiss sees one, and on a CPU up to
    ``exact_limit`` points.  Above it on a CPU, candidates come from an exhaustive search in a
    PCA projection of the features and are re-ranked with the full features; the projection's
    size is *verified*, not assumed: it grows until the re-ranked top-``k`` of 512 sampled points
    reaches ``min_recall`` of the exact top-``k``, else the search is fully exhaustive.

    Why not an IVF index: on ReID-like features (identities of ~20 crops in a ~64-dimensional
    subspace) faiss ``IndexIVFFlat`` needed a quarter of the lists for recall 0.95, and at
    recall 0.74 the k-reciprocal clusters fell apart (ARI 0.36 against exact kNN, measured at
    N = 50k); its list scans also run far below BLAS speed.  The reciprocal-neighbour tests need
    the tail of the top-k too, so the kNN here is exact or verified near-exact.
    """
    import faiss

    reporter = reporter or Reporter()
    x = _as_unit_features(features, reporter)
    n, dim = x.shape
    k = min(_check_k("k", k), n)
    if n == 0:
        return np.zeros((0, k), dtype=np.float32), np.zeros((0, k), dtype=np.int64)
    ip = faiss.METRIC_INNER_PRODUCT
    Search = Callable[[slice], tuple[np.ndarray, np.ndarray]]
    search: Search | None = None
    kind = "exact"
    if faiss.get_num_gpus() > 0:
        try:
            gpu_index = faiss.GpuIndexFlatIP(faiss.StandardGpuResources(), dim)
            gpu_index.add(x)
            search = lambda rows: gpu_index.search(x[rows], k)  # noqa: E731
            kind = "GPU exact"
        except Exception as exc:  # noqa: BLE001 - a broken GPU setup falls back to the CPU
            reporter.warning(f"clustering: faiss GPU unavailable ({exc}); searching on the CPU")
    if search is None and n > exact_limit:
        projected = _verified_projection(x, k, min_recall, reporter)
        if projected is not None:
            z, width = projected
            search = lambda rows: _rerank(  # noqa: E731
                x, np.arange(n)[rows], faiss.knn(z[rows], z, width, ip)[1], k
            )
            kind = f"PCA-{z.shape[1]} + re-rank"
    if search is None:
        search = lambda rows: faiss.knn(x[rows], x, k, ip)  # noqa: E731

    out = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, _QUERY_CHUNK):
        reporter.check()
        stop = min(start + _QUERY_CHUNK, n)
        sims[start:stop], out[start:stop] = search(slice(start, stop))
        reporter.update(stop / n, stage="knn", message=f"{kind} kNN {stop}/{n}")
    return _self_first(sims, out)


def _rerank(
    x: np.ndarray, rows: np.ndarray, cand: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact similarities of each row's candidates, the best ``k`` in decreasing order."""
    sims = np.empty(cand.shape, dtype=np.float32)
    step = max(1, _PAIR_CHUNK // max(1, cand.shape[1]))
    for s in range(0, len(rows), step):
        sims[s : s + step] = np.einsum("id,ikd->ik", x[rows[s : s + step]], x[cand[s : s + step]])
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), np.take_along_axis(cand, order, 1)


def _verified_projection(
    x: np.ndarray, k: int, min_recall: float, reporter: Reporter
) -> tuple[np.ndarray, int] | None:
    """``(x @ basis, candidates)`` whose re-ranked kNN reaches ``min_recall``, else None.

    The basis is the top eigenvectors of the uncentred second moment ``E[x x^T]`` (it keeps the
    mean direction, which carries part of every inner product).  It starts at 95% of the energy
    and grows by 32 dimensions until a sample of 512 points finds ``min_recall`` of its exact
    top-``k``; past a third of the dimensions a projection saves too little and None is returned.
    """
    import faiss

    n, dim = x.shape
    ip = faiss.METRIC_INNER_PRODUCT
    rng = np.random.default_rng(0)
    reporter.update(0.0, stage="knn", message="choosing a projection for the kNN search")
    sample = x[np.sort(rng.choice(n, size=min(n, 10_000), replace=False))]
    moment = (sample.T @ sample).astype(np.float64) / len(sample)
    evals, evecs = np.linalg.eigh(moment)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    energy = np.cumsum(evals) / max(evals.sum(), 1e-12)
    r = 32 * math.ceil((int(np.searchsorted(energy, 0.95)) + 1) / 32)
    widths = sorted({min(n, k + max(16, k // 2)), min(n, 2 * k)})
    probe = np.sort(rng.choice(n, size=min(n, 512), replace=False))
    truth = faiss.knn(x[probe], x, k, ip)[1]
    offsets = (np.arange(len(probe), dtype=np.int64) * (n + 1))[:, None]
    truth_keys = np.sort((truth + offsets).ravel())
    recall = 0.0
    while r <= dim // 3:
        z = x @ np.ascontiguousarray(evecs[:, :r], dtype=np.float32)
        # More candidates are cheaper than more dimensions: the search cost grows with r,
        # only the re-ranking with the number of candidates.
        for width in widths:
            reporter.check()
            got = _rerank(x, probe, faiss.knn(z[probe], z, width, ip)[1], k)[1]
            recall = float(np.isin(got + offsets, truth_keys).sum()) / truth.size
            if recall >= min_recall:
                reporter.log(
                    f"clustering: kNN through a {r}-d projection ({energy[r - 1]:.1%} of the "
                    f"energy), {width} candidates re-ranked; recall@{k} {recall:.4f} on "
                    f"{len(probe)} samples"
                )
                return z, width
        r += 32
    reporter.log(
        f"clustering: no projection up to {dim // 3}-d reaches recall {min_recall} "
        f"(last {recall:.3f}); exhaustive kNN"
    )
    return None


def _self_first(sims: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put each row's own index in column 0, keeping the others in rank order."""
    n, k = idx.shape
    rows = np.arange(n, dtype=np.int64)[:, None]
    is_self = idx == rows
    absent = ~is_self.any(axis=1)
    if absent.any():  # drop the last (weakest) neighbour to make room for self
        idx, sims = idx.copy(), sims.copy()
        idx[absent, -1] = np.arange(n, dtype=np.int64)[absent]
        sims[absent, -1] = 1.0
        is_self = idx == rows
    order = np.argsort(~is_self, axis=1, kind="stable")  # self (False) first, rest in order
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(idx, order, axis=1)


def _pair_sims(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, reporter: Reporter) -> np.ndarray:
    """Cosine of the pairs (rows[t], cols[t]), gathered in cache-sized chunks."""
    out = np.empty(rows.size, dtype=np.float32)
    for s in range(0, rows.size, _PAIR_CHUNK):
        reporter.check()
        e = min(s + _PAIR_CHUNK, rows.size)
        out[s:e] = np.einsum("ij,ij->i", x[rows[s:e]], x[cols[s:e]])
    return out


# --------------------------------------------------------------------------------------------
# 2. k-reciprocal encoding
# --------------------------------------------------------------------------------------------
def _indicator(rank: np.ndarray, k: int, n: int) -> sp.csr_matrix:
    """Boolean CSR: row i holds i's first ``k + 1`` neighbours (columns sorted)."""
    cols = np.sort(rank[:, : k + 1], axis=1).astype(np.int32)
    width = cols.shape[1]
    indptr = np.arange(0, n * width + 1, width, dtype=np.int64)
    data = np.ones(n * width, dtype=bool)
    return sp.csr_matrix((data, cols.ravel(), indptr), shape=(n, n))


def _reciprocal(rank: np.ndarray, k: int, n: int) -> sp.csr_matrix:
    """R(i, k) as a boolean CSR: mutual membership in the first ``k + 1`` neighbours."""
    a = _indicator(rank, k, n)
    r = a.multiply(a.T).tocsr()
    r.sort_indices()
    return r.astype(bool)


def _row_blocks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _encode(
    x: np.ndarray,
    sims: np.ndarray,
    rank: np.ndarray,
    k1: int,
    k2: int,
    reporter: Reporter,
) -> sp.csr_matrix:
    """The k-reciprocal feature V (after local query expansion), float32 CSR, rows sum to 1."""
    n = x.shape[0]
    reporter.update(0.0, stage="encoding", message="k-reciprocal sets")
    r1 = _reciprocal(rank, k1, n)
    half = int(np.around(k1 / 2.0))
    rh = _reciprocal(rank, half, n)
    rh_f = rh.astype(np.float32)
    rh_t = rh_f.T.tocsr()
    rh_len = np.diff(rh.indptr).astype(np.float32)

    # Expansion: c in R(i,k1) contributes R(c,k1/2) when |R(c,k1/2) & R(i,k1)| > 2/3 |R(c,k1/2)|.
    blocks = []
    r1_f = r1.astype(np.float32)
    for start, stop in _row_blocks(n, _ROW_CHUNK):
        reporter.check()
        r1_blk = r1_f[start:stop]
        overlap = (r1_blk @ rh_t).multiply(r1_blk).tocsr()  # counts on R(i,k1)'s pattern
        overlap.eliminate_zeros()
        coo = overlap.tocoo()
        keep = coo.data > (2.0 / 3.0) * rh_len[coo.col]
        sel = sp.csr_matrix(
            (np.ones(int(keep.sum()), dtype=np.float32), (coo.row[keep], coo.col[keep])),
            shape=(stop - start, n),
        )
        expanded = (sel @ rh_f + r1_blk).tocsr()
        expanded.sort_indices()
        blocks.append(expanded)
        reporter.update(0.5 * stop / n, stage="encoding", message=f"expansion {stop}/{n}")
    pattern = sp.vstack(blocks, format="csr")
    del blocks, r1, r1_f, rh, rh_f, rh_t
    pattern.sort_indices()

    # Gaussian-kernel weights over each expanded set, normalised per row (softmax of -d).
    # Nearly all expanded members are among the kNN already (their cosine came with the
    # search); only the others are computed here.
    indptr, cols = pattern.indptr, pattern.indices
    counts = np.diff(indptr)
    row_of = np.repeat(np.arange(n, dtype=np.int64), counts)
    order = np.argsort(rank, axis=1, kind="stable")
    knn_keys = (np.arange(n, dtype=np.int64)[:, None] * n + np.take_along_axis(rank, order, 1)).ravel()
    knn_sims = np.take_along_axis(sims, order, 1).ravel()
    del order
    keys = row_of * n + cols
    at = np.minimum(np.searchsorted(knn_keys, keys), knn_keys.size - 1)
    found = knn_keys[at] == keys
    cos = np.where(found, knn_sims[at], np.float32(0.0)).astype(np.float32)
    del keys, at, knn_keys, knn_sims
    other = np.flatnonzero(~found)
    if other.size:
        cos[other] = _pair_sims(x, row_of[other], cols[other].astype(np.int64), reporter)
    del row_of, found, other
    weights = np.exp(-(2.0 - 2.0 * cos)).astype(np.float32)
    row_sum = np.add.reduceat(weights.astype(np.float64), indptr[:-1]) if cols.size else np.zeros(n)
    weights /= np.repeat(row_sum, counts).astype(np.float32)
    v = sp.csr_matrix((weights, cols, indptr), shape=(n, n))
    reporter.update(0.75, stage="encoding", message="local query expansion")

    # Local query expansion: average the V rows of the k2 nearest neighbours (self included).
    if k2 > 1:
        qcols = rank[:, :k2]
        width = qcols.shape[1]
        q = sp.csr_matrix(
            (
                np.full(n * width, 1.0 / width, dtype=np.float32),
                qcols.ravel().astype(np.int32),
                np.arange(0, n * width + 1, width, dtype=np.int64),
            ),
            shape=(n, n),
        )
        parts = []
        for start, stop in _row_blocks(n, _ROW_CHUNK):
            reporter.check()
            parts.append((q[start:stop] @ v).tocsr())
        v = sp.vstack(parts, format="csr")
        del parts
    v.sort_indices()
    reporter.update(1.0, stage="encoding", message=f"encoded: {v.nnz / max(n, 1):.1f} per row")
    return v


# --------------------------------------------------------------------------------------------
# 3. Jaccard distance through the inverted index
# --------------------------------------------------------------------------------------------
def _jaccard(v: sp.csr_matrix, max_distance: float, reporter: Reporter) -> sp.csr_matrix:
    """``d_J`` for every pair of rows of ``v`` sharing a column, kept where ``<= max_distance``.

    Per block of rows: for each stored ``V_ik`` gather column ``k``'s entries ``V_jk`` with
    ``j >= i`` (the inverted index; the distance is symmetric, so the lower triangle is mirrored
    at the end instead of computed), take ``min(V_ik, V_jk)``, and sum per ``(i, j)``.  The sum
    is a sparse product ``L @ R`` (``L`` maps each gathered triple to its row ``i``, ``R`` holds
    the triple's ``(j, min)``): scipy's SMMP kernel accumulates it with a dense row buffer in
    linear time, where a COO -> CSR conversion would sort every block's triples.
    """
    n = v.shape[0]
    vt = v.tocsc()  # column k -> the rows j with V_jk != 0 (the inverted index)
    vt.sort_indices()
    # For every stored V_ik: where column k's rows reach j >= i (columns are sorted by row).
    col_of_entry = np.repeat(np.arange(n, dtype=np.int64), np.diff(vt.indptr))
    csc_keys = col_of_entry * n + vt.indices
    del col_of_entry
    row_of_entry = np.repeat(np.arange(n, dtype=np.int64), np.diff(v.indptr))
    first = np.searchsorted(csc_keys, v.indices.astype(np.int64) * n + row_of_entry)
    del csc_keys, row_of_entry
    lens_all = vt.indptr[v.indices + 1] - first
    # Work per row: the number of (i, k, j) triples it gathers (every row is non-empty).
    row_work = np.add.reduceat(lens_all, v.indptr[:-1])
    cum = np.cumsum(row_work)

    out_rows: list[np.ndarray] = []
    out_cols: list[np.ndarray] = []
    out_data: list[np.ndarray] = []
    start = 0
    while start < n:
        reporter.check()
        base = cum[start - 1] if start else 0
        stop = int(np.searchsorted(cum, base + _JACCARD_BUDGET, side="right"))
        stop = min(max(stop, start + 1), n)
        b = stop - start
        lo, hi = v.indptr[start], v.indptr[stop]
        lens = lens_all[lo:hi]
        total = int(lens.sum())
        # Ragged gather of the (upper) column entries for every stored V_ik of the block.
        pos = np.repeat(first[lo:hi] - (np.cumsum(lens) - lens), lens)
        pos += np.arange(total, dtype=np.int64)
        mins = np.minimum(np.repeat(v.data[lo:hi], lens), vt.data[pos])
        j = vt.indices[pos]
        del pos
        l_indptr = np.zeros(b + 1, dtype=np.int64)
        np.cumsum(row_work[start:stop], out=l_indptr[1:])
        left = sp.csr_matrix(
            (np.ones(total, dtype=np.float32), np.arange(total, dtype=np.int64), l_indptr),
            shape=(b, total),
        )
        right = sp.csr_matrix((mins, j, np.arange(total + 1, dtype=np.int64)), shape=(total, n))
        m = (left @ right).tocsr()  # m[i, j] = sum_k min(V_ik, V_jk), for j >= i
        del left, right, mins, j
        overlap = m.data.astype(np.float64)
        dist = 1.0 - overlap / (2.0 - overlap)
        np.clip(dist, 0.0, 1.0, out=dist)
        rows = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(m.indptr))
        is_self = m.indices == rows
        dist[is_self] = 0.0  # self distance: exactly 0, and stored
        keep = (dist <= max_distance) | is_self
        out_rows.append(rows[keep])
        out_cols.append(m.indices[keep].astype(np.int64))
        out_data.append(dist[keep].astype(np.float32))
        del m, overlap, dist, rows, is_self, keep
        reporter.update(stop / n, stage="jaccard", message=f"Jaccard rows {stop}/{n}")
        start = stop

    rows = np.concatenate(out_rows)
    cols = np.concatenate(out_cols)
    data = np.concatenate(out_data)
    del out_rows, out_cols, out_data
    off = rows != cols  # mirror the strict upper triangle; the diagonal appears once
    out = sp.coo_matrix(
        (np.concatenate([data, data[off]]),
         (np.concatenate([rows, cols[off]]), np.concatenate([cols, rows[off]]))),
        shape=(n, n),
    ).tocsr()
    out.sort_indices()
    return out


def jaccard_knn(
    features: np.ndarray,
    k1: int = 30,
    k2: int = 6,
    *,
    neighbors: np.ndarray | None = None,
    max_distance: float = 1.0,
    exact_limit: int = EXACT_LIMIT,
    reporter: Reporter | None = None,
) -> sp.csr_matrix:
    """Sparse k-reciprocal Jaccard distances between all pairs of ``features``.

    Returns a float32 ``N x N`` CSR matrix (sorted indices) holding ``d_J(i, j)`` for every pair
    whose k-reciprocal encodings overlap (``d_J < 1``) and ``d_J <= max_distance``, and the
    diagonal as explicit zeros.  A pair that is absent has distance 1.0.  Pass it to DBSCAN with
    ``metric="precomputed"`` for any ``eps < 1``; lower ``max_distance`` (e.g. to ``eps``) to keep
    the result small on large N.

    ``k1``/``k2`` are clamped to ``N - 1``/``N`` on tiny inputs.  ``neighbors`` optionally gives
    precomputed neighbour indices ``[N, >= k1 + 1]`` in decreasing similarity (e.g. from the
    retrieval index); otherwise :func:`nearest_neighbors` computes them.
    """
    reporter = reporter or Reporter()
    x = _as_unit_features(features, reporter)
    n = x.shape[0]
    k1 = _check_k("k1", k1)
    k2 = _check_k("k2", k2)
    if not (0.0 <= float(max_distance) <= 1.0):
        raise ClusteringInputError(f"max_distance must lie in [0, 1]; got {max_distance!r}")
    if n == 0:
        return sp.csr_matrix((0, 0), dtype=np.float32)
    k1 = min(k1, n - 1)
    k2 = min(k2, n)
    width = max(k1 + 1, k2)

    knn_rep = reporter.child(0.0, 0.4)
    if neighbors is None:
        sims, rank = nearest_neighbors(x, width, exact_limit=exact_limit, reporter=knn_rep)
    else:
        rank = np.asarray(neighbors)
        if rank.ndim != 2 or rank.shape[0] != n or rank.shape[1] < width:
            raise ClusteringInputError(
                f"neighbors must have shape [{n}, >= {width}]; got {rank.shape}"
            )
        if not np.issubdtype(rank.dtype, np.integer) or rank.min() < 0 or rank.max() >= n:
            raise ClusteringInputError("neighbors must hold valid row indices 0..N-1")
        rank = rank[:, :width].astype(np.int64)
        if width > 1 and np.any(np.diff(np.sort(rank, axis=1), axis=1) == 0):
            raise ClusteringInputError("neighbors must not repeat an index within a row")
        rows = np.repeat(np.arange(n, dtype=np.int64), width)
        sims = _pair_sims(x, rows, rank.ravel(), knn_rep).reshape(n, width)
        del rows
        sims, rank = _self_first(sims, rank)
        knn_rep.update(1.0, stage="knn", message="precomputed neighbours")

    v = _encode(x, sims, rank, k1, k2, reporter.child(0.4, 0.6))
    del rank, sims
    return _jaccard(v, float(max_distance), reporter.child(0.6, 1.0))


# --------------------------------------------------------------------------------------------
# 4. DBSCAN
# --------------------------------------------------------------------------------------------
def pseudo_labels(
    features: np.ndarray,
    *,
    k1: int = 30,
    k2: int = 6,
    eps: float = 0.6,
    min_samples: int = 4,
    exact_limit: int = EXACT_LIMIT,
    reporter: Reporter | None = None,
) -> np.ndarray:
    """Cluster L2-normalised ``features`` [N, D] into pseudo-identities (Stage I).

    k-reciprocal Jaccard distance (:func:`jaccard_knn`) then DBSCAN(``eps``, ``min_samples``,
    precomputed).  Returns int64 ``[N]``: ``-1`` for outliers, clusters numbered ``0..C-1`` in
    order of first appearance (the cluster holding the lowest row index is 0).  Deterministic.
    ``eps`` must be in ``(0, 1)``: absent pairs have Jaccard distance 1.
    """
    from sklearn.cluster import DBSCAN

    reporter = reporter or Reporter()
    if not (0.0 < float(eps) < 1.0):
        raise ClusteringInputError(
            f"eps must lie strictly between 0 and 1 (Jaccard distance); got {eps!r}"
        )
    min_samples = _check_k("min_samples", min_samples)
    dist = jaccard_knn(
        features,
        k1,
        k2,
        max_distance=float(eps),
        exact_limit=exact_limit,
        reporter=reporter.child(0.0, 0.9),
    )
    n = dist.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    reporter.check()
    reporter.update(0.9, stage="dbscan", message=f"DBSCAN on {dist.nnz} pairs")
    raw = DBSCAN(eps=float(eps), min_samples=min_samples, metric="precomputed").fit(dist).labels_
    labels = _renumber(np.asarray(raw, dtype=np.int64))
    n_clusters = int(labels.max()) + 1 if labels.size else 0
    n_out = int((labels < 0).sum())
    reporter.update(1.0, stage="dbscan", message=f"{n_clusters} clusters, {n_out} outliers")
    reporter.log(f"pseudo-labels: {n} points -> {n_clusters} clusters, {n_out} outliers")
    return labels


def _renumber(raw: np.ndarray) -> np.ndarray:
    """Clusters 0..C-1 in order of first appearance; -1 stays -1."""
    out = np.full(raw.shape, -1, dtype=np.int64)
    inl = raw >= 0
    if inl.any():
        uniq, first = np.unique(raw[inl], return_index=True)
        order = np.argsort(first, kind="stable")
        new_id = np.empty(uniq.size, dtype=np.int64)
        new_id[order] = np.arange(uniq.size, dtype=np.int64)
        out[inl] = new_id[np.searchsorted(uniq, raw[inl])]
    return out
