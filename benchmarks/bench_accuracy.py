"""Benchmark: does ITKM learn?  The quick preset (CPU) on the demo camera set.

    python benchmarks/bench_accuracy.py                    # 30 identities (~1,000 crops), 3 seeds
    python benchmarks/bench_accuracy.py --quick            # 16 identities, one seed, no extras
    python benchmarks/bench_accuracy.py --no-ablations     # the README's table: 3 seeds, 2 rounds, bounds
    python benchmarks/bench_accuracy.py --realistic --vary-data --no-ablations --no-oracle --out mod-base
    python benchmarks/bench_accuracy.py ... --set cluster.eps=0.4 --baseline results/mod-base.json --out mod-eps04
    python benchmarks/bench_accuracy.py --no-ablations --no-oracle --rounds 1 --set stage1.epochs=8 \
        --baseline benchmarks/results/stem-base.json --out stem-s1x8      # paired against an earlier run

Why: a training engine that runs end to end can still learn nothing.  This benchmark trains the
real thing (``itkm_engine.trainer.train``: Stage I -> II -> III, the ``quick`` preset: an
ImageNet-pretrained MobileNetV2 image tower at 128x64 and the small CLIP text tower) on the
procedural demo set (``itkm_engine.data.demo.make_demo``) and scores retrieval exactly as
``itkm evaluate`` does (``Session.evaluate`` / ``Session.score``: the ranking's features --
camera-centred by default, ``inference.camera_centre`` -- through
``itkm_engine.evaluation.evaluate_features``), reading its cross-camera protocol: every labelled
crop queries the crops of every *other* camera: "is this person found again elsewhere".

Rows of the main table:
  * colour histogram -- ``benchmarks/color_baseline.py`` (what clothing colour alone achieves);
  * round 0          -- the initial model's features (ImageNet weights, no ReID training);
  * round 1, round 2 -- after one and two training rounds, for each of ``--seeds`` seeds, and the
    per-column standard deviation over the seeds;
  * round 1 with ORACLE pseudo-labels -- the per-group clustering replaced by the true ids, all
    else unchanged: the headroom left in pseudo-label quality (``--no-oracle`` skips it);
  * round 1 SUPERVISED -- the same tower trained with the TRUE ids across groups (Stage I only,
    for the image epochs of Stage I + III): the supervised bound (``--no-supervised`` skips it);
  * chance -- random feature directions under the same protocol.
Both bounds are also printed beside the method's rounds with the gap to each ("The method beside
its bounds"), and every round's rise over round 0, paired per seed (mean +- sd).
Ablation table: one round from the same seed and the same data with one ITKM switch off at a time
(``model.scenario_embedding``, ``model.group_stems``, ``stage3.chm``, ``stage3.ihm``,
``stage3.dru``) against the full method's round 1; the separation loss on a two-site demo (two
demo sets with disjoint people, ingested as two sites: the loss only acts across sites).
Operator decisions: ``bench_confirmations.py`` (round 2 from one round-1 checkpoint with 0, 50 and
200 decisions simulated from the true ids).
Columns: mAP / Rank-1 (percent) overall ("all"), infrared -> visible, low-res -> high-res, within
the clothing-change scenario, and "avg mAP", the mean of the four mAP columns (decision metric).

Per direction (issue 20): besides the four columns, every cross-group direction (VIS>IR,
HR>LR) and, per infrared *kind* of the demo (``--infrared both``: ``ir-a`` thermal-looking,
``ir-b`` near-infrared), TH>VIS / VIS>TH / NIR>VIS / VIS>NIR: queries of that camera against the
visible group and back, same protocol.  Per-group pseudo-label quality (pairwise precision /
recall / ARI inside each group, ``precision[<group>]`` in the epoch logs) is summarised per round
for the first and last Stage I epoch.  ``--oracle-per-camera``: an oracle with the true ids
inside each camera only (what cross-camera association inside a group is worth).
``--realistic``: the demo in the real-photo regime (``REALISTIC``: 90 ids, 2-6 crops per person
per camera); ``--vary-data``: seed k trains on the demo drawn with seed k (data and training
both vary: what holds across data, not one drawing).  ``--set KEY=VALUE`` changes the config of
every run; ``--baseline JSON`` prints paired differences (same seeds) against an earlier run,
mean +- sd over the seeds, per round and column.  ``--save-features DIR`` keeps every scored
model's features (``seed<k>_round<r>.npz``) for offline re-scoring.

Expectations (issue 9): rounds 1 and 2 beat round 0 and the colour baseline on avg mAP by more
than the seed noise; infrared -> visible mAP rises round over round; CPU seconds per round
<= 120.  Noise: a margin counts only beyond 2*sqrt(2)*sd of the seeds' round-1 avg mAP (about two
standard deviations of the difference of two single runs; with 3 seeds a rough estimate).  Each
expectation prints PASS/MISS, and "(within noise)" when the margin is smaller than that.
CPU seconds (process time, all threads, plus reaped loader workers) are the round's cost; wall
time and the 1-minute load average are recorded beside them, since other work on the machine
stretches the wall time.  Each epoch's CPU seconds (``cpu_seconds``: its features, clusters and
steps) are in the JSON's epoch logs.

``--set KEY=VALUE`` changes the config of every run; ``--rounds N`` trains N rounds per seed;
``--baseline JSON`` prints this run's paired differences (same seeds) against an earlier run's
``per_seed`` results, mean +- sd over the seeds, per round and column.
"""


from __future__ import annotations

import os

# Before torch is imported: offline weights only, and OpenMP threads that sleep instead of spin
# while waiting (on a shared, over-subscribed CPU spinning threads made each step 5x slower).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import peak_rss_mb, print_table, write_json  # noqa: E402
from benchmarks.color_baseline import color_histogram_features  # noqa: E402
from itkm_engine.config import Config, preset  # noqa: E402
from itkm_engine.config_check import apply_sets, validate_config  # noqa: E402
from itkm_engine.data.demo import REALISTIC, make_demo, make_two_site_demo  # noqa: E402
from itkm_engine.data.ingest import ingest  # noqa: E402
from itkm_engine.session import Session  # noqa: E402
from itkm_engine.trainer import train  # noqa: E402
from itkm_engine.workspace import Workspace  # noqa: E402

#: Column name -> evaluation split name (mAP and Rank-1; avg mAP is the mean of these four mAPs).
SPLITS = {
    "all": "overall",
    "IR>VIS": "visible-infrared: infrared -> visible",
    "LR>HR": "cross-resolution: low-res -> high-res",
    "CC": "clothing-change",
}
#: The other cross-group directions (mAP only).
MORE_SPLITS = {
    "VIS>IR": "visible-infrared: visible -> infrared",
    "HR>LR": "cross-resolution: high-res -> low-res",
}
#: Demo camera modality -> short name of the per-kind columns (TH>VIS, VIS>TH, NIR>VIS, VIS>NIR).
KINDS = {"infrared": "TH", "near-infrared": "NIR"}
#: Columns of the compact per-direction tables.
DIRECTIONS = ("all", "IR>VIS", "VIS>IR", "TH>VIS", "VIS>TH", "NIR>VIS", "VIS>NIR", "LR>HR", "HR>LR", "CC")
#: Ablations on the one-site demo: one switch off at a time (the separation loss is measured on
#: the two-site demo: with one site it has nothing to separate).
ABLATIONS = (
    "model.scenario_embedding",
    "model.group_stems",
    "stage3.chm",
    "stage3.ihm",
    "stage3.dru",
)
ROUND_TARGET_CPU_S = 120.0  # CPU seconds per round on ~1,000 crops (issue 9)
#: Evaluation protocol of the table's columns.
PROTOCOL = "cross-camera"



class Clock:
    """Wall time since the start, and the load average samples taken along the way."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.loads: list[float] = [os.getloadavg()[0]]

    def say(self, text: str) -> None:
        self.loads.append(os.getloadavg()[0])
        print(f"[{time.perf_counter() - self.t0:6.0f} s, load {self.loads[-1]:4.1f}] {text}", flush=True)


def columns(result: dict, camera_kinds: dict[str, str] | None = None) -> dict[str, float]:
    """mAP and Rank-1 in percent for each column (``PROTOCOL``) of one evaluation (``Session.score``
    / ``Session.evaluate``: what ``itkm evaluate`` prints); NaN where a split had no valid query.
    ``camera_kinds`` (demo camera -> modality) names the per-infrared-kind columns (TH>VIS, VIS>TH,
    NIR>VIS, VIS>NIR): the evaluation's per-camera split of that camera, or the infrared group's
    split when it is the group's only camera."""
    scores = result.get("protocols", {}).get(PROTOCOL, {})

    def pct(split: str, key: str = "mAP") -> float:
        s_ = scores.get(split)
        return round(100 * s_[key], 1) if s_ else float("nan")

    out: dict[str, float] = {}
    for col, split in SPLITS.items():
        out[f"{col} mAP"], out[f"{col} R1"] = pct(split), pct(split, "rank1")
    out["avg mAP"] = round(float(np.mean([out[f"{c} mAP"] for c in SPLITS])), 2)  # the decision metric
    for col, split in MORE_SPLITS.items():
        out[f"{col} mAP"] = pct(split)
    kinds = camera_kinds or {}
    infrared = [c for c, m in kinds.items() if m in KINDS]
    for modality, short in KINDS.items():
        cams = [c for c, m in kinds.items() if m == modality]
        if len(cams) != 1:
            out[f"{short}>VIS mAP"] = out[f"VIS>{short} mAP"] = float("nan")
        elif len(infrared) == 1:
            out[f"{short}>VIS mAP"], out[f"VIS>{short} mAP"] = out["IR>VIS mAP"], out["VIS>IR mAP"]
        else:
            out[f"{short}>VIS mAP"] = pct(f"visible-infrared: camera {cams[0]} -> visible")
            out[f"VIS>{short} mAP"] = pct(f"visible-infrared: visible -> camera {cams[0]}")
    return out


@contextlib.contextmanager
def oracle_pseudo_labels(per_camera: bool = False):
    """Replace the per-group clustering with the true person ids (per group, as the clustering
    would give at best).  Everything else -- model, stages, step budget -- stays the real thing,
    so this row is an upper bound that separates "the pseudo-labels are wrong" from "the model
    cannot learn in this budget".  ``per_camera``: true ids inside each *camera* only (a person
    seen by two cameras of a group is two clusters): what perfect clustering without any
    cross-camera association inside a group would give.  Benchmark-only: the engine never sees
    identity labels."""
    from itkm_engine.metrics import pseudo_label_quality
    from itkm_engine.stages import context

    original = context.RoundContext.cluster_per_group

    def true_labels(self, fs, reporter):
        rows = self.rows(fs)
        pid = np.asarray(self.images.person_id)[rows]
        keys = self.group_keys[rows].astype(str)
        if per_camera:
            keys = np.char.add(np.char.add(keys, "@"), np.asarray(self.images.camera)[rows].astype(str))
        known = pid >= 0
        labels = np.full(len(fs), -1, dtype=np.int64)
        pairs = np.char.add(np.char.add(keys[known], "#"), pid[known].astype(str))
        labels[known] = np.unique(pairs, return_inverse=True)[1]
        metrics = {"n_clusters": float(len(np.unique(labels[known]))), "n_outliers": float((~known).sum())}
        metrics.update({k: float(v) for k, v in pseudo_label_quality(labels, pid).items()
                        if k in ("precision", "recall", "fscore", "ari")})
        metrics.update(context.group_label_quality(labels, pid, self.group_keys[rows]))
        return labels, metrics

    context.RoundContext.cluster_per_group = true_labels
    try:
        yield
    finally:
        context.RoundContext.cluster_per_group = original


@contextlib.contextmanager
def supervised_labels():
    """The supervised bound: Stage I trained on the TRUE ids across groups (one memory over all
    groups, so an infrared crop's positive is its person's centroid over every camera).  Use with
    Stage II/III at 0 epochs and Stage I given their image epochs (:func:`supervised_config`).
    Benchmark-only."""
    from itkm_engine.stages import context

    original = context.RoundContext.cluster_per_group
    original_keys = context.RoundContext.group_keys

    def true_labels(self, fs, reporter):
        pid = np.asarray(self.images.person_id)[self.rows(fs)]
        labels = np.where(pid >= 0, np.unique(pid, return_inverse=True)[1], -1).astype(np.int64)
        return labels, {"n_clusters": float(len(np.unique(labels[labels >= 0])))}

    context.RoundContext.cluster_per_group = true_labels
    context.RoundContext.group_keys = property(lambda self: np.full(len(self.images), "all", dtype=object))
    try:
        yield
    finally:
        context.RoundContext.cluster_per_group = original
        context.RoundContext.group_keys = original_keys


def supervised_config(cfg: Config) -> Config:
    """Stage I with the image epochs of Stage I + III, no Stage II/III (same image budget)."""
    return cfg.with_overrides(**{"stage1.epochs": cfg.stage1.epochs + cfg.stage3.epochs, "stage2.epochs": 0,
                                 "stage3.epochs": 0})


def group_quality(log: list[dict]) -> dict[str, float]:
    """Per-group pseudo-label quality of a round's first and last Stage I epoch (from its log):
    ``{"P0[infrared]": ..., "P[infrared]": ..., "R[...]", "ARI[...]", "C[...]" (clusters)}``, short
    group names (the part after the scenario)."""
    stage1 = [e for e in log if e.get("stage") == "stage1"]
    out: dict[str, float] = {}
    for tag, e in (("0", stage1[0] if stage1 else {}), ("", stage1[-1] if stage1 else {})):
        for k, v in e.items():
            if "[" not in k:
                continue
            name, group = k.split("[", 1)
            short = {"precision": "P", "recall": "R", "ari": "ARI", "n_clusters": "C"}.get(name)
            if short:
                out[f"{short}{tag}[{group.rstrip(']').split('/')[-1]}]"] = v
    return out


def pivot_quality(label: str, flat: dict[str, float]) -> list[dict]:
    """One row per group of a :func:`group_quality` dict (or of paired differences of one)."""
    groups = sorted({k.split("[", 1)[1].rstrip("]") for k in flat if "[" in k})
    order = ("P0", "R0", "ARI0", "C0", "P", "R", "ARI", "C")
    return [{"row": label, "group": g, **{m: flat.get(f"{m}[{g}]", "") for m in order}} for g in groups]


def parse_sets(items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` items as a dict for the JSON record (values as written)."""
    return dict(item.split("=", 1) for item in items)


def paired(per_seed: list[dict], base: list[dict], rounds: list[str], cols: list[str]) -> list[dict]:
    """Per round: mean +- sd over the seeds both runs share of (this run - baseline), per column."""
    by_seed = {b["seed"]: b for b in base}
    rows = []
    for r in rounds:
        diffs: dict[str, list[float]] = {c: [] for c in cols}
        n = 0
        for s_ in per_seed:
            b = by_seed.get(s_["seed"])
            if b is None or r not in b or r not in s_:
                continue
            n += 1
            for c in cols:
                a_, b_ = s_[r].get(c), b[r].get(c)
                if a_ is not None and b_ is not None and np.isfinite(a_) and np.isfinite(b_):
                    diffs[c].append(a_ - b_)
        row: dict = {"round": r, "seeds": n}
        for c in cols:
            d = diffs[c]
            row[c] = (f"{np.mean(d):+.2f}+-{np.std(d, ddof=1):.2f}" if len(d) > 1 else
                      (f"{d[0]:+.2f}" if d else ""))
        rows.append(row)
    return rows


def new_workspace(root: Path, name: str, demo_roots: list[tuple[Path, str | None]]) -> Workspace:
    ws = Workspace.open(root / name, create=True)
    for folder, site in demo_roots:
        ingest(ws, [folder], site=site)
    return ws


def score_model(ws: Workspace, cfg: Config, device: torch.device, camera_kinds: dict[str, str] | None = None,
                save: Path | None = None) -> dict[str, float]:
    """Columns (:func:`columns`) of the workspace's current model (the latest round, or the
    initial one), scored as ``itkm evaluate`` scores it: ``Session.evaluate`` (the ranking's
    features, ``inference.camera_centre``); ``save``: also write the raw features and labels there
    (npz).

    Features go to the workspace's cache under the same key the trainer uses, so the next
    round starts from them instead of embedding everything again."""
    session = Session(ws, cfg, device)  # not closed: that would close the benchmark's workspace
    result = session.evaluate()
    if save is not None:
        fs = session.features()
        images = ws.images()
        images = images.subset(images.index_of(fs.ids))
        save.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(save, feats=fs.feats.astype(np.float16), ids=fs.ids, person_id=np.asarray(images.person_id),
                            camera=np.asarray(images.camera).astype(str), scenario=np.asarray(images.scenario).astype(str),
                            group=np.asarray(images.group).astype(str))
    return columns(result, camera_kinds)


def scored(feats: np.ndarray, ws: Workspace, cfg: Config, camera_kinds: dict[str, str]) -> dict[str, float]:
    """Columns of features that are not a model's (rows = ``ws.images()``), through the same
    scoring as :func:`score_model` (``Session.score``)."""
    return columns(Session(ws, cfg, "cpu").score(feats, ws.images().id), camera_kinds)


def compact_log(epochs: list[dict]) -> list[dict]:
    """The per-epoch values worth keeping in the JSON (counts, label quality, losses, time)."""
    keep = ("n_clusters", "n_outliers", "precision", "recall", "ari", "chm_pairs", "chm_precision", "ihm_pairs",
            "ihm_precision", "ihm_pairs_used", "separation", "n_sites", "loss", "seconds", "cpu_seconds")
    out = []
    for e in epochs:
        v = e.get("values", e)
        out.append({"stage": e.get("stage"), "epoch": e.get("epoch"),
                    **{k: round(float(v[k]), 4) for k in v if k in keep or "[" in k}})
    return out


def expectation(name: str, value: float, reference: float, noise: float | None) -> dict:
    """PASS when ``value`` beats ``reference``; "(within noise)" when the margin is not bigger
    than the noise threshold, whichever way it goes."""
    margin = value - reference
    result = "PASS" if margin > 0 else "MISS"
    if noise is not None and abs(margin) <= noise:
        result += " (within noise)"
    return {"expectation": name, "value": round(value, 2), "reference": round(reference, 2),
            "margin": round(margin, 2), "result": result}


def cols_of(pairs: list[dict]) -> list[str]:
    """The numeric columns every ``off`` result of ``pairs`` has."""
    keys = [c for c in pairs[0]["off"] if isinstance(pairs[0]["off"][c], (int, float))]
    return [c for c in keys if all(c in p_["off"] for p_ in pairs)]


def diff_columns(pairs: list[dict], cols: list[str]) -> dict[str, str]:
    """``d <col>``: mean +- sd over the pairs of (off - full), per column (one pair: the difference)."""
    out = {}
    for c in cols:
        d = [p_["off"][c] - p_["full"][c] for p_ in pairs
             if np.isfinite(p_["off"].get(c, np.nan)) and np.isfinite(p_["full"].get(c, np.nan))]
        out[f"d {c}"] = (f"{np.mean(d):+.2f}+-{np.std(d, ddof=1):.2f}" if len(d) > 1 else
                         (f"{d[0]:+.2f}" if d else ""))
    return out


def epoch_costs(logs: dict[str, list[dict]]) -> list[dict]:
    """Mean CPU seconds of each stage's first and later epochs over the rounds in ``logs``."""
    acc: dict[str, list[float]] = {}
    for log in logs.values():
        for e in log:
            if "cpu_seconds" in e:
                acc.setdefault(f"{e['stage']} epoch {'0' if e['epoch'] == 0 else '1+'}", []).append(e["cpu_seconds"])
    return [{"epoch": k, "cpu_s": round(float(np.mean(v)), 1), "n": len(v)} for k, v in sorted(acc.items())]


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its reaped children (loader workers)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


class Runs:
    """Workspaces, rounds and their bookkeeping (times, epoch logs) for one benchmark."""

    def __init__(self, root: Path, demo_root: Path, device: torch.device, clock: Clock) -> None:
        self.root, self.demo_root, self.device, self.clock = root, demo_root, device, clock
        self.times: list[dict] = []
        self.logs: dict[str, list[dict]] = {}

    def workspace(self, name: str, sources: list[tuple[Path, str | None]] | None = None) -> Workspace:
        return new_workspace(self.root, name, sources or [(self.demo_root, None)])

    def round(self, ws: Workspace, cfg: Config, name: str, camera_kinds: dict[str, str] | None = None,
              save: Path | None = None) -> tuple[dict, float]:
        """Train one round, then score it: (columns, CPU seconds)."""
        t, c = time.perf_counter(), cpu_seconds()
        res = train(ws, cfg, rounds=1, device=self.device)[0]
        wall, cpu = time.perf_counter() - t, cpu_seconds() - c
        self.times.append({"run": name, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                           "load": round(os.getloadavg()[0], 1), "images": ws.image_count()})
        self.logs[name] = compact_log(res.epochs)
        cols = score_model(ws, cfg, self.device, camera_kinds, save)
        self.clock.say(f"{name}: {wall:.0f} s wall, {cpu:.0f} s CPU, avg mAP {cols['avg mAP']:.2f}")
        return cols, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 identities, one seed, no oracle row")
    ap.add_argument("--identities", type=int, default=None,
                    help="demo identities (default 30; 16 with --quick; 90 with --realistic)")
    ap.add_argument("--seed", type=int, default=0, help="training seed of the full method and the ablations")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the full method's round 1, for the noise level")
    ap.add_argument("--rounds", type=int, default=2, help="training rounds per seed (default 2)")
    ap.add_argument("--infrared", choices=("both", "thermal", "nir"), default="both",
                    help="the demo's infrared cameras (make_demo(infrared=...); default both kinds)")
    ap.add_argument("--realistic", action="store_true",
                    help="the real-photo regime: REALISTIC demo (90 ids, 2-6 crops per person per camera)")
    ap.add_argument("--vary-data", action="store_true", help="seed k trains on the demo drawn with seed k")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run (repeatable), e.g. --set cluster.eps=0.4")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="an earlier results JSON: print paired differences per seed (mean +- sd)")
    ap.add_argument("--no-supervised", action="store_true",
                    help="skip the supervised bound row (true ids across groups, printed by default)")
    ap.add_argument("--oracle-per-camera", action="store_true",
                    help="add an oracle row with true ids inside each camera only (no cross-camera links)")
    ap.add_argument("--save-features", type=Path, default=None, help="keep every scored model's features here")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--ablation-seeds", type=int, default=3,
                    help="seeds each ablation trains with, paired with the full method's same seed (default 3; "
                         "at most --seeds)")
    ap.add_argument("--no-oracle", action="store_true",
                    help="skip the per-group oracle row (true ids inside each group, printed by default)")
    ap.add_argument("--model", default=None, help="model config name instead of the preset's (e.g. itkm-tiny)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    ap.add_argument("--out", default=None, help="results/<out>.json (default accuracy, or accuracy_quick with --quick)")
    args = ap.parse_args()
    identities = args.identities or (16 if args.quick else REALISTIC["identities"] if args.realistic else 30)
    per_camera = REALISTIC["images_per_camera"] if args.realistic else None
    out_name = args.out or ("accuracy_quick" if args.quick else "accuracy")
    n_seeds = 1 if args.quick else max(1, args.seeds)
    oracle = not (args.quick or args.no_oracle)
    supervised = not (args.quick or args.no_supervised)
    if args.quick:
        args.no_ablations = True
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    cfg = preset("quick").with_overrides(device="cpu", seed=args.seed)
    if args.model:
        cfg = cfg.with_overrides(**{"model.name": args.model})
    cfg = apply_sets(validate_config(cfg), args.set)
    device = torch.device("cpu")
    round_names = [f"round {r}" for r in range(args.rounds + 1)]

    if args.keep is not None:
        root = args.keep
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        tmp = None
    else:
        tmp = tempfile.mkdtemp(prefix="itkm-bench-accuracy-")
        root = Path(tmp)
    clock = Clock()
    demos: dict[int, tuple[Path, object]] = {}

    def demo(seed: int):
        """(root, DemoInfo) of the demo drawn with ``seed`` (made once)."""
        if seed not in demos:
            folder = root / f"demo{seed}"
            info = make_demo(folder, identities=identities, images_per_camera=per_camera, seed=seed,
                             infrared=args.infrared)
            clock.say(f"demo set (seed {seed}, infrared {args.infrared}): {info.n_images} crops of "
                      f"{info.n_identities} identities in {len(info.cameras)} cameras; torch threads "
                      f"{torch.get_num_threads()}")
            demos[seed] = (folder, info)
        return demos[seed]

    def kinds_of(folder: Path) -> dict[str, str]:
        import json

        manifest = json.loads((folder / "demo_manifest.json").read_text())
        return {name: c["modality"] for name, c in manifest["cameras"].items()}

    try:
        folder0, info = demo(0)
        runs = Runs(root, folder0, device, clock)

        # -- the full method, every seed: round 0, 1, 2, ... ----------------------------------------
        colour = chance = None
        per_seed: list[dict] = []
        rows: list[dict] = []
        quality_rows: list[dict] = []
        for k in range(n_seeds):
            seed = args.seed + k
            data_seed = seed if args.vary_data else 0
            folder, _ = demo(data_seed)
            kinds = kinds_of(folder)
            scfg = cfg.with_overrides(seed=seed)
            ws = runs.workspace(f"seed{seed}", [(folder, None)])
            if colour is None:
                images = ws.images()
                colour = scored(color_histogram_features(list(images.path)), ws, cfg, kinds)
                rand = np.random.default_rng(0).standard_normal((len(images), 256)).astype(np.float32)
                rand /= np.linalg.norm(rand, axis=1, keepdims=True)
                chance = scored(rand, ws, cfg, kinds)
                rows.append({"row": f"colour histogram (data seed {data_seed})", **colour})
            save = (lambda r: args.save_features / f"seed{seed}_round{r}.npz") if args.save_features else (lambda r: None)
            rec: dict = {"seed": seed, "data_seed": data_seed, "round 0": score_model(ws, scfg, device, kinds, save(0))}
            rows.append({"row": f"round 0 (untrained), seed {seed}", **rec["round 0"]})
            for r in range(1, args.rounds + 1):
                cols, cpu = runs.round(ws, scfg, f"seed {seed} round {r}", kinds, save(r))
                rec[f"round {r}"] = cols
                rec[f"quality {r}"] = group_quality(runs.logs[f"seed {seed} round {r}"])
                quality_rows += pivot_quality(f"seed {seed} round {r}", rec[f"quality {r}"])
                rows.append({"row": f"round {r}, seed {seed}", **cols, "round CPU s": round(cpu, 1)})
            ws.close()
            per_seed.append(rec)
        mean = {r: {c: round(float(np.mean([s[r][c] for s in per_seed])), 2) for c in per_seed[0][r]}
                for r in round_names}
        for r in round_names:
            rows.append({"row": f"{r}, mean of {n_seeds} seed(s)", **mean[r]})
        round1 = per_seed[0]["round 1"]  # the reference of the ablation and operator tables (first seed)
        noise: float | None = None
        if n_seeds > 1:
            vals = np.array([s["round 1"]["avg mAP"] for s in per_seed])
            sd = float(np.std(vals, ddof=1))
            # A difference of two single runs has sd sqrt(2)*sd; call it meaningful beyond ~2 of those.
            noise = round(max(2 * np.sqrt(2) * sd, 0.1), 2)
            for r in round_names[1:]:
                spread = {c: round(float(np.std([s[r][c] for s in per_seed], ddof=1)), 2) for c in round1}
                rows.append({"row": f"{r} sd over {n_seeds} seeds", **spread})
        if n_seeds > 1 and quality_rows:
            for r in range(1, args.rounds + 1):
                qkeys = sorted({k for s in per_seed for k in s[f"quality {r}"]})
                quality_rows += pivot_quality(f"round {r} mean of {n_seeds}", {
                    c: round(float(np.mean([s[f"quality {r}"].get(c, np.nan) for s in per_seed])), 3) for c in qkeys})

        # -- oracle pseudo-labels: the headroom in pseudo-label quality ---------------------------------
        folder_s0, _ = demo(args.seed if args.vary_data else 0)
        kinds0 = kinds_of(folder_s0)
        if oracle:
            ws = runs.workspace("oracle", [(folder_s0, None)])
            with oracle_pseudo_labels():
                orc, cpu = runs.round(ws, cfg, "oracle labels round 1", kinds0)
            ws.close()
            rows.append({"row": "round 1, ORACLE pseudo-labels (true ids per group)", **orc, "round CPU s": round(cpu, 1)})
        if args.oracle_per_camera:
            ws = runs.workspace("oracle-camera", [(folder_s0, None)])
            with oracle_pseudo_labels(per_camera=True):
                orc, cpu = runs.round(ws, cfg, "oracle per-camera labels round 1", kinds0)
            ws.close()
            rows.append({"row": "round 1, ORACLE per CAMERA (true ids inside each camera)", **orc,
                         "round CPU s": round(cpu, 1)})
        if supervised:
            ws = runs.workspace("supervised", [(folder_s0, None)])
            with supervised_labels():
                sup, cpu = runs.round(ws, supervised_config(cfg), "supervised bound round 1", kinds0)
            ws.close()
            rows.append({"row": "round 1, SUPERVISED (true ids across groups)", **sup, "round CPU s": round(cpu, 1)})
        rows.append({"row": "chance (random features)", **chance})
        bounds = [r for r in rows if "ORACLE" in r["row"] or "SUPERVISED" in r["row"]]
        ref = round_names[1] if len(round_names) > 1 else round_names[0]  # the bounds train one round
        gap_rows = [{"row": f"{r}, mean of {n_seeds} seed(s)", **{c: mean[r].get(f"{c} mAP") for c in DIRECTIONS},
                     "avg mAP": mean[r]["avg mAP"]} for r in round_names]
        for b in bounds:
            gap_rows.append({"row": b["row"].replace("round 1, ", ""), **{c: b.get(f"{c} mAP") for c in DIRECTIONS},
                             "avg mAP": b["avg mAP"]})
            gap_rows.append({"row": f"  gap: it - {ref} (mean)",
                             **{c: round(b[f"{c} mAP"] - mean[ref][f"{c} mAP"], 1) for c in DIRECTIONS},
                             "avg mAP": round(b["avg mAP"] - mean[ref]["avg mAP"], 2)})

        # -- ablations: one switch off, one round, on every ablation seed; paired with the full method's
        # round 1 of the same seed (the separation loss: on the two-site demo, against its full method) --
        ablation_rows: list[dict] = []
        site_rows: list[dict] = []
        ablation_pairs: dict[str, list[dict]] = {}  # ablation -> [{"seed", "full", "off"}] per seed
        n_abl = min(n_seeds, max(1, args.ablation_seeds))
        if not args.no_ablations:
            for key in ABLATIONS:
                for k in range(n_abl):
                    seed = args.seed + k
                    folder, _ = demo(seed if args.vary_data else 0)
                    acfg = cfg.with_overrides(**{key: False, "seed": seed})
                    ws = runs.workspace(f"no-{key.replace('.', '-')}-seed{seed}", [(folder, None)])
                    cols, cpu = runs.round(ws, acfg, f"no {key}, seed {seed}", kinds_of(folder))
                    ws.close()
                    ablation_pairs.setdefault(f"no {key}", []).append(
                        {"seed": seed, "full": per_seed[k]["round 1"], "off": cols, "cpu_s": round(cpu, 1)})
            # the separation loss on two sites with disjoint people
            site_a, site_b = make_two_site_demo(root / "two-site", identities=identities, seed=0,
                                                images_per_camera=per_camera, infrared=args.infrared)
            sources = [(site_a, "site-a"), (site_b, "site-b")]
            for k in range(n_abl):
                seed = args.seed + k
                got = {}
                for label, off in (("two sites, full method", False), ("two sites, no stage2.separation", True)):
                    scfg = cfg.with_overrides(**{"stage2.separation": not off, "seed": seed})
                    ws = runs.workspace(f"{label.replace(' ', '-').replace(',', '').replace('.', '-')}-seed{seed}",
                                        sources)
                    got[off], cpu = runs.round(ws, scfg, f"{label}, seed {seed}")
                    ws.close()
                    site_rows.append({"row": f"{label}, seed {seed}", **got[off], "round CPU s": round(cpu, 1)})
                ablation_pairs.setdefault("no stage2.separation (two-site demo; vs two-site full)", []).append(
                    {"seed": seed, "full": got[False], "off": got[True]})
            for name, pairs in ablation_pairs.items():
                mean_off = {c: round(float(np.mean([p_["off"][c] for p_ in pairs])), 2) for c in cols_of(pairs)}
                ablation_rows.append({"row": name, "seeds": len(pairs), **mean_off,
                                      **diff_columns(pairs, [f"{c} mAP" for c in DIRECTIONS] + ["avg mAP"])})

        total_s = time.perf_counter() - clock.t0

        # -- expectations --------------------------------------------------------------------------
        m = "avg mAP"
        checks = []
        for s_ in per_seed:
            tag = f"seed {s_['seed']}"
            for r in round_names[1:]:
                checks.append(expectation(f"{tag}: {r} beats round 0 ({m})", s_[r][m], s_["round 0"][m], noise))
                checks.append(expectation(f"{tag}: {r} beats the colour baseline ({m})", s_[r][m], colour[m], noise))
        for col in ("IR>VIS mAP", "VIS>IR mAP", "TH>VIS mAP", "VIS>TH mAP", "NIR>VIS mAP", "VIS>NIR mAP"):
            for r in round_names[1:]:
                d = [s_[r][col] - s_["round 0"][col] for s_ in per_seed if np.isfinite(s_[r][col])]
                if not d:
                    continue
                sd_d = float(np.std(d, ddof=1)) if len(d) > 1 else None
                checks.append(expectation(f"{col.split()[0]} rises round 0 -> {r.split()[1]} (mean of {len(d)} seeds)",
                                          float(np.mean(d)), 0.0, 2 * sd_d / np.sqrt(len(d)) if sd_d else None))
        for name, pairs in ablation_pairs.items():
            d = [p_["full"][m] - p_["off"][m] for p_ in pairs]
            sd_d = float(np.std(d, ddof=1)) if len(d) > 1 else None
            checks.append(expectation(f"full method beats {name} ({m}, round 1, paired over {len(d)} seed(s))",
                                      float(np.mean(d)), 0.0, 2 * sd_d / np.sqrt(len(d)) if sd_d else noise))
        per_k = 1000.0 * float(np.mean([t["cpu_s"] / t["images"] for t in runs.times])) if runs.times else float("nan")
        checks.append({"expectation": f"mean CPU s per round per 1,000 crops <= {ROUND_TARGET_CPU_S:.0f}",
                       "value": round(per_k, 1), "reference": ROUND_TARGET_CPU_S,
                       "margin": round(ROUND_TARGET_CPU_S - per_k, 1),
                       "result": "PASS" if per_k <= ROUND_TARGET_CPU_S else "MISS"})

        title = (f"ITKM accuracy, quick preset ({cfg.model.tower} {cfg.model.image_size[0]}x{cfg.model.image_size[1]}, "
                 f"ImageNet init, CPU), demo {'REALISTIC ' if args.realistic else ''}{info.n_images} crops / "
                 f"{info.n_identities} ids (infrared {args.infrared}{', data varies per seed' if args.vary_data else ''}), "
                 f"{PROTOCOL} protocol; mAP / Rank-1 in %; avg mAP = mean of the four mAP columns"
                 + (f"; --set {' '.join(args.set)}" if args.set else ""))
        print_table(rows, title)
        print_table([{"row": r["row"], **{c: r.get(f"{c} mAP", "") for c in DIRECTIONS}, "avg mAP": r.get("avg mAP", "")}
                     for r in rows], "mAP per direction (%)")
        cols_d = [f"{c} mAP" for c in DIRECTIONS] + ["avg mAP"]
        rise_rows = paired(per_seed, [{"seed": s_["seed"], **{r: s_["round 0"] for r in round_names[1:]}}
                                      for s_ in per_seed], round_names[1:], cols_d)
        print_table([{k.replace(" mAP", ""): v for k, v in r_.items()} for r_ in rise_rows],
                    "Rise over round 0 (paired per seed: round r - round 0, mAP points, mean +- sd over seeds)")
        if bounds:
            print_table(gap_rows, "The method beside its bounds (mAP %; oracle and supervised: one round, "
                                  f"training seed {args.seed}): the gaps left")
        if quality_rows:
            print_table(quality_rows, "Per-group pseudo-label quality, Stage I: first epoch (P0, R0, ARI0, C0) and "
                                      "last epoch (P, R, ARI, C) of each round")
        base_rows: list[dict] = []
        if args.baseline is not None:
            import json

            base = json.loads(args.baseline.read_text()).get("per_seed", [])
            base_rows = paired(per_seed, base, round_names, cols_d)
            qcols = sorted({k for s_ in per_seed for r in range(1, args.rounds + 1) for k in s_.get(f"quality {r}", {})})
            base_q = paired([{"seed": s_["seed"], **{f"round {r}": s_.get(f"quality {r}", {})
                                                     for r in range(1, args.rounds + 1)}} for s_ in per_seed],
                            [{"seed": b["seed"], **{f"round {r}": b.get(f"quality {r}", {})
                                                    for r in range(1, args.rounds + 1)}} for b in base],
                            round_names[1:], qcols)
            print_table([{k.replace(" mAP", ""): v for k, v in r_.items()} for r_ in base_rows],
                        f"Paired difference vs {args.baseline.name} (this - baseline, mAP points, mean +- sd over seeds)")
            print_table([row for q in base_q for row in pivot_quality(q["round"], q)],
                        f"Paired difference of per-group pseudo-label quality vs {args.baseline.name}")
            base_rows = base_rows + [{"quality": True, **q} for q in base_q]
        if ablation_rows:
            print_table([{"row": r_["row"], "seeds": r_["seeds"], **{c: r_.get(f"d {c} mAP", "") for c in DIRECTIONS},
                          "avg": r_.get("d avg mAP", "")} for r_ in ablation_rows],
                        f"Ablations: one switch off, one round, paired with the full method's round 1 of the same "
                        f"seed (off - full, mAP points, mean +- sd over {n_abl} seed(s); negative: the part helps)")
            print_table(site_rows, "Separation loss on the two-site demo (disjoint people), per seed")
        print_table(runs.times, "Round times")
        print_table(epoch_costs(runs.logs), "CPU seconds per epoch (mean over the runs; an epoch = its features, "
                                            "clusters and steps; Stage I's first also builds the round's stem cache)")
        print_table(checks, f"Expectations (noise threshold on avg mAP: {noise if noise is not None else 'n/a'})")
        loads = clock.loads + [os.getloadavg()[0]]
        print(f"\ntotal {total_s:.0f} s; 1-min load average min/mean/max {min(loads):.1f}/{np.mean(loads):.1f}/"
              f"{max(loads):.1f} on {os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}; "
              f"peak RSS {peak_rss_mb():.0f} MB")
        path = write_json(out_name, {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "sets": parse_sets(args.set),
            "identities": info.n_identities,
            "images": info.n_images,
            "config": cfg.to_dict(),
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average": {"samples": [round(x, 2) for x in loads], "min": min(loads), "mean": float(np.mean(loads)),
                             "max": max(loads)},
            "rows": rows,
            "per_seed": per_seed,
            "paired_vs_baseline": base_rows,
            "rise_over_round0": rise_rows,
            "bounds": gap_rows if bounds else [],
            "ablations": ablation_rows,
            "two_site": site_rows,
            "ablation_pairs": ablation_pairs,
            "protocol": PROTOCOL,
            "noise_threshold_avg_mAP": noise,
            "round_times": runs.times,
            "epoch_cpu_s": epoch_costs(runs.logs),
            "epoch_logs": runs.logs,
            "expectations": checks,
            "total_s": round(total_s, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        })
        print(f"results: {path}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
