"""Evaluation of a workspace's features against known person ids (when a layout carries them).

Every image with a known id is a query against all other images with a known id, under two
protocols (:mod:`itkm_engine.metrics`, ``skip_cameras``):

* ``cross-camera`` -- the HEADLINE number: the query's whole camera is left out of the gallery,
  so every hit is a person found again in *another* camera, which is what an operator asks for;
* ``standard`` -- Market-1501's: only gallery items of the query's person *and* camera are left
  out (same-camera non-matches still compete), as papers report it.

Each is reported overall, per scenario (query and gallery inside the scenario), per cross-group
direction of each two-group scenario (e.g. ``visible-infrared: infrared -> visible``: infrared
queries, visible gallery) and, where the infrared (low-res) group has several cameras, per camera
of it against the visible (high-res) group and back (``visible-infrared: camera ir-b -> visible``:
one infrared camera's queries; ``visible-infrared: visible -> camera ir-b``), so each kind of
infrared camera shows its own numbers.  A
camera that ingest flagged low-res in a scenario without resolution groups (``low_res_cameras``,
e.g. a low-res camera inside a visible-infrared source) is scored as its own direction too:
``<scenario>: low-res -> high-res`` (its queries against the scenario's other cameras) and back.

Images of a ``sysu`` source (SYSU-MM01 layout, ``cam1..cam6``; cams 3 and 6 infrared) are also
scored with SYSU-MM01's official protocol, so numbers compare with papers: infrared queries (cam3,
cam6) against the visible gallery -- ``sysu-all-search``: cams 1, 2, 4, 5; ``sysu-indoor-search``:
cams 1, 2 -- where a cam3 query ignores every cam2 gallery image (cams 2 and 3 see the same
room).  The gallery is single-shot, as the official evaluation: one random image per person per
camera, scores averaged over :data:`SYSU_SEEDS` fixed seeds (0..9).  The official split also
keeps the 96 test identities apart from the 395 training ones; here every labelled person of the
source is scored (the training never sees labels), so compare with that in mind.

All scores are fractions in 0..1 (``format_scores`` prints them as percentages).
"""

from __future__ import annotations

import re
from typing import Collection

import numpy as np

from .vocabulary import TWO_GROUP
from .metrics import evaluate_rank
from .progress import Reporter

MAX_QUERIES = 5000  # above this, a fixed-seed sample of queries (the gallery stays whole)

CROSS_CAMERA = "cross-camera"
STANDARD = "standard"
SYSU_ALL = "sysu-all-search"
SYSU_INDOOR = "sysu-indoor-search"
OVERALL = "overall"

#: SYSU-MM01 camera numbers: infrared query cameras, and each search mode's visible gallery.
SYSU_QUERY_CAMS = (3, 6)
SYSU_GALLERY_CAMS = {SYSU_ALL: (1, 2, 4, 5), SYSU_INDOOR: (1, 2)}
#: Single-shot gallery draws averaged (seeds 0..SYSU_SEEDS-1), as the official evaluation.
SYSU_SEEDS = 10
_SYSU_CAM = re.compile(r"^cam(\d+)$", re.IGNORECASE)

ScoreDict = dict[str, float]


def rank_scores(feats: np.ndarray, pids: np.ndarray, cams: np.ndarray, q: np.ndarray, g: np.ndarray,
                seed: int = 0, *, skip_cameras: np.ndarray | None = None) -> ScoreDict | None:
    """mAP and CMC for queries ``q`` against gallery ``g`` (row indices).  None without valid queries.

    ``cams``: integer camera codes ``0..n-1`` of every row; ``skip_cameras``: the protocol's
    camera x camera matrix of :func:`itkm_engine.metrics.evaluate_rank` (None: standard).
    """
    if len(q) == 0 or len(g) == 0:
        return None
    if len(q) > MAX_QUERIES:
        q = np.sort(np.random.default_rng(seed).choice(q, MAX_QUERIES, replace=False))
    dist = 1.0 - feats[q] @ feats[g].T
    try:
        cmc, mAP = evaluate_rank(dist, pids[q], pids[g], cams[q], cams[g], max_rank=10, skip_cameras=skip_cameras)
    except (ValueError, AssertionError):  # no query has a valid match
        return None
    cmc = np.asarray(cmc)
    return {
        "mAP": float(mAP),
        "rank1": float(cmc[0]),
        "rank5": float(cmc[min(4, len(cmc) - 1)]),
        "rank10": float(cmc[min(9, len(cmc) - 1)]),
        "queries": int(len(q)),
        "gallery": int(len(g)),
    }


def sysu_camera_numbers(images, sysu_sources: Collection[int]) -> np.ndarray:
    """SYSU-MM01 camera number (1..6) of every image of a ``sysu`` source, from the camera folder
    its relative path starts with (the workspace camera name may carry a source prefix); 0 for
    every other image."""
    sources = set(int(s) for s in sysu_sources)
    out = np.zeros(len(images), dtype=np.int64)
    if not sources:
        return out
    src = np.asarray(images.source_id)
    for i in np.flatnonzero(np.isin(src, list(sources))):
        m = _SYSU_CAM.match(re.split(r"[\\/]", images.relpath[i], maxsplit=1)[0])
        if m:
            out[i] = int(m[1])
    return out


def single_shot_gallery(g: np.ndarray, pids: np.ndarray, cams: np.ndarray, seed: int) -> np.ndarray:
    """One random row of ``g`` per (person, camera), drawn with ``seed``; sorted row indices."""
    perm = np.random.default_rng(seed).permutation(g)
    keys = pids[perm].astype(np.int64) * (int(cams.max(initial=0)) + 1) + cams[perm]
    _, first = np.unique(keys, return_index=True)
    return np.sort(perm[first])


def _mean_scores(runs: list[ScoreDict]) -> ScoreDict | None:
    if not runs:
        return None
    out: ScoreDict = {k: float(np.mean([r[k] for r in runs])) for k in ("mAP", "rank1", "rank5", "rank10")}
    out["queries"] = runs[0]["queries"]
    out["gallery"] = int(round(np.mean([r["gallery"] for r in runs])))
    return out


def evaluate_features(feats: np.ndarray, images, *, sysu_sources: Collection[int] = (),
                      low_res_cameras: Collection[str] = (), reporter: Reporter | None = None) -> dict:
    """Scores of ``feats`` (rows aligned with the ImageTable ``images``) under every protocol.

    ``feats`` are compared as given (cosine): pass them in the space the gallery ranks in
    (``Session.score`` does).  ``low_res_cameras``: names of cameras flagged low-res
    (``vocabulary.has_low_res_flag``), scored low-res -> high-res and back in their scenario.

    Returns ``{}`` when nothing can be scored (no known ids, or no person seen by two cameras), else
    ``{"headline": {"protocol", "split", mAP, rank1, rank5, rank10, queries, gallery},
    "protocols": {protocol: {split: scores}}}`` with protocols ``cross-camera`` and ``standard``,
    plus ``sysu-all-search`` / ``sysu-indoor-search`` (split ``overall``) when ``sysu_sources``
    (source ids of the ``sysu`` layout) hold labelled images of both kinds.
    """
    reporter = reporter or Reporter()
    pids = np.asarray(images.person_id)
    known = np.flatnonzero(pids >= 0)
    _, cams = np.unique(np.asarray(images.camera).astype(str), return_inverse=True)
    cams = cams.astype(np.int64)

    splits = evaluation_splits(images, known, low_res_cameras)
    n_cams = int(cams.max(initial=-1)) + 1
    protocols = ((CROSS_CAMERA, np.eye(max(n_cams, 1), dtype=bool)), (STANDARD, None))

    sysu_num = sysu_camera_numbers(images, sysu_sources)
    sysu_q = known[np.isin(sysu_num[known], SYSU_QUERY_CAMS)]
    sysu_modes = list(SYSU_GALLERY_CAMS.items()) if len(sysu_q) else []
    sysu_skip = np.zeros((7, 7), dtype=bool)
    sysu_skip[3, 2] = True  # a cam3 query ignores cam2 (the official protocol)

    total = len(protocols) * len(splits) + len(sysu_modes) * SYSU_SEEDS
    done = 0

    def step(message: str) -> None:
        nonlocal done
        done += 1
        reporter.update(done / total, stage="evaluate", message=message)

    out: dict[str, dict] = {}
    for protocol, skip in protocols:
        scores: dict[str, ScoreDict] = {}
        for name, q, g in splits:
            reporter.check()
            res = rank_scores(feats, pids, cams, q, g, skip_cameras=skip)
            if res is not None:
                scores[name] = res
            step(f"{protocol}: {name}")
        if scores:
            out[protocol] = scores
    for mode, gallery_cams in sysu_modes:
        g_all = known[np.isin(sysu_num[known], gallery_cams)]
        runs = []
        for seed in range(SYSU_SEEDS):
            reporter.check()
            g = single_shot_gallery(g_all, pids, sysu_num, seed) if len(g_all) else g_all
            res = rank_scores(feats, pids, sysu_num, sysu_q, g, skip_cameras=sysu_skip)
            if res is not None:
                runs.append(res)
            step(f"{mode}: draw {seed + 1}/{SYSU_SEEDS}")
        mean = _mean_scores(runs)
        if mean is not None:
            out[mode] = {OVERALL: mean}

    if OVERALL not in out.get(CROSS_CAMERA, {}):
        return {}
    return {"headline": {"protocol": CROSS_CAMERA, "split": OVERALL, **out[CROSS_CAMERA][OVERALL]},
            "protocols": out}


def evaluation_splits(images, known: np.ndarray, low_res_cameras: Collection[str] = ()
                      ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, query rows, gallery rows)`` of every split :func:`evaluate_features` scores, among
    the rows ``known`` (images with a known person id)."""
    scen = np.asarray(images.scenario)
    grp = np.asarray(images.group)
    cam = np.asarray(images.camera).astype(str)
    low = np.isin(cam, [str(c) for c in low_res_cameras])
    splits: list[tuple[str, np.ndarray, np.ndarray]] = [(OVERALL, known, known)]
    for sc in sorted(set(scen[known])):
        m = known[scen[known] == sc]
        splits.append((sc, m, m))
        if sc in TWO_GROUP:
            a, b = TWO_GROUP[sc]
            ma, mb = m[grp[m] == a], m[grp[m] == b]
            splits.append((f"{sc}: {b} -> {a}", mb, ma))
            splits.append((f"{sc}: {a} -> {b}", ma, mb))
            cams = sorted(set(cam[mb]))
            for c in cams if len(cams) > 1 else ():  # one camera: the group's own split says it
                mc = mb[cam[mb] == c]
                splits.append((f"{sc}: camera {c} -> {a}", mc, ma))
                splits.append((f"{sc}: {a} -> camera {c}", ma, mc))
        if "low-res" not in TWO_GROUP.get(sc, ()) and low[m].any():
            lo, hi = m[low[m]], m[~low[m]]
            splits.append((f"{sc}: low-res -> high-res", lo, hi))
            splits.append((f"{sc}: high-res -> low-res", hi, lo))
    return splits


def format_scores(result: dict) -> str:
    """The headline line, then one row per protocol and split (percentages).

    Also reads an evaluation stored before protocols existed (``{split: scores}``, the standard
    protocol)."""
    if "protocols" not in result:
        result = {"protocols": {STANDARD: result}} if result else {"protocols": {}}
    lines = []
    head = result.get("headline")
    if head:
        lines.append(
            f"headline ({head['protocol']} protocol, {head['split']}): mAP {100 * head['mAP']:.1f}  "
            f"R1 {100 * head['rank1']:.1f}  R5 {100 * head['rank5']:.1f}  R10 {100 * head['rank10']:.1f}  "
            f"({head['queries']} queries, {head['gallery']} gallery)"
        )
    lines.append(f"{'protocol':19s} {'split':44s} {'mAP':>6s} {'R1':>6s} {'R5':>6s} {'R10':>6s} {'queries':>8s}")
    for protocol, scores in result["protocols"].items():
        for name, s in scores.items():
            lines.append(
                f"{protocol:19s} {name:44s} {100 * s['mAP']:6.1f} {100 * s['rank1']:6.1f} {100 * s['rank5']:6.1f} "
                f"{100 * s['rank10']:6.1f} {s['queries']:8d}"
            )
    return "\n".join(lines)
