"""Benchmark: does a round learn more when the operator confirms/rejects some pairs?

    python benchmarks/bench_confirmations.py                      # 30 identities, 0 / 50 / 200 decisions
    python benchmarks/bench_confirmations.py --counts 0 50 200 500 --identities 60

One workspace of the demo set (``make_demo``) trains round 1 with the ``quick`` preset (as
``bench_accuracy.py``).  Its folder is then copied once per count N; each copy gets N decisions
simulated from the true person ids (``itkm_engine.review.simulate_confirmations``: the review
queue's pairs nearest the decision boundary, cross-scenario first; confirmed where the ids agree,
rejected where they differ) and trains round 2.  Every copy's round 2 starts from the same
checkpoint with the same seed, so the only difference is the decisions.  Columns as
``bench_accuracy.py`` (mAP / Rank-1 per split, "avg mAP" the decision metric), plus how many of
the N decisions were confirmations.  Results: ``results/<out>.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import print_table, write_json  # noqa: E402
from benchmarks.bench_accuracy import Clock, Runs  # noqa: E402
from itkm_engine.config import preset  # noqa: E402
from itkm_engine.review import simulate_confirmations  # noqa: E402
from itkm_engine.workspace.decisions import load_constraints  # noqa: E402
from itkm_engine.data.demo import make_demo  # noqa: E402
from itkm_engine.session import Session  # noqa: E402
from itkm_engine.workspace import Workspace  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=30)
    ap.add_argument("--counts", type=int, nargs="+", default=[0, 50, 200], help="decisions per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="model config name instead of the preset's (e.g. itkm-tiny)")
    ap.add_argument("--out", default="confirmations")
    args = ap.parse_args()

    cfg = preset("quick").with_overrides(device="cpu", seed=args.seed)
    if args.model:
        cfg = cfg.with_overrides(**{"model.name": args.model})
    device = torch.device("cpu")
    root = Path(tempfile.mkdtemp(prefix="itkm-bench-confirm-"))
    clock = Clock()
    try:
        info = make_demo(root / "demo", identities=args.identities, seed=0)
        clock.say(f"demo set: {info.n_images} crops of {info.n_identities} identities")
        runs = Runs(root, root / "demo", device, clock)
        ws = runs.workspace("base")
        round1, _ = runs.round(ws, cfg, "round 1")
        ws.close()
        rows = [{"row": "round 1", "decisions": 0, **round1}]
        for n in args.counts:
            path = root / f"n{n}"
            shutil.copytree(root / "base", path, ignore=shutil.ignore_patterns("workspace.lock"))
            ws = Workspace.open(path)
            t = time.perf_counter()
            with Session(ws, cfg, device="cpu") as s:
                got = simulate_confirmations(s, n, seed=args.seed) if n else 0
                must = len(load_constraints(ws).must)
            clock.say(f"{got} simulated decisions ({must} confirmations) in {time.perf_counter() - t:.1f} s")
            ws = Workspace.open(path)
            cols, cpu = runs.round(ws, cfg, f"round 2 with {n} decisions")
            ws.close()
            rows.append({"row": f"round 2, {n} decisions", "decisions": got, "confirmed": must, **cols,
                         "round CPU s": round(cpu, 1)})
        print_table(rows)
        base = rows[1]["avg mAP"] if len(rows) > 1 else None
        curve = [{"decisions": r["decisions"], "avg mAP": r["avg mAP"],
                  "d avg mAP vs 0": round(r["avg mAP"] - base, 2) if base is not None else None} for r in rows[1:]]
        print_table(curve)
        write_json(args.out, {"identities": args.identities, "counts": args.counts, "rows": rows, "curve": curve,
                              "model": cfg.model.name, "seed": args.seed})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
