"""The frozen stem's output per crop and view, computed once per round (issue 20 §3).

Why: at 128x64 the quick preset's MobileNetV2 spends ~80% of a forward pass in its first seven
blocks (6.7 of 8.5 CPU ms per crop here), and those blocks never train (frozen weights, BatchNorm in
eval mode) and come before the scenario embedding and the group stems: their output for a crop is a
fixed function of its pixels (``ImageTower.has_frozen_prefix``).  A round runs them once per crop
and view and keeps the maps; every feature extraction and every training batch of the round then
runs only the trainable blocks.  A tower without a frozen prefix (the ViT) never gets here.

Views of a crop:

* the **plain** view (resize + normalise): every feature extraction of the round (each Stage I /
  Stage III epoch, Stage II, the round's final features);
* ``data.fixed_views`` **augmented** views, drawn through :meth:`CropTransform.pixels` (flip,
  pad + crop, grey copies, and any pixel-level augmentation added there later) with an RNG keyed by
  (training seed, round, image id, view number): new views every round.  They are the training crops: a training draw,
  keyed by (epoch seed, sample, draw) as the augmentation was (docs/adr/0004), picks one of them and
  applies **random erasing on the map**: a rectangle of cells replaced by the same cells of the
  stem's response to a noise image -- what erasing pixels with noise shows the trainable blocks.

Memory: ``data.stem_cache_mb`` bounds what is kept.  Maps are stored as float16: C x H/8 x W/8
values each (32 x 16 x 8 = 8 KiB at 128x64 with 7 frozen blocks), 8 MiB per 1,000 crops per view.
The plain views are kept first, the augmented ones when they fit as well.  What does not fit is
computed when a batch needs it, from the same pixels and rounded to float16 the same way, so the
budget changes the cost of a round, not what it learns (up to the rounding of batched
convolutions).  Nothing here touches the global RNG: a round resumed in a later epoch builds its
cache then and continues exactly as the uninterrupted round did.
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from ..progress import Reporter
from ..records import rows_of
from .imageio import BadImage, load_rgb
from .loading import Augment, Batch, CropTransform, erase_box, make_loader

__all__ = ["StemCache", "PLAIN", "NOISE_MAPS"]

#: View number of the plain (unaugmented) crop.
PLAIN = -1
#: Noise images whose stem response fills the erased cells (one is picked per erasure).
NOISE_MAPS = 8
_MIB = 2**20


def _fp16(x: torch.Tensor) -> torch.Tensor:
    """What a map is when stored: float16 (rounded), given back as float32."""
    return x.half().float()


class StemCache:
    """The frozen prefix's maps of a round's images: see the module docstring.

    ``images``: the round's ImageTable; ``augment``: the training augmentation (its pixel-level
    part draws the fixed views, its ``random_erasing`` acts per draw on the map);
    ``views``: fixed augmented views per crop (0: none; training then reads pixels as before);
    ``seed``: (training seed, round number);
    ``budget_mb``: the most the kept maps may take.
    """

    def __init__(self, model, images, *, image_size: tuple[int, int], augment: Augment, views: int,
                 seed: tuple[int, ...], budget_mb: float, device: torch.device, batch_size: int = 128,
                 workers: int = 0) -> None:
        if not model.has_frozen_prefix:
            raise ValueError(f"the {type(model.tower).__name__} image tower has no frozen prefix to cache")
        self.model = model
        self.ids = np.asarray(images.id, dtype=np.int64)
        self.paths = list(images.path)
        self.scenario_idx = model.scenario_index(list(images.scenario)).numpy()
        self.group_idx = model.group_index(list(images.group)).numpy()
        self.size = (int(image_size[0]), int(image_size[1]))
        self.plain_tf = CropTransform(self.size)
        self.view_tf = CropTransform(self.size, augment)
        self.erasing = float(augment.random_erasing)
        self.views = max(int(views), 0)
        self.seed = tuple(int(v) for v in seed)  # (training seed, round): keys the views' pixel RNG
        self.budget_bytes = float(budget_mb) * _MIB
        self.device = device
        self.batch_size = max(int(batch_size), 1)
        self.workers = int(workers)
        self.ok = np.ones(len(self.ids), dtype=bool)  # False: the crop could not be read at build time
        self.plain: torch.Tensor | None = None  # [N, C, h, w] float16
        self.augmented: torch.Tensor | None = None  # [N, views, C, h, w] float16
        self.noise: torch.Tensor | None = None  # [NOISE_MAPS, C, h, w] float32 (float16-rounded)
        self.build_cpu_s = 0.0
        with torch.no_grad():
            probe = model.frozen_prefix(torch.zeros(1, 3, *self.size, device=device))
        self.shape: tuple[int, ...] = tuple(probe.shape[1:])  # one map: C x H/8 x W/8

    # -- sizes ------------------------------------------------------------------------------
    @property
    def map_bytes(self) -> int:
        """Bytes of one stored map (float16)."""
        return int(np.prod(self.shape)) * 2

    def mb_per_1000(self, views: int | None = None) -> float:
        """MiB the maps of 1,000 crops take (plain view + ``views`` augmented, default all)."""
        v = self.views if views is None else views
        return 1000 * (1 + v) * self.map_bytes / _MIB

    def plan(self) -> tuple[bool, bool]:
        """What the budget lets this cache keep: (the plain maps, the augmented ones too)."""
        n = len(self.ids)
        plain = n * self.map_bytes <= self.budget_bytes
        return plain, plain and self.views > 0 and n * (1 + self.views) * self.map_bytes <= self.budget_bytes

    @property
    def kept_mb(self) -> float:
        n = sum(t.numel() for t in (self.plain, self.augmented) if t is not None)
        return 2 * n / _MIB

    # -- building -----------------------------------------------------------------------------
    def build(self, reporter: Reporter | None = None, stage: str = "") -> "StemCache":
        """Compute and keep what the budget allows (see the module docstring); progress events
        carry ``stage``."""
        reporter = reporter or Reporter()
        c0 = time.process_time()
        forked = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked):  # the global RNG moves as if nothing happened
            self._build(reporter, stage)
        self.build_cpu_s = time.process_time() - c0
        return self

    def _build(self, reporter: Reporter, stage: str) -> None:
        h, w = self.size
        gen = torch.Generator().manual_seed(int(np.random.default_rng(self.seed).integers(2**62)))
        noise = torch.randn(NOISE_MAPS, 3, h, w, generator=gen)
        self.noise = _fp16(self.model.frozen_prefix(noise.to(self.device))).cpu()
        n = len(self.ids)
        keep_plain, keep_views = self.plan()
        if not keep_plain:
            if n:
                reporter.log(f"stem cache: {n} crops need {n * self.map_bytes / _MIB:.0f} MiB, over data.stem_cache_mb "
                             f"({self.budget_bytes / _MIB:.0f}); the frozen stem runs on every batch instead")
            return
        try:
            self.plain = torch.empty((n, *self.shape), dtype=torch.float16)
            if keep_views:
                self.augmented = torch.empty((n, self.views, *self.shape), dtype=torch.float16)
        except RuntimeError as exc:  # could not allocate: compute on the fly, as over the budget
            self.plain = self.augmented = None
            reporter.warning(f"stem cache not kept ({' '.join(str(exc).split())[:120]}); the frozen stem runs on "
                             "every batch instead")
            return
        per = 1 + (self.views if keep_views else 0)
        ds = _AllViews(self, per - 1)
        crops = max(1, self.batch_size // per)
        loader = make_loader(ds, batch_size=crops, workers=self.workers, device=self.device)
        done = 0
        for batch in loader:
            reporter.check()
            for r in batch.failed:
                self.ok[r] = False
            if len(batch):
                x = batch.images.reshape(-1, 3, h, w).to(self.device)
                maps = self.model.frozen_prefix(x).reshape(len(batch), per, *self.shape).half().cpu()
                rows = batch.index
                self.plain[rows] = maps[:, 0]
                if keep_views:
                    self.augmented[rows] = maps[:, 1:]
            done += len(batch) + len(batch.failed)
            reporter.update(done / max(n, 1), stage=stage, step=done, steps=n,
                            message=f"frozen stem: {done}/{n} crops x {per} views")
        self.plain[~torch.from_numpy(self.ok)] = 0
        what = f"plain + {self.views} augmented views" if keep_views else "plain views only"
        if self.views and not keep_views:
            what += (f" (the augmented views, {n * self.views * self.map_bytes / _MIB:.0f} MiB more, are over "
                     f"data.stem_cache_mb {self.budget_bytes / _MIB:.0f}: computed per batch)")
        reporter.log(f"stem cache: {n} crops, {what}, {self.kept_mb:.0f} MiB")

    # -- what the stages read -------------------------------------------------------------------
    def knows(self, ids: np.ndarray) -> bool:
        """Whether every image id of ``ids`` is one of this cache's."""
        return bool((rows_of(self.ids, np.asarray(ids, dtype=np.int64)) >= 0).all())

    def plain_batches(self, ids: np.ndarray, batch_size: int) -> "_Batches":
        """Batches of the plain views of ``ids`` (all known: :meth:`knows`), in order, as
        ``Batch(prefix=True)``; ``index`` and ``failed`` are positions in ``ids``."""
        crows = rows_of(self.ids, np.asarray(ids, dtype=np.int64))
        keys = np.stack([np.arange(len(crows)), np.full(len(crows), PLAIN)], axis=1)
        return _Batches(self, crows, keys, None, None, batch_size)

    def training_batches(self, ids: np.ndarray, labels: np.ndarray, sampler, seed: int) -> "_Batches":
        """PK batches of ``sampler`` (``(index, draw)`` items, positions in ``ids``) over the fixed
        augmented views, random erasing on the map; ``index`` / ``labels`` / ``failed`` as
        :class:`CropDataset` batches give them."""
        crows = rows_of(self.ids, np.asarray(ids, dtype=np.int64))
        items = np.array(list(sampler), dtype=np.int64).reshape(-1, 2)
        specs = [self._draw(seed, int(i), int(d)) for i, d in items]
        keys = np.stack([items[:, 0], np.array([s[0] for s in specs], dtype=np.int64)], axis=1)
        erase = [s[1] for s in specs]
        return _Batches(self, crows, keys, np.asarray(labels, dtype=np.int64), erase, sampler.batch_size)

    def _draw(self, seed: int, index: int, draw: int) -> tuple[int, tuple[int, int, int, int, int] | None]:
        """A training draw: (view, erasure ``(top, left, height, width, noise map)`` or None)."""
        rng = np.random.default_rng((seed, index, draw))
        view = int(rng.integers(self.views))
        if self.erasing > 0 and rng.random() < self.erasing:
            box = erase_box(self.shape[1], self.shape[2], rng)
            if box is not None:
                return view, (*box, int(rng.integers(NOISE_MAPS)))
        return view, None

    # -- maps -----------------------------------------------------------------------------------
    def maps(self, crows: np.ndarray, views: np.ndarray, chunk: int) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """Maps (float32 ``[b, C, h, w]``) of the (cache row, view) pairs, ``chunk`` at a time, with
        a mask of those that could be read; kept ones are read, the others computed."""
        n = len(crows)
        kept = self.plain if (len(views) and views[0] == PLAIN) else self.augmented
        if kept is not None:
            for s in range(0, n, chunk):
                r = torch.as_tensor(crows[s: s + chunk])
                m = kept[r] if kept is self.plain else kept[r, torch.as_tensor(views[s: s + chunk])]
                yield m.float(), self.ok[crows[s: s + chunk]]
            return
        loader = make_loader(_ViewPixels(self, crows, views), batch_size=chunk, workers=self.workers,
                             device=self.device)
        with torch.random.fork_rng(devices=[]):  # a loader draws its workers' seed from the global RNG:
            batches = iter(loader)  # not here, so kept and computed maps leave the same RNG state behind
        for s, batch in zip(range(0, n, chunk), batches):
            size = min(chunk, n - s)
            out = torch.zeros((size, *self.shape))
            ok = np.zeros(size, dtype=bool)
            if len(batch):
                at = (batch.index - s).numpy()
                out[at] = _fp16(self.model.frozen_prefix(batch.images.to(self.device))).cpu()
                ok[at] = True
            yield out, ok

    def view_pixels(self, row: int, view: int, rgb: np.ndarray) -> torch.Tensor:
        """The pixels of view ``view`` (:data:`PLAIN` or 0..views-1) of the crop at cache row ``row``."""
        if view == PLAIN:
            return self.plain_tf(rgb)
        return self.view_tf.pixels(rgb, np.random.default_rng((*self.seed, int(self.ids[row]), int(view))))


class _Batches:
    """An epoch's batches from a :class:`StemCache` (iterable once per ``iter``)."""

    def __init__(self, cache: StemCache, crows, keys, labels, erase, batch_size: int) -> None:
        self.cache, self.crows, self.keys, self.labels, self.erase = cache, crows, keys, labels, erase
        self.batch_size = max(int(batch_size), 1)

    def __len__(self) -> int:
        return -(-len(self.keys) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        c, b = self.cache, self.batch_size
        pos, views = self.keys[:, 0], self.keys[:, 1]
        for s, (maps, ok) in zip(range(0, len(pos), b), c.maps(self.crows[pos], views, b)):
            p = pos[s: s + b]
            if self.erase is not None:
                for j, e in enumerate(self.erase[s: s + b]):
                    if e is not None:
                        top, left, eh, ew, m = e
                        maps[j, :, top: top + eh, left: left + ew] = c.noise[m, :, top: top + eh, left: left + ew]
            good = np.flatnonzero(ok)
            rows = self.crows[p[good]]
            labels = self.labels[p[good]] if self.labels is not None else np.full(len(good), -1)
            yield Batch(maps[torch.as_tensor(good)] if len(good) < len(p) else maps,
                        torch.as_tensor(p[good], dtype=torch.long),
                        torch.as_tensor(c.scenario_idx[rows], dtype=torch.long),
                        torch.as_tensor(c.group_idx[rows], dtype=torch.long),
                        torch.as_tensor(labels, dtype=torch.long),
                        [int(x) for x in p[~ok]], prefix=True)


class _AllViews(Dataset):
    """Item ``r``: the plain view and ``views`` augmented views of the crop at cache row ``r``,
    stacked ``[1 + views, 3, H, W]`` (one decode), in :class:`CropDataset`'s item layout."""

    def __init__(self, cache: StemCache, views: int) -> None:
        self.cache, self.views = cache, views

    def __len__(self) -> int:
        return len(self.cache.ids)

    def __getitem__(self, r: int):
        c = self.cache
        try:
            rgb = load_rgb(c.paths[r])
            x = torch.stack([c.view_pixels(r, v, rgb) for v in range(PLAIN, self.views)])
            ok = True
        except (BadImage, OSError, ValueError):  # vanished / truncated since ingest
            x, ok = torch.zeros(1 + self.views, 3, *c.size), False
        return x, int(r), int(c.scenario_idx[r]), int(c.group_idx[r]), -1, ok


class _ViewPixels(Dataset):
    """Item ``j``: the pixels of view ``views[j]`` of the crop at cache row ``crows[j]`` (what a
    map that is not kept is computed from)."""

    def __init__(self, cache: StemCache, crows: np.ndarray, views: np.ndarray) -> None:
        self.cache, self.crows, self.views = cache, crows, views

    def __len__(self) -> int:
        return len(self.crows)

    def __getitem__(self, j: int):
        c, r = self.cache, int(self.crows[j])
        try:
            x, ok = c.view_pixels(r, int(self.views[j]), load_rgb(c.paths[r])), True
        except (BadImage, OSError, ValueError):
            x, ok = torch.zeros(3, *c.size), False
        return x, int(j), int(c.scenario_idx[r]), int(c.group_idx[r]), -1, ok
