"""Datasets, transforms and the PK sampler used by training and extraction.

Images are decoded with :func:`itkm_engine.data.imageio.load_rgb` (read-only, every odd mode
handled).  An image that fails to decode -- it may have vanished or been truncated since ingest --
does not stop anything: the dataset yields a flagged placeholder, the collate function drops it,
and the batch carries the failed indices so the caller can record them in the workspace.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from .imageio import BadImage, load_rgb

# CLIP's normalisation (open_clip OPENAI_DATASET_MEAN/STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Augment:
    """Training augmentation (CLIP-ReID / Cluster Contrast style)."""

    flip: bool = True
    pad: int = 10
    random_erasing: float = 0.5
    grayscale: float = 0.0  # probability of a grey copy (all channels = luminance): colour-agnostic features


class CropTransform:
    """uint8 HxWx3 array -> normalised float tensor 3xHxW at ``size`` (height, width)."""

    def __init__(self, size: tuple[int, int], augment: Augment | None = None) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.augment = augment
        self.mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CLIP_STD).view(3, 1, 1)

    def __call__(self, rgb: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        a = self.augment
        if a is not None:
            rng = rng or np.random.default_rng()
        x = self.pixels(rgb, rng)
        if a is not None and a.random_erasing > 0 and rng.random() < a.random_erasing:
            x = _random_erase(x, rng)
        return x

    def pixels(self, rgb: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Resize, every pixel-level augmentation, normalisation: all but random erasing.  The
        stem cache's fixed training views are drawn through this (data/stem_cache.py), so an
        augmentation added here is among them; random erasing acts per draw on the cached map."""
        x = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)
        x = F.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False, antialias=True)[0]
        a = self.augment
        if a is not None:
            rng = rng or np.random.default_rng()
            if a.grayscale > 0 and rng.random() < a.grayscale:
                # ITU-R 601 luma, as an infrared camera's single channel would look.
                x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).expand(3, -1, -1).contiguous()
            if a.flip and rng.random() < 0.5:
                x = x.flip(-1)
            if a.pad > 0:
                p = a.pad
                x = F.pad(x[None], (p, p, p, p), mode="constant", value=0.0)[0]
                h, w = self.size
                top = int(rng.integers(0, 2 * p + 1))
                left = int(rng.integers(0, 2 * p + 1))
                x = x[:, top : top + h, left : left + w]
        return (x - self.mean) / self.std


def _random_erase(x: torch.Tensor, rng: np.random.Generator, sl=0.02, sh=0.4, r1=0.3) -> torch.Tensor:
    """Zhong et al. random erasing: a random rectangle filled with random values."""
    box = erase_box(x.shape[1], x.shape[2], rng, sl, sh, r1)
    if box is None:
        return x
    top, left, eh, ew = box
    x = x.clone()
    x[:, top : top + eh, left : left + ew] = torch.from_numpy(rng.standard_normal((3, eh, ew)).astype(np.float32))
    return x


def erase_box(h: int, w: int, rng: np.random.Generator, sl=0.02, sh=0.4, r1=0.3) -> tuple[int, int, int, int] | None:
    """Random erasing's rectangle ``(top, left, height, width)`` on an ``h x w`` grid: an area of
    ``sl..sh`` of it, aspect ``r1..1/r1`` (None when 20 tries found none that fits)."""
    area = h * w
    for _ in range(20):
        target = rng.uniform(sl, sh) * area
        aspect = math.exp(rng.uniform(math.log(r1), math.log(1 / r1)))
        eh = int(round(math.sqrt(target * aspect)))
        ew = int(round(math.sqrt(target / aspect)))
        if 0 < eh < h and 0 < ew < w:
            top = int(rng.integers(0, h - eh + 1))
            left = int(rng.integers(0, w - ew + 1))
            return top, left, eh, ew
    return None


class CropDataset(Dataset):
    """Items: ``(image, index, scenario_idx, group_idx, label, ok)``.

    ``index`` is the position in the arrays given here (the caller maps it to image ids).
    """

    def __init__(
        self,
        paths: Sequence[str],
        scenario_idx: np.ndarray,
        group_idx: np.ndarray,
        transform: CropTransform,
        labels: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        self.paths = list(paths)
        self.scenario_idx = np.asarray(scenario_idx, dtype=np.int64)
        self.group_idx = np.asarray(group_idx, dtype=np.int64)
        self.labels = (
            np.full(len(self.paths), -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        )
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        """``key`` is an index, or ``(index, draw)`` from :class:`PKSampler`.

        The augmentation RNG is seeded by (dataset seed, index, draw), so an epoch is the same
        whatever the number of loader workers and whether it runs after a resume.
        """
        i, draw = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), 0)
        rng = np.random.default_rng((self.seed, i, draw)) if self.transform.augment else None
        try:
            x = self.transform(load_rgb(self.paths[i]), rng)
            ok = True
        except (BadImage, OSError, ValueError) as exc:  # vanished / truncated since ingest
            x = torch.zeros(3, *self.transform.size)
            ok = False
            del exc
        return x, i, int(self.scenario_idx[i]), int(self.group_idx[i]), int(self.labels[i]), ok


@dataclass
class Batch:
    images: torch.Tensor
    index: torch.Tensor
    scenario_idx: torch.Tensor
    group_idx: torch.Tensor
    labels: torch.Tensor
    failed: list[int]
    #: ``images`` holds the image tower's frozen-prefix maps, not pixels (data/stem_cache.py):
    #: pass it on as ``model.forward_image(..., prefix=batch.prefix)``.
    prefix: bool = False

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return Batch(
            self.images.to(device, non_blocking=non_blocking),
            self.index.to(device, non_blocking=non_blocking),
            self.scenario_idx.to(device, non_blocking=non_blocking),
            self.group_idx.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.failed,
            self.prefix,
        )

    def __len__(self) -> int:
        return int(self.index.shape[0])


def collate(items) -> Batch:
    good = [it for it in items if it[5]]
    failed = [it[1] for it in items if not it[5]]
    if not good:
        return Batch(
            torch.zeros(0, *items[0][0].shape),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
            failed,
        )
    return Batch(
        torch.stack([it[0] for it in good]),
        torch.tensor([it[1] for it in good], dtype=torch.long),
        torch.tensor([it[2] for it in good], dtype=torch.long),
        torch.tensor([it[3] for it in good], dtype=torch.long),
        torch.tensor([it[4] for it in good], dtype=torch.long),
        failed,
    )


class PKSampler(Sampler[tuple[int, int]]):
    """P identities x K instances per batch, for a fixed number of batches.

    Labels < 0 (outliers) are never sampled.  Identities with fewer than K instances are sampled
    with replacement, as in Cluster Contrast's ``RandomMultipleGallerySampler``.

    ``pairs`` (``[M, 2]`` instance indices, e.g. Stage III's IHM pairs) makes the batches
    *pair-aware*.  IHM pairs join images of one person that sit in different clusters (an
    infrared and a visible crop), so plain PK batches almost never hold both ends and an in-batch
    pair loss never fires.  With pairs, half of the P identities are drawn among those holding a
    paired instance, each identity's first ``ceil(K/2)`` slots prefer its paired instances, and
    each of those brings one of its partners into the identity's remaining slots.  Batches keep
    their size ``P*K``; only partners with a label >= 0 and another label than their own count.

    ``decided`` (``[M, 2]`` instance indices: the operator's confirmed and rejected pairs) brings
    decided pairs into the batches for the decision loss: up to ``decided_share`` of the P
    identity slots of every batch (at least one) hold a decided pair each -- both ends, whatever
    their labels (an outlier comes with its partner), the rest of the slot filled from the two
    ends' clusters.  Without ``decided`` the batches are exactly those without the argument.
    """

    def __init__(self, labels: np.ndarray, p: int, k: int, batches: int, seed: int = 0,
                 pairs: np.ndarray | None = None, decided: np.ndarray | None = None,
                 decided_share: float = 0.25) -> None:
        self.labels = np.asarray(labels)
        self.p, self.k, self.batches, self.seed = int(p), int(k), int(batches), seed
        self.decided = (np.zeros((0, 2), np.int64) if decided is None
                        else np.asarray(decided, dtype=np.int64).reshape(-1, 2))
        self.decided_share = float(decided_share)
        valid = np.flatnonzero(self.labels >= 0)
        order = np.argsort(self.labels[valid], kind="stable")
        sorted_idx = valid[order]
        uniq, starts = np.unique(self.labels[sorted_idx], return_index=True)
        self.ids = uniq
        self.members = np.split(sorted_idx, starts[1:]) if len(uniq) else []
        self.partners: dict[int, np.ndarray] = {}
        if pairs is not None and len(pairs):
            pr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
            both = np.concatenate([pr, pr[:, ::-1]])
            la, lb = self.labels[both[:, 0]], self.labels[both[:, 1]]
            both = both[(la >= 0) & (lb >= 0) & (la != lb)]
            both = both[np.lexsort((both[:, 1], both[:, 0]))]
            if len(both):
                heads, cut = np.unique(both[:, 0], return_index=True)
                for h, tails in zip(heads, np.split(both[:, 1], cut[1:])):
                    self.partners[int(h)] = np.unique(tails)
        paired = np.array(sorted(self.partners), dtype=np.int64)
        self.paired_members = [m[np.isin(m, paired)] for m in self.members]
        self.paired_ids = np.flatnonzero([len(m) > 0 for m in self.paired_members])

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def __len__(self) -> int:
        return self.batches * self.batch_size if len(self.ids) else 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Yields ``(index, draw)``; ``draw`` numbers the sample within the epoch."""
        if not len(self.ids):
            return
        rng = np.random.default_rng(self.seed)
        p = min(self.p, len(self.ids))
        n_dec = self.decided_slots(p)
        draw = 0
        for _ in range(self.batches):
            if n_dec:
                for i in rng.choice(len(self.decided), size=n_dec, replace=False):
                    for x in self._pair_slot(rng, *self.decided[i]):
                        yield int(x), draw
                        draw += 1
            q = p - n_dec
            chosen = self._choose_identities(rng, q) if self.partners else rng.choice(len(self.ids), size=q, replace=False)
            for c in chosen:
                m = self.members[c]
                if self.partners:
                    pick = self._paired_slots(rng, c)
                else:
                    pick = rng.choice(m, size=self.k, replace=len(m) < self.k)
                for x in pick:
                    yield int(x), draw
                    draw += 1

    def decided_slots(self, p: int | None = None) -> int:
        """Identity slots per batch that hold a decided pair (0 without decided pairs)."""
        p = min(self.p, len(self.ids)) if p is None else p
        if not len(self.decided) or self.decided_share <= 0 or p < 1:
            return 0
        return int(min(len(self.decided), max(1, int(p * self.decided_share)), p))

    def _pair_slot(self, rng: np.random.Generator, a: int, b: int) -> list[int]:
        """One identity slot of K items for the decided pair ``(a, b)``: both ends first, then
        members of their clusters in turn (the ends again where they have none)."""
        pools = []
        for x in (a, b):
            lab = self.labels[x]
            pos = int(np.searchsorted(self.ids, lab)) if lab >= 0 else -1
            m = self.members[pos] if 0 <= pos < len(self.ids) and self.ids[pos] == lab else np.zeros(0, np.int64)
            m = m[(m != a) & (m != b)]
            pools.append(m if len(m) else np.array([x], np.int64))
        out = [int(a), int(b)]
        while len(out) < self.k:
            pool = pools[len(out) % 2]
            out.append(int(pool[rng.integers(len(pool))]))
        return out[: self.k]

    def _choose_identities(self, rng: np.random.Generator, p: int) -> np.ndarray:
        n_pref = min(-(-p // 2), len(self.paired_ids))
        pref = rng.choice(self.paired_ids, size=n_pref, replace=False) if n_pref else np.zeros(0, np.int64)
        rest = np.setdiff1d(np.arange(len(self.ids)), pref)
        return np.concatenate([pref, rng.choice(rest, size=p - n_pref, replace=False)]).astype(np.int64)

    def _paired_slots(self, rng: np.random.Generator, c: int) -> list[int]:
        m, pm = self.members[c], self.paired_members[c]
        n_lead = -(-self.k // 2)
        lead = list(rng.choice(pm, size=min(n_lead, len(pm)), replace=False)) if len(pm) else []
        if len(lead) < n_lead:
            lead += list(rng.choice(m, size=n_lead - len(lead), replace=len(m) < n_lead - len(lead)))
        out = [int(x) for x in lead]
        for x in lead:
            if len(out) >= self.k:
                break
            tails = self.partners.get(int(x))
            if tails is not None:
                out.append(int(tails[rng.integers(len(tails))]))
        if len(out) < self.k:
            out += [int(x) for x in rng.choice(m, size=self.k - len(out), replace=len(m) < self.k - len(out))]
        return out


def loader_workers(requested: int, n_items: int, batch_size: int) -> int:
    """Worker processes for a loader of ``n_items`` items in batches of ``batch_size``.

    Workers only help by decoding the next batches while the caller works on the current one.
    A job of a single batch has nothing to overlap, and each worker costs a fork plus ~0.1-0.3 s
    before its first batch arrives, so such a job decodes in the calling process.  Otherwise the
    request is capped at the number of batches (a worker builds whole batches) and at the cores
    this process may run on: more workers than cores only compete with each other and with the
    model, and torch warns about it.
    """
    if requested <= 0 or batch_size <= 0:
        return 0
    batches = -(-int(n_items) // int(batch_size))
    if batches <= 1:
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(int(requested), batches, cores))


def make_loader(
    dataset: CropDataset,
    *,
    batch_size: int,
    sampler: Sampler | None = None,
    shuffle: bool = False,
    workers: int = 0,
    device: torch.device | None = None,
) -> DataLoader:
    """A DataLoader with the project's collate; pinned memory when feeding a CUDA device.

    ``workers`` is an upper bound: see :func:`loader_workers`.
    """
    pin = device is not None and device.type == "cuda"
    n_items = len(sampler) if sampler is not None else len(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        num_workers=loader_workers(workers, n_items, batch_size),
        collate_fn=collate,
        pin_memory=pin,
        persistent_workers=False,
        drop_last=False,
    )
