"""The facade the app and the CLI query through: one workspace, its latest model, features,
index and identities, each computed once and cached (on disk where it is keyed by checkpoint).

Thread-safe: the app calls it from worker jobs while the GUI reads results.  Nothing here knows
about Qt.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import constraints as C
from .constraints import ConstraintError
from .review import review_queue
from .workspace import decisions as D
from .config import Config, preset
from .config_check import load_config_file
from .data.imageio import BadImage, load_rgb
from .errors import ItkmError, NothingToDoError
from .evaluation import evaluate_features
from .features import FeatureCache, FeatureSet, embed, extract_features, record_failed_images
from .identities import compute_identities, round_links, summarize
from .index import FeatureIndex, k_reciprocal_rerank
from .model.loading import load_model, model_key, resolve_device
from .progress import Reporter
from .projection import cached_projection, load_cached_projection
from .records import IdentityTable, rows_of
from .vocabulary import CONFIG_FILE
from .workspace import Workspace

#: Candidates per query that k-reciprocal re-ranking re-orders (at least 4 x top-k).
RERANK_TOP_N = 200


@dataclass(frozen=True)
class QueryFilter:
    scenarios: frozenset[str] | None = None
    groups: frozenset[str] | None = None
    cameras: frozenset[str] | None = None
    exclude_same_camera: bool = False


@dataclass(frozen=True)
class Match:
    image_id: int
    path: str
    camera: str
    scenario: str
    group: str
    similarity: float
    person_id: int
    identity: int


def image_id_of(text) -> int | None:
    """The number ``text`` spells when it can be an image (or identity) id: plain ASCII digits,
    at most 18 of them (a database integer); ``None`` otherwise -- ``'²'`` is a digit to
    ``str.isdigit`` but no number, and ``99999999999999999999`` fits no id."""
    text = str(text)
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > 18:
        return None
    return int(text)


def workspace_config(ws: Workspace, fallback: str = "quick") -> Config:
    """The workspace's ``config.toml`` (written by training), else a preset."""
    path = ws.path / CONFIG_FILE
    return load_config_file(path) if path.exists() else preset(fallback)


class Session:
    def __init__(self, ws: Workspace, cfg: Config | None = None, device: str | torch.device = "auto") -> None:
        self.ws = ws
        self.cfg = cfg or workspace_config(ws)
        self.device = resolve_device(device if device != "auto" else self.cfg.device)
        self._lock = threading.RLock()
        self.refresh()

    @classmethod
    def open(cls, path, *, readonly: bool = False, cfg: Config | None = None, device="auto") -> "Session":
        return cls(Workspace.open(path, readonly=readonly), cfg, device)

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def refresh(self) -> None:
        """Forget everything derived from the workspace's state (after ingest or training)."""
        with self._lock:
            self._images = None
            self._model = None
            self._key = None
            self._features: FeatureSet | None = None
            self._index = None
            self._identities: IdentityTable | None = None
            self._unsaved_identities: IdentityTable | None = None
            self._projection = None
            self._path_rows = None

    # -- basics --------------------------------------------------------------------------------
    def images(self):
        with self._lock:
            if self._images is None:
                self._images = self.ws.images()
            return self._images

    def model(self):
        with self._lock:
            if self._model is None:
                self._model, self._key = load_model(self.ws, self.cfg, self.device)
                self._model.eval()
            return self._model

    def checkpoint_key(self) -> str:
        """The current model's feature-cache key.  Does not build the model: the app asks for
        the key (are the caches complete?) in its own process, where loading a model would hold
        the interpreter lock for a second beside the window."""
        with self._lock:
            if self._key is None:
                self._key = model_key(self.ws, self.cfg)
            return self._key

    def features(self, reporter: Reporter | None = None) -> FeatureSet:
        """Features of every usable image under the current model (cached on disk)."""
        with self._lock:
            if self._features is None:
                images = self.images()
                if len(images) == 0:
                    raise NothingToDoError("the workspace has no images yet: add camera folders first")
                key = self.checkpoint_key()
                with self._storing("storing features", complete=lambda: self._features_stored(key, images)) as store:
                    self._features = extract_features(
                        self.model, images, cache_dir=self.ws.features_dir / key, key=key, device=self.device,
                        batch_size=self.cfg.data.extract_batch_size, workers=self.cfg.data.workers,
                        amp=self.cfg.amp, reporter=reporter, write_cache=store,
                    )
                    if self._features.failed is not None and len(self._features.failed) and store:
                        record_failed_images(self.ws, self._features.failed, images, reporter)
                        self._images = None
            return self._features

    def _storing(self, what: str, complete=None):
        """A context giving whether what this read computes may be stored now: the writer lock is
        taken for it when the workspace is writable and no other process writes it (the app holds
        the lock only while it writes: ``Connection.writing_if_free``).  ``complete()``: whether
        everything is stored already (then no lock is taken)."""
        if self.ws.readonly or (self.ws.lock_on_demand and complete is not None and complete()):
            return contextlib.nullcontext(not self.ws.readonly)
        return self.ws.writing_if_free(what)

    def _features_stored(self, key: str, images) -> bool:
        have = FeatureCache(self.ws.features_dir / key).ids()
        return not len(np.setdiff1d(np.asarray(images.id, np.int64), have))

    def index(self):
        with self._lock:
            if self._index is None:
                self._index = FeatureIndex.build(self.features().feats, exact_limit=self.cfg.inference.exact_search_limit)
            return self._index

    # -- queries -------------------------------------------------------------------------------
    def _allowed(self, filters: QueryFilter | None, query_camera: str | None) -> np.ndarray | None:
        if filters is None:
            return None
        fs, images = self.features(), self.images()
        rows = images.index_of(fs.ids)
        ok = np.ones(len(fs.ids), dtype=bool)
        if filters.scenarios:
            ok &= np.isin(images.scenario[rows], list(filters.scenarios))
        if filters.groups:
            ok &= np.isin(images.group[rows], list(filters.groups))
        if filters.cameras:
            ok &= np.isin(images.camera[rows], list(filters.cameras))
        if filters.exclude_same_camera and query_camera is not None:
            ok &= images.camera[rows] != query_camera
        return ok

    def _rank(self, q: np.ndarray, k: int, allowed: np.ndarray | None, exclude_row: int | None,
              space: str = "feats") -> list[tuple[int, float]]:
        """Top-k rows by cosine to ``q`` among the allowed rows.  Unfiltered retrieval-space
        queries over large galleries go through the (approximate) faiss index; everything else
        is one matrix-vector product, which is exact and fast enough for a filtered subset."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ItkmError(f"the number of results must be 1 or more, got {k!r}")
        fs = self.features()
        n = len(fs.ids)
        if space == "feats" and allowed is None and n > self.cfg.inference.exact_search_limit:
            sims, idx = self.index().search(q[None].astype(np.float32), min(k + 1, n))
            return [(int(i), float(s)) for s, i in zip(sims[0], idx[0]) if i >= 0 and i != exclude_row][:k]
        sims = (fs.feats if space == "feats" else fs.proj) @ q
        if allowed is not None:
            sims = np.where(allowed, sims, -np.inf)
        if exclude_row is not None:
            sims[exclude_row] = -np.inf
        kk = min(k, n)
        top = np.argpartition(-sims, kk - 1)[:kk] if kk < n else np.arange(n)
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(int(r), float(sims[r])) for r in top if np.isfinite(sims[r])]

    def _matches(self, ranked: list[tuple[int, float]]) -> list[Match]:
        fs, images = self.features(), self.images()
        ident = self._identity_lookup()
        out = []
        for r, s in ranked:
            img_id = int(fs.ids[r])
            row = int(images.index_of([img_id])[0])
            out.append(Match(img_id, images.path[row], str(images.camera[row]), str(images.scenario[row]),
                             str(images.group[row]), s, int(images.person_id[row]), ident.get(img_id, -1)))
        return out

    def _identity_lookup(self) -> dict[int, int]:
        t = self._identities
        if t is None:
            return {}
        t = self._obeying_decisions(t)
        return dict(zip(t.image_id.tolist(), t.identity.tolist()))

    def query_image(self, image_id: int, k: int = 50, filters: QueryFilter | None = None,
                    rerank: bool = False) -> list[Match]:
        """Ranked matches for an image of the workspace (the query itself excluded)."""
        fs, images = self.features(), self.images()
        r = int(fs.rows_for(np.array([image_id]))[0])
        if r < 0:
            raise ItkmError(f"image {image_id} has no features (not in the workspace, or unreadable)")
        cam = str(images.camera[images.index_of([image_id])[0]])
        if rerank:
            return self._matches(self._rerank(r, k, self._allowed(filters, cam)))
        return self._matches(self._rank(fs.feats[r], k, self._allowed(filters, cam), r))

    def _rerank(self, r: int, k: int, allowed: np.ndarray | None) -> list[tuple[int, float]]:
        """k-reciprocal re-ranking of row ``r``'s matches among the allowed rows only: the filter
        picks the gallery first, so "other cameras" still fills the top-k (re-ranking the
        unfiltered top-N and filtering afterwards left one result when the query's own camera
        filled the candidates).  Scores are ``1 - re-ranked distance``, not cosines."""
        fs = self.features()
        if allowed is None:
            sims, idx = k_reciprocal_rerank(fs.feats[r : r + 1], fs.feats, top_n=max(RERANK_TOP_N, 4 * k),
                                            index=self.index())
            rows = np.arange(len(fs.ids))
        else:
            rows = np.flatnonzero(allowed)
            rows = rows[rows != r]
            if not len(rows):
                return []
            sims, idx = k_reciprocal_rerank(fs.feats[r : r + 1], fs.feats[rows], top_n=max(RERANK_TOP_N, 4 * k))
        return [(int(rows[i]), float(s)) for s, i in zip(sims[0], idx[0]) if i >= 0 and rows[i] != r][:k]

    def embed_file(self, path: str | Path, scenario: str | None = None, group: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Retrieval and projected feature of an outside image (read-only)."""
        model = self.model()
        if scenario is None or group is None:
            scenario, group = self._known_side(path) or self._guess_side(path)
        ok, feats, proj = embed(model, [str(path)], [scenario], [group], device=self.device, batch_size=1,
                                amp=self.cfg.amp)
        if not len(ok):
            shown = str(path) if len(str(path)) <= 200 else str(path)[:197] + "..."
            try:  # the loader only says "failed"; decode once more for the reason to show
                load_rgb(path)
            except BadImage as exc:
                raise ItkmError(f"cannot read {shown}: {exc.reason}") from None
            raise ItkmError(f"cannot read {shown}: not an image, or damaged")
        return feats[0], proj[0]

    def _known_row(self, path) -> int | None:
        """Row in :meth:`images` of ``path`` when the file is one of the workspace's images."""
        images = self.images()
        with self._lock:
            if getattr(self, "_path_rows", None) is None or len(self._path_rows) != len(images):
                self._path_rows = {p: i for i, p in enumerate(images.path)}
        r = None
        if os.path.exists(path):  # False for any OSError (a name too long to be a file, ...)
            with contextlib.suppress(OSError, RuntimeError):
                r = self._path_rows.get(str(Path(path).resolve()))
        if r is None:
            r = self._path_rows.get(str(path))
        return r

    def _known_side(self, path) -> tuple[str, str] | None:
        """Scenario and group of ``path``'s camera when the file is one of the workspace's images."""
        images = self.images()
        r = self._known_row(path)
        return (str(images.scenario[r]), str(images.group[r])) if r is not None else None

    def _guess_side(self, path) -> tuple[str, str]:
        from .data.guess import guess_camera  # loads cv2 (itkm_engine.cv): only for an outside image

        model = self.model()
        g = guess_camera([str(path)], sample=1)
        if g.infrared and "visible-infrared" in model.scenarios:
            return "visible-infrared", "infrared" if "infrared" in model.groups else model.groups[0]
        images = self.images()
        vals, counts = np.unique(images.scenario, return_counts=True)
        sc = str(vals[np.argmax(counts)]) if len(vals) else model.scenarios[0]
        m = images.scenario == sc
        gv, gc = np.unique(images.group[m], return_counts=True)
        return sc, str(gv[np.argmax(gc)]) if len(gv) else model.groups[0]

    def query_file(self, path, k: int = 50, filters: QueryFilter | None = None, reporter=None) -> list[Match]:
        feat, _ = self.embed_file(path)
        # an ingested image queried by its path has a camera: "other cameras" must leave it out
        r = self._known_row(path)
        cam = str(self.images().camera[r]) if r is not None else None
        return self._matches(self._rank(feat, k, self._allowed(filters, cam), None))

    def query_text(self, text: str, k: int = 50, filters: QueryFilter | None = None) -> list[Match]:
        """Rank the gallery by a description, through the model's CLIP text tower."""
        text = (text or "").strip()
        if not text:
            raise ItkmError("type a description first, e.g. 'a person in a red jacket'")
        model = self.model()
        with torch.no_grad():
            t = model.encode_text([text]).float().cpu().numpy()[0]
        return self._matches(self._rank(t, k, self._allowed(filters, None), None, space="proj"))

    # -- identities, projection, evaluation ----------------------------------------------------
    def identities(self, reporter: Reporter | None = None) -> IdentityTable:
        with self._lock:
            if self._identities is None:
                key = self.checkpoint_key()
                stored = self.ws.identities(checkpoint=key)
                if stored is not None and len(stored):
                    self._identities = stored
                else:
                    fs = self.features(reporter=(reporter.child(0.0, 0.5) if reporter else None))
                    inf, c = self.cfg.inference, self.cfg.cluster
                    table = compute_identities(
                        fs.ids, fs.feats, k1=c.k1, k2=c.k2, eps=inf.identity_eps, min_samples=inf.identity_min_samples,
                        checkpoint=key, links=round_links(self.ws, fs.ids),
                        reporter=reporter.child(0.5, 1.0) if reporter else None,
                    )
                    with self._storing("storing identities") as store:
                        if store:
                            self.ws.save_identities(key, table.image_id, table.identity, table.confidence)
                        else:
                            self._unsaved_identities = table
                    self._identities = table
            return self._obeying_decisions(self._identities)

    def unsaved_identities(self) -> IdentityTable | None:
        """The identities a read-only session computed in memory because the workspace had none
        stored for its model (``None`` otherwise): a writer may keep them with
        ``ws.save_identities(table.checkpoint, ...)`` so the next read does not compute them again."""
        return self._unsaved_identities

    # -- the operator's decisions (itkm_engine/workspace/decisions.py, constraints.py, review.py) --
    def _obeying_decisions(self, table: IdentityTable) -> IdentityTable:
        """``table`` with must/cannot-links enforced (cached per decision revision)."""
        rev = (id(table), table.checkpoint, D.revision(self.ws))
        cached = getattr(self, "_decided", None)
        if cached is not None and cached[0] == rev and cached[2] is table:
            return cached[1]
        cons, out = D.load_constraints(self.ws), table
        if len(cons):
            fs = self.features()
            rows = rows_of(fs.ids, table.image_id)
            feats = fs.feats[rows] if (rows >= 0).all() else None
            out = IdentityTable(table.checkpoint, table.image_id,
                                C.enforce_on_labels(table.identity, table.image_id, cons, feats), table.confidence)
        self._decided = (rev, out, table)
        return out

    def resolve_image(self, token) -> int:
        """Image id of ``token``: an id, or the path (absolute or relative to its source) of an image."""
        images = self.images()
        text = str(token)
        number = image_id_of(text)
        if number is not None and images.index_of([number])[0] >= 0:
            return number
        cache = getattr(self, "_token_rows", None)
        if cache is None or cache[0] is not images:
            rows: dict[str, int] = {}
            for i, (p, r) in enumerate(zip(images.path, images.relpath)):
                rows.setdefault(str(p), i)
                rows.setdefault(str(r), i)
            self._token_rows = cache = (images, rows)
        cand = [text, str(Path(text).expanduser().absolute())]
        with contextlib.suppress(OSError):
            cand.append(str(Path(text).expanduser().resolve()))
        for c in cand:
            if c in cache[1]:
                return int(images.id[cache[1][c]])
        shown = repr(text if len(text) <= 80 else text[:77] + "...")
        raise ConstraintError(f"{shown} is not an image of this workspace: give an image id or the path of an ingested image")

    def constraints(self):
        return D.load_constraints(self.ws)

    def confirm(self, a, b) -> int:
        """Same person: a must-link between two images (ids or paths).  Returns the undo step."""
        return self.confirm_pairs([(a, b)])

    def reject(self, a, b) -> int:
        """Not the same person: a cannot-link.  Returns the undo step."""
        return self.reject_pairs([(a, b)])

    def confirm_pairs(self, pairs) -> int:
        return D.confirm(self.ws, [(self.resolve_image(a), self.resolve_image(b)) for a, b in pairs])

    def reject_pairs(self, pairs) -> int:
        return D.reject(self.ws, [(self.resolve_image(a), self.resolve_image(b)) for a, b in pairs])

    def undo(self) -> int | None:
        return D.undo(self.ws)

    def redo(self) -> int | None:
        return D.redo(self.ws)

    def _identity_members(self, identity: int) -> tuple[np.ndarray, np.ndarray]:
        table = self.identities()
        ids = table.image_id[table.identity == int(identity)]
        if not len(ids):
            raise ConstraintError(f"there is no identity {identity}: list them with 'itkm identities WS'")
        return ids, self._group_keys(ids)

    def _group_keys(self, image_ids) -> np.ndarray:
        images = self.images()
        return np.asarray(images.group_key(), object)[images.index_of(image_ids)]

    def merge_identities(self, x: int, y: int, *more: int) -> int:
        """Identities ``x``, ``y`` (and ``more``) are one person (must-links, one undo step)."""
        wanted = [int(i) for i in (x, y, *more)]
        if len(set(wanted)) != len(wanted):
            raise ConstraintError(f"an identity was given twice ({wanted}): merge different identities")
        return D.confirm(self.ws, C.merge_pairs([self._identity_members(i) for i in wanted]))

    def split_identity(self, image_ids) -> int:
        """The given sightings (ids or paths, all of one identity) become a new identity."""
        moved = np.unique([self.resolve_image(t) for t in image_ids]).astype(np.int64)
        table = self.identities()
        rows = rows_of(table.image_id, moved)
        if (rows < 0).any():
            raise ConstraintError(
                f"image(s) {', '.join(map(str, moved[rows < 0][:5].tolist()))} are in no identity yet (added after the "
                "last training round, or unreadable then); train a round first, or confirm/reject them one by one")
        ident = table.identity[rows]
        if len(set(ident.tolist())) != 1:
            raise ConstraintError("the sightings to split off belong to different identities: pick them from one")
        members, _ = self._identity_members(int(ident[0]))
        rest = np.setdiff1d(members, moved)
        return D.record_split(self.ws, moved, rest, self._group_keys(moved), self._group_keys(rest))

    def name_identity(self, identity: int, name: str, note: str = "") -> int:
        """Name and note an identity (anchored to its images, so it survives re-clustering)."""
        ids, _ = self._identity_members(identity)
        return D.name_identity(self.ws, ids, name, note)

    def identity_names(self) -> dict[int, tuple[str, str]]:
        """``{identity: (name, note)}`` for the current identities."""
        table = self.identities()
        return D.identity_names(self.ws, table.image_id, table.identity)

    def confirmed_image_ids(self) -> set[int]:
        """Images that are an end of an active must-link (the operator confirmed them)."""
        return {int(i) for i in np.unique(self.constraints().must)}

    def review_queue(self, n: int = 100):
        """Pairs to review, nearest the decision boundary first, cross-scenario first."""
        return review_queue(self, n)

    def identity_summary(self, reporter: Reporter | None = None):
        return summarize(self.identities(reporter), self.images())

    def projection(self, reporter: Reporter | None = None, *, compute: bool = True) -> np.ndarray | None:
        """2-D UMAP of the features (rows follow ``features().ids``), cached on disk per checkpoint.

        ``compute=False``: only the cached layout (``None`` when there is none) -- no UMAP import.
        A read-only workspace reads the cache too (it only never writes it)."""
        with self._lock:
            if self._projection is None:
                fs = self.features(reporter=reporter.child(0.0, 0.3) if reporter else None)
                self._projection = load_cached_projection(self.ws.cache_dir, self.checkpoint_key(), len(fs.ids),
                                                          ids=fs.ids)
            if self._projection is None and compute:
                fs = self.features()
                with self._storing("storing the 2-D map") as store:
                    self._projection = cached_projection(
                        self.ws.cache_dir if store else None, self.checkpoint_key(), fs.feats,
                        reporter=reporter.child(0.3, 1.0) if reporter else None, ids=fs.ids,
                    )
            return self._projection

    def evaluate(self, reporter: Reporter | None = None) -> dict[str, dict]:
        """``evaluation.evaluate_features``: {"headline": ..., "protocols": ...}, or {} without labels."""
        fs = self.features(reporter=reporter.child(0.0, 0.5) if reporter else None)
        images = self.images().subset(self.images().index_of(fs.ids))
        sysu = [src.id for src in self.ws.sources() if src.layout == "sysu"]
        scores = evaluate_features(fs.feats, images, sysu_sources=sysu,
                                   reporter=reporter.child(0.5, 1.0) if reporter else None)
        if scores:
            with self._storing("storing an evaluation") as store:
                if store:
                    self.ws.save_metrics("evaluation", None, self.checkpoint_key(), scores)
        return scores
