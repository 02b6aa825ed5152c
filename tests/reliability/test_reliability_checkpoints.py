"""Issue 10.3-10.5: a missing, NaN, mis-shaped or crafted checkpoint is refused with the file named
(never silently replaced by the untrained model, never built when its settings are absurd); a
damaged feature chunk is recomputed and logged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.cli import cli_inproc, one_line, run_cli


def ckpt_of(ws: Path) -> Path:
    return ws / "checkpoints" / "round_0001.pt"


def edit_checkpoint(ws: Path, fn) -> None:
    from itkm_engine.model.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(ckpt_of(ws))
    fn(state["model"])
    save_checkpoint(ckpt_of(ws), state)


@pytest.mark.parametrize("command", ["query", "extract", "export-tracks"])
def test_a_deleted_round_checkpoint_is_named_not_replaced_by_the_untrained_model(trained_ws, tmp_path, command):
    ckpt_of(trained_ws).unlink()
    args = {"query": ["1"], "extract": [], "export-tracks": [tmp_path / "t.csv"]}[command]
    line = one_line(*cli_inproc(command, trained_ws, *args)[::2], command)
    assert "round_0001.pt" in line and "missing" in line
    assert not (tmp_path / "t.csv").exists()
    assert not any(p.name.startswith("init-") and any(p.iterdir()) for p in (trained_ws / "features").iterdir()
                   if p.is_dir() and p.stat().st_mtime > ckpt_of(trained_ws).parent.stat().st_mtime)


def _first_float(sd: dict) -> str:
    return next(k for k, v in sd.items() if v.is_floating_point() and v.ndim >= 2)


def test_nan_weights_in_a_checkpoint_are_refused_not_an_empty_answer(trained_ws):
    def poison(m):
        k = _first_float(m["state_dict"])
        m["state_dict"][k] = m["state_dict"][k].clone().fill_(float("nan"))

    edit_checkpoint(trained_ws, poison)
    p = run_cli("query", trained_ws, "1", check=False)
    line = one_line(p.returncode, p.stderr, "query")
    assert "round_0001.pt" in line and "NaN" in line


def test_a_tensor_of_the_wrong_shape_is_one_line(trained_ws):
    def reshape(m):
        k = _first_float(m["state_dict"])
        m["state_dict"][k] = torch.zeros(3, 3)

    edit_checkpoint(trained_ws, reshape)
    line = one_line(*cli_inproc("query", trained_ws, "1")[::2], "query")
    assert "round_0001.pt" in line and "does not fit" in line


@pytest.mark.parametrize("change,words", [
    ({"name": "ViT-bigG-14"}, "billion parameters"),
    ({"image_size": [65536, 32768]}, "image_size"),
    ({"image_size": [1024, 1024]}, "image_size"),
    ({"name": "no-such-net"}, "unknown model architecture"),
    ({"n_ctx": 4096}, "n_ctx"),
    ({"tower": "resnet152"}, "tower"),
    ({"feature": "pixels"}, "feature"),
])
def test_a_crafted_model_config_is_refused_before_anything_is_built(trained_ws, monkeypatch, change, words):
    import itkm_engine.model.backbone as backbone

    edit_checkpoint(trained_ws, lambda m: m["model_config"].update(change))

    def never(*a, **k):
        raise AssertionError("a model was built from a refused checkpoint")

    monkeypatch.setattr(backbone, "create_clip", never)
    line = one_line(*cli_inproc("query", trained_ws, "1")[::2], "query")
    assert words in line and "round_0001.pt" in line


def test_crafted_scenario_lists_are_refused(trained_ws):
    edit_checkpoint(trained_ws, lambda m: m.update(groups=[f"g{i}" for i in range(100_000)]))
    line = one_line(*cli_inproc("extract", trained_ws)[::2], "extract")
    assert "groups" in line


@pytest.mark.parametrize("damage", ["width", "nan"])
def test_a_damaged_feature_chunk_is_recomputed_and_logged(trained_ws, damage):
    from itkm_engine.model.checkpoint import checkpoint_key

    folder = trained_ws / "features" / checkpoint_key(ckpt_of(trained_ws))
    chunk = sorted(folder.glob("chunk_*.npz"))[0]
    with np.load(chunk) as z:
        ids, feats, proj = z["ids"], z["feats"], z["proj"]
    good = feats.copy()
    if damage == "width":
        feats = np.zeros((len(ids), feats.shape[1] + 7), feats.dtype)
    else:
        feats = feats.copy()
        feats[0, 0] = np.nan
    np.savez(chunk, ids=ids, feats=feats, proj=proj)
    rc, out, err = cli_inproc("query", trained_ws, str(int(ids[0])), "--top-k", "3")
    assert rc == 0, err
    assert "damaged" in err and chunk.name in err and "embedded again" in err
    assert "(none)" not in out and out.count("\n") >= 5
    assert chunk.exists()  # query opens the workspace read-only: recomputed in memory only
    rc, _, err = cli_inproc("extract", trained_ws)
    assert rc == 0 and "damaged" in err, err  # a writer drops it and writes the images' features again
    rc, _, err = cli_inproc("extract", trained_ws)
    assert rc == 0 and "damaged" not in err and "embedding" not in err, err  # replaced once, trusted afterwards
    from itkm_engine.features import FeatureCache

    fs = FeatureCache(folder).load()
    row = fs.rows_for(ids[:1])[0]
    assert np.isfinite(fs.feats).all() and fs.feats.shape[1] == good.shape[1]
    np.testing.assert_allclose(fs.feats[row], good[0].astype(np.float32), atol=2e-3)
