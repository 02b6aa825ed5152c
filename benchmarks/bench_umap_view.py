"""Clusters view at scale: first render and pan/zoom frame times of the scatter at 100k points,
plus (optionally) the UMAP projection time of 100k x 512-d features.

    python benchmarks/bench_umap_view.py            # 100k points view + 100k UMAP
    python benchmarks/bench_umap_view.py --quick    # 20k points view, no UMAP
    python benchmarks/bench_umap_view.py --no-umap  # view only

Targets: first render <= 1 s and a pan/zoom frame <= 50 ms (offscreen, median) at 100k points;
UMAP of 100k x 512 <= 120 s.  Prints a table, writes benchmarks/results/umap_view.json, and
PASS/MISS per target.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402

from benchmarks._common import peak_rss_mb, print_table, write_json  # noqa: E402

TARGET_FIRST_S = 1.0
TARGET_FRAME_MS = 50.0
TARGET_UMAP_S = 120.0


def synthetic_layout(n: int, k: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """UMAP-like 2-D blobs: ``k`` clusters of uneven size, and their category codes."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-20, 20, size=(k, 2))
    sizes = rng.pareto(1.5, size=k) + 1
    labels = rng.choice(k, size=n, p=sizes / sizes.sum())
    xy = centers[labels] + rng.normal(scale=rng.uniform(0.2, 1.0, size=k)[labels, None], size=(n, 2))
    return xy.astype(np.float32), labels


def synthetic_features(n: int, d: int = 512, k: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(k, d)).astype(np.float32)
    x = c[rng.integers(0, k, n)] + rng.normal(scale=1.2, size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def bench_view(n: int, frames: int = 20) -> dict:
    from PySide6.QtCore import QPointF
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    from itkm_app import theme
    from itkm_app.widgets.scatter import ScatterView

    theme.apply_theme(app)
    import scipy.spatial  # noqa: F401 - the app imports it in the background at start-up
    xy, labels = synthetic_layout(n)
    codes = np.where(labels < 19, labels, -1)  # 19 colours + "other", as the identity colouring does
    colors = theme.categorical_colors(20)
    view = ScatterView()
    view.resize(1000, 700)
    view.show()
    app.processEvents()

    t0 = time.perf_counter()
    view.set_points(xy, codes, colors)
    view.viewport().repaint()
    app.processEvents()
    first = time.perf_counter() - t0

    first_drawn = view.cloud.drawn

    vb = view.vb
    pan, zoom, settled, drawn_moving = [], [], [], []
    for i in range(frames):
        t = time.perf_counter()
        vb.translateBy(x=0.5 if i % 2 == 0 else -0.5, y=0.3)
        view.viewport().repaint()
        pan.append((time.perf_counter() - t) * 1000)
        drawn_moving.append(view.cloud.drawn)
    for i in range(frames):
        t = time.perf_counter()
        vb.scaleBy((0.9, 0.9) if i < frames // 2 else (1 / 0.9, 1 / 0.9))
        view.viewport().repaint()
        zoom.append((time.perf_counter() - t) * 1000)
    # the full-detail frame drawn once the view settles (every visible point)
    for _ in range(max(5, frames // 4)):
        view.cloud.set_lod(False)
        t = time.perf_counter()
        view.viewport().repaint()
        settled.append((time.perf_counter() - t) * 1000)
    settled_drawn = view.cloud.drawn
    # hover lookup (KD-tree, built on the first hover) and a lasso selection
    t = time.perf_counter()
    view.kdtree()
    tree_ms = (time.perf_counter() - t) * 1000
    r = vb.viewRect()
    center = vb.mapViewToScene(QPointF(r.center()))
    t = time.perf_counter()
    for _ in range(100):
        view.nearest(center)
    hover_ms = (time.perf_counter() - t) * 1000 / 100
    from itkm_app.widgets.scatter import points_in_polygon

    theta = np.linspace(0, 2 * np.pi, 200)
    poly = np.c_[10 * np.cos(theta), 10 * np.sin(theta)]
    t = time.perf_counter()
    sel = points_in_polygon(xy, poly)
    lasso_ms = (time.perf_counter() - t) * 1000
    view.close()
    return {
        "points": n,
        "first_render_s": first,
        "pan_frame_ms_median": float(np.median(pan)),
        "pan_frame_ms_max": float(np.max(pan)),
        "zoom_frame_ms_median": float(np.median(zoom)),
        "zoom_frame_ms_max": float(np.max(zoom)),
        "settled_frame_ms_median": float(np.median(settled)),
        "points_drawn_first": int(first_drawn),
        "points_drawn_moving": int(np.median(drawn_moving)),
        "points_drawn_settled": int(settled_drawn),
        "hover_index_build_ms": tree_ms,
        "hover_lookup_ms": hover_ms,
        "lasso_select_ms": lasso_ms,
        "lasso_selected": int(sel.sum()),
    }


def bench_umap(n: int) -> dict:
    from itkm_engine import projection
    from itkm_engine.progress import Reporter

    t = time.perf_counter()
    projection.warm_up()
    warm = time.perf_counter() - t
    feats = synthetic_features(n)
    stages: dict[str, float] = {}
    last = {"stage": None, "t": time.perf_counter()}

    def on_event(e):
        now = time.perf_counter()
        if e.stage != last["stage"]:
            if last["stage"] is not None:
                stages[last["stage"]] = stages.get(last["stage"], 0.0) + now - last["t"]
            last["stage"], last["t"] = e.stage, now

    t = time.perf_counter()
    y = projection.umap_2d(feats, reporter=Reporter(on_event, job="projection"))
    total = time.perf_counter() - t
    stages[last["stage"]] = stages.get(last["stage"], 0.0) + time.perf_counter() - last["t"]
    assert y.shape == (n, 2) and np.isfinite(y).all()
    return {"umap_points": n, "umap_dims": feats.shape[1], "umap_warmup_s": warm, "umap_total_s": total,
            **{f"umap_{k}_s": v for k, v in stages.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20k points, no UMAP")
    ap.add_argument("--no-umap", action="store_true", help="skip the UMAP timing")
    ap.add_argument("--points", type=int, default=None)
    a = ap.parse_args()
    n = a.points or (20_000 if a.quick else 100_000)
    row = bench_view(n)
    rows = [row]
    checks = [
        ("first render <= 1 s", row["first_render_s"] <= TARGET_FIRST_S, f"{row['first_render_s']:.3f} s"),
        ("pan frame <= 50 ms", row["pan_frame_ms_median"] <= TARGET_FRAME_MS, f"{row['pan_frame_ms_median']:.1f} ms"),
        ("zoom frame <= 50 ms", row["zoom_frame_ms_median"] <= TARGET_FRAME_MS, f"{row['zoom_frame_ms_median']:.1f} ms"),
    ]
    umap_row = None
    if not (a.quick or a.no_umap):
        umap_row = bench_umap(n)
        rows.append(umap_row)
        checks.append(("UMAP 100k x 512 <= 120 s", umap_row["umap_total_s"] <= TARGET_UMAP_S,
                       f"{umap_row['umap_total_s']:.1f} s"))
    print_table([row], f"Clusters view, {n:,} points (offscreen)")
    if umap_row:
        print_table([umap_row], "UMAP projection")
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    print(f"\nload average at the end: {load}")
    for name, ok, value in checks:
        print(f"{'PASS' if ok else 'MISS'}  {name}: {value}")
    path = write_json("umap_view", {
        "quick": a.quick, "view": row, "umap": umap_row, "load_avg_1min": load,
        "peak_rss_mb": peak_rss_mb(),
        "targets": {"first_render_s": TARGET_FIRST_S, "frame_ms": TARGET_FRAME_MS, "umap_s": TARGET_UMAP_S},
        "checks": [{"name": n_, "pass": ok, "value": v} for n_, ok, v in checks],
    })
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
