"""What the panels share: the open session, the job manager, settings, and cross-panel signals.

Panels never hold references to each other; they talk through these signals (the Clusters view
asks for "open this image in the gallery", the Cameras panel announces "the images changed").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from .jobs import JobManager
from .settings import Settings

if TYPE_CHECKING:  # the engine's Session imports torch: only at run time, in a worker
    from itkm_engine.session import Session


class AppContext(QObject):
    """Signals:
    sessionChanged(object): a workspace was opened (a ``Session``) or closed (``None``)
    imagesChanged(): cameras/images changed (ingest, scenario/group edits)
    modelChanged(): a training round finished (new checkpoint): features, projection,
        identities and matches are stale
    queryImage(int): show matches for this image id in the gallery
    openSet(object, str): show this array of image ids in the gallery as a set, with a title
    deviceChanged(str): the device description for the status bar
    """

    sessionChanged = Signal(object)
    imagesChanged = Signal()
    modelChanged = Signal()
    queryImage = Signal(int)
    openSet = Signal(object, str)
    deviceChanged = Signal(str)
    showPanel = Signal(str)

    def __init__(self, settings: Settings, jobs: JobManager, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.jobs = jobs
        self.session: Session | None = None
        self.workspace_path: Path | None = None
        self.readonly = False
        self.dev = False  # developer options (tiny preset)
        # a small image-level cache shared by panels (filled in a job, read on the GUI thread)
        self.images: Any = None  # ImageTable of the session, once loaded

    @property
    def ws(self):
        return self.session.ws if self.session is not None else None

    def set_session(self, session: "Session | None", path: Path | None = None, images: Any = None) -> None:
        self.session = session
        self.workspace_path = Path(path) if path is not None else None
        self.readonly = bool(session is not None and session.ws.readonly)
        self.images = images
        self.sessionChanged.emit(session)

    def image_rows(self, image_ids: np.ndarray) -> np.ndarray:
        """Rows of ``image_ids`` in :attr:`images` (-1 where absent)."""
        if self.images is None:
            return np.full(len(image_ids), -1, np.int64)
        return self.images.index_of(np.asarray(image_ids, np.int64))
