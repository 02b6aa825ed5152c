"""The operator in the loop, in the app (pytest-qt, offscreen): confirm and reject matches from the
gallery with the keyboard and for a selection, undo/redo, the review queue, and merge / split /
name in the identities view -- each stored as constraints the identities obey at once."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QItemSelectionModel, Qt  # noqa: E402

from itkm_engine.workspace import decisions as D  # noqa: E402


@pytest.fixture
def window(qtbot, trained_ws, tmp_path):
    from itkm_app.main_window import MainWindow
    from itkm_app.settings import Settings

    ws_path = trained_ws
    w = MainWindow(Settings(tmp_path / "settings.ini"), dev=True, warm=False)
    qtbot.addWidget(w)
    w.resize(1280, 800)
    w.show()
    w.open_workspace(ws_path)
    qtbot.waitUntil(lambda: w.ctx.session is not None, timeout=120_000)
    _idle(qtbot, w)
    yield w
    w.jobs.cancel_all()
    _idle(qtbot, w)


def _idle(qtbot, w):
    qtbot.waitUntil(lambda: not w.jobs.busy("read") and not w.jobs.busy("write"), timeout=120_000)


def _same(w, a, b) -> bool:
    ident = w.ctx.identity_of(np.array([a, b]))
    return bool(ident[0] == ident[1] >= 0)


def test_confirm_and_reject_from_the_gallery(qtbot, window):
    w, ws = window, window.ctx.session.ws
    gallery = w.panel("gallery")
    w.show_panel("gallery")
    qid = int(w.ctx.images.id[0])
    gallery.query_image_id(qid)
    qtbot.waitUntil(lambda: gallery.job is None and len(gallery.matches) >= 5, timeout=60_000)
    grid = gallery.grid
    items = grid.items()
    grid.setFocus()
    grid.setCurrentIndex(grid.model().index(0, 0))

    qtbot.keyClick(grid, Qt.Key.Key_Y)  # first match: same person; the next tile becomes current
    assert D.load_constraints(ws).decision(qid, items[0].image_id) == "must"
    assert items[0].decision == "must" and grid.current_item() is items[1]
    qtbot.keyClick(grid, Qt.Key.Key_N)  # second: not this person
    assert D.load_constraints(ws).decision(qid, items[1].image_id) == "cannot"
    _idle(qtbot, w)
    assert _same(w, qid, items[0].image_id) and not _same(w, qid, items[1].image_id)

    # a whole selection is one decision and one undo step
    sel = grid.selectionModel()
    sel.clearSelection()
    for r in (2, 3):
        sel.select(grid.model().index(r, 0), QItemSelectionModel.SelectionFlag.Select)
    gallery.confirm_btn.click()
    batches = {d.batch for d in D.history(ws) if d.image_b in (items[2].image_id, items[3].image_id)
               or d.image_a in (items[2].image_id, items[3].image_id)}
    assert len(batches) == 1
    qtbot.keyClick(grid, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    cons = D.load_constraints(ws)
    assert cons.decision(qid, items[2].image_id) is None and cons.decision(qid, items[0].image_id) == "must"
    assert items[2].decision is None
    qtbot.keyClick(grid, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert D.load_constraints(ws).decision(qid, items[3].image_id) == "must" and items[3].decision == "must"
    _idle(qtbot, w)

    # the review queue: N rejects the pair shown and moves on; an arrow skips one
    gallery.review_btn.click()
    qtbot.waitUntil(lambda: gallery.query is not None and gallery.query[0] == "review", timeout=60_000)
    first = gallery.review[0]
    assert gallery.grid.items()[0].image_id == first.image_b
    qtbot.keyClick(gallery.grid, Qt.Key.Key_N)
    assert D.load_constraints(ws).decision(first.image_a, first.image_b) == "cannot"
    assert gallery.query[2] == 1
    qtbot.keyClick(gallery.grid, Qt.Key.Key_Right)
    assert gallery.query[2] == 2
    _idle(qtbot, w)


def test_merge_split_and_name_in_the_identities_view(qtbot, window):
    w, ws = window, window.ctx.session.ws
    panel = w.panel("identities")
    w.show_panel("identities")
    panel.hide_single.setChecked(False)
    qtbot.waitUntil(lambda: panel.job is None and len(panel.summary) >= 2, timeout=60_000)
    t = w.ctx.identities
    a, b = panel.summary[0].identity, panel.summary[1].identity
    ia, ib = int(t.image_id[t.identity == a][0]), int(t.image_id[t.identity == b][0])
    panel.table.clearSelection()
    panel.select_identity(a)
    r_b = next(r for r in range(panel.proxy.rowCount())
               if panel.model.rows[panel.proxy.mapToSource(panel.proxy.index(r, 0)).row()].identity == b)
    panel.table.selectionModel().select(panel.proxy.index(r_b, 0),
                                        QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows)
    assert set(panel.selected_identities()) == {a, b}
    panel.merge_btn.click()
    qtbot.waitUntil(lambda: panel.job is None and bool(panel.summary), timeout=60_000)
    assert _same(w, ia, ib)

    merged = int(w.ctx.identity_of(np.array([ia]))[0])
    panel.select_identity(merged)
    strip = panel.strip
    strip.selectionModel().select(strip.model().index(0, 0), QItemSelectionModel.SelectionFlag.Select)
    moved = strip.items()[0].image_id
    stay = next(it.image_id for it in strip.items()[1:])
    panel.split_btn.click()
    qtbot.waitUntil(lambda: panel.job is None and bool(panel.summary), timeout=60_000)
    assert not _same(w, moved, stay)

    ident = int(w.ctx.identity_of(np.array([stay]))[0])
    panel.select_identity(ident)
    panel.name_edit.setText("Visitor 7")
    panel.note_edit.setText("left by the north gate")
    panel.name_btn.click()
    qtbot.waitUntil(lambda: panel.job is None and bool(panel.summary), timeout=60_000)
    ident = int(w.ctx.identity_of(np.array([stay]))[0])
    assert panel.model.names[ident] == ("Visitor 7", "left by the north gate")
    panel.search.setText("visitor")
    assert panel.proxy.rowCount() == 1
    panel.undo_btn.click()  # the name
    qtbot.waitUntil(lambda: panel.job is None and bool(panel.summary), timeout=60_000)
    assert panel.model.names == {}
    _idle(qtbot, w)


def test_ids_stay_put_the_acted_on_identity_stays_selected_and_a_split_asks(qtbot, window, monkeypatch):
    """Stable ids in the app (issue 17 §1, issue 16 §3): a confirm in the gallery changes no badge
    whose image's identity did not change, and undo gives every badge back; a merge keeps the older id selected and shows what it
    merged; a split of several sightings asks whether they are one person, and "no" makes each
    an identity of its own."""
    w = window
    panel = w.panel("identities")
    w.show_panel("identities")  # the identities, loaded
    qtbot.waitUntil(lambda: panel.job is None and len(panel.summary) >= 3, timeout=60_000)
    gallery = w.panel("gallery")
    w.show_panel("gallery")
    t = w.ctx.identities
    qid = int(t.image_id[0])
    gallery.query_image_id(qid)
    qtbot.waitUntil(lambda: gallery.job is None and len(gallery.matches) >= 5, timeout=60_000)
    items = gallery.grid.items()
    badges = [it.identity for it in items]
    other = next(i for i, it in enumerate(items) if it.identity is not None and it.identity != badges[0]
                 and int(w.ctx.identity_of(np.array([qid]))[0]) != it.identity)
    joined = {badges[other], int(w.ctx.identity_of(np.array([qid]))[0])}
    gallery.grid.setCurrentIndex(gallery.grid.model().index(other, 0))
    gallery.grid.selectionModel().clearSelection()
    qtbot.keyClick(gallery.grid, Qt.Key.Key_Y)  # the query's person: their two identities become one
    _idle(qtbot, w)
    now = [it.identity for it in gallery.grid.items()]
    assert now[other] == int(w.ctx.identity_of(np.array([qid]))[0]) == min(joined)
    assert [x for x, b in zip(now, badges) if b not in joined] == [b for b in badges if b not in joined]
    w.ctx.session.undo()
    gallery._decisions_changed()
    _idle(qtbot, w)
    assert [it.identity for it in gallery.grid.items()] == badges  # undo: every badge as it was

    w.show_panel("identities")
    panel.hide_single.setChecked(False)
    qtbot.waitUntil(lambda: panel.job is None and len(panel.summary) >= 3, timeout=60_000)
    a, b = panel.summary[0].identity, panel.summary[1].identity
    kept, gone = min(a, b), max(a, b)
    panel.select_identity(panel.summary[2].identity)  # the view shows another one first
    panel.table.clearSelection()
    for x in (gone, kept):
        r = next(r for r in range(panel.proxy.rowCount())
                 if panel.model.rows[panel.proxy.mapToSource(panel.proxy.index(r, 0)).row()].identity == x)
        panel.table.selectionModel().select(panel.proxy.index(r, 0), QItemSelectionModel.SelectionFlag.Select
                                            | QItemSelectionModel.SelectionFlag.Rows)
    panel.merge_btn.click()
    qtbot.waitUntil(lambda: panel.job is None and bool(panel.summary), timeout=60_000)
    assert panel.shown_identity == kept  # the merged identity, under the older id, still selected
    assert f"Identity #{kept}</b> (merged #{gone})" in panel.title_label.text()
    assert panel.model.data(panel.model.index(next(i for i, s in enumerate(panel.model.rows) if s.identity == kept), 0)
                            ).startswith(f"#{kept} (merged #{gone})")

    c = next(x.identity for x in panel.summary if x.identity not in (kept, gone) and x.size >= 4)
    panel.select_identity(c)  # sightings no decision joined
    asked = []
    monkeypatch.setattr(panel, "ask_split_together", lambda n: asked.append(n) or False)
    strip = panel.strip
    for i in (0, 1):
        strip.selectionModel().select(strip.model().index(i, 0), QItemSelectionModel.SelectionFlag.Select)
    p, q = (it.image_id for it in strip.items()[:2])
    panel.split_btn.click()
    qtbot.waitUntil(lambda: panel.job is None and bool(panel.summary), timeout=60_000)
    assert asked == [2]
    ident = w.ctx.identity_of(np.array([p, q]))
    assert ident[0] != ident[1] and c not in ident  # each left, on its own
    assert panel.shown_identity == c  # the larger part keeps the id, and the view keeps it
    _idle(qtbot, w)
