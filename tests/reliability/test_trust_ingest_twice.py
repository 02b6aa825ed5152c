"""Issue 16, section 3: files already in the workspace are never ingested twice.

Ingesting a sub-folder of an already ingested source under another site duplicated its images
into new cameras without a word (Stage II was then told they were different people).  Files are
now recognised by path -- a folder inside an ingested source is refused, a folder holding one
leaves its files to it -- and a copy elsewhere by content (the copy check compared relative
paths, which a copied sub-folder does not share).  The user is told each time."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from helpers.cli import cli_inproc, one_line


def _counts(ws: Path) -> tuple[int, int, int]:
    con = sqlite3.connect((ws / "itkm.sqlite").as_uri() + "?mode=ro", uri=True)
    try:
        return tuple(con.execute("SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM cameras), "
                                 "(SELECT count(*) FROM sources)").fetchone())
    finally:
        con.close()


def _n_crops(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".png"))


def test_a_sub_folder_of_an_ingested_source_is_refused_naming_it(fresh_ws, demo_dir):
    before = _counts(fresh_ws)
    sub = demo_dir / "visible-infrared"
    line = one_line(*cli_inproc("ingest", fresh_ws, sub, "--site", "site-b")[::2], "ingest")
    assert f"{sub} is inside {demo_dir}, which is already in this workspace (site 'default')" in line, line
    assert f"its {_n_crops(sub)} images are there already" in line and "Nothing was changed" in line, line
    assert f"ingest {demo_dir} again" in line, line
    assert _counts(fresh_ws) == before  # no duplicate images, cameras or source
    # one of its camera folders, too
    cam = next(p for p in sub.iterdir() if p.is_dir())
    assert cli_inproc("ingest", fresh_ws, cam, "--layout", "one-camera").rc == 2
    assert _counts(fresh_ws) == before


def test_a_folder_holding_an_ingested_source_leaves_its_files_to_it(demo_dir, tmp_path):
    ws = tmp_path / "ws"
    sub = demo_dir / "visible-infrared"
    rc, _, err = cli_inproc("ingest", ws, sub, "--scenario", "visible-infrared")
    assert rc == 0, err
    n_sub, cams_sub, _ = _counts(ws)
    rc, out, err = cli_inproc("ingest", ws, demo_dir)
    assert rc == 0, err
    images, cameras, sources = _counts(ws)
    assert images == _n_crops(demo_dir) and sources == 2  # every crop once
    assert f"{n_sub} images under {sub} are already in the workspace" in err and "not added again" in err, err
    assert f"{n_sub} files under {sub} were already in the workspace" in out, out
    # the parent's new cameras hold only the other scenarios' crops
    con = sqlite3.connect((ws / "itkm.sqlite").as_uri() + "?mode=ro", uri=True)
    try:
        per_source = dict(con.execute("SELECT source_id, count(*) FROM images GROUP BY source_id").fetchall())
    finally:
        con.close()
    assert per_source == {1: n_sub, 2: _n_crops(demo_dir) - n_sub}


def test_a_copy_of_a_sub_folder_elsewhere_is_recognised_by_content(fresh_ws, demo_dir, tmp_path):
    """Its relative paths differ from the ingested ones (``ir-a/x.jpg`` vs
    ``visible-infrared/ir-a/x.jpg``); the names, sizes and bytes of the files do not."""
    copy = tmp_path / "backup" / "vi"
    shutil.copytree(demo_dir / "visible-infrared", copy)
    rc, _, err = cli_inproc("ingest", fresh_ws, copy)
    assert rc == 0, err
    assert f"{copy} looks like a copy of the already ingested {demo_dir}" in err and "twice" in err, err


def test_files_with_the_same_names_but_other_pixels_are_no_copy(fresh_ws, demo_dir, tmp_path):
    """Same file names and sizes (another data set with the same naming scheme) but other pixels:
    the bytes decide, no false alarm."""
    from PIL import Image

    copy = tmp_path / "other" / "vi"
    shutil.copytree(demo_dir / "visible-infrared", copy)
    for p in copy.rglob("*.jpg"):
        with Image.open(p) as im:
            Image.new("RGB", im.size, (17, 99, 140)).save(p)
    rc, _, err = cli_inproc("ingest", fresh_ws, copy)
    assert rc == 0, err
    assert "looks like a copy" not in err, err
