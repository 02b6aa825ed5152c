"""The Training panel goes through the one training entry point (issue 16, section 1): it starts
with the workspace's saved settings, Retrain keeps them (``--set`` values of an earlier ``itkm
train`` survive), and another preset whose model cannot continue a trained workspace is refused
in the panel, with the CLI's sentence, before anything is written (pytest-qt, offscreen)."""

from __future__ import annotations

import json
import sqlite3

import pytest

pytest.importorskip("pytestqt")

from helpers.app import recording_errors  # noqa: E402
from helpers.reliability import file_digest  # noqa: E402

TRAIN_TIMEOUT_MS = 600_000


def _window(qtbot, ws, tmp_path, **settings):
    from itkm_app.main_window import MainWindow
    from itkm_app.settings import Settings

    s = Settings(tmp_path / "settings.ini")
    for k, v in settings.items():
        s.set(k.replace("__", "/"), v)
    w = MainWindow(s, dev=True, warm=False)
    qtbot.addWidget(w)
    w.show()
    w.open_workspace(ws)
    qtbot.waitUntil(lambda: w.ctx.session is not None, timeout=120_000)
    _idle(qtbot, w)
    training = w.panel("training")
    qtbot.waitUntil(lambda: training._rounds is not None, timeout=60_000)
    return w, training


def _idle(qtbot, w, timeout=300_000):
    qtbot.waitUntil(lambda: not w.jobs.busy("read") and not w.jobs.busy("write"), timeout=timeout)


def _close(qtbot, w):
    w.jobs.cancel_all()
    _idle(qtbot, w)
    w.close_workspace()
    w.close()


def _saved(ws, **overrides) -> str:
    """config.toml as ``itkm train --preset tiny --set ...`` leaves it."""
    from itkm_engine.config import preset

    preset("tiny").with_overrides(**overrides).save(ws / "config.toml")
    return (ws / "config.toml").read_text()


def _rounds(ws) -> list[tuple[int, str, dict]]:
    con = sqlite3.connect((ws / "itkm.sqlite").as_uri() + "?mode=ro", uri=True)
    try:
        return [(n, s, json.loads(c)) for n, s, c in
                con.execute("SELECT number, status, config_json FROM rounds ORDER BY number")]
    finally:
        con.close()


def test_the_panel_starts_with_the_workspace_settings(qtbot, trained_ws, tmp_path):
    """Preset and device come from the workspace's config.toml, not the app's last choice."""
    _saved(trained_ws, device="cpu")
    w, training = _window(qtbot, trained_ws, tmp_path, training__preset="quick", training__device="auto")
    try:
        assert training.preset.currentData() == "tiny"
        assert training.device.currentData() == "cpu"
        req = training.request()
        assert req.preset is None and req.device is None  # nothing changed: the saved settings
    finally:
        _close(qtbot, w)


def test_another_preset_of_a_trained_workspace_is_refused_in_the_panel(qtbot, trained_ws, tmp_path):
    """Choosing Quick on a workspace trained with Tiny: the panel says why (the CLI's sentence),
    starts nothing and writes nothing.  It used to start, overwrite config.toml and fail in the
    child with a tensor-size "unexpected error"."""
    before = file_digest(trained_ws / "config.toml")
    w, training = _window(qtbot, trained_ws, tmp_path)
    try:
        with recording_errors() as errors:
            training.preset.setCurrentIndex(training.preset.findData("quick"))
            assert "trained with preset 'tiny'" in training.state_label.text()  # said at once
            started = []
            w.jobs.jobStarted.connect(lambda j: started.append(j.name))
            training.start_btn.click()
            qtbot.wait(300)
            text = training.state_label.text()
            assert text.startswith("Not started:") and "trained with preset 'tiny' (round 1)" in text, text
            assert "cannot continue its training" in text and "new workspace" in text, text
            assert "train" not in started and not training.task.busy()
            assert not errors.calls
        assert file_digest(trained_ws / "config.toml") == before
        assert [(n, s) for n, s, _ in _rounds(trained_ws)] == [(1, "done")]
        # back to the workspace's own preset: training is possible again
        training.preset.setCurrentIndex(training.preset.findData("tiny"))
        assert "Cannot train" not in training.state_label.text()
        assert training.request().preset is None
    finally:
        _close(qtbot, w)


def test_retrain_keeps_the_saved_settings(qtbot, trained_ws, tmp_path):
    """Retrain replaced config.toml with the bare preset (epochs, chm_margin and the device of an
    earlier ``itkm train --set`` lost).  Now round 2 trains with them and they stay saved."""
    text = _saved(trained_ws, **{"stage2.epochs": 1, "stage3.chm_margin": 0.1, "device": "cpu",
                                 "stage1.iters_per_epoch": 2})
    w, training = _window(qtbot, trained_ws, tmp_path, training__device="auto")
    try:
        with recording_errors() as errors:
            assert training.retrain_btn.isEnabled()
            training.retrain_btn.click()
            assert training.task.busy()
            qtbot.waitUntil(lambda: not training.task.busy(), timeout=TRAIN_TIMEOUT_MS)
            _idle(qtbot, w)
            assert not errors.calls, errors.calls
        rounds = _rounds(trained_ws)
        assert [(n, s) for n, s, _ in rounds] == [(1, "done"), (2, "done")]
        used = rounds[1][2]
        assert used["stage2"]["epochs"] == 1 and used["stage3"]["chm_margin"] == 0.1 and used["device"] == "cpu"
        assert used["stage1"]["iters_per_epoch"] == 2
        assert (trained_ws / "config.toml").read_text() == text
        assert training.preset.currentData() == "tiny" and training.device.currentData() == "cpu"
    finally:
        _close(qtbot, w)
