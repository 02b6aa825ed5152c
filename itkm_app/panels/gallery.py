"""Gallery: a query (an image of the workspace, an outside image file, or a text description)
and its top-K matches across scenarios as a thumbnail grid with badges; filters; re-ranking.

Queries go through ``Session.query_image`` / ``query_file`` / ``query_text`` in ``read`` jobs;
a newer query cancels the one in flight.  A set of images (a lasso in the Clusters view) is shown
as a grid without similarities.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtWidgets import (QCheckBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QSpinBox, QSplitter, QVBoxLayout, QWidget)

from itkm_engine.errors import ItkmError
from itkm_engine.vocabulary import GROUPS, SCENARIOS

from .. import tasks
from ..widgets.check_menu_button import CheckMenuButton
from ..widgets.model_banner import ModelBanner
from ..widgets.thumb_grid import ThumbGrid, ThumbItem, badge_legend
from ..widgets.undo_keys import undo_redo_buttons
from ..wording import plural
from .base import Panel

QUERY_BOX = QSize(88, 176)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: A selection larger than this is shown in part (the grid stays quick to scroll and filter).
MAX_SET = 20_000


class QueryImage(QLabel):
    """The query crop; accepts a dropped image file."""

    def __init__(self, panel: "GalleryPanel") -> None:
        super().__init__()
        self.panel = panel
        self.setAcceptDrops(True)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setFixedSize(QUERY_BOX + QSize(12, 12))
        self.setFrameShape(QLabel.Shape.StyledPanel)
        self.setText("Drop an image\nhere")
        self.setToolTip("Drop an image file to search for that person")

    @staticmethod
    def _file(mime) -> str | None:
        if mime.hasUrls():
            for u in mime.urls():
                p = u.toLocalFile()
                if p and os.path.isfile(p) and p.lower().endswith(IMAGE_SUFFIXES):
                    return p
        return None

    def dragEnterEvent(self, e) -> None:  # noqa: N802
        if self._file(e.mimeData()):
            e.acceptProposedAction()
        else:
            e.ignore()

    def dropEvent(self, e) -> None:  # noqa: N802
        p = self._file(e.mimeData())
        if p:
            e.acceptProposedAction()
            self.panel.query_file(p)


class GalleryPanel(Panel):
    key = "gallery"
    title = "Gallery"

    def __init__(self, ctx, parent=None) -> None:
        super().__init__(ctx, parent)
        self.setAcceptDrops(True)
        self.query: tuple | None = None
        self.matches: list = []
        # -- query column
        self.query_image = QueryImage(self)
        self.query_info = QLabel("Click a point in the Clusters view, choose an image file, drop one here, "
                                 "or describe a person below.")
        self.query_info.setMinimumWidth(120)
        self.query_info.setWordWrap(True)
        self.query_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        choose = QPushButton("Choose file…")
        choose.clicked.connect(self.choose_file)
        qbox = QGroupBox("Query")
        ql = QVBoxLayout(qbox)
        row = QHBoxLayout()
        row.addWidget(self.query_image, 0, Qt.AlignmentFlag.AlignTop)
        info_col = QVBoxLayout()
        info_col.addWidget(self.query_info, 1)
        info_col.addWidget(choose, 0, Qt.AlignmentFlag.AlignLeft)
        row.addLayout(info_col, 1)
        ql.addLayout(row)
        # the box never gets less height than the crop it shows ("Choose file…" covered it at 1024x640)
        qbox.setMinimumHeight(self.query_image.height() + 40)
        self.text = QLineEdit()
        self.text.setPlaceholderText("e.g. a person in a red jacket")
        self.text.setClearButtonEnabled(True)
        self.text.returnPressed.connect(lambda: self.query_text(self.text.text()))
        search = QPushButton("Search")
        search.clicked.connect(lambda: self.query_text(self.text.text()))
        self.search_btn = search
        tbox = QGroupBox("Describe a person")
        tcol = QVBoxLayout(tbox)
        tl = QHBoxLayout()
        tl.addWidget(self.text, 1)
        tl.addWidget(search)
        tcol.addLayout(tl)
        # where the model's text tower is random, text search is off and this says why and how to get it
        self.text_off = QLabel("")
        self.text_off.setWordWrap(True)
        self.text_off.hide()
        tcol.addWidget(self.text_off)
        self.top_k = QSpinBox()
        self.top_k.setRange(5, 1000)
        self.top_k.setSingleStep(10)
        self.top_k.setValue(ctx.settings.get("gallery/top_k", 50, int))
        self.rerank = QCheckBox("Re-rank (k-reciprocal)")
        self.rerank.setChecked(ctx.settings.get("gallery/rerank", False, bool))
        self.rerank.setToolTip("Slower, often more accurate ranking for image queries. Scores are then "
                               "1 − the re-ranked distance, not cosine similarities: compare them only with each other")
        self.exclude_cam = QCheckBox("Exclude the query's camera")
        self.exclude_cam.setChecked(ctx.settings.get("gallery/exclude_same_camera", True, bool))
        self.f_scen = CheckMenuButton("Scenarios")
        self.f_group = CheckMenuButton("Groups")
        self.f_cam = CheckMenuButton("Cameras")
        self.f_site = CheckMenuButton("Sites")
        self.f_site.setToolTip("Only matches from cameras of these sites (where their folders were filmed)")
        self.f_scen.set_values(list(SCENARIOS))
        self.f_group.set_values(list(GROUPS))
        obox = QGroupBox("Matches")
        ol = QFormLayout(obox)
        ol.addRow("Top K", self.top_k)
        ol.addRow(self.rerank)
        ol.addRow(self.exclude_cam)
        ol.addRow(self.f_scen)
        ol.addRow(self.f_group)
        ol.addRow(self.f_cam)
        ol.addRow(self.f_site)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(qbox)
        ll.addWidget(tbox)
        ll.addWidget(obox)
        ll.addStretch(1)
        self.query_box, self.text_box = qbox, tbox
        # a small window scrolls this column instead of drawing its boxes over each other
        from ..widgets.side_column import scrolling_column

        left_scroll = scrolling_column(left, 280, 380)
        # -- results
        self.header = QLabel("")
        self.header.setWordWrap(True)
        self.banner = ModelBanner(ctx, "Matches")
        self.legend_line = QLabel(badge_legend())
        self.legend_line.setWordWrap(True)
        self.legend_line.setEnabled(False)
        self.grid = ThumbGrid(ctx.thumbs)
        self.grid.itemActivated.connect(lambda it: self.query_image_id(it.image_id))
        self.grid.setToolTip("Double-click a match to make it the query")
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.banner)
        rl.addWidget(self.header)
        rl.addWidget(self._decision_bar())
        rl.addWidget(self.grid, 1)
        rl.addWidget(self.legend_line)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left_scroll)
        split.addWidget(right)
        split.setStretchFactor(1, 1)
        split.setSizes([300, 980])
        lay = QVBoxLayout(self.content)
        lay.addWidget(split)
        # re-run the current query when an option changes (debounced)
        self._rerun = QTimer(self)
        self._rerun.setSingleShot(True)
        self._rerun.setInterval(250)
        self._rerun.timeout.connect(self.rerun)
        self.top_k.valueChanged.connect(self._options_changed)
        self.rerank.toggled.connect(self._options_changed)
        self.exclude_cam.toggled.connect(self._options_changed)
        for b in (self.f_scen, self.f_group, self.f_cam, self.f_site):
            b.on_change = self._options_changed
        ctx.sitesChanged.connect(lambda: self.f_site.set_values(sorted(set(self.ctx.camera_sites.values()))))
        ctx.thumbs.ready.connect(self._thumb_ready)
        ctx.queryImage.connect(self.query_image_id)
        ctx.openSet.connect(self.show_set)
        ctx.workspaceChanged.connect(lambda _w: self._reset())
        ctx.sessionChanged.connect(lambda _s: self._reset())
        ctx.modelChanged.connect(self.rerun)
        ctx.identitiesChanged.connect(lambda _t: self._refresh_identity_badges())
        ctx.modelStateChanged.connect(self._model_state_changed)
        self._reset()

    def _model_state_changed(self, state) -> None:
        """Text search on or off, with the reason (``itkm_engine/text_search.py``)."""
        reason = state.text_off if state is not None else None
        for w in (self.text, self.search_btn):
            w.setEnabled(reason is None)
        self.text_off.setText(reason or "")
        self.text_off.setVisible(reason is not None)
        self.text.setPlaceholderText("text search is off (see below)" if reason else "e.g. a person in a red jacket")

    # -- state ---------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.task.discard()  # a query of the earlier workspace or session
        self.query = None
        self.matches = []
        self.grid.set_items([])
        self.query_image.clear()
        self.query_image.setText("Drop an image\nhere")
        self.header.setText("")
        if not self.session_ready("Open a workspace to search it."):
            return
        imgs = self.ctx.images
        if imgs is not None and len(imgs):
            self.f_cam.set_values(sorted({str(c) for c in imgs.camera}))
            self.f_scen.set_values(sorted({str(s) for s in imgs.scenario}))
            self.f_group.set_values(sorted({str(g) for g in imgs.group}))

    def _options_changed(self) -> None:
        s = self.ctx.settings
        s.set("gallery/top_k", self.top_k.value())
        s.set("gallery/rerank", self.rerank.isChecked())
        s.set("gallery/exclude_same_camera", self.exclude_cam.isChecked())
        if self.query is not None and self.query[0] != "set":
            self._rerun.start()

    def filters(self) -> dict:
        cameras = frozenset(self.f_cam.checked()) or None
        sites = self.f_site.checked()
        if sites:  # a site filter is the cameras of those sites (within the camera filter, if any)
            of_sites = {c for c, site in self.ctx.camera_sites.items() if site in sites}
            cameras = frozenset(of_sites & set(cameras) if cameras else of_sites) or frozenset({"\0no camera"})
        return {
            "scenarios": frozenset(self.f_scen.checked()) or None,
            "groups": frozenset(self.f_group.checked()) or None,
            "cameras": cameras,
            "exclude_same_camera": self.exclude_cam.isChecked(),
        }

    # -- queries -----------------------------------------------------------------------------------------
    def _submit(self, name: str, fn, *args) -> None:
        """Run a query as the panel's task: a newer query supersedes the one in flight."""
        self.header.setText("Searching…")
        self.task.start(name, fn, *args, on_done=self._show_matches,
                        on_error=lambda msg, _tb: self.header.setText(f"The search failed: {msg}"))

    def query_image_id(self, image_id: int) -> None:
        """Matches for an image of the workspace (from the 2-D map, a double-click, an identity)."""
        session = self.ctx.session
        if session is None:
            return
        self.query = ("image", int(image_id))
        self._show_query_image_id(int(image_id))
        self._submit("query image", tasks.query_image, session, int(image_id), self.top_k.value(), self.filters(),
                     self.rerank.isChecked())

    def query_file(self, path: str) -> None:
        session = self.ctx.session
        if session is None:
            return
        self.query = ("file", path)
        self._set_query_pixmap(path)
        self.query_info.setText(f"<b>File</b><br>{os.path.basename(path)}")
        self.query_info.setToolTip(path)
        f = {**self.filters(), "exclude_same_camera": False}
        self._submit("query file", tasks.query_file, session, path, self.top_k.value(), f)

    def query_text(self, text: str) -> None:
        session = self.ctx.session
        text = (text or "").strip()
        state = self.ctx.model_state
        if session is None or not text or (state is not None and state.text_off):
            return
        self.query = ("text", text)
        self.query_image.clear()
        self.query_image.setText(f"“{text}”")
        self.query_image.setWordWrap(True)
        self.query_info.setText("<b>Text search</b><br>ranked through the model's CLIP text encoder")
        f = {**self.filters(), "exclude_same_camera": False}
        self._submit("query text", tasks.query_text, session, text, self.top_k.value(), f)

    def rerun(self) -> None:
        q = self.query
        if q is None:
            return
        if q[0] == "image":
            self.query_image_id(q[1])
        elif q[0] == "file":
            self.query_file(q[1])
        elif q[0] == "text":
            self.query_text(q[1])

    def choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Query image", os.path.expanduser("~"),
                                              "Images (*.jpg *.jpeg *.png *.bmp *.webp *.tif *.tiff)")
        if path:
            self.query_file(path)

    # -- display -------------------------------------------------------------------------------------------
    def _show_query_image_id(self, image_id: int) -> None:
        imgs = self.ctx.images
        r = int(self.ctx.image_rows(np.array([image_id]))[0]) if imgs is not None else -1
        if r < 0:
            self.query_info.setText(f"image {image_id}")
            return
        self._set_query_pixmap(imgs.path[r])
        ident = int(self.ctx.identity_of(np.array([image_id]))[0])
        pid = int(imgs.person_id[r])
        lines = [f"<b>Image {image_id}</b>", f"camera <b>{imgs.camera[r]}</b>", f"{imgs.scenario[r]} / {imgs.group[r]}"]
        if ident >= 0:
            lines.append(f"identity #{ident}")
        if pid >= 0:
            lines.append(f"person id {pid} (labels)")
        self.query_info.setText("<br>".join(lines))
        self.query_info.setToolTip(imgs.path[r])

    def _set_query_pixmap(self, path: str) -> None:
        self._query_path = path
        self.query_image.setText("")
        pm = self.ctx.thumbs.get(path, QUERY_BOX)
        if pm is not None:
            self.query_image.setPixmap(pm)
        else:
            self.query_image.setText("loading…")

    def _thumb_ready(self, path: str) -> None:
        if getattr(self, "_query_path", None) == path and self.query is not None and self.query[0] in ("image", "file", "review"):
            pm = self.ctx.thumbs.get(path, QUERY_BOX)
            if pm is not None:
                self.query_image.setPixmap(pm)
            elif self.ctx.thumbs.failed(path, QUERY_BOX):
                self.query_image.setText("cannot show\nthis image")

    def query_person_id(self) -> int:
        """The labelled person id of an image query (-1: none, or not an image query)."""
        if not self.query or self.query[0] != "image" or self.ctx.images is None:
            return -1
        r = int(self.ctx.image_rows(np.array([self.query[1]]))[0])
        return int(self.ctx.images.person_id[r]) if r >= 0 else -1

    def _show_matches(self, matches: list) -> None:
        self.matches = list(matches)
        pid = self.query_person_id()
        items = [ThumbItem(m.image_id, m.path, m.camera, m.scenario, m.group, m.similarity,
                           m.identity if m.identity >= 0 else None, m.person_id,
                           extra={"same_person": pid >= 0 and m.person_id == pid}) for m in self.matches]
        self._mark_decisions(items)
        self._name_items(items)
        self.grid.set_items(items)
        if not items:
            self.header.setText("No matches with these filters.")
            return
        by_scen = Counter(m.scenario for m in self.matches)
        cams = len({m.camera for m in self.matches})
        what = {"image": "this image", "file": "this file", "text": "this description"}.get(self.query[0], "")
        extra = ""
        if pid >= 0:
            hits = sum(1 for it in items if it.extra["same_person"])
            extra = (f" · {hits} {'is' if hits == 1 else 'are'} the query's person by the labels "
                     "(green frames)" if hits else " · none is the query's person by the labels")
        reranked = self.query[0] == "image" and self.rerank.isChecked()
        scores = ("Scores: re-ranked (1 − k-reciprocal distance; not cosines)" if reranked else
                  "Scores: cosine similarity" if self.query[0] != "text" else "Scores: image–text cosine")
        top = "Top match" if len(items) == 1 else f"Top {len(items)} matches"
        self.header.setText(
            f"<b>{top}</b> for {what} across {plural(cams, 'camera')} — "
            + ", ".join(f"{n} {s}" for s, n in by_scen.most_common()) + extra + f"<br>{scores}.")

    def show_set(self, image_ids, title: str) -> None:
        """Show a set of workspace images (a lasso selection) as a grid, without a query."""
        imgs = self.ctx.images
        if imgs is None:
            return
        ids = np.asarray(image_ids, np.int64)
        shown = ids[:MAX_SET]
        rows = self.ctx.image_rows(shown)
        ident = self.ctx.identity_of(shown)
        items = [ThumbItem(int(i), imgs.path[r], str(imgs.camera[r]), str(imgs.scenario[r]), str(imgs.group[r]),
                           None, int(d) if d >= 0 else None, int(imgs.person_id[r]))
                 for i, r, d in zip(shown, rows, ident) if r >= 0]
        self.query = ("set", ids, title)
        self.matches = []
        self._name_items(items)
        self.grid.set_items(items)
        self.query_image.clear()
        self.query_image.setText(f"{len(ids):,}\nimages")
        self.query_info.setText(f"<b>Selection</b><br>{title}<br>Double-click one to search for it.")
        more = f" (showing the first {MAX_SET:,})" if len(ids) > MAX_SET else ""
        by_scen = Counter(it.scenario for it in items)
        self.header.setText(f"<b>{title}</b>{more} — " + ", ".join(f"{n} {s}" for s, n in by_scen.most_common()))

    def _refresh_identity_badges(self) -> None:
        items = self.grid.items()
        if not items:
            return
        ident = self.ctx.identity_of(np.array([it.image_id for it in items], np.int64))
        for it, d in zip(items, ident):
            it.identity = int(d) if d >= 0 else None
        self._name_items(items)
        self.grid.viewport().update()

    def _name_items(self, items: list) -> None:
        """The operator's names of the tiles' identities (``ctx.identity_names``)."""
        names = self.ctx.identity_names
        for it in items:
            it.name = names.get(it.identity, ("", ""))[0] if it.identity is not None else ""

    # -- the operator's decisions (itkm_engine/constraints.py) ---------------------------------------------
    def _decision_bar(self) -> QWidget:
        bar = QWidget()
        lay = QHBoxLayout(bar)
        lay.setContentsMargins(0, 0, 0, 0)
        self.confirm_btn = QPushButton("Same person (Y)")
        self.confirm_btn.setToolTip("Confirm: the selected matches show the query's person. The next round obeys it.")
        self.reject_btn = QPushButton("Not this person (N)")
        self.reject_btn.setToolTip("Reject: the selected matches are someone else. The next round obeys it.")
        self.undo_btn, self.redo_btn = undo_redo_buttons(self, self.undo_redo)
        self.review_btn = QPushButton("Review queue")
        self.review_btn.setToolTip("Pairs to review, per direction (every group of each scenario in turn), "
                                   "those whose answer would change a label first: Y / N decides, the arrows skip")
        self.decision_info = QLabel("")
        self.confirm_btn.clicked.connect(lambda: self.decide("must"))
        self.reject_btn.clicked.connect(lambda: self.decide("cannot"))
        self.review_btn.clicked.connect(self.start_review)
        for w in (self.confirm_btn, self.reject_btn, self.undo_btn, self.redo_btn, self.review_btn):
            lay.addWidget(w)
        lay.addWidget(self.decision_info, 1)
        self.grid.decisionKey.connect(self.decide)
        self.grid.stepped.connect(self._review_step)
        self.review: list = []
        return bar

    def _mark_decisions(self, items: list) -> None:
        """Each tile's decision against the query (or, for a set, any decision it is part of)."""
        session = self.ctx.session
        if session is None or not items:
            return
        cons = session.constraints()
        anchor = self.query[1] if self.query and self.query[0] in ("image", "review") else None
        for it in items:
            it.decision = cons.decision(int(anchor), it.image_id) if anchor is not None else None

    def _pairs_for(self, kind: str, items: list) -> list[tuple[int, int]] | str:
        """The image pairs a decision on ``items`` means, or why there are none."""
        q = self.query
        if q is not None and q[0] in ("image", "review"):
            return [(int(q[1]), it.image_id) for it in items if it.image_id != int(q[1])]
        if q is not None and q[0] == "set":
            if kind != "must":
                return "Rejecting needs a query image: search for one person, then reject its wrong matches."
            if len(items) < 2:
                return "Select two or more crops of one person to confirm them together."
            ids = sorted(it.image_id for it in items)
            return list(zip(ids[:-1], ids[1:]))
        return "Decisions pair a match with a query image of the workspace: search for an image first."

    def decide(self, kind: str) -> None:
        """Confirm ("must") or reject ("cannot") the selected tiles (else the current one)."""
        session = self.ctx.session
        if session is None or self.ctx.readonly:
            self.decision_info.setText("The workspace is open read-only: decisions cannot be stored.")
            return
        items = self.grid.selected_items() or ([self.grid.current_item()] if self.grid.current_item() else [])
        if not items:
            self.decision_info.setText("Select a match first (arrows move, Y confirms, N rejects).")
            return
        pairs = self._pairs_for(kind, items)
        if isinstance(pairs, str):
            self.decision_info.setText(pairs)
            return
        try:
            (session.confirm_pairs if kind == "must" else session.reject_pairs)(pairs)
        except ItkmError as exc:  # e.g. a confirm across two sites: refused, with the reason
            self.decision_info.setText(str(exc))
            return
        for it in items:
            it.decision = kind
        n = len(items)
        self.decision_info.setText(f"{'Confirmed' if kind == 'must' else 'Rejected'} {n} "
                                   f"match{'es' if n != 1 else ''}; the next round obeys it (Ctrl+Z undoes).")
        self._decisions_changed()
        if self.query and self.query[0] == "review":
            self._show_review(self.query[2] + 1)
        else:
            self.grid.refresh_items()
            self.grid.advance()

    def undo_redo(self, redo: bool) -> None:
        session = self.ctx.session
        if session is None or self.ctx.readonly:
            return
        step = session.redo() if redo else session.undo()
        word = "Redone" if redo else "Undone"
        self.decision_info.setText(f"{word}: {session.describe_step(step)}." if step is not None else
                                   f"Nothing to {'redo' if redo else 'undo'}.")
        if step is not None:
            self._mark_decisions(self.grid.items())
            self.grid.refresh_items()
            self._decisions_changed()

    def _decisions_changed(self) -> None:
        """Identities obey the decisions at once: recompute them (cheap) and tell the panels."""
        self.run("identities", tasks.named_identities, self.ctx.session, on_done=lambda r: self.ctx.set_identities(*r))

    # review queue
    def start_review(self) -> None:
        session = self.ctx.session
        if session is None:
            return
        self.decision_info.setText("Finding the pairs to review…")
        self.run("review queue", tasks.review_queue, session, 200, on_done=self._review_ready)

    def _review_ready(self, queue: list) -> None:
        self.review = list(queue)
        if not self.review:
            self.decision_info.setText("Nothing to review: every candidate pair has been decided.")
            return
        self.decision_info.setText(f"Review queue: {plural(len(self.review), 'pair')}, per direction, those whose "
                                   "answer would change a label first.")
        self._show_review(0)

    def _show_review(self, i: int) -> None:
        imgs = self.ctx.images
        if not self.review or imgs is None:
            return
        if i >= len(self.review):
            self.decision_info.setText(f"Review done: {len(self.review)} pairs. Press 'Review queue' for more.")
            self.review = []
            return
        i = max(i, 0)
        p = self.review[i]
        self.query = ("review", p.image_a, i)
        self._show_query_image_id(p.image_a)
        r = int(self.ctx.image_rows(np.array([p.image_b]))[0])
        ident = int(self.ctx.identity_of(np.array([p.image_b]))[0])
        item = ThumbItem(p.image_b, imgs.path[r], str(imgs.camera[r]), str(imgs.scenario[r]), str(imgs.group[r]),
                         p.similarity, ident if ident >= 0 else None, int(imgs.person_id[r]))
        self._mark_decisions([item])
        self._name_items([item])
        self.grid.set_items([item])
        self.grid.setCurrentIndex(self.grid.model().index(0, 0))
        self.grid.setFocus()
        where = p.direction or ("across scenarios" if p.cross_scenario else "within a scenario")
        # the round's answer is its labels (a clustering), not a threshold on this one number: two
        # pairs at one similarity can get different answers, so the direction's boundary is shown
        now = "the last round put them together" if p.same_label else "the last round kept them apart"
        side = "above" if p.similarity >= p.boundary else "below"
        self.header.setText(f"<b>Review {i + 1} of {len(self.review)}</b> — {where}: similarity {p.similarity:.3f}, "
                            f"{side} the boundary {p.boundary:.3f}; {now}. Y: same person · N: not · arrows: skip")

    def _review_step(self, step: int) -> None:
        if self.query and self.query[0] == "review":
            self._show_review(self.query[2] + step)

    # -- drops on the whole panel ---------------------------------------------------------------------------
    def dragEnterEvent(self, e) -> None:  # noqa: N802
        self.query_image.dragEnterEvent(e)

    def dropEvent(self, e) -> None:  # noqa: N802
        self.query_image.dropEvent(e)

    def prepare_screenshot(self) -> None:
        """A representative query: an image of the largest identity seen by several cameras
        (else of the largest identity, else the first image)."""
        imgs = self.ctx.images
        if self.query is not None or imgs is None or not len(imgs):
            return
        image_id = int(imgs.id[0])
        t = self.ctx.identities
        if t is not None and len(t):
            uniq, counts = np.unique(t.identity, return_counts=True)
            cams = np.asarray(imgs.camera)[np.maximum(imgs.index_of(t.image_id), 0)]
            best = None
            for ident in uniq[np.argsort(-counts, kind="stable")][:50]:
                members = np.flatnonzero(t.identity == ident)
                if best is None:
                    best = members
                if len(set(cams[members])) > 1:
                    best = members
                    break
            image_id = int(t.image_id[best[0]])
        self.query_image_id(image_id)
