"""Sites: where a source was filmed.  People are shared only within a site, so Stage II's
separation loss pushes apart only text features of clusters from different sites."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from itkm_engine.config import preset
from itkm_engine.data.demo import make_demo, make_two_site_demo, parse_demo_name
from itkm_engine.data.ingest import ingest
from itkm_engine.losses.separation import multi_scenario_separation_loss

from itkm_engine.trainer import train
from itkm_engine.workspace import Workspace


def _pids(root: Path) -> set[int]:
    return {parse_demo_name(p.name)[0] for p in root.rglob("*.jpg")}


def test_demo_id_offset_and_two_site_demo_have_disjoint_people(tmp_path):
    info = make_demo(tmp_path / "off", identities=3, images_per_camera=1, seed=0, id_offset=40)
    assert _pids(info.root) <= {41, 42, 43} and len(_pids(info.root)) >= 2
    a, b = make_two_site_demo(tmp_path / "two", identities=3, seed=0, images_per_camera=1)
    pa, pb = _pids(a), _pids(b)
    assert pa and pb and not (pa & pb)
    assert max(pa) <= 3 < min(pb)
    with pytest.raises(Exception):
        make_demo(tmp_path / "bad", identities=3, id_offset=9998)  # ids past 9999


def test_cluster_site_is_the_majority_site_of_its_members():
    from itkm_engine.stages.text import majority_per_cluster

    labels = np.array([0, 0, 0, 1, 1, -1, 2])
    sites = np.array([1, 1, 0, 0, 0, 1, 1])
    assert majority_per_cluster(labels, sites, 3).tolist() == [1, 0, 1]


def test_separation_counts_only_pairs_across_sites():
    g = torch.Generator().manual_seed(0)
    same = F.normalize(torch.randn(1, 8, generator=g), dim=1).repeat(3, 1)
    # Clusters 0 and 1 (site 0) have identical text: never pushed apart; cluster 2 is site 1.
    t = torch.cat([same[:2], F.normalize(torch.randn(1, 8, generator=g), dim=1)])
    cos02 = float(t[0] @ t[2])
    sites = torch.tensor([0, 0, 1])
    loss = multi_scenario_separation_loss(t, sites, margin=0.2)
    # Ordered cross-site pairs: (0,2), (1,2), (2,0), (2,1): all with cosine cos02.
    assert loss.item() == pytest.approx(max(0.0, cos02 - 0.2), abs=1e-6)
    assert multi_scenario_separation_loss(same, torch.tensor([0, 0, 1]), 0.2).item() == pytest.approx(0.8, abs=1e-6)
    assert multi_scenario_separation_loss(same, torch.zeros(3, dtype=torch.long), 0.2).item() == 0.0


def _text_only():
    cfg = preset("tiny")
    cfg.stage1.epochs = 0
    cfg.stage2.epochs = 1
    cfg.stage3.epochs = 0
    return cfg


def test_one_site_separation_is_zero_and_logged(fresh_ws):
    with Workspace.open(fresh_ws) as ws:
        assert {s.site for s in ws.sources()} == {"default"}
        train(ws, _text_only(), rounds=1)
        (s2,) = [e["values"] for e in ws.epoch_log(1) if e["stage"] == "stage2"]
    assert s2["n_sites"] == 1
    assert s2["separation"] == 0.0  # the demo's scenarios share people: nothing is pushed apart


def test_two_sites_separation_is_positive(tmp_path):
    a, b = make_two_site_demo(tmp_path / "demo", identities=3, seed=0, images_per_camera=3)
    with Workspace.open(tmp_path / "ws", create=True) as ws:
        ingest(ws, [a])
        ingest(ws, [b], site="depot")
        assert sorted(s.site for s in ws.sources()) == ["default", "depot"]
        sites = ws.camera_sites()
        assert len(set(sites.values())) == 2 and len(sites) == 16  # b's cameras renamed, not merged
        train(ws, _text_only(), rounds=1)
        (s2,) = [e["values"] for e in ws.epoch_log(1) if e["stage"] == "stage2"]
    assert s2["n_sites"] == 2
    assert s2["separation"] > 0.0


def test_cli_ingest_site_and_cameras_show_it(tmp_path, capsys):
    from itkm_engine.cli import main

    a, b = make_two_site_demo(tmp_path / "demo", identities=3, seed=0, images_per_camera=1)
    ws = str(tmp_path / "ws")
    assert main(["ingest", ws, str(a), "-q"]) == 0
    assert main(["ingest", ws, str(b), "--site", "north gate", "-q"]) == 0
    capsys.readouterr()
    assert main(["cameras", ws, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["site"] for r in rows} == {"default", "north gate"}
    assert main(["ingest", ws, str(b), "--site", " ", "-q"]) == 2
    assert "site" in capsys.readouterr().err
    assert main(["demo-data", str(tmp_path / "c"), "--identities", "3", "--id-offset", "70", "-q"]) == 0
    assert _pids(tmp_path / "c") <= {71, 72, 73}
