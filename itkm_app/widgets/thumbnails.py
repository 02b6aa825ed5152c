"""Thumbnails decoded on a background thread pool, cached as pixmaps on the GUI thread.

Never decode images on the GUI thread: a gallery of 200 crops or a scrolling list of thousands
would freeze the window.  :class:`ThumbnailCache` hands out a cached ``QPixmap`` at once, or
``None`` and schedules a decode (``QImageReader`` with a scaled size, which decodes JPEGs at a
reduced scale, so it is cheap) on its own ``QThreadPool``; when the image is ready it emits
:attr:`ThumbnailCache.ready` with the path, and views repaint the rows showing it.

``QImage`` is safe to create off the GUI thread; ``QPixmap`` is not, so the conversion happens in
the GUI-side slot.  User images are only read.
"""

from __future__ import annotations

from collections import OrderedDict

from PySide6.QtCore import QObject, QRunnable, QSize, Qt, QThreadPool, Signal, Slot
from PySide6.QtGui import QImage, QImageReader, QPixmap

#: Decoded thumbnails kept (pixmaps of ~64x128 px: ~32 KiB each -> ~130 MiB at the cap).
DEFAULT_CAPACITY = 4000


def fit_size(w: int, h: int, box: QSize) -> QSize:
    """``w x h`` scaled to fit inside ``box`` keeping the aspect ratio (never 0)."""
    if w <= 0 or h <= 0:
        return box
    s = min(box.width() / w, box.height() / h)
    return QSize(max(1, round(w * s)), max(1, round(h * s)))


def load_thumbnail(path: str, box: QSize) -> QImage:
    """Decode ``path`` scaled to fit ``box`` (any thread).  A null QImage when unreadable."""
    reader = QImageReader(path)
    reader.setAutoTransform(True)  # EXIF orientation
    size = reader.size()
    if size.isValid():
        reader.setScaledSize(fit_size(size.width(), size.height(), box))
    img = reader.read()
    if not img.isNull():
        return img
    # formats Qt cannot read (CMYK JPEG, 16-bit PNG on some builds...): the engine's reader
    try:
        import numpy as np

        from itkm_engine.data.imageio import load_rgb

        arr = np.ascontiguousarray(load_rgb(path))
        h, w = arr.shape[:2]
        img = QImage(arr.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
        t = fit_size(w, h, box)
        return img.scaled(t, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
    except Exception:  # noqa: BLE001 - an unreadable thumbnail is shown as a placeholder
        return QImage()


class _Signals(QObject):
    loaded = Signal(str, object, object)  # key, path, QImage


class _Job(QRunnable):
    def __init__(self, key: str, path: str, box: QSize, signals: _Signals) -> None:
        super().__init__()
        self.key, self.path, self.box, self.signals = key, path, box, signals
        self.setAutoDelete(True)

    def run(self) -> None:
        img = load_thumbnail(self.path, self.box)
        try:
            self.signals.loaded.emit(self.key, self.path, img)
        except RuntimeError:  # the cache was deleted while we decoded
            pass


class ThumbnailCache(QObject):
    """LRU pixmap cache with background decoding.  ``ready(path)`` when a thumbnail arrives."""

    ready = Signal(str)

    def __init__(self, box: QSize = QSize(64, 128), capacity: int = DEFAULT_CAPACITY, threads: int = 2,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.box = box
        self.capacity = capacity
        self._cache: OrderedDict[str, QPixmap] = OrderedDict()
        self._pending: set[str] = set()
        self._failed: set[str] = set()
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max(1, threads))
        self._signals = _Signals()
        self._signals.loaded.connect(self._on_loaded, Qt.ConnectionType.QueuedConnection)

    def get(self, path: str | None, box: QSize | None = None) -> QPixmap | None:
        """The cached pixmap, or ``None`` (a decode is scheduled; :attr:`ready` follows)."""
        if not path:
            return None
        box = box or self.box
        key = f"{box.width()}x{box.height()}:{path}"
        pm = self._cache.get(key)
        if pm is not None:
            self._cache.move_to_end(key)
            return pm
        if key not in self._pending and key not in self._failed:
            self._pending.add(key)
            self._pool.start(_Job(key, path, box, self._signals), priority=len(self._pending))
        return None

    def failed(self, path: str, box: QSize | None = None) -> bool:
        box = box or self.box
        return f"{box.width()}x{box.height()}:{path}" in self._failed

    def pending(self) -> int:
        return len(self._pending)

    def clear(self) -> None:
        self._pool.clear()
        self._cache.clear()
        self._pending.clear()
        self._failed.clear()

    def wait(self, msecs: int = 10_000) -> bool:
        """Block until queued decodes finished (tests, screenshots); then deliver them."""
        ok = self._pool.waitForDone(msecs)
        from PySide6.QtCore import QCoreApplication

        QCoreApplication.processEvents()
        return ok

    @Slot(str, object, object)
    def _on_loaded(self, key: str, path: str, img: QImage) -> None:
        self._pending.discard(key)
        if img is None or img.isNull():
            self._failed.add(key)
        else:
            self._cache[key] = QPixmap.fromImage(img)
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        self.ready.emit(path)

    def shutdown(self) -> None:
        self._pool.clear()
        self._pool.waitForDone(5000)
