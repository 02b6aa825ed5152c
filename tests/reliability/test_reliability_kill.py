"""kill -9 of the real CLI during ingest, training, extraction and export, at seeded random points.

Every scenario copies a prepared workspace, starts ``python -m itkm_engine.cli ...`` as a
subprocess, waits for a point in its run (a line on its stderr progress output, or a row appearing
in the workspace database -- what the app's read-only views see), sleeps a seeded random delay and
sends SIGKILL.  Then:

* the workspace is whole (:func:`helpers.reliability.assert_workspace_whole`): integrity check,
  no duplicate rows, opens read-only and for writing (the dead process's lock is taken over), no
  ``.tmp-*`` survivor after that writer open, every checkpoint / feature chunk / CSV loads;
* files written before the killed command are byte-identical (earlier checkpoint, earlier export);
* running the same command again completes, and what it produced is complete (row counts equal the
  files on disk, the epoch log has every epoch once, a killed round resumes after its last
  completed epoch instead of starting again).

The runs: 3 ingest + 5 train + 2 extract + 2 export = 12 kills.
"""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import CLI_ENV, REPO, cli_inproc, run_cli, spawn_cli
from helpers.reliability import (
    assert_workspace_whole,
    file_digest,
    read_csv,
    snapshot,
    sqlite_checks,
    tmp_leftovers,
    wait_db,
)
from helpers.workspaces import copy_ws

TINY = ["--preset", "tiny"]


# -- shared data (once per module) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(demo_dir, tmp_path_factory):
    """The demo camera set plus a bulk folder of 5,100 crops (hard links: three ingest batches of
    2,000, so a kill can land between batch transactions).  Snapshot of both, to prove at the
    end that nothing the user owns was touched."""
    bulk = tmp_path_factory.mktemp("bulk") / "cams"
    crops = sorted(p for p in demo_dir.rglob("*.jpg"))[:40]
    for c in range(3):
        cam = bulk / f"cam{c + 1}"
        cam.mkdir(parents=True)
        for i in range(1700):
            os.link(crops[(i + c) % len(crops)], cam / f"x_{i:05d}.jpg")
    before = {"demo": snapshot(demo_dir), "bulk": snapshot(bulk)}
    yield {"demo": demo_dir, "bulk": bulk, "n_bulk": 5100}
    assert snapshot(demo_dir) == before["demo"], "the demo camera folders were modified"
    assert snapshot(bulk) == before["bulk"], "the bulk camera folders were modified"


@pytest.fixture(scope="module")
def small_trained_ws(small_ws_template, tmp_path_factory) -> Path:
    """The small workspace (one scenario; each of the many training runs below takes seconds)
    after one round of ``itkm train --preset tiny``.  Not the demo workspace of ``trained_ws``."""
    path = copy_ws(small_ws_template, tmp_path_factory.mktemp("trained") / "ws")
    cli_inproc("train", path, *TINY, expect=0)
    return path


@pytest.fixture(scope="module")
def exported_ws(small_trained_ws, tmp_path_factory):
    """The trained demo workspace after ``export-tracks`` and ``export-features`` (so its
    features of the round-1 checkpoint are cached): the base of the kill scenarios that must
    leave an earlier checkpoint and an earlier export intact."""
    path = copy_ws(small_trained_ws, tmp_path_factory.mktemp("exported") / "ws")
    cli_inproc("export-tracks", path, path / "exports" / "tracks.csv", expect=0)
    cli_inproc("export-features", path, path / "exports" / "features.npz", expect=0)
    return path


def db_rows(ws: Path, sql: str, params=()) -> list[tuple]:
    con = sqlite3.connect((ws / "itkm.sqlite").as_uri() + "?mode=ro", uri=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def kill_and_check(run, ws: Path) -> None:
    """SIGKILL, then: the kill really interrupted the command, and the workspace it left is
    whole *before* any rerun (the stale lock is still there at this point)."""
    from itkm_engine.lock import pid_alive, read_lock_info

    rc = run.kill9()
    assert rc is None, f"the command finished (rc={rc}) before the kill; nothing was tested\n{run.text()}"
    assert "Traceback" not in run.text(), run.text()
    holder = read_lock_info(ws / "workspace.lock")
    if holder is not None:  # the dead writer's lock is still there: the next open must take it over
        assert holder.pid == run.proc.pid and not pid_alive(holder.pid)
    if has_schema(ws):
        assert_workspace_whole(ws)
    elif (ws / "itkm.sqlite").exists():  # killed while creating the workspace: at most an empty db
        assert sqlite_checks_raw(ws) == "ok"


def has_schema(ws: Path) -> bool:
    if not (ws / "itkm.sqlite").exists():
        return False
    return bool(db_rows(ws, "SELECT count(*) FROM sqlite_master WHERE name = 'meta'")[0][0])


def sqlite_checks_raw(ws: Path) -> str:
    return db_rows(ws, "PRAGMA integrity_check")[0][0]


def assert_epoch_log_contiguous(ws: Path) -> dict[tuple[int, str], list[int]]:
    """Every round's epochs per stage are 0..n-1, each once; done rounds have every stage."""
    rows = db_rows(ws, "SELECT round, stage, epoch FROM epochs ORDER BY round, stage, epoch")
    per: dict[tuple[int, str], list[int]] = {}
    for r, s, e in rows:
        per.setdefault((r, s), []).append(e)
    for key, epochs in per.items():
        assert epochs == list(range(len(epochs))), f"gap or duplicate in the epoch log of {key}: {epochs}"
    return per


def kill_at(args, at_s: float, prepare) -> "object":
    """Start ``itkm args`` on a freshly ``prepare()``-d workspace and return it, still running,
    ``at_s`` seconds later.  When it finished sooner (this machine was faster this time), start
    again from a fresh workspace and stop it earlier."""
    for _attempt in range(5):
        prepare()
        run = spawn_cli(*args)
        time.sleep(at_s)
        if run.proc.poll() is None:
            return run
        run.kill9()
        at_s *= 0.6
    raise AssertionError(f"itkm {args} always finished within {at_s:.2f} s; cannot kill it mid-run")


def timed_run(*args) -> float:
    t0 = time.monotonic()
    run_cli(*args)
    return time.monotonic() - t0


# -- ingest ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ingest_span(inputs, tmp_path_factory) -> float:
    """Seconds a full ``itkm ingest`` of the bulk folder takes here, interpreter start included."""
    return timed_run("ingest", tmp_path_factory.mktemp("probe") / "ws", inputs["bulk"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_ingest_then_rerun_completes_without_duplicates(inputs, ingest_span, tmp_path, seed):
    rng = random.Random(1000 + seed)
    ws = tmp_path / "ws"
    # Anywhere from creating the workspace, through the scan and the three batch transactions,
    # to the camera guesses at the end.
    run = kill_at(["ingest", ws, inputs["bulk"]], rng.uniform(0.3, 0.97) * ingest_span,
                  lambda: shutil.rmtree(ws, ignore_errors=True))
    kill_and_check(run, ws)
    if has_schema(ws):
        n = sqlite_checks(ws)["images"]
        # Batches are whole transactions: a kill leaves whole batches of 2,000, never part of one.
        assert n % 2000 == 0 or n == inputs["n_bulk"], n
    # Rerun the same command (in this process): it takes over the dead process's lock and completes.
    cli_inproc("ingest", ws, inputs["bulk"], expect=0)
    info = assert_workspace_whole(ws)
    assert info["images"] == inputs["n_bulk"], info  # one row per file on disk, no more
    assert info["rejects"] == 0
    ok = db_rows(ws, "SELECT count(*) FROM images WHERE status = 'ok'")[0][0]
    assert ok == inputs["n_bulk"]
    cams = db_rows(ws, "SELECT name FROM cameras ORDER BY name")
    assert [c[0] for c in cams] == ["cam1", "cam2", "cam3"]


# -- training -------------------------------------------------------------------------------------
def test_kill_train_after_first_epoch_resumes_at_the_second(small_ws_template, inputs, tmp_path):
    """A round with stage1.epochs=3 killed after epoch 1 of Stage I resumes at epoch 2."""
    ws = copy_ws(small_ws_template, tmp_path / "ws")
    args = ["train", ws, *TINY, "--set", "stage1.epochs=3", "--set", "stage2.epochs=1"]
    run = spawn_cli(*args)
    assert wait_db(ws, "SELECT count(*) FROM epochs WHERE round = 1 AND stage = 'stage1' AND epoch = 0",
                   timeout=300, proc=run), run.text()
    kill_and_check(run, ws)

    logged = db_rows(ws, "SELECT stage, epoch, finished FROM epochs WHERE round = 1 ORDER BY stage, epoch")
    assert [(s, e) for s, e, _ in logged][:1] == [("stage1", 0)]
    done = max(e for s, e, _ in logged if s == "stage1")  # the last completed epoch (0 unless slow kill)
    assert done < 2, "the kill came too late to test a resume inside Stage I"
    from itkm_engine.model.checkpoint import load_checkpoint

    progress = load_checkpoint(ws / "checkpoints" / "progress.pt")
    assert (progress["round"], progress["stage"], progress["epoch"]) == (1, "stage1", done)
    assert not (ws / "checkpoints" / "round_0001.pt").exists()

    log = cli_inproc(*args, expect=0).text
    assert f"resuming round 1 after stage1 epoch {done + 1}" in log, log
    after = db_rows(ws, "SELECT stage, epoch, finished FROM epochs WHERE round = 1 ORDER BY stage, epoch")
    before_t = {(s, e): t for s, e, t in logged}
    for s, e, t in after:
        if (s, e) in before_t:  # completed before the kill: not trained again
            assert t == before_t[(s, e)], f"{s} epoch {e} was redone after the resume"
    per = assert_epoch_log_contiguous(ws)
    assert per[(1, "stage1")] == [0, 1, 2] and per[(1, "stage2")] == [0] and per[(1, "stage3")] == [0]
    rounds = db_rows(ws, "SELECT number, status FROM rounds")
    assert rounds == [(1, "done")], rounds
    assert not (ws / "checkpoints" / "progress.pt").exists()
    assert_workspace_whole(ws)


#: The real CLI, with SIGKILL sent to itself at the one instant a random kill rarely hits: after
#: Stage I epoch 1's progress file is written, before its row reaches the epoch log.
KILL_BEFORE_LOG = """
import os, signal, sys
import itkm_engine.workspace as w
orig = w.Workspace.log_epoch
def log_epoch(self, round, stage, epoch, values):
    if (stage, epoch) == ("stage1", 1):
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(self, round, stage, epoch, values)
w.Workspace.log_epoch = log_epoch
from itkm_engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_between_progress_file_and_epoch_log_leaves_no_gap(small_ws_template, tmp_path):
    import subprocess

    ws = copy_ws(small_ws_template, tmp_path / "ws")
    args = ["train", str(ws), *TINY, "--set", "stage1.epochs=3", "--set", "stage2.epochs=1"]
    p = subprocess.run([__import__("sys").executable, "-c", KILL_BEFORE_LOG, *args], env=CLI_ENV, cwd=REPO,
                       capture_output=True, timeout=600)
    assert p.returncode == -9, p.stderr.decode()[-2000:]
    from itkm_engine.model.checkpoint import load_checkpoint

    progress = load_checkpoint(ws / "checkpoints" / "progress.pt")
    assert (progress["stage"], progress["epoch"]) == ("stage1", 1)
    assert db_rows(ws, "SELECT stage, epoch FROM epochs ORDER BY epoch") == [("stage1", 0)]  # epoch 1 unlogged
    log = cli_inproc(*args, expect=0).text
    assert "resuming round 1 after stage1 epoch 2" in log, log
    per = assert_epoch_log_contiguous(ws)
    assert per[(1, "stage1")] == [0, 1, 2], per
    values = db_rows(ws, "SELECT values_json FROM epochs WHERE stage = 'stage1' AND epoch = 1")[0][0]
    assert "loss" in values  # the epoch's real values, carried in the progress file
    assert db_rows(ws, "SELECT number, status FROM rounds") == [(1, "done")]


# The killed round runs longer than the tiny preset's few steps, so the kill points below land
# inside it however fast the machine is (the tiny round alone finishes in about a second).
LONG_ROUND = ["--set", "stage1.epochs=3", "--set", "stage2.epochs=6", "--set", "stage3.epochs=3",
              "--set", "stage3.iters_per_epoch=6"]

# (where to wait, extra random delay in seconds): a row the round writes as it gets there.
TRAIN_POINTS = [
    ("SELECT count(*) FROM rounds WHERE number = 2", 0.5),  # base extraction / Stage I epoch 0
    ("SELECT count(*) FROM rounds WHERE number = 2 AND stage = 'stage2'", 0.3),
    ("SELECT count(*) FROM rounds WHERE number = 2 AND stage = 'stage3'", 0.3),
    ("SELECT count(*) FROM epochs WHERE round = 2 AND stage = 'stage3' AND epoch = 2", 0.02),  # final checkpoint
]


@pytest.mark.parametrize("point", range(len(TRAIN_POINTS)))
def test_kill_train_round_keeps_earlier_checkpoint_and_export(exported_ws, tmp_path, point):
    rng = random.Random(2000 + point)
    ws = copy_ws(exported_ws, tmp_path / "ws")
    ckpt1 = ws / "checkpoints" / "round_0001.pt"
    keep = {p: file_digest(p) for p in (ckpt1, ws / "exports" / "tracks.csv", ws / "exports" / "features.npz")}
    sql, spread = TRAIN_POINTS[point]
    run = spawn_cli("train", ws, *TINY, *LONG_ROUND)
    assert wait_db(ws, sql, timeout=300, proc=run), run.text()
    time.sleep(rng.uniform(0.0, spread))
    kill_and_check(run, ws)
    for p, digest in keep.items():
        assert file_digest(p) == digest, f"{p.name} changed when a later round was killed"

    resumable = (ws / "checkpoints" / "progress.pt").exists()
    # A kill can land after round 2 was recorded done (while the command embeds with the new
    # checkpoint); then `itkm train` rightly runs one more round.  Otherwise it must finish round 2.
    finished_before_kill = db_rows(ws, "SELECT status FROM rounds WHERE number = 2") == [("done",)]
    log = cli_inproc("train", ws, *TINY, expect=0).text
    if resumable:
        assert "resuming round 2" in log, log
    rounds = db_rows(ws, "SELECT number, status FROM rounds ORDER BY number")
    assert rounds[-1][1] == "done" and all(s != "running" for _, s in rounds), rounds
    last = 3 if finished_before_kill else 2
    assert rounds[0] == (1, "done") and rounds[-1][0] == last, rounds  # the killed round was finished, not abandoned
    per = assert_epoch_log_contiguous(ws)
    assert {s for (r, s) in per if r == 2} == {"stage1", "stage2", "stage3"}
    for p, digest in keep.items():
        assert file_digest(p) == digest
    info = assert_workspace_whole(ws)
    assert info["files"]["pt"] == last  # one round_000N.pt per round, no progress.pt left


# -- extraction -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_kill_extract_then_rerun_matches_a_clean_extraction(small_trained_ws, exported_ws, tmp_path, seed):
    rng = random.Random(3000 + seed)
    ws = copy_ws(small_trained_ws, tmp_path / "ws")
    from itkm_engine.model.checkpoint import checkpoint_key

    key = checkpoint_key(ws / "checkpoints" / "round_0001.pt")
    shutil.rmtree(ws / "features" / key)  # training cached them; extract must do the work again
    run = spawn_cli("extract", ws)
    assert run.wait_for(r"embedding \d+ of \d+ images", timeout=300), run.text()
    # The embedding of this small workspace lasts ~1.3 s on an idle machine: kill inside it.
    time.sleep(rng.uniform(0.0, 0.5))
    kill_and_check(run, ws)
    out = cli_inproc("extract", ws, expect=0).text
    n_images = sqlite_checks(ws)["images"]
    assert re.search(rf"^{n_images} features", out, re.M), out
    assert_workspace_whole(ws)
    # The rerun's cache equals the one an uninterrupted run wrote (same checkpoint, same images).
    from itkm_engine.features import FeatureCache

    got = FeatureCache(ws / "features" / key).load()
    ref = FeatureCache(exported_ws / "features" / key).load()
    assert len(got) == len(ref) == n_images
    order_g, order_r = np.argsort(got.ids), np.argsort(ref.ids)
    assert np.array_equal(got.ids[order_g], ref.ids[order_r])
    assert np.allclose(got.feats[order_g], ref.feats[order_r], atol=2e-3)


def same_export(path: Path, data: bytes) -> bool:
    """Whether the file at ``path`` holds the export ``data`` (an NPZ is compared by its arrays:
    its zip members carry the time they were written)."""
    if path.suffix != ".npz":
        return path.read_bytes() == data
    with np.load(path, allow_pickle=False) as a, np.load(io.BytesIO(data), allow_pickle=False) as b:
        return sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)


# -- export ---------------------------------------------------------------------------------------
EXPORTS = [("export-tracks", "tracks.csv"), ("export-features", "features.npz")]


@pytest.mark.parametrize("which", range(len(EXPORTS)))
def test_kill_export_keeps_the_earlier_file_whole(exported_ws, tmp_path, which):
    """The export is rewritten at the same path after the operator changed a camera's scenario
    (so the new file differs); a kill leaves the old file byte-identical or the complete new one."""
    rng = random.Random(4000 + which)
    command, name = EXPORTS[which]
    base = copy_ws(exported_ws, tmp_path / "base")
    cam = db_rows(base, "SELECT name FROM cameras ORDER BY name")[0][0]
    cli_inproc("cameras", base, "--set", cam, "scenario=cross-camera", expect=0)
    ws = tmp_path / "ws"
    out = ws / "exports" / name
    old = (base / "exports" / name).read_bytes()
    other = ws / "exports" / EXPORTS[1 - which][1]
    other_digest = file_digest(base / "exports" / EXPORTS[1 - which][1])

    # How long the command takes end to end here, measured on a copy; the kill lands uniformly
    # inside that span.  The copy's result is also what a completed export must hold.
    probe = copy_ws(base, tmp_path / "probe")
    span = timed_run(command, probe, probe / "exports" / name)
    new = (probe / "exports" / name).read_bytes()
    assert not same_export(base / "exports" / name, new)

    def prepare():
        shutil.rmtree(ws, ignore_errors=True)
        copy_ws(base, ws)

    run = kill_at([command, ws, out], rng.uniform(0.4, 0.97) * span, prepare)
    kill_and_check(run, ws)
    assert same_export(out, old) or same_export(out, new), "the export file is half-written"
    assert file_digest(other) == other_digest
    cli_inproc(command, ws, out, expect=0)
    assert same_export(out, new)
    assert file_digest(other) == other_digest
    assert tmp_leftovers(ws) == []
    if name.endswith(".csv"):
        rows = read_csv(out)
        assert len(rows) - 1 == sqlite_checks(ws)["images"]
