"""evaluate_features: the cross-camera headline beside the standard protocol, and SYSU-MM01's own
protocol on synthetic sets whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from itkm_engine.evaluation import (
    SYSU_SEEDS,
    evaluate_features,
    format_scores,
    single_shot_gallery,
    sysu_camera_numbers,
)
from itkm_engine.records import ImageTable

SCORE_KEYS = {"mAP", "rank1", "rank5", "rank10", "queries", "gallery"}


def table(cameras, pids, *, scenario="cross-camera", groups=None, relpaths=None, source_ids=None) -> ImageTable:
    n = len(cameras)
    obj = lambda xs: np.array(list(xs), dtype=object)  # noqa: E731
    relpaths = relpaths or [f"{c}/{i:05d}.jpg" for i, c in enumerate(cameras)]
    return ImageTable(
        id=np.arange(n, dtype=np.int64), path=[f"/x/{r}" for r in relpaths], relpath=list(relpaths),
        camera=obj(cameras), scenario=obj([scenario] * n), group=obj(groups or ["all"] * n),
        width=np.full(n, 64, np.int32), height=np.full(n, 128, np.int32), timestamp=np.full(n, np.nan),
        person_id=np.asarray(pids, np.int64), status=obj(["ok"] * n),
        source_id=np.asarray(source_ids if source_ids is not None else [1] * n, np.int64),
    )


def angles(*deg) -> np.ndarray:
    r = np.radians(deg)
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


def test_cross_camera_headline_leaves_the_query_camera_out():
    # Camera A sees persons 1, 2 at 0 and 10 degrees; camera B sees them at 25 and 70 degrees.
    # Standard protocol: the other person of the query's own camera competes, so
    # AP = 1/2, 1/3, 1/2, 1/2 and no query is right at rank 1.  Cross-camera: only the other
    # camera is the gallery: AP = 1, 1/2, 1/2, 1 and rank-1 = 1/2.
    feats = angles(0, 10, 25, 70)
    images = table(["A", "A", "B", "B"], [1, 2, 1, 2])
    result = evaluate_features(feats, images)
    head = result["headline"]
    assert (head["protocol"], head["split"]) == ("cross-camera", "overall")
    assert set(head) == SCORE_KEYS | {"protocol", "split"}
    assert head["mAP"] == pytest.approx(0.75) and head["rank1"] == pytest.approx(0.5)
    assert (head["queries"], head["gallery"]) == (4, 4)
    std = result["protocols"]["standard"]["overall"]
    assert std["mAP"] == pytest.approx((0.5 + 1 / 3 + 0.5 + 0.5) / 4) and std["rank1"] == 0.0
    assert set(result["protocols"]) == {"cross-camera", "standard"}  # no sysu source
    assert set(result["protocols"]["cross-camera"]) == {"overall", "cross-camera"}  # overall + scenario
    text = format_scores(result)
    assert text.splitlines()[0].startswith("headline (cross-camera protocol, overall): mAP 75.0  R1 50.0")
    assert "standard" in text


def test_directions_are_kept_for_both_protocols():
    feats = angles(0, 40, 2, 42)
    images = table(["v1", "v1", "ir1", "ir1"], [1, 2, 1, 2], scenario="visible-infrared",
                   groups=["visible", "visible", "infrared", "infrared"])
    result = evaluate_features(feats, images)
    for protocol in ("cross-camera", "standard"):
        scores = result["protocols"][protocol]
        assert {"visible-infrared: infrared -> visible", "visible-infrared: visible -> infrared"} <= set(scores)
        assert scores["visible-infrared: infrared -> visible"]["mAP"] == 1.0


def test_nothing_to_score_is_empty():
    assert evaluate_features(angles(0, 10), table(["A", "B"], [-1, -1])) == {}
    assert evaluate_features(angles(0, 10), table(["A", "A"], [1, 1])) == {}  # one camera: no cross-camera match


def test_legacy_stored_evaluation_still_formats():
    old = {"overall": {"mAP": 0.5, "rank1": 0.25, "rank5": 0.5, "rank10": 1.0, "queries": 4, "gallery": 4}}
    text = format_scores(old)
    assert "standard" in text and "50.0" in text and "headline" not in text


# -- SYSU-MM01 -----------------------------------------------------------------------------------

DIM = 8
TRAP = 7  # a feature direction only the trap person and person 1's cam3 crop share


def sysu_set(prefix: str = ""):
    """Persons 1..3: two visible crops in each of cams 1, 2, 4, 5 and one infrared crop in each of
    cams 3 and 6.  Person 9 is only in cam2 and looks exactly like person 1's cam3 crop: without
    the cam3-skips-cam2 rule that crop would find person 9 first."""
    feats, cams, pids, rel = [], [], [], []

    def add(pid, cam, vec):
        v = np.asarray(vec, np.float32)
        feats.append(v / np.linalg.norm(v))
        cams.append(f"{prefix}cam{cam}")
        pids.append(pid)
        rel.append(f"cam{cam}/{pid:04d}/{len(rel):04d}.jpg")

    for p in (1, 2, 3):
        base = np.eye(DIM)[p]
        for cam in (1, 2, 4, 5):
            for k in range(2):
                add(p, cam, base + 0.01 * (cam + k) * np.eye(DIM)[4])
        add(p, 3, base + (np.eye(DIM)[TRAP] if p == 1 else 0.02 * np.eye(DIM)[5]))
        add(p, 6, base + 0.03 * np.eye(DIM)[6])
    add(9, 2, np.eye(DIM)[1] + np.eye(DIM)[TRAP])
    groups = ["infrared" if c.endswith(("cam3", "cam6")) else "visible" for c in cams]
    images = table(cams, pids, scenario="visible-infrared", groups=groups, relpaths=rel)
    return np.stack(feats), images


def test_sysu_protocol_known_answers():
    feats, images = sysu_set()
    result = evaluate_features(feats, images, sysu_sources=[1])
    protocols = result["protocols"]
    assert set(protocols) == {"cross-camera", "standard", "sysu-all-search", "sysu-indoor-search"}
    allsearch = protocols["sysu-all-search"]["overall"]
    indoor = protocols["sysu-indoor-search"]["overall"]
    # Queries: the 6 infrared crops.  Single-shot gallery: one crop per person per camera:
    # all-search 3 persons x 4 cams + the trap = 13; indoor 3 x 2 + 1 = 7.
    assert (allsearch["queries"], allsearch["gallery"]) == (6, 13)
    assert (indoor["queries"], indoor["gallery"]) == (6, 7)
    # cam3 skips cam2, so the trap never outranks person 1: every query is perfect.
    for s in (allsearch, indoor):
        assert s["mAP"] == pytest.approx(1.0) and s["rank1"] == 1.0
    # The cross-camera protocol keeps cam2 for cam3 queries: person 1's cam3 crop finds the trap
    # first, then its 8 visible crops at ranks 2..9.
    ir = protocols["cross-camera"]["visible-infrared: infrared -> visible"]
    assert ir["rank1"] == pytest.approx(5 / 6)
    assert ir["mAP"] == pytest.approx((5 + np.mean([k / (k + 1) for k in range(1, 9)])) / 6)
    assert result["headline"]["protocol"] == "cross-camera"
    assert "sysu-all-search" in format_scores(result)


def test_sysu_cameras_come_from_the_folder_and_only_for_sysu_sources():
    feats, images = sysu_set(prefix="SYSU-MM01:")  # a renamed camera (another source owned "cam1")
    nums = sysu_camera_numbers(images, [1])
    assert set(nums.tolist()) == {1, 2, 3, 4, 5, 6}
    assert not sysu_camera_numbers(images, [2]).any()
    assert "sysu-all-search" in evaluate_features(feats, images, sysu_sources=[1])["protocols"]
    assert "sysu-all-search" not in evaluate_features(feats, images)["protocols"]


def test_single_shot_gallery_one_per_person_and_camera_fixed_per_seed():
    pids = np.array([1, 1, 1, 2, 2, 1, 1])
    cams = np.array([1, 1, 1, 1, 1, 2, 2])
    g = np.arange(7)
    draws = [single_shot_gallery(g, pids, cams, seed) for seed in range(SYSU_SEEDS)]
    for d in draws:
        assert sorted(zip(pids[d], cams[d])) == [(1, 1), (1, 2), (2, 1)]
    np.testing.assert_array_equal(single_shot_gallery(g, pids, cams, 3), draws[3])
    assert len({tuple(d) for d in draws}) > 1  # the seeds draw different galleries


def test_session_evaluate_scores_a_sysu_source_with_its_protocol(tmp_path):
    from PIL import Image

    from itkm_engine.config import preset
    from itkm_engine.data.ingest import ingest
    from itkm_engine.session import Session
    from itkm_engine.workspace import Workspace

    rng = np.random.default_rng(0)
    root = tmp_path / "SYSU-MM01"
    for cam in range(1, 7):
        for pid in (1, 2, 3):
            px = rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)
            if cam in (3, 6):
                px = np.repeat(px[:, :, :1], 3, axis=2)  # grey, as infrared crops look
            (root / f"cam{cam}" / f"{pid:04d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(px).save(root / f"cam{cam}" / f"{pid:04d}" / "0001.jpg")
    ws = Workspace.open(tmp_path / "ws", create=True)
    ingest(ws, root)
    with Session(ws, preset("tiny"), device="cpu") as s:
        result = s.evaluate()
    allsearch = result["protocols"]["sysu-all-search"]["overall"]
    assert (allsearch["queries"], allsearch["gallery"]) == (6, 12)  # 3 persons x cams 3, 6; x cams 1, 2, 4, 5
    assert result["protocols"]["sysu-indoor-search"]["overall"]["gallery"] == 6
    assert result["headline"]["protocol"] == "cross-camera"


def test_cli_evaluate_leads_with_the_cross_camera_headline(trained_ws, capsys):
    import json

    from itkm_engine.cli import main

    assert main(["evaluate", str(trained_ws), "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("headline (cross-camera protocol, overall): mAP ")
    assert any(line.startswith("standard ") for line in out)
    assert main(["evaluate", str(trained_ws), "--quiet", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"headline", "protocols"}
    assert main(["status", str(trained_ws)]) == 0  # the stored evaluation, same table
    assert any(line.startswith("headline (cross-camera") for line in capsys.readouterr().out.splitlines())


def test_a_low_res_camera_outside_cross_resolution_is_scored_both_ways_in_both_protocols():
    """Issue 20 section 5: a camera flagged low-res inside a visible-infrared source keeps its group
    (visible here) but is scored as its own direction: its queries against the scenario's other
    cameras (low-res -> high-res) and back."""
    feats = angles(0, 40, 80, 2, 42, 82, 5, 45, 85)
    images = table(["v1"] * 3 + ["lr"] * 3 + ["ir1"] * 3, [1, 2, 3] * 3, scenario="visible-infrared",
                   groups=["visible"] * 6 + ["infrared"] * 3)
    assert not any("low-res" in k for k in evaluate_features(feats, images)["protocols"]["standard"])
    result = evaluate_features(feats, images, low_res_cameras=["lr"])
    for protocol in ("cross-camera", "standard"):
        scores = result["protocols"][protocol]
        up, down = scores["visible-infrared: low-res -> high-res"], scores["visible-infrared: high-res -> low-res"]
        assert (up["queries"], up["gallery"]) == (3, 6) and (down["queries"], down["gallery"]) == (6, 3)
        assert up["mAP"] == 1.0 and down["mAP"] == 1.0
    # a low-res camera of the cross-resolution scenario is its low-res group: scored once, as that
    xres = table(["h", "h", "l", "l"], [1, 2, 1, 2], scenario="cross-resolution",
                 groups=["high-res", "high-res", "low-res", "low-res"])
    scores = evaluate_features(angles(0, 40, 2, 42), xres, low_res_cameras=["l"])["protocols"]["standard"]
    assert [k for k in scores if "low-res ->" in k] == ["cross-resolution: low-res -> high-res"]


def test_each_infrared_camera_is_scored_against_the_visible_group_when_there_are_several():
    feats = angles(0, 40, 2, 42, 25, 65)
    images = table(["v1", "v1", "th", "th", "nir", "nir"], [1, 2] * 3, scenario="visible-infrared",
                   groups=["visible"] * 2 + ["infrared"] * 4)
    scores = evaluate_features(feats, images)["protocols"]["cross-camera"]
    assert scores["visible-infrared: camera th -> visible"]["mAP"] == 1.0  # 2 deg from its match
    assert scores["visible-infrared: camera nir -> visible"]["mAP"] < 1.0  # 25 deg: person 2 nearer
    assert scores["visible-infrared: visible -> camera nir"]["queries"] == 2
    one = table(["v1", "v1", "th", "th"], [1, 2, 1, 2], scenario="visible-infrared",
                groups=["visible"] * 2 + ["infrared"] * 2)
    assert not any("camera" in k for k in evaluate_features(angles(0, 40, 2, 42), one)["protocols"]["standard"])
