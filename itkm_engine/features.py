"""Feature extraction, cached on disk per model checkpoint.

Features of a checkpoint never change, so they are computed once: ``features/<key>/`` holds
chunk files (``chunk_00000.npz``: ids, retrieval features, projected features), each written
atomically.  A later call embeds only the ids no chunk holds yet -- new cameras after a retrain,
or the rest of an extraction that was killed half-way.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_open, atomic_write_text
from .data.loading import CropDataset, CropTransform, make_loader
from .distributed import SINGLE
from .progress import Reporter
from .records import rows_of

CHUNK = 4096  # images per cache chunk: what a kill -9 can lose at most


@dataclass
class FeatureSet:
    """Features of some images under one model: rows follow ``ids``."""

    ids: np.ndarray  # int64 [N] image ids
    feats: np.ndarray  # float32 [N, D] L2-normalised retrieval features
    proj: np.ndarray  # float32 [N, E] L2-normalised projected CLS (CLIP joint image-text space)
    key: str = ""
    failed: np.ndarray | None = None  # image ids that could not be read

    def __len__(self) -> int:
        return len(self.ids)

    def rows_for(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id in this set (-1 where absent)."""
        return rows_of(self.ids, ids)

    def subset(self, ids: np.ndarray) -> "FeatureSet":
        rows = self.rows_for(np.asarray(ids, dtype=np.int64))
        rows = rows[rows >= 0]
        return FeatureSet(self.ids[rows], self.feats[rows], self.proj[rows], self.key)


class FeatureCache:
    """Chunked on-disk cache of one checkpoint's features."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None

    def load(self, dims: tuple[int, int] | None = None, reporter: Reporter | None = None,
             discard: bool = False) -> FeatureSet:
        """Every chunk that passes :func:`chunk_problem` (``dims``: the model's feature and
        projection widths).  A damaged chunk is left out -- its images are embedded again -- and
        logged; ``discard=True`` (a writable workspace) also deletes it, so it is reported once."""
        ids, feats, proj = [], [], []
        if self.folder is not None and self.folder.is_dir():
            for f in sorted(self.folder.glob("chunk_*.npz")):
                try:
                    with np.load(f, allow_pickle=False) as z:
                        i, a, b = z["ids"].astype(np.int64), z["feats"].astype(np.float32), z["proj"].astype(np.float32)
                    problem = chunk_problem(i, a, b, dims)
                except (OSError, ValueError, KeyError, EOFError) as exc:
                    problem = f"unreadable ({type(exc).__name__})"
                if problem is not None:  # a damaged chunk is recomputed, never trusted
                    if reporter is not None:
                        reporter.warning(f"feature cache file {f} is damaged ({problem}); its images are embedded again")
                    if discard:
                        with contextlib.suppress(OSError):
                            f.unlink()
                    continue
                ids.append(i)
                feats.append(a)
                proj.append(b)
        if not ids:
            return FeatureSet(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32))
        ids_a = np.concatenate(ids)
        _, first = np.unique(ids_a, return_index=True)  # duplicates can only come from a re-run: keep one
        first.sort()
        return FeatureSet(ids_a[first], np.concatenate(feats)[first], np.concatenate(proj)[first])

    def ids(self) -> np.ndarray:
        """The image ids the chunks hold (only their id arrays are read: cheap).  A damaged chunk
        may be among them; :meth:`load` is the check."""
        out = []
        if self.folder is not None and self.folder.is_dir():
            for f in sorted(self.folder.glob("chunk_*.npz")):
                with contextlib.suppress(OSError, ValueError, KeyError, EOFError), np.load(f, allow_pickle=False) as z:
                    out.append(z["ids"].astype(np.int64))
        return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)

    DIMS_FILE = "dims.json"

    def dims(self) -> tuple[int, int] | None:
        """The model's feature and projection widths, as recorded by the model that wrote the
        cache (``None``: not recorded, or unreadable).  Lets a complete cache be checked and read
        without building the model."""
        if self.folder is None:
            return None
        try:
            d = json.loads((self.folder / self.DIMS_FILE).read_text())
            return int(d["feats"]), int(d["proj"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def record_dims(self, dims: tuple[int, int]) -> None:
        """Write the model's widths beside the chunks (once; a read-only folder is left alone)."""
        if self.folder is None or self.dims() == tuple(dims):
            return
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.folder / self.DIMS_FILE, json.dumps({"feats": int(dims[0]), "proj": int(dims[1])}))

    def append(self, ids: np.ndarray, feats: np.ndarray, proj: np.ndarray) -> None:
        if self.folder is None or not len(ids):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        n = len(list(self.folder.glob("chunk_*.npz")))
        path = self.folder / f"chunk_{n:05d}.npz"
        while path.exists():
            n += 1
            path = self.folder / f"chunk_{n:05d}.npz"
        with atomic_open(path, "wb") as fh:
            np.savez(fh, ids=ids.astype(np.int64), feats=feats.astype(np.float16), proj=proj.astype(np.float16))


#: How far a stored feature's length may be from 1 (they are L2-normalised, then kept as float16:
#: rounding moves a length by ~1e-4).
UNIT_TOLERANCE = 0.01


def chunk_problem(ids: np.ndarray, feats: np.ndarray, proj: np.ndarray, dims: tuple[int, int] | None) -> str | None:
    """Why a cache chunk cannot be trusted (``None``: it can): shapes that disagree, a width other
    than the model's, NaN or infinite values, vectors that are not unit length (all zeros, say:
    every similarity to them would be 0.0)."""
    if ids.ndim != 1 or feats.ndim != 2 or proj.ndim != 2 or not len(ids) == len(feats) == len(proj):
        return "its arrays do not line up"
    if dims is not None and (feats.shape[1], proj.shape[1]) != tuple(dims):
        return f"{feats.shape[1]}-d features where the model gives {dims[0]}-d"
    if not (np.isfinite(feats).all() and np.isfinite(proj).all()):
        return "NaN or infinite values"
    for what, a in (("features", feats), ("projections", proj)):
        off = np.abs(np.linalg.norm(a.astype(np.float32), axis=1) - 1.0) > UNIT_TOLERANCE
        if off.any():
            return f"{int(off.sum())} of {len(a)} {what} are not unit length (e.g. all zeros)"
    return None


def record_failed_images(ws, failed_ids, images, reporter: Reporter | None = None, during: str = "extraction") -> None:
    """Mark images that vanished or broke since ingest, so later steps skip them and the operator
    sees them: ``missing`` when the file is gone (back to ``ok`` when a re-ingest finds it again),
    ``unreadable`` when it is there but does not decode."""
    import os

    failed = [int(i) for i in failed_ids]
    if not failed:
        return
    paths = dict(zip(np.asarray(images.id).tolist(), images.path))
    gone = [i for i in failed if not os.path.lexists(paths.get(i, ""))]
    gone_set = set(gone)
    bad = [i for i in failed if i not in gone_set]
    if gone:
        ws.set_image_status(gone, "missing", f"not found during {during}")
    if bad:
        ws.set_image_status(bad, "unreadable", f"could not be decoded during {during}")
    if reporter is not None:
        reporter.warning(f"{len(failed)} images could not be read and were skipped "
                         f"({len(gone)} missing, {len(bad)} unreadable); they are marked in the workspace")


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA where supported, fp16 otherwise; nothing on CPU."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


@torch.no_grad()
def embed(
    model,
    paths,
    scenarios,
    groups,
    *,
    device: torch.device,
    batch_size: int = 128,
    workers: int = 0,
    amp: bool = True,
    reporter: Reporter | None = None,
    on_chunk=None,
    chunk: int = CHUNK,
    stage: str = "extract",
    batches=None,
):
    """Embed images (no cache).  Returns ``(ok_index, feats, proj)``; ``ok_index`` are the
    positions in ``paths`` that could be read.  ``on_chunk(ok_index, feats, proj)`` is called
    every ``chunk`` images so callers can persist partial work.  ``batches``: the images' batches
    from elsewhere (a round's stem cache: their frozen-prefix maps), instead of decoding ``paths``."""
    reporter = reporter or Reporter()
    was_training = model.training
    model.eval()
    if batches is None:
        ds = CropDataset(
            paths,
            model.scenario_index(list(scenarios)).numpy(),
            model.group_index(list(groups)).numpy(),
            CropTransform(model.cfg.image_size),
        )
        batches = make_loader(ds, batch_size=batch_size, workers=workers, device=device)
    n = len(paths)
    out_idx, out_f, out_p = [], [], []
    flushed = 0  # batches already handed to on_chunk

    def flush():
        nonlocal flushed
        if on_chunk is not None and flushed < len(out_idx):
            on_chunk(np.concatenate(out_idx[flushed:]), np.concatenate(out_f[flushed:]), np.concatenate(out_p[flushed:]))
        flushed = len(out_idx)

    done = 0
    t0 = time.monotonic()
    try:
        for batch in batches:
            reporter.check()
            done += len(batch) + len(batch.failed)
            if len(batch):
                b = batch.to(device, non_blocking=True)
                with autocast(device, amp):
                    out = model.forward_image(b.images, b.scenario_idx, b.group_idx, b.prefix)
                out_f.append(model.retrieval_feature(out).float().cpu().numpy())
                out_p.append(torch.nn.functional.normalize(out.proj.float(), dim=-1).cpu().numpy())
                out_idx.append(batch.index.numpy())
            if sum(len(x) for x in out_idx[flushed:]) >= chunk:
                flush()
            rate = done / max(time.monotonic() - t0, 1e-6)
            reporter.update(done / max(n, 1), stage=stage, step=done, steps=n, message=f"{rate:.0f} images/s")
        flush()
    finally:
        model.train(was_training)
    if not out_idx:
        return np.zeros(0, np.int64), np.zeros((0, model.feature_dim), np.float32), np.zeros((0, model.embed_dim), np.float32)
    return np.concatenate(out_idx), np.concatenate(out_f), np.concatenate(out_p)


def extract_features(
    model,
    images,
    *,
    cache_dir: Path | None,
    key: str,
    device: torch.device,
    batch_size: int = 128,
    workers: int = 0,
    amp: bool = True,
    reporter: Reporter | None = None,
    stage: str = "extract",
    dist=None,
    write_cache: bool = True,
    stem=None,
) -> FeatureSet:
    """Features for every image of ``images`` (an ImageTable) under ``model``.

    ``model`` may also be a zero-argument callable that builds it: then it is called only when
    the cache lacks some images (a complete cache is read without building the model).

    Rows come back in the order of ``images.id``; images that could not be read are left out
    and listed in ``FeatureSet.failed``.  ``cache_dir`` None (or unwritable) computes in memory.
    Under ``torchrun`` (``dist``) each rank embeds its share and every rank gets all rows; only
    rank 0 writes the cache.  ``write_cache=False`` (a read-only workspace) uses what the cache
    holds and keeps anything newly embedded in memory.  ``stem``: the round's
    :class:`~itkm_engine.data.stem_cache.StemCache`; images it holds are embedded from their
    frozen-prefix maps (within float16 rounding of embedding them from pixels).
    """
    dist = dist or SINGLE
    reporter = reporter or Reporter()
    cache = FeatureCache(cache_dir)
    ids = np.asarray(images.id, dtype=np.int64)
    if not isinstance(model, torch.nn.Module):  # a zero-argument callable: build the model only if needed
        recorded = cache.dims()
        if recorded is not None:  # checked against the widths its model recorded; silent: a
            have = cache.load(recorded)  # damaged chunk is reported by the full path below
            if len(have) and not len(np.setdiff1d(ids, have.ids)):
                rows = have.rows_for(ids)
                return FeatureSet(have.ids[rows], have.feats[rows], have.proj[rows], key, np.zeros(0, np.int64))
        model = model()
    dims = (int(model.feature_dim), int(model.embed_dim))
    have = cache.load(dims, reporter, discard=write_cache and dist.main)
    if write_cache and dist.main:
        cache.record_dims(dims)
    if not write_cache:
        cache.folder = None
    have_rows = have.rows_for(ids) if len(have) else np.full(len(ids), -1)
    missing = np.flatnonzero(have_rows < 0)
    if len(missing):
        reporter.log(f"embedding {len(missing)} of {len(ids)} images with model {key}")

        def persist(idx, feats, proj):
            try:
                cache.append(ids[mine][idx], feats, proj)
            except OSError as exc:  # read-only / full disk: keep going in memory, say so
                reporter.warning(f"feature cache not written ({exc}); continuing in memory")
                cache.folder = None

        mine = missing[dist.shard(len(missing))]
        ok_idx, feats, proj = embed(
            model,
            [images.path[i] for i in mine],
            [images.scenario[i] for i in mine],
            [images.group[i] for i in mine],
            device=device,
            batch_size=batch_size,
            workers=workers,
            amp=amp,
            reporter=reporter,
            on_chunk=persist if cache.folder is not None and not dist.enabled else None,
            stage=stage,
            batches=stem.plain_batches(ids[mine], batch_size) if stem is not None and stem.knows(ids[mine]) else None,
        )
        new_ids = ids[mine][ok_idx]
        if dist.enabled:  # every rank gets every row; rank 0 keeps the cache
            new_ids, feats, proj = dist.gather_numpy(new_ids), dist.gather_numpy(feats), dist.gather_numpy(proj)
            order = np.argsort(new_ids, kind="stable")
            new_ids, feats, proj = new_ids[order], feats[order], proj[order]
            if dist.main and cache.folder is not None:
                try:
                    cache.append(new_ids, feats, proj)
                except OSError as exc:
                    reporter.warning(f"feature cache not written ({exc}); continuing in memory")
        failed = np.setdiff1d(ids[missing], new_ids)
        if len(have):
            all_ids = np.concatenate([have.ids, new_ids])
            all_f = np.concatenate([have.feats, feats]) if len(feats) else have.feats
            all_p = np.concatenate([have.proj, proj]) if len(proj) else have.proj
        else:
            all_ids, all_f, all_p = new_ids, feats, proj
        have = FeatureSet(all_ids, all_f, all_p)
    else:
        failed = np.zeros(0, np.int64)
    rows = have.rows_for(ids)
    rows = rows[rows >= 0]
    return FeatureSet(have.ids[rows], have.feats[rows], have.proj[rows], key, failed)
