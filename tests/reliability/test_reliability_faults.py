"""Faults around the workspace, through the ``itkm`` CLI: a checkpoint that would run code, a
full disk, a read-only workspace, a second writer, a workspace from another schema version.

The CLI runs in a process of its own where the fault is about processes (the writer holding the
workspace, an upgrading CLI) and where a test is about the real command line; elsewhere its
``main`` runs in the test's process (or in the mount namespace's one process), saving the
seconds each fresh interpreter spends importing torch.

Full disk and read-only are real where the kernel lets an unprivileged user make a mount namespace
(``unshare --user --map-root-user --mount``): a small tmpfs that fills up, and a read-only bind
mount (root ignores ``chmod``, not a read-only mount).  Where that is not possible those tests
skip, and the injected-``ENOSPC`` tests below still run everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers.cli import CLI_ENV, REPO, cli_inproc, one_line, spawn_cli
from helpers.reliability import (
    assert_workspace_whole,
    file_digest,
    snapshot,
    sqlite_checks,
    tmp_leftovers,
    wait_db,
)
from helpers.workspaces import copy_ws


def one_line_error(p, command: str) -> str:
    """:func:`one_line` of a subprocess's answer."""
    return one_line(p.returncode, p.stderr, command)


# -- a checkpoint that would run code --------------------------------------------------------------
class Payload:
    """Unpickling this calls ``os.mkdir(marker)``: stands for any code a crafted file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def fake_finished_round(ws_path: Path, ckpt: Path) -> None:
    """Register ``ckpt`` as the checkpoint of a finished round 1 (what a user copying a file into
    the workspace, or a tampered workspace, amounts to)."""
    from itkm_engine.workspace import Workspace

    with Workspace.open(ws_path) as ws:
        n = ws.start_round("{}", None)
        ws.update_round(n, status="done", checkpoint=str(ckpt))


@pytest.mark.parametrize("writer,command", [("torch.save", "extract"), ("pickle.dump", "train")])
def test_crafted_pickle_checkpoint_is_refused_and_its_code_never_runs(small_ws_template, tmp_path, writer, command):
    """The crafted file, written with torch.save or plain pickle, as the workspace's latest
    checkpoint (what `itkm extract` loads) or as the progress of an interrupted round (what
    `itkm train` resumes from)."""
    ws = copy_ws(small_ws_template, tmp_path / "ws")
    marker = tmp_path / "code-ran"
    evil = {"format": "itkm-checkpoint-v1", "round": 1, "model": Payload(marker)}
    name = "round_0001.pt" if command == "extract" else "progress.pt"
    ckpt = ws / "checkpoints" / name
    with open(ckpt, "wb") as fh:
        torch.save(evil, fh) if writer == "torch.save" else pickle.dump(evil, fh)
    fake_finished_round(ws, ckpt)
    if command == "train":
        db = sqlite3.connect(ws / "itkm.sqlite")
        db.execute("UPDATE rounds SET status = 'running', checkpoint = NULL")  # interrupted: resume it
        db.commit()
        db.close()
        p = cli_inproc("train", ws, "--preset", "tiny")
    else:
        p = cli_inproc("extract", ws)
    line = one_line(p.rc, p.err, command)
    assert name in line and "refused" in line and "trust" in line, line
    assert not marker.exists(), "loading the crafted file ran its code"

    # The file really is dangerous: an unrestricted load runs its payload.
    with open(ckpt, "rb") as fh:
        try:
            torch.load(fh, weights_only=False)
        except Exception:  # noqa: BLE001 - the payload's return value is not a valid object: fine
            pass
    assert marker.is_dir(), "the test payload is inert; it proves nothing"


# -- full disk and read-only workspace (real mounts in a private mount namespace) -------------------
def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    p = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                        "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d && rmdir $d"],
                       capture_output=True)
    return p.returncode == 0


needs_mounts = pytest.mark.skipif(not _can_unshare(), reason="no unprivileged mount namespace here "
                                  "(the injected-ENOSPC tests below cover the same code paths)")

#: Runs inside the namespace: mounts, runs CLI steps, records what each returned, copies the
#: workspace back out (the mount disappears with the namespace).  The steps run the CLI's
#: ``main`` one after another in this one process (a fresh interpreter per step cost a torch
#: import each: 2-4 s, far more on a busy machine); the disk and the mounts are real.
DRIVER = textwrap.dedent(r"""
    import contextlib, io, json, os, shutil, subprocess, sys, traceback
    cfg = json.loads(sys.argv[1])
    os.environ.update(cfg["env"])
    os.chdir(cfg["repo"])
    sys.path.insert(0, cfg["repo"])
    results = {}

    def cli(args):
        from itkm_engine.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(args)
            except SystemExit as exc:  # argparse
                rc = exc.code
            except BaseException:  # what an uncaught error would print, exit 1
                traceback.print_exc()
                rc = 1
        return {"rc": rc, "stdout": out.getvalue()[-30000:], "stderr": err.getvalue()[-6000:]}

    def fill(mnt, free_kb):
        # Leave about free_kb KiB free: reserve it, fill the rest, release the reserve.
        for name in ("filler", "reserve"):
            if os.path.exists(os.path.join(mnt, name)):
                os.unlink(os.path.join(mnt, name))
        if free_kb is None:
            return
        with open(os.path.join(mnt, "reserve"), "wb") as fh:
            fh.write(b"\0" * (free_kb * 1024))
        with open(os.path.join(mnt, "filler"), "wb", buffering=0) as fh:
            for size in (1 << 20, 1 << 12):
                try:
                    while True:
                        fh.write(b"\0" * size)
                except OSError:
                    pass
        os.unlink(os.path.join(mnt, "reserve"))

    if cfg["mode"] == "tmpfs":
        mnt = cfg["mnt"]
        os.makedirs(mnt, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm" % cfg["size_mb"], "tmpfs", mnt], check=True)
        ws = os.path.join(mnt, "ws")
        shutil.copytree(cfg["ws"], ws)
        for step in cfg["steps"]:
            fill(mnt, step["free_kb"])
            r = cli([a.replace("{ws}", ws) for a in step["args"]])
            tracks = os.path.join(ws, "exports", "tracks.csv")
            r["tracks"] = open(tracks, "rb").read().hex() if os.path.exists(tracks) else None
            r["free_kb"] = shutil.disk_usage(mnt).free // 1024
            results[step["name"]] = r
        fill(mnt, None)
        shutil.copytree(ws, cfg["out"], symlinks=True)
    else:  # read-only bind mount of the workspace over itself
        ws = cfg["ws"]
        subprocess.run(["mount", "--bind", ws, ws], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", ws], check=True)
        for step in cfg["steps"]:
            results[step["name"]] = cli([a.replace("{ws}", ws) for a in step["args"]])
    json.dump(results, open(cfg["result"], "w"))
""")


def in_namespace(cfg: dict, tmp_path: Path) -> dict:
    cfg = {**cfg, "env": {k: v for k, v in CLI_ENV.items()}, "repo": str(REPO), "result": str(tmp_path / "result.json")}
    p = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", DRIVER, json.dumps(cfg)],
                       capture_output=True, timeout=900)
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    return json.loads((tmp_path / "result.json").read_text())


@needs_mounts
def test_disk_full_gives_one_clear_line_and_loses_nothing(trained_ws_template, tmp_path):
    """A 64 MiB tmpfs is filled up to a few KiB / MiB before each command."""
    from itkm_engine.model.checkpoint import checkpoint_key

    src = copy_ws(trained_ws_template, tmp_path / "src")
    ckpt_digest = file_digest(src / "checkpoints" / "round_0001.pt")
    bulk = tmp_path / "more"
    demo_crops = sorted(Path(p) for p in _demo_paths(src))[:20]
    for i in range(3000):
        cam = bulk / f"cam{i % 3}"
        cam.mkdir(parents=True, exist_ok=True)
        os.link(demo_crops[i % len(demo_crops)], cam / f"x_{i:05d}.jpg")
    cam = sqlite3.connect(src / "itkm.sqlite").execute("SELECT name FROM cameras ORDER BY name").fetchone()[0]
    out = tmp_path / "after"
    steps = [
        {"name": "train", "free_kb": 2048, "args": ["train", "{ws}", "--preset", "tiny"]},
        {"name": "export_ok", "free_kb": None, "args": ["export-tracks", "{ws}", "{ws}/exports/tracks.csv"]},
        {"name": "set_camera", "free_kb": None, "args": ["cameras", "{ws}", "--set", cam, "scenario=cross-camera"]},
        # 12 KiB: not even room for SQLite's 32 KiB WAL index; 48 KiB: the database opens, the CSV
        # (about 30 KiB) does not fit.
        {"name": "export_no_db", "free_kb": 12, "args": ["export-tracks", "{ws}", "{ws}/exports/tracks.csv"]},
        {"name": "export_full", "free_kb": 48, "args": ["export-tracks", "{ws}", "{ws}/exports/tracks.csv"]},
        {"name": "ingest_full", "free_kb": 64, "args": ["ingest", "{ws}", str(bulk)]},
        {"name": "no_room_for_lock", "free_kb": 0, "args": ["ingest", "{ws}", str(bulk)]},
        {"name": "status", "free_kb": None, "args": ["status", "{ws}"]},
    ]
    images_before = sqlite_checks(src)["images"]
    res = in_namespace({"mode": "tmpfs", "mnt": str(tmp_path / "mnt"), "size_mb": 64, "ws": str(src), "out": str(out),
                        "steps": steps}, tmp_path)

    line = one_line_error(_P(res["train"]), "train")
    assert "checkpoint" in line and "disk is full" in line and "unchanged" in line, line
    assert res["export_ok"]["rc"] == 0, res["export_ok"]
    assert res["set_camera"]["rc"] == 0, res["set_camera"]
    line = one_line_error(_P(res["export_no_db"]), "export-tracks")
    assert "disk is full" in line, line
    assert res["export_no_db"]["tracks"] == res["export_ok"]["tracks"], "the earlier export was damaged"
    line = one_line_error(_P(res["export_full"]), "export-tracks")
    assert "No space left on device" in line and "disk is full" in line, line
    assert res["export_full"]["tracks"] == res["export_ok"]["tracks"], "the earlier export was damaged"
    line = one_line_error(_P(res["ingest_full"]), "ingest")
    assert "disk full" in line or "disk is full" in line, line
    line = one_line_error(_P(res["no_room_for_lock"]), "ingest")
    assert "No space left on device" in line, line
    assert res["status"]["rc"] == 0, res["status"]

    # What came back out of the full disk: whole, the earlier checkpoint byte-identical, the
    # refused batch rolled back, and training can go on (the failed round 2 restarts).
    info = assert_workspace_whole(out)
    assert file_digest(out / "checkpoints" / "round_0001.pt") == ckpt_digest
    assert info["images"] == images_before, "rows of the refused ingest batch survived"
    assert not (out / "checkpoints" / "progress.pt").exists()
    rounds = sqlite3.connect(out / "itkm.sqlite").execute("SELECT number, status FROM rounds").fetchall()
    assert rounds[0] == (1, "done") and len(rounds) <= 2
    assert checkpoint_key(out / "checkpoints" / "round_0001.pt")


class _P:
    """A recorded CLI result shaped like subprocess.CompletedProcess for ``one_line_error``."""

    def __init__(self, r: dict) -> None:
        self.returncode, self.stderr, self.stdout = r["rc"], r["stderr"], r["stdout"]


def _demo_paths(ws: Path) -> list[str]:
    from itkm_engine.workspace import Workspace

    with Workspace.open(ws, readonly=True) as w:
        return list(w.images().path)


@needs_mounts
def test_read_only_workspace_reads_work_writes_refused_clearly(trained_ws_template, tmp_path):
    ws = copy_ws(trained_ws_template, tmp_path / "ws")
    before = snapshot(ws)
    steps = [
        {"name": "status", "args": ["status", "{ws}"]},
        {"name": "cameras", "args": ["cameras", "{ws}", "--json"]},
        {"name": "query", "args": ["query", "{ws}", "1", "--top-k", "3", "--json"]},
        {"name": "ingest", "args": ["ingest", "{ws}", str(tmp_path)]},
        {"name": "train", "args": ["train", "{ws}", "--preset", "tiny"]},
        {"name": "merge", "args": ["identities", "{ws}", "--merge", "0", "1"]},
        # Reads (issue 16, section 5): they failed here, asking for a writer.
        {"name": "export", "args": ["export-tracks", "{ws}", str(tmp_path / "tracks.csv")]},
        {"name": "identities", "args": ["identities", "{ws}", "--json"]},
        {"name": "review", "args": ["identities", "{ws}", "--review", "3", "--json"]},
        {"name": "evaluate", "args": ["evaluate", "{ws}"]},
    ]
    res = in_namespace({"mode": "ro", "ws": str(ws), "steps": steps}, tmp_path)
    for name in ("status", "cameras", "query", "export", "identities", "review", "evaluate"):
        assert res[name]["rc"] == 0, res[name]
    assert len(json.loads(res["query"]["stdout"])) == 3
    assert len(json.loads(res["review"]["stdout"])) == 3 and json.loads(res["identities"]["stdout"])
    assert "mAP" in res["evaluate"]["stdout"], res["evaluate"]
    # computed in memory, and said so
    assert "identities not stored: the workspace cannot be written here" in res["identities"]["stderr"]
    assert "evaluation not stored" in res["evaluate"]["stderr"]
    assert (tmp_path / "tracks.csv").is_file()
    for name, cmd in (("ingest", "ingest"), ("train", "train"), ("merge", "identities")):
        line = one_line_error(_P(res[name]), cmd)
        assert "read-only" in line or "cannot write" in line, line
    assert snapshot(ws) == before, "a refused write changed the read-only workspace"


# -- the same failures injected (portable) ---------------------------------------------------------
def test_injected_enospc_on_export_keeps_the_earlier_file(trained_ws_template, tmp_path, monkeypatch):
    import itkm_engine.export as export

    ws = copy_ws(trained_ws_template, tmp_path / "ws")
    out = ws / "exports" / "tracks.csv"
    rc, _, err = cli_inproc("export-tracks", ws, out)
    assert rc == 0, err
    old = out.read_bytes()
    real_open = export.atomic_open

    @contextlib.contextmanager
    def full(path, *a, **kw):
        """The real atomic write, whose data then does not fit (ENOSPC when it is flushed)."""
        with real_open(path, *a, **kw) as fh:
            yield fh
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export, "atomic_open", full)
    rc, _, err = cli_inproc("export-tracks", ws, out)
    monkeypatch.undo()
    assert rc == 2 and "Traceback" not in err, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("itkm export-tracks: ")]
    assert "No space left on device" in line and "disk is full" in line
    assert out.read_bytes() == old
    assert tmp_leftovers(ws) == []


def test_injected_enospc_on_checkpoint_is_a_clear_error_and_keeps_the_old_one(tmp_path, monkeypatch):
    from itkm_engine.errors import ItkmError
    from itkm_engine.model import checkpoint as ck

    path = tmp_path / "round_0001.pt"
    ck.save_checkpoint(path, {"model": {"w": torch.zeros(4)}})
    old = path.read_bytes()

    def short_write(obj, fh):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck.torch, "save", short_write)
    with pytest.raises(ItkmError, match="disk is full.*unchanged"):
        ck.save_checkpoint(path, {"model": {"w": torch.ones(4)}})
    assert path.read_bytes() == old and tmp_leftovers(tmp_path) == []


def test_injected_sqlite_full_during_ingest_rolls_back_the_batch(ingested_ws_template, tmp_path, monkeypatch):
    from itkm_engine.workspace import Workspace

    ws = copy_ws(ingested_ws_template, tmp_path / "ws")
    crops = _demo_paths(ws)[:10]
    more = tmp_path / "more"
    for i in range(2500):
        (more / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        os.link(crops[i % len(crops)], more / f"c{i % 2}" / f"x_{i:05d}.jpg")
    before = sqlite_checks(ws)
    orig = Workspace._pragmas

    def small_disk(con):
        orig(con)
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        con.execute(f"PRAGMA max_page_count = {pages + 8}")  # room for a few pages, not a batch

    monkeypatch.setattr(Workspace, "_pragmas", staticmethod(small_disk))
    rc, _, err = cli_inproc("ingest", ws, more)
    monkeypatch.undo()
    assert rc == 2 and "Traceback" not in err, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("itkm ingest: ")]
    assert "disk full" in line and "unchanged" in line, line
    after = assert_workspace_whole(ws)
    assert after["images"] == before["images"]
    rc, _, err = cli_inproc("ingest", ws, more)  # with room again the same command completes
    assert rc == 0, err
    assert sqlite_checks(ws)["images"] == before["images"] + 2500


# -- two writers -----------------------------------------------------------------------------------
def test_second_writer_refused_naming_the_holder_while_readers_work(small_ws_template, demo_dir, tmp_path):
    """The writer is a real ``itkm train`` process; the second writers and the readers are this
    test's process, another process to the trainer as any second ``itkm`` is."""
    ws = copy_ws(small_ws_template, tmp_path / "ws")
    # One Stage I epoch far longer than the test: the trainer is still writing when the others try
    # (killed in `finally`); a count of epochs would finish early on a fast machine.
    run = spawn_cli("train", ws, "--preset", "tiny", "--set", "stage1.iters_per_epoch=1000000")
    try:
        assert wait_db(ws, "SELECT count(*) FROM rounds WHERE status = 'running'", timeout=300, proc=run), run.text()
        pid = run.proc.pid
        for args, cmd in (
            (["ingest", ws, demo_dir], "ingest"),
            (["train", ws, "--preset", "tiny"], "train"),
            (["cameras", ws, "--set", "vis-a", "group=infrared"], "cameras"),
        ):
            line = one_line(*cli_inproc(*args)[::2], cmd)
            assert f"pid {pid}" in line and "read-only" in line, line
        st = cli_inproc("status", ws, "--json", expect=0)
        status = json.loads(st.out)
        assert status["rounds"][0]["status"] == "running" and status["images"] > 0
        q = cli_inproc("query", ws, "1", "--top-k", "3", "--json", expect=0)
        assert len(json.loads(q.out)) == 3
        assert run.proc.poll() is None, "training stopped while others read the workspace"
    finally:
        run.kill9()
    # The killed trainer's lock is stale now: the next writer takes it over and says so.
    p = cli_inproc("cameras", ws, "--set", "vis-a", "group=infrared", expect=0)
    assert "took over a stale workspace lock" in p.err and str(pid) in p.err, p.err
    assert_workspace_whole(ws)


# -- schema versions -------------------------------------------------------------------------------
def test_newer_schema_refused_by_every_command_and_left_untouched(ingested_ws_template, demo_dir, tmp_path):
    ws = copy_ws(ingested_ws_template, tmp_path / "ws")
    con = sqlite3.connect(ws / "itkm.sqlite")
    con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    before = snapshot(ws)
    for args, cmd in ((["status", ws], "status"), (["ingest", ws, demo_dir], "ingest"),
                      (["cameras", ws], "cameras")):
        line = one_line(*cli_inproc(*args)[::2], cmd)
        assert "newer ITKM Studio" in line and "999" in line, line
    # Untouched: SQLite's own (empty) WAL side files aside, which any reader may create.
    after = {k: v for k, v in snapshot(ws).items() if not k.endswith((b"-shm", b"-wal"))}
    assert after == {k: v for k, v in before.items() if not k.endswith((b"-shm", b"-wal"))}
    assert not (ws / "workspace.lock").exists()


MIGRATING_CLI = """
import sys
import itkm_engine.workspace as w
def v0_to_v1(con):
    con.execute("ALTER TABLE cameras ADD COLUMN sample_path TEXT")
w.MIGRATIONS[0] = v0_to_v1
from itkm_engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_older_schema_is_backed_up_then_migrated_by_the_cli(ingested_ws_template, demo_dir, tmp_path):
    """A version-0 workspace (cameras without ``sample_path``) opened by a CLI that knows the
    0 -> 1 migration: backup first, then upgrade, then the command runs."""
    ws = copy_ws(ingested_ws_template, tmp_path / "ws")
    con = sqlite3.connect(ws / "itkm.sqlite")
    con.execute("ALTER TABLE cameras DROP COLUMN sample_path")
    con.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    con.commit()
    n_cams = con.execute("SELECT count(*) FROM cameras").fetchone()[0]
    con.close()
    p = cli_inproc("status", ws)  # a reader upgrades first; this CLI has no 0 -> 1 step
    assert "cannot upgrade" in one_line(p.rc, p.err, "status")

    p = subprocess.run([sys.executable, "-c", MIGRATING_CLI, "ingest", str(ws), str(demo_dir)], env=CLI_ENV, cwd=REPO,
                       capture_output=True)
    assert p.returncode == 0, p.stderr.decode()[-3000:]
    assert "upgrading workspace schema from version 0" in p.stderr.decode()
    backup = ws / "itkm.sqlite.bak-v0"
    b = sqlite3.connect(backup)
    assert b.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "0"
    assert b.execute("SELECT count(*) FROM cameras").fetchone()[0] == n_cams
    b.close()
    info = assert_workspace_whole(ws)
    from itkm_engine.workspace import SCHEMA_VERSION

    assert info["version"] == str(SCHEMA_VERSION)
    p = cli_inproc("status", ws, "--json", expect=0)
    assert json.loads(p.out)["cameras"] == n_cams
