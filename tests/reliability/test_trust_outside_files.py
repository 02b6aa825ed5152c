"""Trust (issue 16), section 2: files outside the workspace are never touched.

A workspace someone sends may hold links (a backup temporary linking to another project's
database, ``exports/`` linking to ``checkpoints/``); a destination folder may be swapped for a
link while an export runs; a user may keep a file named ``.tmp-*.csv`` in ``exports/``.  None of
it may make ITKM Studio write or delete anything but its own files."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from helpers.cli import cli_inproc, one_line, run_cli
from helpers.reliability import file_digest, snapshot


def _make_schema_v2(ws: Path) -> None:
    """What an ITKM Studio before the operator decisions (schema 3) left."""
    con = sqlite3.connect(ws / "itkm.sqlite")
    con.execute("DROP TABLE decisions")
    con.execute("DROP TABLE identity_names")
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.commit()
    con.close()


def _other_project(tmp_path: Path) -> Path:
    other = tmp_path / "other-project" / "data.sqlite"
    other.parent.mkdir()
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    con.executemany("INSERT INTO invoices (amount) VALUES (?)", [(i * 1.5,) for i in range(100)])
    con.commit()
    con.close()
    return other


@pytest.mark.parametrize("planted", [".tmp-itkm.sqlite.bak-v2", "itkm.sqlite.bak-v2", "dangling"])
def test_a_link_planted_for_the_upgrade_backup_is_never_followed(ingested_ws_template, tmp_path, planted):
    """``itkm status`` of an older workspace upgrades it after a backup; the backup went through a
    link named like its temporary (another project's database lost its table) or created a
    340 KB file where a dangling link pointed."""
    ws = tmp_path / "ws"
    shutil.copytree(ingested_ws_template, ws, ignore=shutil.ignore_patterns("workspace.lock"))
    _make_schema_v2(ws)
    other = _other_project(tmp_path)
    other_digest = file_digest(other)
    nowhere = tmp_path / "elsewhere" / "created.sqlite"
    nowhere.parent.mkdir()
    if planted == "dangling":
        (ws / ".tmp-itkm.sqlite.bak-v2").symlink_to(nowhere)
    else:
        (ws / planted).symlink_to(other)
    p = run_cli("status", ws)  # the real command: what a user who was sent the workspace runs
    assert file_digest(other) == other_digest and not os.path.lexists(nowhere), "a file outside the workspace changed"
    assert sqlite3.connect(other).execute("SELECT count(*) FROM invoices").fetchone()[0] == 100
    assert "upgrading workspace schema from version 2" in p.stderr and "itkm.sqlite.bak-v2" in p.stderr, p.stderr
    backup = ws / "itkm.sqlite.bak-v2"
    assert backup.is_file() and not backup.is_symlink()
    assert sqlite3.connect(backup).execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "2"
    assert not [p for p in ws.iterdir() if p.name.startswith(".tmp-")]


def test_exports_replaced_by_a_link_is_refused(trained_ws):
    """``exports -> checkpoints``: ``export-tracks WS WS/exports/round_0001.pt`` replaced the
    trained model with a CSV."""
    ckpt = trained_ws / "checkpoints" / "round_0001.pt"
    digest = file_digest(ckpt)
    shutil.rmtree(trained_ws / "exports")
    (trained_ws / "exports").symlink_to(trained_ws / "checkpoints")
    for name in ("round_0001.pt", "tracks.csv"):
        rc, _, err = cli_inproc("export-tracks", trained_ws, trained_ws / "exports" / name)
        line = one_line(rc, err, "export-tracks")
        assert "symbolic link" in line and "exports" in line, line
    assert file_digest(ckpt) == digest
    assert sorted(p.name for p in (trained_ws / "checkpoints").iterdir()) == ["round_0001.pt"]
    # A writer does not write through it either: the folder must be a real one.
    rc, _, err = cli_inproc("cameras", trained_ws, "--set", "vis-a", "group=infrared")
    assert "symbolic link" in one_line(rc, err, "cameras")


def test_a_feature_folder_linking_elsewhere_stops_a_writer(trained_ws, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    before = snapshot(outside)
    key = next(p for p in (trained_ws / "features").iterdir() if not p.name.startswith("init-"))
    shutil.rmtree(key)
    key.symlink_to(outside)  # the round's features would be written to (and damaged ones deleted from) there
    rc, _, err = cli_inproc("extract", trained_ws)
    line = one_line(rc, err, "extract")
    assert "symbolic link" in line and key.name in line, line
    assert snapshot(outside) == before


def _swap_for_link(folder: Path, target: Path) -> None:
    folder.rename(folder.with_name(folder.name + "-moved"))
    folder.symlink_to(target, target_is_directory=True)


def test_export_onnx_folder_swapped_for_a_link_while_exporting(trained_ws, demo_dir, tmp_path, monkeypatch):
    """Checked, then (while the encoder is traced) replaced by a link to a camera folder: the
    10 MB file landed among the user's images."""
    import torch

    cams = tmp_path / "cams"
    shutil.copytree(demo_dir / "visible-infrared" / "vis-a", cams / "vis-a")
    before = snapshot(cams)
    out = tmp_path / "for-tracker"
    out.mkdir()
    real = torch.onnx.export

    def swapped(*a, **kw):
        _swap_for_link(out, cams / "vis-a")
        return real(*a, **kw)

    monkeypatch.setattr(torch.onnx, "export", swapped)
    rc, _, err = cli_inproc("export-onnx", trained_ws, out / "enc.onnx", "--no-check")
    line = one_line(rc, err, "export-onnx")
    assert "replaced" in line and "nothing was written" in line, line
    assert snapshot(cams) == before
    assert list((tmp_path / "for-tracker-moved").iterdir()) == []


def test_export_tracks_folder_swapped_for_a_link_while_exporting(trained_ws, tmp_path, monkeypatch):
    from itkm_engine.session import Session

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    before = snapshot(victim)
    out = tmp_path / "out"
    out.mkdir()
    real = Session.identity_names

    def swapped(self):
        _swap_for_link(out, victim)
        return real(self)

    monkeypatch.setattr(Session, "identity_names", swapped)
    rc, _, err = cli_inproc("export-tracks", trained_ws, out / "tracks.csv")
    assert "replaced" in one_line(rc, err, "export-tracks")
    assert snapshot(victim) == before


def test_a_users_tmp_file_in_exports_is_never_deleted(trained_ws, tmp_path):
    """A user's own ``exports/.tmp-notes.csv`` was deleted by the next writer as a stale
    temporary; the workspace's own leftovers still go."""
    mine = trained_ws / "exports" / ".tmp-notes.csv"
    mine.write_text("my notes\n")
    leftovers = [trained_ws / "checkpoints" / ".tmp-round_0002.pt.k2j4x9qa",  # an earlier version's shape
                 trained_ws / "exports" / ".tmp-tracks.csv.0123456789ab.itkm-tmp"]
    for p in leftovers:
        p.write_bytes(b"half")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".tmp-theirs.itkm-tmp").write_text("not ours")
    (trained_ws / "exports" / "shared").symlink_to(outside)  # a link in the user's exports/: not followed
    rc, _, err = cli_inproc("cameras", trained_ws, "--set", "vis-a", "group=infrared")
    assert rc == 0, err
    assert mine.read_text() == "my notes\n"
    assert not any(p.exists() for p in leftovers)
    assert (outside / ".tmp-theirs.itkm-tmp").read_text() == "not ours"
    # ... and no export takes such a name inside the workspace.
    rc, _, err = cli_inproc("export-tracks", trained_ws, trained_ws / "exports" / ".tmp-new.csv")
    assert "temporary" in one_line(rc, err, "export-tracks")


def test_temporaries_are_created_exclusively_and_never_through_a_link(tmp_path, monkeypatch):
    """The temporary's name is random and opened O_EXCL | O_NOFOLLOW: a link planted under the
    next name is skipped, never written through."""
    import itkm_engine.atomic as atomic

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "ws"
    folder.mkdir()
    names = iter(["planted", "planted", "fresh"])
    monkeypatch.setattr(atomic, "temporary_name", lambda target: f".tmp-{target}.{next(names)}.itkm-tmp")
    (folder / ".tmp-out.csv.planted.itkm-tmp").symlink_to(victim)
    atomic.atomic_write_text(folder / "out.csv", "new")
    assert victim.read_text() == "precious"
    assert (folder / "out.csv").read_text() == "new"
    assert os.path.islink(folder / ".tmp-out.csv.planted.itkm-tmp")
