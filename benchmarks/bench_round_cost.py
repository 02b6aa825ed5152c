"""CPU seconds of one quick round, and of each of its epochs, per 1,000 crops: before and after the stem cache.

    python benchmarks/bench_round_cost.py                  # the demo (30 identities, ~1,000 crops), one seed
    python benchmarks/bench_round_cost.py --variant "k2:data.fixed_views=2"   # another row (repeatable)

Why: a CPU round was mostly the frozen MobileNetV2 stem (issue 20 §3).  The round's stem cache
(itkm_engine/data/stem_cache.py, docs/adr/0015) runs it once per crop and view, so an epoch costs only
the trainable blocks, and the quick preset spends the saving on more epochs.  This benchmark trains one
round of each variant on its own copy of the demo workspace and reports what it cost:

* ``before``: the quick preset as it was before the cache (pixels decoded and the whole tower run on
  every batch: ``data.fixed_views=0 data.stem_cache_mb=0``; Stage I 4 epochs, Stage III 2, extraction
  batches of 128);
* ``after``: today's quick preset (the stem cache with 4 fixed augmented views; Stage I 8 epochs,
  Stage III 3, extraction batches of 32).

Cost = CPU seconds of this process (all threads; plus reaped loader workers, none with the quick
preset's ``data.workers=0``) over ``trainer.train`` of one round, scaled to 1,000 crops; per epoch, the
``cpu_seconds`` each epoch logs (its feature extraction, clustering and steps; Stage I's first epoch
also builds the round's stem cache; Stage I's first extraction reuses the features the previous round
left in the cache, as in every round after the first -- here the round-0 features are extracted before
the clock starts).  Target: a round <= 120 CPU-s per 1,000 crops.  CPU seconds on a shared machine move
with its load (the 1-minute load average is recorded beside them); wall time is printed as well.  The
avg mAP after the round is one seed's, a sanity check only: accuracy is bench_accuracy.py's (3 seeds,
``--baseline`` for paired differences).
"""

from __future__ import annotations

import os

# Before torch is imported (as bench_accuracy): offline weights, OpenMP threads that sleep when waiting.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import peak_rss_mb, print_table, write_json  # noqa: E402
from benchmarks.bench_accuracy import (ROUND_TARGET_CPU_S, Clock, columns, compact_log, cpu_seconds,  # noqa: E402
                                       new_workspace, score_model)
from itkm_engine.config import preset  # noqa: E402
from itkm_engine.config_check import apply_sets, validate_config  # noqa: E402
from itkm_engine.data.demo import make_demo  # noqa: E402
from itkm_engine.trainer import train  # noqa: E402

#: The quick preset before the stem cache (main at 9eaaf7b), as settings over today's.
BEFORE = ("data.fixed_views=0", "data.stem_cache_mb=0", "data.extract_batch_size=128", "stage1.epochs=4",
          "stage3.epochs=2")
VARIANTS: dict[str, tuple[str, ...]] = {"before (no cache, S1 4 / S3 2 epochs)": BEFORE,
                                        "after (quick default: cache, S1 8 / S3 3 epochs)": ()}


def epoch_row(name: str, log: list[dict], per: float) -> dict:
    """Mean CPU-s per 1,000 crops of each stage's epochs (Stage I's first apart: it builds the cache)."""
    row: dict = {"variant": name}
    for stage in ("stage1", "stage2", "stage3"):
        eps = [e for e in log if e["stage"] == stage and "cpu_seconds" in e]
        later = [e["cpu_seconds"] for e in eps if e["epoch"] > 0] or [e["cpu_seconds"] for e in eps]
        if stage == "stage1" and eps:
            row["S1 epoch 0"] = round(eps[0]["cpu_seconds"] * per, 1)
        row[f"{stage} epoch" + (" 1+" if stage == "stage1" else "")] = round(sum(later) / max(len(later), 1) * per, 1)
        row[f"{stage} epochs"] = len(eps)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--identities", type=int, default=30, help="demo identities (30: ~1,000 crops)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="an extra row: settings over today's quick preset")
    ap.add_argument("--only-extra", action="store_true", help="run only the --variant rows")
    ap.add_argument("--out", default="round_cost", help="results/<out>.json")
    args = ap.parse_args()

    variants = {} if args.only_extra else dict(VARIANTS)
    for v in args.variant:
        name, _, sets = v.partition(":")
        variants[name] = tuple(s for s in sets.split(",") if s)
    base = validate_config(preset("quick").with_overrides(device="cpu", seed=args.seed))
    device = torch.device("cpu")
    clock = Clock()
    rows, epochs, logs = [], [], {}
    with tempfile.TemporaryDirectory(prefix="itkm-bench-round-cost-") as tmp:
        root = Path(tmp)
        info = make_demo(root / "demo", identities=args.identities, seed=0)
        clock.say(f"demo set: {info.n_images} crops; torch threads {torch.get_num_threads()}")
        for k, (name, sets) in enumerate(variants.items()):
            cfg = apply_sets(base, list(sets))
            ws = new_workspace(root, f"ws{k}", [(root / "demo", None)])
            r0 = columns(score_model(ws, cfg, device))  # round-0 features into the cache (not timed)
            n = ws.image_count()
            per = 1000.0 / n
            t, c = time.perf_counter(), cpu_seconds()
            res = train(ws, cfg, rounds=1, device=device)[0]
            wall, cpu = time.perf_counter() - t, cpu_seconds() - c
            load = os.getloadavg()[0]
            r1 = columns(score_model(ws, cfg, device))  # the round's final features are cached: evaluation only
            ws.close()
            logs[name] = compact_log(res.epochs)
            rows.append({"variant": name, "crops": n, "round CPU s": round(cpu, 1),
                         "CPU s / 1k crops": round(cpu * per, 1), "wall s / 1k crops": round(wall * per, 1),
                         "load": round(load, 1), "avg mAP r0": r0["avg mAP"], "avg mAP r1 (1 seed)": r1["avg mAP"],
                         "sets": " ".join(sets)})
            epochs.append(epoch_row(name, logs[name], per))
            clock.say(f"{name}: {cpu:.0f} CPU-s ({cpu * per:.0f} per 1,000 crops), {wall:.0f} s wall, load {load:.1f}")
    print_table([{k: v for k, v in r.items() if k != "sets"} for r in rows], "One round (CPU seconds per 1,000 crops)")
    print_table(epochs, "CPU seconds per epoch, per 1,000 crops (mean of a stage's epochs; S1 epoch 0 builds the "
                        "stem cache)")
    over = [r["variant"] for r in rows if r["CPU s / 1k crops"] > ROUND_TARGET_CPU_S]
    print(f"\ntarget <= {ROUND_TARGET_CPU_S:.0f} CPU-s per round and 1,000 crops: "
          f"{'MISS: ' + ', '.join(over) if over else 'PASS'}; 1-min load average min/max "
          f"{min(clock.loads):.1f}/{max(clock.loads):.1f} on {os.cpu_count()} CPUs; peak RSS {peak_rss_mb():.0f} MB")
    path = write_json(args.out, {"args": vars(args), "images": info.n_images, "target_cpu_s_per_1k": ROUND_TARGET_CPU_S,
                                 "torch_threads": torch.get_num_threads(),
                                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "rounds": rows,
                                 "epochs": epochs, "epoch_logs": logs, "loads": clock.loads,
                                 "config_after": base.to_dict()})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
