"""Losses: supervised image<->text contrast, i2t cross-entropy, separation hinge, instance InfoNCE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from itkm_engine.errors import ItkmError
from itkm_engine.losses import (
    i2t_cross_entropy,
    instance_pair_loss,
    multi_scenario_separation_loss,
    pairs_in_batch,
    supcon_i2t,
    supcon_t2i,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _norm(x):
    return F.normalize(x, dim=1)


def _reference_supcon(anchor, contrast, labels, scale):
    """CLIP-ReID's SupConLoss, written as a plain loop."""
    total = 0.0
    for a in range(anchor.shape[0]):
        logits = scale * contrast @ anchor[a]
        log_prob = logits - torch.logsumexp(logits, 0)
        pos = labels == labels[a]
        total += -(log_prob[pos].sum() / pos.sum())
    return total / anchor.shape[0]


# -- supervised contrast -------------------------------------------------------------------
def test_supcon_matches_clip_reid_reference():
    g = torch.Generator().manual_seed(0)
    img = _norm(torch.randn(8, 12, generator=g))
    txt = _norm(torch.randn(8, 12, generator=g))
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    assert torch.allclose(supcon_i2t(img, txt, labels, 10.0), _reference_supcon(img, txt, labels, 10.0), atol=1e-5)
    assert torch.allclose(supcon_t2i(img, txt, labels, 10.0), _reference_supcon(txt, img, labels, 10.0), atol=1e-5)


def test_supcon_ignores_unlabelled_anchors_and_accepts_tensor_scale():
    g = torch.Generator().manual_seed(1)
    img = _norm(torch.randn(6, 8, generator=g))
    txt = _norm(torch.randn(6, 8, generator=g))
    labels = torch.tensor([0, 0, 1, 1, -1, -1])
    scale = torch.tensor(100.0).log().exp()
    loss = supcon_i2t(img, txt, labels, scale)
    # Only the 4 labelled anchors count; -1 texts stay negatives in the denominator.
    expect = 0.0
    for a in range(4):
        logits = scale * txt @ img[a]
        lp = logits - torch.logsumexp(logits, 0)
        pos = labels == labels[a]
        expect += -(lp[pos].mean())
    assert torch.allclose(loss, expect / 4, atol=1e-4)
    none = supcon_i2t(img, txt, torch.full((6,), -1), scale)
    assert none.item() == 0.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("direction", ["i2t", "t2i"])
def test_supcon_falls_when_optimising_images_toward_texts(device, direction):
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(4).to(device)
    txt = _norm(torch.randn(4, 16))[labels.cpu()].to(device)
    raw = torch.nn.Parameter(torch.randn(16, 16, device=device))
    opt = torch.optim.Adam([raw], lr=0.05)
    fn = supcon_i2t if direction == "i2t" else supcon_t2i
    losses = []
    for _ in range(30):
        loss = fn(_norm(raw), txt, labels, 20.0)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_i2t_cross_entropy_matches_definition_and_decreases():
    torch.manual_seed(0)
    anchors = _norm(torch.randn(5, 16))
    labels = torch.tensor([0, 1, 2, 3, 4, -1, 2, 0])
    raw = torch.nn.Parameter(torch.randn(8, 16))
    loss = i2t_cross_entropy(_norm(raw), anchors, labels, 10.0)
    valid = labels >= 0
    expect = F.cross_entropy(10.0 * _norm(raw)[valid] @ anchors.t(), labels[valid])
    assert torch.allclose(loss, expect, atol=1e-6)
    opt = torch.optim.SGD([raw], lr=1.0)
    first = loss.item()
    for _ in range(20):
        loss = i2t_cross_entropy(_norm(raw), anchors, labels, 10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert i2t_cross_entropy(_norm(raw), anchors, labels, 10.0).item() < 0.5 * first
    assert raw.grad[5].abs().sum() == 0  # the unlabelled image is not trained
    with pytest.raises(ItkmError):
        i2t_cross_entropy(_norm(raw), anchors, torch.tensor([0, 1, 2, 3, 4, 5, 0, 0]), 10.0)


# -- separation ----------------------------------------------------------------------------
def test_separation_is_zero_when_scenarios_are_far_apart():
    text = torch.eye(6, 8)  # orthogonal: every cosine 0 < margin
    scen = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = multi_scenario_separation_loss(text, scen, margin=0.2)
    assert loss.item() == 0.0
    # Same-scenario pairs may be close: they are not this loss's business.
    text2 = torch.eye(6, 8)
    text2[1] = text2[0]
    assert multi_scenario_separation_loss(text2, scen, 0.2).item() == 0.0


def test_separation_matches_the_formula_when_close():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 16, generator=g)
    text = base + 0.3 * torch.randn(6, 16, generator=g)  # all similar
    scen = np.array([0, 0, 1, 1, 1, 2])
    loss = multi_scenario_separation_loss(text, scen, margin=0.2)
    t = _norm(text)
    terms = [
        max(0.0, float(t[i] @ t[j]) - 0.2)
        for i in range(6)
        for j in range(6)
        if scen[i] != scen[j]
    ]
    assert loss.item() > 0
    assert loss.item() == pytest.approx(float(np.mean(terms)), abs=1e-6)


def test_separation_gradient_pushes_scenarios_apart():
    torch.manual_seed(0)
    raw = torch.nn.Parameter(_norm(torch.randn(1, 16) + 0.2 * torch.randn(8, 16)))
    scen = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    cross = scen[:, None] != scen[None, :]

    def mean_cross_cos():
        t = _norm(raw.detach())
        return (t @ t.t())[cross].mean().item()

    before = mean_cross_cos()
    # The first gradient step alone lowers every cross-scenario cosine.
    loss = multi_scenario_separation_loss(raw, scen, 0.2)
    loss.backward()
    with torch.no_grad():
        t0 = _norm(raw)
        t1 = _norm(raw - 0.1 * raw.grad)
        assert ((t1 @ t1.t()) < (t0 @ t0.t()) - 1e-4)[cross].all()
    raw.grad = None
    opt = torch.optim.Adam([raw], lr=0.05)
    for _ in range(40):
        loss = multi_scenario_separation_loss(raw, scen, 0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert mean_cross_cos() < before - 0.3
    assert multi_scenario_separation_loss(raw, scen, 0.2).item() < 0.05


def test_separation_single_scenario_is_zero_not_nan_and_backward_works():
    raw = torch.nn.Parameter(torch.ones(4, 8))
    loss = multi_scenario_separation_loss(raw, torch.zeros(4, dtype=torch.long), 0.2)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(raw.grad).all() and raw.grad.abs().sum() == 0
    one = torch.nn.Parameter(torch.ones(1, 8))
    assert multi_scenario_separation_loss(one, torch.zeros(1, dtype=torch.long)).item() == 0.0


def test_separation_chunking_gives_the_same_loss_and_gradient():
    g = torch.Generator().manual_seed(2)
    raw = torch.randn(1, 32, generator=g) + 0.5 * torch.randn(300, 32, generator=g)
    scen = torch.randint(0, 3, (300,), generator=g)
    a = raw.clone().requires_grad_(True)
    b = raw.clone().requires_grad_(True)
    la = multi_scenario_separation_loss(a, scen, 0.2, chunk_size=4096)
    lb = multi_scenario_separation_loss(b, scen, 0.2, chunk_size=37)
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb, atol=1e-6)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


# -- instance pairs ------------------------------------------------------------------------
def test_instance_loss_matches_symmetric_infonce():
    g = torch.Generator().manual_seed(0)
    f = _norm(torch.randn(6, 8, generator=g))
    pairs = torch.tensor([[0, 3], [1, 4]])
    loss = instance_pair_loss(f, pairs, temperature=0.1)
    terms = []
    for i, j in [(0, 3), (3, 0), (1, 4), (4, 1)]:
        logits = f[i] @ f.t() / 0.1
        others = [k for k in range(6) if k != i]
        terms.append(-(logits[j] - torch.logsumexp(logits[others], 0)))
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)


def test_instance_loss_labels_remove_same_cluster_negatives():
    g = torch.Generator().manual_seed(0)
    f = _norm(torch.randn(6, 8, generator=g))
    labels = torch.tensor([0, 0, 1, 2, 2, 3])
    loss = instance_pair_loss(f, torch.tensor([[0, 3]]), 0.1, labels=labels)
    terms = []
    for i, j, others in [(0, 3, [2, 3, 4, 5]), (3, 0, [0, 1, 2, 5])]:
        logits = f[i] @ f.t() / 0.1
        terms.append(-(logits[j] - torch.logsumexp(logits[others], 0)))
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)


def test_instance_loss_falls_when_optimised():
    torch.manual_seed(0)
    raw = torch.nn.Parameter(torch.randn(12, 16))
    pairs = torch.tensor([[0, 6], [1, 7], [2, 8], [3, 9]])
    opt = torch.optim.SGD([raw], lr=0.5)
    losses = []
    for _ in range(25):
        loss = instance_pair_loss(_norm(raw), pairs, 0.05)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    f = _norm(raw.detach())
    sim = f @ f.t()
    sim.fill_diagonal_(-2.0)
    nearest = sim.argmax(dim=1)
    assert torch.equal(nearest[pairs[:, 0]], pairs[:, 1])  # each anchor's nearest is its partner
    assert torch.equal(nearest[pairs[:, 1]], pairs[:, 0])


def test_instance_loss_without_pairs_is_zero_with_graph():
    raw = torch.nn.Parameter(torch.randn(4, 8))
    for empty in (torch.zeros(0, 2, dtype=torch.long), np.zeros((0, 2), dtype=np.int64)):
        loss = instance_pair_loss(_norm(raw), empty)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert raw.grad.abs().sum() == 0
    with pytest.raises(ItkmError):
        instance_pair_loss(_norm(raw), torch.tensor([[0, 4]]))
    with pytest.raises(ItkmError):
        instance_pair_loss(_norm(raw), torch.tensor([[1, 1]]))


def test_pairs_in_batch_maps_dataset_pairs_to_positions():
    batch_ids = torch.tensor([10, 42, 7, 99, 42])
    pairs = np.array([[10, 99], [7, 5], [42, 7], [3, 4], [99, 10]])
    out = pairs_in_batch(pairs, batch_ids)
    assert out.dtype == torch.long
    assert out.tolist() == [[0, 3], [1, 2], [3, 0]]
    assert pairs_in_batch(np.zeros((0, 2), dtype=np.int64), batch_ids).shape == (0, 2)
