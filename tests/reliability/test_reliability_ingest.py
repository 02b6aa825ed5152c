"""Issue 10.6/10.7: ingest stays inside its folder (folder links that leave it are reported, not
followed), skips a workspace created inside it, warns about a renamed copy, and stops on SIGTERM
the way it stops on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from helpers.cli import cli_inproc


@pytest.fixture
def vi(demo_dir, tmp_path) -> Path:
    """A private copy of one demo scenario (camera folders)."""
    root = tmp_path / "data" / "vi"
    shutil.copytree(demo_dir / "visible-infrared", root)
    return root


def cameras_of(ws: Path) -> dict[str, int]:
    from itkm_engine.workspace import Workspace

    with Workspace.open(ws, readonly=True) as w:
        return {c.name: c.n_images for c in w.cameras()}


def image_paths(ws: Path) -> list[str]:
    from itkm_engine.workspace import Workspace

    with Workspace.open(ws, readonly=True) as w:
        return list(w.images(include_missing=True).path)


def test_folder_links_leaving_the_source_are_reported_not_followed(vi, demo_dir, tmp_path):
    cam = sorted(p for p in vi.iterdir() if p.is_dir())[0]
    (cam / "to_root").symlink_to("/")
    (cam / "elsewhere").symlink_to(demo_dir / "cross-resolution")  # real crops, but outside the source
    (vi / "camX").symlink_to(demo_dir / "clothing-change", target_is_directory=True)
    inside = vi / "zz_inner_link"
    inside.symlink_to(cam.name)  # a link that stays inside is still a folder of the source
    rc, out, err = cli_inproc("ingest", tmp_path / "ws", vi)
    assert rc == 0, err
    paths = image_paths(tmp_path / "ws")
    assert paths and all(os.path.realpath(p).startswith(str(vi) + os.sep) for p in paths)
    assert "camX" not in cameras_of(tmp_path / "ws") or cameras_of(tmp_path / "ws")["camX"] == 0
    from itkm_engine.workspace import Workspace

    with Workspace.open(tmp_path / "ws", readonly=True) as w:
        reasons = {r.relpath: r.reason for r in w.rejects()}
    for rel in (f"{cam.name}/to_root", f"{cam.name}/elsewhere", "camX"):
        assert "outside the ingested folder" in reasons.get(rel, ""), (rel, reasons)


def test_a_workspace_inside_the_source_is_skipped_and_detection_unchanged(vi, tmp_path):
    rc, _, err = cli_inproc("ingest", tmp_path / "outside_ws", vi)
    assert rc == 0, err
    expected = cameras_of(tmp_path / "outside_ws")
    rc, _, err = cli_inproc("ingest", vi / "my_ws", vi)
    assert rc == 0, err
    assert "inside" in err and "skipped" in err
    assert cameras_of(vi / "my_ws") == expected
    # a second run, now with checkpoints/ features/ folders of a workspace inside: still the same
    (vi / "my_ws" / "checkpoints" / "0001").mkdir(parents=True, exist_ok=True)
    rc, _, err = cli_inproc("ingest", vi / "my_ws", vi)
    assert rc == 0, err
    assert cameras_of(vi / "my_ws") == expected


def test_a_renamed_copy_of_an_ingested_folder_is_reported_as_duplicates(vi, tmp_path):
    rc, _, err = cli_inproc("ingest", tmp_path / "ws", vi)
    assert rc == 0 and "looks like a copy" not in err, err
    copy = tmp_path / "data" / "vi_backup"
    shutil.copytree(vi, copy)
    rc, _, err = cli_inproc("ingest", tmp_path / "ws", copy)
    assert rc == 0, err
    assert "looks like a copy" in err and str(vi) in err and "twice" in err


def test_sigterm_stops_ingest_like_ctrl_c_with_a_message(vi, tmp_path, monkeypatch):
    import itkm_engine.data.ingest as ingest_mod

    real, real_probe = ingest_mod.ingest, ingest_mod._probe_chunk
    calls = []

    def probe(root, items):
        calls.append(1)
        if len(calls) == 3:  # mid-ingest: earlier batches are committed
            os.kill(os.getpid(), signal.SIGTERM)
        return real_probe(root, items)

    def ingest_then_terminated(ws, folders, **kw):
        return real(ws, folders, batch_size=8, workers=1, **kw)

    monkeypatch.setattr(ingest_mod, "_probe_chunk", probe)
    monkeypatch.setattr(ingest_mod, "ingest", ingest_then_terminated)
    before = signal.getsignal(signal.SIGTERM)
    try:
        rc, _, err = cli_inproc("ingest", tmp_path / "ws", vi)
        assert signal.getsignal(signal.SIGTERM) == before  # main() puts the caller's handler back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert rc == 130, err
    assert "ingest stopped" in err and "run the same command again" in err
    assert "Traceback" not in err
    rc, _, err = cli_inproc("ingest", tmp_path / "ws", vi)  # and it finishes when run again
    assert rc == 0, err


def test_a_folder_that_is_not_a_workspace_names_a_command_that_exists(vi):
    rc, _, err = cli_inproc("status", vi)
    assert rc == 2 and "Traceback" not in err
    assert "--workspace" not in err and "itkm ingest WORKSPACE FOLDER" in err
    from itkm_engine.cli import build_parser

    with pytest.raises(SystemExit):  # the flag the old message suggested does not exist
        build_parser().parse_args(["ingest", "--workspace", "x", "y"])
