"""Benchmark: Stage I pseudo-labels (sparse k-reciprocal Jaccard + DBSCAN) against dense baselines.

    python benchmarks/bench_pseudo_labels.py           # N = 4k comparison + 10k, 50k, 100k scale rows
    python benchmarks/bench_pseudo_labels.py --quick   # N = 4k comparison + 10k only

Every row runs in its own subprocess, so ``peak_rss_mb`` (``getrusage`` in the child) is that
row's own peak: interpreter + libraries + the features (loaded from .npy) + the algorithm.

Rows:
* ``torchreid re_ranking`` -- torchreid 0.2.5's dense ``re_ranking(q_g, q_q, g_g, k1, k2,
  lambda)`` transcribed below (not imported), run all-vs-all at N = 4,000 (query = gallery =
  every feature, so its internal matrices are 8,000 x 8,000), k1=30, k2=6, lambda=0.
* ``dense reference`` -- the same k-reciprocal Jaccard with this project's conventions (k1
  neighbours besides self, kernel exp(-(2 - 2 cos)), Cluster Contrast's loops) on dense N x N
  arrays, then sklearn DBSCAN(eps=0.6, min_samples=4, precomputed).  Ground truth for agreement.
* ``pseudo_labels`` -- ``itkm_engine.clustering.pseudo_labels`` (k1=30, k2=6, eps=0.6,
  min_samples=4) at 4k, 10k, 50k, 100k.  At 50k in the full run, also with exhaustive kNN
  (``exact_limit`` above N), to measure what the verified PCA-projection kNN changes.

Data: ReID-like synthetic features, 512-d: N/20 identities (10..30 crops each) around random
centres in a random 64-d subspace plus a shared mean direction and small isotropic noise
(same-identity cosine ~0.77, different ~0.30), and 5% outliers; L2-normalised.

Columns: ``time_s`` wall clock, ``cpu_s`` user+sys CPU of the child (all threads; on a shared
machine wall time mostly measures the other users), ``peak_rss_mb``, clusters, outliers, ARI of
the inliers against the planted identities.  Per-stage wall/CPU (knn, encoding, jaccard, dbscan)
are printed below the table.

Targets: pseudo_labels vs dense reference ARI >= 0.99 at 4k; >= 5x faster than torchreid's
re_ranking at 4k; at 100k <= 120 s and <= 4 GB peak RSS.  The machine is shared: each row also
records the 1-minute load average before and after it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import peak_rss_mb, print_table, write_json  # noqa: E402

K1, K2, EPS, MIN_SAMPLES = 30, 6, 0.6, 4
COMPARE_N = 4_000
SCALE_N = (10_000, 50_000, 100_000)
QUICK_SCALE_N = (10_000,)
TARGET_ARI = 0.99
TARGET_SPEEDUP = 5.0
TARGET_TIME_100K_S = 120.0
TARGET_RSS_100K_MB = 4096.0


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def reid_like(n: int, dim: int = 512, per: int = 20, rank: int = 64, outliers: float = 0.05,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic ReID-like features [n, dim] (float32, unit norm) and identity labels (-1 outlier)."""
    rng = np.random.default_rng(seed)
    n_out = int(n * outliers)
    n_in = n - n_out
    ids = max(1, n_in // per)
    sizes = rng.integers(per // 2, per * 3 // 2 + 1, size=ids).astype(np.float64)
    sizes = np.maximum(1, np.round(sizes * n_in / sizes.sum())).astype(np.int64)
    diff = int(n_in - sizes.sum())
    sizes[: abs(diff)] += np.sign(diff)
    labels = np.repeat(np.arange(ids), sizes)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T.astype(np.float32)
    mean = rng.standard_normal(dim).astype(np.float32)
    mean /= np.linalg.norm(mean)
    centres = rng.standard_normal((ids, rank)).astype(np.float32) / np.sqrt(rank)
    spread = rng.uniform(0.5, 0.8, size=ids).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n_in, 16384):  # in chunks: keep the generator's own peak small
        e = min(s + 16384, n_in)
        lab = labels[s:e]
        z = centres[lab] + (spread[lab] / np.sqrt(rank))[:, None] * rng.standard_normal(
            (e - s, rank), dtype=np.float32)
        x[s:e] = 0.8 * mean + z @ basis + 0.25 / np.sqrt(dim) * rng.standard_normal(
            (e - s, dim), dtype=np.float32)
    zo = rng.standard_normal((n_out, rank), dtype=np.float32) / np.sqrt(rank) * 1.2
    x[n_in:] = 0.8 * mean + zo @ basis + 0.25 / np.sqrt(dim) * rng.standard_normal(
        (n_out, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    truth = np.r_[labels, -np.ones(n_out, np.int64)]
    perm = rng.permutation(n)
    return np.ascontiguousarray(x[perm]), truth[perm]


# ---------------------------------------------------------------------------------------------
# torchreid 0.2.5 torchreid/utils/rerank.py, transcribed (dense, float32/float16)
# ---------------------------------------------------------------------------------------------
def torchreid_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    original_dist = np.concatenate(
        [
            np.concatenate([q_q_dist, q_g_dist], axis=1),
            np.concatenate([q_g_dist.T, g_g_dist], axis=1),
        ],
        axis=0,
    )
    original_dist = np.power(original_dist, 2).astype(np.float32)
    original_dist = np.transpose(1.0 * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist).astype(np.int32)

    query_num = q_g_dist.shape[0]
    gallery_num = q_g_dist.shape[0] + q_g_dist.shape[1]
    all_num = gallery_num

    for i in range(all_num):
        # k-reciprocal neighbors
        forward_k_neigh_index = initial_rank[i, : k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, : k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            candidate_forward_k_neigh_index = initial_rank[candidate, : int(np.around(k1 / 2.0)) + 1]
            candidate_backward_k_neigh_index = initial_rank[
                candidate_forward_k_neigh_index, : int(np.around(k1 / 2.0)) + 1
            ]
            fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > 2.0 / 3 * len(
                candidate_k_reciprocal_index
            ):
                k_reciprocal_expansion_index = np.append(
                    k_reciprocal_expansion_index, candidate_k_reciprocal_index
                )

        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = weight / np.sum(weight)
    original_dist = original_dist[:query_num, :]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float16)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
        del V_qe
    del initial_rank
    invIndex = []
    for i in range(gallery_num):
        invIndex.append(np.where(V[:, i] != 0)[0])

    jaccard_dist = np.zeros_like(original_dist, dtype=np.float16)

    for i in range(query_num):
        temp_min = np.zeros(shape=[1, gallery_num], dtype=np.float16)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(
                V[i, indNonZero[j]], V[indImages[j], indNonZero[j]]
            )
        jaccard_dist[i] = 1 - temp_min / (2.0 - temp_min)

    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    del original_dist
    del V
    del jaccard_dist
    final_dist = final_dist[:query_num, query_num:]
    return final_dist


# ---------------------------------------------------------------------------------------------
# dense reference with this project's conventions
# ---------------------------------------------------------------------------------------------
def dense_reference_jaccard(x: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """Dense k-reciprocal Jaccard (Cluster Contrast loops; k1 neighbours besides self)."""
    n = len(x)
    sim = x @ x.T
    dist = 2.0 - 2.0 * sim
    rank = np.argsort(-sim, axis=1, kind="stable")
    del sim
    # Self first (ties with duplicates), exactly as the sparse code does.
    is_self = rank == np.arange(n)[:, None]
    rank = np.take_along_axis(rank, np.argsort(~is_self, axis=1, kind="stable"), 1)
    del is_self
    rank = rank[:, : max(k1 + 1, k2)]
    half = int(np.around(k1 / 2.0))

    def k_reciprocal(i, k):
        forward = rank[i, : k + 1]
        backward = rank[forward, : k + 1]
        return forward[np.where(backward == i)[0]]

    r1 = [k_reciprocal(i, k1) for i in range(n)]
    rh = [k_reciprocal(i, half) for i in range(n)]
    V = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        expansion = r1[i]
        for c in r1[i]:
            if len(np.intersect1d(rh[c], r1[i])) > 2.0 / 3.0 * len(rh[c]):
                expansion = np.append(expansion, rh[c])
        expansion = np.unique(expansion)
        w = np.exp(-dist[i, expansion].astype(np.float64))
        V[i, expansion] = w / w.sum()
    del dist
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(n):
            V_qe[i] = V[rank[i, :k2]].mean(axis=0)
        V = V_qe
    inv = [np.where(V[:, i] != 0)[0] for i in range(n)]
    jac = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        tmin = np.zeros(n, dtype=np.float32)
        nz = np.where(V[i] != 0)[0]
        for k in nz:
            tmin[inv[k]] += np.minimum(V[i, k], V[inv[k], k])
        jac[i] = 1.0 - tmin / (2.0 - tmin)
    jac[jac < 0] = 0.0
    return jac


# ---------------------------------------------------------------------------------------------
# child processes
# ---------------------------------------------------------------------------------------------
def child(task: str, data: str, out: str, exact_limit: int | None) -> dict:
    from sklearn.metrics import adjusted_rand_score

    load0 = os.getloadavg()[0]
    x = np.load(data)
    truth = np.load(data.replace(".npy", "_truth.npy"))
    n = len(x)
    result: dict = {"n": n}
    if task == "torchreid":
        c0 = _cpu_s()
        t0 = time.perf_counter()
        sq = np.maximum(2.0 - 2.0 * (x @ x.T), 0.0).astype(np.float32)  # torchreid's euclidean
        torchreid_re_ranking(sq, sq, sq, k1=K1, k2=K2, lambda_value=0.0)
        result["time_s"] = time.perf_counter() - t0
        result["cpu_s"] = _cpu_s() - c0
    elif task == "dense":
        from sklearn.cluster import DBSCAN

        c0 = _cpu_s()
        t0 = time.perf_counter()
        jac = dense_reference_jaccard(x, K1, K2)
        labels = DBSCAN(eps=EPS, min_samples=MIN_SAMPLES, metric="precomputed").fit(jac).labels_
        result["time_s"] = time.perf_counter() - t0
        result["cpu_s"] = _cpu_s() - c0
        np.save(out + "_labels.npy", labels)
        np.save(out + "_jaccard.npy", jac)
    elif task == "sparse":
        from itkm_engine.clustering import EXACT_LIMIT, jaccard_knn, pseudo_labels
        from itkm_engine.progress import Reporter

        logs: list[str] = []
        last: dict[str, tuple[float, float]] = {}  # stage -> (wall, cpu) of its last event

        def on_event(e) -> None:
            last[e.stage] = (time.perf_counter(), _cpu_s())  # dicts keep first-seen order

        rep = Reporter(on_event=on_event, on_log=lambda m: logs.append(m.text))
        limit = EXACT_LIMIT if exact_limit is None else exact_limit
        t0, c0 = time.perf_counter(), _cpu_s()
        labels = pseudo_labels(x, k1=K1, k2=K2, eps=EPS, min_samples=MIN_SAMPLES,
                               exact_limit=limit, reporter=rep)
        t1, c1 = time.perf_counter(), _cpu_s()
        result["time_s"] = t1 - t0
        result["cpu_s"] = c1 - c0
        stages: dict[str, list[float]] = {}
        prev_w, prev_c = t0, c0
        for stage, (w, c) in last.items():  # a stage ends with its last progress event
            stages[stage] = [w - prev_w, c - prev_c]
            prev_w, prev_c = w, c
        result["stages"] = {k: {"wall_s": round(v[0], 2), "cpu_s": round(v[1], 2)}
                            for k, v in stages.items()}
        result["peak_rss_mb_labels"] = peak_rss_mb()
        result["log"] = logs
        np.save(out + "_labels.npy", labels)
        if n <= COMPARE_N:  # the full (unpruned) sparse matrix for the entry-wise comparison
            d = jaccard_knn(x, K1, K2, max_distance=1.0)
            import scipy.sparse as sp

            sp.save_npz(out + "_jaccard.npz", d)
    else:
        raise SystemExit(f"unknown task {task}")
    if task != "torchreid":
        labels = np.load(out + "_labels.npy")
        inl = truth >= 0
        result["n_clusters"] = int(labels.max()) + 1 if labels.size else 0
        result["outlier_frac"] = float((labels < 0).mean())
        result["ari_truth_inliers"] = float(adjusted_rand_score(truth[inl], labels[inl]))
    result["peak_rss_mb"] = peak_rss_mb()
    result["load_before"] = round(load0, 2)
    result["load_after"] = round(os.getloadavg()[0], 2)
    return result


def _cpu_s() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_child(task: str, data: Path, out: Path, exact_limit: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", task, "--data", str(data), "--out", str(out)]
    if exact_limit is not None:
        cmd += ["--exact-limit", str(exact_limit)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {task} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_data(tmp: Path, n: int) -> Path:
    x, truth = reid_like(n)
    path = tmp / f"feats_{n}.npy"
    np.save(path, x)
    np.save(tmp / f"feats_{n}_truth.npy", truth)
    return path


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the 50k and 100k rows")
    ap.add_argument("--child")
    ap.add_argument("--data")
    ap.add_argument("--out")
    ap.add_argument("--exact-limit", type=int)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.out, args.exact_limit)))
        return

    from sklearn.metrics import adjusted_rand_score
    import scipy.sparse as sp

    rows: list[dict] = []
    checks: list[tuple[str, bool, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench_pl_") as tmpdir:
        tmp = Path(tmpdir)
        # -- N = 4,000: torchreid, dense reference, sparse ------------------------------------
        data = make_data(tmp, COMPARE_N)
        tr = run_child("torchreid", data, tmp / "tr")
        rows.append({"method": "torchreid re_ranking (all-vs-all)", **tr})
        dense = run_child("dense", data, tmp / "dense")
        rows.append({"method": "dense reference Jaccard+DBSCAN", **dense})
        sparse = run_child("sparse", data, tmp / "sparse")
        rows.append({"method": "pseudo_labels", **sparse})

        ref_labels = np.load(tmp / "dense_labels.npy")
        got_labels = np.load(tmp / "sparse_labels.npy")
        ari = float(adjusted_rand_score(ref_labels, got_labels))
        dense_j = np.load(tmp / "dense_jaccard.npy")
        sparse_j = sp.load_npz(tmp / "sparse_jaccard.npz").tocoo()
        max_diff = float(np.max(np.abs(sparse_j.data - dense_j[sparse_j.row, sparse_j.col])))
        present = np.zeros(dense_j.shape, dtype=bool)
        present[sparse_j.row, sparse_j.col] = True
        absent_ok = bool(np.all(dense_j[~present] == 1.0))
        nnz_per_row = sparse_j.nnz / COMPARE_N
        del dense_j, present
        speedup = tr["time_s"] / sparse["time_s"]
        checks.append(("ARI(pseudo_labels, dense reference DBSCAN) at 4k", ari >= TARGET_ARI,
                       f"{ari:.4f} (target >= {TARGET_ARI})"))
        checks.append(("speed-up vs torchreid re_ranking at 4k", speedup >= TARGET_SPEEDUP,
                       f"{speedup:.1f}x (target >= {TARGET_SPEEDUP}x)"))
        comparison = {
            "ari_vs_dense_reference": ari,
            "jaccard_max_abs_diff_present": max_diff,
            "jaccard_absent_pairs_all_1": absent_ok,
            "jaccard_nnz_per_row": nnz_per_row,
            "speedup_vs_torchreid": speedup,
            "rss_ratio_torchreid_over_sparse": tr["peak_rss_mb"] / sparse["peak_rss_mb"],
        }

        # -- scale rows ----------------------------------------------------------------------
        scale_rows: list[dict] = []
        for n in QUICK_SCALE_N if args.quick else SCALE_N:
            data = make_data(tmp, n)
            res = run_child("sparse", data, tmp / f"sparse_{n}")
            scale_rows.append({"method": "pseudo_labels", **res})
            if n == 50_000 and not args.quick:
                ex = run_child("sparse", data, tmp / f"sparse_{n}_exact", exact_limit=10**9)
                ex["ari_vs_projected_knn"] = float(adjusted_rand_score(
                    np.load(tmp / f"sparse_{n}_exact_labels.npy"),
                    np.load(tmp / f"sparse_{n}_labels.npy")))
                scale_rows.append({"method": "pseudo_labels, exhaustive kNN", **ex})
            if n == 100_000:
                checks.append(("time at 100k", res["time_s"] <= TARGET_TIME_100K_S,
                               f"{res['time_s']:.1f} s (target <= {TARGET_TIME_100K_S:.0f} s, "
                               f"load avg {res['load_before']}->{res['load_after']} on "
                               f"{os.cpu_count()} cores)"))
                checks.append(("peak RSS at 100k", res["peak_rss_mb"] <= TARGET_RSS_100K_MB,
                               f"{res['peak_rss_mb']:.0f} MB (target <= {TARGET_RSS_100K_MB:.0f} MB)"))

    cols = ["method", "n", "time_s", "cpu_s", "peak_rss_mb", "n_clusters", "outlier_frac",
            "ari_truth_inliers", "load_before", "load_after"]
    table = [{c: r.get(c, "") for c in cols} for r in rows + scale_rows]
    print_table(table, "pseudo-labels: k1=30 k2=6 eps=0.6 min_samples=4, 512-d ReID-like features")
    print(f"\n4k comparison: ARI vs dense reference {ari:.4f}; Jaccard max |diff| on stored entries "
          f"{max_diff:.2e}; absent pairs all 1.0 in dense: {absent_ok}; {nnz_per_row:.1f} stored/row; "
          f"speed-up vs torchreid {speedup:.1f}x")
    for r in [sparse] + scale_rows:
        st = r.get("stages", {})
        print(f"  [{r['n']}] stages (wall/cpu s): " + ", ".join(
            f"{k} {v['wall_s']:.1f}/{v['cpu_s']:.1f}" for k, v in st.items()))
        for line in r.get("log", []):
            print(f"  [{r['n']}] {line}")
    if any("ari_vs_projected_knn" in r for r in scale_rows):
        r = next(r for r in scale_rows if "ari_vs_projected_knn" in r)
        print(f"50k: ARI(projected kNN labels, exhaustive kNN labels) = {r['ari_vs_projected_knn']:.4f}")
    print()
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'MISS'}  {name}: {detail}")
    path = write_json("pseudo_labels", {
        "quick": args.quick,
        "params": {"k1": K1, "k2": K2, "eps": EPS, "min_samples": MIN_SAMPLES},
        "comparison_4k": comparison,
        "rows": rows,
        "scale": scale_rows,
        "checks": [{"name": n, "pass": ok, "detail": d} for n, ok, d in checks],
    })
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
