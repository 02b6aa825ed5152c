"""Operator decisions: the store (undo/redo, batches, schema v3), enforcement on labels, and a
training round on the demo set that obeys them."""

import sqlite3

import numpy as np
import pytest

from itkm_engine import constraints as C
from itkm_engine import review as R
from itkm_engine.workspace import decisions as D
from itkm_engine.workspace import DB_NAME, Workspace


def _cons(must=(), cannot=()):
    arr = lambda p: np.array(sorted((min(a, b), max(a, b)) for a, b in p), np.int64).reshape(-1, 2)  # noqa: E731
    return C.Constraints(arr(must), arr(cannot))


# -- enforcement --------------------------------------------------------------------------------
def test_must_link_joins_clusters_and_outliers():
    ids = np.arange(10, 18)
    labels = np.array([0, 0, 1, 1, -1, -1, -1, 2])
    out = C.enforce_on_labels(labels, ids, _cons(must=[(10, 12), (14, 15), (16, 17)]))
    assert out[0] == out[1] == out[2] == out[3]  # clusters 0 and 1 merged
    assert out[4] == out[5] >= 0 and out[4] != out[0]  # two outliers became one cluster
    assert out[6] == out[7]  # an outlier joined its partner's cluster


def test_cannot_link_splits_by_features_and_ignores_absent_images():
    ids = np.arange(6)
    feats = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1], [0.1, 0.9], [0.2, 0.8]], np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    labels = np.zeros(6, np.int64)
    out = C.enforce_on_labels(labels, ids, _cons(cannot=[(0, 3), (2, 99)]), feats)
    assert out[0] != out[3]
    assert list(out[:3]) == [out[0]] * 3 and list(out[3:]) == [out[3]] * 3  # members follow the nearer side
    assert np.array_equal(C.enforce_on_labels(labels, ids, _cons(cannot=[(7, 8)])), labels)  # nothing applies


def test_cannot_wins_over_a_chain_of_musts_and_is_never_merged():
    ids = np.arange(4)
    labels = np.array([0, 1, 2, 3])
    # 0~1, 1~2, 2~3 confirmed, but 0 and 3 rejected: the chain cannot join all four.
    out = C.enforce_on_labels(labels, ids, _cons(must=[(0, 1), (1, 2), (2, 3)], cannot=[(0, 3)]))
    assert out[0] != out[3]
    assert out[0] == out[1] == out[2]


def test_split_pairs_see_every_group():
    must, cannot = C.split_pairs([1, 2], [3, 4], ["a/x", "a/y"], ["a/x", "a/y"])
    assert (1, 2) in must and (3, 4) in must
    assert {(1, 3), (2, 4)} <= set(cannot)  # one per shared group key
    labels = np.zeros(4, np.int64)
    out = C.enforce_on_labels(labels, np.array([1, 2, 3, 4]), _cons(must, cannot))
    assert out[0] == out[1] != out[2] == out[3]
    with pytest.raises(C.ConstraintError):
        C.split_pairs([1, 2], [], ["a"] * 2, [])


def test_instance_pairs_add_confirmed_cross_group_and_drop_rejected():
    ids = np.array([5, 6, 7, 8])
    keys = np.array(["s/v", "s/v", "s/i", "s/i"], object)
    pairs = np.array([[0, 2], [1, 3]])
    out = C.instance_pairs(pairs, ids, keys, _cons(must=[(5, 8)], cannot=[(6, 8)]))
    got = {tuple(sorted(p)) for p in out.tolist()}
    assert got == {(0, 2), (0, 3)}  # (6,8) rejected; (5,8) confirmed cross-group
    # confirmed inside a group only: no IHM pair; a reject between two confirmed groups drops
    # every pair between their members
    out = C.instance_pairs(pairs, ids, keys, _cons(must=[(5, 6), (7, 8)], cannot=[(5, 7)]))
    assert out.tolist() == []


# -- the store ----------------------------------------------------------------------------------
def test_decisions_undo_redo_in_batches_and_survive_reopen(fresh_ws):
    with Workspace.open(fresh_ws) as ws:
        ids = ws.images().id[:6].tolist()
        b1 = D.confirm(ws, [(ids[0], ids[1]), (ids[2], ids[3])], user="ann")  # a selection: one step
        b2 = D.reject(ws, [(ids[1], ids[0])], user="bob")  # the later decision on the pair wins
        assert b2 > b1
        cons = D.load_constraints(ws)
        assert cons.decision(ids[0], ids[1]) == "cannot" and cons.decision(ids[2], ids[3]) == "must"
        assert D.undo(ws) == b2
        assert D.load_constraints(ws).decision(ids[0], ids[1]) == "must"
        assert D.undo(ws) == b1 and len(D.load_constraints(ws)) == 0
        assert D.undo(ws) is None
        assert D.redo(ws) == b1 and len(D.load_constraints(ws).must) == 2
    with Workspace.open(fresh_ws) as ws:  # b2 still redoable after reopening
        assert len(D.load_constraints(ws).must) == 2
        D.reject(ws, [(ids[4], ids[5])])  # a new action drops the redo stack
        assert D.redo(ws) is None
        hist = D.history(ws)
        assert {d.user for d in hist} >= {"ann", "bob"}
        assert sorted(d.state for d in hist) == [0, 0, 0, 2]  # the retired undo is kept, flagged
        with pytest.raises(C.ConstraintError):
            D.confirm(ws, [(ids[0], ids[0])])
        with pytest.raises(C.ConstraintError):
            D.confirm(ws, [(ids[0], 10**9)])


def test_names_follow_their_images_not_identity_numbers(fresh_ws):
    with Workspace.open(fresh_ws) as ws:
        D.name_identity(ws, [1, 2, 3], "Alice", "blue coat")
        # After re-clustering identity numbers changed: the images of "Alice" are now identity 7.
        names = D.identity_names(ws, np.array([1, 2, 3, 4]), np.array([7, 7, 5, 5]))
        assert names == {7: ("Alice", "blue coat")}
        D.undo(ws)
        assert D.identity_names(ws, np.array([1, 2, 3]), np.array([0, 0, 0])) == {}


def test_schema_2_workspace_gains_the_decision_tables(fresh_ws):
    con = sqlite3.connect(fresh_ws / DB_NAME)
    con.execute("DROP TABLE decisions")
    con.execute("DROP TABLE identity_names")
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with Workspace.open(fresh_ws) as ws:
        assert ws.schema_version() == Workspace.SCHEMA_VERSION  # v3, then every later upgrade
        assert D.load_constraints(ws).must.shape == (0, 2)
    assert (fresh_ws / f"{DB_NAME}.bak-v2").exists()


def test_cross_labels_keep_their_offset():
    lab, n = C.enforce_cross_labels(np.array([5, 5, 6, -1]), 5, np.array([1, 2, 3, 4]), _cons(cannot=[(1, 2)]),
                                    np.eye(4, dtype=np.float32))
    assert lab[0] != lab[1] and lab.min() >= -1 and set(lab[lab >= 0]) == set(range(5, 5 + n)) and n == 3


def test_a_round_obeys_the_decisions_and_they_survive_it(trained_ws, monkeypatch):
    """Planted decisions that contradict the truth (two different people confirmed, one person's
    two sightings rejected; once inside a group, once across the visible/infrared groups) must
    hold in the next round's per-group pseudo-labels, in every Stage III epoch's CHM labels and IHM
    pairs, and in the final identities; undo gives the unconstrained identities back."""
    from itkm_engine.session import Session, workspace_config
    from itkm_engine.stages.heterogeneous import HeterogeneousStage
    from itkm_engine.trainer import train

    seen = []
    original = HeterogeneousStage.begin_epoch

    def spy(self, epoch, reporter):
        plan = original(self, epoch, reporter)
        seen.append((self.fs.ids.copy(), self.cross.copy(), {tuple(p) for p in self.fs.ids[self.pairs].tolist()}))
        return plan

    monkeypatch.setattr(HeterogeneousStage, "begin_epoch", spy)
    with Workspace.open(trained_ws) as ws:
        images = ws.images()
        keys, pid = images.group_key(), np.asarray(images.person_id)
        vis, ir = (np.flatnonzero(keys == f"visible-infrared/{g}") for g in ("visible", "infrared"))
        p1, p2 = sorted(set(pid[vis]) & set(pid[ir]))[:2]
        a = int(images.id[vis[pid[vis] == p1][0]])
        b = int(images.id[vis[pid[vis] == p2][0]])
        c, d = (int(i) for i in images.id[vis[pid[vis] == p1][1:3]])
        xa, xb = int(images.id[vis[pid[vis] == p2][1]]), int(images.id[ir[pid[ir] == p1][0]])  # across groups
        xc, xd = int(images.id[vis[pid[vis] == p2][2]]), int(images.id[ir[pid[ir] == p2][0]])
        D.confirm(ws, [(a, b), (xa, xb)])
        D.reject(ws, [(c, d), (xc, xd)])
        cfg = workspace_config(ws)
        assert cfg.stage3.chm and cfg.stage3.ihm
        (res,) = train(ws, cfg, rounds=1)
        n = ws.rounds()[-1].number
        ids, labels = ws.assignments(n)
        lab = dict(zip(ids.tolist(), labels.tolist()))
        assert lab[a] == lab[b] >= 0
        assert lab[c] != lab[d] or lab[c] < 0
        assert len(D.load_constraints(ws)) == 4  # decisions are workspace state, not round state
    assert seen
    for fs_ids, cross, pairs in seen:
        x = dict(zip(fs_ids.tolist(), cross.tolist()))
        assert x[xa] == x[xb] >= 0 and x[a] == x[b] >= 0  # a must-link is always merged
        assert x[xc] != x[xd] or x[xc] < 0  # a cannot-link never
        assert (min(xa, xb), max(xa, xb)) in {(min(p), max(p)) for p in pairs}  # confirmed: an IHM positive
        assert not {(xc, xd), (xd, xc)} & pairs
    with Session.open(trained_ws) as s:
        t = s.identities()
        ident = dict(zip(t.image_id.tolist(), t.identity.tolist()))
        assert ident[a] == ident[b] and ident[c] != ident[d]
        assert ident[xa] == ident[xb] and ident[xc] != ident[xd]
        s.undo()
        s.undo()
        raw = s.ws.identities(checkpoint=s.checkpoint_key())  # the clustering as computed, no decisions
        got = s.identities()  # the same people together (stable ids are not the clustering's positions)
        assert np.array_equal(got.image_id, raw.image_id)
        pairs = np.unique(np.stack([got.identity, raw.identity], axis=1), axis=0)
        assert len(pairs) == len(np.unique(raw.identity)) == len(np.unique(got.identity))


def test_cli_confirm_reject_identities_and_csv_columns(trained_ws, tmp_path, capsys):
    """The CLI records decisions by image path or id, merges/splits/names identities, undoes, and
    the tracks CSV carries the identity's name and whether a sighting was confirmed."""
    import csv

    from itkm_engine.cli import main
    from itkm_engine.session import Session

    with Session.open(trained_ws) as s:
        images = s.images()
        t = s.identities()
        big = np.bincount(t.identity).argsort()[::-1]
        x, y = int(big[0]), int(big[1])
        # decisions on sightings outside x and y, so the merge below contradicts none of them
        others = t.image_id[~np.isin(t.identity, [x, y])]
        a_path, b_id = images.path[images.index_of([others[0]])[0]], int(others[1])
    assert main(["confirm", str(trained_ws), a_path, str(b_id), "-q"]) == 0
    assert main(["reject", str(trained_ws), str(b_id), str(int(others[2])), "-q"]) == 0
    assert main(["confirm", str(trained_ws), "nope.jpg", "1", "-q"]) == 2
    assert "not an image of this workspace" in capsys.readouterr().err
    with Session.open(trained_ws) as s:  # decisions renumber identities: find x and y again
        t1 = s.identities()
        x, y = (int(t1.identity[t1.image_id == t.image_id[t.identity == k][0]][0]) for k in (x, y))
    assert main(["identities", str(trained_ws), "--merge", str(x), str(y), "-q"]) == 0
    with Session.open(trained_ws) as s:
        t2 = s.identities()
        members_x = t1.image_id[t1.identity == x]
        merged = set(t2.identity[np.isin(t2.image_id, np.concatenate([members_x, t1.image_id[t1.identity == y]]))])
        assert len(merged) == 1
        ident = merged.pop()
        moved = t2.image_id[t2.identity == ident][:2]
    assert main(["identities", str(trained_ws), "--split", *map(str, moved), "-q"]) == 0
    with Session.open(trained_ws) as s:
        t3 = s.identities()
        new = t3.identity[np.isin(t3.image_id, moved)]
        assert len(set(new)) == 1 and new[0] != t3.identity[t3.image_id == members_x[-1]][0]
        target = int(new[0])
    assert main(["identities", str(trained_ws), "--name", str(target), "=cmd", "--note", "seen twice", "-q"]) == 0
    out = tmp_path / "tracks.csv"
    assert main(["export-tracks", str(trained_ws), str(out), "-q"]) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    named = {r["identity_name"] for r in rows if r["identity_name"]}
    assert named == {"'=cmd"}  # spreadsheet-safe
    assert sum(r["confirmed"] == "1" for r in rows) >= len(moved)
    assert main(["identities", str(trained_ws), "--undo", "-q"]) == 0  # the name
    assert main(["identities", str(trained_ws), "--undo", "-q"]) == 0  # the split
    with Session.open(trained_ws) as s:
        t4 = s.identities()
        assert len(set(t4.identity[np.isin(t4.image_id, moved)])) == 1
        assert s.identity_names() == {}


def test_a_later_split_beats_an_earlier_merge(fresh_ws):
    with Workspace.open(fresh_ws) as ws:
        ids = ws.images().id[:6]
        D.confirm(ws, C.merge_pairs([(ids[:3], ["g"] * 3), (ids[3:], ["g"] * 3)]))  # all six one person
        D.record_split(ws, ids[:2], ids[2:], ["g"] * 2, ["g"] * 4)  # then two split off
        out = C.enforce_on_labels(np.zeros(6, np.int64), ids, D.load_constraints(ws))
        assert out[0] == out[1] != out[2] and len(set(out[2:])) == 1
        D.undo(ws)
        out = C.enforce_on_labels(np.zeros(6, np.int64), ids, D.load_constraints(ws))
        assert len(set(out)) == 1


def test_simulated_confirmations_follow_the_true_ids_in_the_queue_order(trained_ws):
    from itkm_engine.session import Session

    with Session.open(trained_ws) as s:
        queue = s.review_queue(50)
        assert queue
        n = R.simulate_confirmations(s, 20, seed=1)
        assert n == 20
        images = s.images()
        pid = dict(zip(images.id.tolist(), images.person_id.tolist()))
        cons = s.constraints()
        assert len(cons) == 20
        asked = {(min(p.image_a, p.image_b), max(p.image_a, p.image_b)) for p in queue[:20]}
        assert {tuple(p) for p in np.concatenate([cons.must, cons.cannot]).tolist()} == asked
        assert all(pid[a] == pid[b] for a, b in cons.must.tolist())
        assert all(pid[a] != pid[b] for a, b in cons.cannot.tolist())
        assert not {(p.image_a, p.image_b) for p in s.review_queue(50)} & {tuple(p) for p in cons.must.tolist()}
