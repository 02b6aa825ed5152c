"""Issue 20 (Modalities): camera-aware normalisation (one function, for clustering and for every
ranking), per-group pseudo-label quality, and the one ranking the session scores with."""

from __future__ import annotations

import numpy as np
import pytest

from itkm_engine.camera_norm import camera_centred, centre_outside
from itkm_engine.config import preset
from itkm_engine.evaluation import evaluate_features
from itkm_engine.features import FeatureSet
from itkm_engine.progress import Reporter
from itkm_engine.records import ImageTable
from itkm_engine.session import Session, workspace_config
from itkm_engine.stages.context import RoundContext, group_label_quality


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _two_cameras(n_people: int = 2, per: int = 3, bias: float = 3.0, seed: int = 0):
    """Features of ``n_people`` seen by two cameras, each camera adding its own large offset:
    raw nearest neighbours are same-camera strangers."""
    rng = np.random.default_rng(seed)
    person = _unit(rng.standard_normal((n_people, 32)))
    cam_bias = bias * _unit(rng.standard_normal((2, 32)))
    feats, cams, pid = [], [], []
    for c in range(2):
        for p in range(n_people):
            for _ in range(per):
                feats.append(person[p] + cam_bias[c] + 0.05 * rng.standard_normal(32))
                cams.append(f"cam{c}")
                pid.append(p)
    return _unit(np.array(feats)).astype(np.float32), np.array(cams), np.array(pid)


def test_camera_centring_removes_a_camera_offset():
    x, cams, pid = _two_cameras()

    def cross_camera_nn_is_right(f):
        sims = f @ f.T
        np.fill_diagonal(sims, -np.inf)
        sims[cams[:, None] == cams[None, :]] = -np.inf
        return np.mean(pid[np.argmax(sims, 1)] == pid)

    assert cross_camera_nn_is_right(camera_centred(x, cams)) == 1.0
    y = camera_centred(x, cams)
    assert y.dtype == np.float32 and np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    lone = camera_centred(x[:4], np.array(["a", "b", "b", "b"]))  # a lone crop keeps its direction
    assert np.allclose(lone[0], x[0], atol=1e-6)


def test_outside_query_is_centred_like_its_camera():
    rng = np.random.default_rng(1)
    feats = _unit(rng.standard_normal((6, 8))).astype(np.float32)
    cams = np.array(["a", "a", "a", "b", "b", "b"])
    centred = camera_centred(feats, cams)
    np.testing.assert_allclose(centre_outside(feats[1], feats, cams, "a"), centred[1], atol=1e-5)
    g = centre_outside(feats[1], feats, cams, None)  # unknown camera: minus the mean of everything
    want = feats[1] - feats.mean(0)
    np.testing.assert_allclose(g, want / np.linalg.norm(want), atol=1e-5)


def test_group_label_quality_is_per_group():
    labels = np.array([0, 0, 1, 1, 2, 2, -1])
    pid = np.array([5, 5, 6, 7, 5, 5, 6])
    keys = np.array(["v", "v", "v", "v", "i", "i", "i"], dtype=object)
    q = group_label_quality(labels, pid, keys)
    assert q["precision[v]"] == 0.5 and q["n_clusters[v]"] == 2  # {5,5} right, {6,7} wrong
    assert q["precision[i]"] == 1.0 and q["recall[i]"] == 1.0


def test_clustering_a_group_with_camera_centre_joins_a_person_across_its_cameras():
    """cluster.camera_centre (off by default): each camera's mean is subtracted before a group is
    clustered; the epoch's metrics carry each group's pseudo-label quality."""
    x, cams, pid = _two_cameras(n_people=4, per=3, bias=1.5, seed=3)
    n = len(x)
    obj = lambda xs: np.array(list(xs), dtype=object)  # noqa: E731
    images = ImageTable(
        id=np.arange(n, dtype=np.int64), path=[f"/x/{i}.jpg" for i in range(n)], relpath=[f"{i}.jpg" for i in range(n)],
        camera=obj(cams), scenario=obj(["cross-camera"] * n), group=obj(["all"] * n),
        width=np.full(n, 64, np.int32), height=np.full(n, 128, np.int32), timestamp=np.full(n, np.nan),
        person_id=pid.astype(np.int64), status=obj(["ok"] * n), source_id=np.ones(n, np.int64))
    fs = FeatureSet(np.arange(n, dtype=np.int64), x, x)
    recall = {}
    for centre in (False, True):
        cfg = preset("quick").with_overrides(**{"cluster.k1": 6, "cluster.k2": 2, "cluster.camera_centre": centre})
        ctx = RoundContext(cfg, None, images, "cpu", 1)
        _, metrics = ctx.cluster_per_group(fs, Reporter())
        recall[centre] = metrics["recall[cross-camera/all]"]
        assert {"precision[cross-camera/all]", "ari[cross-camera/all]", "n_clusters[cross-camera/all]"} <= set(metrics)
    assert recall[True] == 1.0 and recall[False] < 0.6  # raw: one cluster per camera and person at best


def test_ranking_is_camera_centred_by_default_in_every_preset():
    assert all(preset(name).inference.camera_centre for name in ("tiny", "quick", "full"))
    assert not any(preset(name).cluster.camera_centre for name in ("tiny", "quick", "full"))


def test_session_ranks_reviews_and_scores_in_one_camera_centred_space(trained_ws_template):
    """The gallery's similarities, re-ranking's candidates, the review queue's index, an outside
    file's query and ``evaluate`` all use Session.ranking(): the features with each camera's mean
    subtracted."""
    with Session.open(trained_ws_template, readonly=True, device="cpu") as plain:
        cfg = workspace_config(plain.ws).with_overrides(**{"inference.camera_centre": True})
        raw_cfg = cfg.with_overrides(**{"inference.camera_centre": False})
    with Session.open(trained_ws_template, readonly=True, device="cpu", cfg=cfg) as s:
        fs, rk, images = s.features(), s.ranking(), s.images()
        cams = np.asarray(images.camera)[images.index_of(fs.ids)]
        np.testing.assert_allclose(rk.feats, camera_centred(fs.feats, cams), atol=1e-6)
        assert not np.allclose(rk.feats, fs.feats) and np.array_equal(rk.ids, fs.ids)
        q = int(fs.ids[3])
        row = {int(i): r for r, i in enumerate(fs.ids)}
        for m in s.query_image(q, k=5):
            assert m.similarity == pytest.approx(float(rk.feats[row[q]] @ rk.feats[row[m.image_id]]), abs=1e-4)
        by_path = s.query_file(images.path[images.index_of([q])[0]], k=3)
        assert by_path[0].similarity == pytest.approx(float(rk.feats[row[q]] @ rk.feats[row[by_path[0].image_id]]),
                                                      abs=1e-3)
        sims, _ = s.index().search(rk.feats[:1], 2)
        assert sims[0, 0] == pytest.approx(1.0, abs=1e-4)  # the index holds the ranking's vectors
        sub = images.subset(images.index_of(fs.ids))
        centred = s.evaluate()
        assert centred == evaluate_features(camera_centred(fs.feats, cams), sub)
    with Session.open(trained_ws_template, readonly=True, device="cpu", cfg=raw_cfg) as s:
        assert s.ranking() is s.features()  # off: ranking is the features as they are
        assert s.evaluate() == evaluate_features(fs.feats, sub) != centred


def test_itkm_evaluate_scores_a_low_res_camera_inside_a_visible_infrared_source(demo_dir, tmp_path):
    """Issue 20 section 5, end to end: a visible-infrared source whose vis-b camera films at a
    quarter of the height is flagged low-res at ingest (it keeps its visible group), and
    ``itkm evaluate`` scores it low-res -> high-res and back, in both protocols; each of the two
    infrared cameras (thermal ir-a, near-infrared ir-b) is scored against the visible group too."""
    import json
    import shutil

    from helpers.cli import cli_inproc
    from helpers.workspaces import ingested, use_preset
    from itkm_engine.cv import cv2
    from itkm_engine.vocabulary import has_low_res_flag
    from itkm_engine.workspace import Workspace

    src = tmp_path / "site"
    for cam in ("vis-a", "vis-b", "ir-a", "ir-b"):
        shutil.copytree(demo_dir / "visible-infrared" / cam, src / cam)
    for p in (src / "vis-b").glob("*.jpg"):
        img = cv2.imread(str(p))
        cv2.imwrite(str(p), cv2.resize(img, (max(6, img.shape[1] // 4), max(12, img.shape[0] // 4)),
                                      interpolation=cv2.INTER_AREA))
    ws = ingested(tmp_path / "ws", [src], scenario="visible-infrared")
    use_preset(ws, "tiny")
    with Workspace.open(ws, readonly=True) as w:
        cams = {c.name: c for c in w.cameras()}
    assert has_low_res_flag(cams["vis-b"].flag) and cams["vis-b"].group == "visible"
    assert not any(has_low_res_flag(c.flag) for n, c in cams.items() if n != "vis-b")

    rc, out, err = cli_inproc("evaluate", ws, "--json")
    assert rc == 0, err
    protocols = json.loads(out)["protocols"]
    for protocol in ("cross-camera", "standard"):
        scores = protocols[protocol]
        for split in ("visible-infrared: low-res -> high-res", "visible-infrared: high-res -> low-res",
                      "visible-infrared: camera ir-a -> visible", "visible-infrared: visible -> camera ir-b"):
            assert split in scores and 0.0 <= scores[split]["mAP"] <= 1.0, (protocol, split)
    rc, text, _ = cli_inproc("evaluate", ws)
    assert rc == 0 and "visible-infrared: low-res -> high-res" in text


def test_decisions_reorder_the_camera_centred_ranking(trained_ws):
    """Composition: the similarities come from Session.ranking() (camera-centred), the operator's
    decisions re-order them afterwards (decision_ranking in Session._top)."""
    with Session.open(trained_ws, device="cpu") as s:
        assert s.cfg.inference.camera_centre
        rk = s.ranking()
        row = {int(i): r for r, i in enumerate(rk.ids)}
        q = int(rk.ids[0])
        far = int(rk.ids[int(np.argmin(rk.feats @ rk.feats[row[q]]))])  # the least similar image
        s.confirm(q, far)
        matches = s.query_image(q, k=5)
        assert matches[0].image_id == far and matches[0].decision == "confirmed"
        for m in matches[1:]:
            assert m.similarity == pytest.approx(float(rk.feats[row[q]] @ rk.feats[row[m.image_id]]), abs=1e-4)
