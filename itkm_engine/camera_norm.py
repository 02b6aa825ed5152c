"""Camera-aware feature normalisation: each camera's mean feature subtracted, then re-normalised.

Why: a camera's background, lighting, viewpoint and optics add a common component to every crop it
takes, so its strangers sit closer to each other than one person seen by two cameras.  Removing
each camera's mean keeps what varies between the people a camera films (the feature-space
counterpart of camera-specific batch-normalisation statistics).  Measured (docs/ACCURACY.md,
issue 20): in ranking it lifts every cross-camera column on the demo and on the real photos (on
by default: ``inference.camera_centre``); in the per-group clustering it raises pseudo-label
precision but not the ranking (off by default: ``cluster.camera_centre``).

One function serves every place that compares features across cameras: ``Session.ranking`` (the
gallery, re-ranking, the review queue, ``itkm evaluate`` and the benchmarks score the same thing)
and the Stage I / III clustering.  Ground layer: numpy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["camera_centred", "centre_outside"]

#: Rows handled at once: the work arrays stay a few tens of MB whatever the gallery's size.
_CHUNK = 65_536


def _camera_means(feats: np.ndarray, cameras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(names, means)``: each camera's name (sorted) and mean feature (float64 [C, D]), summed in
    chunks of rows (no second copy of ``feats``)."""
    names, inv, counts = np.unique(np.asarray(cameras), return_inverse=True, return_counts=True)
    sums = np.zeros((len(names), np.asarray(feats).shape[1]), dtype=np.float64)
    for lo in range(0, len(inv), _CHUNK):
        np.add.at(sums, inv[lo:lo + _CHUNK], np.asarray(feats[lo:lo + _CHUNK], dtype=np.float64))
    return names, sums / np.maximum(counts, 1)[:, None]


def camera_centred(feats: np.ndarray, cameras: np.ndarray) -> np.ndarray:
    """``feats`` [N, D] with each camera's mean feature subtracted, L2-normalised again (a new
    float32 array; ``feats`` is left as it is).

    ``cameras`` [N] names each row's camera.  A row left with (almost) nothing -- the only crop of
    its camera, or identical crops of one camera -- keeps its own direction.
    """
    names, means = _camera_means(feats, cameras)
    inv = np.searchsorted(names, np.asarray(cameras))
    out = np.empty(np.asarray(feats).shape, dtype=np.float32)
    for lo in range(0, len(inv), _CHUNK):
        raw = np.asarray(feats[lo:lo + _CHUNK], dtype=np.float32)
        x = raw - means[inv[lo:lo + _CHUNK]].astype(np.float32)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        flat = norms[:, 0] < 1e-6
        x[flat] = raw[flat]
        norms[flat] = np.linalg.norm(raw[flat], axis=1, keepdims=True)
        out[lo:lo + _CHUNK] = x / np.maximum(norms, 1e-12)
    return out


def centre_outside(feat: np.ndarray, feats: np.ndarray, cameras: np.ndarray, camera: str | None) -> np.ndarray:
    """An outside query ``feat`` [D] in the same space as ``camera_centred(feats, cameras)``:
    minus its camera's mean when the camera is one of ``cameras``, else minus the mean of all
    features (the camera is unknown); L2-normalised (its own direction when nothing is left)."""
    rows = np.flatnonzero(np.asarray(cameras) == camera) if camera is not None else np.zeros(0, dtype=np.int64)
    mean = (np.asarray(feats)[rows] if len(rows) else np.asarray(feats)).mean(axis=0, dtype=np.float64)
    v = np.asarray(feat, dtype=np.float64) - mean
    n = float(np.linalg.norm(v))
    if n < 1e-6:
        v, n = np.asarray(feat, dtype=np.float64), float(np.linalg.norm(feat))
    return (v / max(n, 1e-12)).astype(np.float32)
