"""Workspace: schema, idempotent ingestion writes, rounds/metrics round-trips, migrations, failures."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from itkm_engine import workspace as wsmod
from itkm_engine.errors import (
    ItkmError,
    ReadOnlyWorkspaceError,
    SchemaTooNewError,
    WorkspaceError,
    WorkspaceLockedError,
)
from itkm_engine.progress import Reporter
from itkm_engine.records import ImageRecord, ImageTable
from itkm_engine.workspace import DB_NAME, FOLDERS, Workspace


def recs(camera: str, n: int, start: int = 0, *, size: int = 1000, mtime: float = 100.0) -> list[ImageRecord]:
    return [
        ImageRecord(
            relpath=f"{camera}/{i:05d}.jpg",
            camera=camera,
            width=64,
            height=128,
            timestamp=1_700_000_000.0 + i,
            mtime=mtime,
            size_bytes=size,
            person_id=i % 7,
        )
        for i in range(start, start + n)
    ]


@pytest.fixture
def ws(tmp_path):
    w = Workspace.open(tmp_path / "ws", create=True)
    yield w
    w.close()


@pytest.fixture
def src(ws, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    return ws.add_source(root, "camera-folders")


def add_cam(ws, name, src, scenario="visible-infrared", group="visible"):
    return ws.upsert_camera(
        name, src, scenario=scenario, group=group, guessed_scenario=scenario, guessed_group=group
    )


# -- create / open ---------------------------------------------------------------------------
def test_create_makes_folders_and_reopen_keeps_data(tmp_path):
    path = tmp_path / "ws"
    with Workspace.open(path, create=True) as w:
        assert w.readonly is False
        for name in FOLDERS:
            assert (path / name).is_dir()
        assert w.checkpoints_dir == path / "checkpoints"
        assert w.features_dir == path / "features"
        assert w.rounds_dir == path / "rounds" and w.cache_dir == path / "cache"
        assert w.exports_dir == path / "exports"
        assert (path / "workspace.lock").exists()
        sid = w.add_source(tmp_path, "market")
        w.set_meta("note", "hello")
        assert w.schema_version() == Workspace.SCHEMA_VERSION == 4
        mode = w._conn().execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        assert w._conn().execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert w._conn().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert not (path / "workspace.lock").exists()
    with Workspace.open(path) as w:
        assert [s.id for s in w.sources()] == [sid]
        assert w.sources()[0].root == tmp_path.resolve()
        assert w.sources()[0].layout == "market"
        assert w.get_meta("note") == "hello"
        assert w.get_meta("absent", "dflt") == "dflt"
    # create=True on an existing workspace just opens it
    with Workspace.open(path, create=True) as w:
        assert w.get_meta("note") == "hello"


def test_not_a_workspace(tmp_path):
    with pytest.raises(WorkspaceError, match="not an ITKM workspace"):
        Workspace.open(tmp_path)
    with pytest.raises(WorkspaceError, match="does not exist"):
        Workspace.open(tmp_path / "nope")
    (tmp_path / "photo.jpg").write_bytes(b"x")
    with pytest.raises(WorkspaceError, match="not empty"):
        Workspace.open(tmp_path, create=True)
    assert (tmp_path / "photo.jpg").read_bytes() == b"x"
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / DB_NAME).write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(WorkspaceError, match="damaged|not a database"):
        Workspace.open(tmp_path / "junk")
    assert not (tmp_path / "junk" / "workspace.lock").exists()  # lock released on failure


def test_writer_open_clears_stale_temporaries(tmp_path):
    path = tmp_path / "ws"
    Workspace.open(path, create=True).close()
    stray = path / "checkpoints" / ".tmp-round_0001.pt.abc"
    stray.write_bytes(b"half")
    keep = path / "checkpoints" / "round_0001.pt"
    keep.write_bytes(b"whole")
    logs = []
    with Workspace.open(path, reporter=Reporter(on_log=logs.append)):
        assert not stray.exists() and keep.exists()
    assert any("temporary" in m.text for m in logs)


def test_sources_idempotent(ws, tmp_path):
    a = ws.add_source(tmp_path / "d1", "market")
    b = ws.add_source(tmp_path / "d1", "sysu")
    assert a == b
    assert ws.sources()[0].layout == "sysu"
    c = ws.add_source(tmp_path / "d2", "market")
    assert c != a and len(ws.sources()) == 2
    ws.set_source_root(a, tmp_path / "moved")
    assert ws.sources()[0].root == (tmp_path / "moved").resolve()
    with pytest.raises(ItkmError):
        ws.set_source_root(a, tmp_path / "d2")


# -- cameras ---------------------------------------------------------------------------------
def test_camera_user_set_preserved_over_upsert(ws, src):
    cid = add_cam(ws, "cam3", src, "cross-camera", "all")
    ws.set_camera("cam3", scenario="visible-infrared", group="infrared")
    cid2 = ws.upsert_camera(
        "cam3", src, scenario="cross-camera", group="all",
        guessed_scenario="cross-camera", guessed_group="all", flag="mixed", median_height=120.5,
        sample_path="cam3/00001.jpg",
    )
    assert cid2 == cid
    (cam,) = ws.cameras()
    assert (cam.scenario, cam.group, cam.user_set) == ("visible-infrared", "infrared", True)
    assert (cam.guessed_scenario, cam.guessed_group) == ("cross-camera", "all")
    assert cam.flag == "mixed" and cam.median_height == 120.5 and cam.sample_path == "cam3/00001.jpg"
    assert cam.group_key == "visible-infrared/infrared"
    ws.reset_camera("cam3")
    (cam,) = ws.cameras()
    assert (cam.scenario, cam.group, cam.user_set) == ("cross-camera", "all", False)
    # without user_set, a new guess overwrites
    ws.upsert_camera("cam3", src, scenario="cross-resolution", group="low-res",
                     guessed_scenario="cross-resolution", guessed_group="low-res")
    assert ws.cameras()[0].group_key == "cross-resolution/low-res"


def test_set_camera_validates(ws, src):
    add_cam(ws, "c", src, "visible-infrared", "infrared")
    with pytest.raises(ItkmError, match="not part of scenario"):
        ws.set_camera("c", group="high-res")
    with pytest.raises(ItkmError, match="unknown scenario"):
        ws.set_camera("c", scenario="underwater")
    with pytest.raises(ItkmError, match="no camera"):
        ws.set_camera("zz", scenario="cross-camera")
    ws.set_camera("c", scenario="clothing-change")  # group follows: default of the new scenario
    assert ws.cameras()[0].group_key == "clothing-change/all"
    with pytest.raises(ItkmError):
        add_cam(ws, "d", src, "cross-resolution", "visible")


def test_camera_counts(ws, src):
    add_cam(ws, "a", src)
    add_cam(ws, "b", src, "visible-infrared", "infrared")
    ws.upsert_images(src, recs("a", 10) + recs("b", 4))
    ws.mark_missing(src, {r.relpath for r in recs("a", 7) + recs("b", 4)})
    ids = ws.images(camera="b").id
    ws.set_image_status(ids[:1], "unreadable", "truncated")
    ws.add_rejects(src, [("b/bad.jpg", "not an image", "b"), ("a/00001.jpg", "truncated")])
    cams = {c.name: c for c in ws.cameras()}
    assert (cams["a"].n_images, cams["a"].n_missing, cams["a"].n_unreadable, cams["a"].n_rejected) == (6, 3, 1, 1)
    assert (cams["b"].n_images, cams["b"].n_missing, cams["b"].n_unreadable, cams["b"].n_rejected) == (3, 0, 1, 1)


# -- images ----------------------------------------------------------------------------------
def test_upsert_images_idempotent_and_updates(ws, src):
    add_cam(ws, "cam1", src)
    assert ws.upsert_images(src, recs("cam1", 50)) == (50, 0)
    assert ws.upsert_images(src, recs("cam1", 50)) == (0, 0)
    # 10 changed on disk, 5 new
    changed = recs("cam1", 10, size=2000) + recs("cam1", 40, start=10) + recs("cam1", 5, start=50)
    assert ws.upsert_images(src, changed) == (5, 10)
    assert ws.image_count() == 55
    t = ws.images()
    assert len(t) == 55 and np.all(np.diff(t.id) > 0)
    assert ws.query("SELECT size_bytes FROM images WHERE relpath = 'cam1/00003.jpg'")[0][0] == 2000
    # camera created on the fly for an unknown name
    assert ws.upsert_images(src, recs("newcam", 3)) == (3, 0)
    new = [c for c in ws.cameras() if c.name == "newcam"][0]
    assert new.group_key == "cross-camera/all" and new.n_images == 3 and new.guessed_scenario is None
    with pytest.raises(ItkmError, match="relative"):
        ws.upsert_images(src, [ImageRecord("/abs/x.jpg", "cam1", 1, 1, 0.0, 0.0, 1)])
    with pytest.raises(ItkmError, match="no source"):
        ws.upsert_images(999, recs("cam1", 1))
    assert ws.upsert_images(src, []) == (0, 0)


def test_images_table_columns(ws, src, tmp_path):
    add_cam(ws, "v", src, "visible-infrared", "visible")
    add_cam(ws, "ir", src, "visible-infrared", "infrared")
    ws.upsert_images(src, recs("v", 3) + recs("ir", 2))
    t = ws.images()
    assert isinstance(t, ImageTable) and len(t) == 5
    assert t.id.dtype == np.int64 and t.timestamp.dtype == np.float64 and t.person_id.dtype == np.int64
    assert t.path[0] == str((tmp_path / "data").resolve() / "v" / "00000.jpg")
    assert t.relpath[3] == "ir/00000.jpg"
    assert list(t.camera) == ["v", "v", "v", "ir", "ir"]
    assert list(t.group_key()) == ["visible-infrared/visible"] * 3 + ["visible-infrared/infrared"] * 2
    assert list(t.person_id) == [0, 1, 2, 0, 1]
    assert (t.width == 64).all() and (t.height == 128).all() and (t.status == "ok").all()
    sub = t.subset(t.camera == "ir")
    assert len(sub) == 2 and sub.relpath == ["ir/00000.jpg", "ir/00001.jpg"] and list(sub.id) == list(t.id[3:])
    assert list(t.index_of([t.id[4], 10_000])) == [4, -1]
    only = ws.images(camera="ir")
    assert list(only.id) == list(sub.id)
    assert len(ws.images(camera="nope")) == 0


def test_mark_missing_and_return(ws, src):
    add_cam(ws, "c", src)
    ws.upsert_images(src, recs("c", 10))
    present = {r.relpath for r in recs("c", 6)}
    assert ws.mark_missing(src, present) == 4
    assert ws.mark_missing(src, present) == 0  # already missing
    assert ws.relpaths(src) == {r.relpath for r in recs("c", 10)}  # any status
    assert ws.relpaths(999) == set()
    assert ws.image_count() == 6 and ws.image_count(include_missing=True) == 10
    t = ws.images(include_missing=True)
    assert list(t.status) == ["ok"] * 6 + ["missing"] * 4
    assert len(ws.images()) == 6
    # they come back
    assert ws.upsert_images(src, recs("c", 10)) == (0, 4)
    assert ws.image_count() == 10


def test_unreadable_stays_until_file_changes(ws, src):
    add_cam(ws, "c", src)
    ws.upsert_images(src, recs("c", 3))
    ids = ws.images().id
    ws.set_image_status([int(ids[1])], "unreadable", "decode failed")
    assert ws.upsert_images(src, recs("c", 3)) == (0, 0)
    assert ws.image_count() == 2
    assert ws.upsert_images(src, recs("c", 3, mtime=200.0)) == (0, 3)
    assert ws.image_count() == 3
    with pytest.raises(ItkmError):
        ws.set_image_status(ids, "gone")


def test_rejects_idempotent(ws, src):
    add_cam(ws, "c", src)
    ws.add_rejects(src, [("c/x.txt", "not an image", "c"), ("c/y.jpg", "too small (8x8)", "c")])
    ws.add_rejects(src, [("c/x.txt", "not an image", "c"), ("c/y.jpg", "truncated", "c")])
    rj = ws.rejects()
    assert [(r.relpath, r.reason, r.camera) for r in rj] == [("c/x.txt", "not an image", "c"), ("c/y.jpg", "truncated", "c")]
    assert rj[0].path.endswith(os.path.join("data", "c", "x.txt"))
    assert ws.rejects("c") == rj and ws.rejects("other") == []
    # a rejected file that now ingests fine leaves the list
    ws.upsert_images(src, [ImageRecord("c/y.jpg", "c", 64, 128, 0.0, 1.0, 10)])
    assert [r.relpath for r in ws.rejects()] == ["c/x.txt"]
    # a camera seen only through rejects exists, with zero images
    ws.add_rejects(src, [("d/z.jpg", "empty file", "d")])
    d = [c for c in ws.cameras() if c.name == "d"][0]
    assert (d.n_images, d.n_rejected) == (0, 1)


# -- rounds, epochs, assignments, metrics, identities -----------------------------------------
def test_rounds_and_epochs_roundtrip(ws):
    assert ws.rounds() == [] and ws.latest_checkpoint() is None
    r1 = ws.start_round('{"preset": "tiny"}', None)
    assert r1 == 1
    info = ws.rounds()[0]
    assert (info.status, info.finished, info.config_json, info.base_checkpoint) == ("running", None, '{"preset": "tiny"}', None)
    ws.update_round(r1, stage="homogeneous", epoch=3)
    ws.log_epoch(r1, "homogeneous", 0, {"loss": 1.5, "clusters": np.int64(12)})
    ws.log_epoch(r1, "homogeneous", 1, {"loss": 1.2, "clusters": 14})
    ws.log_epoch(r1, "homogeneous", 0, {"loss": 1.4, "clusters": 12})  # resumed epoch overwrites
    ws.log_epoch(r1, "text", 0, {"loss": float("nan")})
    log = ws.epoch_log(r1)
    assert [(e["stage"], e["epoch"]) for e in log] == [("homogeneous", 0), ("homogeneous", 1), ("text", 0)]
    assert log[0]["values"] == {"loss": 1.4, "clusters": 12} and np.isnan(log[2]["values"]["loss"])
    ckpt = ws.checkpoint_path(r1)
    ckpt.write_bytes(b"weights")
    ws.update_round(r1, status="done", checkpoint=ckpt)
    info = ws.get_round(r1)
    assert info.status == "done" and info.finished is not None and info.checkpoint == str(ckpt)
    stored = ws.query("SELECT checkpoint FROM rounds WHERE number = 1")[0][0]
    assert stored == "checkpoints/round_0001.pt"  # relative inside: the workspace can move
    assert (info.stage, info.epoch) == ("homogeneous", 3)
    assert ws.latest_checkpoint() == ckpt
    r2 = ws.start_round("{}", info.checkpoint)
    assert r2 == 2 and ws.get_round(r2).base_checkpoint == str(ckpt)
    ws.update_round(r2, status="done", checkpoint=ws.checkpoint_path(r2))  # file never written
    assert ws.latest_checkpoint() == ckpt
    ws.update_round(r2, status="failed")
    assert ws.get_round(r2).status == "failed"
    assert len(ws.epoch_log()) == 3 and ws.epoch_log(r2) == []
    with pytest.raises(TypeError):
        ws.update_round(r1, colour="red")
    with pytest.raises(ItkmError):
        ws.update_round(r1, status="exploded")
    with pytest.raises(ItkmError):
        ws.update_round(99, stage="x")
    with pytest.raises(ItkmError):
        ws.start_round("{not json", None)


def test_assignments_metrics_identities_roundtrip(ws, src):
    add_cam(ws, "c", src)
    ws.upsert_images(src, recs("c", 20))
    ids = ws.images().id
    r = ws.start_round("{}", None)
    labels = np.arange(20) % 4 - 1
    ws.save_assignments(r, ids[::-1], labels[::-1])
    got_ids, got_labels = ws.assignments(r)
    assert np.array_equal(got_ids, ids) and np.array_equal(got_labels, labels)
    ws.save_assignments(r, ids[:5], np.zeros(5))  # replaces
    assert len(ws.assignments(r)[0]) == 5
    assert len(ws.assignments(99)[0]) == 0
    with pytest.raises(WorkspaceError):  # unknown image id breaks a reference
        ws.save_assignments(r, [123456], [0])
    assert len(ws.assignments(r)[0]) == 5  # rolled back, previous kept

    m1 = ws.save_metrics("rank/visible-infrared", r, "checkpoints/round_0001.pt", {"rank1": 0.5, "mAP": np.float32(0.25)})
    ws.save_metrics("pseudo", r, None, {"ari": 0.1})
    ms = ws.metrics("rank/visible-infrared")
    assert len(ms) == 1 and ms[0]["id"] == m1 and ms[0]["values"] == {"rank1": 0.5, "mAP": 0.25}
    assert ms[0]["round"] == r and ms[0]["checkpoint"] == "checkpoints/round_0001.pt"
    assert [m["key"] for m in ws.metrics()] == ["rank/visible-infrared", "pseudo"]

    assert len(ws.identities()) == 0 and ws.identities().checkpoint is None
    ws.save_identities("ck_a", ids, np.arange(20) // 2, np.linspace(0, 1, 20))
    ws.save_identities("ck_b", ids[:3], [7, 7, 8], [0.9, 0.8, 0.7])
    latest = ws.identities()
    assert latest.checkpoint == "ck_b" and list(latest.identity) == [7, 7, 8]
    a = ws.identities("ck_a")
    assert np.array_equal(a.image_id, ids) and np.array_equal(a.identity, np.arange(20) // 2)
    assert a.confidence.dtype == np.float32 and abs(a.confidence[-1] - 1.0) < 1e-6
    ws.save_identities("ck_a", ids[:2], [1, 1], [0.5, 0.5])
    assert len(ws.identities("ck_a")) == 2


# -- read-only -------------------------------------------------------------------------------
def test_readonly_reads_while_writer_holds_and_refuses_writes(tmp_path):
    path = tmp_path / "ws"
    with Workspace.open(path, create=True) as w:
        sid = w.add_source(tmp_path, "market")
        w.upsert_images(sid, recs("c", 5))
        with Workspace.open(path, readonly=True) as ro:
            assert ro.readonly and len(ro.images()) == 5 and ro.cameras()[0].n_images == 5
            assert ro.writer_info().pid == os.getpid()
            w.upsert_images(sid, recs("c", 3, start=5))  # writer keeps writing, reader sees it next read
            assert ro.image_count() == 8
            with pytest.raises(ReadOnlyWorkspaceError):
                ro.set_meta("x", 1)
            with pytest.raises(ReadOnlyWorkspaceError):
                ro.upsert_images(sid, recs("c", 1))
            with pytest.raises(ReadOnlyWorkspaceError):
                with ro.transaction():
                    pass
        with pytest.raises(WorkspaceError):
            Workspace.open(path, readonly=True, create=True)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_unwritable_folder_suggests_readonly(tmp_path):
    path = tmp_path / "ws"
    Workspace.open(path, create=True).close()
    os.chmod(path, 0o555)
    try:
        with pytest.raises(WorkspaceError, match="read-only"):
            Workspace.open(path)
        with Workspace.open(path, readonly=True) as ro:
            assert ro.image_count() == 0
    finally:
        os.chmod(path, 0o755)


def test_threads_share_one_connection(ws, src):
    add_cam(ws, "c", src)
    errors = []

    def work(k):
        try:
            for j in range(5):
                ws.upsert_images(src, recs(f"c", 10, start=k * 100 + j * 10))
                ws.images()
                ws.cameras()
        except Exception as exc:  # noqa: BLE001 - collected for the assert
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and ws.image_count() == 200


def test_nested_transaction_is_a_savepoint(ws):
    with ws.transaction() as con:
        con.execute("INSERT INTO meta (key, value) VALUES ('outer', '1')")
        with pytest.raises(RuntimeError):
            with ws.transaction() as con2:
                con2.execute("INSERT INTO meta (key, value) VALUES ('inner', '1')")
                raise RuntimeError("boom")
    assert ws.get_meta("outer") == "1" and ws.get_meta("inner") is None


# -- migrations ------------------------------------------------------------------------------
def test_migration_from_old_version_backs_up_then_migrates(tmp_path, monkeypatch):
    path = tmp_path / "ws"
    Workspace.open(path, create=True).close()
    # Hand-make a "version 0" database: cameras without sample_path, schema_version 0.
    con = sqlite3.connect(path / DB_NAME)
    con.execute("ALTER TABLE cameras DROP COLUMN sample_path")
    con.execute("INSERT INTO sources (root, layout, added_at) VALUES ('/data', 'market', 0)")
    con.execute(
        "INSERT INTO cameras (name, source_id, scenario, grp, user_set, added_at) VALUES ('old', 1, 'cross-camera', 'all', 1, 0)"
    )
    con.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    con.commit()
    con.close()

    def v0_to_v1(c: sqlite3.Connection) -> None:
        c.execute("ALTER TABLE cameras ADD COLUMN sample_path TEXT")

    monkeypatch.setitem(wsmod.MIGRATIONS, 0, v0_to_v1)
    logs = []
    with Workspace.open(path, reporter=Reporter(on_log=logs.append)) as w:
        assert w.schema_version() == Workspace.SCHEMA_VERSION
        (cam,) = w.cameras()
        assert cam.name == "old" and cam.user_set and cam.sample_path is None
    backup = path / f"{DB_NAME}.bak-v0"
    assert backup.is_file()
    b = sqlite3.connect(backup)
    assert b.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "0"
    cols = [r[1] for r in b.execute("PRAGMA table_info(cameras)")]
    assert "sample_path" not in cols and b.execute("SELECT name FROM cameras").fetchall() == [("old",)]
    b.close()
    assert any("upgrading" in m.text for m in logs)


def test_old_version_without_migration_or_readonly_refused(tmp_path):
    path = tmp_path / "ws"
    Workspace.open(path, create=True).close()
    con = sqlite3.connect(path / DB_NAME)
    con.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(WorkspaceError, match="cannot upgrade"):
        Workspace.open(path, readonly=True)  # a reader upgrades first, and there is no 0 -> 1 step
    with pytest.raises(WorkspaceError, match="cannot upgrade"):
        Workspace.open(path)  # MIGRATIONS has no 0 -> 1 in this code
    assert not (path / "workspace.lock").exists()


def test_newer_schema_refused(tmp_path):
    path = tmp_path / "ws"
    Workspace.open(path, create=True).close()
    con = sqlite3.connect(path / DB_NAME)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(Workspace.SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    for ro in (False, True):
        with pytest.raises(SchemaTooNewError, match="newer ITKM Studio"):
            Workspace.open(path, readonly=ro)
    assert not (path / "workspace.lock").exists()
    assert not list(path.glob("*.bak-*"))


# -- disk full -------------------------------------------------------------------------------
def test_disk_full_rolls_back_whole_batch(ws, src):
    add_cam(ws, "c", src)
    ws.upsert_images(src, recs("c", 100))
    con = ws._conn()
    (pages,) = con.execute("PRAGMA page_count").fetchone()
    con.execute(f"PRAGMA max_page_count = {pages + 2}")  # the db is "full" a few pages from now
    big = [ImageRecord(f"c/{'x' * 200}_{i}.jpg", "c", 1, 1, 0.0, 0.0, 1) for i in range(5000)]
    with pytest.raises(WorkspaceError, match="disk full"):
        ws.upsert_images(src, big)
    con.execute("PRAGMA max_page_count = 1073741823")
    assert ws.image_count() == 100  # previous rows intact, nothing of the batch
    assert not con.in_transaction
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert ws.upsert_images(src, big[:10]) == (10, 0)  # and it works again


def test_locked_error_is_a_workspace_error():
    assert issubclass(WorkspaceLockedError, WorkspaceError)


def test_unwritable_folder_message_even_as_root(tmp_path, monkeypatch):
    path = tmp_path / "ws"
    Workspace.open(path, create=True).close()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == path and mode == os.W_OK else real_access(p, mode))
    with pytest.raises(WorkspaceError, match="readonly=True"):
        Workspace.open(path)
    assert not (path / "workspace.lock").exists()


def test_moved_workspace_keeps_checkpoints(tmp_path):
    path = tmp_path / "ws"
    with Workspace.open(path, create=True) as w:
        r = w.start_round("{}", None)
        w.checkpoint_path(r).write_bytes(b"w")
        w.update_round(r, status="done", checkpoint=w.checkpoint_path(r))
    moved = tmp_path / "elsewhere"
    path.rename(moved)
    with Workspace.open(moved, readonly=True) as w:
        assert w.latest_checkpoint() == moved / "checkpoints" / "round_0001.pt"
        assert w.rounds()[0].checkpoint == str(moved / "checkpoints" / "round_0001.pt")


def test_nan_timestamp_and_closed_workspace(ws, src):
    ws.upsert_images(src, [ImageRecord("c/a.jpg", "c", 10, 20, float("nan"), 1.0, 5)])
    assert np.isnan(ws.images().timestamp[0])
    ws.close()
    ws.close()  # idempotent
    with pytest.raises(WorkspaceError, match="closed"):
        ws.images()


def test_images_chunked_odd_paths_and_statuses(ws, src, monkeypatch):
    monkeypatch.setattr(wsmod.catalog, "_IMAGE_CHUNK", 3)  # force several aggregated chunks
    odd = ["c/a,b.jpg", "c/new\nline.jpg", "c/ünï cödé 人.png", "c/x'y\"z.jpg", "c/semi;colon.bmp", "c/plain.jpg", "c/t.jpg"]
    records = [
        ImageRecord(rel, "c", 10 + i, 20 + i, float("nan") if i % 3 == 0 else 1_700_000_000.123456 + i, 1.0, 5, i - 1)
        for i, rel in enumerate(odd)
    ]
    assert ws.upsert_images(src, records) == (7, 0)
    ids = ws.images().id
    ws.set_image_status(ids[1:2], "unreadable", "x")
    ws.mark_missing(src, set(odd) - {"c/semi;colon.bmp"})
    t = ws.images(include_missing=True)
    assert t.relpath == odd and len(t) == 7 and list(t.id) == list(ids)
    assert list(t.status) == ["ok", "unreadable", "ok", "ok", "missing", "ok", "ok"]
    assert list(t.width) == [10, 11, 12, 13, 14, 15, 16] and list(t.person_id) == list(range(-1, 6))
    ts = t.timestamp
    assert np.isnan(ts[[0, 3, 6]]).all()
    assert np.allclose(ts[[1, 2, 4, 5]], [1_700_000_000.123456 + i for i in (1, 2, 4, 5)], rtol=0, atol=1e-6)
    ok = ws.images()
    assert ok.relpath == [odd[i] for i in (0, 2, 3, 5, 6)]
    with pytest.raises(ItkmError, match="NUL"):
        ws.upsert_images(src, [ImageRecord("c/a\0b.jpg", "c", 1, 1, 0.0, 0.0, 1)])


def test_group_key_without_camera_ids():
    obj = lambda *v: np.array(v, dtype=object)  # noqa: E731
    t = ImageTable(
        id=np.array([1, 2, 3]), path=["a", "b", "c"], relpath=["a", "b", "c"], camera=obj("x", "y", "x"),
        scenario=obj("visible-infrared", "cross-camera", "visible-infrared"), group=obj("infrared", "all", "infrared"),
        width=np.ones(3, np.int32), height=np.ones(3, np.int32), timestamp=np.zeros(3), person_id=np.zeros(3, np.int64),
        status=obj("ok", "ok", "ok"),
    )
    assert list(t.group_key()) == ["visible-infrared/infrared", "cross-camera/all", "visible-infrared/infrared"]
    assert list(t.subset([2, 0]).camera) == ["x", "x"] and len(t.subset(slice(0, 2))) == 2
    with pytest.raises(ValueError):
        ImageTable(id=np.array([1]), path=[], relpath=["a"], camera=obj("x"), scenario=obj("s"), group=obj("g"),
                   width=np.ones(1), height=np.ones(1), timestamp=np.zeros(1), person_id=np.zeros(1), status=obj("ok"))


def test_create_that_crashed_before_first_commit_is_redone(tmp_path):
    path = tmp_path / "ws"
    path.mkdir()
    con = sqlite3.connect(path / DB_NAME)
    con.execute("PRAGMA journal_mode=WAL")  # header written, no tables: a create killed early
    con.close()
    with Workspace.open(path) as w:
        assert w.schema_version() == Workspace.SCHEMA_VERSION and w.image_count() == 0


def test_version_1_gains_a_site_per_source(tmp_path):
    """Schema 1 -> 2: every existing source gets the default site; add_source(site=...) and
    set_source_site change it; re-adding a source without a site keeps the one it has."""
    path = tmp_path / "ws"
    Workspace.open(path, create=True).close()
    con = sqlite3.connect(path / DB_NAME)
    con.execute("ALTER TABLE sources DROP COLUMN site")
    con.execute("INSERT INTO sources (root, layout, added_at) VALUES ('/data', 'market', 0)")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with Workspace.open(path) as w:
        assert w.schema_version() == Workspace.SCHEMA_VERSION
        (src,) = w.sources()
        assert src.site == "default"
        w.set_source_site(src.id, "north gate")
        sid = w.add_source("/data", "market")
        assert sid == src.id and w.sources()[0].site == "north gate"
        other = w.add_source(tmp_path / "b", "camera-folders", site="depot")
        assert {s.id: s.site for s in w.sources()} == {src.id: "north gate", other: "depot"}
        with pytest.raises(ItkmError):
            w.set_source_site(other, "  ")
    assert (path / f"{DB_NAME}.bak-v1").is_file()


def test_a_reader_upgrades_an_older_workspace_once_then_reads(tmp_path):
    """itkm status / query / export of a workspace an older version wrote: upgraded (with a
    backup) by a short writer open, then read; with a live writer elsewhere it says why not."""
    path = tmp_path / "ws"
    Workspace.open(path, create=True).close()
    con = sqlite3.connect(path / DB_NAME)
    con.execute("ALTER TABLE sources DROP COLUMN site")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with Workspace.open(path, readonly=True) as w:
        assert w.readonly and w.schema_version() == Workspace.SCHEMA_VERSION
    assert (path / f"{DB_NAME}.bak-v1").is_file()
    assert not (path / "workspace.lock").exists()
