"""evaluate_rank vs torchreid 0.2.5's eval_market1501 on a Market-1501-sized problem.

Data: 3,368 queries x 15,913 gallery images, Market-like: 751 identities seen by 6 cameras,
~2,800 distractor gallery images (pid 0), distances from simulated embeddings (identity centre +
camera bias + noise, cosine distance, float32).  A second case rounds the distances to float16
precision so that ties between true and false matches are common (the slow path).

Target: evaluate_rank >= 20x faster than the reference, identical CMC and mAP.

    python benchmarks/bench_metrics.py            # full size
    python benchmarks/bench_metrics.py --quick    # 1/4 of the queries, one repeat
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import peak_rss_mb, print_table, write_json  # noqa: E402
from itkm_engine.metrics import evaluate_rank  # noqa: E402


def eval_market1501_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """torchreid 0.2.5 ``torchreid.metrics.rank.eval_market1501``, verbatim but for the print."""
    num_q, num_g = distmat.shape

    if num_g < max_rank:
        max_rank = num_g

    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)

    # compute cmc curve for each query
    all_cmc = []
    all_AP = []
    num_valid_q = 0.0  # number of valid query

    for q_idx in range(num_q):
        # get query pid and camid
        q_pid = q_pids[q_idx]
        q_camid = q_camids[q_idx]

        # remove gallery samples that have the same pid and camid with query
        order = indices[q_idx]
        remove = (g_pids[order] == q_pid) & (g_camids[order] == q_camid)
        keep = np.invert(remove)

        # compute cmc curve
        raw_cmc = matches[q_idx][keep]  # binary vector, positions with value 1 are correct matches
        if not np.any(raw_cmc):
            # this condition is true when query identity does not appear in gallery
            continue

        cmc = raw_cmc.cumsum()
        cmc[cmc > 1] = 1

        all_cmc.append(cmc[:max_rank])
        num_valid_q += 1.0

        # compute average precision
        # reference: https://en.wikipedia.org/wiki/Evaluation_measures_(information_retrieval)#Average_precision
        num_rel = raw_cmc.sum()
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = [x / (i + 1.0) for i, x in enumerate(tmp_cmc)]
        tmp_cmc = np.asarray(tmp_cmc) * raw_cmc
        AP = tmp_cmc.sum() / num_rel
        all_AP.append(AP)

    assert num_valid_q > 0, "Error: all query identities do not appear in gallery"

    all_cmc = np.asarray(all_cmc).astype(np.float32)
    all_cmc = all_cmc.sum(0) / num_valid_q
    mAP = np.mean(all_AP)

    return all_cmc, mAP


def market_like(num_q: int, num_g: int, *, num_ids: int = 751, num_cams: int = 6, distractors: int = 2798, seed: int = 0):
    """Query/gallery identities, cameras and a float32 cosine distance matrix."""
    rng = np.random.default_rng(seed)
    dim = 128
    centres = rng.standard_normal((num_ids + 1, dim)).astype(np.float32)
    cam_bias = rng.standard_normal((num_cams, dim)).astype(np.float32) * 0.6

    # Every identity appears in the query set (a few views each) and in the gallery.
    q_pids = np.concatenate([np.arange(1, num_ids + 1), rng.integers(1, num_ids + 1, num_q - num_ids)])
    q_cams = rng.integers(0, num_cams, num_q)
    n_real = num_g - distractors
    g_pids = np.concatenate([np.arange(1, num_ids + 1), rng.integers(1, num_ids + 1, n_real - num_ids), np.zeros(distractors, int)])
    g_cams = rng.integers(0, num_cams, num_g)

    def embed(pids, cams, noise):
        x = centres[pids] + cam_bias[cams] + noise * rng.standard_normal((len(pids), dim)).astype(np.float32)
        x[pids == 0] = rng.standard_normal((int((pids == 0).sum()), dim)).astype(np.float32) * 1.5
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    q = embed(q_pids, q_cams, 1.1)
    g = embed(g_pids, g_cams, 1.1)
    dist = (1.0 - q @ g.T).astype(np.float32)
    return dist, q_pids, g_pids, q_cams, g_cams


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="842 queries instead of 3,368; one repeat")
    ap.add_argument("--max-rank", type=int, default=50)
    args = ap.parse_args()
    num_q = 842 if args.quick else 3368
    num_g = 15913
    repeats = 1 if args.quick else 3
    target = 20.0

    dist, q_pids, g_pids, q_cams, g_cams = market_like(max(num_q, 751), num_g)
    dist, q_pids, q_cams = dist[:num_q], q_pids[:num_q], q_cams[:num_q]
    cases = {
        "float32 distances": dist,
        "float16-rounded (ties)": dist.astype(np.float16).astype(np.float32),
    }
    rows, results = [], {}
    all_pass = True
    for name, d in cases.items():
        t_ref, (cmc_ref, map_ref) = timed(
            lambda: eval_market1501_reference(d, q_pids, g_pids, q_cams, g_cams, args.max_rank), 1
        )
        t_new, (cmc_new, map_new) = timed(lambda: evaluate_rank(d, q_pids, g_pids, q_cams, g_cams, args.max_rank), repeats)
        identical_cmc = bool(np.array_equal(cmc_ref, cmc_new))
        map_diff = abs(float(map_ref) - float(map_new))
        speedup = t_ref / t_new
        ok = identical_cmc and map_diff <= 1e-12 and speedup >= target
        all_pass &= ok
        row = {
            "case": name,
            "queries": d.shape[0],
            "gallery": d.shape[1],
            "reference_s": round(t_ref, 3),
            "evaluate_rank_s": round(t_new, 3),
            "speedup": round(speedup, 1),
            "rank1": round(float(cmc_new[0]), 4),
            "mAP": round(float(map_new), 4),
            "cmc_identical": identical_cmc,
            "mAP_abs_diff": map_diff,
            "result": "PASS" if ok else "MISS",
        }
        rows.append(row)
        results[name] = row

    print_table(rows, f"evaluate_rank vs torchreid eval_market1501 (target >= {target:.0f}x, identical)")
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    path = write_json("metrics", {"quick": args.quick, "target_speedup": target, "cases": results, "peak_rss_mb": peak_rss_mb()})
    print(f"wrote {path}")
    print("PASS" if all_pass else "MISS", f"speedup >= {target:.0f}x with identical results")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
