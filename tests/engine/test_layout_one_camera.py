"""A single folder of loose crops is one camera named after the folder (issue 11 item 2)."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from itkm_engine.data.ingest import ingest
from itkm_engine.data.layouts import LAYOUTS, detect_layout
from itkm_engine.workspace import Workspace


def _crops(folder, names):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in names:
        Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(folder / n)


def test_loose_crops_are_one_camera_named_after_the_folder(tmp_path):
    cam = tmp_path / "entrance-east"
    _crops(cam, [f"crop_{i:03d}.jpg" for i in range(6)])
    assert LAYOUTS["one-camera"].matches(cam)
    with Workspace.open(tmp_path / "ws", create=True) as ws:
        summary = ingest(ws, [cam], layout="one-camera")
        assert summary.images == 6
        assert [c.name for c in ws.cameras()] == ["entrance-east"]


def test_a_demo_camera_folder_keeps_its_folder_name(demo_dir, tmp_path):
    src = demo_dir / "visible-infrared" / "ir-a"
    cam = tmp_path / "ir-a"
    shutil.copytree(src, cam)
    assert LAYOUTS["one-camera"].matches(cam)  # Market-style names, but all from one camera
    with Workspace.open(tmp_path / "ws", create=True) as ws:
        ingest(ws, [cam], layout="one-camera")
        assert [c.name for c in ws.cameras()] == ["ir-a"]
        assert (ws.images().person_id >= 0).all()  # ids still parsed from the names


def test_a_market_split_with_several_cameras_stays_market(tmp_path):
    root = tmp_path / "bounding_box_test"
    _crops(root, ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s1_000651_02.jpg"])
    assert not LAYOUTS["one-camera"].matches(root)
    assert detect_layout(root) == "market"
