"""Decisions that train (issue 17 §2): the decisions' closure over all images reaches Stage I and
CHM; the decision loss and the batches that carry decided pairs (outliers with their partner)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from itkm_engine import constraints as C
from itkm_engine.data.loading import PKSampler
from itkm_engine.losses.decision import decision_loss


def _cons(must=(), cannot=()):
    arr = lambda p: np.array([(min(a, b), max(a, b)) for a, b in p], np.int64).reshape(-1, 2)  # noqa: E731
    return C.Constraints(arr(must), arr(cannot))


# -- the closure ------------------------------------------------------------------------------------
def test_links_implied_through_another_group_reach_a_group_of_its_own():
    """A = X and X = B, with X in another group, make A = B inside A's group; X rejected from Y
    keeps every member of X's confirmed group from Y's.  The per-group clustering only sees the
    rows of its group: before the closure both were lost (the pairs have an end outside)."""
    cons = _cons(must=[(1, 10), (10, 2), (3, 20)], cannot=[(10, 20)])
    group = np.array([1, 2, 3])  # 10 and 20 live in another group
    labels = np.array([0, 1, 1])
    out = C.enforce_on_labels(labels, group, cons, feats=np.eye(3, dtype=np.float32))
    assert out[0] == out[1]  # implied must-link
    assert out[2] != out[0]  # implied cannot-link: 3 (with 20) kept from 1 and 2 (with 10)
    must, cannot = cons.closure.within(group)
    assert {tuple(p) for p in must.tolist()} == {(0, 1)} and len(cannot) == 1


def test_a_contradiction_keeps_the_reject():
    cons = _cons(must=[(1, 2), (2, 3)], cannot=[(1, 3)])
    cl = cons.closure
    comp = cl.component_of([1, 2, 3])
    assert comp[0] == comp[1] != comp[2] and cl.ban_matrix()[comp[0], comp[2]]
    must, _ = C.decided_pairs(np.array([1, 2, 3]), cons)
    assert must.tolist() == [[0, 1]]  # the dropped confirm is not sampled as a positive


# -- the loss and the batches ------------------------------------------------------------------------
def test_decision_loss_pulls_confirmed_and_pushes_rejected_below_the_margin():
    f = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0], [0.0, 1.0]]), dim=1)
    f.requires_grad_(True)
    ban = np.zeros((2, 2), bool)
    ban[0, 1] = ban[1, 0] = True
    comp = torch.tensor([0, 0, 1, -1, -1])
    loss = decision_loss(f, comp, ban, margin=0.0)
    # unrelated pairs (both orders): (0,3) 0 (0,4) 0 (1,3) .8 (1,4) .8 (2,3) .6 (2,4) .6 (3,4) 1 -> mean 3.8 / 7
    ref = 3.8 / 7
    # pull: 1 - cos(f0, f1) = 0.4; push: cos(f0, f2) = 0.8 and cos(f1, f2) = 0.96 above the batch's mean
    assert loss.item() == pytest.approx(0.4 + ((0.8 - ref) + (0.96 - ref)) / 2, abs=1e-4)
    loss.backward()
    assert f.grad[3].abs().sum() == 0 and f.grad[0].abs().sum() > 0
    far = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    assert decision_loss(far, torch.tensor([0, 1, -1]), ban).item() == 0.0  # below the batch's mean
    assert decision_loss(far, torch.tensor([-1, -1, -1]), ban).item() == 0.0


def test_the_sampler_brings_decided_pairs_and_their_outliers_capped():
    labels = np.repeat(np.arange(12), 5)
    labels[[7, 31]] = -1  # two outliers
    decided = np.array([[7, 40], [31, 2], [10, 50]])
    plain = list(PKSampler(labels, 8, 4, 20, seed=3))
    assert plain == list(PKSampler(labels, 8, 4, 20, seed=3, decided=None))  # no decisions: same batches
    s = PKSampler(labels, 8, 4, 20, seed=3, decided=decided, decided_share=0.25)
    assert s.decided_slots() == 2  # a quarter of 8 identity slots
    items = [i for i, _ in s]
    assert len(items) == len(plain) == 20 * 32
    batches = [items[b * 32 : (b + 1) * 32] for b in range(20)]
    for batch in batches:
        held = [p for p in decided.tolist() if p[0] in batch and p[1] in batch]
        assert len(held) >= 2  # every batch brings its two decided pairs
    assert any(7 in b and 40 in b for b in batches) and any(31 in b and 2 in b for b in batches)
    assert all(labels[i] >= 0 for b in batches for i in b if i not in (7, 31))


# -- a round ----------------------------------------------------------------------------------------
def _pick(images):
    keys, pid = images.group_key(), np.asarray(images.person_id)
    rows = {g: np.flatnonzero(keys == g) for g in set(keys)}
    vis, ir, hr = rows["visible-infrared/visible"], rows["visible-infrared/infrared"], rows["cross-resolution/high-res"]
    both = sorted(set(pid[vis]) & set(pid[ir]) & set(pid[hr]))
    p1, p2 = both[:2]

    def one(r, p, i=0):
        return int(images.id[r[pid[r] == p][i]])

    return vis, ir, hr, p1, p2, one


def test_stage1_and_chm_obey_links_implied_through_other_groups_and_the_decision_loss_trains(trained_ws,
                                                                                             monkeypatch):
    """Two visible sightings of different people confirmed each with one infrared sighting: Stage
    I must put them in one cluster (the link is implied through the infrared group); two visible
    sightings of one person, one confirmed with an infrared image that is rejected from the
    other: Stage I must keep them apart; a visible and an infrared image confirmed through a
    high-res one (another scenario): CHM must give them one label.  Every epoch of Stage I and
    Stage III logs the decision loss and the decided pairs its batches carried."""
    from itkm_engine.stages.heterogeneous import HeterogeneousStage
    from itkm_engine.stages.homogeneous import HomogeneousStage
    from itkm_engine.trainer import train
    from itkm_engine.session import workspace_config
    from itkm_engine.workspace import Workspace
    from itkm_engine.workspace import decisions as D

    seen = {"stage1": [], "stage3": []}
    for cls, name, attr in ((HomogeneousStage, "stage1", "labels"), (HeterogeneousStage, "stage3", "cross")):
        original = cls.begin_epoch

        def spy(self, epoch, reporter, _o=original, _n=name, _a=attr):
            plan = _o(self, epoch, reporter)
            seen[_n].append(dict(zip(self.fs.ids.tolist(), getattr(self, _a).tolist())))
            return plan

        monkeypatch.setattr(cls, "begin_epoch", spy)
    with Workspace.open(trained_ws) as ws:
        images = ws.images()
        vis, ir, hr, p1, p2, one = _pick(images)
        a, b, x = one(vis, p1), one(vis, p2), one(ir, p1)  # a = x = b: a and b one person
        c, d, y, z = one(vis, p1, 1), one(vis, p1, 2), one(ir, p2, 1), one(ir, p2, 2)  # c = y, y != d
        e, h, i = one(vis, p2, 1), one(hr, p2), one(ir, p1, 1)  # e = h = i across scenarios
        D.confirm(ws, [(a, x), (x, b), (c, y), (e, h), (h, i)])
        D.reject(ws, [(y, d)])
        del z
        cfg = workspace_config(ws)
        train(ws, cfg, rounds=1)
        log = ws.epoch_log(ws.rounds()[-1].number)
    assert seen["stage1"] and seen["stage3"]
    for lab in seen["stage1"]:
        assert lab[a] == lab[b] >= 0
        assert lab[c] != lab[d] or lab[c] < 0
    for lab in seen["stage3"]:
        assert lab[e] == lab[i] >= 0
        assert lab[a] == lab[b] == lab[x] >= 0
    for stage in ("stage1", "stage3"):
        epochs = [row["values"] for row in log if row["stage"] == stage]
        assert epochs and all("decision" in v and v["decided_pairs"] >= 6 for v in epochs)
