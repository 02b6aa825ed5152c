"""What the engine and the ``itkm`` command say things are worth (issue 18, sections 1 and 4):
text search off without CLIP's text weights (and recorded in the checkpoint), export-onnx on an
untrained workspace, CSV times from frame numbers marked, --rerank honoured or refused, score
columns that name what they are, --review narrow with the command to type, help texts, a loose
folder detected, sites set per camera and reported on re-ingest."""

from __future__ import annotations

import csv
import json
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import REPO, cli_inproc, one_line
from helpers.images import jpeg_bytes, put
from helpers.workspaces import copy_ws, use_preset


# -- 1. text search: off where the text tower is random, with one sentence --------------------------

def test_text_search_is_off_with_a_random_text_tower_and_says_how_to_get_it(trained_ws_template):
    line = one_line(*cli_inproc("query", trained_ws_template, "a person in a red jacket", "--text")[::2], "query")
    assert "Text search is off" in line and "no pretrained weights" in line
    assert "--preset full" in line and "--weights PATH" in line


def test_checkpoint_records_whether_the_text_tower_is_pretrained(trained_ws_template):
    from itkm_engine.model.checkpoint import load_checkpoint
    from itkm_engine.session import Session
    from itkm_engine.text_search import TextSearchUnavailable

    state = load_checkpoint(trained_ws_template / "checkpoints" / "round_0001.pt")
    assert state["model"]["text_pretrained"] is False
    with Session.open(trained_ws_template, readonly=True, device="cpu") as s:
        assert s.model().text_pretrained is False
        with pytest.raises(TextSearchUnavailable, match="Text search is off"):
            s.query_text("a dog")


def test_text_search_stays_on_for_a_model_with_clip_weights():
    from itkm_engine.config import preset
    from itkm_engine.text_search import text_tower_pretrained, unavailable_reason

    assert unavailable_reason(preset("full").model, "full") is None  # ViT-B-16 with OpenAI's weights
    assert text_tower_pretrained({"tower": "clip", "name": "ViT-B-16", "weights": "/models/clip.bin"})
    assert "quick preset" in unavailable_reason(preset("quick").model, "quick")
    # every tower that loads CLIP's weights is listed (a new one must be, or its text search is off)
    from itkm_engine.model.towers import TOWERS, tower_class
    from itkm_engine.text_search import CLIP_WEIGHT_TOWERS

    assert {n for n in TOWERS if tower_class(n).uses_clip_weights} == set(CLIP_WEIGHT_TOWERS)


# -- 1. ONNX: a dependency, and an untrained export says so --------------------------------------------

def test_onnx_and_onnxruntime_are_dependencies_of_the_install():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=;\s]", d, maxsplit=1)[0].lower() for d in deps}
    assert {"onnx", "onnxruntime"} <= names


def test_export_onnx_without_the_package_is_one_line(trained_ws_template, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # an installation without it
    line = one_line(*cli_inproc("export-onnx", trained_ws_template, tmp_path / "e.onnx")[::2], "export-onnx")
    assert "pip install onnx onnxruntime" in line


def test_export_onnx_of_an_untrained_workspace_says_so(ingested_ws_template, tmp_path):
    ws = copy_ws(ingested_ws_template, tmp_path / "ws")
    use_preset(ws)
    res = cli_inproc("export-onnx", ws, tmp_path / "e.onnx", "--no-check", expect=0)
    assert "INITIAL image encoder (not trained yet" in res.out
    assert "no trained round yet" in res.err
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "e.onnx")).metadata_props}
    assert meta["itkm.round"] == "null"


# -- 1. CSV times from frame numbers are marked --------------------------------------------------------

def test_csv_marks_times_made_from_frame_numbers(trained_ws_template, tmp_path):
    out = tmp_path / "tracks.csv"
    # a copy: an export stores the identities it computed (a read that can write keeps them), and
    # the shared template must stay as the fixture built it for the tests that read it afterwards
    cli_inproc("export-tracks", copy_ws(trained_ws_template, tmp_path / "ws"), out, expect=0)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert rows and "time_source" in rows[0]
    assert {r["time_source"] for r in rows} == {"frame_number"}  # the demo's names carry frame numbers
    for r in rows:  # seconds from the recording's start, never a made-up date
        assert not r["timestamp"].startswith("2000-") and float(r["timestamp"]) >= 0


def test_csv_keeps_real_dates_for_file_times():
    from itkm_engine.data.timestamps import FILE_TIME, time_source
    from itkm_engine.export import iso_time

    assert time_source(1.7e9) == FILE_TIME and iso_time(1.7e9).startswith("2023-11-14T")


# -- 4. query: --rerank honoured or refused, scores named, three decimals ------------------------------

def _table(out: str) -> list[dict]:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    head = lines[0].split()
    return [dict(zip(head, ln.split())) for ln in lines[2:] if not ln.startswith(("rerank_score:",))]


def test_query_by_path_honours_rerank_and_names_the_score(trained_ws_template):
    from itkm_engine.workspace import Workspace

    with Workspace.open(trained_ws_template, readonly=True) as ws:
        images = ws.images()
    path, image_id = images.path[3], int(images.id[3])
    plain = _table(cli_inproc("query", trained_ws_template, path, "--top-k", "8", "-q", expect=0).out)
    by_path = cli_inproc("query", trained_ws_template, path, "--top-k", "8", "--rerank", "-q", expect=0).out
    by_id = cli_inproc("query", trained_ws_template, str(image_id), "--top-k", "8", "--rerank", "-q", expect=0).out
    assert by_path == by_id  # the same re-ranked answer (it was the plain ranking: --rerank was ignored)
    rer = _table(by_path)
    assert "cosine" in plain[0] and "rerank_score" in rer[0] and "similarity" not in rer[0]
    assert "1 - the k-reciprocal re-ranked distance" in by_path
    for row in plain + rer:  # one number format: three decimals
        assert re.fullmatch(r"-?\d\.\d{3}", row.get("cosine") or row.get("rerank_score")), row


def test_rerank_is_refused_where_it_cannot_apply(trained_ws_template, tmp_path):
    outside = put(tmp_path / "probe.jpg", jpeg_bytes())
    line = one_line(*cli_inproc("query", trained_ws_template, outside, "--rerank")[::2], "query")
    assert "re-ranking needs a query among the workspace's images" in line
    line = one_line(*cli_inproc("query", trained_ws_template, "a red jacket", "--text", "--rerank")[::2], "query")
    assert "--rerank re-ranks image queries only" in line


# -- 4. --review: sorted, narrow, and the command to type ----------------------------------------------

def test_review_is_narrow_sorted_and_says_how_to_decide(trained_ws_template, tmp_path):
    ws = copy_ws(trained_ws_template, tmp_path / "ws")
    out = cli_inproc("identities", ws, "--review", "12", "-q", expect=0).out
    lines = out.splitlines()
    table = "\n".join(lines[1:]).split("\ndecide a pair")[0]
    assert max(len(ln) for ln in table.splitlines()) <= 100, table  # it was ~200 columns, paths included
    assert "per direction" in lines[0] and "decision boundary" in lines[0], lines[0]
    rows = _table(table)
    assert rows
    first = rows[0]
    assert f"e.g. pair 1: itkm confirm {ws} {first['a']} {first['b']}" in out and f"itkm reject {ws} A B" in out
    # the JSON keeps every field, paths included, each pair's direction and its direction's boundary;
    # inside a direction, the pairs whose answer would most likely change a label come first (ADR 0014)
    data = json.loads(cli_inproc("identities", ws, "--review", "12", "--json", "-q", expect=0).out)
    assert {"a", "b", "similarity", "boundary", "direction", "change", "path_a", "path_b"} <= set(data[0])
    assert [(int(r["a"]), int(r["b"])) for r in rows] == [(d["a"], d["b"]) for d in data]  # table order = JSON order
    for direction in {d["direction"] for d in data}:
        change = [d["change"] for d in data if d["direction"] == direction]
        assert change == sorted(change, reverse=True), (direction, change)
        for d in data:
            if d["direction"] == direction:
                assert abs(float(rows[data.index(d)]["from_boundary"]) - (d["similarity"] - d["boundary"])) < 2e-3


# -- 4. help texts --------------------------------------------------------------------------------------

def _help(*cmd) -> str:
    return cli_inproc(*cmd, "--help").out


def test_help_explains_rounds_seed_top_k_tiny_and_the_tracks_order():
    train = _help("train")
    assert re.search(r"--rounds ROUNDS\s+training rounds to run", train)
    assert "tiny: a tiny random model for tests" in " ".join(train.split())
    assert re.search(r"--seed SEED\s+random seed", _help("demo-data"))
    assert re.search(r"--top-k TOP_K\s+number of matches", _help("query"))
    tracks = " ".join(_help("export-tracks").split())
    assert "grouped by identity" in tracks and "ordered by time" not in tracks


def test_readme_names_the_data_folder_variable():
    text = (REPO / "README.md").read_text()
    assert "ITKM_DATA_DIR" in text


# -- 4. a loose folder is one camera, as in the app ---------------------------------------------------

def test_cli_ingests_a_loose_folder_as_one_camera_like_the_app(tmp_path):
    loose = tmp_path / "gate-north"
    for i in range(4):
        put(loose / f"crop_{i:03d}.jpg", jpeg_bytes(color=(30 * i, 90, 200)))
    res = cli_inproc("ingest", tmp_path / "ws", loose, expect=0)
    assert "layout one-camera" in res.out
    rows = json.loads(cli_inproc("cameras", tmp_path / "ws", "--json", expect=0).out)
    assert [r["camera"] for r in rows] == ["gate-north"] and rows[0]["images"] == 4


# -- 3. sites from the command line --------------------------------------------------------------------

def test_cameras_set_site_and_reingest_with_site_reports_the_change(demo_dir, tmp_path):
    ws = tmp_path / "ws"
    src = demo_dir / "visible-infrared"
    cli_inproc("ingest", ws, src, "--scenario", "visible-infrared", expect=0)
    rows = json.loads(cli_inproc("cameras", ws, "--json", expect=0).out)
    cam = rows[0]["camera"]
    res = cli_inproc("cameras", ws, "--set", cam, "site=depot", expect=0)
    assert "set to 'depot'" in res.out and cam in res.out
    rows = json.loads(cli_inproc("cameras", ws, "--json", expect=0).out)
    assert {r["site"] for r in rows} == {"depot"}  # one folder: all its cameras
    res = cli_inproc("ingest", ws, src, "--scenario", "visible-infrared", "--site", "gate", expect=0)
    assert "site changed from 'depot' to 'gate'" in res.out
    assert np.all([r["site"] == "gate" for r in json.loads(cli_inproc("cameras", ws, "--json", expect=0).out)])
