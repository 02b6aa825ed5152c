"""Feature-extraction throughput: how close ``extract_features`` comes to the loading limit.

Targets (the "Scale" issue):

* CPU, the ``quick`` preset's model (itkm-small, random init, 128x64 crops): end-to-end
  ``extract_features`` at >= 70% of the throughput of a loop that only decodes and resizes the
  same files through the same loading path and workers (the I/O limit of the machine);
* GPU (runs only where CUDA is available, else prints SKIPPED): ViT-B-16 (random init) at
  256x128 with bf16 autocast, ``extract_features`` end to end at >= 80% of the model's bare
  forward throughput at the same batch size.

Measured, each ``--repeats`` times (best and median images/s are reported):

(a) ``decode``   -- the loader alone: :class:`CropDataset` (``load_rgb`` + resize to the model
                   input + CLIP normalisation) batched by ``make_loader`` with the same batch size
                   and worker count as (b), batches dropped;
(b) ``extract``  -- ``extract_features`` end to end (cache disabled), model included;
(c) ``forward``  -- the bare model forward (``forward_image`` + ``retrieval_feature``) on
                   pre-decoded tensors at the same batch size.

The crops are the demo set (``make_demo``, 60 identities, ~2,000 JPEGs of ~64x128 px) just
written, hence in the page cache: "I/O" here is the CPU cost of JPEG decoding and resizing, not
disk reads.  (b) runs the model on top of the loading, so (b)/(a) can never exceed (c)/(a): that
ceiling is printed too.  The machine may be shared: the table gives CPU time (this process + its
loader workers, ``time.process_time`` + reaped children) beside wall time, and the JSON records
the load average around every run.  CPU ms per image depends much less on how busy the machine
is, so the ratio (a)/(b) of CPU ms per image is also shown (roughly the wall ratio an idle
machine would show, all three runs being CPU-bound on the same cores).  On an oversubscribed
machine OpenMP's spinning threads inflate the model's CPU time; ``OMP_WAIT_POLICY=PASSIVE``
(set in the environment, before Python starts) shows the difference.

    python benchmarks/bench_extract.py                 # ~2,000 crops, 3 repeats
    python benchmarks/bench_extract.py --quick         # ~650 crops, 2 repeats
    python benchmarks/bench_extract.py --data DIR      # reuse (or create) a demo set in DIR
    python benchmarks/bench_extract.py --threads 1     # torch intra-op threads for the model
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import peak_rss_mb, print_table, write_json  # noqa: E402
from itkm_engine.config import ModelConfig, preset  # noqa: E402
from itkm_engine.data.demo import make_demo  # noqa: E402
from itkm_engine.data.ingest import ingest  # noqa: E402
from itkm_engine.data.loading import CropDataset, CropTransform, make_loader  # noqa: E402
from itkm_engine.features import autocast, extract_features  # noqa: E402
from itkm_engine.model.backbone import build_model  # noqa: E402
from itkm_engine.records import ImageTable  # noqa: E402
from itkm_engine.workspace import Workspace  # noqa: E402

CPU_TARGET = 0.70  # extract / decode, quick preset on CPU
GPU_TARGET = 0.80  # extract / bare forward, ViT-B-16 on a GPU


# ------------------------------------------------------------------------------------------
# measurement helpers


def _cpu_now() -> float:
    """CPU seconds of this process plus its reaped children (the loader workers)."""
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


def _load() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def _measure(fn, n_images: int, *, sync=None) -> dict:
    """One timed run of ``fn()``: wall and CPU seconds, images/s, load average around it."""
    load0 = _load()
    if sync:
        sync()
    w0, c0 = time.perf_counter(), _cpu_now()
    fn()
    if sync:
        sync()
    wall, cpu = time.perf_counter() - w0, _cpu_now() - c0
    return {"wall_s": wall, "cpu_s": cpu, "ips": n_images / wall, "load_before": load0, "load_after": _load()}


def _summary(runs: list[dict], n_images: int) -> dict:
    """Best and median images/s over the repeats; CPU ms per image (best and median)."""
    ips = [r["ips"] for r in runs]
    cpu_ms = [1000.0 * r["cpu_s"] / n_images for r in runs]
    best = max(runs, key=lambda r: r["ips"])
    return {
        "images": n_images,
        "best_ips": max(ips),
        "median_ips": statistics.median(ips),
        "cpu_ms_per_image": min(cpu_ms),
        "cpu_ms_per_image_median": statistics.median(cpu_ms),
        "cores_busy": best["cpu_s"] / best["wall_s"],  # CPU time / wall time of the fastest run
        "runs": runs,
    }


def _interleaved(loops: dict, n_images: int, repeats: int, *, sync=None) -> dict:
    """Run the loops round-robin (a, b, c, a, b, c, ...) so that a change in the machine's load
    hits all of them alike instead of one."""
    runs: dict[str, list[dict]] = {k: [] for k in loops}
    for _ in range(repeats):
        for name, fn in loops.items():
            runs[name].append(_measure(fn, n_images, sync=sync))
    return {k: _summary(v, n_images) for k, v in runs.items()}


def _repeat_table(images: ImageTable, times: int) -> ImageTable:
    """The same files listed ``times`` over (fresh ids): a longer job without more disk."""
    if times <= 1:
        return images
    n = len(images)
    rep = lambda a: np.concatenate([np.asarray(a)] * times)  # noqa: E731
    return replace(
        images,
        id=np.arange(1, n * times + 1, dtype=np.int64),
        path=list(images.path) * times,
        relpath=list(images.relpath) * times,
        camera=rep(images.camera), scenario=rep(images.scenario), group=rep(images.group),
        width=rep(images.width), height=rep(images.height), timestamp=rep(images.timestamp),
        person_id=rep(images.person_id), status=rep(images.status),
        camera_id=rep(images.camera_id), source_id=rep(images.source_id),
    )


def _dataset(model, images: ImageTable) -> CropDataset:
    return CropDataset(
        images.path,
        model.scenario_index(list(images.scenario)).numpy(),
        model.group_index(list(images.group)).numpy(),
        CropTransform(model.cfg.image_size),
    )


def _decode_loop(model, images, *, batch_size: int, workers: int, device: torch.device):
    """(a): the loading path of ``embed`` without the model."""
    ds = _dataset(model, images)

    def run():
        for batch in make_loader(ds, batch_size=batch_size, workers=workers, device=device):
            if device.type == "cuda" and len(batch):
                batch.to(device, non_blocking=True)  # the H2D copy is part of loading on a GPU

    return run


def _predecode(model, images, *, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every crop decoded once through the same transform: (images, scenario_idx, group_idx) on
    ``device``, for the bare forward."""
    xs, ss, gs = [], [], []
    for batch in make_loader(_dataset(model, images), batch_size=256, workers=0, device=device):
        b = batch.to(device)
        xs.append(b.images)
        ss.append(b.scenario_idx)
        gs.append(b.group_idx)
    return torch.cat(xs), torch.cat(ss), torch.cat(gs)


def _batches(tensors, batch_size: int) -> list[tuple]:
    n = tensors[0].shape[0]
    return [tuple(t[i : i + batch_size] for t in tensors) for i in range(0, n, batch_size)]


def _forward_loop(model, batches, *, device: torch.device, amp: bool):
    """(c): the model alone on pre-decoded batches (features left on the device)."""

    def run():
        with torch.inference_mode(), autocast(device, amp):
            for x, s, g in batches:
                model.retrieval_feature(model.forward_image(x, s, g))

    return run


def _extract_loop(model, images, *, batch_size: int, workers: int, device: torch.device, amp: bool, check: dict):
    """(b): ``extract_features`` end to end, cache disabled."""

    def run():
        fs = extract_features(model, images, cache_dir=None, key="bench", device=device,
                              batch_size=batch_size, workers=workers, amp=amp)
        check["rows"] = len(fs)
        check["failed"] = 0 if fs.failed is None else len(fs.failed)
        check["feats"] = fs.feats

    return run


def _features_agree(model, feats: np.ndarray, batches, device, amp) -> float:
    """Largest |difference| between extract_features' rows and the bare forward's: both must
    compute the same features (a speed-up that changed the pixels would show here)."""
    outs = []
    with torch.inference_mode(), autocast(device, amp):
        for x, s, g in batches:
            outs.append(model.retrieval_feature(model.forward_image(x, s, g)).float().cpu().numpy())
    ref = np.concatenate(outs)
    if ref.shape != feats.shape:
        return float("inf")
    return float(np.abs(ref - feats).max())


# ------------------------------------------------------------------------------------------
# the two scenarios


def _table(demo: Path, tmp: Path) -> ImageTable:
    ws_dir = tmp / "ws"
    with Workspace.open(ws_dir, create=True) as ws:
        ingest(ws, [demo])
        return ws.images()


def run_cpu(images: ImageTable, *, repeats: int, workers: int, batch_size: int, threads: int | None) -> dict:
    cfg = preset("quick")
    device = torch.device("cpu")
    if threads:
        torch.set_num_threads(threads)
    scenarios, groups = sorted(set(images.scenario)), sorted(set(images.group))
    torch.manual_seed(0)
    model = build_model(cfg.model, scenarios, groups, device=device).eval()
    n = len(images)
    amp = cfg.amp
    print(f"CPU: {n} crops, model {cfg.model.name} ({cfg.model.tower} image tower) at "
          f"{cfg.model.image_size[0]}x{cfg.model.image_size[1]}, "
          f"batch {batch_size}, workers {workers}, torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, load {_load()}")

    batches = _batches(_predecode(model, images, device=device), batch_size)
    check: dict = {}
    loops = {
        "decode": _decode_loop(model, images, batch_size=batch_size, workers=workers, device=device),
        "extract": _extract_loop(model, images, batch_size=batch_size, workers=workers, device=device,
                                 amp=amp, check=check),
        "forward": _forward_loop(model, batches, device=device, amp=amp),
    }
    loops["decode"]()  # warm-up: worker start-up code paths, allocator
    loops["forward"]()
    res = _interleaved(loops, n, repeats)
    res["feature_max_abs_diff"] = _features_agree(model, check["feats"], batches, device, amp)
    res["rows"], res["failed"] = check["rows"], check["failed"]
    ratio = res["extract"]["best_ips"] / res["decode"]["best_ips"]
    res.update(
        n_images=n, model=cfg.model.name, image_size=list(cfg.model.image_size), batch_size=batch_size,
        workers=workers, torch_threads=torch.get_num_threads(), amp=amp,
        ratio_extract_over_decode=ratio,
        ratio_extract_over_decode_median=res["extract"]["median_ips"] / res["decode"]["median_ips"],
        ratio_by_cpu_time=res["decode"]["cpu_ms_per_image"] / res["extract"]["cpu_ms_per_image"],
        ratio_extract_over_forward=res["extract"]["best_ips"] / res["forward"]["best_ips"],
        # (b) runs the model on top of loading, so (b)/(a) can never exceed (c)/(a).
        ceiling_forward_over_decode=res["forward"]["best_ips"] / res["decode"]["best_ips"],
        target=CPU_TARGET, verdict="PASS" if ratio >= CPU_TARGET else "MISS",
    )
    return res


def run_gpu(images: ImageTable, *, repeats: int, workers: int | None, batch_size: int | None,
            min_images: int, device: torch.device | None = None, model_cfg: ModelConfig | None = None) -> dict:
    """ViT-B-16 (random init) at 256x128, bf16 autocast: extract_features vs the bare forward.

    ``device`` / ``model_cfg`` exist for ``--gpu-dry-run``, which walks this code on the CPU with
    a tiny model to check it where no GPU is at hand (its numbers mean nothing)."""
    full = preset("full")
    device = device or torch.device("cuda")
    mcfg = model_cfg or ModelConfig(name="ViT-B-16", pretrained=None, image_size=(256, 128))
    on_gpu = device.type == "cuda"
    sync = torch.cuda.synchronize if on_gpu else None
    name = torch.cuda.get_device_name(device) if on_gpu else f"DRY RUN on {device.type}"
    batch_size = batch_size or full.data.extract_batch_size
    workers = full.data.workers if workers is None else workers
    scenarios, groups = sorted(set(images.scenario)), sorted(set(images.group))
    torch.manual_seed(0)
    model = build_model(mcfg, scenarios, groups, device=device).eval()
    times = max(1, -(-min_images // len(images)))  # enough batches that start-up does not dominate
    one = _predecode(model, images, device=device)
    big = _repeat_table(images, times)
    n = len(big)
    print(f"GPU ({name}): {n} crops, {mcfg.name} at {mcfg.image_size[0]}x{mcfg.image_size[1]}, bf16 autocast, "
          f"batch {batch_size}, workers {workers}, load {_load()}")
    batches = _batches(tuple(t.repeat(times, *([1] * (t.dim() - 1))) for t in one), batch_size)
    check: dict = {}
    loops = {
        "decode": _decode_loop(model, big, batch_size=batch_size, workers=workers, device=device),
        "extract": _extract_loop(model, big, batch_size=batch_size, workers=workers, device=device,
                                 amp=True, check=check),
        "forward": _forward_loop(model, batches, device=device, amp=True),
    }
    loops["forward"]()  # warm-up: kernels, autotuning, allocator
    if sync:
        sync()
    res = _interleaved(loops, n, repeats, sync=sync)
    res["feature_max_abs_diff"] = _features_agree(model, check["feats"], batches, device, True)
    ratio = res["extract"]["best_ips"] / res["forward"]["best_ips"]
    res.update(
        n_images=n, model=mcfg.name, image_size=list(mcfg.image_size), batch_size=batch_size, workers=workers,
        ratio_extract_over_forward=ratio,
        ratio_extract_over_forward_median=res["extract"]["median_ips"] / res["forward"]["median_ips"],
        ratio_extract_over_decode=res["extract"]["best_ips"] / res["decode"]["best_ips"],
        target=GPU_TARGET, verdict="PASS" if ratio >= GPU_TARGET else "MISS",
        gpu=name, rows=check["rows"],
    )
    return res


# ------------------------------------------------------------------------------------------


def _row(name: str, what: str, m: dict, bound: str) -> dict:
    return {
        "run": name,
        "what": what,
        "best img/s": round(m["best_ips"], 1),
        "median img/s": round(m["median_ips"], 1),
        "cpu ms/img": round(m["cpu_ms_per_image"], 3),
        "cores busy": round(m["cores_busy"], 2),
        "bound by": bound,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 identities (~650 crops), 2 repeats")
    ap.add_argument("--data", type=Path, default=None, help="demo set folder to reuse (created when absent)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None,
                    help="loader workers (default: the preset's: quick on CPU, full on GPU)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="default: the preset's extract_batch_size (quick on CPU, full on GPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--gpu-images", type=int, default=20_000, help="images per GPU run (the demo set repeated)")
    ap.add_argument("--no-gpu", action="store_true", help="skip the GPU part even where CUDA is available")
    ap.add_argument("--gpu-dry-run", action="store_true", help=argparse.SUPPRESS)  # GPU code path, CPU, tiny model
    args = ap.parse_args()

    identities = 20 if args.quick else 60
    repeats = args.repeats or (2 if args.quick else 3)
    quick = preset("quick")
    workers = quick.data.workers if args.workers is None else args.workers
    batch_size = args.batch_size or quick.data.extract_batch_size
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    t_all, c_all = time.perf_counter(), _cpu_now()

    with tempfile.TemporaryDirectory(prefix="itkm-bench-extract-") as tmp_s:
        tmp = Path(tmp_s)
        demo = args.data or tmp / "demo"
        t0 = time.perf_counter()
        info = make_demo(demo, identities=identities, seed=0)
        demo_s = time.perf_counter() - t0
        images = _table(demo, tmp)
        print(f"demo set: {info.n_images} crops in {demo} ({'reused' if info.reused else f'{demo_s:.1f} s'})")

        cpu = run_cpu(images, repeats=repeats, workers=workers, batch_size=batch_size, threads=args.threads)
        gpu = None
        if torch.cuda.is_available() and not args.no_gpu:
            gpu = run_gpu(images, repeats=repeats, workers=args.workers, batch_size=args.batch_size,
                          min_images=args.gpu_images)
        elif args.gpu_dry_run:
            gpu = run_gpu(images, repeats=1, workers=args.workers, batch_size=64, min_images=2 * len(images),
                          device=torch.device("cpu"),
                          model_cfg=ModelConfig(name="itkm-tiny", pretrained=None, image_size=(64, 32)))

    mode = f"{workers} loader workers" if workers else "in the main process"
    rows = [
        _row("(a) decode", f"load_rgb+resize+normalise, {mode}", cpu["decode"],
             "CPU: JPEG decode + resize (files in page cache)"),
        _row("(b) extract", "extract_features end to end", cpu["extract"],
             f"CPU: the model (forward {cpu['forward']['cpu_ms_per_image']:.2f} vs decode "
             f"{cpu['decode']['cpu_ms_per_image']:.2f} CPU ms/img)"),
        _row("(c) forward", "bare forward, pre-decoded", cpu["forward"], "CPU: matmuls (fp32)"),
    ]
    print_table(rows, f"CPU extraction, {cpu['model']} {cpu['image_size'][0]}x{cpu['image_size'][1]}, "
                      f"{cpu['n_images']} crops, batch {cpu['batch_size']}, {cpu['torch_threads']} torch threads")
    print(f"\n(b)/(a) best {cpu['ratio_extract_over_decode']:.1%}, median "
          f"{cpu['ratio_extract_over_decode_median']:.1%}; by CPU time per image "
          f"{cpu['ratio_by_cpu_time']:.1%}; target >= {CPU_TARGET:.0%}: {cpu['verdict']}")
    print(f"(b)/(c) extract vs bare forward: {cpu['ratio_extract_over_forward']:.1%}; ceiling of (b)/(a) "
          f"whatever the loader does: (c)/(a) = {cpu['ceiling_forward_over_decode']:.1%}")
    print(f"features of (b) vs (c): max |diff| {cpu['feature_max_abs_diff']:.2e}; "
          f"rows {cpu['rows']}, unreadable {cpu['failed']}")

    if gpu is None:
        why = "no CUDA device" if not torch.cuda.is_available() else "--no-gpu"
        print(f"\nGPU ViT-B-16 256x128 extract vs bare forward (target >= {GPU_TARGET:.0%}): SKIPPED ({why})")
    else:
        loader_bound = gpu["decode"]["best_ips"] < gpu["forward"]["best_ips"]
        print_table([
            _row("decode", f"loader alone + H2D copy, {gpu['workers']} workers", gpu["decode"],
                 "CPU: JPEG decode + resize in the workers"),
            _row("extract", "extract_features end to end", gpu["extract"],
                 "the loader (decode < forward)" if loader_bound else "GPU forward + per-batch overhead"),
            _row("forward", "bare forward, bf16, pre-decoded on GPU", gpu["forward"], "GPU compute"),
        ], f"GPU extraction, ViT-B-16 256x128, {gpu['n_images']} crops, batch {gpu['batch_size']}, "
           f"{gpu['workers']} workers ({gpu['gpu']})")
        print(f"\nextract/forward best {gpu['ratio_extract_over_forward']:.1%}, median "
              f"{gpu['ratio_extract_over_forward_median']:.1%}; target >= {GPU_TARGET:.0%}: {gpu['verdict']}")
        print(f"extract/decode {gpu['ratio_extract_over_decode']:.1%}; features of extract vs forward: "
              f"max |diff| {gpu['feature_max_abs_diff']:.2e}")

    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.gpu_dry_run:
        print("\n--gpu-dry-run: numbers above are not measurements; results not written")
        return 0
    path = write_json("extract", {
        "identities": identities,
        "repeats": repeats,
        "cpu": cpu,
        "gpu": gpu if gpu is not None else ("SKIPPED (no CUDA device)" if not torch.cuda.is_available()
                                            else "SKIPPED (--no-gpu)"),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "total_wall_s": time.perf_counter() - t_all,
        "total_cpu_s": _cpu_now() - c_all,
        "peak_rss_mb": peak_rss_mb(),
        "torch_threads": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    })
    print(f"\nload average start {load_start}, end {load_end}; results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
