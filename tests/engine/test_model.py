"""The ITKM model on open_clip: exactness against CLIP, scenario/group routing, prompts, weights."""

from __future__ import annotations

import time

import open_clip
import pytest
import torch

from itkm_engine.config import ModelConfig
from itkm_engine.errors import ItkmError, WeightsUnavailableError
from itkm_engine.model import ITKMModel, PromptLearner, build_model, load_checkpoint, save_checkpoint
from itkm_engine.model import weights as weights_mod
from itkm_engine.model.prompts import default_template

SCENARIOS = ["visible-infrared", "cross-resolution", "cross-camera"]
GROUPS = ["visible", "infrared", "high-res", "low-res", "all"]
H, W = 64, 32


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(name="itkm-tiny", pretrained=None, image_size=(H, W))
    base.update(kw)
    return ModelConfig(**base)


def make_model(seed: int = 0, scenarios=SCENARIOS, groups=GROUPS, **kw) -> ITKMModel:
    torch.manual_seed(seed)
    return build_model(tiny_cfg(**kw), scenarios, groups, device="cpu").eval()


def images(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, H, W, generator=g)


def idx(*v: int) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.long)


# -- image side ------------------------------------------------------------------------------


def test_shapes_and_feature_dims():
    m = make_model()
    out = m.forward_image(images(4), idx(0, 1, 2, 0), idx(0, 1, 4, 2))
    assert out.pre.shape == (4, 64) and out.proj.shape == (4, 64)
    assert m.embed_dim == 64 and m.feature_dim == 128
    f = m.retrieval_feature(out)
    assert f.shape == (4, m.feature_dim)
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(4))
    # concat = normalised halves, so each half has norm 1/sqrt(2)
    torch.testing.assert_close(f[:, :64].norm(dim=-1), torch.full((4,), 2**-0.5))

    p = make_model(feature="proj")
    assert p.feature_dim == p.embed_dim == 64
    fp = p.retrieval_feature(p.forward_image(images(2), idx(0, 0), idx(0, 0)))
    assert fp.shape == (2, 64)
    torch.testing.assert_close(fp.norm(dim=-1), torch.ones(2))


def test_neutral_additions_equal_clip_encode_image():
    m = make_model()
    with torch.no_grad():
        m.scenario_embedding.zero_()
        x = images(6)
        out = m.forward_image(x, idx(0, 1, 2, 0, 1, 2), idx(0, 1, 2, 3, 4, 0))  # mixed groups, identical stems
        ref = m.tower.visual(x)
    torch.testing.assert_close(out.proj, ref, rtol=1e-5, atol=1e-5)
    # pre is ln_post(CLS): projecting it by hand gives CLIP's output too
    torch.testing.assert_close(out.pre @ m.tower.visual.proj, ref, rtol=1e-5, atol=1e-5)


def test_scenario_embedding_switched_off_has_no_parameter_and_equals_clip():
    m = make_model(scenario_embedding=False, group_stems=False)
    assert m.scenario_embedding is None and m.stems is None and m.new_parameters() == []
    x = images(3)
    with torch.no_grad():
        a = m.forward_image(x, idx(0, 1, 2), idx(0, 1, 2)).proj
        b = m.forward_image(x, idx(2, 2, 2), idx(4, 4, 4)).proj
        torch.testing.assert_close(a, m.tower.visual(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, b)


def test_scenario_embedding_changes_output_per_scenario():
    m = make_model(scenario_scale=1.0)
    x = images(2)
    with torch.no_grad():
        m.scenario_embedding.normal_(0, 0.5)
        s0 = m.forward_image(x, idx(0, 0), idx(0, 0)).proj
        s1 = m.forward_image(x, idx(1, 1), idx(0, 0)).proj
        s0_again = m.forward_image(x, idx(0, 0), idx(0, 0)).proj
    assert (s0 - s1).abs().max() > 1e-3
    torch.testing.assert_close(s0, s0_again)
    # scale 0 makes the embedding inert
    m.cfg.scenario_scale = 0.0
    with torch.no_grad():
        z0 = m.forward_image(x, idx(0, 0), idx(0, 0)).proj
        z1 = m.forward_image(x, idx(1, 1), idx(0, 0)).proj
    torch.testing.assert_close(z0, z1)


def test_mixed_group_batch_routes_each_sample_through_its_stem():
    m = make_model()
    x = images(6)
    g = idx(0, 1, 1, 2, 0, 1)
    s = idx(0, 0, 0, 1, 1, 1)
    with torch.no_grad():
        before = m.forward_image(x, s, g).proj
        m.stems[1].weight.add_(0.5 * torch.randn_like(m.stems[1].weight))
        after = m.forward_image(x, s, g).proj
    changed = (after - before).abs().amax(dim=1) > 1e-4
    assert changed.tolist() == (g == 1).tolist()
    # a one-group batch through stem 1 equals the same samples inside the mixed batch
    with torch.no_grad():
        alone = m.forward_image(x[g == 1], s[g == 1], g[g == 1]).proj
    torch.testing.assert_close(alone, after[g == 1], rtol=1e-5, atol=1e-5)


def test_stem_gradients_only_for_groups_in_batch():
    m = make_model().train()
    m.set_image_trainable(True)
    out = m.forward_image(images(4), idx(0, 0, 1, 1), idx(0, 2, 2, 0))
    m.retrieval_feature(out).sum().backward()
    assert m.stems[0].weight.grad is not None and m.stems[0].weight.grad.abs().sum() > 0
    assert m.stems[2].weight.grad is not None and m.stems[2].weight.grad.abs().sum() > 0
    assert m.stems[1].weight.grad is None
    assert m.tower.visual.conv1.weight.grad is None  # the shared template stem is not used
    rows = m.scenario_embedding.grad.abs().sum(dim=1)
    assert rows[0] > 0 and rows[1] > 0 and rows[2] == 0


def test_parameter_groups_and_freezing():
    m = make_model()
    new = {id(p) for p in m.new_parameters()}
    image = {id(p) for p in m.image_parameters()}
    text = {id(p) for p in m.text_parameters()}
    assert id(m.scenario_embedding) in new
    assert all(id(s.weight) in new for s in m.stems)
    assert not new & image and not image & text and not new & text
    assert id(m.tower.visual.conv1.weight) not in image  # replaced by the stems
    assert id(m.tower.visual.proj) in image
    assert all(not p.requires_grad for p in m.text_parameters()) and not m.logit_scale.requires_grad
    m.set_image_trainable(False)
    assert not any(p.requires_grad for p in m.image_parameters() + m.new_parameters())
    m.set_image_trainable(True)
    assert all(p.requires_grad for p in m.image_parameters() + m.new_parameters())
    assert all(not p.requires_grad for p in m.text_parameters())
    # every trainable parameter is in exactly one group
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    assert trainable == image | new


def test_bf16_autocast_mixed_groups():
    m = make_model()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.forward_image(images(4), idx(0, 1, 0, 1), idx(0, 1, 0, 1))
    assert out.proj.dtype == torch.bfloat16 and torch.isfinite(out.proj.float()).all()


# -- vocabulary, extend, checkpoints ---------------------------------------------------------


def test_unknown_names_raise_with_a_hint():
    m = make_model()
    assert m.scenario_index(["cross-camera", "visible-infrared"]).tolist() == [2, 0]
    assert m.group_index(["all", "visible"]).tolist() == [4, 0]
    with pytest.raises(ItkmError, match=r"clothing-change.*extend"):
        m.scenario_index(["clothing-change"])
    with pytest.raises(ItkmError, match="out of range"):
        m.forward_image(images(1), idx(7), idx(0))
    with pytest.raises(ItkmError, match="duplicate"):
        make_model(scenarios=["a", "a"])


def test_extend_keeps_old_outputs_and_adds_rows():
    m = make_model(groups=["visible", "infrared"])
    x = images(3)
    s, g = idx(0, 1, 2), idx(0, 1, 0)
    with torch.no_grad():
        m.stems[1].weight.mul_(1.5)  # a trained stem differs from the template
        before = m.forward_image(x, s, g).proj
    added = m.extend(scenarios=["clothing-change", "cross-camera"], groups=["all"])
    assert added == (["clothing-change"], ["all"])
    assert m.scenarios[-1] == "clothing-change" and m.groups == ["visible", "infrared", "all"]
    assert m.scenario_embedding.shape == (4, 64) and len(m.stems) == 3
    assert 0 < m.scenario_embedding[3].std() < 0.1
    torch.testing.assert_close(m.stems[2].weight, m.tower.visual.conv1.weight)
    with torch.no_grad():
        after = m.forward_image(x, s, g).proj
        new = m.forward_image(x, m.scenario_index(["clothing-change"] * 3), m.group_index(["all"] * 3)).proj
    torch.testing.assert_close(after, before)
    assert torch.isfinite(new).all()
    assert m.extend(scenarios=["cross-camera"]) == ([], [])


def test_checkpoint_roundtrip_rebuilds_identical_model(tmp_path):
    m = make_model()
    m.extend(scenarios=["clothing-change"])
    with torch.no_grad():
        m.scenario_embedding.normal_(0, 0.3)
        m.stems[1].weight.mul_(1.3)
    path = save_checkpoint(tmp_path / "round_0001.pt", {"model": m.state_for_checkpoint(), "round": 1})
    state = load_checkpoint(path)
    r = ITKMModel.from_checkpoint(state["model"], "cpu").eval()
    assert r.scenarios == m.scenarios and r.groups == m.groups and r.cfg == m.cfg
    x = images(5)
    s, g = idx(0, 1, 2, 3, 0), idx(0, 1, 2, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(r.forward_image(x, s, g).proj, m.forward_image(x, s, g).proj, rtol=0, atol=0)
        torch.testing.assert_close(r.encode_text(["a person"]), m.encode_text(["a person"]))


def test_load_state_adopts_checkpoint_vocabulary_then_extend():
    src = make_model(scenarios=["cross-camera", "visible-infrared"], groups=["all", "visible", "infrared"])
    dst = make_model(seed=5, scenarios=["cross-camera"], groups=["all"])
    dst.load_state(src.state_for_checkpoint())
    assert dst.scenarios == src.scenarios and dst.groups == src.groups
    dst.extend(scenarios=["cross-resolution"], groups=["low-res"])
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(
            dst.forward_image(x, idx(0, 1), idx(1, 2)).proj, src.eval().forward_image(x, idx(0, 1), idx(1, 2)).proj
        )
    with pytest.raises(ItkmError, match="not an ITKM model checkpoint"):
        dst.load_state({"state_dict": {}})


# -- text side -------------------------------------------------------------------------------


def test_prompt_learner_with_word_context_equals_clip_encode_text():
    m = make_model()
    template = default_template(4)
    assert template == "A photo of a X X X X person."
    pl = PromptLearner(m, num_classes=7, n_ctx=4, ctx_init="word")
    with torch.no_grad():
        got = pl(idx(0, 6, 3))
        ref = m.encode_text([template])
        real = torch.nn.functional.normalize(m.clip.encode_text(open_clip.get_tokenizer("itkm-tiny")([template])), dim=-1)
    torch.testing.assert_close(got, ref.expand(3, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref, real, rtol=1e-6, atol=1e-6)
    # random context gives different features per class
    pr = PromptLearner(m, num_classes=3)
    with torch.no_grad():
        f = pr(idx(0, 1, 2))
    assert f.shape == (3, m.embed_dim)
    torch.testing.assert_close(f.norm(dim=-1), torch.ones(3))
    assert (f[0] - f[1]).abs().max() > 1e-4


def test_prompt_gradients_reach_context_only():
    m = make_model()
    pl = PromptLearner(m, num_classes=5)
    assert [n for n, _ in pl.named_parameters()] == ["ctx"]
    assert list(pl.state_dict()) == ["ctx"]
    feats = pl(idx(1, 3, 3))
    (feats @ torch.randn(m.embed_dim)).sum().backward()
    g = pl.ctx.grad.abs().sum(dim=(1, 2))
    assert g[1] > 0 and g[3] > 0 and g[0] == 0 and g[2] == 0 and g[4] == 0
    for p in m.text_parameters():
        assert not p.requires_grad and p.grad is None
    assert all(p.grad is None for p in m.parameters())


def test_prompt_all_features_and_template_errors():
    m = make_model()
    pl = PromptLearner(m, num_classes=5)
    allf = pl.all_features(batch_size=2)
    assert allf.shape == (5, m.embed_dim) and not allf.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(allf[3], pl(idx(3))[0])
    with pytest.raises(ItkmError, match="exactly 4"):
        PromptLearner(m, 3, n_ctx=4, template="A photo of a X X person.")
    with pytest.raises(ItkmError, match="consecutive"):
        PromptLearner(m, 3, n_ctx=2, template="A X photo of a X person.")
    pl6 = PromptLearner(m, 2, n_ctx=6)
    assert pl6.ctx.shape == (2, 6, 64)
    with pytest.raises(ItkmError, match="labels"):
        pl(idx(5))


def test_encode_text_is_normalised():
    m = make_model()
    t = m.encode_text(["a person in a red coat", "a person"])
    assert t.shape == (2, m.embed_dim) and not t.requires_grad
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))


# -- configs and weights ---------------------------------------------------------------------


def test_configs_registered_idempotently_and_non_square_grids():
    weights_mod.register_configs()
    n = len(open_clip.factory._MODEL_CONFIG_PATHS)
    weights_mod.register_configs()
    assert len(open_clip.factory._MODEL_CONFIG_PATHS) == n
    assert {"itkm-tiny", "itkm-small"} <= set(open_clip.list_models())
    for size, grid in (((64, 32), (4, 2)), ((128, 64), (8, 4))):
        clip, _ = weights_mod.create_clip(tiny_cfg(image_size=size))
        assert clip.visual.grid_size == grid
        assert clip.visual.positional_embedding.shape == (grid[0] * grid[1] + 1, 64)
        assert clip.encode_image(torch.zeros(1, 3, *size)).shape == (1, 64)
    small, _ = weights_mod.create_clip(ModelConfig(name="itkm-small", pretrained=None, image_size=(128, 64)))
    assert small.visual.grid_size == (8, 4) and small.visual.output_dim == 128


def test_local_weights_file_and_folder_with_pos_embed_interpolation(tmp_path):
    torch.manual_seed(3)
    square, _ = weights_mod.create_clip(tiny_cfg(image_size=(64, 64)))
    path = tmp_path / "w" / "open_clip_pytorch_model.bin"
    path.parent.mkdir()
    torch.save(square.state_dict(), path)
    for given in (path, path.parent):
        clip, _ = weights_mod.create_clip(tiny_cfg(weights=str(given)))
        assert clip.visual.positional_embedding.shape == (4 * 2 + 1, 64)  # 4x4 grid -> 4x2
        torch.testing.assert_close(clip.visual.positional_embedding[0], square.visual.positional_embedding[0])
        torch.testing.assert_close(clip.visual.conv1.weight, square.visual.conv1.weight)
        torch.testing.assert_close(clip.token_embedding.weight, square.token_embedding.weight)


def test_missing_or_wrong_local_weights_raise_clear_errors(tmp_path):
    missing = tmp_path / "nope.bin"
    with pytest.raises(WeightsUnavailableError, match=r"does not exist.*--weights PATH"):
        build_model(tiny_cfg(weights=str(missing)), SCENARIOS, GROUPS, device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsUnavailableError, match="no weights file"):
        weights_mod.create_clip(tiny_cfg(weights=str(empty)))
    other = tmp_path / "small.bin"
    torch.save(weights_mod.create_clip(ModelConfig(name="itkm-small", pretrained=None, image_size=(64, 32)))[0].state_dict(), other)
    with pytest.raises(WeightsUnavailableError, match=r"itkm-tiny.*--weights PATH"):
        weights_mod.create_clip(tiny_cfg(weights=str(other)))
    with pytest.raises(WeightsUnavailableError, match="neither a pretrained tag"):
        weights_mod.create_clip(tiny_cfg(pretrained="no-such-tag"))
    with pytest.raises(WeightsUnavailableError, match="unknown model"):
        weights_mod.create_clip(tiny_cfg(name="ViT-Nonexistent"))


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No previously downloaded weights visible (HF cache and ~/.cache/clip point at tmp)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))


def test_openai_weights_offline_fail_fast_with_fix(empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        build_model(ModelConfig(name="ViT-B-16", pretrained="openai", image_size=(256, 128)), SCENARIOS, GROUPS, device="cpu")
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "ViT-B-16" in msg and "openai" in msg and "--weights PATH" in msg and "internet" in msg


def test_openai_weights_unreachable_host_fail_fast(empty_caches, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(weights_mod, "_offline", lambda: False)
    monkeypatch.setattr(weights_mod, "_reachable", lambda host: False)
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match=r"cannot be reached.*--weights PATH"):
        weights_mod.create_clip(ModelConfig(name="ViT-B-16", pretrained="openai"))
    assert time.monotonic() - t0 < 5


def test_openai_tag_sets_quick_gelu():
    assert weights_mod._tag_quick_gelu("ViT-B-16", "openai") is True
    assert weights_mod._tag_quick_gelu("ViT-B-16", "laion2b_s34b_b88k") is False
    assert weights_mod._tag_quick_gelu("itkm-tiny", None) is False
