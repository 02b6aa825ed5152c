"""The scenario guess flags a low-resolution camera inside a source whose scenario has no
resolution groups (visible-infrared, cross-camera, clothing-change) and keeps its group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from itkm_engine.data.guess import LOW_RES_FLAG, MIXED_FLAG, CameraGuess, assign_scenarios
from itkm_engine.data.ingest import ingest
from itkm_engine.workspace import Workspace


def guess(height: float, *, infrared: bool = False, mixed: bool = False) -> CameraGuess:
    return CameraGuess(infrared=infrared, mixed=mixed, mean_saturation=0.0 if infrared else 0.3,
                       grey_fraction=1.0 if infrared else 0.0, median_height=height, sampled=8)


def test_low_res_camera_in_a_visible_infrared_source_keeps_its_group_and_is_flagged():
    out = assign_scenarios({"v1": guess(128), "v2": guess(128), "ir": guess(128, infrared=True), "far": guess(42)})
    scenario, group, flag = out["far"]
    assert (scenario, group) == ("visible-infrared", "visible")
    assert flag is not None and flag.startswith(LOW_RES_FLAG) and "42 px" in flag and "128 px" in flag
    assert all(out[c][2] is None for c in ("v1", "v2", "ir"))


def test_low_res_infrared_camera_is_flagged_too_and_joins_the_mixed_flag():
    out = assign_scenarios({"v1": guess(128), "v2": guess(128), "ir": guess(40, infrared=True),
                            "dn": guess(44, mixed=True)})
    assert out["ir"][:2] == ("visible-infrared", "infrared") and out["ir"][2].startswith(LOW_RES_FLAG)
    assert MIXED_FLAG in out["dn"][2] and LOW_RES_FLAG in out["dn"][2]


@pytest.mark.parametrize("hint", ["cross-camera", "clothing-change"])
def test_low_res_flag_under_a_one_group_scenario_hint(hint):
    out = assign_scenarios({"a": guess(128), "b": guess(128), "c": guess(50)}, hint)
    assert out["c"][:2] == (hint, "all") and out["c"][2].startswith(LOW_RES_FLAG)


def test_cross_resolution_needs_no_flag():
    # Without infrared the low-res outlier makes the scenario cross-resolution: its group says it.
    out = assign_scenarios({"a": guess(128), "b": guess(128), "c": guess(42)})
    assert out["c"] == ("cross-resolution", "low-res", None)
    out = assign_scenarios({"a": guess(128), "b": guess(128), "c": guess(42)}, "cross-resolution")
    assert out["c"] == ("cross-resolution", "low-res", None)


def _camera(root: Path, name: str, n: int, h: int, seed: int, grey: bool = False) -> None:
    rng = np.random.default_rng(seed)
    (root / name).mkdir(parents=True)
    for i in range(n):
        px = rng.integers(0, 255, (h, h // 2, 3), dtype=np.uint8)
        if grey:
            px = np.repeat(px[:, :, :1], 3, axis=2)
        Image.fromarray(px).save(root / name / f"{1 + i % 3:04d}_c1s1_{i * 10:06d}_00.jpg")


def test_ingest_flags_a_42px_camera_beside_128px_ones(tmp_path):
    root = tmp_path / "site"
    _camera(root, "vis1", 6, 128, 1)
    _camera(root, "vis2", 6, 128, 2)
    _camera(root, "ir", 6, 128, 3, grey=True)
    _camera(root, "far", 6, 42, 4)
    with Workspace.open(tmp_path / "ws", create=True) as ws:
        ingest(ws, root)
        cams = {c.name: c for c in ws.cameras()}
    assert (cams["far"].scenario, cams["far"].group) == ("visible-infrared", "visible")
    assert cams["far"].flag.startswith(LOW_RES_FLAG)
    assert cams["ir"].group == "infrared" and cams["vis1"].flag is None
