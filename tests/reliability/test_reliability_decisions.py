"""Operator decisions never break training (issue 16 §7), and decisions never join two sites (§3).

* A same-scenario must-link that touches a Stage I outlier gives the outlier a cross-group label
  while its per-group label stays -1; Stage III then sampled it and its homogeneous memory loss
  failed with ``IndexError: Target -1`` on every resume of the round.
* Random decision sets of 50 / 200 / 1,000 pairs (true answers with some contradictions, as a
  hurried operator gives them) over the demo workspace, then a round through ``itkm train``: it
  finishes and its labels obey the decisions' closure inside every scenario.
* A confirm across sites is refused with a reason; a round on two sites never lets a cluster, a
  CHM match or an IHM pair join them.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers.cli import cli_inproc, one_line
from helpers.workspaces import ingested, use_preset


def _first_of_each_group_an_outlier(monkeypatch, n: int = 6):
    """Stage I/III's per-group clustering marks the first ``n`` rows of every group as outliers
    (rows follow image ids), whatever the features: the outliers a real clustering leaves."""
    from itkm_engine.stages import context

    original = context.pseudo_labels

    def labels(feats, **kw):
        lab = original(feats, **kw).copy()
        lab[: min(n, len(lab) - 2)] = -1
        return lab

    monkeypatch.setattr(context, "pseudo_labels", labels)


def test_a_must_link_on_a_stage1_outlier_trains_and_resumes(trained_ws, monkeypatch):
    """Infrared images that Stage I leaves as outliers, each confirmed with a visible sighting
    of the same person: CHM's enforcement gives them a cross-group label, Stage III samples them
    (the decided pairs are brought into its batches), and the round finishes -- it used to stop
    with ``IndexError: Target -1 is out of bounds`` in the homogeneous memory loss, and so did
    every resume of it."""
    from itkm_engine.workspace import Workspace
    from itkm_engine.workspace import decisions as D

    with Workspace.open(trained_ws) as ws:
        images = ws.images()
        keys, pid = images.group_key(), np.asarray(images.person_id)
        ir = np.flatnonzero(keys == "visible-infrared/infrared")[:6]
        vis = np.flatnonzero(keys == "visible-infrared/visible")
        pairs = [(int(images.id[r]), int(images.id[vis[pid[vis] == pid[r]][0]])) for r in ir if (pid[vis] == pid[r]).any()]
        assert len(pairs) >= 3
        D.confirm(ws, pairs)
        n_rounds = len(ws.rounds())
    _first_of_each_group_an_outlier(monkeypatch)
    res = cli_inproc("train", trained_ws, "--set", "stage3.iters_per_epoch=6", "-q")
    assert res.rc == 0 and "Traceback" not in res.text, res.text
    with Workspace.open(trained_ws) as ws:
        rounds = ws.rounds()
        assert len(rounds) == n_rounds + 1 and rounds[-1].status == "done"
        log = [e for e in ws.epoch_log(rounds[-1].number) if e["stage"] == "stage3"]
        assert log and all(e["values"].get("decided_pairs", 0) >= len(pairs) for e in log)
        ids, cross = ws.assignments(rounds[-1].number)
        lab = dict(zip(ids.tolist(), cross.tolist()))
        assert all(lab[a] == lab[b] >= 0 for a, b in pairs)  # the outliers joined their partners


def _random_decisions(images, n: int, seed: int) -> tuple[list, list]:
    """``n`` random pairs answered from the true ids, one in ten answered wrongly."""
    rng = np.random.default_rng(seed)
    pid = np.asarray(images.person_id)
    ids = np.asarray(images.id)
    must, cannot, seen = [], [], set()
    # half the pairs among one person's sightings (else nearly all would be rejects)
    while len(must) + len(cannot) < n:
        a = int(rng.integers(len(ids)))
        same = np.flatnonzero(pid == pid[a])
        b = int(rng.choice(same)) if rng.random() < 0.5 else int(rng.integers(len(ids)))
        key = (min(ids[a], ids[b]), max(ids[a], ids[b]))
        if a == b or key in seen:
            continue
        seen.add(key)
        truth = pid[a] == pid[b]
        (must if truth != (rng.random() < 0.1) else cannot).append((int(ids[a]), int(ids[b])))
    return must, cannot


@pytest.mark.parametrize("n", [50, 200, 1000])
def test_random_decision_sets_then_a_round(trained_ws, n):
    """Any set of decisions, contradictions included, lets a round finish; the round's final
    labels obey the closure of the decisions inside each scenario (a confirmed pair shares a
    label, a pair of groups the operator kept apart never does)."""
    from itkm_engine.workspace import Workspace
    from itkm_engine.workspace import decisions as D

    with Workspace.open(trained_ws) as ws:
        images = ws.images()
        must, cannot = _random_decisions(images, n, seed=n)
        D.confirm(ws, must)
        D.reject(ws, cannot)
        cons = D.load_constraints(ws)
    res = cli_inproc("train", trained_ws, "-q")
    assert res.rc == 0 and "Traceback" not in res.text, res.text
    with Workspace.open(trained_ws) as ws:
        rnd = ws.rounds()[-1]
        assert rnd.status == "done"
        ids, cross = ws.assignments(rnd.number)
        images = ws.images()
    # The closure, computed here independently: must-links joined transitively; a component a
    # reject falls inside of is contradictory (the engine drops one of its confirms): not checked.
    parent: dict[int, int] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in cons.must.tolist():
        parent[find(a)] = find(b)
    bad = {find(a) for a, b in cons.cannot.tolist() if find(a) == find(b)}
    lab = dict(zip(ids.tolist(), cross.tolist()))
    scen = dict(zip(images.id.tolist(), images.scenario.tolist()))
    nodes = [i for i in np.unique(np.concatenate([cons.must, cons.cannot])).tolist() if i in lab]
    root = {i: find(i) for i in nodes}
    together = apart = 0
    members: dict[tuple[int, str], list[int]] = {}
    for i in nodes:
        if root[i] not in bad:
            members.setdefault((root[i], scen[i]), []).append(i)
    for (r, sc), m in members.items():
        if len(m) > 1:
            assert len({lab[i] for i in m}) == 1 and lab[m[0]] >= 0, m  # confirmed (also implied): one label
            together += 1
    for a, b in cons.cannot.tolist():
        ra, rb = find(a), find(b)
        if ra in bad or rb in bad:
            continue
        for sc in {scen[a], scen[b]}:
            la = {lab[i] for i in members.get((ra, sc), [])}
            lb = {lab[i] for i in members.get((rb, sc), [])}
            assert not (la & lb) - {-1}, (a, b)  # kept apart, with their whole confirmed groups
            apart += bool(la and lb)
    if n <= 200:  # (1,000 random answers with mistakes on ~200 crops join nearly all into contradictions)
        assert together and apart


# -- sites ------------------------------------------------------------------------------------------
@pytest.fixture
def two_site_ws(tmp_path):
    from itkm_engine.data.demo import make_two_site_demo

    a, b = make_two_site_demo(tmp_path / "demo", identities=3, seed=0)
    ws = ingested(tmp_path / "ws", [a], site="north")
    from itkm_engine.data.ingest import ingest
    from itkm_engine.workspace import Workspace

    with Workspace.open(ws) as w:
        ingest(w, [b], site="south")
    use_preset(ws, "tiny")
    return ws


def test_a_confirm_across_sites_is_refused_with_a_reason(two_site_ws):
    from itkm_engine.workspace import Workspace

    with Workspace.open(two_site_ws) as ws:
        images = ws.images()
        sites = ws.camera_sites()
        site = np.array([sites[c] for c in images.camera])
        a = str(images.id[site == "north"][0])
        b = str(images.id[site == "south"][0])
        c = str(images.id[site == "north"][1])
    line = one_line(*cli_inproc("confirm", two_site_ws, a, b)[::2], "confirm")
    assert "site" in line and "north" in line and "south" in line
    cli_inproc("reject", two_site_ws, a, b, expect=0)  # a reject across sites says nothing new, and is allowed
    cli_inproc("confirm", two_site_ws, a, c, expect=0)
    with Workspace.open(two_site_ws) as ws:
        from itkm_engine.workspace import decisions as D

        cons = D.load_constraints(ws)
        assert cons.must.tolist() == [sorted([int(a), int(c)])]


def test_a_round_on_two_sites_never_joins_them(two_site_ws, monkeypatch):
    """Every Stage III epoch: no per-group cluster, no CHM (cross-group) label and no IHM pair
    holds images of both sites."""
    from itkm_engine.stages.heterogeneous import HeterogeneousStage
    from itkm_engine.workspace import Workspace

    seen = []
    original = HeterogeneousStage.begin_epoch

    def spy(self, epoch, reporter):
        plan = original(self, epoch, reporter)
        seen.append((self.fs.ids.copy(), self.labels.copy(), self.cross.copy(), self.pairs.copy()))
        return plan

    monkeypatch.setattr(HeterogeneousStage, "begin_epoch", spy)
    # loose clustering and CHM, so that without the per-site split clusters and matches do mix
    cli_inproc("train", two_site_ws, "--set", "cluster.eps=0.9", "--set", "stage3.chm_margin=0", "-q", expect=0)
    with Workspace.open(two_site_ws) as ws:
        images = ws.images()
        sites = ws.camera_sites()
    site_of = dict(zip(images.id.tolist(), [sites[c] for c in images.camera]))
    assert seen
    for ids, labels, cross, pairs in seen:
        s = np.array([site_of[i] for i in ids.tolist()])
        for lab in (labels, cross):
            for c in np.unique(lab[lab >= 0]):
                assert len(set(s[lab == c])) == 1
        assert all(s[a] == s[b] for a, b in pairs.tolist())
