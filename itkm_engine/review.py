"""What to ask the operator next: the review queue, search-and-answer, and simulated answers.

**The review queue** (:func:`review_queue`) asks *per direction*, so every group gets questions:
for each group of each scenario (and site), each image's ``k`` nearest images in every *other*
group of its scenario (infrared -> visible, visible -> infrared, low-res -> high-res, ...), its
nearest inside its own group, where the pairs near a cluster boundary are, and its nearest in the
other scenarios of its site.  The directions take turns, group by group, so the infrared and
low-res cameras get as many questions as the large visible ones.  Inside a direction the pairs
whose answer would *change* what the last round concluded come first: a pair the round put in
different clusters (or CHM left unmatched, or the identities kept apart) that looks alike -- a
"yes" would join them -- and a pair it put together that looks different -- a "no" would split
them; pairs the round already agrees with come last.  The chance that the answer changes a label
is estimated from the similarity against the direction's own boundary (midway between its
same-label and different-label candidate pairs).  A question is not asked twice in effect: one
question per pair of clusters that a "yes" would join, and each image in at most one question
about splitting it off.  The labels compared are the latest round's
per-group pseudo-labels inside a group, its cross-group (CHM) labels across groups of a scenario,
and the final identities across scenarios (and where there is no round).  Pairs already decided,
or implied by decisions (one confirmed group, two groups kept apart), are left out; pairs never
cross sites.

**Search-and-answer** (:func:`answer_selection`): search one image and answer yes/no on a
selection of its results -- its nearest images in the other groups of its scenario (other cameras
in a one-group scenario), those already decided about it left out; the answers are stored as one
undo step (:func:`itkm_engine.workspace.decisions.answer`).

:func:`simulate_confirmations` and :func:`simulate_search_and_answer` answer from the true person
ids (``benchmarks/bench_confirmations.py`` and the tests only).  Everything works on an open
:class:`~itkm_engine.session.Session`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .records import rows_of
from .vocabulary import DEFAULT_SITE, FINAL_LABELS_FILE, TWO_GROUP
from .workspace.decisions import answer, decide, load_constraints

__all__ = ["ReviewPair", "Answer", "review_queue", "answer_selection", "simulate_confirmations",
           "simulate_search_and_answer"]


@dataclass(frozen=True)
class ReviewPair:
    image_a: int
    image_b: int
    similarity: float
    same_identity: bool  # the current identities hold both
    cross_scenario: bool  # the two images are in different scenarios
    margin: float  # |similarity - the direction's boundary|
    direction: str = ""  # e.g. "visible-infrared: infrared -> visible", "clothing-change: inside clothing-change"
    change: float = 0.0  # estimated chance that the answer changes a pseudo-label or a CHM match
    same_label: bool = False  # the round's labels (per-group inside a group, CHM across) put them together
    boundary: float = float("nan")  # the direction's similarity midway between pairs its labels join and keep apart


@dataclass(frozen=True)
class Answer:
    """One result of a search-and-answer selection."""

    image_id: int
    similarity: float
    rank: int
    same_label: bool  # the round put the query and this result together


# -- what the image rows are -----------------------------------------------------------------------
class _Rows:
    """Scenario, group, camera, site, round labels and identities of every feature row."""

    def __init__(self, session) -> None:
        fs = session.ranking()  # the space every ranking compares (inference.camera_centre)
        images = session.images()
        r = images.index_of(fs.ids)
        self.fs = fs
        self.ids = fs.ids
        self.scenario = np.asarray(images.scenario, object)[r]
        self.group = np.asarray(images.group, object)[r]
        self.camera = np.asarray(images.camera, object)[r]
        sites = session.ws.camera_sites()
        self.site = np.array([sites.get(c, DEFAULT_SITE) for c in self.camera], dtype=object)
        self.person = np.asarray(images.person_id, np.int64)[r]
        table = session.identities()
        ir = rows_of(table.image_id, fs.ids)
        self.identity = np.where(ir >= 0, table.identity[np.maximum(ir, 0)], -1)
        self.identity = np.where(ir >= 0, self.identity, -2 - np.arange(len(ir)))  # not in any: alone
        self.label, self.cross = _round_labels(session, fs.ids, self.identity)
        self.key = np.array([f"{s}/{g}@{t}" for s, g, t in zip(self.scenario, self.group, self.site)], dtype=object)


def _round_labels(session, ids: np.ndarray, identity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The latest finished round's per-group pseudo-labels and cross-group (CHM) labels of each
    row; the identities where there is no such round.  Outliers get a label of their own (a
    "yes" about them changes it)."""
    lone = -2 - np.arange(len(ids))
    ws = session.ws
    latest = ws.latest_checkpoint()
    rnd = next((r for r in reversed(ws.rounds()) if r.status == "done" and r.checkpoint
                and ws.resolve_path(r.checkpoint) == latest), None)
    if rnd is not None:
        try:
            with np.load(ws.round_dir(rnd.number) / FINAL_LABELS_FILE) as z:
                f_ids, labels, cross = z["ids"], z["labels"], z["cross"]
            rows = rows_of(f_ids, ids)
            lab = np.where(rows >= 0, labels[np.maximum(rows, 0)], -1)
            crs = np.where(rows >= 0, cross[np.maximum(rows, 0)], -1)
            return np.where(lab >= 0, lab, lone), np.where(crs >= 0, crs, lone)
        except (OSError, KeyError, ValueError):
            pass
    return identity, identity


def _directions(rows: _Rows) -> list[tuple[str, str, np.ndarray, np.ndarray, bool]]:
    """``(group key, name, query rows, gallery rows, inside)`` of every direction: each group
    against each other group of its scenario and site, and against itself (``inside``)."""
    out = []
    for key in sorted(set(rows.key)):
        q = np.flatnonzero(rows.key == key)
        sc, grp, site = rows.scenario[q[0]], rows.group[q[0]], rows.site[q[0]]
        same = (rows.scenario == sc) & (rows.site == site)
        others = sorted(set(rows.group[same]) - {grp})
        if sc in TWO_GROUP:  # the paper's order: the other group first
            others = sorted(others, key=lambda g: TWO_GROUP[sc].index(g) if g in TWO_GROUP[sc] else 9)
        for g in others:
            out.append((key, f"{sc}: {grp} -> {g}", q, np.flatnonzero(same & (rows.group == g)), False))
        out.append((key, f"{sc}: inside {grp}", q, q, True))
        elsewhere = np.flatnonzero((rows.scenario != sc) & (rows.site == site))
        if len(elsewhere):
            out.append((key, f"{sc}/{grp} -> other scenarios", q, elsewhere, False))
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def _candidates(rows: _Rows, q: np.ndarray, g: np.ndarray, k: int, inside: bool):
    """Each query row's ``k`` nearest gallery rows: ``(a, b, similarity)``, rows of ``rows``."""
    feats = rows.fs.feats
    if not len(q) or not len(g):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    out_a, out_b, out_s = [], [], []
    for lo in range(0, len(q), 2048):
        qq = q[lo : lo + 2048]
        sims = feats[qq] @ feats[g].T
        if inside:
            sims[qq[:, None] == g[None, :]] = -np.inf
        kk = min(k, len(g) - (1 if inside else 0))
        if kk <= 0:
            continue
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        s = np.take_along_axis(sims, top, axis=1)
        ok = np.isfinite(s)
        out_a.append(np.repeat(qq, kk)[ok.ravel()])
        out_b.append(g[top].ravel()[ok.ravel()])
        out_s.append(s.ravel()[ok.ravel()])
    if not out_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_s)


def review_queue(session, n: int = 100, *, k: int = 10) -> list[ReviewPair]:
    """The ``n`` pairs to review next (see the module text): per direction, the directions of each
    group taking turns and the groups taking turns; inside a direction, the pairs whose answer
    would most likely change a pseudo-label or a CHM match first."""
    fs = session.ranking()
    if len(fs.ids) < 2 or n < 1:
        return []
    rows = _Rows(session)
    closure = load_constraints(session.ws).closure
    comp = closure.component_of(rows.ids)
    ban = closure.ban_matrix()
    per_group: dict[str, list[list[tuple[ReviewPair, tuple]]]] = {}
    for key, name, q, g, inside in _directions(rows):
        a, b, s = _candidates(rows, q, g, k, inside)
        if not len(a):
            continue
        within = rows.scenario[a] == rows.scenario[b]
        lab = rows.label if inside else rows.cross
        la = np.where(within, lab[a], rows.identity[a])  # across scenarios: the identities
        lb = np.where(within, lab[b], rows.identity[b])
        space = "group" if inside else "scenario" if within.all() else "identity"
        same_lab = la == lb
        if same_lab.any() and (~same_lab).any():
            boundary = 0.5 * (s[same_lab].mean() + s[~same_lab].mean())
        else:
            boundary = float(np.median(s))
        spread = max(float(np.std(s)) / 2, 1e-3)
        p_same = _sigmoid((s - boundary) / spread)
        change = np.where(same_lab, 1.0 - p_same, p_same)
        margin = np.abs(s - boundary)
        order = np.lexsort((b, a, margin, -change))
        pairs = []
        for i in order:
            ca, cb = comp[a[i]], comp[b[i]]
            if ca >= 0 and cb >= 0 and (ca == cb or ban[ca, cb]):
                continue  # decided, or implied by decisions
            # What the answer settles: a join settles its two clusters (one question per pair of
            # clusters), a split question one image's place (each image asked once).
            if same_lab[i]:
                settles = ((space, "split", int(a[i])), (space, "split", int(b[i])))
            else:
                settles = ((space, "join", int(min(la[i], lb[i])), int(max(la[i], lb[i]))),)
            pairs.append((ReviewPair(int(rows.ids[a[i]]), int(rows.ids[b[i]]), float(s[i]),
                                     bool(rows.identity[a[i]] == rows.identity[b[i]]),
                                     bool(rows.scenario[a[i]] != rows.scenario[b[i]]), float(margin[i]),
                                     name, float(change[i]), bool(same_lab[i]), float(boundary)), settles))
        per_group.setdefault(key, []).append(pairs)
    # turns: group by group, and inside a group direction by direction
    out: list[ReviewPair] = []
    seen: set[tuple[int, int]] = set()
    settled: set[tuple] = set()
    pos = {key: [0] * len(dirs) for key, dirs in per_group.items()}
    turn = {key: 0 for key in per_group}
    live = sorted(per_group)
    while live and len(out) < n:
        for key in list(live):
            dirs, p = per_group[key], pos[key]
            got = False
            for _ in range(len(dirs)):
                d = turn[key] % len(dirs)
                turn[key] += 1
                while p[d] < len(dirs[d]):
                    pair, settles = dirs[d][p[d]]
                    p[d] += 1
                    uk = (min(pair.image_a, pair.image_b), max(pair.image_a, pair.image_b))
                    if uk in seen or settled.intersection(settles):
                        continue  # asked already, or its answer would only repeat an earlier one's
                    seen.add(uk)
                    settled.update(settles)
                    out.append(pair)
                    got = True
                    break
                if got:
                    break
            if not got:
                live.remove(key)
            if len(out) >= n:
                break
    return out


def answer_selection(session, image_id: int, n: int = 10) -> list[Answer]:
    """The results of image ``image_id`` to answer yes/no about: its ``n`` nearest images in the
    other groups of its scenario (other cameras of its group in a one-group scenario), at its
    site; those already decided about it (directly or through a confirmed group) left out."""
    rows = _Rows(session)
    r = int(rows_of(rows.ids, np.array([int(image_id)]))[0])
    if r < 0:
        from .errors import ItkmError

        raise ItkmError(f"image {image_id} has no features (not in the workspace, or unreadable)")
    same = (rows.scenario == rows.scenario[r]) & (rows.site == rows.site[r])
    other_groups = same & (rows.group != rows.group[r])
    gallery = other_groups if other_groups.any() else same & (rows.camera != rows.camera[r])
    cl = load_constraints(session.ws).closure
    comp = cl.component_of(rows.ids)
    if comp[r] >= 0:
        ban = cl.ban_matrix()[comp[r]]
        gallery &= ~((comp == comp[r]) | ((comp >= 0) & ban[np.maximum(comp, 0)]))
    g = np.flatnonzero(gallery)
    sims = rows.fs.feats[g] @ rows.fs.feats[r]
    top = np.argsort(-sims, kind="stable")[:n]
    lab = rows.cross
    return [Answer(int(rows.ids[g[i]]), float(sims[i]), j + 1, bool(lab[g[i]] == lab[r])) for j, i in enumerate(top)]


# -- simulated answers (benchmarks and tests) --------------------------------------------------------
def _true_ids(session) -> dict[int, int]:
    images = session.images()
    return dict(zip(images.id.tolist(), np.asarray(images.person_id).tolist()))


def simulate_confirmations(session, n: int, seed: int = 0, *, user: str = "simulated") -> int:
    """Add up to ``n`` decisions taken from the true person ids (benchmarks only): the review
    queue's pairs in its order, each confirmed when the ids agree and rejected when they differ;
    pairs with an unknown id are skipped.  One batch per kind.  Returns the number written.
    (``seed`` is kept for callers; the queue's order is deterministic.)"""
    if not hasattr(session, "features"):
        raise TypeError("simulate_confirmations needs an open Session (Session(ws) opens one on a workspace)")
    del seed
    queue = review_queue(session, n=2 * n + 50)
    pid = _true_ids(session)
    must, cannot = [], []
    for p in queue:
        a, b = pid.get(p.image_a, -1), pid.get(p.image_b, -1)
        if a < 0 or b < 0:
            continue
        (must if a == b else cannot).append((p.image_a, p.image_b))
        if len(must) + len(cannot) >= n:
            break
    decide(session.ws, must, "must", user=user)
    decide(session.ws, cannot, "cannot", user=user)
    return len(must) + len(cannot)


def simulate_search_and_answer(session, n: int, *, camera: str | None = None, group: str | None = None,
                               per_query: int = 10, seed: int = 0, user: str = "simulated") -> int:
    """Search-and-answer from the true ids (benchmarks only): query images of ``camera`` (or of
    ``group``; any image without either) in a random order drawn with ``seed``, each answered on
    its :func:`answer_selection` of ``per_query`` results (one batch per query) until ``n``
    decisions are written.  Returns the number written."""
    images = session.images()
    pid = _true_ids(session)
    fs_ids = set(session.features().ids.tolist())
    pick = np.ones(len(images), bool)
    if camera is not None:
        pick &= np.asarray(images.camera, object) == camera
    if group is not None:
        pick &= np.asarray(images.group, object) == group
    queries = [int(i) for i in images.id[pick] if int(i) in fs_ids and pid.get(int(i), -1) >= 0]
    rng = np.random.default_rng(seed)
    rng.shuffle(queries)
    written = 0
    for q in queries:
        if written >= n:
            break
        sel = [a for a in answer_selection(session, q, per_query) if pid.get(a.image_id, -1) >= 0]
        sel = sel[: n - written]
        if not sel:
            continue
        yes = [a.image_id for a in sel if pid[a.image_id] == pid[q]]
        no = [a.image_id for a in sel if pid[a.image_id] != pid[q]]
        answer(session.ws, q, yes, no, user=user)
        written += len(sel)
    return written
