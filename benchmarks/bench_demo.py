"""Benchmark: demo camera-set generation speed, and how far colour alone gets on it.

    python benchmarks/bench_demo.py            # default set (60 identities, ~2,000 crops)
    python benchmarks/bench_demo.py --quick    # 20 identities

Targets: generating the default set takes < 30 s (single process).  Then the colour-histogram
baseline (``benchmarks/color_baseline.py``) is scored under the standard protocol (all images are
queries and gallery; a gallery image of the query's person *and* camera is ignored): overall, per
scenario (query and gallery restricted to it) and per cross-group direction.  A row's "random" mAP
is the same protocol with random distances -- the chance level the colour baseline is compared to.
Informational checks: colour must not solve the set (overall mAP < 0.5) and must be near chance
across infrared -> visible (mAP < 2x random).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import peak_rss_mb, print_table, write_json  # noqa: E402
from benchmarks.color_baseline import color_histogram_features  # noqa: E402
from itkm_engine.data.demo import DEMO_CAMERAS, make_demo, parse_demo_name  # noqa: E402
from itkm_engine.metrics import evaluate_rank  # noqa: E402

GEN_TARGET_S = 30.0


def _score(feats, pids, cams, qmask, gmask, rng) -> dict:
    """mAP / Rank-1 / Rank-5 of colour and of random distances for one query/gallery split."""
    q, g = np.flatnonzero(qmask), np.flatnonzero(gmask)
    dist = 1.0 - feats[q] @ feats[g].T
    cmc, mAP, skipped = evaluate_rank(dist, pids[q], pids[g], cams[q], cams[g], max_rank=10, return_skipped=True)
    rdist = rng.random((len(q), len(g))).astype(np.float32)
    _, rmAP = evaluate_rank(rdist, pids[q], pids[g], cams[q], cams[g], max_rank=10)
    return {
        "queries": int(len(q) - skipped),
        "gallery": int(len(g)),
        "mAP": float(mAP),
        "rank1": float(cmc[0]),
        "rank5": float(cmc[min(4, len(cmc) - 1)]),
        "random_mAP": float(rmAP),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 identities instead of 60")
    ap.add_argument("--identities", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="write the demo set here and keep it")
    args = ap.parse_args()
    identities = args.identities or (20 if args.quick else 60)

    tmp = None
    if args.keep is not None:
        root = args.keep
        if root.exists():
            shutil.rmtree(root)  # a benchmark times a fresh generation
    else:
        tmp = tempfile.mkdtemp(prefix="itkm-bench-demo-")
        root = Path(tmp) / "demo"
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        info = make_demo(root, identities=identities, seed=args.seed)
        gen_s, gen_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        again = make_demo(root, identities=identities, seed=args.seed)
        reuse_s = time.perf_counter() - t0
        assert again.reused and again.n_images == info.n_images

        paths, pids, cams, cam_names = [], [], [], []
        num_to_spec = {c.camnum: c for c in DEMO_CAMERAS}
        for spec in DEMO_CAMERAS:
            for p in sorted((root / spec.scenario / spec.name).glob("*.jpg")):
                pid, camnum, _ = parse_demo_name(p.name)
                paths.append(p)
                pids.append(pid)
                cams.append(camnum)
                cam_names.append(num_to_spec[camnum].name)
        pids_a, cams_a = np.array(pids), np.array(cams)
        names = np.array(cam_names)
        scen = np.array([num_to_spec[c].scenario for c in cams])
        per_image_kb = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024

        t0 = time.perf_counter()
        feats = color_histogram_features(paths)
        feat_s = time.perf_counter() - t0

        changed = np.isin(pids_a, np.array(info.clothes_changed, dtype=int))
        all_m = np.ones(len(paths), bool)
        splits = [
            ("overall", all_m, all_m),
            ("visible-infrared", scen == "visible-infrared", scen == "visible-infrared"),
            ("cross-resolution", scen == "cross-resolution", scen == "cross-resolution"),
            ("clothing-change", scen == "clothing-change", scen == "clothing-change"),
            ("visible->visible (vis-a->vis-b)", names == "vis-a", names == "vis-b"),
            ("infrared->visible", names == "ir-a", np.isin(names, ["vis-a", "vis-b"])),
            ("visible->infrared", np.isin(names, ["vis-a", "vis-b"]), names == "ir-a"),
            ("low-res->high-res", names == "lr-a", names == "hr-a"),
            ("cc-b->cc-a (all)", names == "cc-b", names == "cc-a"),
            ("cc-b->cc-a (changed clothes)", (names == "cc-b") & changed, names == "cc-a"),
            ("cc-b->cc-a (same clothes)", (names == "cc-b") & ~changed, names == "cc-a"),
        ]
        rng = np.random.default_rng(0)
        rows = []
        for label, qm, gm in splits:
            r = _score(feats, pids_a, cams_a, qm, gm, rng)
            rows.append({"split": label, **r})
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    gen_rows = [{
        "identities": info.n_identities,
        "images": info.n_images,
        "generate_s": round(gen_s, 2),
        "generate_cpu_s": round(gen_cpu_s, 2),
        "images_per_s": round(info.n_images / gen_s, 1),
        "reuse_s": round(reuse_s, 3),
        "avg_kb": round(per_image_kb, 2),
        "color_feat_s": round(feat_s, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }]
    cam_rows = [{"camera": n, "scenario": c.scenario, "group": c.group, "camnum": c.camnum, "images": c.n_images}
                for n, c in info.cameras.items()]
    print_table(gen_rows, "demo generation")
    print_table(cam_rows, "cameras")
    print_table(
        [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
        "colour-histogram baseline (HSV 8x8x8, 6 stripes)",
    )

    by = {r["split"]: r for r in rows}
    scale = info.n_images / 2000.0
    checks = [
        (f"generation < {GEN_TARGET_S:.0f} s per 2,000 crops", gen_s / max(scale, 1e-9) < GEN_TARGET_S,
         f"{gen_s:.2f} s for {info.n_images} crops"),
        ("colour does not solve it: overall mAP < 0.5", by["overall"]["mAP"] < 0.5, f"{by['overall']['mAP']:.4f}"),
        ("infrared->visible colour mAP < 2x random", by["infrared->visible"]["mAP"] < 2 * by["infrared->visible"]["random_mAP"],
         f"{by['infrared->visible']['mAP']:.4f} vs random {by['infrared->visible']['random_mAP']:.4f}"),
    ]
    print("\n== targets")
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'MISS'}  {name}  ({detail})")

    out = write_json("demo", {
        "args": {"identities": identities, "seed": args.seed, "quick": args.quick},
        "generation": gen_rows[0],
        "cameras": cam_rows,
        "clothes_changed": len(info.clothes_changed),
        "color_baseline": rows,
        "targets": [{"name": n, "pass": bool(ok), "detail": d} for n, ok, d in checks],
    })
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
