"""Benchmark: are identity numbers stable? (issue 17 §1)

    python benchmarks/bench_stable_ids.py                 # the 30-person demo, quick preset, CPU
    python benchmarks/bench_stable_ids.py --identities 16 --decisions 100

One workspace of the demo set trains round 1 with the ``quick`` preset.  Then, each on its own copy:

* **one merge** -- the two largest identities merged (``Session.merge_identities``);
* **N decisions** -- N review-queue decisions answered from the true person ids
  (``review.simulate_confirmations``, as ``bench_confirmations.py``);
* **a retraining round** -- round 2 from round 1's checkpoint, no decisions.

Each is measured two ways: *positions*, the numbers the identities had before stable ids (the
clustering's labels with the decisions enforced, renumbered -- what 72a567a showed), and *stable*,
``Session.identities`` now.  An image is *renumbered without cause* when the people sharing its
identity are exactly the same before and after but its number changed.  Across the round (where
the clustering itself changes) we count the images that kept their number, and for the numbers
that exist before and after, how many still name the same majority person (true ids, demo only).
Results: ``results/stable_ids.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import print_table, write_json  # noqa: E402
from benchmarks.bench_accuracy import Clock, new_workspace  # noqa: E402
from itkm_engine import constraints as C  # noqa: E402
from itkm_engine.config import preset  # noqa: E402
from itkm_engine.data.demo import make_demo  # noqa: E402
from itkm_engine.records import rows_of  # noqa: E402
from itkm_engine.review import simulate_confirmations  # noqa: E402
from itkm_engine.session import Session  # noqa: E402
from itkm_engine.trainer import train  # noqa: E402
from itkm_engine.workspace import Workspace  # noqa: E402
from itkm_engine.workspace import decisions as D  # noqa: E402


def positions(s: Session) -> tuple[np.ndarray, np.ndarray]:
    """The numbers 72a567a showed: the stored clustering with the decisions enforced (renumbered
    in order of first appearance), as ``(image ids, numbers)``."""
    raw = s.ws.identities(checkpoint=s.checkpoint_key())
    cons = D.load_constraints(s.ws)
    if not len(cons):
        return raw.image_id, raw.identity
    fs = s.features()
    feats = fs.feats[rows_of(fs.ids, raw.image_id)]
    return raw.image_id, C.enforce_on_labels(raw.identity, raw.image_id, cons, feats)


def stable(s: Session) -> tuple[np.ndarray, np.ndarray]:
    t = s.identities()
    return t.image_id, t.identity


def _members(ids: np.ndarray, num: np.ndarray) -> dict[int, frozenset]:
    return {int(x): frozenset(ids[num == x].tolist()) for x in np.unique(num)}


def renumbered_without_cause(before, after) -> dict:
    """Images whose identity holds exactly the same people before and after but whose number
    changed; and numbers present before and after that now name other people."""
    ids_b, num_b = before
    ids_a, num_a = after
    r = rows_of(ids_a, ids_b)
    keep = r >= 0
    ids, nb, na = ids_b[keep], num_b[keep], num_a[r[keep]]
    mb, ma = _members(ids, nb), _members(ids, na)
    same = np.array([mb[int(b)] == ma[int(a)] for b, a in zip(nb, na)], bool)
    moved = same & (nb != na)
    other_people = sum(mb[x] != ma[x] for x in set(mb) & set(ma))
    return {"images unchanged": int(same.sum()), "renumbered without cause": int(moved.sum()),
            "identities unchanged": len(np.unique(nb[same])), "numbers before": len(mb),
            "numbers whose people changed": int(other_people)}


def across_round(before, after, pid: dict[int, int]) -> dict:
    ids_b, num_b = before
    ids_a, num_a = after
    r = rows_of(ids_a, ids_b)
    keep = r >= 0
    ids, nb, na = ids_b[keep], num_b[keep], num_a[r[keep]]
    p = np.array([pid[int(i)] for i in ids])

    def majority(num):
        out = {}
        for x in np.unique(num):
            m = p[num == x]
            m = m[m >= 0]
            if len(m):
                v, c = np.unique(m, return_counts=True)
                out[int(x)] = int(v[np.argmax(c)])
        return out

    mb, ma = majority(nb), majority(na)
    carried = sorted(set(mb) & set(ma))
    return {"images": len(ids), "kept their number": int((nb == na).sum()),
            "numbers carried over": len(carried), "same majority person": sum(mb[x] == ma[x] for x in carried)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=30)
    ap.add_argument("--decisions", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="stable_ids")
    args = ap.parse_args()

    cfg = preset("quick").with_overrides(device="cpu", seed=args.seed)
    device = torch.device("cpu")
    root = Path(tempfile.mkdtemp(prefix="itkm-bench-stable-ids-"))
    clock = Clock()
    rows, timing = [], {}
    try:
        info = make_demo(root / "demo", identities=args.identities, seed=0)
        clock.say(f"demo set: {info.n_images} crops of {info.n_identities} identities")
        ws = new_workspace(root, "base", [(root / "demo", None)])
        cfg.save(ws.path / "config.toml")
        train(ws, cfg, rounds=1, device=device)
        ws.close()
        clock.say("round 1 trained")
        with Session.open(root / "base", cfg=cfg, device="cpu") as s:
            t = time.perf_counter()
            s.identities()
            timing["first listing (clustering + ids) s"] = round(time.perf_counter() - t, 2)
            images = s.images()
            pid = dict(zip(images.id.tolist(), images.person_id.tolist()))

        def copy(name: str) -> Path:
            path = root / name
            shutil.copytree(root / "base", path, ignore=shutil.ignore_patterns("workspace.lock"))
            return path

        # -- one merge --------------------------------------------------------------------------
        with Session.open(copy("merge"), cfg=cfg, device="cpu") as s:
            p0, s0 = positions(s), stable(s)
            ident, counts = np.unique(s0[1], return_counts=True)
            x, y = (int(v) for v in ident[np.argsort(-counts, kind="stable")][:2])
            s.merge_identities(x, y)
            t = time.perf_counter()
            s1 = stable(s)
            timing["identities after a merge s"] = round(time.perf_counter() - t, 3)
            p1 = positions(s)
        rows.append({"change": "one merge", "numbers": "positions (72a567a)", **renumbered_without_cause(p0, p1)})
        rows.append({"change": "one merge", "numbers": "stable", **renumbered_without_cause(s0, s1)})
        clock.say("one merge measured")

        # -- N review-queue decisions ---------------------------------------------------------------
        with Session.open(copy("decisions"), cfg=cfg, device="cpu") as s:
            p0, s0 = positions(s), stable(s)
            n = simulate_confirmations(s, args.decisions, seed=args.seed)
            t = time.perf_counter()
            s1 = stable(s)
            timing[f"identities after {n} decisions s"] = round(time.perf_counter() - t, 3)
            p1 = positions(s)
        rows.append({"change": f"{n} decisions", "numbers": "positions (72a567a)", **renumbered_without_cause(p0, p1)})
        rows.append({"change": f"{n} decisions", "numbers": "stable", **renumbered_without_cause(s0, s1)})
        clock.say(f"{n} decisions measured")

        # -- a retraining round -----------------------------------------------------------------------
        path = copy("round2")
        with Session.open(path, cfg=cfg, device="cpu") as s:
            p0, s0 = positions(s), stable(s)
        ws = Workspace.open(path)
        train(ws, cfg, rounds=1, device=device)
        ws.close()
        clock.say("round 2 trained")
        with Session.open(path, cfg=cfg, device="cpu") as s:
            t = time.perf_counter()
            s1 = stable(s)
            timing["identities after a round (clustering + ids) s"] = round(time.perf_counter() - t, 2)
            p1 = positions(s)
        round_rows = [{"numbers": "positions (72a567a)", **across_round(p0, p1, pid)},
                      {"numbers": "stable", **across_round(s0, s1, pid)}]

        print_table(rows, "renumbered without cause (identity unchanged, number changed)")
        print_table(round_rows, "across a retraining round (round 1 -> round 2)")
        print_table([timing], "time")
        out = write_json(args.out, {"identities": args.identities, "images": info.n_images, "decisions": args.decisions,
                                    "seed": args.seed, "rows": rows, "round": round_rows, "timing": timing,
                                    "command": "python benchmarks/bench_stable_ids.py " + " ".join(sys.argv[1:])})
        print(f"\nresults: {out}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
