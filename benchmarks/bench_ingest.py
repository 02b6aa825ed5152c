"""Ingestion throughput: camera folders -> workspace rows, end to end and the header phase alone.

Data: N small person-crop JPEGs (64x128, ~3-5 KB; 32 distinct encoded blobs copied under
Market-style names) spread over 10 camera folders (one of them grey, one low-res, so the guess
phase has real work), written to a temporary folder.  The files were just written, so they are in
the OS page cache: this measures the CPU cost of ingestion (header parsing, stat, SQLite), not the
disk.  On a cold network drive the header phase is latency-bound and the thread pool matters more.

Target: >= 2,000 images/s of metadata (end-to-end ingest of a new folder, and the header phase).

    python benchmarks/bench_ingest.py            # 20,000 images
    python benchmarks/bench_ingest.py --quick    # 4,000 images
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import peak_rss_mb, print_table, write_json  # noqa: E402
from itkm_engine.data import ingest as ingest_mod  # noqa: E402
from itkm_engine.data.layouts import LAYOUTS, FoundImage  # noqa: E402
from itkm_engine.workspace import Workspace  # noqa: E402

TARGET = 2000.0  # images/s
CAMERAS = 10


def _blobs(rng: np.random.Generator, n: int, h: int, w: int, grey: bool) -> list[bytes]:
    out = []
    for _ in range(n):
        a = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        im = Image.fromarray(a).resize((w, h), Image.Resampling.BILINEAR)
        if grey:
            im = im.convert("L").convert("RGB")
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def make_folder(root: Path, n_images: int, seed: int = 0) -> int:
    """Write ``n_images`` JPEGs across CAMERAS camera folders; returns bytes written."""
    rng = np.random.default_rng(seed)
    colour = _blobs(rng, 32, 128, 64, grey=False)
    grey = _blobs(rng, 32, 128, 64, grey=True)
    small = _blobs(rng, 32, 48, 24, grey=False)
    total = 0
    per_cam = n_images // CAMERAS
    for c in range(CAMERAS):
        cam = root / f"cam{c:02d}"
        cam.mkdir(parents=True)
        blobs = grey if c == 0 else small if c == 1 else colour
        for i in range(per_cam):
            data = blobs[i % len(blobs)]
            pid = 1 + (i * 7 + c) % 500
            (cam / f"{pid:04d}_c{c + 1}s1_{i:06d}_00.jpg").write_bytes(data)
            total += len(data)
    return total


def header_phase(root: Path, workers: int) -> tuple[float, int]:
    """Scan + probe every file (what ingest's header phase does, without SQLite)."""
    t = time.perf_counter()
    found = [it for it in LAYOUTS["camera-folders"].scan(root) if isinstance(it, FoundImage)]
    t_scan = time.perf_counter() - t
    root_s = os.fspath(root)
    t = time.perf_counter()
    if workers <= 1:
        ok = sum(not isinstance(r, str) for r in ingest_mod._probe_chunk(root_s, found))
    else:
        chunks = [found[i : i + ingest_mod._CHUNK] for i in range(0, len(found), ingest_mod._CHUNK)]
        with ThreadPoolExecutor(workers) as pool:
            ok = sum(
                not isinstance(r, str) for part in pool.map(ingest_mod._probe_chunk, [root_s] * len(chunks), chunks)
                for r in part
            )
    return t_scan + (time.perf_counter() - t), ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4,000 images instead of 20,000")
    ap.add_argument("--images", type=int, default=None)
    args = ap.parse_args()
    n = args.images or (4000 if args.quick else 20000)

    tmp = Path(tempfile.mkdtemp(prefix="itkm-bench-ingest-"))
    try:
        data = tmp / "cams"
        t = time.perf_counter()
        nbytes = make_folder(data, n)
        t_make = time.perf_counter() - t
        n = (n // CAMERAS) * CAMERAS

        rows = []
        header_rates = {}
        for workers in (1, ingest_mod.WORKERS):
            dt, ok = header_phase(data, workers)
            assert ok == n, (ok, n)
            header_rates[workers] = n / dt
            rows.append({"phase": f"scan + headers ({workers} thread{'s' if workers > 1 else ''})",
                         "images": n, "seconds": dt, "images_per_s": round(n / dt)})

        ws = Workspace.open(tmp / "ws", create=True)
        try:
            t = time.perf_counter()
            summary = ingest_mod.ingest(ws, data, reporter=None)
            dt_full = time.perf_counter() - t
            assert summary.added == n and ws.image_count() == n, (summary.added, n)
            rows.append({"phase": "ingest end to end (new folder)", "images": n, "seconds": dt_full,
                         "images_per_s": round(n / dt_full)})
            t = time.perf_counter()
            again = ingest_mod.ingest(ws, data)
            dt_again = time.perf_counter() - t
            assert again.added == 0
            rows.append({"phase": "re-ingest (unchanged, idempotent)", "images": n, "seconds": dt_again,
                         "images_per_s": round(n / dt_again)})
            groups = {r.camera: f"{r.scenario}/{r.group}" for r in summary.cameras}
        finally:
            ws.close()

        print(f"\n{n} JPEGs ({nbytes / 1e6:.1f} MB) in {CAMERAS} camera folders, written in {t_make:.1f} s")
        print_table(rows, title="bench_ingest")
        print(f"guessed: cam00 -> {groups['cam00']}, cam01 -> {groups['cam01']}, cam02 -> {groups['cam02']}")
        checks = {
            "ingest end to end >= 2000 images/s": n / dt_full >= TARGET,
            "header phase >= 2000 images/s": header_rates[ingest_mod.WORKERS] >= TARGET,
        }
        for name, ok in checks.items():
            print(f"{'PASS' if ok else 'MISS'}  {name}")
        path = write_json(
            "ingest",
            {
                "images": n,
                "megabytes": round(nbytes / 1e6, 2),
                "cameras": CAMERAS,
                "workers": ingest_mod.WORKERS,
                "batch_size": ingest_mod.BATCH_SIZE,
                "rows": rows,
                "target_images_per_s": TARGET,
                "checks": checks,
                "guessed_groups": groups,
                "peak_rss_mb": peak_rss_mb(),
                "page_cache": "warm (files just written)",
            },
        )
        print(f"results: {path}")
        return 0 if all(checks.values()) else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
