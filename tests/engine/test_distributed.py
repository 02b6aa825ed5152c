"""torchrun data-parallel training, on the CPU with the gloo backend and 2 processes."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import numpy as np

from itkm_engine.model.checkpoint import load_checkpoint
from itkm_engine.workspace import Workspace

from helpers.ports import free_port


def test_torchrun_two_processes_train_a_round(ingested_ws_template, tmp_path):
    ws_path = tmp_path / "ws"
    shutil.copytree(ingested_ws_template, ws_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "itkm_engine.train", str(ws_path), "--preset", "tiny", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 processes" in proc.stdout

    with Workspace.open(ws_path, readonly=True) as ws:
        rounds = ws.rounds()
        assert [r.status for r in rounds] == ["done"]
        log = ws.epoch_log(1)
        # Exactly one process wrote the log: one row per (stage, epoch).
        keys = [(e["stage"], e["epoch"]) for e in log]
        assert len(keys) == len(set(keys))
        assert {k[0] for k in keys} == {"stage1", "stage2", "stage3"}
        assert all(math.isfinite(e["values"]["loss"]) for e in log)
        state = load_checkpoint(ws.latest_checkpoint())
        assert state["round"] == 1
        # The cached features of the new checkpoint hold every image once (gathered across ranks).
        from itkm_engine.features import FeatureCache
        from itkm_engine.model.checkpoint import checkpoint_key

        cached = FeatureCache(ws.features_dir / checkpoint_key(ws.latest_checkpoint())).load()
        assert sorted(cached.ids.tolist()) == sorted(ws.images().id.tolist())
        np.testing.assert_allclose(np.linalg.norm(cached.feats, axis=1), 1.0, atol=2e-3)
