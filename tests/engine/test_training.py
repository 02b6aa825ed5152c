"""Rounds: what a round stores, resume after an interruption, incremental retraining."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from itkm_engine.config import preset
from itkm_engine.errors import Cancelled
from itkm_engine.model.checkpoint import load_checkpoint
from itkm_engine.progress import CancelToken, Reporter
from itkm_engine.trainer import PROGRESS_FILE, train
from itkm_engine.workspace import Workspace


def test_round_records_checkpoint_labels_and_epoch_log(trained_ws_template):
    with Workspace.open(trained_ws_template, readonly=True) as ws:
        rounds = ws.rounds()
        assert [r.status for r in rounds] == ["done"]
        ckpt = ws.latest_checkpoint()
        assert ckpt is not None and ckpt.exists()
        state = load_checkpoint(ckpt)
        assert state["round"] == 1
        assert set(state["outputs"]) >= {"stage2", "stage3"}
        text = state["outputs"]["stage2"]["text"]
        assert text.ndim == 2 and text.shape[0] >= 1  # one offline text feature per Stage II cluster

        log = ws.epoch_log(1)
        stages = [e["stage"] for e in log]
        cfg = preset("tiny")
        assert stages.count("stage1") == cfg.stage1.epochs
        assert stages.count("stage2") == cfg.stage2.epochs
        assert stages.count("stage3") == cfg.stage3.epochs
        for e in log:
            v = e["values"]
            assert math.isfinite(v["loss"])
            assert v["n_clusters"] >= 1
            # Person ids are known in the demo: pseudo-label quality is recorded every epoch.
            assert 0.0 <= v["precision"] <= 1.0 and -1.0 <= v["ari"] <= 1.0
        s3 = [e["values"] for e in log if e["stage"] == "stage3"][-1]
        for term in ("homogeneous", "cross", "instance", "i2t"):
            assert term in s3
        assert "chm_pairs" in s3 and "ihm_pairs" in s3
        s2 = [e["values"] for e in log if e["stage"] == "stage2"]
        assert {"i2t", "t2i", "separation"} <= set(s2[0])

        ids, labels = ws.assignments(1)
        assert len(ids) == len(labels) > 0
        assert (labels >= 0).any()


def _tiny_two_epochs():
    cfg = preset("tiny")
    cfg.stage1.epochs = 2
    cfg.stage2.epochs = 1
    cfg.stage3.epochs = 1
    return cfg


def test_resume_after_interruption_gives_the_same_next_epoch(ingested_ws_template, tmp_path):
    """A round cancelled after Stage I epoch 0 and resumed equals an uninterrupted round."""
    a_path, b_path = tmp_path / "a", tmp_path / "b"
    shutil.copytree(ingested_ws_template, a_path)
    shutil.copytree(ingested_ws_template, b_path)
    cfg = _tiny_two_epochs()

    with Workspace.open(a_path) as ws:
        train(ws, cfg, rounds=1)
        log_a = ws.epoch_log(1)
        ckpt_a = load_checkpoint(ws.latest_checkpoint())

    token = CancelToken()

    def on_event(e):
        if e.stage == "stage1" and e.message.startswith("stage1 epoch 1/"):
            token.cancel()  # stops within the next batch / check

    with Workspace.open(b_path) as ws:
        with pytest.raises(Cancelled):
            train(ws, cfg, rounds=1, reporter=Reporter(on_event, cancel=token))
        assert ws.rounds()[0].status == "cancelled"
        assert (ws.checkpoints_dir / PROGRESS_FILE).exists()
        assert [e["stage"] for e in ws.epoch_log(1)] == ["stage1"]
    with Workspace.open(b_path) as ws:  # "run the same command again"
        logs = []
        train(ws, cfg, rounds=1, reporter=Reporter(on_log=logs.append))
        assert any("resuming round 1" in m.text for m in logs)
        assert [r.status for r in ws.rounds()] == ["done"]
        log_b = ws.epoch_log(1)
        ckpt_b = load_checkpoint(ws.latest_checkpoint())
        assert not (ws.checkpoints_dir / PROGRESS_FILE).exists()

    assert [(e["stage"], e["epoch"]) for e in log_a] == [(e["stage"], e["epoch"]) for e in log_b]
    for ea, eb in zip(log_a, log_b):
        for k in ("loss", "n_clusters", "n_outliers"):
            assert ea["values"][k] == pytest.approx(eb["values"][k], rel=1e-4, abs=1e-5), (ea["stage"], k)
    wa, wb = ckpt_a["model"]["state_dict"], ckpt_b["model"]["state_dict"]
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5, msg=name)


def test_retrain_after_new_camera_embeds_only_new_images(trained_ws, demo_dir, tmp_path):
    from itkm_engine.data.ingest import ingest

    # A new camera folder arrives: a few crops of known people seen by a new camera.
    new_root = tmp_path / "new-site"
    cam = new_root / "gate-cam"
    cam.mkdir(parents=True)
    src = sorted((demo_dir / "visible-infrared" / "vis-a").glob("*.jpg"))[:7]
    for f in src:
        shutil.copy(f, cam / f.name.replace("_c1s1_", "_c9s1_"))
    with Workspace.open(trained_ws) as ws:
        n_before = len(ws.images())
        ingest(ws, [new_root], scenario="cross-camera")
        assert len(ws.images()) == n_before + 7
        logs = []
        cfg = preset("tiny")
        results = train(ws, cfg, rounds=1, reporter=Reporter(on_log=logs.append))
        assert results[0].round == 2
        rounds = ws.rounds()
        assert rounds[-1].status == "done"
        assert rounds[-1].base_checkpoint and rounds[-1].base_checkpoint.endswith("round_0001.pt")
        embedding = [m.text for m in logs if m.text.startswith("embedding")]
        # The starting checkpoint's features came from the cache: only the 7 new crops were embedded.
        assert embedding and embedding[0].startswith(f"embedding 7 of {n_before + 7} images")
        # The model grew a row for the new scenario and still trained through all three stages.
        log = ws.epoch_log(2)
        assert {e["stage"] for e in log} == {"stage1", "stage2", "stage3"}


def test_training_without_images_says_what_to_do(tmp_path):
    from itkm_engine.errors import NothingToDoError

    with Workspace.open(tmp_path / "empty", create=True) as ws:
        with pytest.raises(NothingToDoError, match="ingest"):
            train(ws, preset("tiny"))


def test_epoch_seed_depends_only_on_position():
    from itkm_engine.stages.loop import epoch_seed, warmup_factor

    assert epoch_seed(0, 1, "stage1", 2) == epoch_seed(0, 1, "stage1", 2)
    assert epoch_seed(0, 1, "stage1", 2) != epoch_seed(0, 1, "stage1", 3)
    assert epoch_seed(0, 1, "stage1", 2) != epoch_seed(1, 1, "stage1", 2)
    # Warm-up rises linearly, then cosine decays to 10%.
    assert warmup_factor(0, 0, 10, 2, 10) == pytest.approx(0.1)
    assert warmup_factor(1, 0, 10, 2, 10) == pytest.approx(0.55)
    assert warmup_factor(2, 0, 10, 2, 10) == pytest.approx(1.0)
    assert warmup_factor(10, 0, 10, 2, 10) == pytest.approx(0.1)
    assert np.all(np.diff([warmup_factor(e, 0, 10, 2, 10) for e in range(2, 11)]) <= 1e-12)
