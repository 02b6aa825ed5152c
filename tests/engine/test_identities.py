"""Final identities merge the clusters Stage III's CHM matched (DESIGN.md: "cross-group matches
merged")."""

from __future__ import annotations

import numpy as np

from itkm_engine.identities import compute_identities, round_links
from itkm_engine.session import Session
from itkm_engine.trainer import FINAL_LABELS_FILE
from itkm_engine.workspace import Workspace


def _two_sides(seed=0, people=4, per=6, d=32):
    """Each person seen on a visible side and an infrared side whose features sit far apart
    (the modality gap), so clustering the features alone gives one identity per side."""
    rng = np.random.default_rng(seed)
    vis = rng.standard_normal((people, d))
    ir = rng.standard_normal((people, d))
    feats, who, side = [], [], []
    for p in range(people):
        for s, base in ((0, vis[p]), (1, ir[p])):
            feats.append(base + 0.05 * rng.standard_normal((per, d)))
            who += [p] * per
            side += [s] * per
    f = np.concatenate(feats).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    return f, np.array(who), np.array(side)


def test_cross_group_links_merge_identities_and_refresh_confidence():
    f, who, side = _two_sides()
    ids = np.arange(len(f)) + 100
    kw = dict(k1=6, k2=2, eps=0.5, min_samples=2)
    plain = compute_identities(ids, f, **kw)
    # Without links: one identity per person *and side*.
    assert len(np.unique(plain.identity)) == 8
    links = [(np.flatnonzero((who == 0) & (side == 0)), np.flatnonzero((who == 0) & (side == 1))),
             (np.flatnonzero((who == 2) & (side == 0)), np.flatnonzero((who == 2) & (side == 1)))]
    merged = compute_identities(ids, f, links=links, **kw)
    ident = merged.identity
    assert len(np.unique(ident)) == 6
    for p in (0, 2):
        assert len(np.unique(ident[who == p])) == 1  # both sides of the person: one identity
    for p in (1, 3):
        assert len(np.unique(ident[who == p])) == 2  # not linked: still split
    assert len(np.unique(ident[(who == 0) | (who == 2)])) == 2  # links never chain strangers
    # Confidence is the cosine to the *merged* identity's centroid (lower than to one side's).
    m = who == 0
    cent = f[m].mean(0)
    cent /= np.linalg.norm(cent)
    np.testing.assert_allclose(merged.confidence[m], f[m] @ cent, atol=1e-5)
    assert merged.confidence[m].mean() < plain.confidence[m].mean()
    assert np.array_equal(merged.image_id, ids)


def test_round_links_come_from_the_rounds_chm_matches(trained_ws):
    """The stored final labels name which per-group clusters CHM merged; the session's final
    identities put each merged pair into one identity."""
    with Workspace.open(trained_ws) as ws:
        (rnd,) = ws.rounds()
        path = ws.round_dir(rnd.number) / FINAL_LABELS_FILE
        final = dict(np.load(path))
        ids, labels = final["ids"], final["labels"]
        # Plant one CHM match between two per-group clusters of different groups.
        keys = np.array([f"{s}/{g}" for s, g in zip(*_scen_group(ws, ids))])
        c1 = labels[(labels >= 0) & (keys == "visible-infrared/visible")][0]
        c2 = labels[(labels >= 0) & (keys == "visible-infrared/infrared")][0]
        cross = labels.copy()
        cross[labels == c2] = c1
        np.savez(path, ids=ids, labels=labels, cross=cross)

        links = round_links(ws, ids)
        pairs = {(int(labels[a[0]]), int(labels[b[0]])) for a, b in links}
        assert pairs == {(c1, c2)} or pairs == {(c2, c1)}
    with Session.open(trained_ws) as s:
        table = s.identities()
        ident = dict(zip(table.image_id.tolist(), table.identity.tolist()))

        def majority(c):
            vals, counts = np.unique([ident[int(i)] for i in ids[labels == c]], return_counts=True)
            return vals[np.argmax(counts)]

        assert majority(c1) == majority(c2)  # the two matched clusters' identities are one
        assert ((table.confidence >= -1) & (table.confidence <= 1)).all()


def _scen_group(ws, ids):
    images = ws.images()
    rows = images.index_of(ids)
    return np.asarray(images.scenario)[rows], np.asarray(images.group)[rows]


def test_no_round_no_links(fresh_ws):
    with Workspace.open(fresh_ws) as ws:
        assert round_links(ws, ws.images().id) == []
