"""Nearest-neighbour search over retrieval features, and k-reciprocal re-ranking.

Features are L2-normalised, so cosine similarity is the inner product and faiss's ``METRIC_INNER_PRODUCT``
ranks exactly as cosine does.

:class:`FeatureIndex` is exact (``IndexFlatIP``) up to ``exact_limit`` vectors: below a few hundred
thousand a brute-force scan is fast enough and nothing can be missed.  Above it the index is
an inverted file with full vectors (IVF-Flat), chosen by measurement on 2 CPU cores
(``benchmarks/bench_query.py --n 200000 --compare``, 512-d clustered features, top-100):

    IVF-Flat (nlist 512, tuned nprobe 11)  build  42 s   1.4 ms/query   recall@100 0.964
    IVF-PQ64 (nlist 512, nprobe 16 / 64)   build 107 s   0.9 / 2.0 ms   recall@100 0.795 (PQ-limited)
    HNSW32 (efSearch 128 / 256)            build 192 s   1.5 / 2.3 ms   recall@100 0.984 / 0.996

HNSW searches as well or better but builds ~5x slower (and superlinearly: the index is rebuilt
after every training round), PQ cannot reach the recall target.  At 1M x 512 IVF-Flat builds in
~90 s and answers in ~4 ms with recall@100 ~0.97.  ``nprobe`` is chosen at build time by
measuring recall against the exact answer on a sample of the data, so it follows the data's
real cluster structure instead of a rule of thumb.

:func:`k_reciprocal_rerank` is the re-ranking of Zhong et al. (CVPR 2017) applied, per query,
inside the query's top-N candidate set: the k-reciprocal sets, their expansion, the Gaussian
encoding, query expansion and the Jaccard distance are all computed among the ``N + 1`` local
items (a few ``(N+1) x (N+1)`` batched matrix products per query), so the cost does not depend
on the gallery size and there is never a query x gallery dense matrix.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_open
from .errors import ItkmError
from .progress import Reporter

__all__ = [
    "FeatureIndexError",
    "FeatureIndex",
    "k_reciprocal_rerank",
    "rerank_query",
    "search_features",
]

# faiss's GPU indexes answer at most this many neighbours (and probe at most this many lists).
_GPU_MAX_K = 2048
# Below this many vectors an IVF index is never built: the exact scan is as fast and exact.
_MIN_IVF = 1000
# nprobe tuning: sampled rows used as queries, and the recall margin over the target that absorbs
# the sampling error (~0.005 standard error with 512 queries) and indexed-vs-new-query drift.
_TUNE_QUERIES = 512
_TUNE_MARGIN = 0.01


class FeatureIndexError(ItkmError):
    """A feature index cannot be built, searched, saved or loaded with the given input."""


def _faiss():
    import faiss  # imported lazily: heavy, and only needed here

    return faiss


# -- the index ----------------------------------------------------------------------------------


class FeatureIndex:
    """Top-k inner-product search over a fixed set of L2-normalised feature vectors.

    Result ``idx`` are row numbers in the array the index was built from; a slot that could not
    be filled (``k`` larger than what the probed IVF lists hold) has ``idx == -1`` and
    ``sims == -inf``.
    """

    def __init__(self, index: Any, kind: str, *, gpu: int | None = None, resources: Any = None) -> None:
        # Use :meth:`build` or :meth:`load`; this wraps an existing faiss index.
        self._index = index
        self.kind = kind
        self.gpu = gpu  # faiss GPU id the index lives on, None = CPU
        self._resources = resources  # keeps faiss.StandardGpuResources alive with the index
        self.tuned_recall: float | None = None  # recall measured when nprobe was tuned

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        feats: np.ndarray,
        *,
        exact_limit: int = 200_000,
        use_gpu: bool | str = "auto",
        device: Any = None,
        nlist: int | None = None,
        nprobe: int | None = None,
        target_recall: float = 0.95,
        tune_k: int = 100,
        seed: int = 0,
        reporter: Reporter | None = None,
    ) -> "FeatureIndex":
        """Index ``feats`` (``[N, D]``, L2-normalised; converted to float32).

        ``N <= exact_limit`` (or ``N < 1000``, where an IVF has nothing to gain) gives an exact
        ``IndexFlatIP``; above, an IVF-Flat index with
        ``nlist`` lists (default ``2**round(log2(sqrt(N)))``) trained with spherical k-means on
        ``64 * nlist`` rows sampled with ``seed``.  Unless ``nprobe`` is given it is tuned: the
        smallest value whose recall@``tune_k`` on 512 sampled rows (their own row excluded)
        reaches ``target_recall`` + 0.01 against the exact answer (the margin covers the
        sampling error, so new queries meet ``target_recall``).

        ``use_gpu``: ``"auto"`` (a GPU when faiss sees one), ``True`` (required) or ``False``.
        ``device`` (a ``torch.device`` or string), when given, decides instead: ``cuda[:i]`` puts
        the index on GPU ``i``, ``cpu`` keeps it on the CPU.
        """
        reporter = reporter or Reporter()
        faiss = _faiss()
        x = _as_features(feats, "feats")
        n, dim = x.shape
        gpu = _choose_gpu(use_gpu, device)

        if n <= exact_limit or n < _MIN_IVF:
            cpu_index = faiss.IndexFlatIP(dim)
            out = cls._place(cpu_index, "exact", gpu)
            out._add(x, reporter)
            reporter.update(1.0, stage="index", message=f"exact index over {n} features")
            return out

        if nlist is None:
            nlist = int(2 ** round(np.log2(np.sqrt(n))))
        nlist = int(min(max(nlist, 1), max(n // 39, 1)))  # faiss wants >= 39 training points per list
        quantizer = faiss.IndexFlatIP(dim)
        cpu_index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)  # keeps a ref to quantizer
        out = cls._place(cpu_index, "ivf-flat", gpu)
        with contextlib.suppress(AttributeError):  # k-means settings, on whichever index trains
            out._index.cp.spherical = True  # centroids on the sphere, like the data
            out._index.cp.seed = seed

        rng = np.random.default_rng(seed)
        n_train = min(n, 64 * nlist)
        sample = np.sort(rng.choice(n, n_train, replace=False)) if n_train < n else np.arange(n)
        reporter.update(0.0, stage="index", message=f"training {nlist} lists on {n_train} features")
        reporter.check()
        out._index.train(np.ascontiguousarray(x[sample]))
        out._add(x, reporter.child(0.3, 0.8))
        reporter.check()
        if nprobe is None:
            out._tune_nprobe(x, k=min(tune_k, n - 1), target=min(target_recall + _TUNE_MARGIN, 1.0), seed=seed, reporter=reporter)
        else:
            out.nprobe = nprobe
        reporter.update(1.0, stage="index", message=f"ivf-flat index: nlist {nlist}, nprobe {out.nprobe}")
        return out

    @classmethod
    def _place(cls, cpu_index: Any, kind: str, gpu: int | None) -> "FeatureIndex":
        if gpu is None:
            return cls(cpu_index, kind)
        faiss = _faiss()
        resources = faiss.StandardGpuResources()
        return cls(faiss.index_cpu_to_gpu(resources, gpu, cpu_index), kind, gpu=gpu, resources=resources)

    def _add(self, x: np.ndarray, reporter: Reporter, chunk: int = 100_000) -> None:
        for start in range(0, x.shape[0], chunk):
            reporter.check()
            self._index.add(np.ascontiguousarray(x[start : start + chunk]))
            reporter.update(min(start + chunk, x.shape[0]) / x.shape[0], stage="index", message="adding features")

    def _tune_nprobe(self, x: np.ndarray, *, k: int, target: float, seed: int, reporter: Reporter) -> None:
        """Smallest nprobe whose recall@k on sampled rows reaches ``target`` (doubling, then bisection)."""
        faiss = _faiss()
        n = x.shape[0]
        rng = np.random.default_rng(seed + 1)
        rows = np.sort(rng.choice(n, min(_TUNE_QUERIES, n), replace=False))
        queries = np.ascontiguousarray(x[rows])
        _, exact = faiss.knn(queries, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        truth = [set(r[r != q][:k].tolist()) for r, q in zip(exact, rows)]

        def recall(p: int) -> float:
            reporter.check()
            self.nprobe = p
            _, found = self._index.search(queries, k + 1)
            hits = sum(len(t & set(f[f != q][:k].tolist())) for t, f, q in zip(truth, found, rows))
            return hits / (k * len(rows))

        limit = min(self.nlist, _GPU_MAX_K) if self.gpu is not None else self.nlist
        lo, hi, p = 0, None, 1
        scores: dict[int, float] = {}
        while p <= limit:
            scores[p] = recall(p)
            if scores[p] >= target:
                hi = p
                break
            lo = p
            p *= 2
        if hi is None:  # even probing everything (up to the limit) misses the target
            hi = limit
            scores.setdefault(hi, recall(hi))
        while hi - lo > 1:
            mid = (lo + hi) // 2
            scores[mid] = recall(mid)
            if scores[mid] >= target:
                hi = mid
            else:
                lo = mid
        self.nprobe = hi
        self.tuned_recall = scores[hi]
        reporter.log(f"ivf nprobe {hi} of {self.nlist} lists: recall@{k} {scores[hi]:.3f} on {len(rows)} sampled rows")

    # -- properties -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def nlist(self) -> int | None:
        return int(self._index.nlist) if self.kind != "exact" else None

    @property
    def nprobe(self) -> int | None:
        return int(self._index.nprobe) if self.kind != "exact" else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.kind == "exact":
            raise FeatureIndexError("an exact index has no nprobe")
        value = int(value)
        if value < 1:
            raise FeatureIndexError(f"nprobe must be at least 1, got {value}")
        limit = min(self.nlist, _GPU_MAX_K) if self.gpu is not None else self.nlist
        self._index.nprobe = min(value, limit)

    def __repr__(self) -> str:
        where = f"gpu:{self.gpu}" if self.gpu is not None else "cpu"
        extra = f", nlist={self.nlist}, nprobe={self.nprobe}" if self.kind != "exact" else ""
        return f"FeatureIndex(kind={self.kind!r}, n={len(self)}, dim={self.dim}{extra}, {where})"

    # -- search ---------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` most similar rows for each query: ``(sims float32 [Q,k], idx int64 [Q,k])``.

        A single vector ``[D]`` is taken as one query.  ``k`` larger than the index is clipped
        to its size.
        """
        q = _as_features(queries, "queries", normalised=False)
        if q.shape[1] != self.dim:
            raise FeatureIndexError(f"queries have dimension {q.shape[1]} but the index holds dimension {self.dim}")
        if k < 1:
            raise FeatureIndexError(f"k must be at least 1, got {k}")
        if len(self) == 0:
            raise FeatureIndexError("the index is empty")
        k = min(int(k), len(self))
        if self.gpu is not None and k > _GPU_MAX_K:
            raise FeatureIndexError(f"a GPU index returns at most {_GPU_MAX_K} neighbours per query; asked for {k}")
        sims, idx = self._index.search(q, k)
        sims = np.asarray(sims, dtype=np.float32)
        idx = np.asarray(idx, dtype=np.int64)
        sims[idx < 0] = -np.inf
        return sims, idx

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` atomically (faiss's own format; readable by ``faiss.read_index``)."""
        faiss = _faiss()
        index = faiss.index_gpu_to_cpu(self._index) if self.gpu is not None else self._index
        with atomic_open(path, "wb") as fh:
            writer = faiss.PyCallbackIOWriter(fh.write)
            try:
                faiss.write_index(index, writer)
            finally:
                del writer  # flushes faiss's buffered writes into fh before it is closed

    @classmethod
    def load(cls, path: str | Path, *, use_gpu: bool | str = "auto", device: Any = None) -> "FeatureIndex":
        """Read an index written by :meth:`save`; placement as in :meth:`build`."""
        faiss = _faiss()
        path = Path(path)
        if not path.is_file():
            raise FeatureIndexError(f"no index file at {path}")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise FeatureIndexError(f"{path} is not a readable faiss index ({str(exc).splitlines()[0]})") from exc
        kind = _kind_of(index)
        if kind is None:
            raise FeatureIndexError(f"{path} holds a {type(index).__name__}, not an index written by ITKM Studio")
        return cls._place(index, kind, _choose_gpu(use_gpu, device))


def _kind_of(index: Any) -> str | None:
    faiss = _faiss()
    if isinstance(index, faiss.IndexIVFFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT:
        return "ivf-flat"
    if isinstance(index, faiss.IndexFlat) and index.metric_type == faiss.METRIC_INNER_PRODUCT:
        return "exact"
    return None


def _choose_gpu(use_gpu: bool | str, device: Any) -> int | None:
    """The faiss GPU id to use, or None for the CPU."""
    if device is not None:
        text = str(device)
        if not text.startswith("cuda"):
            return None
        gpu = int(text.split(":", 1)[1]) if ":" in text else 0
        n = _num_gpus()
        if gpu >= n:
            raise FeatureIndexError(f"device {text} asked for, but faiss sees {n} GPU(s)")
        return gpu
    if use_gpu not in (True, False, "auto"):
        raise FeatureIndexError(f"use_gpu must be True, False or 'auto', got {use_gpu!r}")
    if use_gpu is False:
        return None
    n = _num_gpus()
    if n == 0:
        if use_gpu is True:
            raise FeatureIndexError("a GPU index was asked for, but faiss sees no GPU")
        return None
    return 0


def _num_gpus() -> int:
    faiss = _faiss()
    with contextlib.suppress(AttributeError):  # a CPU-only faiss build has no GPU functions
        return int(faiss.get_num_gpus())
    return 0


def _as_features(a: Any, name: str, *, normalised: bool = True) -> np.ndarray:
    """``a`` as a C-contiguous float32 ``[N, D]`` array, checked."""
    x = np.asarray(a)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0:
        raise FeatureIndexError(f"{name} must be a 2-D array [N, D], got shape {np.shape(a)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[0] == 0:
        raise FeatureIndexError(f"{name} is empty")
    if normalised:
        # Checked in chunks: a norm far from 1 means cosine ranking would silently be wrong.
        for start in range(0, x.shape[0], 65536):
            block = x[start : start + 65536]
            norms = np.sqrt(np.einsum("ij,ij->i", block, block))
            bad = ~(np.abs(norms - 1.0) <= 1e-2)  # also catches NaN/inf
            if bad.any():
                i = start + int(np.argmax(bad))
                raise FeatureIndexError(f"{name} must be L2-normalised finite vectors; row {i} has norm {norms[i - start]:.4g}")
    elif not np.isfinite(x).all():
        raise FeatureIndexError(f"{name} contains NaN or infinite values")
    return x


# -- k-reciprocal re-ranking ----------------------------------------------------------------------


def k_reciprocal_rerank(
    query_feats: np.ndarray,
    gallery_feats: np.ndarray,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    top_n: int = 200,
    index: FeatureIndex | None = None,
    batch_size: int = 64,
    device: Any = None,
    reporter: Reporter | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank each query's top-``top_n`` gallery candidates with k-reciprocal encoding.

    Zhong et al.'s algorithm (as in their ``re_ranking``: squared Euclidean distance on the
    unit vectors normalised by each row's maximum, k-reciprocal sets with ``k1``, expansion by
    the ``round(k1/2)``-reciprocal sets that overlap by more than 2/3, Gaussian weights,
    query expansion over ``k2`` neighbours, Jaccard distance, final distance
    ``(1 - lambda) * jaccard + lambda * original``) run on the local set {query} U candidates of
    each query.  ``k1`` and ``k2`` are clipped to the local set's size.  The encodings are kept
    in float32 (the reference stores them in float16).

    Candidates come from ``index`` (built over ``gallery_feats``; pass it for a large gallery),
    else from an exact blocked scan of ``gallery_feats``.  The local computation runs in torch
    on ``device`` (default CPU), ``batch_size`` queries at a time (fewer when ``top_n`` is
    large, to bound memory).  Returns ``(sims, idx)``, both ``[Q, top_n]``, sorted by the
    re-ranked distance; ``sims`` is ``1 - final distance``.  Slots without a candidate have ``idx == -1`` and ``sims == -inf``.
    """
    reporter = reporter or Reporter()
    q = _as_features(query_feats, "query_feats")
    # The gallery may be large and is only read at the candidates' rows: checked there, not copied.
    g = np.asarray(gallery_feats)
    if g.ndim != 2 or g.shape[0] == 0:
        raise FeatureIndexError(f"gallery_feats must be a non-empty 2-D array [N, D], got shape {g.shape}")
    if q.shape[1] != g.shape[1]:
        raise FeatureIndexError(f"query dimension {q.shape[1]} differs from gallery dimension {g.shape[1]}")
    if k1 < 1 or k2 < 1 or top_n < 1:
        raise FeatureIndexError(f"k1, k2 and top_n must be at least 1 (got {k1}, {k2}, {top_n})")
    if not 0.0 <= lambda_value <= 1.0:
        raise FeatureIndexError(f"lambda_value must lie in [0, 1], got {lambda_value}")
    if index is None:
        # Exact candidates straight from the array (faiss.knn, blocked): no index copy per call.
        g_search = np.ascontiguousarray(g, dtype=np.float32)
        faiss = _faiss()

        def candidates(qb: np.ndarray, k: int) -> np.ndarray:
            return faiss.knn(qb, g_search, k, metric=faiss.METRIC_INNER_PRODUCT)[1].astype(np.int64)

    elif len(index) != g.shape[0]:
        raise FeatureIndexError(f"the index holds {len(index)} vectors but gallery_feats has {g.shape[0]} rows")
    else:

        def candidates(qb: np.ndarray, k: int) -> np.ndarray:
            return index.search(qb, k)[1]

    top_n = min(int(top_n), g.shape[0])
    batch_size = max(1, min(int(batch_size), (1 << 23) // (top_n + 1) ** 2))

    out_sims = np.full((q.shape[0], top_n), -np.inf, dtype=np.float32)
    out_idx = np.full((q.shape[0], top_n), -1, dtype=np.int64)
    for start in range(0, q.shape[0], batch_size):
        reporter.check()
        stop = min(start + batch_size, q.shape[0])
        cand = candidates(q[start:stop], top_n)
        n_valid = (cand >= 0).sum(axis=1)
        # Rows with the same number of candidates are re-ranked together (normally all of them).
        for n in np.unique(n_valid):
            rows = np.flatnonzero(n_valid == n)
            if n == 0:
                continue
            c = cand[rows][:, :n] if np.all(cand[rows][:, :n] >= 0) else np.stack([r[r >= 0] for r in cand[rows]])
            dist, order = _rerank_local(
                q[start + rows], _candidate_features(g, c), k1=k1, k2=k2, lambda_value=lambda_value, device=device
            )
            out_sims[start + rows, :n] = 1.0 - dist
            out_idx[start + rows, :n] = np.take_along_axis(c, order, axis=1)
        reporter.update(stop / q.shape[0], stage="rerank", message=f"re-ranked {stop} of {q.shape[0]} queries")
    return out_sims, out_idx


def _candidate_features(gallery: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """``gallery[cand]`` as float32 ``[B, n, D]``, checked like :func:`_as_features`."""
    b, n = cand.shape
    rows = _as_features(gallery[cand.reshape(-1)], "gallery_feats (candidate rows)")
    return rows.reshape(b, n, gallery.shape[1])


def _rerank_local(
    q: np.ndarray, cand: np.ndarray, *, k1: int, k2: int, lambda_value: float, device: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Zhong et al. re-ranking within each local set; ``q [B,D]``, ``cand [B,n,D]``.

    Returns the final distances sorted ascending ``[B,n]`` and the order of the candidates.
    Runs in torch: its batched matrix products are several times faster than numpy's stacked
    ``matmul`` on CPU, and the same code runs on a GPU when ``device`` is one.
    """
    import torch

    with torch.no_grad():
        qt = torch.as_tensor(q, device=device)
        ct = torch.as_tensor(cand, device=device)
        b, n, _ = ct.shape
        m = n + 1  # local set: the query (position 0) and its candidates
        x = torch.cat([qt[:, None, :], ct], dim=1)
        dist = (2.0 - 2.0 * torch.bmm(x, x.transpose(1, 2))).clamp_min_(0.0)  # squared Euclidean on the sphere
        dist /= dist.amax(dim=2, keepdim=True).clamp_min(1e-12)
        k1 = min(k1, m - 1)
        k2 = min(k2, m)
        k_half = min(int(np.around(k1 / 2.0)), m - 1)
        initial_rank = torch.argsort(dist, dim=2, stable=True)
        eye = torch.eye(m, dtype=torch.bool, device=dist.device)

        def knn_mask(k: int) -> torch.Tensor:
            mask = torch.zeros((b, m, m), dtype=torch.bool, device=dist.device)
            return mask.scatter_(2, initial_rank[:, :, :k], True)

        forward = knn_mask(k1 + 1)
        # j in i's k1-NN and i in j's k1-NN.  Each item belongs to its own set (it does in the
        # reference unless more than k1 exact duplicates tie with it at distance 0).
        recip = (forward & forward.transpose(1, 2)) | eye
        forward_h = knn_mask(k_half + 1)
        recip_h = ((forward_h & forward_h.transpose(1, 2)) | eye).float()
        # Expansion: a candidate c of R(i) adds R_half(c) when |R_half(c) & R(i)| > 2/3 |R_half(c)|.
        overlap = torch.bmm(recip.float(), recip_h.transpose(1, 2))  # [i, c] = |R(i) & R_half(c)|
        adds = recip & (overlap > (2.0 / 3.0) * recip_h.sum(dim=2)[:, None, :])
        expanded = recip | (torch.bmm(adds.float(), recip_h) > 0)
        weights = torch.where(expanded, torch.exp(-dist), torch.zeros((), device=dist.device))
        v = weights / weights.sum(dim=2, keepdim=True)
        if k2 != 1:  # local query expansion: average the encodings of the k2 nearest
            v = torch.bmm(knn_mask(k2).float(), v) / float(k2)
        shared = torch.minimum(v[:, :1, :], v[:, 1:, :]).sum(dim=2)  # [B, n]
        jaccard = 1.0 - shared / (2.0 - shared)
        final = (1.0 - lambda_value) * jaccard + lambda_value * dist[:, 0, 1:]
        final_sorted, order = torch.sort(final, dim=1, stable=True)
        return final_sorted.cpu().numpy().astype(np.float32), order.cpu().numpy().astype(np.int64)


def rerank_query(query_feat: np.ndarray, gallery_feats: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`k_reciprocal_rerank` for one query vector ``[D]``: ``(sims [top_n], idx [top_n])``."""
    sims, idx = k_reciprocal_rerank(np.asarray(query_feat).reshape(1, -1), gallery_feats, **kwargs)
    return sims[0], idx[0]


def search_features(
    index: FeatureIndex,
    queries: np.ndarray,
    k: int,
    *,
    rerank: bool = False,
    gallery_feats: np.ndarray | None = None,
    top_n: int = 200,
    **rerank_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` search, optionally re-ranked among the top ``max(k, top_n)`` candidates.

    Re-ranking needs the indexed ``gallery_feats`` (the candidates' own neighbourhoods).
    """
    if not rerank:
        return index.search(queries, k)
    if gallery_feats is None:
        raise FeatureIndexError("re-ranking needs the gallery features the index was built from")
    sims, idx = k_reciprocal_rerank(queries, gallery_feats, index=index, top_n=max(k, top_n), **rerank_kwargs)
    return sims[:, :k], idx[:, :k]
