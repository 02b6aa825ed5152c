"""Whatever the cameras produced, through every stage that reads images, via the real CLI.

* A camera folder sprinkled with hostile files (empty, truncated, corrupt, text named .jpg,
  decompression-bomb dimensions, 1x1, FIFO, broken / looping links, a folder link loop, a
  non-UTF-8 name) and odd-but-valid ones (CMYK, 16-bit, palette, alpha, a PNG named .jpg): each
  bad one is rejected at ingest with its reason; each valid one is trained on and exported.
* Images that vanish or get truncated after ingest -- before training, and again before
  extraction -- are reported, skipped and marked (``unreadable`` / ``missing``); training
  completes and exports leave them out.
* An unreadable (permission denied) image: tests run as root, which ``chmod`` does not stop, so
  ``open`` is made to fail with EACCES for it.
* CSV export: cells that a spreadsheet would run (= + - @, tab, CR) are escaped; paths with
  commas, quotes, newlines, unicode and non-UTF-8 bytes come back through Python's csv reader.
* The user's folders are byte-for-byte and mtime-for-mtime the same after everything.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.cli import cli_inproc, run_cli
from helpers.images import png_claiming
from helpers.reliability import assert_workspace_whole, read_csv, snapshot
from helpers.workspaces import use_preset
from itkm_engine.model.checkpoint import checkpoint_key

FORMULA = ("=", "+", "-", "@", "\t", "\r")
TEXT_COLUMNS = ("camera", "scenario", "group", "image_path")


# -- hostile camera folder --------------------------------------------------------------------------
#: file name -> what ingest must say about it (a substring of the reject reason)
REJECTED = {
    "zero.jpg": "empty file",
    "trunc_head.jpg": "truncated or corrupt JPEG header",
    "corrupt.png": "corrupt PNG header",
    "text.jpg": "not an image",
    "bomb.png": "too large",
    "one_pixel.png": "too small",
    "fifo.jpg": "not a regular file",
    "broken_link.jpg": "broken or looping link",
    "loop_a.jpg": "broken or looping link",
    "loop_b.jpg": "broken or looping link",
    "up": "symlink loop",
    "noperm.jpg": "permission denied",
}
#: valid but unusual: ingested and trained on
ODD_OK = ["0001_c1s1_900001_00.jpg", "0001_c1s1_900002_00.png", "0001_c1s1_900003_00.png",
          "0001_c1s1_900004_00.png", "0001_c1s1_900005_00.jpg", b"0002_c1s1_900006_00\xff\xfe.jpg"]
NON_UTF8 = b"0002_c1s1_900006_00\xff\xfe.jpg"


def make_hostile(cam: Path, good: Path) -> None:
    raw = good.read_bytes()
    rgb = np.asarray(Image.open(good).convert("RGB"))
    im = Image.fromarray(rgb)
    (cam / "zero.jpg").write_bytes(b"")
    (cam / "trunc_head.jpg").write_bytes(raw[:40])
    (cam / "trunc_body.jpg").write_bytes(raw[: len(raw) // 2])  # header fine: found when decoded
    (cam / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2)
    (cam / "text.jpg").write_bytes(b"this is a text file with an image name\n" * 20)
    (cam / "bomb.png").write_bytes(png_claiming(100_000, 100_000))  # 10 gigapixels declared
    Image.new("RGB", (1, 1)).save(cam / "one_pixel.png")
    os.mkfifo(cam / "fifo.jpg")
    os.symlink("nowhere.jpg", cam / "broken_link.jpg")
    os.symlink("loop_b.jpg", cam / "loop_a.jpg")
    os.symlink("loop_a.jpg", cam / "loop_b.jpg")
    os.symlink("..", cam / "up")  # a folder link back up: the walk must not loop
    (cam / "noperm.jpg").write_bytes(raw)
    im.convert("CMYK").save(cam / ODD_OK[0], "JPEG")
    Image.fromarray(rgb[:, :, 1].astype(np.uint16) * 257).save(cam / ODD_OK[1])  # 16-bit grey
    im.convert("P", palette=Image.Palette.ADAPTIVE).save(cam / ODD_OK[2])
    rgba = im.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.full(rgb.shape[:2], 180, np.uint8)))
    rgba.save(cam / ODD_OK[3])
    im.save(cam / ODD_OK[4], "PNG")  # a PNG named .jpg
    with open(os.path.join(os.fsencode(cam), NON_UTF8), "wb") as fh:
        fh.write(raw)


@contextlib.contextmanager
def permission_denied(*names: str):
    """``open`` of these file names fails with EACCES, as for a file the user may not read."""
    import itkm_engine.data.imageio as imageio

    def guarded(path, *a, **kw):
        if os.path.basename(os.fsdecode(path)) in names:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return open(path, *a, **kw)

    imageio.open = guarded  # module global shadows the builtin inside imageio only
    try:
        yield
    finally:
        del imageio.open


@pytest.fixture(scope="module")
def pipeline(demo_dir, tmp_path_factory):
    """The whole life of a workspace fed hostile folders: ingest -> (files vanish / break) ->
    train -> (more vanish / break) -> extract -> export -> query.  Returns what each step said;
    the tests below check it.  At the end the hostile folder must be exactly as it was."""
    base = tmp_path_factory.mktemp("inputs")
    hostile = base / "hostile"
    shutil.copytree(demo_dir / "visible-infrared", hostile)
    make_hostile(hostile / "vis-a", sorted((hostile / "vis-a").glob("*.jpg"))[0])
    changing = base / "changing"  # the operator's camera whose files go away or break later
    shutil.copytree(demo_dir / "cross-resolution", changing)
    before = snapshot(hostile)

    ws = base / "ws"
    res: dict = {"ws": ws, "hostile": hostile, "changing": changing}
    with permission_denied("noperm.jpg"):
        res["ingest"] = cli_inproc("ingest", ws, hostile, changing, expect=0).text
    use_preset(ws, "tiny")

    from itkm_engine.workspace import Workspace

    with Workspace.open(ws, readonly=True) as w:
        res["ingested"] = w.images(include_missing=True)
    hr = sorted((changing / "hr-a").glob("*.jpg"))
    lr = sorted((changing / "lr-a").glob("*.jpg"))
    res["vanish_before_train"] = hr[0]
    res["truncate_before_train"] = hr[1]
    res["vanish_before_extract"] = lr[0]
    res["truncate_before_extract"] = lr[1]
    res["noperm_after_ingest"] = hr[2]
    hr[0].unlink()
    hr[1].write_bytes(hr[1].read_bytes()[:300])
    with permission_denied(hr[2].name):
        res["train"] = cli_inproc("train", ws, "--preset", "tiny", expect=0).text
    with Workspace.open(ws, readonly=True) as w:
        res["after_train"] = w.images(include_missing=True)
        res["rounds"] = w.rounds()
        key_dir = ws / "features" / checkpoint_key(w.latest_checkpoint())
    shutil.rmtree(key_dir)  # training cached these; make extract read every image again
    lr[0].unlink()
    lr[1].write_bytes(lr[1].read_bytes()[:300])
    res["extract"] = cli_inproc("extract", ws, expect=0).text
    with Workspace.open(ws, readonly=True) as w:
        res["after_extract"] = w.images(include_missing=True)
    res["csv"] = base / "tracks.csv"
    res["npz"] = base / "features.npz"
    cli_inproc("export-tracks", ws, res["csv"], expect=0)
    cli_inproc("export-features", ws, res["npz"], expect=0)
    # Query by an outside image file: one CLI run, then every hostile file through one Session
    # (a read-only query session embeds the whole gallery first; once is enough here).
    cam = hostile / "vis-a"
    res["query_cli"] = cli_inproc("query", ws, cam / "bomb.png", "--top-k", "3", expect=2).text
    res["queries"] = {}
    from itkm_engine.errors import ItkmError
    from itkm_engine.session import Session

    with Session.open(ws, readonly=True) as s:
        for name in ("zero.jpg", "trunc_head.jpg", "trunc_body.jpg", "text.jpg", "bomb.png", "one_pixel.png",
                     "broken_link.jpg", "loop_a.jpg", "fifo.jpg"):
            with pytest.raises(ItkmError) as exc:
                s.query_file(cam / name, k=3)
            res["queries"][name] = str(exc.value)
        res["query_odd"] = s.query_file(cam / ODD_OK[1], k=3)
    yield res
    assert snapshot(hostile) == before, "the user's camera folder was modified"


def _status(table, name_bytes: bytes) -> tuple[str, ...]:
    from itkm_engine.data.imageio import text_to_relpath

    return tuple(str(s) for r, s in zip(table.relpath, table.status)
                 if os.fsencode(text_to_relpath(r)).endswith(b"/" + name_bytes))


def test_ingest_rejects_each_hostile_file_with_its_reason(pipeline):
    from itkm_engine.workspace import Workspace

    with Workspace.open(pipeline["ws"], readonly=True) as w:
        rejects = {os.path.basename(r.relpath): r.reason for r in w.rejects()}
    for name, why in REJECTED.items():
        assert name in rejects, (name, rejects)
        assert why in rejects[name], (name, rejects[name])
    # every reason is also in the CLI's summary table
    for why in {"empty file", "not an image", "too large", "too small", "broken or looping link", "permission denied"}:
        assert why in pipeline["ingest"], why
    table = pipeline["ingested"]
    for name in ODD_OK + ["trunc_body.jpg"]:
        assert _status(table, os.fsencode(name)) == ("ok",), name
    assert len(table) == len(set(zip(table.source_id.tolist(), table.relpath)))  # no duplicates


def test_training_skips_what_breaks_marks_it_and_completes(pipeline):
    rounds = pipeline["rounds"]
    assert [r.status for r in rounds] == ["done"]
    table = pipeline["after_train"]
    assert _status(table, b"trunc_body.jpg") == ("unreadable",)
    assert _status(table, pipeline["vanish_before_train"].name.encode()) == ("missing",)  # gone, not broken
    assert _status(table, pipeline["truncate_before_train"].name.encode()) == ("unreadable",)
    assert _status(table, pipeline["noperm_after_ingest"].name.encode()) == ("unreadable",)
    for name in ODD_OK:  # decoded fine in every stage
        assert _status(table, os.fsencode(name)) == ("ok",), name
    assert "could not be read" in pipeline["train"]
    assert_workspace_whole(pipeline["ws"])


def test_extraction_reports_marks_and_skips_what_broke_since(pipeline):
    table = pipeline["after_extract"]
    assert _status(table, pipeline["vanish_before_extract"].name.encode()) == ("missing",)
    assert _status(table, pipeline["truncate_before_extract"].name.encode()) == ("unreadable",)
    assert "1 missing, 1 unreadable" in pipeline["extract"], pipeline["extract"]
    ok = int((table.status == "ok").sum())
    assert f"{ok} features" in pipeline["extract"]


def test_exports_hold_exactly_the_usable_images(pipeline):
    from itkm_engine.data.imageio import relpath_to_text

    table = pipeline["after_extract"]
    usable = {relpath_to_text(p) for p, s in zip(table.path, table.status) if s == "ok"}
    rows = read_csv(pipeline["csv"])
    col = rows[0].index("image_path")
    assert {r[col] for r in rows[1:]} == usable
    with np.load(pipeline["npz"], allow_pickle=False) as z:
        paths = set(z["path"].tolist())
        assert z["features"].shape[0] == len(usable) and np.isfinite(z["features"]).all()
    assert paths == {p for p, s in zip(table.path, table.status) if s == "ok"}
    for p in paths:  # every exported path opens the real file (non-UTF-8 bytes included)
        assert os.path.exists(p)


def test_query_with_a_hostile_file_is_one_clear_line(pipeline):
    expect = {"zero.jpg": "empty file", "trunc_head.jpg": "header", "trunc_body.jpg": "truncated",
              "text.jpg": "not an image", "bomb.png": "too large", "one_pixel.png": "too small",
              "broken_link.jpg": "link", "loop_a.jpg": "link", "fifo.jpg": "not a regular file"}
    for name, why in expect.items():
        assert why in pipeline["queries"][name], (name, pipeline["queries"][name])
    lines = [ln for ln in pipeline["query_cli"].splitlines() if ln.startswith("itkm query: ")]
    assert len(lines) == 1 and "too large" in lines[0], pipeline["query_cli"]
    assert len(pipeline["query_odd"]) == 3  # a 16-bit PNG query works

# -- CSV: formula escaping and awkward names ---------------------------------------------------------
CAMERAS = ['=HYPERLINK("evil","click")', "+cam", "-cam", "@cam", "\tcam", "\rcam", 'cam,"q"', "caméra 東京",
           "line\nbreak"]
FILES = ['a,b "c".jpg', "new\nline.jpg", "ünï cödé 名前.jpg", "=1+2.jpg", "carriage\rreturn.jpg", "plain.jpg"]


def test_csv_export_escapes_formulas_and_round_trips_every_path(demo_dir, tmp_path):
    from itkm_engine.data.imageio import relpath_to_text

    crops = sorted((demo_dir / "visible-infrared" / "vis-a").glob("*.jpg"))
    root = tmp_path / "odd names"
    expected: set[tuple[str, str]] = set()
    k = 0
    for cam in CAMERAS:
        (root / cam).mkdir(parents=True)
        names = [os.fsencode(f) for f in FILES] + ([b"bytes\xff\xfe.jpg"] if cam == "+cam" else [])
        for name in names:
            dst = os.path.join(os.fsencode(root / cam), name)
            shutil.copyfile(crops[k % len(crops)], dst)
            k += 1
            expected.add((cam, relpath_to_text(os.fsdecode(dst))))
    before = snapshot(root)
    ws = tmp_path / "ws"
    cli_inproc("ingest", ws, root, "--scenario", "cross-camera", expect=0)
    use_preset(ws, "tiny")  # no training needed: the untrained model gives features and identities
    out = tmp_path / "tracks.csv"
    p = run_cli("export-tracks", ws, out)  # the real CLI process
    assert "Traceback" not in p.stderr

    rows = read_csv(out)
    header, body = rows[0], rows[1:]
    assert len(body) == len(expected)
    got = set()
    for r in body:
        cells = dict(zip(header, r))
        for c in TEXT_COLUMNS:  # no cell a spreadsheet would evaluate
            assert not cells[c].startswith(FORMULA), (c, cells[c])
        cam = cells["camera"]
        if cam.startswith("'") and cam[1:].startswith(FORMULA):
            cam = cam[1:]
        got.add((cam, cells["image_path"]))
    assert got == expected
    # the escape is exactly one leading quote, and only where needed
    cams = {dict(zip(header, r))["camera"] for r in body}
    assert cams == {("'" + c if c.startswith(FORMULA) else c) for c in CAMERAS}
    # and a spreadsheet-style reader (csv.DictReader) sees the same number of records
    with open(out, encoding="utf-8", newline="") as fh:
        assert sum(1 for _ in csv.DictReader(fh)) == len(expected)

    cli_inproc("export-features", ws, tmp_path / "f.npz", expect=0)
    with np.load(tmp_path / "f.npz", allow_pickle=False) as z:
        assert {(c, relpath_to_text(pth)) for c, pth in zip(z["camera"].tolist(), z["path"].tolist())} == expected
    assert snapshot(root) == before
