"""What the panels share: the open workspace and session, the job manager, settings, and
cross-panel signals.

Panels never hold references to each other; they talk through these signals (the Clusters view
asks for "open this image in the gallery", the Cameras panel announces "the images changed").

Opening a workspace happens in two steps so the window is useful at once: the
:class:`~itkm_engine.workspace.Workspace` (SQLite, fast) first -- the Cameras and Training panels
can show it -- then the :class:`~itkm_engine.session.Session` (imports torch and builds the
model, seconds) in the background; panels that need features wait for :attr:`sessionChanged`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import QObject, QSize, Signal

from itkm_engine.records import rows_of

from .jobs import JobManager
from .settings import Settings
from .widgets.thumbnails import ThumbnailCache

if TYPE_CHECKING:  # the engine's Session imports torch: only at run time, in a worker
    from itkm_engine.session import Session
    from itkm_engine.workspace import Workspace


@dataclass(frozen=True)
class ModelState:
    """Which model the workspace serves: the last finished round (or the initial weights)."""

    round: int | None = None  # last finished round; None = initial weights
    preset: str | None = None
    unfinished: int | None = None  # a stopped / interrupted round that can be resumed
    training: bool = False
    text_off: str | None = None  # why this model cannot search by description (None: it can)

    @property
    def trained(self) -> bool:
        return self.round is not None

    def short(self) -> str:
        if self.round is None:
            return "initial weights (not trained yet)"
        return f"round {self.round} model" + (f" ({self.preset} preset)" if self.preset else "")

    def text(self) -> str:
        """One line for the status bar and the banners above the views."""
        if self.round is None:
            s = "Model: initial weights — not trained yet"
        else:
            s = f"Model: round {self.round}" + (f", {self.preset} preset" if self.preset else "")
        if self.training:
            s += " · training…"
        elif self.unfinished is not None:
            s += f" · round {self.unfinished} stopped (resumable)"
        return s

    @classmethod
    def of(cls, rounds: list) -> "ModelState":
        """From ``Workspace.rounds()``."""
        done = [r for r in rounds if r.status == "done"]
        unfinished = [r for r in rounds if r.status in ("running", "cancelled")]
        preset = None
        if done and done[-1].config_json:
            try:
                preset = json.loads(done[-1].config_json).get("preset")
            except ValueError:
                preset = None
        return cls(done[-1].number if done else None, preset, unfinished[-1].number if unfinished else None)


class AppContext(QObject):
    """Signals:
    workspaceChanged(object): a Workspace was opened, or ``None`` when closed
    sessionChanged(object): the Session (model, features, queries) is ready, or ``None``
    imagesChanged(): cameras/images changed (ingest, scenario/group edits)
    modelChanged(): a training round finished (new checkpoint): features, projection,
        identities and matches are stale
    identitiesChanged(object): the session's IdentityTable was (re)computed
    queryImage(int): show matches for this image id in the gallery
    openSet(object, str): show this array of image ids in the gallery as a set, with a title
    showPanel(str): bring a panel to the front (its key)
    deviceChanged(str): the device description for the status bar
    modelStateChanged(object): the ModelState (which round's model is served) changed
    sitesChanged(): ``camera_sites`` was (re)read
    """

    workspaceChanged = Signal(object)
    sessionChanged = Signal(object)
    imagesChanged = Signal()
    modelChanged = Signal()
    identitiesChanged = Signal(object)
    queryImage = Signal(int)
    openSet = Signal(object, str)
    showPanel = Signal(str)
    deviceChanged = Signal(str)
    modelStateChanged = Signal(object)
    sitesChanged = Signal()

    def __init__(self, settings: Settings, jobs: JobManager, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.jobs = jobs
        self.ws: Workspace | None = None
        self.session: Session | None = None
        self.workspace_path: Path | None = None
        self.dev = False  # developer options (the tiny preset)
        self.images: Any = None  # the session's ImageTable, once loaded (read on the GUI thread)
        self.identities: Any = None  # IdentityTable of the current checkpoint, once computed
        self.identity_names: dict[int, tuple[str, str]] = {}  # {identity: (name, note)} of those identities
        self.camera_sites: dict[str, str] = {}  # camera -> site (Workspace.camera_sites), once read
        self.devices: list[tuple[str, str]] = [("auto", "Automatic"), ("cpu", "CPU")]
        self.thumbs = ThumbnailCache(QSize(64, 128), parent=self)
        self.model_state: ModelState | None = None  # None while unknown (no workspace, or being read)

    @property
    def readonly(self) -> bool:
        return bool(self.ws is not None and self.ws.readonly)

    def set_workspace(self, ws: "Workspace | None") -> None:
        self.ws = ws
        self.workspace_path = ws.path if ws is not None else None
        self.model_state = None
        self.session = None
        self.images = None
        self.identities = None
        self.identity_names = {}
        self.camera_sites = {}
        self.workspaceChanged.emit(ws)

    def set_model_state(self, state: "ModelState | None") -> None:
        if state != self.model_state:
            self.model_state = state
            self.modelStateChanged.emit(state)

    def set_session(self, session: "Session | None", images: Any = None) -> None:
        self.session = session
        self.images = images
        self.identities = None
        self.identity_names = {}
        self.sessionChanged.emit(session)

    def set_identities(self, table: Any, names: dict | None = None) -> None:
        """The current identities and (when given) the operator's names of them."""
        self.identities = table
        if names is not None:
            self.identity_names = dict(names)
        self.identitiesChanged.emit(table)

    def identity_label(self, identity: int) -> str:
        """"#12" or "#12 Visitor 7": an identity as every view names it."""
        name = self.identity_names.get(int(identity), ("", ""))[0]
        return f"#{int(identity)} {name}".rstrip()

    def image_rows(self, image_ids: np.ndarray) -> np.ndarray:
        """Rows of ``image_ids`` in :attr:`images` (-1 where absent)."""
        if self.images is None:
            return np.full(len(image_ids), -1, np.int64)
        return self.images.index_of(np.asarray(image_ids, np.int64))

    def identity_of(self, image_ids: np.ndarray) -> np.ndarray:
        """Identity of each image id (-1 where unknown)."""
        ids = np.asarray(image_ids, np.int64)
        t = self.identities
        if t is None or not len(t):
            return np.full(len(ids), -1, np.int64)
        rows = rows_of(t.image_id, ids)
        return np.where(rows >= 0, t.identity[rows], -1)
