"""Issue 10.1: an export refuses every destination that is not a new name or a regular file, and
anything among the user's images or the workspace's own files; a replaced file keeps its mode, a
new one follows the umask."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from helpers.cli import cli_inproc, one_line, run_cli
from helpers.reliability import file_digest, snapshot


def a_demo_image(demo_dir: Path) -> Path:
    return next(p for p in sorted(demo_dir.rglob("*.jpg")))


@pytest.mark.parametrize("command", ["export-tracks", "export-features"])
def test_export_onto_an_ingested_image_or_the_database_is_refused_and_both_are_untouched(
        trained_ws, demo_dir, command):
    img = a_demo_image(demo_dir)
    before = file_digest(img)
    db_before = file_digest(trained_ws / "itkm.sqlite")
    line = one_line(*cli_inproc(command, trained_ws, img)[::2], command)
    assert "ingested camera folder" in line
    assert file_digest(img) == before
    for target in (trained_ws / "itkm.sqlite", trained_ws / "config.toml", trained_ws / "checkpoints" / "x.csv"):
        line = one_line(*cli_inproc(command, trained_ws, target)[::2], command)
        assert "inside the workspace" in line
    assert file_digest(trained_ws / "itkm.sqlite") == db_before
    assert not (trained_ws / "checkpoints" / "x.csv").exists()


def test_export_refuses_links_fifos_devices_sockets_folders_and_empty_names(trained_ws, tmp_path):
    target = tmp_path / "target.csv"
    target.write_text("keep me\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    sock_path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = {link: "symbolic link", fifo: "named pipe", Path("/dev/null"): "device", sock_path: "socket",
             folder: "folder", "": "empty"}
    try:
        for dest, words in cases.items():
            line = one_line(*cli_inproc("export-tracks", trained_ws, dest)[::2], "export-tracks")
            assert words in line, (dest, line)
    finally:
        sock.close()
    assert target.read_text() == "keep me\n" and link.is_symlink()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert list(folder.iterdir()) == []


def test_replacing_keeps_the_mode_and_a_new_file_follows_the_umask(trained_ws, tmp_path):
    old = tmp_path / "old.csv"
    old.write_text("x\n")
    old.chmod(0o444)
    rc, _, err = cli_inproc("export-tracks", trained_ws, old)
    assert rc == 0, err
    assert stat.S_IMODE(os.stat(old).st_mode) == 0o444
    assert old.read_text().startswith("identity_id,")
    mask = os.umask(0o027)
    try:
        rc, _, err = cli_inproc("export-features", trained_ws, tmp_path / "new.npz")
    finally:
        os.umask(mask)
    assert rc == 0, err
    assert stat.S_IMODE(os.stat(tmp_path / "new.npz").st_mode) == 0o640
    rc, _, err = cli_inproc("export-tracks", trained_ws, trained_ws / "exports" / "tracks.csv")
    assert rc == 0, err  # the workspace's own exports/ folder is fine


def test_export_onto_an_image_through_the_real_command(trained_ws, demo_dir):
    before = snapshot(demo_dir)
    p = run_cli("export-tracks", trained_ws, a_demo_image(demo_dir), check=False)
    one_line(p.returncode, p.stderr, "export-tracks")
    assert snapshot(demo_dir) == before
