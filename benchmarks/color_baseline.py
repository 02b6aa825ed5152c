"""Hand-crafted colour-histogram ReID features: the classic baseline a learned model must beat.

Why: a benchmark that only reports the learned model's mAP cannot tell whether the data is hard.
The colour baseline answers "could clothing colour alone have done this?" -- on visible cameras it
is a fair competitor; across infrared/visible, resolution and clothing changes it should collapse,
and a learned model is worth something only where it does better.

Feature: the crop is resized to a fixed size, split into ``stripes`` horizontal bands (head,
shoulders, torso, legs, ...), and a joint HSV histogram with ``bins`` = (hue, saturation, value)
bins is taken per band.  Each band's histogram is L1-normalised (so bands count equally whatever
their pixel count), square-rooted (Hellinger kernel: cosine of the result is the Bhattacharyya
coefficient, the standard histogram similarity), concatenated, and L2-normalised so that cosine
similarity is an inner product, as for the learned features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from itkm_engine.cv import cv2
from itkm_engine.errors import ItkmError
from itkm_engine.progress import Reporter

__all__ = ["color_histogram_features", "color_histogram", "STANDARD_SIZE"]

#: Crops are resized to (height, width) before the stripes are cut, so low-res crops compare.
STANDARD_SIZE: tuple[int, int] = (128, 64)


def color_histogram(bgr: np.ndarray, *, bins: tuple[int, int, int] = (8, 8, 8), stripes: int = 6) -> np.ndarray:
    """Feature of one decoded image (HxWx3 BGR uint8, or HxW greyscale); float32, L2-normalised."""
    _check_params(bins, stripes)
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    elif bgr.ndim == 3 and bgr.shape[2] == 4:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_BGRA2BGR)
    if bgr.dtype != np.uint8:
        raise ItkmError(f"colour histogram needs an 8-bit image, got {bgr.dtype}")
    img = cv2.resize(bgr, (STANDARD_SIZE[1], STANDARD_SIZE[0]), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)  # H in 0..179, S and V in 0..255
    edges = np.linspace(0, STANDARD_SIZE[0], stripes + 1).round().astype(int)
    parts = []
    for i in range(stripes):
        band = hsv[edges[i]:edges[i + 1]]
        hist = cv2.calcHist([band], [0, 1, 2], None, list(bins), [0, 180, 0, 256, 0, 256]).ravel()
        total = float(hist.sum())
        parts.append(np.sqrt(hist / total) if total > 0 else hist)
    feat = np.concatenate(parts).astype(np.float32)
    norm = float(np.linalg.norm(feat))
    return feat / norm if norm > 0 else feat


def color_histogram_features(
    paths: Sequence[str | Path],
    *,
    bins: tuple[int, int, int] = (8, 8, 8),
    stripes: int = 6,
    reporter: Reporter | None = None,
) -> np.ndarray:
    """Colour-histogram features of ``paths``: float32 ``[N, stripes * prod(bins)]``, rows L2-normalised.

    Images are opened read-only (bytes read, decoded in memory; non-ASCII paths work on every OS).
    An unreadable or undecodable image gets a zero vector -- it then matches nothing -- so one bad
    file does not stop a benchmark; callers that care can find those rows by their zero norm.
    """
    _check_params(bins, stripes)
    reporter = reporter or Reporter()
    dim = stripes * int(np.prod(bins))
    out = np.zeros((len(paths), dim), np.float32)
    n = len(paths)
    for i, p in enumerate(paths):
        if i % 64 == 0:
            reporter.check()
            reporter.update(i / max(n, 1), stage="color-histogram", message=f"{i}/{n} images")
        try:
            data = np.fromfile(str(p), dtype=np.uint8)
            img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        except (OSError, ValueError):
            img = None
        if img is None or img.size == 0:
            continue
        out[i] = color_histogram(img, bins=bins, stripes=stripes)
    reporter.update(1.0, stage="color-histogram", message=f"{n}/{n} images")
    return out


def _check_params(bins, stripes) -> None:
    if len(bins) != 3 or any(int(b) < 1 or int(b) > 64 for b in bins):
        raise ItkmError(f"bins must be three integers in 1..64 (hue, saturation, value), got {bins!r}")
    if not 1 <= int(stripes) <= STANDARD_SIZE[0]:
        raise ItkmError(f"stripes must be between 1 and {STANDARD_SIZE[0]}, got {stripes!r}")
