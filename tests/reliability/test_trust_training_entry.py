"""Issue 16, section 1: one training entry point (``itkm_engine/train_request.py``).

``itkm train``, torchrun (``python -m itkm_engine.train``) and the app's worker process resolve
a training request the same way and check it -- settings, device, the model's lineage -- before
anything is written.  A device that is not on this computer is refused; a device stored by a
GPU machine is only a preference.  The app's side (the Training panel) is tests/app/test_app_training_settings.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import CLI_ENV, REPO, cli_inproc, one_line, run_cli
from helpers.ports import free_port
from helpers.reliability import file_digest


def _rounds(ws: Path) -> list[tuple[int, str]]:
    con = sqlite3.connect((ws / "itkm.sqlite").as_uri() + "?mode=ro", uri=True)
    try:
        return con.execute("SELECT number, status FROM rounds ORDER BY number").fetchall()
    finally:
        con.close()


def _round_config(ws: Path, number: int) -> dict:
    con = sqlite3.connect((ws / "itkm.sqlite").as_uri() + "?mode=ro", uri=True)
    try:
        return json.loads(con.execute("SELECT config_json FROM rounds WHERE number = ?", (number,)).fetchone()[0])
    finally:
        con.close()


def _gpu_names() -> set[str]:
    import torch

    if not torch.cuda.is_available():
        return set()
    return {"cuda"} | {f"cuda:{i}" for i in range(torch.cuda.device_count())}


# -- a device that is not here --------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cuda:7", "cuda", "mps"])
def test_a_device_this_computer_lacks_is_refused_before_anything_is_written(trained_ws, device):
    """``itkm train WS --device cuda:7`` wrote ``device = "cuda:7"`` to config.toml, and from then
    on train / export-onnx called the checkpoint "damaged"."""
    if device in _gpu_names():
        pytest.skip(f"this computer has {device}")
    before = file_digest(trained_ws / "config.toml")
    line = one_line(*cli_inproc("train", trained_ws, "--device", device)[::2], "train")
    assert f"--device '{device}' cannot be used" in line and "Nothing was changed" in line, line
    assert file_digest(trained_ws / "config.toml") == before
    assert _rounds(trained_ws) == [(1, "done")]
    # the same answer for a read that names the device
    line = one_line(*cli_inproc("query", trained_ws, "1", "--device", device)[::2], "query")
    assert "cannot be used" in line, line


def test_a_workspace_trained_on_a_gpu_works_on_a_computer_without_one(trained_ws, demo_dir):
    """config.toml (and the round) of a GPU machine name ``cuda:9``: on this computer the stored
    device is a preference -- the model loads, a query of an outside file works, the next round
    trains on what is here and says so, and config.toml keeps the preference."""
    if "cuda:9" in _gpu_names():
        pytest.skip("this computer has a tenth GPU")
    cfg = trained_ws / "config.toml"
    cfg.write_text(cfg.read_text().replace('device = "cpu"', 'device = "cuda:9"'))
    assert 'device = "cuda:9"' in cfg.read_text()
    crop = next((demo_dir / "visible-infrared").rglob("*.jpg"))
    rc, out, err = cli_inproc("query", trained_ws, crop, "--top-k", "3")  # builds the model
    assert rc == 0 and "damaged" not in err, err
    assert len([ln for ln in out.splitlines() if ln[:1].isdigit()]) == 3, out
    rc, out, err = cli_inproc("train", trained_ws)
    assert rc == 0, err
    assert "asks for device 'cuda:9'" in err and "training on the CPU" in err, err
    assert _rounds(trained_ws) == [(1, "done"), (2, "done")]
    assert 'device = "cuda:9"' in cfg.read_text()  # the preference stays for the GPU machine


# -- refusals are fast: no torch ------------------------------------------------------------------
def test_a_bad_request_is_refused_without_importing_torch(trained_ws, demo_dir, tmp_path):
    """A bad --set, another preset's model or an export over a folder or a user's image is
    answered before torch loads (it took the whole torch import -- seconds, several on a busy
    machine -- to say 'stage1.epochs must be a whole number')."""
    code = ("import sys; from itkm_engine.cli import main; "
            "rc = main(sys.argv[1:]); print('torch loaded' if 'torch' in sys.modules else 'no torch'); sys.exit(rc)")
    crop = next(demo_dir.rglob("*.jpg"))
    for args in (["train", trained_ws, "--set", "stage1.epochs=two"], ["train", trained_ws, "--preset", "quick"],
                 ["train", trained_ws, "--config", "/nonexistent.toml"], ["export-tracks", trained_ws, tmp_path],
                 ["export-features", trained_ws, crop], ["export-onnx", trained_ws, crop]):
        p = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=CLI_ENV, cwd=REPO,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stdout.strip() == "no torch", (args, p.stdout, p.stderr)


# -- the lineage, for every entry point -----------------------------------------------------------
def test_an_unfinished_round_of_another_model_does_not_let_train_continue_it(trained_ws):
    """The state the app's worker left (it wrote config.toml with another preset before checking,
    then the round it started failed inside torch): ``itkm train`` compared only with that
    unfinished round and trained its settings on the tiny checkpoint.  The last finished round's
    model decides too."""
    from itkm_engine.config import preset

    quick = preset("quick")
    quick.save(trained_ws / "config.toml")
    con = sqlite3.connect(trained_ws / "itkm.sqlite")
    with con:
        con.execute("INSERT INTO rounds (number, status, started, stage, epoch, config_json) "
                    "VALUES (2, 'running', 0, 'stage1', 0, ?)", (json.dumps(quick.to_dict()),))
    con.close()
    line = one_line(*cli_inproc("train", trained_ws)[::2], "train")
    assert "trained with preset 'tiny' (round 1)" in line and "model.tower clip -> mobilenetv2" in line, line
    assert _rounds(trained_ws) == [(1, "done"), (2, "running")]
    assert not (trained_ws / "checkpoints" / "round_0002.pt").exists()


def test_the_worker_checks_the_lineage_before_it_writes_config_toml(trained_ws):
    """The app's training child (``python -m itkm_engine.worker``) wrote config.toml with the
    chosen preset first and then failed inside torch ("unexpected error", a tensor-size
    mismatch).  Now it refuses, with the CLI's sentence, and writes nothing."""
    from itkm_engine.child_job import ChildJobError, run_child
    from itkm_engine.progress import Reporter

    before = file_digest(trained_ws / "config.toml")
    with pytest.raises(ChildJobError) as e:
        run_child("train", trained_ws, {"request": {"preset": "quick", "rounds": 1}}, reporter=Reporter())
    msg = str(e.value)
    assert "trained with preset 'tiny' (round 1)" in msg and "cannot continue its training" in msg, msg
    assert "unexpected" not in msg
    assert file_digest(trained_ws / "config.toml") == before
    assert _rounds(trained_ws) == [(1, "done")]


def test_the_worker_keeps_the_saved_settings(trained_ws):
    """What the app's Retrain sends (no preset: the user changed nothing) trains with the saved
    settings -- the ``--set`` values of an earlier ``itkm train`` -- and keeps them in config.toml
    (the app replaced them with the bare preset: epochs, chm_margin and the device were lost)."""
    from itkm_engine.child_job import run_child
    from itkm_engine.config import preset
    from itkm_engine.progress import Reporter

    saved = preset("tiny").with_overrides(**{"stage2.epochs": 1, "stage3.chm_margin": 0.1, "device": "cpu",
                                             "stage1.iters_per_epoch": 2})
    saved.save(trained_ws / "config.toml")
    before = (trained_ws / "config.toml").read_text()
    results = run_child("train", trained_ws, {"request": {"rounds": 1}}, reporter=Reporter())
    assert [r.round for r in results] == [2]
    assert (trained_ws / "config.toml").read_text() == before
    used = _round_config(trained_ws, 2)
    assert used["stage2"]["epochs"] == 1 and used["stage3"]["chm_margin"] == 0.1 and used["device"] == "cpu"
    assert used["stage1"]["iters_per_epoch"] == 2


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo")
def test_torchrun_refuses_another_model_on_every_rank(trained_ws):
    """``torchrun -m itkm_engine.train WS --preset quick`` on a tiny workspace: it never checked the
    lineage (the CLI did), wrote config.toml and started.  Both ranks now refuse, nothing written."""
    before = file_digest(trained_ws / "config.toml")
    env = {**CLI_ENV, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "itkm_engine.train", str(trained_ws), "--preset", "quick", "-q"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert p.returncode != 0
    refusals = [ln for ln in p.stderr.splitlines() if "trained with preset 'tiny'" in ln]
    assert any("rank 0" in ln for ln in refusals) and any("rank 1" in ln for ln in refusals), p.stderr[-3000:]
    assert file_digest(trained_ws / "config.toml") == before
    assert _rounds(trained_ws) == [(1, "done")]


def test_a_cancelled_round_resumed_through_the_worker_is_the_same_round(fresh_ws, monkeypatch):
    """Out of memory in Stage II stops round 1 (cancelled, its Stage I kept); the app's Resume
    -- a request without settings -- continues round 1, it does not start round 2."""
    from itkm_engine.child_job import ChildJobError, run_child
    from itkm_engine.progress import Reporter

    monkeypatch.setenv("ITKM_WORKER_FAULT", "oom@stage2")
    with pytest.raises(ChildJobError, match="out of memory"):
        run_child("train", fresh_ws, {"request": {"preset": "tiny", "device": "cpu"}}, reporter=Reporter())
    assert _rounds(fresh_ws) == [(1, "cancelled")]
    monkeypatch.delenv("ITKM_WORKER_FAULT")
    logs = []
    results = run_child("train", fresh_ws, {"request": {}}, reporter=Reporter(on_log=lambda m: logs.append(m.text)))
    assert [r.round for r in results] == [1]
    assert _rounds(fresh_ws) == [(1, "done")]
    assert any("resuming round 1" in t for t in logs), logs


def test_the_resume_notes_are_said_once(fresh_ws, monkeypatch):
    """The notes about a resumed round come from the entry point, once (not from the loop too)."""
    import itkm_engine.trainer as trainer

    real = trainer.run_stage

    def stage2_too_big(stage, **kw):
        if stage.name == "stage2":
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 70368744177664 bytes")
        return real(stage, **kw)

    monkeypatch.setattr(trainer, "run_stage", stage2_too_big)
    assert cli_inproc("train", fresh_ws, "--preset", "tiny").rc == 2
    monkeypatch.setattr(trainer, "run_stage", real)
    rc, _, err = cli_inproc("train", fresh_ws, "--set", "stage2.batch_size=8", "--set", "stage2.epochs=3")
    assert rc == 0, err
    assert err.count("stage2.batch_size 16 -> 8") == 1, err
    assert err.count("continues with the settings it started with") == 1, err
    assert _round_config(fresh_ws, 1)["stage2"]["epochs"] == 2  # the round kept its own settings


def test_the_real_command_refuses_a_missing_device(trained_ws):
    """The refusal through the real ``itkm`` process (what a user types)."""
    p = run_cli("train", trained_ws, "--device", "cuda:7", check=None)
    if "cuda:7" in _gpu_names():
        pytest.skip("this computer has cuda:7")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "--device 'cuda:7' cannot be used" in p.stderr
    assert os.path.exists(trained_ws / "config.toml")
