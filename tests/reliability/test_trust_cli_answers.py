"""Trust (issue 16), section 4: what the `itkm` command answers when a user gives it something odd
-- one line and exit 2, never a traceback -- and what it prints: names and notes escaped, a
closed output pipe met quietly, an out-of-memory round explained and left resumable.

The malformed-argument cases of every sub-command (ids such as '²', 20 or 5,000 digits, bytes
that are not UTF-8, --review 0, --note without --name, ...) are in test_reliability_fuzz.py;
this file has the cases that need a particular workspace state or a real process."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from helpers.cli import CLI_ENV, REPO, cli_cmd, cli_inproc, one_line


def _db(ws: Path) -> sqlite3.Connection:
    return sqlite3.connect(ws / "itkm.sqlite")


def test_split_of_an_image_ingested_after_the_last_round_is_one_line(trained_ws, demo_dir, tmp_path):
    """It was an IndexError: the new image has no row in the round's (stored) identities.  Since
    stable ids (ADR 0013) an image ingested later at a trained site joins its nearest identity
    (provisional) and can be split off; one at a site no round has trained on is in no identity."""
    assert cli_inproc("identities", trained_ws)[0] == 0  # the round's identities, listed and stored
    new = tmp_path / "later" / "vis-z"
    new.mkdir(parents=True)
    for src in sorted((demo_dir / "visible-infrared" / "vis-a").glob("*.jpg"))[:4]:
        shutil.copy(src, new / src.name.replace("c1", "c9"))
    rc, _, err = cli_inproc("ingest", trained_ws, tmp_path / "later", "--site", "annex")
    assert rc == 0, err
    newest = _db(trained_ws).execute("SELECT max(id) FROM images").fetchone()[0]
    before = _db(trained_ws).execute("SELECT count(*) FROM decisions").fetchone()[0]
    rc, _, err = cli_inproc("identities", trained_ws, "--split", str(newest))
    line = one_line(rc, err, "identities")
    assert str(newest) in line and "no identity yet" in line and "train a round" in line, line
    assert _db(trained_ws).execute("SELECT count(*) FROM decisions").fetchone()[0] == before


@pytest.mark.parametrize("anchors", ["not json", "[1e400]", '{"a": 1}', "[-1]"])
def test_a_tampered_identity_name_is_left_out_with_a_warning(trained_ws, anchors):
    """``identity_names.anchors`` edited outside ITKM Studio was a JSONDecodeError /
    OverflowError traceback on every listing and export."""
    assert cli_inproc("identities", trained_ws, "--name", "1", "Alice")[0] == 0
    assert cli_inproc("identities", trained_ws, "--name", "2", "Bob")[0] == 0
    con = _db(trained_ws)
    con.execute("UPDATE identity_names SET anchors = ? WHERE name = 'Alice'", (anchors,))
    con.commit()
    rc, out, err = cli_inproc("identities", trained_ws, "--json")
    assert rc == 0 and "Traceback" not in err, err
    assert "damaged anchors" in err and "'Alice'" in err and err.count("damaged anchors") == 1, err
    names = [r["name"] for r in json.loads(out)]
    assert "Bob" in names and "Alice" not in names
    rc, _, err = cli_inproc("export-tracks", trained_ws, trained_ws / "exports" / "t.csv")
    assert rc == 0 and "damaged anchors" in err, err


def test_names_and_notes_are_printed_escaped(trained_ws):
    """An ESC sequence and a newline in a name or note came out raw: the terminal obeyed them."""
    name, note = "\x1b[2J\x1b[31mEvil\nsecond line", "\x1b]0;owned\x07 and\u202eevil"
    rc, out, err = cli_inproc("identities", trained_ws, "--name", "1", name, "--note", note)
    assert rc == 0, err
    assert "\x1b" not in out and out.count("\n") == 1, out
    rc, out, err = cli_inproc("identities", trained_ws)
    assert rc == 0, err
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, out
    assert "\\x1b[31mEvil\\nsecond line" in out and "\\u202e" in out, out
    widths = {len(line) for line in out.splitlines()[:2]}
    assert len(widths) == 1, out  # the header and its rule line up: no row broke the table
    rc, out, _ = cli_inproc("identities", trained_ws, "--json")  # JSON keeps the exact text
    assert any(r["name"] == name and r["note"] == note for r in json.loads(out))


def test_a_name_that_starts_with_a_dash(trained_ws):
    rc, out, err = cli_inproc("identities", trained_ws, "--name", "1", "--", "-x")
    assert rc == 0 and "'-x'" in out, err
    rc, out, err = cli_inproc("identities", trained_ws, "--name", "2", "Bob", "--note=-left early")
    assert rc == 0, err
    rows = json.loads(cli_inproc("identities", trained_ws, "--json")[1])
    assert {r["name"] for r in rows} >= {"-x", "Bob"}
    assert any(r["note"] == "-left early" for r in rows)


def _closed_pipe_run(*args) -> subprocess.CompletedProcess:
    """The command with its standard output a pipe nobody reads any more (``| head`` that has
    already exited)."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(cli_cmd(*args), env=CLI_ENV, cwd=REPO, stdout=w, stderr=subprocess.PIPE, timeout=300)
    finally:
        os.close(w)


def test_a_closed_output_pipe_is_quiet(trained_ws, tmp_path):
    """``itkm status | head`` and ``itkm demo-data ... | head`` were BrokenPipeError tracebacks."""
    p = _closed_pipe_run("status", trained_ws)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 141 and err == "", (p.returncode, err)
    p = _closed_pipe_run("demo-data", tmp_path / "demo", "--identities", "3")
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 141 and "Traceback" not in err and "BrokenPipe" not in err, (p.returncode, err)
    assert (tmp_path / "demo" / "demo_manifest.json").is_file()  # the work was done before the print


def test_out_of_memory_in_training_is_one_line_and_the_round_resumes(fresh_ws, monkeypatch):
    """A setting that passes validation but cannot be allocated: torch's allocator RuntimeError,
    a traceback, and the round left ``running``.  Now: one line naming the setting to lower; the
    round is ``cancelled`` (it stopped), and the rerun with that setting lowered resumes it."""
    import torch

    import itkm_engine.trainer as trainer

    real = trainer.run_stage

    def stage2_too_big(stage, **kw):
        if stage.name == "stage2":
            torch.empty(1 << 46, dtype=torch.uint8)  # 64 TiB: the real allocator refuses it
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 70368744177664 bytes")
        return real(stage, **kw)

    monkeypatch.setattr(trainer, "run_stage", stage2_too_big)
    rc, _, err = cli_inproc("train", fresh_ws, "--preset", "tiny")
    line = one_line(rc, err, "train")
    assert "out of memory" in line and "stage2.batch_size (now 16)" in line and "--set stage2.batch_size=8" in line, line
    assert "resumes" in line, line
    assert _db(fresh_ws).execute("SELECT status, stage FROM rounds").fetchall() == [("cancelled", "stage2")]
    assert (fresh_ws / "checkpoints" / "progress.pt").is_file()

    monkeypatch.setattr(trainer, "run_stage", real)
    rc, _, err = cli_inproc("train", fresh_ws, "--set", "stage2.batch_size=8")
    assert rc == 0, err
    assert "resuming round 1 after stage1" in err and "stage2.batch_size 16 -> 8" in err, err
    assert _db(fresh_ws).execute("SELECT number, status FROM rounds").fetchall() == [(1, "done")]


def test_out_of_memory_before_the_first_epoch_restarts_the_same_round(fresh_ws, monkeypatch):
    import itkm_engine.trainer as trainer

    real = trainer.run_stage

    def stage1_too_big(stage, **kw):
        if stage.name == "stage1":
            raise MemoryError("Unable to allocate 512. GiB for an array")
        return real(stage, **kw)

    monkeypatch.setattr(trainer, "run_stage", stage1_too_big)
    rc, _, err = cli_inproc("train", fresh_ws, "--preset", "tiny")
    line = one_line(rc, err, "train")
    assert "data.num_identities x data.num_instances" in line, line
    monkeypatch.setattr(trainer, "run_stage", real)
    rc, _, err = cli_inproc("train", fresh_ws)
    assert rc == 0, err
    assert _db(fresh_ws).execute("SELECT number, status FROM rounds").fetchall() == [(1, "done")]


def test_out_of_memory_outside_training_is_one_line(trained_ws, monkeypatch):
    """Extraction on a GPU too small for data.extract_batch_size: torch's OutOfMemoryError."""
    import torch

    from itkm_engine.session import Session

    def too_big(self, reporter=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Session, "features", too_big)
    rc, _, err = cli_inproc("extract", trained_ws)
    line = one_line(rc, err, "extract")
    assert "out of memory" in line and "data.extract_batch_size" in line, line
