"""Issue 10.3: every sub-command with malformed arguments, values and paths answers with exit 2,
no traceback, and writes nothing (the workspace, the camera folders and the output folder are
byte-for-byte as before).  Most cases run in-process (a subprocess costs 1-2 s here); a few go
through the real ``itkm`` command."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from helpers.cli import cli_inproc, run_cli
from helpers.reliability import snapshot
from helpers.workspaces import copy_ws

WS, DEMO, OUT = "{ws}", "{demo}", "{out}"


def _image(demo: Path) -> str:
    return str(sorted(demo.rglob("*.jpg"))[0])


def _camera(demo: Path) -> str:
    return sorted(p.name for p in (demo / "visible-infrared").iterdir() if p.is_dir())[0]


#: (sub-command, arguments); {ws}, {demo}, {out}, {img}, {cam} are filled in.
CASES = [
    ("", []),
    ("", ["no-such-command"]),
    ("demo-data", ["demo-data"]),
    ("demo-data", ["demo-data", "{out}/d", "--identities", "0"]),
    ("demo-data", ["demo-data", "{out}/d", "--identities", "many"]),
    ("demo-data", ["demo-data", "{out}/d", "--seed", "-1"]),
    ("demo-data", ["demo-data", "{img}"]),
    ("demo-data", ["demo-data", "/dev/null"]),
    ("demo-data", ["demo-data", ""]),
    ("ingest", ["ingest", "{ws}"]),
    ("ingest", ["ingest", "{ws}", "{out}/missing"]),
    ("ingest", ["ingest", "{ws}", ""]),
    ("ingest", ["ingest", "{ws}", "/dev/null"]),
    ("ingest", ["ingest", "{ws}", "{img}"]),
    ("ingest", ["ingest", "{ws}", "{demo}", "--layout", "bogus"]),
    ("ingest", ["ingest", "{ws}", "{demo}", "--scenario", "moon"]),
    ("ingest", ["ingest", "{img}", "{demo}"]),
    ("ingest", ["ingest", "/dev/null", "{demo}"]),
    ("cameras", ["cameras", "{out}/missing"]),
    ("cameras", ["cameras", "{ws}", "--set", "{cam}"]),
    ("cameras", ["cameras", "{ws}", "--set", "no-such-cam", "scenario=visible-infrared"]),
    ("cameras", ["cameras", "{ws}", "--set", "{cam}", "scenario=moon"]),
    ("cameras", ["cameras", "{ws}", "--set", "{cam}", "group=purple"]),
    ("cameras", ["cameras", "{ws}", "--set", "{cam}", "colour=red"]),
    ("cameras", ["cameras", "{ws}", "--set", "{cam}", "scenario"]),
    ("train", ["train", "{ws}", "--rounds", "0"]),
    ("train", ["train", "{ws}", "--rounds", "-3"]),
    ("train", ["train", "{ws}", "--rounds", "x"]),
    ("train", ["train", "{ws}", "--preset", "huge"]),
    ("train", ["train", "{ws}", "--preset", "quick"]),
    ("train", ["train", "{ws}", "--config", "{out}/missing.toml"]),
    ("train", ["train", "{ws}", "--config", "{img}"]),
    ("train", ["train", "{ws}", "--config", "{demo}"]),
    ("train", ["train", "{ws}", "--device", "quantum"]),
    ("train", ["train", "{ws}", "--set", "stage1.epochs=-1"]),
    ("train", ["train", "{ws}", "--set", "stage2.batch_size=0"]),
    ("train", ["train", "{ws}", "--set", "stage1.lr=nan"]),
    ("train", ["train", "{ws}", "--set", "stage1.lr=-Infinity"]),
    ("train", ["train", "{ws}", "--set", "=3"]),
    ("train", ["train", "{ws}", "--set", "stage1"]),
    ("train", ["train", "{ws}", "--set", "stage1=3"]),
    ("train", ["train", "{ws}", "--set", "cluster.eps=[1,2]"]),
    ("train", ["train", "{ws}", "--set", "model.image_size=[64]"]),
    ("train", ["train", "{ws}", "--set", "model.name=ViT-bigG-14"]),
    ("train", ["train", "{ws}", "--set", "data.workers=true"]),
    ("train", ["train", "{out}/missing"]),
    ("status", ["status", "{out}/missing"]),
    ("status", ["status", "{img}"]),
    ("status", ["status", ""]),
    ("status", ["status", "{demo}"]),
    ("extract", ["extract", "{ws}", "--device", "tpu:x"]),
    ("extract", ["extract", "{out}/missing"]),
    ("query", ["query", "{ws}", "99999999"]),
    ("query", ["query", "{ws}", "{out}/missing.jpg"]),
    ("query", ["query", "{ws}", "/dev/null"]),
    ("query", ["query", "{ws}", "{demo}"]),
    ("query", ["query", "{ws}", ""]),
    ("query", ["query", "{ws}", "  ", "--text"]),
    ("query", ["query", "{ws}", "1", "--top-k", "-1"]),
    ("query", ["query", "{ws}", "1", "--top-k", "0"]),
    ("query", ["query", "{ws}", "1", "--top-k", "1e9"]),
    ("query", ["query", "{ws}", "1", "--device", "gpu"]),
    ("query", ["query", "{out}/missing", "1"]),
    ("evaluate", ["evaluate", "{out}/missing"]),
    ("evaluate", ["evaluate", "{ws}", "--device", "nope"]),
    ("export-tracks", ["export-tracks", "{ws}", ""]),
    ("export-tracks", ["export-tracks", "{ws}", "{out}"]),
    ("export-tracks", ["export-tracks", "{ws}", "/dev/null"]),
    ("export-tracks", ["export-tracks", "{ws}", "{ws}/itkm.sqlite"]),
    ("export-tracks", ["export-tracks", "{ws}", "{img}"]),
    ("export-tracks", ["export-tracks", "{ws}", "{out}/no/such/folder.csv"]),
    ("ingest", ["ingest", "", "{demo}"]),
    ("demo-data", ["demo-data", "  "]),
    ("export-tracks", ["export-tracks", "{ws}", "{out}/x.csv", "--device", "cuda:x"]),
    ("export-features", ["export-features", "{ws}", ""]),
    ("export-features", ["export-features", "{ws}", "{demo}"]),
    ("export-features", ["export-features", "{ws}", "{ws}/config.toml"]),
    ("export-features", ["export-features", "{out}/missing", "{out}/f.npz"]),
    # Trust (issue 16, section 4): the sub-commands added since, and ids that are no numbers.
    ("confirm", ["confirm", "{ws}", "²", "1"]),
    ("confirm", ["confirm", "{ws}", "1"]),
    ("confirm", ["confirm", "{ws}", "1", "1"]),
    ("confirm", ["confirm", "{ws}", "1", "99999999"]),
    ("confirm", ["confirm", "{ws}", "1", "9" * 5000]),
    ("confirm", ["confirm", "{ws}", "", "1"]),
    ("confirm", ["confirm", "{ws}", "{out}/missing.jpg", "1"]),
    ("confirm", ["confirm", "{out}/missing", "1", "2"]),
    ("reject", ["reject", "{ws}", "1", "99999999999999999999"]),
    ("reject", ["reject", "{ws}", "1", "-3"]),
    ("reject", ["reject", "{ws}", "1", "1.5"]),
    ("reject", ["reject", "{ws}", "1", "{img}x"]),
    ("query", ["query", "{ws}", "²"]),
    ("query", ["query", "{ws}", "9" * 5000]),
    ("identities", ["identities", "{ws}", "--name", "abc", "Alice"]),
    ("identities", ["identities", "{ws}", "--name", "99999999999999999999", "Alice"]),
    ("identities", ["identities", "{ws}", "--name", "999999", "Alice"]),
    ("identities", ["identities", "{ws}", "--name", "1"]),
    ("identities", ["identities", "{ws}", "--note", "seen twice"]),
    ("identities", ["identities", "{ws}", "--review", "0"]),
    ("identities", ["identities", "{ws}", "--review", "-1"]),
    ("identities", ["identities", "{ws}", "--review", "many"]),
    ("identities", ["identities", "{ws}", "--limit", "0"]),
    ("identities", ["identities", "{ws}", "--limit", "-1"]),
    ("identities", ["identities", "{ws}", "--merge", "1", "1"]),
    ("identities", ["identities", "{ws}", "--merge", "1", "²"]),
    ("identities", ["identities", "{ws}", "--merge", "1", "99999"]),
    ("identities", ["identities", "{ws}", "--merge", "1", "-2"]),
    ("identities", ["identities", "{ws}", "--split", "99999999"]),
    ("identities", ["identities", "{ws}", "--split", "²"]),
    ("identities", ["identities", "{ws}", "--merge", "1", "2", "--undo"]),
    ("identities", ["identities", "{out}/missing"]),
    ("identities", ["identities", "{ws}", "--device", "quantum"]),
    ("export-onnx", ["export-onnx", "{ws}", "{out}/enc.txt"]),
    ("export-onnx", ["export-onnx", "{ws}", ""]),
    ("export-onnx", ["export-onnx", "{ws}", "{ws}/checkpoints/enc.onnx"]),
    ("export-onnx", ["export-onnx", "{ws}", "{out}/no/such/enc.onnx"]),
    ("export-onnx", ["export-onnx", "{ws}", "{demo}/enc.onnx"]),
    ("export-onnx", ["export-onnx", "{ws}", "{ws}/exports/.tmp-enc.onnx"]),
    ("export-onnx", ["export-onnx", "{ws}", "{out}/enc.onnx", "--group", "purple"]),
    ("export-onnx", ["export-onnx", "{ws}", "{out}/enc.onnx", "--device", "cuda:x"]),
    ("export-onnx", ["export-onnx", "{out}/missing", "{out}/enc.onnx"]),
    # Bytes that are not UTF-8 (Python hands them over as surrogate escapes, as here).
    ("identities", ["identities", "{ws}", "--name", "1", "a\udcffb"]),
    ("identities", ["identities", "{ws}", "--name", "1", "Alice", "--note", "n\udcfe"]),
    ("identities", ["identities", "{ws}", "--split", "\udcff"]),
    ("confirm", ["confirm", "{ws}", "\udcff", "1"]),
    ("ingest", ["ingest", "{ws}", "{demo}", "--site", "s\udcff"]),
    ("cameras", ["cameras", "{ws}", "--set", "{cam}", "scenario=\udcff"]),
    ("cameras", ["cameras", "{ws}", "--set", "cam\udcff", "scenario=visible-infrared"]),
    ("export-tracks", ["export-tracks", "{ws}", "{ws}/exports/.tmp-tracks.csv"]),
    # Decisions (issue 17): search-and-answer.
    ("answer", ["answer", "{ws}", "{out}/missing.jpg"]),
    ("answer", ["answer", "{ws}", "99999999"]),
    ("answer", ["answer", "{ws}", "1", "--top-k", "0"]),
    ("answer", ["answer", "{ws}", "1", "--yes", "1"]),
    ("answer", ["answer", "{ws}", "1", "--yes", "2", "--no", "2"]),
    ("answer", ["answer", "{ws}", "1", "--no", "nope.jpg"]),
    ("answer", ["answer", "{out}/missing", "1"]),
    ("answer", ["answer", "{ws}", "²"]),
    ("answer", ["answer", "{ws}", "1", "--yes", "\udcff"]),
]


@pytest.fixture(scope="module")
def world(trained_ws_template, demo_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    ws = copy_ws(trained_ws_template, base / "ws")
    out = base / "out"
    out.mkdir()
    # The identities of the round, computed once and cached (a derived cache the first
    # `identities` command would otherwise write while refusing a later argument).
    rc, _, err = cli_inproc("identities", ws)
    assert rc == 0, err
    return {"ws": ws, "demo": demo_dir, "out": out, "img": _image(demo_dir), "cam": _camera(demo_dir)}


def fill(args: list[str], world: dict) -> list[str]:
    return [a.format(**{k: str(v) for k, v in world.items()}) for a in args]


def state(world: dict) -> tuple:
    """Everything a failed command must leave as it was: every file under the workspace, the camera
    folders and the output folder, and the database's content (its files' bytes may move with WAL
    checkpoints on close, so it is compared by content; SQLite's planner statistics in
    ``sqlite_stat1`` are no content: a writer's close runs ``PRAGMA optimize``, which analyzes a
    table the first time a command searched it -- the identity lineage when an id is looked up)."""
    ws = world["ws"]
    files = {k: v for k, v in snapshot(ws).items() if not k.startswith(b"itkm.sqlite") and k != b"workspace.lock"}
    con = sqlite3.connect(f"file:{ws / 'itkm.sqlite'}?mode=ro", uri=True)
    try:
        dump = [line for line in con.iterdump() if not line.startswith('INSERT INTO "sqlite_stat')]
    finally:
        con.close()
    return files, dump, snapshot(world["demo"]), snapshot(world["out"])


def check_refusal(rc: int, err: str, command: str) -> None:
    assert rc == 2, (rc, err[-2000:])
    assert "Traceback" not in err, err
    if command:
        lines = [ln for ln in err.splitlines() if ln.startswith(f"itkm {command}: ")]
        assert len(lines) == 1, err


@pytest.mark.parametrize("command,args", CASES, ids=[" ".join(a)[:60] or "(none)" for _, a in CASES])
def test_malformed_input_exits_2_without_traceback_and_writes_nothing(world, command, args):
    before = state(world)
    rc, _, err = cli_inproc(*fill(args, world))
    check_refusal(rc, err, command)
    assert state(world) == before


@pytest.mark.parametrize("args", [
    ["train", "{ws}", "--set", "stage1.lr=NaN"],
    ["query", "{ws}", "1", "--top-k", "-1"],
    ["export-tracks", "{ws}", ""],
])
def test_a_few_through_the_real_command(world, args):
    before = state(world)
    p = run_cli(*fill(args, world), check=False)
    check_refusal(p.returncode, p.stderr, args[0])
    assert state(world) == before


@pytest.mark.parametrize("args", [
    [b"identities", b"{ws}", b"--name", b"1", b"a\xffb"],
    [b"identities", b"{ws}", b"--name", b"1", b"Alice", b"--note", b"\xfe"],
    [b"ingest", b"{ws}", b"{demo}", b"--site", b"s\xff"],
    [b"cameras", b"{ws}", b"--set", b"cam\xff", b"scenario=visible-infrared"],
    [b"confirm", b"{ws}", "²".encode(), b"1"],
    [b"reject", b"{ws}", b"1", b"99999999999999999999"],
], ids=["name", "note", "site", "camera", "superscript-two", "huge-id"])
def test_bytes_that_are_not_utf8_and_ids_that_are_no_numbers_through_the_real_command(world, args):
    """Issue 16, section 4: a Latin-1 terminal's bytes (UnicodeEncodeError deep in SQLite) and
    ids such as '²' (ValueError) or 20 digits (OverflowError) were tracebacks, exit 1."""
    import subprocess
    import sys

    from helpers.cli import CLI_ENV, REPO

    argv = [a.replace(b"{ws}", os.fsencode(world["ws"])).replace(b"{demo}", os.fsencode(world["demo"])) for a in args]
    before = state(world)
    p = subprocess.run([os.fsencode(sys.executable), b"-m", b"itkm_engine.cli", *argv], env=CLI_ENV, cwd=REPO,
                       capture_output=True, timeout=300)
    err = p.stderr.decode("utf-8", "replace")
    check_refusal(p.returncode, err, args[0].decode())
    assert state(world) == before
