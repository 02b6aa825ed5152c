"""Benchmark: what 200 operator decisions buy, before and after retraining (issue 17 §3).

    python benchmarks/bench_confirmations.py                       # 30 identities, 200 decisions, seeds 0 1 2
    python benchmarks/bench_confirmations.py --seeds 0 --decisions 50 --identities 16   # a quick look

One workspace of the demo set (``make_demo``, 30 people) trains round 1 with the ``quick`` preset
(CPU, seed 0).  On that round-1 model two decision sets are simulated from the true person ids:

* **review queue** -- the first ``--decisions`` pairs of ``review_queue`` (per direction, every
  group in turn, the pairs whose answer would change a label first), answered yes/no;
* **search-and-answer** -- infrared images of the infrared camera searched one by one, each
  answered on its ``--per-query`` results in the visible group (``answer_selection``), until
  ``--decisions`` answers.

**Before retraining** the round-1 features are scored with the decision-aware ranking
(``itkm_engine.decision_ranking``, what the gallery and ``itkm query`` show at once) against the
plain ranking.  **After retraining** round 2 is trained from the same round-1 checkpoint for each
training seed with no decisions, with the queue's and with the search-and-answer decisions, and
the differences are paired per seed (same checkpoint, same seed: only the decisions differ);
mean and sd over the seeds.  Columns: mAP (cross-camera protocol, percent) overall, each
cross-group direction, clothing-change, "avg mAP" (the mean of all / IR>VIS / LR>HR / CC, as in
bench_accuracy.py), "undecided" (overall mAP over the queries no decision names), the identity ARI
of the final identities against the true ids, and how many decisions the final identities break.
The output also says, per seed, whether Stage I's pseudo-labels differ from the run without
decisions (they must: the decisions reach Stage I).  Targets (issue 17) for 200 review-queue
decisions: paired all mAP >= +5, clothing-change >= +3, undecided >= +4, every decision obeyed,
identity ARI up.  Results: ``results/<out>.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import print_table, write_json  # noqa: E402
from benchmarks.bench_accuracy import Clock, compact_log, new_workspace  # noqa: E402
from itkm_engine.config import Config, preset  # noqa: E402
from itkm_engine.constraints import Closure, Constraints  # noqa: E402
from itkm_engine.data.demo import make_demo  # noqa: E402
from itkm_engine.decision_ranking import decision_ranking  # noqa: E402
from itkm_engine.metrics import evaluate_rank, pseudo_label_quality  # noqa: E402
from itkm_engine.review import simulate_confirmations, simulate_search_and_answer  # noqa: E402
from itkm_engine.session import Session  # noqa: E402
from itkm_engine.stages.homogeneous import HomogeneousStage  # noqa: E402
from itkm_engine.trainer import train  # noqa: E402
from itkm_engine.workspace import Workspace  # noqa: E402
from itkm_engine.workspace.decisions import load_constraints  # noqa: E402

#: mAP columns: name -> (query rows, gallery rows) selector over (scenario, group) arrays.
DIRECTIONS = {
    "IR>VIS": ("visible-infrared", "infrared", "visible"),
    "VIS>IR": ("visible-infrared", "visible", "infrared"),
    "LR>HR": ("cross-resolution", "low-res", "high-res"),
    "HR>LR": ("cross-resolution", "high-res", "low-res"),
}
AVG = ("all", "IR>VIS", "LR>HR", "CC")  # the four columns of bench_accuracy's avg mAP
TARGETS = {"all": 5.0, "CC": 3.0, "undecided": 4.0}


# -- scoring ------------------------------------------------------------------------------------------
def _map(dist: np.ndarray, pid: np.ndarray, cams: np.ndarray, q: np.ndarray, g: np.ndarray) -> float:
    if not len(q) or not len(g):
        return float("nan")
    skip = np.eye(int(cams.max()) + 1, dtype=bool)  # cross-camera protocol: the query's camera left out
    try:
        _, m = evaluate_rank(dist[np.ix_(q, g)], pid[q], pid[g], cams[q], cams[g], max_rank=10, skip_cameras=skip)
    except ValueError:
        return float("nan")
    return 100.0 * float(m)


def score(feats: np.ndarray, ids: np.ndarray, images, closure: Closure | None, decided: set[int]) -> dict:
    """mAP columns of ``feats`` (rows ``ids``) ranked plainly (``closure`` None) or obeying the
    decisions (each query's row through ``decision_ranking``)."""
    rows = images.index_of(ids)
    pid = np.asarray(images.person_id)[rows]
    scen = np.asarray(images.scenario, object)[rows]
    grp = np.asarray(images.group, object)[rows]
    _, cams = np.unique(np.asarray(images.camera, object)[rows].astype(str), return_inverse=True)
    known = np.flatnonzero(pid >= 0)
    sims = feats @ feats.T
    if closure is not None:
        for i in range(len(ids)):
            key, _ = decision_ranking(sims[i], ids, closure, int(ids[i]))
            sims[i] = key
    dist = -np.where(np.isfinite(sims), sims, -1e9)
    out = {"all": _map(dist, pid, cams, known, known)}
    for name, (sc, a, b) in DIRECTIONS.items():
        out[name] = _map(dist, pid, cams, known[(scen[known] == sc) & (grp[known] == a)],
                         known[(scen[known] == sc) & (grp[known] == b)])
    cc = known[scen[known] == "clothing-change"]
    out["CC"] = _map(dist, pid, cams, cc, cc)
    out["avg"] = float(np.mean([out[c] for c in AVG]))
    undecided = known[~np.isin(ids[known], list(decided))]
    out["undecided"] = _map(dist, pid, cams, undecided, known)
    return {k: round(v, 2) for k, v in out.items()}


def identity_check(session: Session, cons: Constraints) -> dict:
    """ARI of the final identities (decisions applied) against the true ids, and the decisions
    they break (a confirmed pair in two identities, a rejected pair in one)."""
    table = session.identities()
    images = session.images()
    pid = np.asarray(images.person_id)[images.index_of(table.image_id)]
    ari = float(pseudo_label_quality(table.identity, pid)["ari"])
    ident = dict(zip(table.image_id.tolist(), table.identity.tolist()))
    broken = sum(ident.get(a, -1) != ident.get(b, -2) for a, b in cons.must.tolist())
    broken += sum(ident.get(a, -1) == ident.get(b, -2) for a, b in cons.cannot.tolist())
    return {"identity ARI": round(100 * ari, 2), "broken": int(broken)}


def cosine_stats(feats: np.ndarray, ids: np.ndarray, images) -> dict:
    """Mean (sd) cosine of same-person and different-people pairs: where a margin could sit."""
    pid = np.asarray(images.person_id)[images.index_of(ids)]
    sims = feats @ feats.T
    same = (pid[:, None] == pid[None, :]) & ~np.eye(len(pid), dtype=bool) & (pid[:, None] >= 0)
    diff = (pid[:, None] != pid[None, :]) & (pid[:, None] >= 0) & (pid[None, :] >= 0)
    return {"same person": f"{sims[same].mean():.3f} ({sims[same].std():.3f})",
            "different people": f"{sims[diff].mean():.3f} ({sims[diff].std():.3f})"}


def implied_links(cons: Constraints, keys: dict[int, str]) -> dict:
    """Same-group pairs the decisions imply through their closure (what Stage I sees) against
    those the operator gave directly."""
    cl = cons.closure
    k = np.array([keys[int(i)] for i in cl.ids], dtype=object)
    must = 0
    for c in range(cl.n_components):
        _, n = np.unique(k[cl.comp == c], return_counts=True)
        must += int((n * (n - 1) // 2).sum())
    cannot = 0
    for x, y in cl.ban.tolist():
        kx, ky = k[cl.comp == x], k[cl.comp == y]
        cannot += int(sum((kx == g).sum() * (ky == g).sum() for g in set(kx)))
    direct = sum(keys[int(a)] == keys[int(b)] for a, b in cons.must.tolist())
    direct_c = sum(keys[int(a)] == keys[int(b)] for a, b in cons.cannot.tolist())
    return {"same-group must (direct / closed)": f"{direct} / {must}",
            "same-group cannot (direct / closed)": f"{direct_c} / {cannot}"}


class StageOneLabels:
    """Records Stage I's pseudo-labels every epoch (benchmark-only spy)."""

    def __init__(self) -> None:
        self.epochs: list[dict[int, int]] = []
        self._orig = HomogeneousStage.begin_epoch

    def __enter__(self):
        orig, rec = self._orig, self.epochs

        def spy(stage, epoch, reporter):
            plan = orig(stage, epoch, reporter)
            rec.append(dict(zip(stage.fs.ids.tolist(), stage.labels.tolist())))
            return plan

        HomogeneousStage.begin_epoch = spy
        return self

    def __exit__(self, *exc) -> None:
        HomogeneousStage.begin_epoch = self._orig


def labels_differ(a: list[dict[int, int]], b: list[dict[int, int]]) -> tuple[bool, float]:
    """Whether two runs' Stage I labels differ (any epoch), and the lowest ARI between them."""
    worst = 1.0
    for x, y in zip(a, b):
        ids = sorted(set(x) & set(y))
        la, lb = np.array([x[i] for i in ids]), np.array([y[i] for i in ids])
        la = np.where(la >= 0, la, -1 - np.arange(len(la)))  # an outlier is its own cluster
        lb = np.where(lb >= 0, lb, -1 - np.arange(len(lb)))
        worst = min(worst, float(pseudo_label_quality(la, lb)["ari"]))
    return worst < 1.0 - 1e-9 or len(a) != len(b), worst


# -- the runs -----------------------------------------------------------------------------------------
def round2(src: Path, dst: Path, cfg: Config, clock: Clock, name: str, device: torch.device) -> dict:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("workspace.lock"))
    t = time.process_time()
    with Workspace.open(dst) as ws, StageOneLabels() as spy:
        res = train(ws, cfg, rounds=1, device=device)[0]
        cons = load_constraints(ws)
    cpu = time.process_time() - t
    with Session.open(dst, cfg=cfg, device="cpu") as s:
        fs = s.ranking()  # the features the session ranks with (camera-centred)
        images = s.images()
        decided = set(np.unique(np.concatenate([cons.must, cons.cannot])).tolist())
        plain = score(fs.feats, fs.ids, images, None, decided)
        ranked = score(fs.feats, fs.ids, images, cons.closure, decided) if len(cons) else plain
        ident = identity_check(s, cons)
    clock.say(f"{name}: {cpu:.0f} CPU s; all mAP {plain['all']:.1f}, with the ranking {ranked['all']:.1f}; "
              f"identity ARI {ident['identity ARI']:.1f}, {ident['broken']} decisions broken")
    return {"plain": plain, "ranked": ranked, **ident, "stage1": spy.epochs, "cpu_s": round(cpu, 1),
            "log": compact_log(res.epochs)}


def stats(vals: list[float]) -> str:
    v = np.asarray(vals, float)
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return f"{v.mean():+.2f} ± {sd:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, default=30)
    ap.add_argument("--decisions", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of round 2")
    ap.add_argument("--per-query", type=int, default=10, help="search-and-answer: results answered per query")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (all runs)")
    ap.add_argument("--sets", nargs="+", default=["queue", "search"], choices=["queue", "search"],
                    help="decision sets to compare with none (default both)")
    ap.add_argument("--base", type=Path, default=None,
                    help="keep the round-1 workspace here and reuse it when it is there (same demo and settings)")
    ap.add_argument("--out", default="confirmations")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from itkm_engine.config_check import apply_sets

    cfg = apply_sets(preset("quick").with_overrides(device="cpu", seed=0), args.set)
    device = torch.device("cpu")
    root = Path(tempfile.mkdtemp(prefix="itkm-bench-confirm-"))
    clock = Clock()
    try:
        home = args.base or root  # the demo set and the round-1 workspace (kept with --base)
        info = make_demo(home / "demo", identities=args.identities, seed=0)
        clock.say(f"demo set: {info.n_images} crops of {info.n_identities} identities")
        if (home / "base" / "itkm.sqlite").exists():
            clock.say(f"round 1 reused from {home / 'base'}")
        else:
            ws = new_workspace(home, "base", [(home / "demo", None)])
            train(ws, cfg, rounds=1, device=device)
            ws.close()
            clock.say("round 1 trained")

        # -- the decision sets, on the round-1 model --------------------------------------------
        sets: dict[str, Path] = {"none": home / "base"}
        made: dict[str, dict] = {}
        with Session.open(home / "base", cfg=cfg, device="cpu") as s:
            feats_stats = cosine_stats(s.features().feats, s.features().ids, s.images())
        clock.say(f"round-1 cosines: same person {feats_stats['same person']}, different "
                  f"{feats_stats['different people']}")
        for name in args.sets:
            path = root / f"base-{name}"
            shutil.copytree(home / "base", path, ignore=shutil.ignore_patterns("workspace.lock"))
            with Session.open(path, cfg=cfg, device="cpu") as s:
                if name == "queue":
                    n = simulate_confirmations(s, args.decisions)
                else:
                    images = s.images()
                    ir = sorted({str(c) for c, g in zip(images.camera, images.group) if g == "infrared"})
                    n = simulate_search_and_answer(s, args.decisions, camera=ir[0], per_query=args.per_query)
                cons = load_constraints(s.ws)
                fs = s.ranking()
                images = s.images()
                keys = dict(zip(images.id.tolist(), images.group_key().tolist()))
                pairs = np.concatenate([cons.must, cons.cannot])
                groups = sorted({keys[int(a)] for a in pairs[:, 0]} | {keys[int(b)] for b in pairs[:, 1]})
                infrared = int(sum("infrared" in keys[int(a)] or "infrared" in keys[int(b)] for a, b in pairs))
                decided = set(np.unique(pairs).tolist())
                before_plain = score(fs.feats, fs.ids, images, None, decided)
                before_ranked = score(fs.feats, fs.ids, images, cons.closure, decided)
                implied = implied_links(cons, keys)
            sets[name] = path
            made[name] = {"decisions": n, "confirmed": int(len(cons.must)), "rejected": int(len(cons.cannot)),
                          "groups asked": groups, "touching infrared": infrared,
                          **implied,
                          "before": before_plain, "before ranked": before_ranked}
            clock.say(f"{name}: {n} decisions ({len(cons.must)} confirmed), {infrared} touch the infrared camera; "
                      f"before retraining all mAP {before_plain['all']:.1f} -> {before_ranked['all']:.1f} "
                      f"with the decision-aware ranking")

        # -- round 2 per seed and decision set -----------------------------------------------------
        runs: dict[tuple[str, int], dict] = {}
        for seed in args.seeds:
            scfg = cfg.with_overrides(seed=seed)
            for name, src in sets.items():
                runs[(name, seed)] = round2(src, root / f"r2-{name}-s{seed}", scfg, clock, f"seed {seed}, {name}", device)

        # -- tables ---------------------------------------------------------------------------------
        cols = ["all", "IR>VIS", "VIS>IR", "LR>HR", "HR>LR", "CC", "avg", "undecided"]
        rows = []
        for name in args.sets:
            m = made[name]
            rows.append({"row": f"{name}: before retraining, plain ranking", **m["before"]})
            rows.append({"row": f"{name}: before retraining, decision-aware ranking", **m["before ranked"]})
            rows.append({"row": f"{name}: before retraining, difference",
                         **{c: round(m["before ranked"][c] - m["before"][c], 2) for c in cols}})
        print_table(rows, f"Before retraining (round-1 model, {args.decisions} decisions), mAP in %")

        paired = []
        mean_rows = []
        for name in sets:
            mean_rows.append({"row": f"round 2, {name}", **{
                c: round(float(np.mean([runs[(name, s)]["plain"][c] for s in args.seeds])), 2) for c in cols},
                "identity ARI": round(float(np.mean([runs[(name, s)]["identity ARI"] for s in args.seeds])), 2),
                "broken": int(sum(runs[(name, s)]["broken"] for s in args.seeds))})
        print_table(mean_rows, f"Round 2, mean of seeds {args.seeds} (plain ranking), mAP in %")
        for name in args.sets:
            for view in ("plain", "ranked"):
                paired.append({"row": f"{name} - none ({'retrained' if view == 'plain' else 'retrained + ranking'})",
                               **{c: stats([runs[(name, s)][view][c] - runs[("none", s)]["plain"][c]
                                            for s in args.seeds]) for c in cols},
                               "identity ARI": stats([runs[(name, s)]["identity ARI"] - runs[("none", s)]["identity ARI"]
                                                      for s in args.seeds])})
        print_table(paired, f"Paired differences over seeds {args.seeds} (mean ± sd), mAP points")

        checks = []
        for name in args.sets:
            for s in args.seeds:
                differ, ari = labels_differ(runs[(name, s)]["stage1"], runs[("none", s)]["stage1"])
                checks.append({"check": f"seed {s}, {name}: Stage I labels differ from the run without decisions",
                               "value": f"{'yes' if differ else 'NO'} (lowest ARI between them {ari:.3f})",
                               "result": "PASS" if differ else "MISS"})
        if "queue" in args.sets:
            q = [runs[("queue", s)]["plain"] for s in args.seeds]
            z = [runs[("none", s)]["plain"] for s in args.seeds]
            for col, target in TARGETS.items():
                d = [a[col] - b[col] for a, b in zip(q, z)]
                checks.append({"check": f"queue: paired {col} mAP >= +{target:g}", "value": stats(d),
                               "result": "PASS" if np.mean(d) >= target else "MISS"})
            broken = sum(runs[("queue", s)]["broken"] for s in args.seeds)
            checks.append({"check": "queue: every decision obeyed (final identities)", "value": f"{broken} broken",
                           "result": "PASS" if broken == 0 else "MISS"})
            d = [runs[("queue", s)]["identity ARI"] - runs[("none", s)]["identity ARI"] for s in args.seeds]
            checks.append({"check": "queue: identity ARI up", "value": stats(d),
                           "result": "PASS" if np.mean(d) > 0 else "MISS"})
        if "search" in args.sets:
            d = [runs[("search", s)]["plain"]["IR>VIS"] - runs[("none", s)]["plain"]["IR>VIS"] for s in args.seeds]
            checks.append({"check": "search-and-answer on the infrared camera: IR>VIS retrained (report)",
                           "value": stats(d), "result": "-"})
            checks.append({"check": "search-and-answer on the infrared camera: IR>VIS before retraining (report)",
                           "value": f"{made['search']['before']['IR>VIS']:.1f} -> "
                                    f"{made['search']['before ranked']['IR>VIS']:.1f}", "result": "-"})
        print_table([{"set": k, **{x: v for x, v in m.items() if not x.startswith("before")}} for k, m in made.items()],
                    "Decision sets")
        print_table(checks, "Checks")
        path = write_json(args.out, {
            "args": vars(args), "identities": info.n_identities, "images": info.n_images, "config": cfg.to_dict(),
            "sets": made, "round1_cosines": feats_stats, "before": rows, "round2_mean": mean_rows, "paired": paired, "checks": checks,
            "runs": {f"{n} seed {s}": {k: v for k, v in r.items() if k != "stage1"} for (n, s), r in runs.items()},
            "total_s": round(time.perf_counter() - clock.t0, 1),
        })
        print(f"results: {path}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
