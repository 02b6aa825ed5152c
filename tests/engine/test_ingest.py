"""Ingestion end to end: hostile folders never crash it, user files stay untouched, re-ingest is
idempotent, vanished files are kept as missing, cameras get the right scenario/group guess."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from itkm_engine.data.guess import MIXED_FLAG, assign_scenarios, guess_camera
from itkm_engine.data.imageio import BadImage, load_rgb, text_to_relpath
from itkm_engine.data.ingest import IngestSummary, ingest
from itkm_engine.errors import Cancelled, ItkmError, LayoutError
from itkm_engine.progress import CancelToken, Reporter
from itkm_engine.workspace import Workspace

from helpers.images import jpeg_of as _jpeg
from helpers.images import person_crop as _person
from helpers.images import png_claiming as _png_claiming
from helpers.images import put as _put

REPO = Path(__file__).resolve().parents[2]


# -- image makers -----------------------------------------------------------------------------


def _camera(root: Path, name: str, n: int, *, h: int = 128, w: int = 64, grey: bool = False, seed: int = 0,
            start: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(start, start + n):
        pid = 1 + i % 5
        _put(root / name / f"{pid:04d}_c1s1_{i * 10:06d}_00.jpg", _jpeg(_person(h, w, rng, grey=grey)))


def _snapshot(root: Path) -> dict[bytes, tuple]:
    """Every entry under root (bytes path -> content + mtime, or link target), without following links."""
    out = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if os.path.islink(p):
                out[p] = ("link", os.readlink(p), st.st_mtime_ns)
            elif os.path.isfile(p) and not name.endswith(b"pipe.jpg"):
                with open(p, "rb") as fh:
                    out[p] = ("file", fh.read(), st.st_mtime_ns, st.st_mode)
            else:
                out[p] = ("other", st.st_mode, st.st_mtime_ns)
    return out


@pytest.fixture
def ws(tmp_path):
    w = Workspace.open(tmp_path / "ws", create=True)
    yield w
    w.close()


# -- hostile input ----------------------------------------------------------------------------


@pytest.fixture
def hostile(tmp_path) -> Path:
    """A camera-folders root with every kind of bad file next to good ones."""
    root = tmp_path / "cams"
    _camera(root, "gate", 6, seed=1)
    _camera(root, "lobby", 5, seed=2)
    rng = np.random.default_rng(3)
    g = root / "gate"
    good = _jpeg(_person(128, 64, rng))
    _put(g / "zero.jpg", b"")
    _put(g / "truncated.jpg", good[: len(good) // 2])
    _put(g / "corrupt.jpg", good[:2] + b"\x00" * 64 + good[66:])
    _put(g / "text.jpg", b"I am a text file, not a photo\n")
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    _put(g / "one_pixel.png", buf.getvalue())
    _put(g / "bomb.png", _png_claiming(100_000, 100_000))
    buf = io.BytesIO()
    Image.new("CMYK", (40, 100), (0, 200, 200, 0)).save(buf, "JPEG")
    _put(g / "cmyk.jpg", buf.getvalue())
    Image.fromarray(np.full((100, 40), 40000, np.uint16)).save(g / "sixteen.png")
    pal = Image.new("P", (40, 100), 1)
    pal.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    pal.save(g / "palette.png")
    Image.new("RGBA", (40, 100), (10, 200, 10, 128)).save(g / "alpha.png")
    os.symlink(g / "nowhere.jpg", g / "broken_link.jpg")
    os.symlink(g / "self_loop.jpg", g / "self_loop.jpg")
    os.symlink(root, g / "loop_dir")  # a folder link back to the root
    if hasattr(os, "mkfifo"):
        os.mkfifo(g / "pipe.jpg")
    with open(os.fsencode(g) + b"/caf\xe9_\xff.jpg", "wb") as fh:  # not UTF-8
        fh.write(good)
    _put(g / "人物_ünïcode.jpg", good)
    _put(g / "anim.gif", b"GIF89a....")
    _put(root / "stray.jpg", good)  # outside any camera folder
    (root / "empty_cam").mkdir()
    os.utime(g / "cmyk.jpg", (1_000_000_000, 1_000_000_000))
    return root


def test_hostile_folder_never_crashes_and_records_every_reason(ws, hostile):
    before = _snapshot(hostile)
    summary = ingest(ws, hostile, layout="camera-folders")
    assert isinstance(summary, IngestSummary)

    reasons = {Path(r.relpath).name: r.reason for r in ws.rejects()}
    assert reasons["zero.jpg"] == "empty file (0 bytes)"
    assert "JPEG" in reasons["corrupt.jpg"] or "corrupt" in reasons["corrupt.jpg"]
    assert reasons["text.jpg"].startswith("not an image")
    assert reasons["one_pixel.png"].startswith("too small")
    assert reasons["bomb.png"].startswith("too large")
    assert reasons["broken_link.jpg"] == "broken or looping link"
    assert reasons["self_loop.jpg"] == "broken or looping link"
    assert "symlink loop" in reasons["loop_dir"]
    assert "unsupported file type .gif" in reasons["anim.gif"]
    assert "camera folder" in reasons["stray.jpg"]
    if hasattr(os, "mkfifo"):
        assert reasons["pipe.jpg"] == "not a regular file"
    # every reject but the stray is attributed to its camera
    assert {r.camera for r in ws.rejects() if Path(r.relpath).name != "stray.jpg"} == {"gate"}
    assert summary.unassigned_rejects == 1
    assert summary.rejected == len(reasons) == sum(summary.reject_reasons.values())

    table = ws.images()
    names = {Path(text_to_relpath(r)).name for r in table.relpath}
    # unusual but valid images are ingested; the truncated body is only found at decode time
    for ok in ("cmyk.jpg", "sixteen.png", "palette.png", "alpha.png", "truncated.jpg", "人物_ünïcode.jpg",
               os.fsdecode(b"caf\xe9_\xff.jpg")):
        assert ok in names, ok
    assert len(table) == 6 + 5 + 7
    with pytest.raises(BadImage, match="truncated"):
        load_rgb(hostile / "gate" / "truncated.jpg")
    rows = {r.camera: r for r in summary.cameras}
    assert rows["gate"].images == 13 and rows["gate"].rejected == len(reasons) - 1
    assert rows["lobby"].images == 5 and rows["lobby"].rejected == 0
    assert "empty_cam" not in rows  # an empty camera folder makes no camera

    # user files untouched: same entries, same bytes, same mtimes; nothing written into the folder
    assert _snapshot(hostile) == before


def test_non_utf8_relpath_round_trips_to_the_real_file(ws, hostile):
    ingest(ws, hostile, layout="camera-folders")
    table = ws.images()
    stored = [r for r in table.relpath if r.startswith("%%")]
    assert len(stored) == 1
    stored[0].encode("utf-8")
    real = hostile / text_to_relpath(stored[0])
    assert os.fsencode(real).endswith(b"caf\xe9_\xff.jpg")
    assert load_rgb(real).shape == (128, 64, 3)


def test_reingest_is_idempotent_then_tracks_new_and_deleted_files(ws, hostile):
    first = ingest(ws, hostile, layout="camera-folders")
    assert first.added == 18
    second = ingest(ws, hostile, layout="camera-folders")
    assert (second.added, second.updated, second.newly_missing) == (0, 0, 0)
    assert ws.image_count() == 18
    assert not second.sources[0].guessed  # nothing changed: stored guesses kept

    _camera(hostile, "lobby", 2, seed=9, start=100)
    gone = sorted((hostile / "gate").glob("0*_c1s1_*.jpg"))[0]
    gone.unlink()
    third = ingest(ws, hostile, layout="camera-folders")
    rows = {r.camera: r for r in third.cameras}
    assert rows["lobby"].added == 2 and rows["lobby"].images == 7
    assert third.newly_missing == 1 and rows["gate"].missing == 1
    full = ws.images(include_missing=True)
    status = dict(zip(full.relpath, full.status))
    assert status[f"gate/{gone.name}"] == "missing"  # kept, not dropped
    assert ws.image_count() == 18 + 2 - 1 and len(full) == 20

    _put(gone, _jpeg(_person(128, 64, np.random.default_rng(5))))  # it comes back
    fourth = ingest(ws, hostile, layout="camera-folders")
    assert fourth.newly_missing == 0 and {r.camera: r for r in fourth.cameras}["gate"].missing == 0
    assert ws.image_count() == 20


def test_empty_folder_and_bad_folders_write_nothing(ws, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="no images"):
        ingest(ws, tmp_path / "empty")
    good = tmp_path / "good"
    _camera(good, "cam1", 2)
    with pytest.raises(LayoutError, match="not found"):
        ingest(ws, [good, tmp_path / "missing"])  # the good one is not half-ingested first
    assert ws.sources() == [] and ws.image_count() == 0
    with pytest.raises(LayoutError, match="no images found .* 'sysu'"):
        ingest(ws, good, layout="sysu")
    with pytest.raises(LayoutError, match="unknown layout"):
        ingest(ws, good, layout="kitti")
    with pytest.raises(ItkmError, match="unknown scenario"):
        ingest(ws, good, scenario="underwater")
    assert ws.sources() == []


def test_non_utf8_root_is_refused_with_a_message(ws, tmp_path):
    raw = os.fsencode(tmp_path) + b"/d\xe9j\xe0"
    os.makedirs(raw + b"/cam1")
    with open(raw + b"/cam1/a.jpg", "wb") as fh:
        fh.write(_jpeg(_person(64, 32, np.random.default_rng(0))))
    with pytest.raises(LayoutError, match="not valid UTF-8"):
        ingest(ws, os.fsdecode(raw))


def test_camera_names_unique_across_sources(ws, tmp_path):
    a, b = tmp_path / "siteA", tmp_path / "siteB"
    _camera(a, "cam1", 3)
    _camera(b, "cam1", 2, seed=4)
    _camera(b, "cam2", 2, seed=5)
    ingest(ws, [a, b])
    names = {c.name: c.source_id for c in ws.cameras()}
    assert set(names) == {"cam1", "siteB:cam1", "cam2"}
    assert names["cam1"] != names["siteB:cam1"]
    again = ingest(ws, [b])  # stable on re-ingest
    assert {r.camera for r in again.cameras} == {"siteB:cam1", "cam2"} and again.added == 0


# -- progress and cancellation ----------------------------------------------------------------


def test_progress_stages_and_cancel_then_resume(ws, tmp_path):
    root = tmp_path / "cams"
    _camera(root, "a", 12, seed=1)
    _camera(root, "b", 12, seed=2)
    events = []
    ingest(ws, root, reporter=Reporter(on_event=events.append), batch_size=8)
    stages = [e.stage for e in events]
    for stage in ("scan", "headers", "guess", "write"):
        assert stage in stages
    fractions = [e.fraction for e in events if e.fraction is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    root2 = tmp_path / "more"
    _camera(root2, "c", 30, seed=3)
    token = CancelToken()
    seen = []

    def on_event(e):
        seen.append(e)
        if e.stage == "headers" and e.step and e.step >= 10:
            token.cancel()

    with pytest.raises(Cancelled):
        ingest(ws, root2, reporter=Reporter(on_event=on_event, cancel=token), batch_size=5)
    partial = ws.image_count()
    assert 24 + 5 <= partial < 24 + 30 and (partial - 24) % 5 == 0  # whole batches only
    done = ingest(ws, root2)
    assert ws.image_count() == 24 + 30
    assert done.added == 24 + 30 - partial


def test_kill_9_mid_ingest_leaves_whole_batches_and_rerun_completes(tmp_path):
    root = tmp_path / "cams"
    _camera(root, "a", 25, seed=1)
    _camera(root, "b", 25, seed=2)
    wsdir = tmp_path / "ws"
    Workspace.open(wsdir, create=True).close()
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from itkm_engine.workspace import Workspace
        from itkm_engine.data.ingest import ingest
        from itkm_engine.progress import Reporter
        def on_event(e):
            if e.stage == "headers" and e.step and e.step >= 20:
                os.kill(os.getpid(), signal.SIGKILL)
        ws = Workspace.open({str(wsdir)!r})
        ingest(ws, {str(root)!r}, reporter=Reporter(on_event=on_event), batch_size=10)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with Workspace.open(wsdir) as w:  # the dead writer's lock is stale: taken over
        partial = w.image_count()
        assert partial in (20, 30)  # batches of 10; never a half batch
        summary = ingest(w, root)
        assert w.image_count() == 50 and summary.added == 50 - partial
        assert {c.name: c.n_images for c in w.cameras()} == {"a": 25, "b": 25}


# -- scenario / group guessing ----------------------------------------------------------------


def test_guess_infrared_lowres_and_mixed(tmp_path):
    root = tmp_path / "cams"
    _camera(root, "vis", 8, seed=1)
    _camera(root, "ir", 8, seed=2, grey=True)
    _camera(root, "small", 8, seed=3, h=40, w=20)
    _camera(root, "daynight", 4, seed=4)
    _camera(root, "daynight", 4, seed=5, grey=True, start=50)
    paths = {c: sorted(str(p) for p in (root / c).iterdir()) for c in ("vis", "ir", "small", "daynight")}
    guesses = {c: guess_camera(p) for c, p in paths.items()}
    assert guesses["ir"].infrared and guesses["ir"].grey_fraction == 1.0
    assert not guesses["vis"].infrared and not guesses["vis"].mixed and guesses["vis"].mean_saturation > 0.15
    assert guesses["daynight"].mixed and not guesses["daynight"].infrared
    assert guesses["small"].median_height == 40 and guesses["vis"].median_height == 128
    assert guess_camera(paths["vis"], sample=3, seed=1) == guess_camera(paths["vis"], sample=3, seed=1)

    vi = assign_scenarios(guesses)
    assert vi["ir"] == ("visible-infrared", "infrared", None)
    assert vi["vis"][:2] == ("visible-infrared", "visible")
    assert vi["daynight"][2] == MIXED_FLAG

    no_ir = {c: g for c, g in guesses.items() if c in ("vis", "small")} | {"vis2": guesses["vis"]}
    cr = assign_scenarios(no_ir)
    assert cr["small"] == ("cross-resolution", "low-res", None)
    assert cr["vis"][:2] == cr["vis2"][:2] == ("cross-resolution", "high-res")
    plain = assign_scenarios({"vis": guesses["vis"], "vis2": guesses["vis"]})
    assert plain["vis"] == ("cross-camera", "all", None)
    hinted = assign_scenarios(guesses, "clothing-change")
    assert {v[:2] for v in hinted.values()} == {("clothing-change", "all")}
    hinted = assign_scenarios(guesses, "cross-resolution")
    assert hinted["small"][1] == "low-res" and hinted["ir"][1] == "high-res"


def test_ingest_guesses_and_keeps_operator_choices(ws, tmp_path):
    root = tmp_path / "cams"
    _camera(root, "vis", 6, seed=1)
    _camera(root, "ir", 6, seed=2, grey=True)
    _camera(root, "daynight", 3, seed=4)
    _camera(root, "daynight", 3, seed=5, grey=True, start=50)
    s = ingest(ws, root)
    rows = {r.camera: r for r in s.cameras}
    assert (rows["ir"].scenario, rows["ir"].group) == ("visible-infrared", "infrared")
    assert (rows["vis"].scenario, rows["vis"].group) == ("visible-infrared", "visible")
    assert rows["daynight"].flag == MIXED_FLAG
    cams = {c.name: c for c in ws.cameras()}
    assert cams["ir"].guessed_group == "infrared" and cams["ir"].median_height == 128
    assert cams["ir"].sample_path and Path(cams["ir"].sample_path).is_file()
    assert "visible-infrared" in s.format_table() and MIXED_FLAG in s.format_table()

    ws.set_camera("daynight", scenario="visible-infrared", group="infrared")
    _camera(root, "daynight", 1, seed=6, start=90)
    s2 = ingest(ws, root)
    row = {r.camera: r for r in s2.cameras}["daynight"]
    assert (row.scenario, row.group, row.user_set) == ("visible-infrared", "infrared", True)
    assert "*" in s2.format_table()


def test_scenario_hint_for_all_cameras(ws, tmp_path):
    root = tmp_path / "cams"
    _camera(root, "near", 5, seed=1)
    _camera(root, "far", 5, seed=2, h=48, w=24)
    _camera(root, "mid", 5, seed=3, h=120, w=60)
    s = ingest(ws, root, scenario="cross-resolution")
    groups = {r.camera: (r.scenario, r.group) for r in s.cameras}
    assert groups == {
        "near": ("cross-resolution", "high-res"),
        "far": ("cross-resolution", "low-res"),
        "mid": ("cross-resolution", "high-res"),
    }
    # Naming another scenario on an unchanged folder re-assigns its cameras.
    s = ingest(ws, root, scenario="clothing-change")
    assert s.added == 0 and {(r.scenario, r.group) for r in s.cameras} == {("clothing-change", "all")}


def test_sysu_layout_presets_groups(ws, tmp_path):
    root = tmp_path / "SYSU-MM01"
    rng = np.random.default_rng(0)
    for cam in range(1, 7):
        for pid in (1, 2):
            _put(root / f"cam{cam}" / f"{pid:04d}" / "0001.jpg", _jpeg(_person(128, 64, rng, grey=cam in (3, 6))))
    s = ingest(ws, root)
    groups = {r.camera: r.group for r in s.cameras}
    assert groups == {"cam1": "visible", "cam2": "visible", "cam3": "infrared", "cam4": "visible",
                      "cam5": "visible", "cam6": "infrared"}
    assert {r.scenario for r in s.cameras} == {"visible-infrared"} and not any(r.flag for r in s.cameras)
    table = ws.images()
    assert sorted(set(table.person_id.tolist())) == [1, 2]


def test_demo_set_guesses(ws, demo_dir):
    """The shared tiny demo set (conftest: identities=6): the guess must find its IR and low-res cameras."""
    s = ingest(ws, demo_dir)
    rows = {r.camera: r for r in s.cameras}
    assert (rows["ir-a"].scenario, rows["ir-a"].group) == ("visible-infrared", "infrared")
    assert (rows["lr-a"].scenario, rows["lr-a"].group) == ("cross-resolution", "low-res")
    assert rows["hr-a"].group == "high-res"
    assert all(r.group == "visible" for n, r in rows.items() if n.startswith("vis-"))
    assert {r.scenario for n, r in rows.items() if n.startswith("cc-")} == {"clothing-change"}
    assert s.rejected == 0 and (ws.images().person_id > 0).all()
