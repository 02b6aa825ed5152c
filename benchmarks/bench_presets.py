"""Throughput of one training round per preset, per stage, on whatever device is at hand.

    python benchmarks/bench_presets.py                      # quick + full on CUDA if present, else CPU quick only
    python benchmarks/bench_presets.py --presets quick --device cpu --identities 20 --epochs 1

Made to be run once on a lent GPU machine in one go: it generates the demo set, runs one round of
each preset with few epochs, and reports images/s per stage (extraction, Stage I, II, III) from the
workspace's epoch log.  ``full`` uses ViT-B-16 at 256x128; without network or cached OpenAI
weights it falls back to random init and says so (throughput does not depend on the weights).
It also lists the model caches it finds (~/.cache/huggingface, ~/.cache/clip) and any CLIP
weights in them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, print_table, write_json  # noqa: E402


def model_caches() -> list[dict]:
    out = []
    for root in (Path.home() / ".cache" / "huggingface", Path.home() / ".cache" / "clip",
                 Path.home() / ".cache" / "open_clip"):
        if not root.exists():
            out.append({"cache": str(root), "exists": False, "weights": ""})
            continue
        found = [str(p.relative_to(root)) for p in root.rglob("*")
                 if p.suffix in (".bin", ".pt", ".safetensors", ".pth") and p.stat().st_size > 1e6]
        out.append({"cache": str(root), "exists": True, "weights": "; ".join(found[:10])})
    return out


def run_preset(name: str, demo: Path, device: str, epochs: int, tmp: Path, iters: int = 50) -> list[dict]:
    import torch

    from itkm_engine.config import preset
    from itkm_engine.data.ingest import ingest
    from itkm_engine.errors import WeightsUnavailableError
    from itkm_engine.features import extract_features
    from itkm_engine.model.loading import load_model
    from itkm_engine.trainer import train
    from itkm_engine.workspace import Workspace

    cfg = preset(name)
    cfg.device = device
    cfg.stage1.epochs = cfg.stage3.epochs = epochs
    cfg.stage2.epochs = max(epochs, 1)
    cfg.stage1.iters_per_epoch = min(cfg.stage1.iters_per_epoch, iters)
    cfg.stage3.iters_per_epoch = min(cfg.stage3.iters_per_epoch, iters)
    note = ""
    rows = []
    with Workspace.open(tmp / f"ws-{name}", create=True) as ws:
        ingest(ws, [demo])
        images = ws.images()
        dev = torch.device(device)
        try:
            model, key = load_model(ws, cfg, dev)
        except WeightsUnavailableError:
            cfg.model.pretrained = None
            note = "random init (no weights reachable)"
            model, key = load_model(ws, cfg, dev)
        # Extraction alone, cold (no cache).
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fs = extract_features(model, images, cache_dir=None, key=key, device=dev,
                              batch_size=cfg.data.extract_batch_size, workers=cfg.data.workers, amp=cfg.amp)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rows.append({"preset": name, "stage": "extract", "images_per_s": len(fs) / (time.perf_counter() - t),
                     "batch": cfg.data.extract_batch_size, "note": note})
        del model
        t = time.perf_counter()
        train(ws, cfg, rounds=1, device=dev)
        total = time.perf_counter() - t
        for e in ws.epoch_log(1):
            v = e["values"]
            bs = cfg.stage2.batch_size if e["stage"] == "stage2" else cfg.data.num_identities * cfg.data.num_instances
            rows.append({"preset": name, "stage": f"{e['stage']} epoch {e['epoch']}",
                         "images_per_s": v.get("steps", 0) * bs / max(v.get("seconds", 1e-9), 1e-9),
                         "batch": bs, "note": f"{v.get('steps', 0)} steps, {v.get('seconds', 0):.1f} s"})
        rows.append({"preset": name, "stage": "round total", "images_per_s": float("nan"), "batch": "",
                     "note": f"{total:.1f} s for {len(images)} images"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--identities", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--iters", type=int, default=50, help="at most this many batches per Stage I/III epoch")
    a = ap.parse_args()
    import torch

    from itkm_engine.data.demo import make_demo

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    presets = a.presets or (["quick", "full"] if device.startswith("cuda") else ["quick"])
    os.environ.setdefault("HF_HUB_OFFLINE", "0" if device.startswith("cuda") else "1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        info = make_demo(tmp / "demo", identities=a.identities, seed=0)
        rows = []
        for p in presets:
            rows += run_preset(p, info.root, device, a.epochs, tmp, a.iters)
    caches = model_caches()
    print_table(rows, f"one round per preset on {device} ({info.n_images} demo crops)")
    print_table(caches, "model caches")
    path = write_json("presets", {"device": device, "images": info.n_images, "rows": rows, "caches": caches,
                                  "machine_gpu": machine().get("gpu")})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
