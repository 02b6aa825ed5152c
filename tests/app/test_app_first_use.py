"""What a first-time user hit in the app (issue 11, section 2), one test per item where it can be.

One module-scoped window over a copy of the trained demo workspace (no training here); its UMAP
cache is written beforehand so the Clusters view never computes a layout.  Items that need an
untrained workspace open a second window on ``fresh_embedded_ws``.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QColor  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from itkm_app import theme  # noqa: E402
from itkm_app.main_window import MainWindow  # noqa: E402
from itkm_app.settings import Settings  # noqa: E402

from helpers.app import fake_cached_map, open_window, recording_errors, wait_idle  # noqa: E402
from helpers.workspaces import copy_ws  # noqa: E402


@pytest.fixture(scope="module")
def recorded(qapp):
    with recording_errors() as rec:
        yield rec


@pytest.fixture(scope="module")
def app(qapp, recorded, trained_ws_template, tmp_path_factory):
    """A window on a copy of the trained demo workspace, with a (fake) cached 2-D map."""
    from pytestqt.qtbot import QtBot

    base = tmp_path_factory.mktemp("firstuse")
    ws_path = base / "ws"
    copy_ws(trained_ws_template, ws_path)
    xy = fake_cached_map(ws_path)
    qtbot = QtBot(None)
    window = open_window(qtbot, ws_path, base / "settings.ini")
    yield {"window": window, "qtbot": qtbot, "ws": ws_path, "xy": xy, "base": base}
    window.jobs.cancel_all()
    window.jobs.wait_idle(120)  # a job still ending would make close() ask (a modal dialog)
    window.close()


@pytest.fixture
def fresh_app(qapp, recorded, fresh_embedded_ws, tmp_path):
    from pytestqt.qtbot import QtBot

    qtbot = QtBot(None)
    window = open_window(qtbot, fresh_embedded_ws, tmp_path / "settings.ini")
    yield window, qtbot
    window.jobs.cancel_all()
    window.jobs.wait_idle(120)  # a job still ending would make close() ask (a modal dialog)
    window.close()


# -- 1. the model's state everywhere ------------------------------------------------------------

def test_1_model_state_in_status_bar_and_above_the_views(app):
    w = app["window"]
    assert w.model_label.text() == "Model: round 1, tiny preset"
    for key in ("gallery", "identities"):
        banner = w.panel(key).banner
        assert "round 1 model (tiny preset)" in banner.label.text()
        assert banner.train_btn.isHidden()


def test_1_12_14_untrained_workspace_says_so_and_offers_train(fresh_app):
    w, qtbot = fresh_app
    assert "initial weights — not trained yet" in w.model_label.text()
    banner = w.panel("cameras").banner
    assert "Not trained yet" in banner.label.text() and not banner.train_btn.isHidden()
    assert w.act_train.isEnabled()
    assert not w.act_retrain.isEnabled() and not w.act_export.isEnabled()  # nothing to retrain or export
    assert "train a first round first" in w.act_export.toolTip()


# -- 2. a single folder of loose crops ----------------------------------------------------------

def test_2_loose_folder_becomes_one_camera_named_after_it_and_is_selected(fresh_app, demo_dir, tmp_path):
    from itkm_app.tasks import ingest_plan

    w, qtbot = fresh_app
    loose = tmp_path / "door-cam"
    shutil.copytree(demo_dir / "visible-infrared" / "ir-a", loose)
    assert ingest_plan([str(loose), str(demo_dir)], None) == [("one-camera", [str(loose)]), (None, [str(demo_dir)])]
    cams = w.panel("cameras")
    w.show_panel("cameras")
    cams.ingest([str(loose)])
    qtbot.waitUntil(lambda: any(c.name == "door-cam" for c in cams.model.cameras) and not cams.loading(),
                    timeout=60_000)
    wait_idle(qtbot, w)
    assert cams.selected_cameras() == ["door-cam"]


# -- 3. re-ranked scores are labelled -------------------------------------------------------------

def test_3_gallery_says_which_scores_it_shows(app):
    w, qtbot = app["window"], app["qtbot"]
    g = w.panel("gallery")
    w.show_panel("gallery")
    qid = int(w.ctx.images.id[0])
    g.rerank.setChecked(False)
    g.query_image_id(qid)
    qtbot.waitUntil(lambda: g.job is None and bool(g.matches), timeout=60_000)
    assert "cosine similarity" in g.header.text()
    g.rerank.setChecked(True)
    g.exclude_cam.setChecked(True)
    g.query_image_id(qid)
    qtbot.waitUntil(lambda: g.job is None and "re-ranked" in g.header.text(), timeout=60_000)
    assert len(g.matches) == min(g.top_k.value(), int((w.ctx.images.camera != w.ctx.images.camera[0]).sum()))
    g.rerank.setChecked(False)


# -- 4. evaluation as a table ---------------------------------------------------------------------

NEW_EVAL = {
    "headline": {"protocol": "cross-camera", "split": "overall", "mAP": 0.5, "rank1": 0.6, "rank5": 0.7,
                 "rank10": 0.8, "queries": 100, "gallery": 900},
    "protocols": {
        "cross-camera": {"overall": {"mAP": 0.5, "rank1": 0.6, "rank5": 0.7, "rank10": 0.8, "queries": 100,
                                     "gallery": 900},
                         "infrared->visible": {"mAP": 0.3, "rank1": 0.4, "rank5": 0.5, "rank10": 0.6,
                                               "queries": 20, "gallery": 300}},
        "standard": {"overall": {"mAP": 0.55, "rank1": 0.65, "rank5": 0.75, "rank10": 0.85, "queries": 100,
                                 "gallery": 900}},
    },
}


def test_4_evaluation_renders_protocol_by_split(app):
    from itkm_app.widgets import eval_table

    assert [(p, s) for p, s, _ in eval_table.rows(NEW_EVAL)] == [
        ("cross-camera", "overall"), ("cross-camera", "infrared->visible"), ("standard", "overall")]
    old = {"overall": {"mAP": 0.25, "rank1": 0.5, "rank5": 0.6, "rank10": 0.7, "queries": 10},
           "visible-infrared": {"mAP": 0.2, "rank1": 0.3, "rank5": 0.4, "rank10": 0.5, "queries": 5}}
    assert eval_table.headline(old)["mAP"] == 0.25 and eval_table.rows(old)[0][:2] == ("standard", "overall")
    w = app["window"]
    tr = w.panel("training")
    tr._evaluated(NEW_EVAL)
    t = tr.eval_table
    assert t.rowCount() == 3
    assert [t.item(1, c).text() for c in range(6)] == ["cross-camera", "infrared->visible", "30.0", "40.0", "50.0",
                                                       "60.0"]
    assert t.item(0, 2).font().bold() and not t.item(2, 2).font().bold()
    assert w.eval_label.text() == "mAP 50.0% · R1 60.0%"
    assert not any("{" in m.text for m in w.log_view.messages())  # no Python dict in the log


def test_4_rounds_table_shows_scores_without_scrolling(app):
    w, qtbot = app["window"], app["qtbot"]
    tr = w.panel("training")
    w.show_panel("training")
    qtbot.waitUntil(lambda: tr.history_model.rowCount() > 0, timeout=30_000)
    cols = [tr.history_model.horizontalHeaderItem(i).text() for i in range(tr.history_model.columnCount())]
    assert cols[2:4] == ["mAP %", "R1 %"]
    h = tr.history.horizontalHeader()
    assert h.sectionViewportPosition(3) + h.sectionSize(3) <= tr.history.viewport().width()


# -- 5. Ctrl+E while a text box has focus --------------------------------------------------------

def test_5_export_shortcut_works_while_a_text_box_has_focus(app, monkeypatch):
    w, qtbot = app["window"], app["qtbot"]
    ident = w.panel("identities")
    w.show_panel("identities")
    assert ident.search.focusPolicy() == Qt.FocusPolicy.ClickFocus  # opening the view does not focus it
    called = []
    monkeypatch.setattr(w, "export_tracks_dialog", lambda: called.append(1))
    w.act_export.triggered.disconnect()
    w.act_export.triggered.connect(lambda: w.export_tracks_dialog())
    w.raise_()
    w.activateWindow()
    if QApplication.activeWindow() is not w:  # offscreen: earlier windows of the session took activation
        QApplication.setActiveWindow(w)
    qtbot.waitUntil(lambda: QApplication.activeWindow() is w, timeout=5_000)
    ident.search.setFocus()
    qtbot.keyClick(ident.search, Qt.Key.Key_E, Qt.KeyboardModifier.ControlModifier)
    assert called == [1], (QApplication.activeWindow(), w.act_export.isEnabled(), QApplication.focusWidget())
    assert ident.search.text() == ""
    # where the platform binds Ctrl+E in text boxes (X11: end of line), the box asks to keep the key
    # with a ShortcutOverride; the window's filter keeps that event from it, so the shortcut fires
    from PySide6.QtCore import QEvent
    from PySide6.QtGui import QKeyEvent

    ev = QKeyEvent(QEvent.Type.ShortcutOverride, Qt.Key.Key_E, Qt.KeyboardModifier.ControlModifier, "e")
    assert w._shortcut_filter.eventFilter(ident.search, ev)
    ev = QKeyEvent(QEvent.Type.ShortcutOverride, Qt.Key.Key_X, Qt.KeyboardModifier.ControlModifier, "x")
    assert not w._shortcut_filter.eventFilter(ident.search, ev)  # the box's own Ctrl+X (cut) stays


# -- 6. progress and time left -------------------------------------------------------------------

def test_6_eta_waits_for_evidence_and_follows_the_recent_rate():
    # the one estimator is the engine's (itkm_engine/eta.py); without a plan it follows the recent rate
    from itkm_engine.eta import Eta, format_eta

    now = [0.0]
    est = Eta(clock=lambda: now[0])
    assert est.update(0.0) is None
    now[0] = 2.0
    assert est.update(0.10) is None  # too early to say anything
    # a slow first phase, then a steady 1 % per second: the estimate follows the recent rate
    for t in range(10, 60):
        now[0] = float(t)
        left = est.update(0.10 + 0.01 * (t - 10))
    assert left == pytest.approx((1 - 0.59) / 0.01, rel=0.05)
    now[0] = 80.0  # no progress for 20 s: no stale estimate
    assert est.update(0.59) is None
    assert format_eta(49) == "about 50 s" and format_eta(442) == "about 7 min" and format_eta(3) == "a few seconds"


def test_6_stop_clears_progress_and_time_left(qapp):
    from itkm_engine.progress import ProgressEvent

    from itkm_app.widgets.progress import JobProgress

    p = JobProgress()
    p.show_event(ProgressEvent(job="train", fraction=0.72, eta_s=49.0, stage="stage3", epoch=1, epochs=4))
    assert p.overall_bar.value() == 720
    p.stopped("Stopped")
    assert p.stage_label.text() == "Stopped" and p.eta_label.text() == ""
    assert p.overall_bar.value() == 0 and not p.overall_bar.isTextVisible()


# -- 7. the 2-D map: cached per checkpoint, labelled with its model -------------------------------------

def test_7_cached_map_shows_without_umap_and_names_its_model(app, monkeypatch):
    w, qtbot = app["window"], app["qtbot"]
    import itkm_engine.projection as projection

    monkeypatch.setattr(projection, "umap_2d", lambda *a, **k: pytest.fail("the cached map was recomputed"))
    cl = w.panel("clusters")
    w.show_panel("clusters")
    qtbot.waitUntil(lambda: len(cl.ids) > 0 and cl.job is None, timeout=60_000)
    np.testing.assert_allclose(cl.xy, app["xy"])
    assert cl.info.text().startswith("Map of the round 1 model (tiny preset)")
    # a new model: the old map stays on screen, labelled, until the new one is ready
    monkeypatch.setattr(cl, "load", lambda: None)
    cl._model_changed()
    assert len(cl.ids) > 0 and "the model changed" in cl.info.text()


# -- 8. selections stay in the map --------------------------------------------------------------

def test_8_selection_stays_in_the_map_and_keeps_colours(app):
    w, qtbot = app["window"], app["qtbot"]
    cl = w.panel("clusters")
    w.show_panel("clusters")
    qtbot.waitUntil(lambda: len(cl.ids) > 0 and cl.job is None, timeout=60_000)
    colours = list(cl.scatter.cloud._colors)
    cl.select_rows(np.arange(5))
    assert w.tabs.currentWidget() is cl  # no jump to the gallery on release
    assert cl.open_sel.isEnabled() and cl.open_sel.text() == "Open 5 in gallery"
    assert cl.scatter.cloud._colors == colours
    assert "5 of" in cl.info.text()
    cl.open_sel.click()
    assert w.tabs.currentWidget() is w.panel("gallery")
    w.show_panel("clusters")
    cl.clear_selection()


# -- 9. training charts ----------------------------------------------------------------------------

def test_9_curve_colours_are_fixed_and_legends_sit_beside_the_plots(app):
    a = theme.curve_color("loss:cross").name()
    theme.curve_color("loss:zzz-new-term")
    assert theme.curve_color("loss:cross").name() == a  # not first-come: same in every session
    assert theme.curve_color("loss:zzz-new-term").name() == theme.curve_color("loss:zzz-new-term").name()
    curves = app["window"].panel("training").curves
    for plot in (curves.loss_plot, curves.cluster_plot, curves.quality_plot):
        assert plot.legend.parentItem() is not plot.getViewBox()  # not drawn over the curves
    names = {item.text for _s, item in curves.loss_plot.legend.items}
    assert {"cross", "instance"} <= names  # Stage III's terms are in the legend
    (xs, ys) = curves.series[("loss", "cross")]
    text = curves.value_at(curves.loss_plot, xs[-1], ys[-1], 0.1, 0.1)
    assert text.startswith("cross: ")


# -- 10. gallery marks -------------------------------------------------------------------------------

def test_10_same_person_tiles_are_marked_and_badges_explained(app):
    w, qtbot = app["window"], app["qtbot"]
    g = w.panel("gallery")
    w.show_panel("gallery")
    g.exclude_cam.setChecked(False)
    imgs = w.ctx.images
    qid = int(imgs.id[np.flatnonzero(imgs.person_id >= 0)[0]])
    g.query_image_id(qid)
    qtbot.waitUntil(lambda: g.job is None and g.query == ("image", qid) and bool(g.matches), timeout=60_000)
    pid = g.query_person_id()
    marked = [it.extra["same_person"] for it in g.grid.items()]
    assert marked == [m.person_id == pid for m in g.matches] and any(marked)
    assert f"{sum(marked)} " in g.header.text() and "green frames" in g.header.text()
    legend = g.legend_line.text()
    assert "VI</b> visible-infrared" in legend and "#N" in legend and "vis</b> visible" in legend


# -- 11. colour by identity ------------------------------------------------------------------------------

def test_11_every_identity_gets_its_own_colour(app):
    w, qtbot = app["window"], app["qtbot"]
    cl = w.panel("clusters")
    w.show_panel("clusters")
    qtbot.waitUntil(lambda: len(cl.ids) > 0 and w.ctx.identities is not None, timeout=60_000)
    cl.color_by.setCurrentIndex(cl.color_by.findData("identity"))
    ident = w.ctx.identity_of(cl.ids)
    uniq, counts = np.unique(ident[ident >= 0], return_counts=True)
    assert len(cl.colors) == int((counts > 1).sum())
    coloured = cl.codes >= 0
    assert np.array_equal(coloured, np.isin(ident, uniq[counts > 1]))
    cols = {c.name() for c in theme.golden_colors(253)}
    assert len(cols) == 253  # no colour repeats
    pal = theme.golden_colors(40)
    for a, b in zip(pal, pal[1:]):  # neighbouring identities: far-apart hues
        dh = abs(a.hueF() - b.hueF())
        assert min(dh, 1 - dh) > 0.2


# -- 12. first launch -------------------------------------------------------------------------------------

def test_12_demo_creation_is_shown_in_the_centre(qapp, recorded, tmp_path, monkeypatch):
    from pytestqt.qtbot import QtBot

    import itkm_app.tasks as tasks

    gate = threading.Event()

    def slow_demo(demo_dir, ws_dir, identities=60, *, reporter):
        reporter.update(0.3, stage="demo")
        gate.wait(30)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(tasks, "make_demo_workspace", slow_demo)
    monkeypatch.setenv("ITKM_DATA_DIR", str(tmp_path / "data"))
    qtbot = QtBot(None)
    window = MainWindow(Settings(tmp_path / "s.ini"), warm=False)
    window.show()
    try:
        window.open_demo(identities=4)
        cams = window.panel("cameras")
        qtbot.waitUntil(lambda: cams.empty.title.text().startswith("Creating the demo camera set"), timeout=10_000)
        assert cams.stack.currentWidget() is cams.empty
        qtbot.waitUntil(lambda: cams.empty._buttons.count() == 0, timeout=5_000)  # no "Open the demo" button
    finally:
        gate.set()
        wait_idle(qtbot, window)
        window.close()


# -- 13. relaunch and round durations ---------------------------------------------------------------------

def test_13_model_state_is_known_as_soon_as_the_workspace_opens(qapp, recorded, trained_ws, tmp_path):
    window = MainWindow(Settings(tmp_path / "s.ini"), dev=True, warm=False)
    try:
        window.open_workspace(trained_ws)  # the session still loads in the background
        assert window.model_label.text() == "Model: round 1, tiny preset"
        assert "Not trained yet" not in window.panel("training").state_label.text()
    finally:
        window.jobs.cancel_all()
        window.jobs.wait_idle(60)
        window.close()


def test_13_round_duration_leaves_out_the_time_the_app_was_closed():
    from itkm_app.panels.training import active_seconds

    epochs = [{"finished": 110.0, "values": {"seconds": 60.0}},
              {"finished": 86_400 + 170.0, "values": {"seconds": 60.0}},  # resumed the next day
              {"finished": 86_400 + 230.0, "values": {"seconds": 60.0}}]
    took = active_seconds(0.0, 86_400 + 240.0, epochs)
    assert took < 3600
    assert active_seconds(0.0, 240.0, [{"finished": 110.0, "values": {"seconds": 60.0}},
                                       {"finished": 230.0, "values": {"seconds": 60.0}}]) == 240.0


# -- 14. toolbar states during training --------------------------------------------------------------

def test_14_train_and_retrain_are_disabled_while_a_write_job_runs(app):
    w, qtbot = app["window"], app["qtbot"]
    assert w.act_train.isEnabled() and w.act_retrain.isEnabled() and w.act_export.isEnabled()
    gate = threading.Event()
    w.jobs.submit("busy writer", lambda *, reporter: gate.wait(30), kind="write")
    try:
        qtbot.waitUntil(lambda: not w.act_train.isEnabled(), timeout=5_000)
        assert not w.act_retrain.isEnabled()
        assert "training is running" in w.act_train.toolTip()
    finally:
        gate.set()
        wait_idle(qtbot, w)
    assert w.act_train.isEnabled()


# -- 15. clipped layout --------------------------------------------------------------------------------

def test_15_columns_and_editors_fit_their_text(app):
    from PySide6.QtWidgets import QComboBox, QHeaderView, QStyleOptionViewItem

    w, qtbot = app["window"], app["qtbot"]
    cams = w.panel("cameras")
    w.show_panel("cameras")
    qtbot.waitUntil(lambda: cams.model.rowCount() > 0 and not cams.loading(), timeout=30_000)
    h = cams.table.horizontalHeader()
    assert not h.stretchLastSection()
    assert all(h.sectionResizeMode(i) != QHeaderView.ResizeMode.Stretch for i in range(h.count()))
    combo = QComboBox()
    combo.addItems(["clothing-change", "visible-infrared"])
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
    assert cams.table.columnWidth(cams.model.SCENARIO) >= combo.sizeHint().width()
    delegate = cams.table.itemDelegateForColumn(cams.model.SCENARIO)
    idx = cams.proxy.index(0, cams.model.SCENARIO)
    assert delegate.sizeHint(QStyleOptionViewItem(), idx).width() >= combo.sizeHint().width()
    log = w.log_view.table
    assert log.columnWidth(1) >= log.fontMetrics().horizontalAdvance("warning") + 16


def test_15_query_box_at_1024x640(app):
    w, qtbot = app["window"], app["qtbot"]
    w.resize(1024, 640)
    g = w.panel("gallery")
    w.show_panel("gallery")
    qtbot.wait(50)
    try:
        choose = next(b for b in g.findChildren(type(g.rerank).__mro__[1]) if b.text() == "Choose file…")
        img = g.query_image
        a = img.mapTo(w, img.rect().topLeft())
        b = choose.mapTo(w, choose.rect().topLeft())
        r_img = img.rect().translated(a)
        r_btn = choose.rect().translated(b)
        assert not r_img.intersects(r_btn)
        boxes = [box.rect().translated(box.mapTo(w, box.rect().topLeft())) for box in (g.query_box, g.text_box)]
        assert not boxes[0].intersects(boxes[1])  # the query box is not drawn over "Describe a person"
    finally:
        w.resize(1600, 1000)


# -- 16. the Groups filter -----------------------------------------------------------------------------

def test_16_group_filter_does_not_say_all_twice(app):
    g = app["window"].panel("gallery")
    texts = [a.text() for a in g.f_group.menu_.actions() if a.text()]
    assert "All (no filter)" not in texts
    assert texts[0] == "Any group (clear the filter)"
    assert g.f_group.text() == "Groups: any"


# -- 17. identities: times and sort arrow ---------------------------------------------------------------

def test_17_frame_times_are_marked_and_the_axis_starts_on_the_day(app):
    from itkm_app.widgets.timeline import NAME_EPOCH, fmt_time

    w, qtbot = app["window"], app["qtbot"]
    assert fmt_time(NAME_EPOCH + 65).endswith("(from frame numbers)")
    ident = w.panel("identities")
    w.show_panel("identities")
    qtbot.waitUntil(lambda: bool(ident.summary) and ident.job is None, timeout=60_000)
    ident.select_identity(ident.model.rows[0].identity)
    assert ident.timeline.derived
    (x0, _x1), _ = ident.timeline.getViewBox().viewRange()
    assert x0 >= NAME_EPOCH
    assert "frame numbers" in ident.time_note.text()
    assert "from frame numbers" in ident.title_label.text()


def test_17_descending_sort_draws_a_down_arrow(qapp):
    from PySide6.QtCore import QRect
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtWidgets import QStyle, QStyleOptionHeader

    img = QImage(40, 40, QImage.Format.Format_ARGB32)
    img.fill(QColor("white"))
    opt = QStyleOptionHeader()
    opt.rect = QRect(0, 0, 40, 40)
    opt.palette.setColor(opt.palette.ColorRole.ButtonText, QColor("black"))
    opt.sortIndicator = QStyleOptionHeader.SortIndicator.SortUp  # what Qt passes for a descending column
    p = QPainter(img)
    style = theme._HeaderArrowStyle.make("Fusion")  # what apply_theme installs
    style.drawPrimitive(QStyle.PrimitiveElement.PE_IndicatorHeaderArrow, opt, p)
    p.end()
    dark = np.array([[img.pixelColor(x, y).lightness() < 128 for x in range(40)] for y in range(40)])
    rows = np.flatnonzero(dark.any(axis=1))
    widths = dark.sum(axis=1)
    assert widths[rows[0]] > widths[rows[-1]]  # wide at the top: a down-pointing arrow


# -- 18. export ------------------------------------------------------------------------------------------

def test_18_export_dialog_place_permissions_and_show_in_folder(app, tmp_path):
    from itkm_app.main_window import export_dir

    w, qtbot = app["window"], app["qtbot"]
    assert w.ctx.ws.path not in export_dir(w.settings).parents and export_dir(w.settings) != w.ctx.ws.path
    out = tmp_path / "tracks.csv"
    old = os.umask(0o022)
    try:
        job = w.export_tracks(str(out))
        done = []
        job.finished.connect(done.append)
        qtbot.waitUntil(lambda: bool(done), timeout=60_000)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert w._show_btn.isVisible() and w._last_export == str(out)
    assert export_dir(w.settings) == tmp_path  # the next export opens where this one went


# -- 19. wording -----------------------------------------------------------------------------------------

def test_2_a_refused_folder_gives_one_line_not_a_wall_of_text(app, recorded, tmp_path):
    w, qtbot = app["window"], app["qtbot"]
    (tmp_path / "empty").mkdir()
    before = len(recorded.calls)
    w.panel("cameras").ingest([str(tmp_path / "empty")])
    qtbot.waitUntil(lambda: len(recorded.calls) > before, timeout=30_000)
    wait_idle(qtbot, w)
    title, message, details = recorded.calls[-1]
    assert "\n" not in message and "has no images" in message
    assert "camera-folders" in details  # the supported layouts are one click away


def test_19_wording(app, recorded):
    from itkm_app.main_window import APP_NAME, data_dir
    from itkm_app.wording import plural

    assert plural(1, "error") == "1 error" and plural(2, "camera") == "2 cameras"
    assert plural(1, "identity") == "1 identity" and plural(1203, "image") == "1,203 images"
    w = app["window"]
    w._job_error("broken job", "boom", "")
    assert recorded.calls[-1][0] == "broken job failed" and APP_NAME not in recorded.calls[-1][0]
    assert "ITKM/ITKM Studio" not in str(data_dir()) or os.environ.get("ITKM_DATA_DIR")


# -- 20. cameras: samples and preview -----------------------------------------------------------------------

def test_20_several_samples_per_camera_and_a_larger_preview(app):
    from itkm_app.panels.cameras import PREVIEW_HEIGHT, SAMPLES

    w, qtbot = app["window"], app["qtbot"]
    cams = w.panel("cameras")
    w.show_panel("cameras")
    qtbot.waitUntil(lambda: cams.model.rowCount() > 0 and not cams.loading(), timeout=30_000)
    c = cams.model.cameras[0]
    paths = cams.model.sample_paths(c)
    assert len(paths) == min(SAMPLES, c.n_images) and len(set(paths)) == len(paths)
    tip = cams.model.data(cams.model.index(0, 0), Qt.ItemDataRole.ToolTipRole)
    assert tip.count("<img") == len(paths) and f'height="{PREVIEW_HEIGHT}"' in tip


def test_site_column_is_editable_and_says_what_it_edits(app):
    w, qtbot = app["window"], app["qtbot"]
    cams = w.panel("cameras")
    w.show_panel("cameras")
    qtbot.waitUntil(lambda: cams.model.rowCount() > 0 and not cams.loading(), timeout=30_000)
    m = cams.model
    assert m.COLUMNS[m.SITE] == "Site"
    assert "every camera" in m.headerData(m.SITE, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)
    c = m.cameras[0]
    assert m.setData(m.index(0, m.SITE), "north gate")
    qtbot.waitUntil(lambda: any(x.site == "north gate" for x in w.ctx.ws.sources()), timeout=30_000)
    qtbot.waitUntil(lambda: not cams.loading() and m.site(next(x for x in m.cameras if x.name == c.name))
                    == "north gate", timeout=30_000)
