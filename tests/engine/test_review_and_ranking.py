"""The operator's time where it counts (issue 17 §2): rankings that obey decisions before any
retraining (gallery and ``itkm query``), the review queue per direction, search-and-answer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.cli import cli_inproc
from itkm_engine import constraints as C
from itkm_engine.decision_ranking import decision_ranking


def _cons(must=(), cannot=()):
    arr = lambda p: np.array([(min(a, b), max(a, b)) for a, b in p], np.int64).reshape(-1, 2)  # noqa: E731
    return C.Constraints(arr(must), arr(cannot))


# -- rankings obey decisions at once -----------------------------------------------------------------
def test_decision_ranking_groups_confirmed_lifts_them_and_sinks_rejected():
    ids = np.array([10, 11, 12, 13, 14, 15])
    scores = np.array([0.9, 0.8, 0.1, 0.5, 0.4, -np.inf])
    # query 20 confirmed with 12; 13 confirmed with 11 (not the query); 10 rejected from the query
    cons = _cons(must=[(20, 12), (11, 13)], cannot=[(20, 10)])
    key, shown = decision_ranking(scores, ids, cons.closure, query_id=20)
    order = ids[np.argsort(-key, kind="stable")]
    assert order[0] == 12  # confirmed: first, whatever its score
    assert shown[3] == pytest.approx(0.8)  # 13 scored by its group's best (11)
    assert list(order[1:4]) == [11, 13, 14]
    assert order[4] == 10 and not np.isfinite(key[5])  # rejected: last; no score stays out
    key2, _ = decision_ranking(scores, ids, C.Constraints.empty().closure, query_id=20)
    assert np.array_equal(key2, scores)  # no decisions: the ranking as it was


def test_query_obeys_decisions_before_retraining(trained_ws):
    """``itkm query`` after a confirm and a reject, no training in between: the confirmed image is
    first, the rejected one is gone from the top, and an image confirmed with the confirmed one
    rises with it."""
    from itkm_engine.session import Session

    with Session.open(trained_ws, device="cpu") as s:
        q = int(s.images().id[0])
        ranked = [m.image_id for m in s.query_image(q, k=1000)]
        top, far, farther = ranked[0], ranked[-1], ranked[-2]
    cli_inproc("confirm", trained_ws, str(q), str(far), expect=0)
    cli_inproc("reject", trained_ws, str(q), str(top), expect=0)
    cli_inproc("confirm", trained_ws, str(far), str(farther), expect=0)
    res = cli_inproc("query", trained_ws, str(q), "--top-k", "5", "--json", "-q", expect=0)
    rows = json.loads(res.out)
    with Session.open(trained_ws, device="cpu") as s:
        images = s.images()
        path_of = dict(zip(images.id.tolist(), images.path))
    got = [r["path"] for r in rows]
    assert set(got[:2]) == {path_of[far], path_of[farther]}
    assert all(r["decision"] == "confirmed" for r in rows[:2])
    assert path_of[top] not in got


# -- the review queue and search-and-answer ----------------------------------------------------------
def test_the_review_queue_asks_every_group_per_direction_changes_first(trained_ws):
    from itkm_engine.session import Session

    with Session.open(trained_ws, device="cpu") as s:
        images = s.images()
        key = dict(zip(images.id.tolist(), images.group_key().tolist()))
        scen = dict(zip(images.id.tolist(), images.scenario.tolist()))
        groups = set(images.group_key().tolist())
        queue = s.review_queue(4 * len(groups))
        assert len(queue) == 4 * len(groups)
        assert all(p.cross_scenario == (scen[p.image_a] != scen[p.image_b]) for p in queue)
        first = queue[: 3 * len(groups)]
        asked = {key[p.image_a] for p in first}
        assert asked == groups  # every group, infrared and low-res included, asks early
        assert any("infrared -> visible" in p.direction for p in first)
        assert any("low-res -> high-res" in p.direction for p in first)
        assert any(p.cross_scenario for p in first)  # and across scenarios
        assert any(key[p.image_a] == key[p.image_b] for p in first)  # and inside a group
        by_dir: dict[str, list[float]] = {}
        for p in s.review_queue(200):
            by_dir.setdefault(p.direction, []).append(p.change)
        assert all(v == sorted(v, reverse=True) for v in by_dir.values())  # would-change first
        p = queue[0]
        s.confirm(p.image_a, p.image_b)
        again = {(q.image_a, q.image_b) for q in s.review_queue(200)}
        assert (p.image_a, p.image_b) not in again


def test_search_and_answer_through_the_cli_is_one_step(trained_ws):
    from itkm_engine.session import Session

    with Session.open(trained_ws, device="cpu") as s:
        images = s.images()
        q = int(images.id[images.group == "infrared"][0])
    res = cli_inproc("answer", trained_ws, str(q), "--top-k", "4", "--json", "-q", expect=0)
    rows = json.loads(res.out)
    assert len(rows) == 4
    with Session.open(trained_ws, device="cpu") as s:
        images = s.images()
        grp = dict(zip(images.id.tolist(), images.group.tolist()))
    assert all(grp[r["image"]] == "visible" for r in rows)  # the other group of its scenario
    yes, no = str(rows[0]["image"]), [str(r["image"]) for r in rows[1:]]
    cli_inproc("answer", trained_ws, str(q), "--yes", yes, "--no", *no, "-q", expect=0)
    with Session.open(trained_ws, device="cpu") as s:
        cons = s.constraints()
        assert len(cons.must) == 1 and len(cons.cannot) == 3
        assert [m.image_id for m in s.query_image(q, k=1)] == [int(yes)]
        left = {a.image_id for a in s.answer_selection(q, 10)}
        assert not left & {int(yes), *map(int, no)}  # answered results are not asked again
    cli_inproc("identities", trained_ws, "--undo", "-q", expect=0)
    with Session.open(trained_ws, device="cpu") as s:
        assert len(s.constraints()) == 0
