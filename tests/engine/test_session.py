"""The Session facade: queries, identities, evaluation and exports on a trained demo workspace."""

from __future__ import annotations

import csv
import datetime as dt

import numpy as np
import pytest

from itkm_engine.errors import ItkmError
from itkm_engine.export import TRACK_COLUMNS, escape_cell, export_features, export_tracks
from itkm_engine.session import QueryFilter, Session


@pytest.fixture(scope="module")
def session(trained_ws_template):
    s = Session.open(trained_ws_template, readonly=True, device="cpu")
    yield s
    s.close()


def test_features_cover_every_image_and_are_normalised(session):
    fs = session.features()
    images = session.images()
    assert sorted(fs.ids.tolist()) == sorted(images.id.tolist())
    np.testing.assert_allclose(np.linalg.norm(fs.feats, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(fs.proj, axis=1), 1.0, atol=1e-3)
    assert not session.checkpoint_key().startswith("init-")  # the trained checkpoint, not round 0


def test_query_image_ranks_by_similarity_and_excludes_itself(session):
    fs = session.ranking()  # the features ranking uses (camera-centred: inference.camera_centre)
    q = int(fs.ids[0])
    matches = session.query_image(q, k=10)
    assert len(matches) == 10
    assert q not in [m.image_id for m in matches]
    sims = [m.similarity for m in matches]
    assert sims == sorted(sims, reverse=True)
    # Similarities are the cosine of the ranking's features.
    row = {int(i): r for r, i in enumerate(fs.ids)}
    for m in matches[:3]:
        assert m.similarity == pytest.approx(float(fs.feats[row[q]] @ fs.feats[row[m.image_id]]), abs=1e-4)


def test_query_filters(session):
    images = session.images()
    q = int(images.id[np.flatnonzero(images.group == "infrared")[0]])
    only_visible = session.query_image(q, k=20, filters=QueryFilter(groups=frozenset({"visible"})))
    assert only_visible and all(m.group == "visible" for m in only_visible)
    other = session.query_image(q, k=20, filters=QueryFilter(exclude_same_camera=True))
    q_camera = images.camera[np.flatnonzero(images.id == q)[0]]
    assert other and all(m.camera != q_camera for m in other)
    cams = session.query_image(q, k=50, filters=QueryFilter(cameras=frozenset({"cc-a"})))
    assert cams and {m.camera for m in cams} == {"cc-a"}


def test_query_file_finds_the_same_image_first(session):
    images = session.images()
    path = images.path[5]
    matches = session.query_file(path, k=3)
    assert matches[0].image_id == int(images.id[5])
    assert matches[0].similarity == pytest.approx(1.0, abs=1e-3)


def test_query_file_refuses_a_non_image(session, tmp_path):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_text("hello")
    with pytest.raises(ItkmError):
        session.query_file(bad, k=3)


def test_query_text_ranks_through_the_text_tower(session, monkeypatch):
    from itkm_engine.text_search import TextSearchUnavailable

    # this model's text tower is random: text search is refused with the reason (issue 18)
    with pytest.raises(TextSearchUnavailable, match="Text search is off"):
        session.query_text("a person in a red jacket", k=7)
    # with a pretrained one (here: said to be) it ranks through the text tower
    monkeypatch.setattr(session, "text_search_unavailable", lambda: None)
    monkeypatch.setattr(session.model(), "text_pretrained", True)
    matches = session.query_text("a person in a red jacket", k=7)
    assert len(matches) == 7
    sims = [m.similarity for m in matches]
    assert sims == sorted(sims, reverse=True) and all(-1.0 <= s <= 1.0 for s in sims)
    # A different description ranks differently.
    other = session.query_text("a person with a black backpack", k=7)
    assert [m.image_id for m in other] != [m.image_id for m in matches] or sims != [m.similarity for m in other]
    with pytest.raises(ItkmError, match="description"):
        session.query_text("   ")


def test_identities_cover_every_image(session):
    table = session.identities()
    images = session.images()
    assert sorted(table.image_id.tolist()) == sorted(images.id.tolist())
    assert ((table.confidence >= -1e-6) & (table.confidence <= 1 + 1e-6)).all()
    summary = session.identity_summary()
    assert sum(s.size for s in summary) == len(images)
    assert [s.size for s in summary] == sorted((s.size for s in summary), reverse=True)
    for s in summary[:3]:
        assert s.t_first <= s.t_last and s.cameras


def test_evaluate_reports_overall_scenarios_and_directions(session):
    result = session.evaluate()
    head = result["headline"]
    assert (head["protocol"], head["split"]) == ("cross-camera", "overall")
    assert set(result["protocols"]) == {"cross-camera", "standard"}  # the demo is not a sysu layout
    for protocol in ("cross-camera", "standard"):
        scores = result["protocols"][protocol]
        assert "overall" in scores
        assert "visible-infrared: infrared -> visible" in scores
        assert "cross-resolution: low-res -> high-res" in scores
        for s in scores.values():
            assert 0.0 <= s["mAP"] <= 1.0 and 0.0 <= s["rank1"] <= s["rank5"] <= s["rank10"] <= 1.0
    assert {k: head[k] for k in result["protocols"]["cross-camera"]["overall"]} == \
        result["protocols"]["cross-camera"]["overall"]


def test_export_tracks_rows_grouped_by_identity_ordered_by_time(session, tmp_path):
    out = tmp_path / "tracks.csv"
    n = export_tracks(session, out)
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == TRACK_COLUMNS
    body = rows[1:]
    assert len(body) == n == len(session.images())
    ids = [int(r[0]) for r in body]
    # grouped: each identity appears in one contiguous block
    seen, last = set(), None
    for i in ids:
        if i != last:
            assert i not in seen
            seen.add(i)
            last = i
    # ordered by time inside a block; ISO 8601 for file times, seconds for frame-number times
    col = {c: k for k, c in enumerate(TRACK_COLUMNS)}

    def when(r):
        t = r[col["timestamp"]]
        return float(t) if r[col["time_source"]] == "frame_number" else dt.datetime.fromisoformat(t).timestamp()

    for i in seen:
        ts = [when(r) for r in body if int(r[0]) == i]
        assert ts == sorted(ts)
    assert all(0.0 <= float(r[col["confidence"]]) <= 1.0001 for r in body)


def test_export_features_npz(session, tmp_path):
    out = tmp_path / "f.npz"
    n = export_features(session, out)
    with np.load(out) as z:
        assert z["features"].shape[0] == n == len(session.images())
        for key in ("image_id", "path", "camera", "scenario", "group", "person_id", "identity_id"):
            assert len(z[key]) == n
        assert (z["person_id"] >= 0).all()  # the demo names carry person ids
        assert (z["identity_id"] >= 0).all()


@pytest.mark.parametrize(
    "value, expected",
    [("=SUM(A1)", "'=SUM(A1)"), ("+1", "'+1"), ("-1", "'-1"), ("@x", "'@x"), ("\tx", "'\tx"), ("\rx", "'\rx"),
     ("cam,1", "cam,1"), ("", ""), (None, "")],
)
def test_escape_cell(value, expected):
    assert escape_cell(value) == expected


def test_readonly_session_reuses_the_feature_cache_and_writes_nothing(trained_ws_template):
    """`itkm query` opens the workspace read-only: it must not re-embed the gallery each time."""
    import os

    before = {p: p.stat().st_mtime_ns for p in trained_ws_template.rglob("*") if p.is_file()}
    logs = []
    from itkm_engine.progress import Reporter

    with Session.open(trained_ws_template, readonly=True, device="cpu") as s:
        fs = s.features(reporter=Reporter(on_log=logs.append))
        assert len(fs) == len(s.images())
    assert not [m for m in logs if m.text.startswith("embedding")]  # everything came from the cache
    after = {p: p.stat().st_mtime_ns for p in trained_ws_template.rglob("*") if p.is_file()}
    changed = [str(p) for p in after if before.get(p) != after[p] and not os.fspath(p).endswith(("-wal", "-shm"))]
    assert not changed


def test_a_complete_feature_cache_is_read_without_building_the_model(trained_ws):
    """The app asks for the model's key and cached features in its own process, beside the
    window: neither may build the model (a second of work holding the interpreter lock)."""
    import shutil

    ws = trained_ws
    with Session.open(ws, device="cpu") as first:
        shutil.rmtree(first.ws.features_dir, ignore_errors=True)  # training left it filled
        built = first.features()
        key = first.checkpoint_key()
        assert first._model is not None  # the cache was empty: the model embedded the images
    with Session.open(ws, device="cpu") as again:
        assert again.checkpoint_key() == key
        fs = again.features()
        assert again._model is None
        np.testing.assert_array_equal(fs.ids, built.ids)
        np.testing.assert_allclose(fs.feats, built.feats, atol=2e-3)  # the cache holds float16
        assert fs.key == key
