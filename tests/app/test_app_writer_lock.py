"""The app holds the workspace's writer lock only while it writes (issue 16, section 5).

It held it for its whole session, so ``itkm train`` / ``itkm ingest`` / ``itkm cameras --set`` in a
terminal were refused while the window merely sat open.  Now the window reads without the lock,
each write takes it (and a terminal command meanwhile is refused naming the app), the training
child takes it itself, and the window follows what a terminal changed.  Real ``itkm``
subprocesses beside a real window (pytest-qt, offscreen)."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from helpers.app import recording_errors  # noqa: E402
from helpers.cli import run_cli, spawn_cli  # noqa: E402

TRAIN_TIMEOUT_MS = 600_000


@pytest.fixture
def window(qtbot, trained_ws, tmp_path):
    from itkm_app.main_window import MainWindow
    from itkm_app.settings import Settings

    w = MainWindow(Settings(tmp_path / "settings.ini"), dev=True, warm=False)
    qtbot.addWidget(w)
    w.show()
    w.open_workspace(trained_ws)
    qtbot.waitUntil(lambda: w.ctx.session is not None, timeout=120_000)
    _idle(qtbot, w)
    cams = w.panel("cameras")
    qtbot.waitUntil(lambda: cams.model.rowCount() > 0 and not cams.loading(), timeout=60_000)
    yield w
    w.jobs.cancel_all()
    _idle(qtbot, w)
    w.close_workspace()
    w.close()


def _idle(qtbot, w, timeout=300_000):
    qtbot.waitUntil(lambda: not w.jobs.busy("read") and not w.jobs.busy("write"), timeout=timeout)


def _camera(w, scenario: str):
    return next(c for c in w.panel("cameras").model.cameras if c.scenario == scenario)


def _scenario_in_panel(w, name: str) -> str:
    return next(c.scenario for c in w.panel("cameras").model.cameras if c.name == name)


def test_terminal_writes_run_beside_the_idle_app_and_the_app_follows(qtbot, window, trained_ws):
    """The app is open and idle: ``itkm cameras --set`` and ``itkm train`` succeed (both were
    refused: 'workspace is being written by pid ... (itkm-app)'), and the window shows what they
    changed without being told: the camera's new scenario, round 2 as the current model."""
    w = window
    assert not (trained_ws / "workspace.lock").exists()  # the idle app holds no lock
    with recording_errors() as errors:
        cam = _camera(w, "clothing-change").name
        p = run_cli("cameras", trained_ws, "--set", cam, "scenario=cross-camera", check=None)
        assert p.returncode == 0, p.stderr
        qtbot.waitUntil(lambda: _scenario_in_panel(w, cam) == "cross-camera", timeout=30_000)

        p = run_cli("train", trained_ws, "--set", "stage2.epochs=1", check=None)
        assert p.returncode == 0, p.stderr
        qtbot.waitUntil(lambda: w.ctx.model_state is not None and w.ctx.model_state.round == 2, timeout=60_000)
        training = w.panel("training")
        qtbot.waitUntil(lambda: training.history_model.rowCount() == 2, timeout=60_000)
        assert "round 2" in w.model_label.text()
        assert any("changed by another process" in m.text for m in w.log_view.messages()), \
            [m.text for m in w.log_view.messages()][-10:]
        _idle(qtbot, w)
        assert not errors.calls, errors.calls
    # and the app still writes: one camera edit of its own
    w.panel("cameras").set_camera(cam, "clothing-change", "all")
    qtbot.waitUntil(lambda: _scenario_in_panel(w, cam) == "clothing-change", timeout=30_000)
    assert not (trained_ws / "workspace.lock").exists()  # released after the write


def test_a_terminal_change_while_an_app_write_job_runs_is_not_taken_for_the_apps_own(qtbot, window, trained_ws):
    """A write job of the app (its features child, a camera edit) runs without holding the lock
    between its writes; a terminal's ``itkm cameras --set`` meanwhile succeeds.  When the job
    ends the window follows the terminal's change (it took the stamp after its own job as the new
    baseline, so the change was never shown)."""
    import threading

    w = window
    cam = _camera(w, "clothing-change").name
    release = threading.Event()
    w.jobs.submit("own write", lambda *, reporter: release.wait(60), kind="write", quiet=True)
    with recording_errors() as errors:
        p = run_cli("cameras", trained_ws, "--set", cam, "scenario=cross-camera", check=None)
        assert p.returncode == 0, p.stderr
        qtbot.wait(2500)  # a poll or more while the app's job runs: none reports yet
        release.set()
        qtbot.waitUntil(lambda: w.jobs.find("own write") is None, timeout=30_000)
        qtbot.waitUntil(lambda: _scenario_in_panel(w, cam) == "cross-camera", timeout=30_000)
        assert any("changed by another process" in m.text and "images" in m.text for m in w.log_view.messages())
        _idle(qtbot, w)
        assert not errors.calls, errors.calls


def test_while_the_app_writes_a_terminal_is_refused_naming_the_app(qtbot, window, trained_ws):
    """Each write of the app holds the lock: a terminal command meanwhile is refused in one line
    that names the app and what it does (the same turn every app write takes: ingest, camera
    edits, decisions, caches) -- and the training child, which takes the lock itself, is named
    too.  After the write the terminal command works."""
    w = window
    cam = _camera(w, "clothing-change").name
    with w.ctx.ws.writing("adding camera folders"):
        p = run_cli("cameras", trained_ws, "--set", cam, "scenario=cross-camera", check=False)
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("itkm cameras: ")]
    assert len(line) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "itkm-app: adding camera folders" in line[0] and "try again when it is done" in line[0], line[0]

    training = w.panel("training")
    with recording_errors() as errors:
        training.start()
        job = training.task.job
        seen = []
        job.progress.connect(seen.append)
        qtbot.waitUntil(lambda: any(e.stage == "stage1" for e in seen), timeout=TRAIN_TIMEOUT_MS)
        p = run_cli("cameras", trained_ws, "--set", cam, "scenario=cross-camera", check=False)
        assert "itkm-app: training" in p.stderr, p.stderr
        training.stop()
        qtbot.waitUntil(lambda: not training.task.busy(), timeout=TRAIN_TIMEOUT_MS)
        _idle(qtbot, w)
        assert not errors.calls, errors.calls  # a stop is no error
    p = run_cli("cameras", trained_ws, "--set", cam, "scenario=cross-camera", check=None)
    assert p.returncode == 0, p.stderr


def test_an_app_write_while_a_terminal_writes_says_who(qtbot, window, trained_ws):
    """``itkm train`` runs in a terminal: the window names it in the status bar; a camera edit in
    the app is refused with one message naming it (nothing changed); after the terminal's process
    is killed (its lock left behind), the app's next write takes the stale lock over and works."""
    w = window
    cam = _camera(w, "clothing-change").name
    run = spawn_cli("train", trained_ws, "--rounds", "5")
    try:
        assert run.wait_for(r"stage1|resuming|round \d", timeout=300), run.text()
        qtbot.waitUntil(lambda: "being written by pid" in w.ws_label.text(), timeout=30_000)
        assert "train" in w.ws_label.text()
        with recording_errors() as errors:
            w.panel("cameras").set_camera(cam, "cross-camera", "all")
            qtbot.waitUntil(lambda: bool(errors.calls), timeout=30_000)
        title, message, _details = errors.calls[0]
        assert f"set camera {cam}" in title
        assert "being written by pid" in message and "train" in message, message
        assert _scenario_in_panel(w, cam) == "clothing-change"
    finally:
        run.kill9()
    _idle(qtbot, w)
    w.panel("cameras").set_camera(cam, "cross-camera", "all")
    qtbot.waitUntil(lambda: _scenario_in_panel(w, cam) == "cross-camera", timeout=30_000)
    qtbot.waitUntil(lambda: "being written" not in w.ws_label.text(), timeout=30_000)
