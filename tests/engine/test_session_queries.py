"""Queries a first-time user ran (issue 11 item 3): re-ranking with a camera filter, and an
ingested image queried by its path with "other cameras only"."""

from __future__ import annotations

import numpy as np
import pytest

from itkm_engine.session import QueryFilter, Session


@pytest.fixture(scope="module")
def session(trained_ws_template):
    s = Session.open(trained_ws_template, readonly=True, device="cpu")
    yield s
    s.close()


def _query_in_infrared_camera(session) -> tuple[int, str, int]:
    """An image of the infrared camera: its nearest neighbours are mostly its own camera's."""
    images = session.images()
    row = int(np.flatnonzero(images.group == "infrared")[0])
    cam = str(images.camera[row])
    return int(images.id[row]), cam, int((images.camera != cam).sum())


def test_rerank_with_exclude_camera_fills_top_k_from_other_cameras(session, monkeypatch):
    # the demo gallery is smaller than the re-ranking's candidate count: shrink that, so the
    # query's own camera fills the candidates as it does in a real gallery
    import itkm_engine.session as session_mod

    monkeypatch.setattr(session_mod, "RERANK_TOP_N", 20)
    qid, cam, n_other = _query_in_infrared_camera(session)
    k = min(5, n_other)
    f = QueryFilter(None, None, None, exclude_same_camera=True)
    plain = session.query_image(qid, k=k, filters=f)
    reranked = session.query_image(qid, k=k, filters=f, rerank=True)
    assert len(plain) == k
    assert len(reranked) == k  # the filter applies before re-ranking, not to its top-N afterwards
    assert all(m.camera != cam for m in reranked)
    assert qid not in [m.image_id for m in reranked]
    sims = [m.similarity for m in reranked]
    assert sims == sorted(sims, reverse=True)


def test_query_file_of_an_ingested_image_leaves_its_camera_out(session):
    qid, cam, _ = _query_in_infrared_camera(session)
    images = session.images()
    path = images.path[int(images.index_of([qid])[0])]
    matches = session.query_file(path, k=10, filters=QueryFilter(None, None, None, exclude_same_camera=True))
    assert len(matches) == 10
    assert all(m.camera != cam for m in matches)
