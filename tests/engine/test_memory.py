"""ClusterMemory: Cluster Contrast's centroid memory, its loss and its momentum update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from itkm_engine.errors import ItkmError
from itkm_engine.memory import ClusterMemory, cluster_means

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _toy(n_clusters=5, per=6, dim=16, noise=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(n_clusters, dim, generator=g), dim=1)
    labels = torch.arange(n_clusters).repeat_interleave(per)
    feats = F.normalize(centers[labels] + noise * torch.randn(len(labels), dim, generator=g), dim=1)
    return feats, labels


def test_init_from_sets_normalised_means_and_ignores_outliers():
    feats, labels = _toy()
    labels = labels.clone()
    labels[[0, 7]] = -1
    mem = ClusterMemory(16, 5)
    mem.init_from(feats, labels)
    for c in range(5):
        expect = F.normalize(feats[labels == c].mean(0), dim=0)
        assert torch.allclose(mem.features[c], expect, atol=1e-6)
    assert torch.allclose(mem.features.norm(dim=1), torch.ones(5), atol=1e-6)


def test_memory_is_a_buffer_without_grad_and_in_state_dict():
    feats, labels = _toy()
    mem = ClusterMemory.from_features(feats, labels)
    assert mem.num_clusters == 5
    assert not mem.features.requires_grad
    assert list(dict(mem.named_parameters())) == []
    assert "features" in mem.state_dict()
    # A saved memory with a different cluster count loads into a fresh one (resized).
    other = ClusterMemory(16, 2)
    other.load_state_dict(mem.state_dict())
    assert other.num_clusters == 5
    assert torch.equal(other.features, mem.features)


@pytest.mark.parametrize("device", DEVICES)
def test_loss_is_cross_entropy_of_scaled_similarities(device):
    feats, labels = _toy()
    feats, labels = feats.to(device), labels.to(device)
    mem = ClusterMemory.from_features(feats, labels, temperature=0.05)
    assert mem.features.device.type == device
    f = feats[::3].clone().requires_grad_(True)
    y = labels[::3].clone()
    y[0] = -1
    loss = mem.loss(f, y)
    valid = y >= 0
    expect = F.cross_entropy(f[valid] @ mem.features.t() / 0.05, y[valid])
    assert torch.isfinite(loss)
    assert torch.allclose(loss, expect, atol=1e-5)
    loss.backward()
    assert f.grad is not None and torch.isfinite(f.grad).all()
    assert f.grad[0].abs().sum() == 0  # the ignored sample gets no gradient
    assert mem.features.grad is None


def test_loss_with_only_outliers_is_zero_and_backward_works():
    mem = ClusterMemory(4, 3)
    f = F.normalize(torch.randn(5, 4), dim=1).requires_grad_(True)
    loss = mem.loss(f, torch.full((5,), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(f.grad, torch.zeros_like(f))


def test_bad_labels_raise_itkm_error():
    mem = ClusterMemory(4, 3)
    f = F.normalize(torch.randn(2, 4), dim=1)
    with pytest.raises(ItkmError):
        mem.loss(f, torch.tensor([0, 3]))
    with pytest.raises(ItkmError):
        mem.loss(f, torch.tensor([0.0, 1.0]))
    with pytest.raises(ItkmError):
        mem.loss(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ItkmError):
        cluster_means(torch.randn(3, 4), np.array([0, 1, 5]), 3)


@pytest.mark.parametrize("device", DEVICES)
def test_update_follows_the_momentum_rule_sample_by_sample(device):
    torch.manual_seed(1)
    mem = ClusterMemory(8, 4, momentum=0.2).to(device)
    mem.features.copy_(F.normalize(torch.randn(4, 8), dim=1).to(device))
    feats = F.normalize(torch.randn(9, 8), dim=1).to(device)
    labels = torch.tensor([2, 0, 2, -1, 1, 2, 0, 3, 2], device=device)
    # Reference: Cluster Contrast's CM.backward loop.
    ref = mem.features.clone()
    for x, y in zip(feats, labels.tolist()):
        if y < 0:
            continue
        ref[y] = 0.2 * ref[y] + 0.8 * x
        ref[y] /= ref[y].norm()
    mem.update(feats, labels)
    assert torch.allclose(mem.features, ref, atol=1e-6)
    # One sample, by hand.
    before = mem.features[1].clone()
    f = F.normalize(torch.randn(1, 8), dim=1).to(device)
    mem.update(f, torch.tensor([1], device=device))
    hand = 0.2 * before + 0.8 * f[0]
    assert torch.allclose(mem.features[1], hand / hand.norm(), atol=1e-6)


def test_loss_falls_over_sgd_steps_on_a_toy_problem():
    torch.manual_seed(0)
    feats, labels = _toy(n_clusters=6, per=8, dim=16, noise=1.0, seed=3)
    raw = torch.nn.Parameter(feats.clone())
    opt = torch.optim.SGD([raw], lr=0.5)
    mem = ClusterMemory(16, 6, temperature=0.05, momentum=0.2)
    mem.init_from(F.normalize(raw.detach(), dim=1), labels)
    losses = []
    for step in range(20):
        idx = torch.randperm(len(labels))[:16]
        f = F.normalize(raw[idx], dim=1)
        loss = mem.loss(f, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        mem.update(f.detach(), labels[idx])
        losses.append(loss.item())
    full = mem.loss(F.normalize(raw.detach(), dim=1), labels).item()
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert full < losses[0]
