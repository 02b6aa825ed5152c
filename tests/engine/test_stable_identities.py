"""Stable identity ids through the real ``itkm`` command (issue 17 §1): a merge, a split, an undo
and a retraining round renumber nobody whose identity did not change; a retired id says where its
sightings went; the tracks CSV carries the same ids."""

from __future__ import annotations

import csv
import json

import numpy as np

from helpers.cli import cli_inproc as _cli
from helpers.cli import one_line
from itkm_engine.session import Session


def cli_inproc(*args, **kw):
    return _cli(*map(str, args), **kw)


def _listing(ws) -> dict[int, int]:
    """``{image id: identity}`` as every reader sees it."""
    with Session.open(ws) as s:
        t = s.identities()
        return dict(zip(t.image_id.tolist(), t.identity.tolist()))


def _members(ident: dict[int, int], x: int) -> set[int]:
    return {i for i, v in ident.items() if v == x}


def _by_size(ident: dict[int, int]) -> list[int]:
    ids, counts = np.unique(list(ident.values()), return_counts=True)
    return [int(i) for i in ids[np.argsort(-counts, kind="stable")]]


def test_a_merge_renumbers_nobody_else_and_the_merged_id_says_where_it_went(trained_ws):
    t0 = _listing(trained_ws)
    big = _by_size(t0)
    x, y, z, w = big[1], big[0], big[2], big[3]
    cli_inproc("identities", trained_ws, "--merge", x, y, "-q", expect=0)
    t1 = _listing(trained_ws)
    kept = min(x, y)  # the older id
    assert _members(t1, kept) == _members(t0, x) | _members(t0, y)
    assert all(t1[i] == t0[i] for i in t0 if t0[i] not in (x, y))  # nobody else renumbered
    # the next merge typed from the old listing hits the people it named
    cli_inproc("identities", trained_ws, "--merge", z, w, "-q", expect=0)
    t2 = _listing(trained_ws)
    assert _members(t2, min(z, w)) == _members(t0, z) | _members(t0, w)
    # the retired id answers where its sightings are
    gone = max(x, y)
    rc, _, err = cli_inproc("identities", trained_ws, "--merge", gone, big[4])
    assert f"#{gone} was merged into #{kept}" in one_line(rc, err, "identities")
    rc, _, err = cli_inproc("identities", trained_ws, "--name", gone, "Ann")
    assert f"merged into #{kept}" in one_line(rc, err, "identities")
    rc, out, _ = cli_inproc("identities", trained_ws, "--json", "--limit", "500", expect=0)
    rows = {r["identity"]: r for r in json.loads(out)}
    assert f"#{gone}" in rows[kept]["history"] and gone not in rows


def test_a_split_leaves_the_id_with_the_larger_part(trained_ws):
    t0 = _listing(trained_ws)
    x = _by_size(t0)[0]
    one = min(_members(t0, x))
    rc, out, _ = cli_inproc("identities", trained_ws, "--split", one, "-q", expect=0)
    t1 = _listing(trained_ws)
    assert _members(t1, x) == _members(t0, x) - {one}  # the larger part keeps #x
    assert t1[one] > max(t0.values())  # the sighting split off: a new id, never used before
    assert all(t1[i] == t0[i] for i in t0 if i != one)
    assert f"#{t1[one]}" in out
    with Session.open(trained_ws) as s:
        assert s.identity_history([t1[one]]) == {t1[one]: f"split from #{x}"}


def test_undo_and_redo_give_each_steps_ids_back(trained_ws):
    t0 = _listing(trained_ws)
    big = _by_size(t0)
    x, y = big[0], big[1]
    cli_inproc("identities", trained_ws, "--merge", x, y, "-q", expect=0)
    t1 = _listing(trained_ws)
    cli_inproc("identities", trained_ws, "--split", *sorted(_members(t1, min(x, y)))[:2], "-q", expect=0)
    t2 = _listing(trained_ws)
    assert t2 != t1
    cli_inproc("identities", trained_ws, "--undo", "-q", expect=0)
    assert _listing(trained_ws) == t1
    cli_inproc("identities", trained_ws, "--undo", "-q", expect=0)
    assert _listing(trained_ws) == t0  # the merged-away id is back, on the same people
    cli_inproc("identities", trained_ws, "--redo", "-q", expect=0)
    assert _listing(trained_ws) == t1
    # a new step after an undo: new ids are still never ones used before
    cli_inproc("identities", trained_ws, "--undo", "-q", expect=0)
    one = min(_members(t0, big[2]))
    cli_inproc("identities", trained_ws, "--split", one, "-q", expect=0)
    assert _listing(trained_ws)[one] > max(max(t1.values()), max(t2.values()))


def test_a_retraining_round_keeps_most_ids_on_the_same_people(trained_ws, tmp_path):
    """Across a round the clustering changes; ids follow their people by overlap: most images keep
    their id, every carried-over id keeps at least half of its people or half of its new
    cluster, new ids are new, and an id that went away says where its sightings went."""
    from itkm_engine.config import preset
    from itkm_engine.trainer import train
    from itkm_engine.workspace import Workspace

    t0 = _listing(trained_ws)
    with Workspace.open(trained_ws) as ws:
        train(ws, preset("tiny"), rounds=1)
    t1 = _listing(trained_ws)
    assert t1.keys() == t0.keys()
    kept = sum(t1[i] == t0[i] for i in t0)
    assert 2 * kept > len(t0), f"only {kept} of {len(t0)} images kept their id across the round"
    top = max(t0.values())
    for x in set(t1.values()):
        now, then = _members(t1, x), _members(t0, x)
        if x <= top:
            assert then and 2 * len(now & then) >= min(len(now), len(then)), x
    gone = set(t0.values()) - set(t1.values())
    for x in gone:
        rc, _, err = cli_inproc("identities", trained_ws, "--name", x, "Ann")
        assert f"#{x} was" in one_line(rc, err, "identities")
    out = tmp_path / "tracks.csv"
    cli_inproc("export-tracks", trained_ws, out, "--lineage", tmp_path / "lineage.csv", "-q", expect=0)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    with Session.open(trained_ws) as s:
        images = s.images()
        by_path = dict(zip(images.path, images.id.tolist()))
    assert {by_path[r["image_path"]]: int(r["identity_id"]) for r in rows} == t1  # the CSV: the same ids
    events = list(csv.DictReader((tmp_path / "lineage.csv").open(encoding="utf-8")))
    assert {int(e["identity_id"]) for e in events if e["event"] in ("merged", "retired")} >= gone
    assert all(e["round"] for e in events)
