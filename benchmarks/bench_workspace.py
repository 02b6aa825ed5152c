"""Workspace at scale: 1,000,000 image rows over 50 cameras.

Measures what the product feels: ingest writes (``upsert_images`` in 100k batches, a re-scan that
changes nothing, ``mark_missing``), and -- in a fresh process, as when the app starts -- opening the
workspace and listing cameras with their counts (target < 1 s), then loading the whole
``ImageTable`` (reported), plus writing a round's pseudo-labels for every image.

    python benchmarks/bench_workspace.py            # 1M rows
    python benchmarks/bench_workspace.py --quick    # 100k rows
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks._common import peak_rss_mb, print_table, write_json  # noqa: E402
from itkm_engine.records import ImageRecord  # noqa: E402
from itkm_engine.workspace import Workspace  # noqa: E402

TARGET_OPEN_CAMERAS_S = 1.0
TARGET_BATCH_100K_S = 2.0


def make_records(start: int, n: int, n_cameras: int) -> list[ImageRecord]:
    out = []
    for i in range(start, start + n):
        cam = i % n_cameras
        pid = (i // n_cameras) % 5000
        out.append(
            ImageRecord(
                relpath=f"cam{cam:02d}/{pid:04d}_c{cam}s1_{i:07d}_00.jpg",
                camera=f"cam{cam:02d}",
                width=64 + (i % 3) * 32,
                height=128 + (i % 5) * 16,
                timestamp=1_700_000_000.0 + i * 0.04,
                mtime=1_700_000_000.0,
                size_bytes=4000 + i % 1000,
                person_id=pid,
            )
        )
    return out


def build(path: Path, rows: int, n_cameras: int, batch: int) -> dict:
    res: dict = {}
    with Workspace.open(path, create=True) as ws:
        sid = ws.add_source(path.parent / "data", "market")
        for c in range(n_cameras):
            scen, grp = ("visible-infrared", "infrared" if c % 5 == 0 else "visible") if c < 25 else ("cross-camera", "all")
            ws.upsert_camera(f"cam{c:02d}", sid, scenario=scen, group=grp, guessed_scenario=scen, guessed_group=grp)
        batch_times, batch_cpu = [], []
        t_all = time.perf_counter()
        for start in range(0, rows, batch):
            recs = make_records(start, min(batch, rows - start), n_cameras)
            t, c = time.perf_counter(), time.process_time()
            added, updated = ws.upsert_images(sid, recs)
            batch_times.append(time.perf_counter() - t)
            batch_cpu.append(time.process_time() - c)
            assert (added, updated) == (len(recs), 0)
        res["build_total_s"] = time.perf_counter() - t_all
        res["upsert_batch_s"] = batch_times
        res["upsert_batch_cpu_s"] = batch_cpu
        # a re-scan of one batch that finds nothing changed
        recs = make_records(0, min(batch, rows), n_cameras)
        t, c = time.perf_counter(), time.process_time()
        assert ws.upsert_images(sid, recs) == (0, 0)
        res["upsert_unchanged_batch_s"] = time.perf_counter() - t
        res["upsert_unchanged_batch_cpu_s"] = time.process_time() - c
        # a re-scan of one batch where every file changed
        changed = [ImageRecord(r.relpath, r.camera, r.width, r.height, r.timestamp, r.mtime + 1, r.size_bytes, r.person_id) for r in recs]
        t, c = time.perf_counter(), time.process_time()
        assert ws.upsert_images(sid, changed) == (0, len(changed))
        res["upsert_changed_batch_s"] = time.perf_counter() - t
        res["upsert_changed_batch_cpu_s"] = time.process_time() - c
        # mark_missing with the full present set, 1% gone
        present = {r.relpath for s in range(0, rows, batch) for r in make_records(s, min(batch, rows - s), n_cameras)}
        gone = [f"cam{i % n_cameras:02d}/{(i // n_cameras) % 5000:04d}_c{i % n_cameras}s1_{i:07d}_00.jpg" for i in range(0, rows, 100)]
        present.difference_update(gone)
        t, c = time.perf_counter(), time.process_time()
        n_missing = ws.mark_missing(sid, present)
        res["mark_missing_s"] = time.perf_counter() - t
        res["mark_missing_cpu_s"] = time.process_time() - c
        assert n_missing == len(gone)
        res["n_missing"] = n_missing
    res["db_mb"] = (path / "itkm.sqlite").stat().st_size / 2**20
    return res


def child(path: Path) -> None:
    """Fresh process: what the app pays at start-up."""
    out = {}
    t, c = time.perf_counter(), time.process_time()
    ws = Workspace.open(path)
    out["open_s"] = time.perf_counter() - t
    t = time.perf_counter()
    cams = ws.cameras()
    out["cameras_s"] = time.perf_counter() - t
    out["open_cameras_s"] = out["open_s"] + out["cameras_s"]
    out["open_cameras_cpu_s"] = time.process_time() - c
    out["n_cameras"] = len(cams)
    out["n_images_counted"] = sum(c.n_images for c in cams)
    t, c = time.perf_counter(), time.process_time()
    table = ws.images()
    out["images_s"] = time.perf_counter() - t
    out["images_cpu_s"] = time.process_time() - c
    out["images_rows"] = len(table)
    t, c = time.perf_counter(), time.process_time()
    gk = table.group_key()
    out["group_key_s"] = time.perf_counter() - t
    out["group_key_cpu_s"] = time.process_time() - c
    assert len(gk) == len(table)
    t = time.perf_counter()
    out["image_count"] = ws.image_count()
    out["image_count_s"] = time.perf_counter() - t
    r = ws.start_round("{}", None)
    labels = np.arange(len(table)) % 1000
    t, c = time.perf_counter(), time.process_time()
    ws.save_assignments(r, table.id, labels)
    out["save_assignments_s"] = time.perf_counter() - t
    out["save_assignments_cpu_s"] = time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    ids, _ = ws.assignments(r)
    out["assignments_s"] = time.perf_counter() - t
    out["assignments_cpu_s"] = time.process_time() - c
    assert len(ids) == len(table)
    ws.close()
    t = time.perf_counter()
    with Workspace.open(path, readonly=True) as ro:
        ro.cameras()
    out["readonly_open_cameras_s"] = time.perf_counter() - t
    out["child_peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--cameras", type=int, default=50)
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process measurements (median reported)")
    ap.add_argument("--quick", action="store_true", help="100k rows")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    rows = 100_000 if args.quick else args.rows
    batch = min(args.batch, rows)

    with tempfile.TemporaryDirectory(prefix="bench_ws_") as tmp:
        path = Path(tmp) / "ws"
        built = build(path, rows, args.cameras, batch)
        runs = []
        for _ in range(args.repeats):
            p = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True, check=True)
            runs.append(json.loads(p.stdout.strip().splitlines()[-1]))

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    bt = built["upsert_batch_s"]
    table = [
        {"step": f"upsert_images x{len(bt)} batches of {batch:,} (new rows)", "seconds": sum(bt), "cpu_s": sum(built["upsert_batch_cpu_s"]), "per_batch_max": max(bt), "target": f"< {TARGET_BATCH_100K_S} s/batch", "result": "PASS" if max(bt) < TARGET_BATCH_100K_S else "MISS"},
        {"step": f"upsert_images {batch:,} unchanged (re-scan)", "seconds": built["upsert_unchanged_batch_s"], "cpu_s": built["upsert_unchanged_batch_cpu_s"], "target": f"< {TARGET_BATCH_100K_S} s", "result": "PASS" if built["upsert_unchanged_batch_s"] < TARGET_BATCH_100K_S else "MISS"},
        {"step": f"upsert_images {batch:,} all changed", "seconds": built["upsert_changed_batch_s"], "cpu_s": built["upsert_changed_batch_cpu_s"], "target": f"< {TARGET_BATCH_100K_S} s", "result": "PASS" if built["upsert_changed_batch_s"] < TARGET_BATCH_100K_S else "MISS"},
        {"step": f"mark_missing ({rows:,} present, {built['n_missing']:,} gone)", "seconds": built["mark_missing_s"], "cpu_s": built["mark_missing_cpu_s"], "target": "report", "result": ""},
        {"step": "fresh process: Workspace.open (writer)", "seconds": med("open_s"), "target": "", "result": ""},
        {"step": "fresh process: cameras() with counts", "seconds": med("cameras_s"), "target": "", "result": ""},
        {"step": "fresh process: open + cameras()", "seconds": med("open_cameras_s"), "cpu_s": med("open_cameras_cpu_s"), "target": f"< {TARGET_OPEN_CAMERAS_S} s", "result": "PASS" if med("open_cameras_s") < TARGET_OPEN_CAMERAS_S else "MISS"},
        {"step": "read-only open + cameras()", "seconds": med("readonly_open_cameras_s"), "target": f"< {TARGET_OPEN_CAMERAS_S} s", "result": "PASS" if med("readonly_open_cameras_s") < TARGET_OPEN_CAMERAS_S else "MISS"},
        {"step": f"images() -> ImageTable ({runs[0]['images_rows']:,} rows)", "seconds": med("images_s"), "cpu_s": med("images_cpu_s"), "target": "report", "result": ""},
        {"step": "ImageTable.group_key()", "seconds": med("group_key_s"), "cpu_s": med("group_key_cpu_s"), "target": "report", "result": ""},
        {"step": "image_count()", "seconds": med("image_count_s"), "target": "report", "result": ""},
        {"step": f"save_assignments ({runs[0]['images_rows']:,} labels)", "seconds": med("save_assignments_s"), "cpu_s": med("save_assignments_cpu_s"), "target": "report", "result": ""},
        {"step": "assignments() read back", "seconds": med("assignments_s"), "cpu_s": med("assignments_cpu_s"), "target": "report", "result": ""},
    ]
    # This machine may be shared: wall time then includes waiting for a CPU.  Judge each target
    # on wall time ("result") and, beside it, on this process's own CPU time ("result_cpu").
    for row in table:
        if row["result"] and "cpu_s" in row:
            limit = TARGET_BATCH_100K_S if "upsert" in row["step"] else TARGET_OPEN_CAMERAS_S
            cpu = row["cpu_s"] / (len(bt) if "batches" in row["step"] else 1)
            row["result_cpu"] = "PASS" if cpu < limit else "MISS"
    print_table(table, f"workspace: {rows:,} images over {args.cameras} cameras (median of {len(runs)} fresh processes)")
    print(f"\ndatabase size {built['db_mb']:.1f} MiB; child peak RSS {max(r['child_peak_rss_mb'] for r in runs):.0f} MiB; "
          f"builder peak RSS {peak_rss_mb():.0f} MiB")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load:
        print(f"load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs "
              "(wall seconds above include waiting for a CPU; cpu_s is this process's own time)")
    misses = [r["step"] for r in table if r["result"] == "MISS"]
    print("PASS: all targets met" if not misses else f"MISS: {', '.join(misses)}")
    out = write_json(
        "workspace",
        {"rows": rows, "cameras": args.cameras, "batch": batch, "build": built, "fresh_process_runs": runs,
         "table": table, "loadavg": load, "targets": {"open_cameras_s": TARGET_OPEN_CAMERAS_S, "batch_s": TARGET_BATCH_100K_S}},
    )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
