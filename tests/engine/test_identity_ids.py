"""Stable identity ids (issue 17 §1): the matching rules, pure (itkm_engine/identity_ids.py)."""

from __future__ import annotations

import numpy as np

from itkm_engine.identity_ids import assign_ids, separate_split_offs


def _ids(*sizes):
    """Image ids 1.. and, per block, its label 0, 1, ..."""
    labels = np.concatenate([np.full(n, i) for i, n in enumerate(sizes)])
    return np.arange(1, len(labels) + 1), labels


def test_first_ids_largest_first_then_unchanged_clusters_keep_theirs():
    ids, lab = _ids(3, 5, 2)
    a = assign_ids([], [], ids, lab, next_id=1)
    assert a.identity.tolist() == [2] * 3 + [1] * 5 + [3] * 2  # the largest is #1
    assert a.next_id == 4 and sorted(e.event for e in a.events) == ["new"] * 3
    # the same clusters under other labels: every image keeps its id, nothing happens
    b = assign_ids(ids, a.identity, ids, 10 - lab, next_id=a.next_id)
    assert np.array_equal(b.identity, a.identity) and b.events == [] and b.next_id == 4


def test_merge_keeps_the_older_id_or_the_named_one():
    ids, lab = _ids(3, 5, 2)
    prev = np.array([7] * 3 + [4] * 5 + [9] * 2)  # #4 is older than #7
    merged = np.where(lab == 0, 1, lab)  # the first block joins the second
    a = assign_ids(ids, prev, ids, merged, next_id=10)
    assert a.identity.tolist() == [4] * 8 + [9] * 2
    assert [(e.identity, e.event, e.other) for e in a.events] == [(7, "merged", 4)]
    b = assign_ids(ids, prev, ids, merged, next_id=10, named=[7])  # the named one wins over the older
    assert b.identity.tolist() == [7] * 8 + [9] * 2
    assert [(e.identity, e.event, e.other) for e in b.events] == [(4, "merged", 7)]


def test_split_leaves_the_id_with_the_larger_part_and_the_rest_gets_a_new_one():
    ids, lab = _ids(6, 2)
    prev = np.array([5] * 6 + [8] * 2)
    split = lab.copy()
    split[:2] = 2  # two sightings of #5 leave it
    a = assign_ids(ids, prev, ids, split, next_id=9)
    assert a.identity.tolist() == [9, 9, 5, 5, 5, 5, 8, 8]
    assert [(e.identity, e.event, e.other) for e in a.events] == [(9, "split", 5)]
    # four of the six leave: they are the larger part, so they keep #5
    b = assign_ids(ids, prev, ids, np.array([3, 3, 3, 3, 4, 4, 1, 1]), next_id=9)
    assert b.identity.tolist() == [5] * 4 + [9] * 2 + [8] * 2


def test_a_match_needs_half_of_either_side_and_unmatched_ids_retire_into_the_majority():
    # #1 (images 1-10) and #2 (11-20); a new cluster of 3 + 3 of them and 4 new images is less than
    # half of each old identity and of itself: a new id (split from the plurality, the older #1)
    prev_ids, prev = np.arange(1, 21), np.array([1] * 10 + [2] * 10)
    ids = np.arange(1, 25)
    lab = np.array([0] * 3 + [1] * 7 + [0] * 3 + [2] * 7 + [0] * 4)
    a = assign_ids(prev_ids, prev, ids, lab, next_id=3)
    assert a.identity.tolist() == [3] * 3 + [1] * 7 + [3] * 3 + [2] * 7 + [3] * 4
    assert [(e.identity, e.event, e.other) for e in a.events] == [(3, "split", 1)]
    # #1 (images 1-6) scattered in thirds into #2, #3 and #4: no part is half of it or of its
    # cluster, so #1 retires into the id holding most of it (a tie: the smallest)
    prev_ids = np.arange(1, 25)
    prev = np.array([1] * 6 + [4] * 6 + [3] * 6 + [2] * 6)
    lab = np.array([0, 0, 1, 1, 2, 2] + [2] * 6 + [1] * 6 + [0] * 6)
    b = assign_ids(prev_ids, prev, prev_ids, lab, next_id=5)
    assert b.identity.tolist() == [2, 2, 3, 3, 4, 4] + [4] * 6 + [3] * 6 + [2] * 6
    assert [(e.identity, e.event, e.other) for e in b.events] == [(1, "retired", 2)]


def test_ids_are_never_reused_and_images_gone_retire_their_id():
    a = assign_ids([1, 2, 3], [1, 1, 2], [1, 2, 4], [0, 0, 1], next_id=3)
    assert a.identity.tolist() == [1, 1, 3]  # image 3 (#2) is gone; the new image 4 gets #3, not #2
    assert ("retired" in {e.event for e in a.events if e.identity == 2}) and a.next_id == 4


def test_sightings_split_off_one_by_one_are_parted_unless_confirmed_together():
    ids = np.array([1, 2, 3, 4, 5])
    lab = np.array([0, 0, 1, 1, 1])  # 1 and 2 were split off: enforcement put them in one cluster
    out = separate_split_offs(lab, ids, [np.array([1, 2])], np.zeros((0, 2), np.int64))
    assert out[0] != out[1] and out[2] == out[3] == out[4] and out[0] not in out[2:] and out[1] not in out[2:]
    out = separate_split_offs(lab, ids, [np.array([1, 2])], np.array([[1, 2]]))  # confirmed together
    assert out[0] == out[1]
