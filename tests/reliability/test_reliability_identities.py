"""Identities that look right and are wrong (issue 16 §3), through the real ``itkm`` command:

* two sites: no identity joins people of both; a merge across them is refused;
* a merge that contradicts a reject is refused naming the step, or overrules it only with
  ``--override`` (undo gives the reject back) -- never a silent cut;
* a relative path names the image in the current folder first; an ambiguous one is refused,
  listing the candidates;
* images ingested after a round join their nearest identity at once (provisional) or are
  counted, with the reason, as in no identity; ``itkm status``, the listing and the CSV agree;
  ``--review`` never calls two new images one identity when they are not;
* a split never joins what it splits off: several sightings become one identity each unless
  ``--together`` says they are one person.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import cli_inproc as _cli
from helpers.cli import one_line
from helpers.workspaces import copy_ws, use_preset
from itkm_engine.session import Session
from itkm_engine.workspace import decisions as D


def cli_inproc(*args, **kw):
    return _cli(*map(str, args), **kw)


def _listing(ws) -> tuple[dict[int, int], dict[int, str]]:
    """``({image id: identity}, {image id: site})``."""
    with Session.open(ws) as s:
        t = s.identities()
        sites = {src.id: src.site for src in s.ws.sources()}
        images = s.images()
        site = {int(i): sites[int(src)] for i, src in zip(images.id, images.source_id)}
        return dict(zip(t.image_id.tolist(), t.identity.tolist())), site


@pytest.fixture(scope="module")
def two_sites_template(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two demo sets of the same layout with different people, ingested as two sites (not
    trained; the tiny preset's features): ``(workspace, site a root, site b root)``."""
    from itkm_engine.data.demo import make_two_site_demo
    from itkm_engine.data.ingest import ingest
    from itkm_engine.workspace import Workspace

    root = tmp_path_factory.mktemp("two-sites")
    a, b_demo = make_two_site_demo(root / "demo", identities=3, seed=0, images_per_camera=3)
    # site b's crops under site a's file names: two sources of the same layout, as two sites'
    # exports of one camera system are (the same relative paths, other people)
    b = root / "site-b"
    for cam in sorted(p for p in a.rglob("*") if p.is_dir()):
        rel = cam.relative_to(a)
        names, crops = sorted(cam.glob("*.jpg")), sorted((b_demo / rel).glob("*.jpg"))
        (b / rel).mkdir(parents=True, exist_ok=True)
        for name, crop in zip(names, crops):
            (b / rel / name.name).write_bytes(crop.read_bytes())
    with Workspace.open(root / "ws", create=True) as ws:
        ingest(ws, [a])
        ingest(ws, [b], site="depot")
    use_preset(root / "ws", "tiny")
    with Session.open(root / "ws") as s:
        s.features()
    return root / "ws", a, b


@pytest.fixture
def two_sites(two_sites_template, tmp_path):
    ws, a, b = two_sites_template
    return copy_ws(ws, tmp_path / "ws"), a, b


def test_no_identity_joins_two_sites_and_a_merge_across_them_is_refused(two_sites):
    ws, _a, _b = two_sites
    rc, out, _ = cli_inproc("identities", ws, "--json", "--limit", "1000", expect=0)
    ident, site = _listing(ws)
    for x in {r["identity"] for r in json.loads(out)}:
        assert len({site[i] for i, v in ident.items() if v == x}) == 1, f"identity #{x} spans both sites"
    x = next(v for i, v in ident.items() if site[i] == "default")
    y = next(v for i, v in ident.items() if site[i] == "depot")
    rc, _, err = cli_inproc("identities", ws, "--merge", x, y)
    assert "different sites" in one_line(rc, err, "identities")
    assert _listing(ws)[0] == ident


def test_a_merge_against_a_reject_is_refused_naming_it_or_overrules_it_explicitly(trained_ws):
    ident, _ = _listing(trained_ws)
    ids, counts = np.unique(list(ident.values()), return_counts=True)
    x, y = (int(v) for v in ids[np.argsort(-counts)][:2])
    a = min(i for i, v in ident.items() if v == x)
    b = min(i for i, v in ident.items() if v == y)
    rc, out, _ = cli_inproc("reject", trained_ws, a, b, expect=0)
    step = int(out.split("(step ")[1].split(";")[0])
    rc, _, err = cli_inproc("identities", trained_ws, "--merge", x, y)
    line = one_line(rc, err, "identities")
    assert f"step {step}" in line and f"images {a} and {b}" in line and "--override" in line
    assert _listing(trained_ws)[0] == ident  # refused: nothing cut, nothing merged
    cli_inproc("identities", trained_ws, "--merge", x, y, "--override", "-q", expect=0)
    after, _ = _listing(trained_ws)
    assert {after[i] for i, v in ident.items() if v in (x, y)} == {min(x, y)}  # all of both, one identity
    with Session.open(trained_ws) as s:
        assert s.constraints().decision(a, b) == "must"
    cli_inproc("identities", trained_ws, "--undo", "-q", expect=0)
    with Session.open(trained_ws) as s:
        assert s.constraints().decision(a, b) == "cannot"
    assert _listing(trained_ws)[0] == ident


def test_a_relative_path_names_the_image_in_the_current_folder_first(two_sites, monkeypatch, tmp_path):
    ws, a_root, b_root = two_sites
    with Session.open(ws) as s:
        images = s.images()
        rel = sorted(set(images.relpath))
        by_path = dict(zip(images.path, images.id.tolist()))
    same = next(r for r in rel if (a_root / r).is_file() and (b_root / r).is_file())
    other = next(r for r in rel if r != same and (b_root / r).is_file() and r.split("/")[0] == same.split("/")[0])
    a_img, b_img, b_other = by_path[str(a_root / same)], by_path[str(b_root / same)], by_path[str(b_root / other)]
    monkeypatch.chdir(b_root)  # typed inside site b: site b's image
    cli_inproc("confirm", ws, same, other, "-q", expect=0)
    with Session.open(ws) as s:
        cons = s.constraints()
        assert cons.decision(b_img, b_other) == "must" and cons.decision(a_img, b_other) is None
    monkeypatch.chdir(tmp_path)  # typed elsewhere: both sources hold that relative path
    rc, _, err = cli_inproc("reject", ws, same, str(b_root / other))
    line = one_line(rc, err, "reject")
    assert "ambiguous" in line and str(a_root / same) in line and str(b_root / same) in line
    rc, _, err = cli_inproc("identities", ws, "--split", same)
    assert "ambiguous" in one_line(rc, err, "identities")


def test_images_ingested_after_a_round_join_at_once_and_every_count_agrees(trained_ws, tmp_path):
    from itkm_engine.data.demo import make_demo

    cli_inproc("identities", trained_ws, "-q", expect=0)  # the identities of the round, listed
    more = make_demo(tmp_path / "more", identities=3, seed=7, id_offset=40, images_per_camera=2).root
    cli_inproc("ingest", trained_ws, more, "-q", expect=0)
    with Session.open(trained_ws) as s:
        n_images = len(s.images())
    out = tmp_path / "tracks.csv"
    rc, text, _ = cli_inproc("export-tracks", trained_ws, out, "-q", expect=0)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == n_images  # every image, the new ones too
    new = [r for r in rows if r["image_path"].startswith(str(more))]
    assert new and all(r["provisional"] == "1" for r in new)
    assert all(r["provisional"] == "0" for r in rows if not r["image_path"].startswith(str(more)))
    assert "provisional" in text
    n_csv = len({r["identity_id"] for r in rows})
    rc, listing, _ = cli_inproc("identities", trained_ws, expect=0)
    assert f"\n{n_csv} identities" in "\n" + listing
    rc, status, _ = cli_inproc("status", trained_ws, "--json", expect=0)
    assert json.loads(status)["identities"] == n_csv
    # the review queue: two new images are one identity only where their identities agree
    ident, _ = _listing(trained_ws)
    with Session.open(trained_ws) as s:
        new_ids = {int(i) for i, p in zip(s.images().id, s.images().path) if p.startswith(str(more))}
    rc, review, _ = cli_inproc("identities", trained_ws, "--review", "2000", "--json", expect=0)
    pairs = [p for p in json.loads(review) if p["a"] in new_ids and p["b"] in new_ids]
    assert pairs
    assert all(p["same_identity"] == (ident[p["a"]] == ident[p["b"]]) for p in pairs)
    # a site no round has seen: its images are in no identity, and the export says so and why
    far = make_demo(tmp_path / "far", identities=3, seed=8, id_offset=60, images_per_camera=1).root
    cli_inproc("ingest", trained_ws, far, "--site", "far away", "-q", expect=0)
    rc, text, _ = cli_inproc("export-tracks", trained_ws, out, expect=0)
    n_far = sum(1 for _ in far.rglob("*.jpg"))
    assert f"{n_far} images not written, in no identity yet: ingested at a site no round has trained on" in text
    assert not any(r["image_path"].startswith(str(far)) for r in csv.DictReader(out.open(encoding="utf-8")))
    rc, status, _ = cli_inproc("status", trained_ws, expect=0)
    assert f"{n_far} images in no identity yet" in status


def test_a_split_never_joins_what_it_splits_off(trained_ws):
    ident, _ = _listing(trained_ws)
    with Session.open(trained_ws) as s:
        images = s.images()
        pid = dict(zip(images.id.tolist(), images.person_id.tolist()))
    x = next(v for v in sorted(set(ident.values()))
             if len({pid[i] for i, w in ident.items() if w == v}) > 1 and sum(w == v for w in ident.values()) > 3)
    members = sorted(i for i, v in ident.items() if v == x)
    p = members[0]
    q = next(i for i in members if pid[i] != pid[p])  # two different people, both in #x
    cli_inproc("identities", trained_ws, "--split", p, q, "-q", expect=0)
    after, _ = _listing(trained_ws)
    assert after[p] != after[q] and x not in (after[p], after[q])  # each left #x, on its own
    with Session.open(trained_ws) as s:
        cons = s.constraints()
        assert cons.decision(p, q) is None
        assert not {p, q} <= set(np.unique(cons.must).tolist())  # no must-link chain between them
    cli_inproc("identities", trained_ws, "--undo", "-q", expect=0)
    cli_inproc("identities", trained_ws, "--split", p, q, "--together", "-q", expect=0)
    after, _ = _listing(trained_ws)
    assert after[p] == after[q] != x
    with Session.open(trained_ws) as s:
        assert s.constraints().decision(p, q) == "must"
