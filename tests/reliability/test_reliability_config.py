"""Issue 10.2/10.3: a bad setting is refused, naming the key, before anything is written; a
damaged config.toml is one line; --preset on a workspace of another model is refused; a diverged
step rolls back to the last good epoch; --restart-round abandons an interrupted round."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers.cli import cli_inproc, one_line, run_cli
from helpers.reliability import file_digest


def rounds_of(ws: Path) -> list[tuple[int, str]]:
    from itkm_engine.workspace import Workspace

    with Workspace.open(ws, readonly=True) as w:
        return [(r.number, r.status) for r in w.rounds()]


@pytest.mark.parametrize("item,words", [
    ("stage2.batch_size=0", "stage2.batch_size"),
    ("stage1.lr=1e30", "stage1.lr"),
    ("stage1.lr=NaN", "NaN"),
    ("stage1.lr=Infinity", "stage1.lr"),
    ("stage1.epochs=-1", "stage1.epochs"),
    ("stage1.epochs=two", "stage1.epochs"),
    ("stage1.nonsense=1", "unknown config key"),
    ("stage1.epochs", "KEY=VALUE"),
    ("model=3", "unknown config key"),
    ("data.num_instances=0", "data.num_instances"),
    ("model.image_size=[65536,32768]", "model.image_size"),
    ("device=gpu7", "device"),
])
def test_bad_set_values_are_refused_before_anything_is_written(fresh_ws, item, words):
    line = one_line(*cli_inproc("train", fresh_ws, "--preset", "tiny", "--set", item)[::2], "train")
    assert words in line and item.split("=")[0] in line
    assert not (fresh_ws / "config.toml").exists()
    assert rounds_of(fresh_ws) == []  # no round was started, so a corrected command starts afresh


@pytest.mark.parametrize("content", [b"[stage1\nepochs = 3\n", b"\xff\xfe\x00bad", b"stage1 = 5\n",
                                     b"[stage1]\nepochs = -3\n", b"[stage1]\nbogus = 1\n", b'[model]\nimage_size = "x"\n'])
@pytest.mark.parametrize("command", ["train", "query", "export-tracks"])
def test_a_damaged_config_toml_is_one_line_for_every_command(trained_ws, tmp_path, content, command):
    (trained_ws / "config.toml").write_bytes(content)
    args = {"train": [], "query": ["1"], "export-tracks": [tmp_path / "t.csv"]}[command]
    line = one_line(*cli_inproc(command, trained_ws, *args)[::2], command)
    assert "config" in line
    assert (trained_ws / "config.toml").read_bytes() == content
    assert not (tmp_path / "t.csv").exists()


def test_preset_of_another_model_is_refused_and_config_toml_kept(trained_ws):
    before = file_digest(trained_ws / "config.toml")
    p = run_cli("train", trained_ws, "--preset", "quick", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("itkm train: ")]
    assert len(line) == 1 and "'tiny'" in line[0] and "model.name" in line[0] and "new workspace" in line[0]
    assert file_digest(trained_ws / "config.toml") == before
    assert rounds_of(trained_ws) == [(1, "done")]


def _nan_in_stage2_second_epoch(monkeypatch):
    from itkm_engine.stages.text import TextStage

    real = TextStage.losses

    def losses(self, batch):
        terms = real(self, batch)
        if self._epoch_now >= 1:
            terms = {k: v * float("nan") for k, v in terms.items()}
        return terms

    real_begin = TextStage.begin_epoch

    def begin(self, epoch, reporter):
        self._epoch_now = epoch
        return real_begin(self, epoch, reporter)

    monkeypatch.setattr(TextStage, "losses", losses)
    monkeypatch.setattr(TextStage, "begin_epoch", begin)


def test_a_nan_step_rolls_back_to_the_last_good_epoch_and_restart_round_abandons_it(fresh_ws, monkeypatch):
    from itkm_engine.config import preset
    from itkm_engine.errors import TrainingDivergedError
    from itkm_engine.model.checkpoint import load_checkpoint
    from itkm_engine.train_request import abandon_interrupted_round
    from itkm_engine.trainer import PROGRESS_FILE, train
    from itkm_engine.workspace import Workspace

    cfg = preset("tiny")
    _nan_in_stage2_second_epoch(monkeypatch)
    with Workspace.open(fresh_ws) as ws:
        with pytest.raises(TrainingDivergedError) as e:
            train(ws, cfg, rounds=1)
        msg = str(e.value)
        assert "NaN" in msg and "rolled back to after stage2 epoch 1" in msg and "--restart-round" in msg
        assert [(r.number, r.status) for r in ws.rounds()] == [(1, "cancelled")]
        progress = load_checkpoint(ws.checkpoints_dir / PROGRESS_FILE)
        assert (progress["stage"], int(progress["epoch"])) == ("stage2", 0)
        assert all(torch.isfinite(v).all() for v in progress["model"]["state_dict"].values() if v.is_floating_point())
        assert [(x["stage"], x["epoch"]) for x in ws.epoch_log(1)] == [("stage1", 0), ("stage2", 0)]
    monkeypatch.undo()
    with Workspace.open(fresh_ws) as ws:
        assert abandon_interrupted_round(ws) == 1
        assert not (ws.checkpoints_dir / PROGRESS_FILE).exists()
        assert [(r.number, r.status) for r in ws.rounds()] == [(1, "failed")]


def test_restart_round_flag_through_the_cli_and_nan_weights_in_progress_are_refused(fresh_ws):
    from itkm_engine.model.checkpoint import save_checkpoint
    from itkm_engine.trainer import PROGRESS_FILE
    from itkm_engine.workspace import Workspace

    # an interrupted round whose progress file holds NaN weights (what an older version saved)
    from itkm_engine.config import preset
    from itkm_engine.model.backbone import build_model

    cfg = preset("tiny")
    (fresh_ws / "config.toml").write_text(cfg.to_toml())
    with Workspace.open(fresh_ws) as ws:
        import json

        n = ws.start_round(json.dumps(cfg.to_dict()), None)
        ws.update_round(n, status="cancelled")
        model = build_model(cfg.model, ["visible-infrared"], ["visible"], device="cpu")
        state = model.state_for_checkpoint()
        first = next(k for k, v in state["state_dict"].items() if v.is_floating_point())
        state["state_dict"][first] = state["state_dict"][first].clone().fill_(float("nan"))
        save_checkpoint(ws.checkpoints_dir / PROGRESS_FILE, {"format": "itkm-progress-v1", "round": n,
                                                              "stage": "stage1", "epoch": 0, "model": state})
    line = one_line(*cli_inproc("train", fresh_ws)[::2], "train")
    assert "NaN" in line and "--restart-round" in line
    # a bad --set with --restart-round changes nothing
    one_line(*cli_inproc("train", fresh_ws, "--restart-round", "--set", "stage1.lr=-1")[::2], "train")
    assert rounds_of(fresh_ws) == [(1, "cancelled")]
    assert (fresh_ws / "checkpoints" / PROGRESS_FILE).exists()
    rc, _, err = cli_inproc("train", fresh_ws, "--restart-round", "-q")
    assert rc == 0, err
    assert rounds_of(fresh_ws) == [(1, "failed"), (2, "done")]


def test_a_round_stored_with_impossible_settings_says_to_restart_it(fresh_ws):
    """What an older version left behind: a round started with batch_size 0 and its progress."""
    import json

    from itkm_engine.config import preset
    from itkm_engine.model.backbone import build_model
    from itkm_engine.model.checkpoint import save_checkpoint
    from itkm_engine.trainer import PROGRESS_FILE
    from itkm_engine.workspace import Workspace

    cfg = preset("tiny")
    bad = cfg.to_dict()
    bad["stage2"]["batch_size"] = 0
    (fresh_ws / "config.toml").write_text(cfg.to_toml())
    with Workspace.open(fresh_ws) as ws:
        n = ws.start_round(json.dumps(bad), None)
        model = build_model(cfg.model, ["visible-infrared"], ["visible"], device="cpu")
        save_checkpoint(ws.checkpoints_dir / PROGRESS_FILE, {"format": "itkm-progress-v1", "round": n,
                                                              "stage": "stage1", "epoch": 0,
                                                              "model": model.state_for_checkpoint()})
    line = one_line(*cli_inproc("train", fresh_ws, "--set", "stage2.batch_size=16")[::2], "train")
    assert "stage2.batch_size" in line and "--restart-round" in line
