"""The procedural demo camera set and the colour-histogram baseline."""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path

from itkm_engine.cv import cv2
import numpy as np
import pytest

from benchmarks.color_baseline import color_histogram, color_histogram_features
from itkm_engine.data.demo import (
    DEMO_CAMERAS,
    DEMO_EPOCH,
    INFRARED_KINDS,
    MANIFEST_NAME,
    MARKER_NAME,
    REALISTIC,
    is_demo_folder,
    make_demo,
    parse_demo_name,
)
from itkm_engine.errors import Cancelled, ItkmError
from itkm_engine.progress import CancelToken, Reporter

SPECS = {c.name: c for c in DEMO_CAMERAS}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "set"
    info = make_demo(root, identities=8, seed=0)
    return info


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.jpg"))


def _digest(root: Path) -> dict[str, tuple[str, float]]:
    """Every file (images, manifest, marker): content hash and mtime."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime)
        for p in root.rglob("*") if p.is_file() and p.suffix == ".jpg"
    } | {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), 0.0)
        for p in (root / MANIFEST_NAME, root / MARKER_NAME)
    }


def _read(p: Path) -> np.ndarray:
    img = cv2.imdecode(np.fromfile(str(p), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, p
    return img


def test_layout_names_and_timestamps(demo):
    root = demo.root
    files = _files(root)
    assert len(files) == demo.n_images == sum(c.n_images for c in demo.cameras.values())
    assert demo.n_identities == 8
    assert set(demo.cameras) == {"vis-a", "vis-b", "ir-a", "ir-b", "hr-a", "lr-a", "cc-a", "cc-b"}
    assert len({c.camnum for c in demo.cameras.values()}) == 8  # camera numbers are global and unique
    frames = defaultdict(list)
    for p in files:
        camera, scenario = p.parent.name, p.parent.parent.name
        spec = SPECS[camera]
        assert scenario == spec.scenario and p.parent.parent.parent == root
        assert demo.cameras[camera].scenario == spec.scenario and demo.cameras[camera].group == spec.group
        pid, camnum, frame = parse_demo_name(p.name)
        assert camnum == spec.camnum
        assert 1 <= pid <= 8 and frame >= 1
        assert p.stat().st_mtime == DEMO_EPOCH + frame
        frames[(pid, camera)].append(frame)
    for fr in frames.values():
        assert len(fr) == len(set(fr))  # a track's frames are distinct, so it has a time order
    # images of one person in one camera: 4..8 by default
    assert all(4 <= len(v) <= 8 for v in frames.values())
    with pytest.raises(ItkmError):
        parse_demo_name("not_a_demo.jpg")


def test_manifest_lists_everything(demo):
    manifest = json.loads((demo.root / MANIFEST_NAME).read_text())
    assert manifest["complete"] is True
    assert manifest["params"]["identities"] == 8 and manifest["params"]["seed"] == 0
    assert sorted(manifest["files"]) == sorted(str(p.relative_to(demo.root)).replace(os.sep, "/") for p in _files(demo.root))
    assert manifest["cameras"]["ir-a"]["group"] == "infrared"
    assert manifest["clothes_changed"] == list(demo.clothes_changed)


def test_every_scenario_has_cross_camera_matches(demo):
    cams_of = defaultdict(set)
    for p in _files(demo.root):
        pid, _, _ = parse_demo_name(p.name)
        cams_of[pid].add(p.parent.name)
    for scenario in ("visible-infrared", "cross-resolution", "clothing-change"):
        cams = {c.name for c in DEMO_CAMERAS if c.scenario == scenario}
        assert any(len(cs & cams) >= 2 for cs in cams_of.values()), scenario
    # every identity is in >= 2 cameras of at least one scenario
    for pid, cs in cams_of.items():
        assert any(len(cs & {c.name for c in DEMO_CAMERAS if c.scenario == s}) >= 2
                   for s in ("visible-infrared", "cross-resolution", "clothing-change")), pid
    # the cross-group directions the benchmarks score have matches
    assert any("ir-a" in cs and cs & {"vis-a", "vis-b"} for cs in cams_of.values())
    assert any("ir-b" in cs and cs & {"vis-a", "vis-b"} for cs in cams_of.values())
    assert any({"lr-a", "hr-a"} <= cs for cs in cams_of.values())
    assert demo.clothes_changed and all("cc-b" in cams_of[p] for p in demo.clothes_changed)


def _mean_saturation(paths) -> float:
    return float(np.mean([cv2.cvtColor(_read(p), cv2.COLOR_BGR2HSV)[:, :, 1].mean() for p in paths]))


def test_infrared_camera_has_no_colour(demo):
    by_cam = defaultdict(list)
    for p in _files(demo.root):
        by_cam[p.parent.name].append(p)
    assert _mean_saturation(by_cam["ir-a"]) < 3.0
    assert _mean_saturation(by_cam["ir-b"]) < 3.0
    for cam in ("vis-a", "vis-b", "hr-a", "cc-a", "cc-b"):
        assert _mean_saturation(by_cam[cam]) > 20.0, cam
    # warm body brighter than the cool background: the centre column beats the border columns
    ir = np.stack([cv2.resize(_read(p)[:, :, 0], (32, 64)).astype(np.float32) for p in by_cam["ir-a"]])
    assert ir[:, 10:54, 12:20].mean() > ir[:, :, :3].mean() + 15


def _torso_legs(p: Path) -> tuple[float, float]:
    """Mean grey level of the upper and the lower body (centre columns)."""
    g = cv2.resize(cv2.cvtColor(_read(p), cv2.COLOR_BGR2GRAY), (32, 64)).astype(np.float32)
    return float(g[16:30, 12:20].mean()), float(g[38:56, 12:20].mean())


def test_near_infrared_keeps_the_clothes_luminance_pattern(tmp_path):
    """ir-b (near-infrared) is a grey photo of the clothes: who wears a lighter top than trousers
    in the visible cameras mostly does so in ir-b too; the thermal ir-a ignores colour."""
    demo = make_demo(tmp_path / "nir", identities=30, images_per_camera=2, seed=0)
    by = defaultdict(list)
    for p in _files(demo.root):
        by[(parse_demo_name(p.name)[0], p.parent.name)].append(p)

    def contrast(paths) -> float:
        return float(np.mean([np.subtract(*_torso_legs(p)) for p in paths]))

    agree = {"ir-a": [], "ir-b": []}
    for (pid, cam), paths in by.items():
        if cam in agree:
            vis = by.get((pid, "vis-a"), []) + by.get((pid, "vis-b"), [])
            if vis and abs(contrast(vis)) > 25:
                agree[cam].append(np.sign(contrast(vis)) == np.sign(contrast(paths)))
    assert len(agree["ir-b"]) >= 5
    assert np.mean(agree["ir-b"]) >= 0.75
    assert np.mean(agree["ir-b"]) > np.mean(agree["ir-a"])


def test_infrared_kinds_share_everything_else(tmp_path):
    """infrared="thermal" is the set without ir-b; "nir" films ir-a's same shots as near-infrared;
    the other cameras' crops are byte-identical in all three."""
    sets = {k: make_demo(tmp_path / k, identities=5, images_per_camera=1, seed=2, infrared=k) for k in INFRARED_KINDS}
    assert set(sets["thermal"].cameras) == set(sets["nir"].cameras) == set(sets["both"].cameras) - {"ir-b"}
    digests = {k: _digest(info.root) for k, info in sets.items()}
    jpgs = [n for n in digests["thermal"] if n.endswith(".jpg")]
    assert jpgs and all(n in digests["nir"] and n in digests["both"] for n in jpgs)
    for name in jpgs:
        if "/ir-a/" in name.replace(os.sep, "/"):
            assert digests["thermal"][name] == digests["both"][name] != digests["nir"][name]
        else:
            assert digests["thermal"][name] == digests["nir"][name] == digests["both"][name]
    manifest = json.loads((sets["nir"].root / MANIFEST_NAME).read_text())
    assert manifest["cameras"]["ir-a"]["modality"] == "near-infrared" and manifest["params"]["infrared"] == "nir"
    with pytest.raises(ItkmError, match="infrared"):
        make_demo(tmp_path / "bad", identities=3, infrared="xray")


def test_realistic_regime_has_few_crops_per_person_and_camera(tmp_path):
    info = make_demo(tmp_path / "real", identities=12, images_per_camera=(2, 3), seed=0)
    counts = defaultdict(int)
    for p in _files(info.root):
        counts[(parse_demo_name(p.name)[0], p.parent.name)] += 1
    assert set(counts.values()) <= {2, 3} and len(set(counts.values())) == 2
    again = make_demo(tmp_path / "real", identities=12, images_per_camera=(2, 3), seed=0)
    assert again.reused  # the range is stored in the manifest and compared on reuse
    assert REALISTIC["identities"] >= 80 and REALISTIC["images_per_camera"][1] <= 6


def test_low_res_camera_is_small(demo):
    heights = defaultdict(list)
    for p in _files(demo.root):
        heights[p.parent.name].append(_read(p).shape[0])
    lr = float(np.median(heights.pop("lr-a")))
    others = [float(np.median(h)) for h in heights.values()]
    assert lr < 0.5 * min(others)
    assert 100 <= min(others) and max(others) <= 180  # ~128x64 base crops with jitter


def test_clothing_change_changes_clothes(tmp_path):
    """In cc-b, changed people's colours move away from their cc-a look; unchanged ones' do not."""
    demo = make_demo(tmp_path / "cc", identities=24, images_per_camera=2, seed=0)
    by = defaultdict(list)
    for p in _files(demo.root):
        pid, _, _ = parse_demo_name(p.name)
        if p.parent.name in ("cc-a", "cc-b"):
            by[(pid, p.parent.name)].append(p)

    def torso(p: Path) -> np.ndarray:  # colour of the upper-body garment, background left out
        img = _read(p)
        h, w = img.shape[:2]
        return color_histogram(img[int(0.25 * h):int(0.5 * h), int(0.35 * w):int(0.65 * w)], bins=(8, 4, 4), stripes=1)

    sims = {True: [], False: []}
    for pid in sorted({k[0] for k in by}):
        if (pid, "cc-a") in by and (pid, "cc-b") in by:
            fa = np.mean([torso(p) for p in by[(pid, "cc-a")]], axis=0)
            fb = np.mean([torso(p) for p in by[(pid, "cc-b")]], axis=0)
            sims[pid in demo.clothes_changed].append(float(fa @ fb / np.linalg.norm(fa) / np.linalg.norm(fb)))
    assert len(sims[True]) >= 3 and len(sims[False]) >= 3
    assert np.mean(sims[True]) < np.mean(sims[False]) - 0.1


def test_deterministic_per_seed(tmp_path):
    a = make_demo(tmp_path / "a", identities=4, images_per_camera=2, seed=3)
    b = make_demo(tmp_path / "b", identities=4, images_per_camera=2, seed=3)
    c = make_demo(tmp_path / "c", identities=4, images_per_camera=2, seed=4)
    da, db, dc = _digest(a.root), _digest(b.root), _digest(c.root)
    assert da == db and len(da) == a.n_images + 2  # same bytes, names and mtimes, manifest included
    assert da != dc
    images_a = {h for k, (h, _) in da.items() if k.endswith(".jpg")}
    images_c = {h for k, (h, _) in dc.items() if k.endswith(".jpg")}
    assert images_a.isdisjoint(images_c)  # another seed draws every crop differently


def test_idempotent_and_regenerates_on_change(tmp_path):
    root = tmp_path / "d"
    first = make_demo(root, identities=3, images_per_camera=1, seed=0)
    before = {p: p.stat().st_ctime_ns for p in _files(root)}
    again = make_demo(root, identities=3, images_per_camera=1, seed=0)
    assert again.reused and not first.reused
    assert again.n_images == first.n_images and again.cameras == first.cameras
    assert {p: p.stat().st_ctime_ns for p in _files(root)} == before  # nothing rewritten

    # other parameters: regenerated, and no file of the old set is left behind
    other = make_demo(root, identities=3, images_per_camera=2, seed=1)
    assert not other.reused and other.n_images == len(_files(root))
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["params"]["seed"] == 1

    # a missing file makes the set incomplete: regenerated
    victim = _files(root)[0]
    victim.unlink()
    fixed = make_demo(root, identities=3, images_per_camera=2, seed=1)
    assert not fixed.reused and victim.exists()


def test_interrupted_generation_is_detectable_and_resumable(tmp_path):
    root = tmp_path / "d"
    token = CancelToken()
    seen = []

    def on_event(ev):
        seen.append(ev)
        if len(seen) >= 2:
            token.cancel()

    with pytest.raises(Cancelled):
        make_demo(root, identities=3, images_per_camera=4, reporter=Reporter(on_event, cancel=token))
    assert not (root / MANIFEST_NAME).exists() and (root / MARKER_NAME).exists()
    assert is_demo_folder(root)
    info = make_demo(root, identities=3, images_per_camera=4)
    assert not info.reused and (root / MANIFEST_NAME).exists()
    assert len(_files(root)) == info.n_images
    assert seen and all(ev.fraction is None or 0.0 <= ev.fraction <= 1.0 for ev in seen)


def test_refuses_a_folder_that_is_not_a_demo(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    mine = root / "holiday.jpg"
    mine.write_bytes(b"not really a jpeg")
    with pytest.raises(ItkmError, match="not a demo folder"):
        make_demo(root, identities=3, images_per_camera=1)
    assert sorted(os.listdir(root)) == ["holiday.jpg"] and mine.read_bytes() == b"not really a jpeg"
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ItkmError):
        make_demo(afile, identities=3)
    for bad in ({"identities": 2}, {"identities": 10_000}, {"identities": 3, "seed": -1},
                {"identities": 3, "images_per_camera": 0}, {"identities": 3.5},
                {"identities": 3, "images_per_camera": (3, 2)}, {"identities": 3, "images_per_camera": (0, 2)},
                {"identities": 3, "images_per_camera": (1, 2, 3)}):
        with pytest.raises(ItkmError):
            make_demo(tmp_path / "new", **bad)


def test_color_histogram_features(demo, tmp_path):
    paths = _files(demo.root)[:20]
    mtimes = [p.stat().st_mtime_ns for p in paths]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 garbage")
    unicode_copy = tmp_path / "képek-ü.jpg"
    unicode_copy.write_bytes(paths[0].read_bytes())
    feats = color_histogram_features([*paths, broken, tmp_path / "missing.jpg", unicode_copy])
    assert feats.dtype == np.float32 and feats.shape == (23, 6 * 8 * 8 * 8)
    assert np.allclose(np.linalg.norm(feats[:20], axis=1), 1.0, atol=1e-5)
    assert not feats[20:22].any()  # unreadable -> zero vector
    assert np.array_equal(feats[22], feats[0])  # non-ASCII path read the same
    assert [p.stat().st_mtime_ns for p in paths] == mtimes  # read-only
    small = color_histogram_features(paths[:3], bins=(4, 2, 2), stripes=3)
    assert small.shape == (3, 3 * 16)
    with pytest.raises(ItkmError):
        color_histogram_features(paths[:1], bins=(8, 8))


def test_color_baseline_finds_same_person_in_same_camera(demo):
    """Sanity of the baseline itself: within one visible camera, colour finds the same person."""
    paths = [p for p in _files(demo.root) if p.parent.name == "hr-a"]
    pids = np.array([parse_demo_name(p.name)[0] for p in paths])
    f = color_histogram_features(paths)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    top1 = pids[sim.argmax(1)] == pids
    chance = np.mean([(np.sum(pids == q) - 1) / (len(pids) - 1) for q in pids])
    assert top1.mean() > 3 * chance


def test_demo_data_command_chooses_the_infrared_cameras(tmp_path):
    from helpers.cli import cli_inproc

    rc, out, err = cli_inproc("demo-data", tmp_path / "th", "--identities", "3", "--infrared", "thermal")
    assert rc == 0, err
    manifest = json.loads((tmp_path / "th" / MANIFEST_NAME).read_text())
    assert "ir-b" not in manifest["cameras"] and manifest["params"]["infrared"] == "thermal"
    rc, out, err = cli_inproc("demo-data", tmp_path / "both", "--identities", "3")
    assert rc == 0 and "ir-b" in out  # the default films both kinds
    rc, _, err = cli_inproc("demo-data", tmp_path / "x", "--identities", "3", "--infrared", "xray")
    assert rc == 2 and "infrared" in err
