"""The round's stem cache (issue 20 §3, itkm_engine/data/stem_cache.py): the quick preset's frozen
MobileNetV2 stem runs once per crop and view, features and training batches come from its maps,
within float16 of the uncached model; the budget bounds memory without changing what a round
learns; a killed round resumes to the same result; towers without a frozen prefix are untouched."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from helpers.cli import cli_inproc
from itkm_engine.config import preset
from itkm_engine.config_check import ConfigError, apply_sets
from itkm_engine.data.loading import Augment, PKSampler
from itkm_engine.data.stem_cache import StemCache
from itkm_engine.errors import Cancelled
from itkm_engine.features import extract_features
from itkm_engine.model.backbone import build_model
from itkm_engine.model.checkpoint import load_checkpoint
from itkm_engine.model.loading import camera_vocabulary
from itkm_engine.progress import CancelToken, Reporter
from itkm_engine.records import ImageTable
from itkm_engine.trainer import PROGRESS_FILE, train
from itkm_engine.workspace import Workspace

CPU = torch.device("cpu")


def short_quick(**sets):
    """The quick preset, shortened to seconds on the small workspace (~80 crops)."""
    base = {"device": "cpu", "amp": False, "data.num_identities": 4, "data.num_instances": 2,
            "data.extract_batch_size": 32, "stage1.epochs": 2, "stage1.iters_per_epoch": 2, "stage2.epochs": 1,
            "stage3.epochs": 1, "stage3.iters_per_epoch": 2}
    return preset("quick").with_overrides(**{**base, **sets})


@pytest.fixture(scope="module")
def small(small_ws_template):
    """The small workspace's images and a quick model for them (read-only use)."""
    with Workspace.open(small_ws_template, readonly=True) as ws:
        images = ws.images()
        scenarios, groups = camera_vocabulary(ws)
    torch.manual_seed(0)
    model = build_model(preset("quick").model, scenarios, groups, device="cpu").eval()
    return images, model


def cache_of(model, images, reporter=None, build=True, **kw) -> StemCache:
    d = preset("quick").data
    args = dict(image_size=model.cfg.image_size, augment=Augment(d.flip, d.pad, d.random_erasing, d.grayscale),
                views=3, seed=(0, 1), budget_mb=1024, device=CPU, batch_size=32)
    cache = StemCache(model, images, **{**args, **kw})
    return cache.build(reporter) if build else cache


def test_features_from_the_cache_equal_the_uncached_models(small):
    """Every extraction of a round reads the cached plain maps; its features are the uncached
    model's within float16 rounding of the stem's output."""
    images, model = small
    cache = cache_of(model, images)
    assert cache.plain is not None and cache.plain.dtype == torch.float16
    assert cache.augmented is not None and cache.augmented.shape[:2] == (len(images), 3)
    plain = extract_features(model, images, cache_dir=None, key="k", device=CPU, batch_size=32)
    cached = extract_features(model, images, cache_dir=None, key="k", device=CPU, batch_size=32, stem=cache)
    np.testing.assert_array_equal(cached.ids, plain.ids)
    cos = (cached.feats * plain.feats).sum(axis=1)
    assert cos.min() > 0.9999, cos.min()
    np.testing.assert_allclose(cached.feats, plain.feats, atol=2e-3)
    np.testing.assert_allclose(cached.proj, plain.proj, atol=2e-3)


def test_the_frozen_prefix_is_the_first_part_of_the_forward_pass(small):
    images, model = small
    x = torch.randn(3, 3, 128, 64)
    s, g = torch.tensor([0, 0, 0]), torch.tensor([0, 1, 0])
    with torch.no_grad():
        whole = model.forward_image(x, s, g)
        split = model.forward_image(model.frozen_prefix(x), s, g, prefix=True)
    torch.testing.assert_close(split.pre, whole.pre)
    torch.testing.assert_close(split.proj, whole.proj)
    assert model.has_frozen_prefix
    tiny = build_model(preset("tiny").model, ["cross-camera"], ["all"], device="cpu")
    assert not tiny.has_frozen_prefix  # the ViT: every block trains, nothing to cache


def test_training_draws_are_keyed_by_epoch_seed_sample_and_draw(small):
    """A draw (view, erasure) depends on (epoch seed, sample, draw) only, as the augmentation did
    (docs/adr/0004); views are the pixel augmentation of CropTransform.pixels, erasing acts on the map."""
    images, model = small
    cache = cache_of(model, images)
    labels = np.arange(len(images)) % 10
    sampler = PKSampler(labels, 4, 2, batches=3, seed=5)

    def epoch(seed):
        return [(b.images.clone(), b.index.clone()) for b in cache.training_batches(images.id, labels, sampler, seed)]

    a, b, c = epoch(11), epoch(11), epoch(12)
    assert len(a) == 3 and all(x.shape == (8, 32, 16, 8) for x, _ in a)
    for (xa, ia), (xb, ib) in zip(a, b):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        torch.testing.assert_close(ia, ib)
    assert any(not torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))  # another epoch, other draws
    # Every map a batch holds is one of the crop's fixed views, possibly erased on the map.
    x, idx = a[0]
    for j, i in enumerate(idx.tolist()):
        views = cache.augmented[i].float()
        same = (views == x[j]).flatten(1).float().mean(1)
        assert same.max() > 0.5, same  # the chosen view, up to the erased cells
    # The views are CropTransform.pixels' augmentation: an augmentation added there is among them.
    grey = cache_of(model, images, augment=Augment(flip=True, pad=10, random_erasing=0.0, grayscale=1.0))
    from itkm_engine.data.imageio import load_rgb

    px = grey.view_pixels(0, 1, load_rgb(images.path[0]))
    raw = px * grey.view_tf.std + grey.view_tf.mean
    torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)


def test_the_budget_bounds_memory_and_a_100k_crop_workspace_keeps_only_what_fits(small):
    """A map is 8 KiB (32 x 16 x 8 float16): 1,000 crops take 8 MiB per view.  Over the budget
    the plain maps, then the augmented ones, are computed per batch instead: nothing is
    allocated, nothing is decoded up front."""
    images, model = small
    cache = cache_of(model, images)
    assert cache.map_bytes == 32 * 16 * 8 * 2
    assert cache.mb_per_1000() == pytest.approx(4 * 8.0, rel=0.03)
    assert cache.kept_mb == pytest.approx(len(images) * 4 * cache.map_bytes / 2**20)

    plain_only = cache_of(model, images, budget_mb=len(images) * 2.5 * cache.map_bytes / 2**20)
    assert plain_only.plain is not None and plain_only.augmented is None

    n = 100_000
    big = ImageTable(
        id=np.arange(n, dtype=np.int64), path=["/nonexistent.jpg"] * n, relpath=["x.jpg"] * n,
        camera=np.full(n, images.camera[0], dtype=object), scenario=np.full(n, images.scenario[0], dtype=object),
        group=np.full(n, images.group[0], dtype=object), width=np.full(n, 64, np.int32),
        height=np.full(n, 128, np.int32), timestamp=np.full(n, np.nan), person_id=np.full(n, -1, np.int64),
        status=np.full(n, "ok", dtype=object),
    )
    logs = []
    huge = cache_of(model, big, Reporter(on_log=lambda m: logs.append(m.text)), budget_mb=512, views=4)
    assert huge.plain is None and huge.augmented is None  # 100k x 8 KiB = 781 MiB > 512 MiB
    assert any("over data.stem_cache_mb" in t for t in logs)
    # 781 MiB of plain maps fit 2 GiB, 3.1 GiB of views more do not: only the plain ones are kept
    assert cache_of(model, big, budget_mb=2048, views=4, build=False).plan() == (True, False)
    assert cache_of(model, big, budget_mb=4096, views=4, build=False).plan() == (True, True)


@pytest.fixture
def two_torch_threads():
    """torch on two threads for one test (the suite's workers run it on one: tests/conftest.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_round_learns_the_same_whatever_the_budget(small_ws, tmp_path, two_torch_threads):
    """Kept or computed per batch, the maps are the same float16 values: the budget changes the
    cost of a round, not its result (CPU, same seed).  On two threads: on one, the stem's
    convolutions give batch-size-dependent roundings here, and the two rounds' Stage I losses part
    by ~0.5% (README Known limits)."""
    other = tmp_path / "other"
    shutil.copytree(small_ws, other)
    results = []
    for path, budget in ((small_ws, 1024), (other, 0)):
        cfg = short_quick(**{"data.stem_cache_mb": budget})
        with Workspace.open(path) as ws:
            train(ws, cfg, rounds=1)
            results.append((ws.epoch_log(1), load_checkpoint(ws.latest_checkpoint())["model"]["state_dict"]))
    (log_a, wa), (log_b, wb) = results
    for ea, eb in zip(log_a, log_b):
        for k in ("loss", "n_clusters"):
            assert ea["values"][k] == pytest.approx(eb["values"][k], rel=1e-3, abs=1e-4), (ea["stage"], k)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-3, atol=1e-4, msg=name)


def test_quick_round_cancelled_and_resumed_equals_the_uninterrupted_round(small_ws, tmp_path):
    """docs/adr/0004 with the stem cache: the resumed process builds its cache in a later epoch
    (the same maps; the global RNG untouched), so every epoch and the final weights match."""
    b_path = tmp_path / "b"
    shutil.copytree(small_ws, b_path)
    cfg = short_quick()
    with Workspace.open(small_ws) as ws:
        train(ws, cfg, rounds=1)
        log_a = ws.epoch_log(1)
        ckpt_a = load_checkpoint(ws.latest_checkpoint())

    token = CancelToken()

    def on_event(e):
        if e.stage == "stage1" and e.message.startswith("stage1 epoch 1/"):
            token.cancel()

    with Workspace.open(b_path) as ws:
        with pytest.raises(Cancelled):
            train(ws, cfg, rounds=1, reporter=Reporter(on_event, cancel=token))
        assert [e["stage"] for e in ws.epoch_log(1)] == ["stage1"]
        assert (ws.checkpoints_dir / PROGRESS_FILE).exists()
    with Workspace.open(b_path) as ws:
        logs = []
        train(ws, cfg, rounds=1, reporter=Reporter(on_log=logs.append))
        assert any("resuming round 1" in m.text for m in logs)
        assert any(m.text.startswith("stem cache:") for m in logs)  # rebuilt by the resumed process
        log_b = ws.epoch_log(1)
        ckpt_b = load_checkpoint(ws.latest_checkpoint())
    assert [(e["stage"], e["epoch"]) for e in log_a] == [(e["stage"], e["epoch"]) for e in log_b]
    for ea, eb in zip(log_a, log_b):
        for k in ("loss", "n_clusters", "n_outliers"):
            assert ea["values"][k] == pytest.approx(eb["values"][k], rel=1e-5, abs=1e-6), (ea["stage"], k)
    wa, wb = ckpt_a["model"]["state_dict"], ckpt_b["model"]["state_dict"]
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-5, atol=1e-6, msg=name)


def test_itkm_train_quick_says_what_it_cached_and_checks_the_settings(small_ws):
    """Through the real command: the round reports the cache, and bad cache settings are a
    one-line ConfigError before anything is written."""
    sets = [f"--set={k}={v}" for k, v in {
        "data.num_identities": 4, "data.num_instances": 2, "stage1.epochs": 1, "stage1.iters_per_epoch": 2,
        "stage2.epochs": 1, "stage3.epochs": 1, "stage3.iters_per_epoch": 2}.items()]
    res = cli_inproc("train", small_ws, "--preset", "quick", "--device", "cpu", *sets, expect=0)
    line = [ln for ln in res.text.splitlines() if "stem cache:" in ln]
    assert line and "plain + 4 augmented views" in line[0], res.text
    for bad in ("data.stem_cache_mb=-1", "data.fixed_views=-2", "data.fixed_views=1.5"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            apply_sets(preset("quick"), [bad])
