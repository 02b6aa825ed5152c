"""Every folder layout is detected and scanned right: cameras, person ids, timestamps, scenarios."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from itkm_engine.data.imageio import text_to_relpath
from itkm_engine.data.layouts import (
    LAYOUTS,
    NAME_EPOCH,
    FoundImage,
    Layout,
    detect_layout,
    get_layout,
    parse_name,
)
from itkm_engine.data.walk import Rejected
from itkm_engine.errors import LayoutError

from helpers.images import jpeg_bytes

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


JPEG = jpeg_bytes(16, 32, (90, 120, 30))


def _put(root: Path, *relpaths: str) -> None:
    for rel in relpaths:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(JPEG)


def _scan(root: Path, layout: str | None = None) -> tuple[list[FoundImage], list[Rejected]]:
    name = layout or detect_layout(root)
    items = list(LAYOUTS[name].scan(root))
    found = [i for i in items if isinstance(i, FoundImage)]
    rejected = [i for i in items if isinstance(i, Rejected)]
    return found, rejected


def _by_rel(found):
    return {f.relpath: f for f in found}


def test_every_layout_satisfies_the_protocol():
    for name, layout in LAYOUTS.items():
        assert isinstance(layout, Layout) and layout.name == name and layout.description


# -- name conventions -------------------------------------------------------------------------


def test_parse_names():
    m = parse_name("0002_c1s3_000451_03.jpg")
    assert (m.person_id, m.camera, m.convention) == (2, "c1", "market")
    assert m.timestamp == pytest.approx(NAME_EPOCH + 2 * 86400 + 451 / 25)
    assert parse_name("-1_c3s1_000100_00.jpg").person_id == -1
    assert parse_name("0000_c3s1_000100_00.jpg").person_id == 0
    d = parse_name("0001_c2_f0046182.jpg")
    assert (d.person_id, d.camera, d.convention) == (1, "c2", "duke")
    assert d.timestamp == pytest.approx(NAME_EPOCH + 46182 / 60)
    s = parse_name("0012_005_07_0303morning_0015_0.jpg")
    assert (s.person_id, s.camera, s.convention) == (12, "c7", "msmt")
    assert s.timestamp > NAME_EPOCH
    assert parse_name("0012_005_07_whatever.jpg").timestamp is None
    lt = parse_name("001_1_c11_015880.png")
    assert (lt.person_id, lt.camera, lt.clothes, lt.convention) == (1, "c11", 1, "ltcc")
    assert parse_name("holiday.jpg") is None


# -- layouts ----------------------------------------------------------------------------------


def test_scenario_folders(tmp_path):
    _put(
        tmp_path,
        "visible-infrared/vis-a/0001_c1s1_000012_00.jpg",
        "visible-infrared/ir-a/0001_c3s1_000030_00.jpg",
        "cross-resolution/lr-a/0002_c5s1_000050_00.jpg",
        "cross-resolution/lr-a/sub/nameless.png",
        "clothing-change/cam1/0003_c6s1_000001_00.jpg",
        "cross-camera/cam1/0004_c7s1_000001_00.jpg",
    )
    (tmp_path / "demo_manifest.json").write_text("{}")  # a non-image file at the root is ignored
    assert detect_layout(tmp_path) == "scenario-folders"
    found, rejected = _scan(tmp_path)
    assert rejected == []
    by = _by_rel(found)
    f = by["visible-infrared/vis-a/0001_c1s1_000012_00.jpg"]
    assert (f.camera, f.person_id, f.scenario, f.group) == ("vis-a", 1, "visible-infrared", None)
    assert f.timestamp == pytest.approx(NAME_EPOCH + 12 / 25)
    assert by["cross-resolution/lr-a/sub/nameless.png"].person_id == -1
    assert by["cross-resolution/lr-a/sub/nameless.png"].timestamp is None
    # the same camera folder name in two scenarios names two cameras
    assert by["clothing-change/cam1/0003_c6s1_000001_00.jpg"].camera == "cam1 (clothing-change)"
    assert by["cross-camera/cam1/0004_c7s1_000001_00.jpg"].camera == "cam1 (cross-camera)"


def test_scenario_folders_rejects_strays_when_forced(tmp_path):
    _put(tmp_path, "visible-infrared/a/1.jpg", "visible-infrared/loose.jpg", "notascenario/cam/2.jpg", "top.jpg")
    assert detect_layout(tmp_path) != "scenario-folders"  # a non-scenario folder: not this layout
    found, rejected = _scan(tmp_path, "scenario-folders")
    assert [f.relpath for f in found] == ["visible-infrared/a/1.jpg"]
    reasons = {r.relpath: r.reason for r in rejected}
    assert "not a scenario folder" in reasons["notascenario"]
    assert "camera folder" in reasons["visible-infrared/loose.jpg"]
    assert "top.jpg" in reasons


def test_sysu(tmp_path):
    for cam in range(1, 7):
        _put(tmp_path, f"cam{cam}/0001/0001.jpg", f"cam{cam}/0002/0005.jpg")
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "train_id.txt").write_text("1,2")
    assert detect_layout(tmp_path) == "sysu"
    found, rejected = _scan(tmp_path)
    assert rejected == []
    assert len(found) == 12
    by = _by_rel(found)
    assert (by["cam3/0002/0005.jpg"].camera, by["cam3/0002/0005.jpg"].person_id) == ("cam3", 2)
    assert by["cam3/0002/0005.jpg"].group == "infrared" and by["cam6/0001/0001.jpg"].group == "infrared"
    assert by["cam1/0001/0001.jpg"].group == "visible"
    assert {f.scenario for f in found} == {"visible-infrared"}
    assert all(f.timestamp is None for f in found)  # no frame in the name: mtime at ingest


def test_regdb(tmp_path):
    _put(tmp_path, "Visible/1/female_front_v_00001_1.bmp", "Thermal/1/female_front_t_00001_1.bmp",
         "Thermal/2/male_back_t_00002_1.bmp")
    (tmp_path / "idx").mkdir()
    assert detect_layout(tmp_path) == "regdb"
    found, rejected = _scan(tmp_path)
    assert rejected == []
    by = _by_rel(found)
    v = by["Visible/1/female_front_v_00001_1.bmp"]
    t = by["Thermal/2/male_back_t_00002_1.bmp"]
    assert (v.camera, v.group, v.person_id) == ("visible", "visible", 1)
    assert (t.camera, t.group, t.person_id, t.scenario) == ("thermal", "infrared", 2, "visible-infrared")


def test_prcc(tmp_path):
    _put(tmp_path, "A/001/cropped_rgb001.jpg", "B/001/cropped_rgb010.jpg", "C/002/cropped_rgb020.jpg")
    assert detect_layout(tmp_path) == "prcc"
    found, _ = _scan(tmp_path)
    assert sorted((f.camera, f.person_id) for f in found) == [("A", 1), ("B", 1), ("C", 2)]
    assert {f.scenario for f in found} == {"clothing-change"}


def test_ltcc(tmp_path):
    _put(tmp_path, "train/001_1_c11_015880.png", "train/001_2_c3_000100.png", "query/002_1_c5_000010.png",
         "test/002_3_c7_000020.png", "test/003_1_c1_000030.png", "test/readme.jpg")
    assert detect_layout(tmp_path) == "ltcc"
    found, rejected = _scan(tmp_path)
    by = _by_rel(found)
    f = by["train/001_1_c11_015880.png"]
    assert (f.camera, f.person_id, f.scenario) == ("c11", 1, "clothing-change")
    assert f.timestamp == pytest.approx(NAME_EPOCH + 15880 / 25)
    assert [r.relpath for r in rejected] == ["test/readme.jpg"]


def test_market_flat_and_split_folders(tmp_path):
    flat = tmp_path / "flat"
    _put(flat, "0002_c1s1_000451_03.jpg", "-1_c2s1_000100_00.jpg", "0000_c3s2_000002_01.jpg")
    assert detect_layout(flat) == "market"
    found, _ = _scan(flat)
    assert sorted((f.camera, f.person_id) for f in found) == [("c1", 2), ("c2", -1), ("c3", 0)]

    split = tmp_path / "Market-1501"
    _put(split, "bounding_box_train/0002_c1s1_000451_03.jpg", "query/0003_c4s1_000001_00.jpg",
         "bounding_box_test/0003_c2s1_000002_00.jpg", "bounding_box_test/Thumbs_junk.jpg")
    (split / "gt_query").mkdir()
    assert detect_layout(split) == "market"
    found, rejected = _scan(split)
    assert len(found) == 3
    assert [r.relpath for r in rejected] == ["bounding_box_test/Thumbs_junk.jpg"]
    assert "Market" in rejected[0].reason


def test_duke_and_msmt_names(tmp_path):
    duke = tmp_path / "duke"
    _put(duke, "bounding_box_train/0001_c2_f0046182.jpg", "query/0005_c8_f0000001.jpg")
    assert detect_layout(duke) == "market"
    assert sorted((f.camera, f.person_id) for f in _scan(duke)[0]) == [("c2", 1), ("c8", 5)]
    msmt = tmp_path / "msmt"
    _put(msmt, "train/0000/0000_000_01_0303morning_0015_0.jpg", "train/0001/0001_003_15_0303noon_0100_1.jpg")
    assert detect_layout(msmt) == "market"
    assert sorted((f.camera, f.person_id) for f in _scan(msmt)[0]) == [("c1", 0), ("c15", 1)]


def test_identity_folders(tmp_path):
    market_named = tmp_path / "ids1"
    _put(market_named, "0001/0001_c1s1_000001_00.jpg", "0001/0001_c2s1_000009_00.jpg", "0002/0002_c1s1_000005_00.jpg")
    assert detect_layout(market_named) == "identity-folders"
    found, _ = _scan(market_named)
    assert sorted((f.person_id, f.camera) for f in found) == [(1, "c1"), (1, "c2"), (2, "c1")]

    plain = tmp_path / "gate_cam"
    _put(plain, "7/a.jpg", "7/b.jpg", "12/c.png")
    assert detect_layout(plain) == "identity-folders"
    found, _ = _scan(plain)
    assert {f.camera for f in found} == {"gate_cam"}  # one camera per root
    assert sorted(f.person_id for f in found) == [7, 7, 12]

    prcc_train = tmp_path / "prcc_train"
    _put(prcc_train, "001/A_cropped_rgb001.jpg", "001/C_cropped_rgb050.jpg")
    found, _ = _scan(prcc_train)
    assert sorted(f.camera for f in found) == ["A", "C"]
    assert {f.scenario for f in found} == {"clothing-change"}


def test_camera_folders(tmp_path):
    _put(tmp_path, "gate/p1.jpg", "gate/p2.JPEG", "lobby/0003_c2s1_000100_00.jpg", "lobby/7/x.webp",
         "lobby/deep/er/y.bmp")
    (tmp_path / "lobby" / "notes.txt").write_text("not an image")
    (tmp_path / "lobby" / "anim.gif").write_bytes(b"GIF89a")
    _put(tmp_path, "stray.jpg")
    assert detect_layout(tmp_path) == "camera-folders"
    found, rejected = _scan(tmp_path)
    by = _by_rel(found)
    assert set(by) == {"gate/p1.jpg", "gate/p2.JPEG", "lobby/0003_c2s1_000100_00.jpg", "lobby/7/x.webp",
                       "lobby/deep/er/y.bmp"}
    assert by["gate/p1.jpg"].camera == "gate" and by["gate/p1.jpg"].person_id == -1
    lob = by["lobby/0003_c2s1_000100_00.jpg"]
    assert (lob.camera, lob.person_id) == ("lobby", 3)  # camera from the folder, pid from the name
    assert lob.timestamp == pytest.approx(NAME_EPOCH + 100 / 25)
    assert by["lobby/7/x.webp"].person_id == 7  # numeric sub-folder = person id
    reasons = {r.relpath: r.reason for r in rejected}
    assert "unsupported file type .gif" in reasons["lobby/anim.gif"]
    assert "camera folder" in reasons["stray.jpg"]
    assert "lobby/notes.txt" not in reasons


def test_scan_order_is_deterministic(tmp_path):
    _put(tmp_path, *(f"cam{c}/{i:03d}.jpg" for c in (2, 1) for i in (5, 3, 9, 1)))
    found, _ = _scan(tmp_path)
    assert [f.relpath for f in found] == sorted(f.relpath for f in found)
    assert [f.relpath for f in found] == [f.relpath for f in _scan(tmp_path)[0]]


# -- hostile folders --------------------------------------------------------------------------


def test_symlink_loop_and_duplicate_links(tmp_path):
    _put(tmp_path, "cam1/a.jpg", "cam1/b.jpg")
    os.symlink(tmp_path, tmp_path / "cam1" / "loop")  # back to the root
    os.symlink(tmp_path / "cam1", tmp_path / "cam1_again")  # a second name for the same folder
    os.symlink(tmp_path / "nowhere", tmp_path / "cam1" / "dangling")
    os.symlink(tmp_path / "cam1" / "self", tmp_path / "cam1" / "self")
    found, rejected = _scan(tmp_path, "camera-folders")
    assert sorted(f.relpath for f in found) == ["cam1/a.jpg", "cam1/b.jpg"]
    reasons = {r.relpath: r.reason for r in rejected}
    assert "symlink loop" in reasons["cam1/loop"]
    assert "symlink loop or duplicate link" in reasons["cam1_again"]
    # links to nothing have no image extension here: not images, so not reported


def test_broken_symlink_with_image_name_is_found_then_refused_by_header(tmp_path):
    _put(tmp_path, "cam1/a.jpg")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "cam1" / "b.jpg")
    found, _ = _scan(tmp_path, "camera-folders")
    assert sorted(f.relpath for f in found) == ["cam1/a.jpg", "cam1/b.jpg"]  # ingest's header read rejects b


def test_symlinked_camera_folder_is_followed_inside_the_root_only(tmp_path):
    """Issue 10.6: a folder link is followed while its target stays inside the ingested folder;
    one leaving it (a link to / walked the whole disk) is a reject with the reason."""
    data = tmp_path / "data"
    _put(data, "x/1.jpg")
    root = tmp_path / "root"
    _put(root, "store/y/2.jpg", "cam1/3.jpg")
    os.symlink(data / "x", root / "camX")
    os.symlink(root / "store" / "y", root / "camY")
    found, rejected = _scan(root, "camera-folders")
    assert ("camY/2.jpg", "camY") in [(f.relpath, f.camera) for f in found]
    assert not any(f.relpath.startswith("camX") for f in found)
    assert [(r.relpath, "outside the ingested folder" in r.reason) for r in rejected if r.relpath == "camX"] == [
        ("camX", True)]


@pytest.mark.skipif(IS_ROOT, reason="running as root: folder permissions are not enforced")
def test_unreadable_folder_is_a_reject(tmp_path):
    _put(tmp_path, "cam1/a.jpg", "cam2/b.jpg")
    (tmp_path / "cam2").chmod(0)
    try:
        found, rejected = _scan(tmp_path, "camera-folders")
    finally:
        (tmp_path / "cam2").chmod(0o755)
    assert [f.relpath for f in found] == ["cam1/a.jpg"]
    assert "permission" in rejected[0].reason


def test_non_utf8_camera_and_file_names(tmp_path):
    raw_root = os.fsencode(tmp_path)
    os.mkdir(raw_root + b"/cam\xe9")
    with open(raw_root + b"/cam\xe9/p\xff.jpg", "wb") as fh:
        fh.write(JPEG)
    _put(tmp_path, "камера/人.jpg")
    found, rejected = _scan(tmp_path)
    assert rejected == []
    cams = sorted(f.camera for f in found)
    assert "камера" in cams
    odd = [f for f in found if f.camera != "камера"][0]
    odd.camera.encode("utf-8")  # camera names are storable text
    assert text_to_relpath(odd.camera) == os.fsdecode(b"cam\xe9")
    assert (tmp_path / odd.relpath).read_bytes() == JPEG  # relpath opens the real file


# -- errors -----------------------------------------------------------------------------------


def test_empty_folder_message(tmp_path):
    with pytest.raises(LayoutError, match="no images and no sub-folders"):
        detect_layout(tmp_path)


def test_missing_and_file_roots(tmp_path):
    with pytest.raises(LayoutError, match="not found"):
        detect_layout(tmp_path / "nope")
    (tmp_path / "f.jpg").write_bytes(JPEG)
    with pytest.raises(LayoutError, match="not a folder"):
        detect_layout(tmp_path / "f.jpg")


def test_unknown_layout_lists_every_layout(tmp_path):
    _put(tmp_path, "holiday.jpg", "beach.jpg")  # loose images with no camera in their names
    with pytest.raises(LayoutError) as info:
        detect_layout(tmp_path)
    msg = str(info.value)
    for name, layout in LAYOUTS.items():
        assert name in msg and layout.description in msg
    (tmp_path / "empty_sub").mkdir()
    with pytest.raises(LayoutError, match="camera-folders"):
        detect_layout(tmp_path)


def test_unknown_layout_name():
    with pytest.raises(LayoutError) as info:
        get_layout("kitti")
    assert "kitti" in str(info.value) and all(n in str(info.value) for n in LAYOUTS)
    assert get_layout("market") is LAYOUTS["market"]
