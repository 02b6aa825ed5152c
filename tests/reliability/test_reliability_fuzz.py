"""Issue 10.3: every sub-command with malformed arguments, values and paths answers with exit 2,
no traceback, and writes nothing (the workspace, the camera folders and the output folder are
byte-for-byte as before).  Most cases run in-process (a subprocess costs 1-2 s here); a few go
through the real ``itkm`` command."""

from __future__ import annotations

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
    ("answer", ["answer", "{ws}", "{out}/missing.jpg"]),
    ("answer", ["answer", "{ws}", "99999999"]),
    ("answer", ["answer", "{ws}", "1", "--top-k", "0"]),
    ("answer", ["answer", "{ws}", "1", "--yes", "1"]),
    ("answer", ["answer", "{ws}", "1", "--yes", "2", "--no", "2"]),
    ("answer", ["answer", "{ws}", "1", "--no", "nope.jpg"]),
    ("answer", ["answer", "{out}/missing", "1"]),
]


@pytest.fixture(scope="module")
def world(trained_ws_template, demo_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    ws = copy_ws(trained_ws_template, base / "ws")
    out = base / "out"
    out.mkdir()
    return {"ws": ws, "demo": demo_dir, "out": out, "img": _image(demo_dir), "cam": _camera(demo_dir)}


def fill(args: list[str], world: dict) -> list[str]:
    return [a.format(**{k: str(v) for k, v in world.items()}) for a in args]


def state(world: dict) -> tuple:
    """Everything a failed command must leave as it was: every file under the workspace, the camera
    folders and the output folder, and the database's content (its files' bytes may move with WAL
    checkpoints on close, so it is compared by content)."""
    ws = world["ws"]
    files = {k: v for k, v in snapshot(ws).items() if not k.startswith(b"itkm.sqlite") and k != b"workspace.lock"}
    con = sqlite3.connect(f"file:{ws / 'itkm.sqlite'}?mode=ro", uri=True)
    try:
        dump = list(con.iterdump())
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
