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
from .camera_norm import camera_centred, centre_outside
from .constraints import ConstraintError
from .review import answer_selection, review_queue
from .workspace import decisions as D
from .config import Config, preset
from .config_check import load_config_file
from .data.imageio import BadImage, load_rgb
from .decision_ranking import decision_ranking
from .errors import ItkmError, NothingToDoError
from .evaluation import evaluate_features
from .features import FeatureCache, FeatureSet, embed, extract_features, record_failed_images
from .identities import compute_identities, join_provisional, round_links, spans_sites, summarize
from .identity_ids import assign_ids, separate_split_offs
from .workspace import identity_store
from .index import FeatureIndex, k_reciprocal_rerank
from .model.loading import load_model, model_key, resolve_device
from .progress import Reporter
from .projection import cached_projection, load_cached_projection
from .records import IdentityTable, rows_of
from .text_search import TextSearchUnavailable, unavailable_reason, workspace_reason
from .vocabulary import CONFIG_FILE, DEFAULT_SITE, has_low_res_flag
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
    decision: str | None = None  # "confirmed" / "rejected": the operator's answer about this match and the query


def image_id_of(text) -> int | None:
    """The number ``text`` spells when it can be an image (or identity) id: plain ASCII digits,
    at most 18 of them (a database integer); ``None`` otherwise -- ``'²'`` is a digit to
    ``str.isdigit`` but no number, and ``99999999999999999999`` fits no id."""
    text = str(text)
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > 18:
        return None
    return int(text)


def _within_sites(cons, ids: np.ndarray, sites: np.ndarray):
    """``cons`` without the must-links between images of two sites (people are never shared across
    sites: such a decision, recorded before confirms across sites were refused, is not obeyed)."""
    if not len(cons.must):
        return cons
    r = rows_of(ids, cons.must)
    keep = ~((r >= 0).all(axis=1) & (sites[np.maximum(r[:, 0], 0)] != sites[np.maximum(r[:, 1], 0)]))
    return C.Constraints(cons.must[keep], cons.cannot)


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
            self._ranking: FeatureSet | None = None
            self._index = None
            self._identities: IdentityTable | None = None
            self._unsaved_identities: IdentityTable | None = None
            self._unsaved_stable = None
            self._stable_cache = None
            self._unassigned: dict[str, int] = {}
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

    def ranking(self, reporter: Reporter | None = None) -> FeatureSet:
        """The features every image-to-image ranking scores with -- the gallery, re-ranking, the
        review queue, ``itkm evaluate`` and the benchmarks: :meth:`features` in the ranking space
        (:meth:`ranking_space`).  Same rows and ids as :meth:`features`; what re-orders a ranking
        afterwards (the operator's decisions) works on its scores, whatever space they came from."""
        with self._lock:
            if self._ranking is None:
                fs = self.features(reporter)
                feats = self.ranking_space(fs.feats, fs.ids)
                self._ranking = fs if feats is fs.feats else FeatureSet(fs.ids, feats, fs.proj, fs.key, fs.failed)
            return self._ranking

    def ranking_space(self, feats: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """``feats`` (rows = the images ``ids``) as ranking compares them: each camera's mean
        feature subtracted when ``inference.camera_centre`` (:func:`camera_norm.camera_centred`),
        else as they are."""
        if not self.cfg.inference.camera_centre or not len(ids):
            return feats
        images = self.images()
        return camera_centred(feats, np.asarray(images.camera)[images.index_of(ids)])

    def index(self):
        with self._lock:
            if self._index is None:
                self._index = FeatureIndex.build(self.ranking().feats, exact_limit=self.cfg.inference.exact_search_limit)
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
              space: str = "feats", query_id: int | None = None) -> list[tuple[int, float]]:
        """Top-k rows by cosine to ``q`` among the allowed rows, obeying the decisions
        (:meth:`_top`).  Unfiltered retrieval-space queries over large galleries go through the
        (approximate) faiss index; everything else is one matrix-vector product, which is exact
        and fast enough for a filtered subset."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ItkmError(f"the number of results must be 1 or more, got {k!r}")
        fs = self.ranking()
        n = len(fs.ids)
        if space == "feats" and allowed is None and n > self.cfg.inference.exact_search_limit:
            sims, idx = self.index().search(q[None].astype(np.float32), min(k + 1, n))
            scores = np.full(n, -np.inf)
            ok = idx[0] >= 0
            scores[idx[0][ok]] = sims[0][ok]
            decided = np.flatnonzero(self._closure().component_of(fs.ids) >= 0)
            scores[decided] = fs.feats[decided] @ q  # exact, so decisions can group and lift them
            return self._top(scores, k, allowed, exclude_row, query_id)
        sims = (fs.feats if space == "feats" else fs.proj) @ q
        return self._top(sims, k, allowed, exclude_row, query_id)

    def _closure(self):
        """The decisions' closure (cached per decision revision)."""
        rev = D.revision(self.ws)
        cached = getattr(self, "_closure_cache", None)
        if cached is None or cached[0] != rev:
            cached = self._closure_cache = (rev, D.load_constraints(self.ws).closure)
        return cached[1]

    def _top(self, scores: np.ndarray, k: int, allowed: np.ndarray | None, exclude_row: int | None,
             query_id: int | None) -> list[tuple[int, float]]:
        """THE place every ranking of the session ends: ``scores`` (one per feature row, ``-inf``
        where there is none) made to obey the operator's decisions
        (:func:`~itkm_engine.decision_ranking.decision_ranking`: confirmed images grouped,
        confirmed to the top, rejected to the bottom), then the filter, then the top ``k``."""
        fs = self.features()
        key, shown = decision_ranking(scores, fs.ids, self._closure(), query_id)
        if allowed is not None:
            key = np.where(allowed, key, -np.inf)
        if exclude_row is not None:
            key[exclude_row] = -np.inf
        n = len(key)
        kk = min(k, n)
        top = np.argpartition(-key, kk - 1)[:kk] if kk < n else np.arange(n)
        top = top[np.argsort(-key[top], kind="stable")]
        return [(int(r), float(shown[r])) for r in top if np.isfinite(key[r])]

    def _matches(self, ranked: list[tuple[int, float]], query_id: int | None = None) -> list[Match]:
        fs, images = self.features(), self.images()
        ident = self._identity_lookup()
        cl = self._closure()
        qc = int(cl.component_of([query_id])[0]) if query_id is not None else -1
        apart = set(cl.banned_with(qc).tolist()) if qc >= 0 else set()
        out = []
        for r, s in ranked:
            img_id = int(fs.ids[r])
            row = int(images.index_of([img_id])[0])
            c = int(cl.component_of([img_id])[0]) if qc >= 0 else -1
            decision = None if c < 0 else "confirmed" if c == qc else "rejected" if c in apart else None
            out.append(Match(img_id, images.path[row], str(images.camera[row]), str(images.scenario[row]),
                             str(images.group[row]), s, int(images.person_id[row]), ident.get(img_id, -1),
                             decision))
        return out

    def _identity_lookup(self) -> dict[int, int]:
        if self._identities is None:
            return {}
        t = self.identities()
        return dict(zip(t.image_id.tolist(), t.identity.tolist()))

    def query_image(self, image_id: int, k: int = 50, filters: QueryFilter | None = None,
                    rerank: bool = False) -> list[Match]:
        """Ranked matches for an image of the workspace (the query itself excluded)."""
        fs, images = self.ranking(), self.images()
        r = int(fs.rows_for(np.array([image_id]))[0])
        if r < 0:
            raise ItkmError(f"image {image_id} has no features (not in the workspace, or unreadable)")
        cam = str(images.camera[images.index_of([image_id])[0]])
        if rerank:
            return self._matches(self._rerank(r, k, self._allowed(filters, cam)), image_id)
        return self._matches(self._rank(fs.feats[r], k, self._allowed(filters, cam), r, query_id=image_id), image_id)

    def _rerank(self, r: int, k: int, allowed: np.ndarray | None) -> list[tuple[int, float]]:
        """k-reciprocal re-ranking of row ``r``'s matches among the allowed rows only: the filter
        picks the gallery first, so "other cameras" still fills the top-k (re-ranking the
        unfiltered top-N and filtering afterwards left one result when the query's own camera
        filled the candidates).  Scores are ``1 - re-ranked distance``, not cosines."""
        fs = self.ranking()
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
        scores = np.full(len(fs.ids), -np.inf)
        ok = idx[0] >= 0
        scores[rows[idx[0][ok]]] = sims[0][ok]
        return self._top(scores, k, allowed, r, int(fs.ids[r]))

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

    def query_file(self, path, k: int = 50, filters: QueryFilter | None = None, reporter=None,
                   rerank: bool = False) -> list[Match]:
        """Matches for an image file.  ``rerank``: only for a file of the workspace (re-ranking
        compares the query's neighbourhood with theirs: an outside file has none stored)."""
        if rerank:
            r = self._known_row(path)
            if r is None:
                raise ItkmError(f"re-ranking needs a query among the workspace's images (an image id or the path "
                                f"of an ingested file); {path} is not one of them: leave out --rerank")
            return self.query_image(int(self.images().id[r]), k=k, filters=filters, rerank=True)
        feat, _ = self.embed_file(path)
        # an ingested image queried by its path has a camera: "other cameras" must leave it out
        r = self._known_row(path)
        cam = str(self.images().camera[r]) if r is not None else None
        if self.cfg.inference.camera_centre:  # into the ranking space: minus its camera's mean
            fs, images = self.features(), self.images()
            feat = centre_outside(feat, fs.feats, np.asarray(images.camera)[images.index_of(fs.ids)], cam)
        qid = int(self.images().id[r]) if r is not None else None
        return self._matches(self._rank(feat, k, self._allowed(filters, cam), None, query_id=qid), qid)

    def text_search_unavailable(self) -> str | None:
        """``None`` when the current model can search by description, else the one sentence that
        says why not and how to get it (``itkm_engine/text_search.py``).  Reads the rounds only."""
        return workspace_reason(self.ws.rounds(), self.cfg)

    def query_text(self, text: str, k: int = 50, filters: QueryFilter | None = None) -> list[Match]:
        """Rank the gallery by a description, through the model's CLIP text tower -- only when that
        tower has CLIP's pretrained weights (else :class:`TextSearchUnavailable`)."""
        reason = self.text_search_unavailable()
        if reason is not None:
            raise TextSearchUnavailable(reason)
        text = (text or "").strip()
        if not text:
            raise ItkmError("type a description first, e.g. 'a person in a red jacket'")
        model = self.model()
        if not getattr(model, "text_pretrained", False):  # the checkpoint's own record wins
            raise TextSearchUnavailable(unavailable_reason({}, None) or "")
        with torch.no_grad():
            t = model.encode_text([text]).float().cpu().numpy()[0]
        return self._matches(self._rank(t, k, self._allowed(filters, None), None, space="proj"))

    # -- identities, projection, evaluation ----------------------------------------------------
    def identities(self, reporter: Reporter | None = None) -> IdentityTable:
        """Every image's identity under the current model and the operator's decisions, as
        *stable ids* (:mod:`itkm_engine.identity_ids`, stored by
        :mod:`itkm_engine.workspace.identity_store`): an id keeps naming the same people across
        decisions and rounds, and is never reused.  Images ingested after the identities were
        computed join the nearest identity of their site at once (``provisional``)."""
        with self._lock:
            return self._stable(self._clustered(reporter))

    def _sites(self, image_ids) -> np.ndarray:
        """The site of each image (that of the source it was ingested from)."""
        images = self.images()
        site_of = {src.id: src.site for src in self.ws.sources()}
        src = np.asarray(images.source_id)[images.index_of(np.asarray(image_ids, np.int64))]
        uniq, inv = np.unique(src, return_inverse=True)
        names = np.array([site_of.get(int(u), DEFAULT_SITE) for u in uniq], object)
        return names[inv.reshape(-1)] if len(uniq) else np.zeros(0, object)

    def _clustered(self, reporter: Reporter | None = None) -> IdentityTable:
        """The clustering of the current model's features, each site on its own (stored per
        checkpoint; one stored before identities were clustered per site is computed again)."""
        if self._identities is None:
            key = self.checkpoint_key()
            stored = self.ws.identities(checkpoint=key)
            if stored is not None and len(stored) and not spans_sites(stored, self._sites(stored.image_id)):
                self._identities = stored
            else:
                fs = self.features(reporter=(reporter.child(0.0, 0.5) if reporter else None))
                inf, c = self.cfg.inference, self.cfg.cluster
                table = compute_identities(
                    fs.ids, fs.feats, k1=c.k1, k2=c.k2, eps=inf.identity_eps, min_samples=inf.identity_min_samples,
                    checkpoint=key, links=round_links(self.ws, fs.ids), sites=self._sites(fs.ids),
                    reporter=reporter.child(0.5, 1.0) if reporter else None,
                )
                with self._storing("storing identities") as store:
                    if store:
                        self.ws.save_identities(key, table.image_id, table.identity, table.confidence)
                    else:
                        self._unsaved_identities = table
                self._identities = table
        return self._identities

    def _stable(self, raw: IdentityTable) -> IdentityTable:
        """``raw`` completed with the images that came since (provisional), made to obey the
        decisions, with stable ids (cached per decision revision)."""
        rev = (id(raw), D.revision(self.ws))
        cached = self._stable_cache
        if cached is not None and cached[0] == rev:
            return cached[1]
        fs, images = self.features(), self.images()
        rows = rows_of(fs.ids, raw.image_id)
        known = rows >= 0  # an image that has no features any more (unreadable since) is left out
        ids, labels, conf = raw.image_id[known], raw.identity[known], raw.confidence[known]
        provisional = np.zeros(len(ids), bool)
        unassigned: dict[str, int] = {}
        extra = np.setdiff1d(fs.ids, ids)
        if len(extra):
            r_old, r_new = rows[known], rows_of(fs.ids, extra)
            lab_new, conf_new = join_provisional(ids, labels, fs.feats[r_old], self._sites(ids),
                                                 fs.feats[r_new], self._sites(extra))
            ok = lab_new >= 0
            if (~ok).any():
                unassigned["ingested at a site no round has trained on yet: train a round to find its identities"] = \
                    int((~ok).sum())
            ids = np.concatenate([ids, extra[ok]])
            labels = np.concatenate([labels, lab_new[ok]])
            conf = np.concatenate([conf, conf_new[ok]]).astype(np.float32)
            provisional = np.concatenate([provisional, np.ones(int(ok.sum()), bool)])
            order = np.argsort(ids)
            ids, labels, conf, provisional = ids[order], labels[order], conf[order], provisional[order]
        unread = int(np.setdiff1d(images.id, fs.ids).size)
        if unread:
            unassigned["could not be read (no features)"] = unread
        cons = D.load_constraints(self.ws)
        sites = self._sites(ids)
        if len(cons):
            cons = _within_sites(cons, ids, sites)
            feats = fs.feats[rows_of(fs.ids, ids)]
            labels = C.enforce_on_labels(labels, ids, cons, feats)
        offs = identity_store.split_offs(self.ws)
        if offs:
            labels = separate_split_offs(labels, ids, offs, cons.must)
        stable = self._settle(raw.checkpoint, ids, labels, cons)
        table = IdentityTable(raw.checkpoint, ids, stable, conf, provisional)
        self._unassigned = unassigned
        self._stable_cache = (rev, table)
        return table

    def _settle(self, checkpoint, ids: np.ndarray, labels: np.ndarray, cons, ws: Workspace | None = None) -> np.ndarray:
        """Stable ids for the clusters ``labels`` (``identity_store.settle``: the assignment in effect,
        an undone or redone one, or a new one matched against the one in effect).  A read-only
        session computes them in memory and remembers what to store (:meth:`keep_identities`)."""
        ws = self.ws if ws is None else ws
        batches = identity_store.active_batches(ws)
        key = identity_store.state_key(checkpoint, batches, ids)
        _n, _round, head_checkpoint = identity_store.identity_count(ws)
        done = [r.number for r in ws.rounds() if r.status == "done"]
        round_no = done[-1] if done else None
        # what caused a new assignment: a round (another model), else a decision step newer than
        # any an assignment was made for (else new images, or the first listing: neither)
        by_round = head_checkpoint is None or head_checkpoint != checkpoint
        ((seen,),) = ws.query("SELECT MAX(batch) FROM identity_states")
        batch = None if by_round or not batches or max(batches) <= (seen or 0) else max(batches)

        def compute(prev_ids, prev_identity, next_id):
            touched_images = np.unique(np.concatenate([cons.must.ravel(), cons.cannot.ravel()]))
            r = rows_of(prev_ids, touched_images)
            touched = set(prev_identity[r[r >= 0]].tolist())
            named = D.identity_names(ws, prev_ids, prev_identity).keys()
            a = assign_ids(prev_ids, prev_identity, ids, labels, next_id=next_id, named=named, touched=touched)
            return ids, a.identity, a.events

        def same_partition(got_ids, got_identity) -> bool:
            r = rows_of(got_ids, ids)
            if (r < 0).any():
                return False
            pairs = np.unique(np.stack([labels, got_identity[r]], axis=1), axis=0)
            return len(pairs) == len(np.unique(labels)) == len(np.unique(got_identity[r]))

        def in_effect() -> bool:  # the assignment in effect is this one already: nothing to store
            return identity_store.head_key(ws) == key and same_partition(*identity_store.current(ws))

        # Another workspace (keep_identities) is a writer; this session's own is written when it
        # can be now -- the app's, opened with the lock on demand, takes the writer lock for it
        # unless another process writes -- and not at all when the assignment is in effect already.
        done = ws is self.ws and in_effect()
        turn = (contextlib.nullcontext(True) if ws is not self.ws else contextlib.nullcontext(False) if done
                else self._storing("storing identity ids"))
        with turn as store:
            got_ids, got_identity = identity_store.settle(ws, key, checkpoint=checkpoint, batch=batch, round=round_no,
                                                          compute=compute, check=same_partition, write=store)
        if done:
            self._unsaved_stable = None
        elif not store:  # what a writer would have stored differs from what is stored: keep it for later
            stored_ids, stored_identity = identity_store.current(ws)
            same = (identity_store.head_key(ws) == key and np.array_equal(stored_ids, got_ids)
                    and np.array_equal(stored_identity, got_identity))
            self._unsaved_stable = None if same else (checkpoint, batches, ids, labels, cons)
        return got_identity[rows_of(got_ids, ids)]

    def unsaved_identities(self) -> bool:
        """Whether this read-only session computed identities it could not store: the clustering of
        a model the workspace had none stored for, or stable ids other than those in effect (a new
        assignment, an undo's or a redo's).  :meth:`keep_identities` stores them."""
        return self._unsaved_identities is not None or self._unsaved_stable is not None

    def keep_identities(self, ws: Workspace) -> bool:
        """Store what :meth:`unsaved_identities` says this read-only session computed, into ``ws``
        (the same workspace opened for writing, after this session read it): the clustering, and the
        stable ids through ``identity_store.settle`` -- with their lineage, exactly the ids this
        session answered with, not positions.  When the decisions in effect changed in between,
        the stable ids are left to the next listing (they would no longer be what was shown);
        returns whether they were stored."""
        raw = self._unsaved_identities
        if raw is not None:
            stored = ws.identities(checkpoint=raw.checkpoint)
            if stored is None or not len(stored):
                ws.save_identities(raw.checkpoint, raw.image_id, raw.identity, raw.confidence)
        pending = self._unsaved_stable
        if pending is None:
            return True
        checkpoint, batches, ids, labels, cons = pending
        if identity_store.active_batches(ws) != batches:
            return False
        self._settle(checkpoint, ids, labels, cons, ws=ws)
        return True

    def unassigned(self) -> dict[str, int]:
        """Images in no identity yet, by reason (after :meth:`identities`)."""
        self.identities()
        return dict(self._unassigned)

    def identity_history(self, identities=None) -> dict[int, str]:
        """``{identity: 'merged #40; split from #3'}`` from the lineage in effect."""
        return identity_store.history_notes(self.ws, identities)

    def identity_lineage(self):
        """The whole lineage log (``identity_store.Lineage`` rows, oldest first)."""
        return identity_store.lineage(self.ws)

    def resolve_image(self, token) -> int:
        """Image id of ``token``: an id, or the path of an ingested image -- absolute, relative to
        the current folder (tried first), or relative to the folder it was ingested from.  A path
        that names images of several sources is refused, listing them."""
        images = self.images()
        text = str(token)
        number = image_id_of(text)
        if number is not None and images.index_of([number])[0] >= 0:
            return number
        cache = getattr(self, "_token_rows", None)
        if cache is None or cache[0] is not images:
            by_path: dict[str, int] = {}
            by_rel: dict[str, list[int]] = {}
            for i, (p, r) in enumerate(zip(images.path, images.relpath)):
                by_path.setdefault(str(p), i)
                by_rel.setdefault(str(r), []).append(i)
            self._token_rows = cache = (images, by_path, by_rel)
        _, by_path, by_rel = cache
        shown = repr(text if len(text) <= 80 else text[:77] + "...")
        here = Path(text).expanduser()
        exists = os.path.exists(here)  # False for any OSError (a name too long to be a file, ...)
        cand = [str(here.absolute())]
        with contextlib.suppress(OSError, RuntimeError):
            cand.append(str(here.resolve()))
        for c in cand:  # the file the path names from the current folder (or an absolute path)
            if c in by_path:
                return int(images.id[by_path[c]])
        rel = by_rel.get(Path(text).as_posix() if not here.is_absolute() else "", [])
        if len(rel) == 1 and not exists:
            return int(images.id[rel[0]])
        if rel:
            listed = "; ".join(images.path[i] for i in rel[:5]) + (f"; and {len(rel) - 5} more" if len(rel) > 5 else "")
            why = (f"{shown} in the current folder is not an image of this workspace" if exists
                   else f"{shown} is ambiguous")
            what = "an image" if len(rel) == 1 else f"images of {len(rel)} ingested folders"
            raise ConstraintError(f"{why}: relative to the ingested folders it names {what} ({listed}); give the "
                                  "full path or the image id, or run the command from the folder the image is in")
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

    def describe_step(self, step: int | None) -> str:
        """What an undo step holds, in words (``workspace/decisions.describe_step``)."""
        return D.describe_step(self.ws, step)

    def _identity_members(self, identity: int) -> tuple[np.ndarray, np.ndarray]:
        table = self.identities()
        ids = table.image_id[table.identity == int(identity)]
        if not len(ids):
            raise ConstraintError(self._gone(int(identity)))
        return ids, self._group_keys(ids)

    def _gone(self, identity: int) -> str:
        """Why ``identity`` names no sighting: merged or retired into another id, or never was."""
        fate = identity_store.fate(self.ws, identity)
        if fate is None:
            return f"there is no identity {identity}: list them with 'itkm identities WS'"
        ev, live = fate
        by = f"step {ev.batch}" if ev.batch is not None else (f"round {ev.round}" if ev.round else "re-clustering")
        if live is None:
            return f"identity #{identity} no longer exists ({ev.event} by {by}); its sightings are in no identity now"
        if ev.event == "merged":
            return f"identity #{identity} was merged into #{live} ({by}): use #{live}"
        return f"identity #{identity} was retired ({by}); most of its sightings are now in #{live}"

    def _group_keys(self, image_ids) -> np.ndarray:
        images = self.images()
        return np.asarray(images.group_key(), object)[images.index_of(image_ids)]

    def merge_identities(self, x: int, y: int, *more: int, override: bool = False) -> int:
        """Identities ``x``, ``y`` (and ``more``) are one person (must-links, one undo step).

        Refused when they are at different sites, or when a decision in effect says two of their
        sightings are different people -- naming that decision; ``override=True`` overrules such
        rejections explicitly (the merge's step confirms those pairs, so undoing it restores them)."""
        wanted = [int(i) for i in (x, y, *more)]
        if len(set(wanted)) != len(wanted):
            raise ConstraintError(f"an identity was given twice ({wanted}): merge different identities")
        members = [self._identity_members(i) for i in wanted]
        sites = {i: sorted(set(self._sites(m[0]).tolist())) for i, m in zip(wanted, members)}
        if len({s for v in sites.values() for s in v}) > 1:
            where = ", ".join(f"#{i} at {'/'.join(v)}" for i, v in sites.items())
            raise ConstraintError(f"identities of different sites are never one person ({where}): "
                                  "people are shared only within a site")
        pairs = C.merge_pairs(members)
        conflicts = D.cannot_between(self.ws, [m[0] for m in members])
        if conflicts and not override:
            d = conflicts[0]
            more_text = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
            raise ConstraintError(
                f"step {d.batch} said images {d.image_a} and {d.image_b} are not the same person{more_text}, and they "
                f"are in the identities to merge: undo that step if it was wrong, or merge with --override to "
                "overrule it")
        if override:
            pairs += [(d.image_a, d.image_b) for d in conflicts]
        return D.confirm(self.ws, pairs)

    def split_identity(self, image_ids, *, together: bool = False) -> int:
        """The given sightings (ids or paths, all of one identity) leave it.  ``together``: they are
        one person (confirmed together, one new identity); otherwise nobody said so, and each
        becomes an identity of its own (no must-link between them).  One undo step."""
        moved = np.unique([self.resolve_image(t) for t in image_ids]).astype(np.int64)
        table = self.identities()
        rows = rows_of(table.image_id, moved)
        if (rows < 0).any():
            raise ConstraintError(
                f"image(s) {', '.join(map(str, moved[rows < 0][:5].tolist()))} are in no identity yet (ingested at a "
                "site no round has trained on, or unreadable), so they cannot be split off: train a round first, or "
                "confirm/reject them one by one")
        ident = table.identity[rows]
        if len(set(ident.tolist())) != 1:
            raise ConstraintError("the sightings to split off belong to different identities: pick them from one")
        members, _ = self._identity_members(int(ident[0]))
        rest = np.setdiff1d(members, moved)
        keys_m, keys_r = self._group_keys(moved), self._group_keys(rest)
        if together or len(moved) == 1:
            return D.record_split(self.ws, moved, rest, keys_m, keys_r)
        with self.ws.transaction():
            batch = D.record_split(self.ws, moved, rest, keys_m, keys_r, together=False)
            identity_store.record_split_offs(self.ws, batch, moved)
        return batch

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
        """Pairs to review (``review.review_queue``): per direction, every group in turn, the
        pairs whose answer would change a pseudo-label or a CHM match first."""
        return review_queue(self, n)

    def answer_selection(self, image, n: int = 10):
        """Search-and-answer: the results of ``image`` (id or path) to answer yes/no about
        (``review.answer_selection``)."""
        return answer_selection(self, self.resolve_image(image), n)

    def answer(self, image, yes=(), no=()) -> int:
        """Search-and-answer: ``yes`` show the person of ``image``, ``no`` do not (ids or paths);
        one undo step.  Returns it (0: nothing to record)."""
        return D.answer(self.ws, self.resolve_image(image), [self.resolve_image(t) for t in yes],
                        [self.resolve_image(t) for t in no])

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
        """The current model's scores (:meth:`score` of :meth:`ranking`, what the gallery ranks
        with): {"headline": ..., "protocols": ...}, or {} without labels.  Stored as the
        workspace's evaluation metrics."""
        fs = self.ranking(reporter=reporter.child(0.0, 0.5) if reporter else None)
        scores = self._score(fs.feats, fs.ids, reporter.child(0.5, 1.0) if reporter else None)
        if scores:
            with self._storing("storing an evaluation") as store:
                if store:
                    self.ws.save_metrics("evaluation", None, self.checkpoint_key(), scores)
        return scores

    def score(self, feats: np.ndarray, ids: np.ndarray, reporter: Reporter | None = None) -> dict[str, dict]:
        """THE scoring of features against the known person ids, as ``itkm evaluate`` scores the
        model (the benchmarks score other features with it too, e.g. a colour baseline): ``feats``
        (rows = the images ``ids``) in the ranking space (:meth:`ranking_space`), every protocol
        and split of :func:`evaluation.evaluate_features`, with this workspace's SYSU-MM01
        sources and its cameras flagged low-res."""
        return self._score(self.ranking_space(feats, ids), ids, reporter)

    def _score(self, ranked: np.ndarray, ids: np.ndarray, reporter: Reporter | None) -> dict[str, dict]:
        images = self.images().subset(self.images().index_of(ids))
        sysu = [src.id for src in self.ws.sources() if src.layout == "sysu"]
        low_res = [c.name for c in self.ws.cameras() if has_low_res_flag(c.flag)]
        return evaluate_features(ranked, images, sysu_sources=sysu, low_res_cameras=low_res, reporter=reporter)
