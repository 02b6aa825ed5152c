"""FeatureIndex on a 1,000,000 x 512 gallery: build time, ms/query (single and batched), recall@100.

Data (generated in chunks, float32, L2-normalised), clustered like ReID features: every
identity combines three "attributes" (think upper colour, lower colour, build) with an
identity-specific direction, and each image adds its own noise.  Images of one identity have
cosine ~0.73, identities sharing all attributes ~0.5, two attributes ~0.33, unrelated ~0.
About 20 images per identity; the number of values per attribute grows with N so that an
attribute combination holds ~4 identities (~80 images) at every size: a query's top-100 always
spills over into identities that share only some attributes, as it would in real features
(at 1M: 50,000 identities, 23 values per attribute).  Queries are fresh images of gallery
identities (not in the gallery).

Targets (approximate index at 1M on this 2-core CPU): <= 50 ms per single query for the
top-100, recall@100 >= 0.95 against the exact index.

    python benchmarks/bench_query.py                 # 1,000,000 x 512
    python benchmarks/bench_query.py --n 200000      # smaller
    python benchmarks/bench_query.py --quick         # 100,000 x 512, fewer queries
    python benchmarks/bench_query.py --n 200000 --compare   # also raw faiss IVF-PQ and HNSW
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import peak_rss_mb, print_table, write_json  # noqa: E402
from itkm_engine.index import FeatureIndex, k_reciprocal_rerank  # noqa: E402

TARGET_MS = 50.0
TARGET_RECALL = 0.95
K = 100


class ClusteredFeatures:
    """Attribute x identity x image mixture on the unit sphere (see the module docstring)."""

    def __init__(self, n: int, dim: int = 512, *, per_id: int = 20, factors: int = 3, ids_per_combo: int = 4, seed: int = 0):
        self.n, self.dim = n, dim
        rng = np.random.default_rng(seed)
        self.n_ids = max(1, n // per_id)
        values = max(2, int(round((self.n_ids / ids_per_combo) ** (1.0 / factors))))
        self.values = values
        attrs = rng.standard_normal((factors, values, dim)).astype(np.float32)
        attrs /= np.linalg.norm(attrs, axis=2, keepdims=True)
        choice = rng.integers(0, values, (self.n_ids, factors))
        centres = attrs[np.arange(factors)[None, :], choice].sum(axis=1)
        centres += 1.2 * rng.standard_normal((self.n_ids, dim)).astype(np.float32) / np.sqrt(dim)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        self.image_noise = 0.6
        self.seed = seed

    def _images(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = self.centres[ids] + self.image_noise * rng.standard_normal((len(ids), self.dim)).astype(np.float32) / np.sqrt(self.dim)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def gallery(self, chunk: int = 100_000) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 1)
        ids = rng.integers(0, self.n_ids, self.n)
        out = np.empty((self.n, self.dim), dtype=np.float32)
        for start in range(0, self.n, chunk):
            out[start : start + chunk] = self._images(ids[start : start + chunk], rng)
        return out

    def queries(self, m: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 2)
        return self._images(rng.integers(0, self.n_ids, m), rng)


def time_single(search, queries: np.ndarray, k: int) -> float:
    """Mean ms per query, one query per call."""
    search(queries[:1], k)  # warm-up
    t0 = time.perf_counter()
    for i in range(len(queries)):
        search(queries[i : i + 1], k)
    return (time.perf_counter() - t0) / len(queries) * 1000.0


def time_batched(search, queries: np.ndarray, k: int):
    t0 = time.perf_counter()
    out = search(queries, k)
    return (time.perf_counter() - t0) / len(queries) * 1000.0, out


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="gallery size (default 1,000,000)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000, help="batched queries (recall is measured on these)")
    ap.add_argument("--single", type=int, default=100, help="queries timed one at a time")
    ap.add_argument("--rerank", type=int, default=100, help="queries timed through k-reciprocal re-ranking")
    ap.add_argument("--quick", action="store_true", help="100,000 gallery, 200 queries")
    ap.add_argument("--compare", action="store_true", help="also build raw faiss IVF-PQ and HNSW for the choice")
    args = ap.parse_args()
    if args.quick:
        args.n, args.queries, args.single = 100_000, 200, 50

    t0 = time.perf_counter()
    data = ClusteredFeatures(args.n, args.dim)
    gallery = data.gallery()
    queries = data.queries(args.queries)
    t_gen = time.perf_counter() - t0
    print(f"generated {args.n} x {args.dim} gallery ({data.n_ids} identities, {data.values} values per attribute) "
          f"in {t_gen:.1f} s", flush=True)

    rows = []
    # -- exact ---------------------------------------------------------------------------------
    t0 = time.perf_counter()
    exact = FeatureIndex.build(gallery, exact_limit=args.n, use_gpu=False)
    build_exact = time.perf_counter() - t0
    batched_exact, (truth_sims, truth) = time_batched(exact.search, queries, K)
    single_exact = time_single(exact.search, queries[: max(10, args.single // 4)], K)
    rows.append({
        "index": repr(exact),
        "build_s": round(build_exact, 1),
        "ms_per_query_single": round(single_exact, 2),
        "ms_per_query_batched": round(batched_exact, 3),
        f"recall@{K}": 1.0,
    })
    print(f"exact: build {build_exact:.1f} s, single {single_exact:.1f} ms, batched {batched_exact:.2f} ms", flush=True)
    print(f"similarity of the 1st / 20th / 100th neighbour (exact, mean): {truth_sims[:, 0].mean():.3f} / "
          f"{truth_sims[:, 19].mean():.3f} / {truth_sims[:, K - 1].mean():.3f}", flush=True)
    del exact
    gc.collect()

    # -- approximate (what FeatureIndex picks above exact_limit) --------------------------------
    t0 = time.perf_counter()
    approx = FeatureIndex.build(gallery, exact_limit=0, use_gpu=False, seed=0)
    build_approx = time.perf_counter() - t0
    batched_approx, (_, found) = time_batched(approx.search, queries, K)
    single_approx = time_single(approx.search, queries[: args.single], K)
    rec = recall_at(found, truth)
    approx_row = {
        "index": repr(approx),
        "build_s": round(build_approx, 1),
        "ms_per_query_single": round(single_approx, 2),
        "ms_per_query_batched": round(batched_approx, 3),
        f"recall@{K}": round(rec, 4),
        "tuned_recall": round(approx.tuned_recall or 0.0, 4),
    }
    rows.append(approx_row)
    print(f"approx: {approx!r} build {build_approx:.1f} s, single {single_approx:.2f} ms, recall {rec:.4f}", flush=True)

    # k-reciprocal re-ranking of the top-200 candidates (informational, no target).
    m = min(args.rerank, len(queries))
    k_reciprocal_rerank(queries[:2], gallery, index=approx, top_n=200)  # warm-up (torch import)
    t0 = time.perf_counter()
    k_reciprocal_rerank(queries[:m], gallery, index=approx, top_n=200)
    rerank_ms = (time.perf_counter() - t0) / m * 1000.0
    rows.append({"index": f"  + k_reciprocal_rerank top_n=200 ({m} queries, batched)", "ms_per_query_batched": round(rerank_ms, 2)})
    print(f"rerank: {rerank_ms:.1f} ms per query", flush=True)
    del approx
    gc.collect()

    if args.compare:
        rows.extend(compare_alternatives(gallery, queries, truth))

    print_table(rows, f"FeatureIndex, gallery {args.n} x {args.dim}, top-{K}, {args.queries} queries")
    ok_ms = single_approx <= TARGET_MS
    ok_recall = rec >= TARGET_RECALL
    print(f"{'PASS' if ok_ms else 'MISS'} approximate single-query latency {single_approx:.2f} ms (target <= {TARGET_MS:.0f} ms)")
    print(f"{'PASS' if ok_recall else 'MISS'} approximate recall@{K} {rec:.4f} (target >= {TARGET_RECALL})")
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    name = "query" if (args.n, args.dim, args.compare) == (1_000_000, 512, False) else f"query_n{args.n}" + ("_compare" if args.compare else "")
    path = write_json(
        name,
        {
            "n": args.n,
            "dim": args.dim,
            "queries": args.queries,
            "k": K,
            "generate_s": round(t_gen, 1),
            "identities": data.n_ids,
            "values_per_attribute": data.values,
            "rows": rows,
            "targets": {"ms_per_query_single": TARGET_MS, f"recall@{K}": TARGET_RECALL},
            "pass": {"latency": ok_ms, "recall": ok_recall},
            "peak_rss_mb": peak_rss_mb(),
        },
    )
    print(f"wrote {path}")
    return 0


def compare_alternatives(gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> list[dict]:
    """The candidates FeatureIndex did not pick, tuned by hand, for the record."""
    import faiss

    n, dim = gallery.shape
    nlist = int(2 ** round(np.log2(np.sqrt(n))))
    rows = []
    rng = np.random.default_rng(0)
    sample = gallery[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))]

    t0 = time.perf_counter()
    pq = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, 64, 8, faiss.METRIC_INNER_PRODUCT)
    pq.train(sample)
    pq.add(gallery)
    build = time.perf_counter() - t0
    for nprobe in (16, 64):
        pq.nprobe = nprobe
        ms_b, (_, found) = time_batched(pq.search, queries, K)
        rows.append({
            "index": f"faiss IVF{nlist},PQ64 nprobe={nprobe}",
            "build_s": round(build, 1),
            "ms_per_query_single": round(time_single(pq.search, queries[:50], K), 2),
            "ms_per_query_batched": round(ms_b, 3),
            f"recall@{K}": round(recall_at(found, truth), 4),
        })
        print(rows[-1], flush=True)
    del pq
    gc.collect()

    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    hnsw.add(gallery)
    build = time.perf_counter() - t0
    for ef in (128, 256):
        hnsw.hnsw.efSearch = ef
        ms_b, (_, found) = time_batched(hnsw.search, queries, K)
        rows.append({
            "index": f"faiss HNSW32 efSearch={ef}",
            "build_s": round(build, 1),
            "ms_per_query_single": round(time_single(hnsw.search, queries[:50], K), 2),
            "ms_per_query_batched": round(ms_b, 3),
            f"recall@{K}": round(recall_at(found, truth), 4),
        })
        print(rows[-1], flush=True)
    del hnsw
    gc.collect()
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
