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


def camera_centred(feats: np.ndarray, cameras: np.ndarray) -> np.ndarray:
    """``feats`` [N, D] with each camera's mean feature subtracted, L2-normalised again (float32).

    ``cameras`` [N] names each row's camera.  A camera with a single row keeps it as it is (its
    mean is itself); a row left with (almost) nothing -- identical crops of one camera -- keeps
    its own direction.
    """
    feats = np.asarray(feats, dtype=np.float32)
    cameras = np.asarray(cameras)
    x = feats.astype(np.float64)
    for cam in np.unique(cameras):
        m = cameras == cam
        if m.sum() > 1:
            x[m] -= x[m].mean(axis=0)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    flat = norms[:, 0] < 1e-6
    x[flat] = feats[flat]
    norms[flat] = np.linalg.norm(x[flat], axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def centre_outside(feat: np.ndarray, feats: np.ndarray, cameras: np.ndarray, camera: str | None) -> np.ndarray:
    """An outside query ``feat`` [D] in the same space as ``camera_centred(feats, cameras)``:
    minus its camera's mean when the camera is one of ``cameras``, else minus the mean of all
    features (the camera is unknown); L2-normalised."""
    cameras = np.asarray(cameras)
    m = cameras == camera if camera is not None else np.zeros(len(cameras), dtype=bool)
    mean = feats[m].mean(axis=0) if m.sum() > 1 else np.asarray(feats).mean(axis=0)
    v = np.asarray(feat, dtype=np.float64) - mean
    n = float(np.linalg.norm(v))
    return (v / n if n > 1e-6 else np.asarray(feat, dtype=np.float64)).astype(np.float32)
