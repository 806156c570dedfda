"""DREAM / DREAM+: the k-means sampler, the bidirectional loss, cluster-centre init, and a smoke run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ddnb
from ddnb.data import Dataset
from ddnb.methods.dream import bidirectional_loss, encode_per_class, kmeans_init_indices, matched_parameters
from ddnb.models import get_model
from ddnb.sampling import (SAMPLER_SETTINGS, DreamSampler, RandomSampler, kmeans, kmeans_torch, make_sampler,
                           nearest_to_centres, representatives, sampler_from_settings)


class FlatEmbed(nn.Module):
    """A 'network' whose embedding is the flattened image: clustering then happens in pixel space."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def tiny_dataset(n_per_class: int = 30, classes: int = 2, seed: int = 0) -> Dataset:
    """Random 1x2x2 images, `classes` classes, class-sorted."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_per_class * classes, 1, 2, 2, generator=g)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return Dataset("tiny", x, y, x[:4], y[:4], [str(c) for c in range(classes)], (0.0,), (1.0,), "test")


def brute_min_distance(points: torch.Tensor, centre: torch.Tensor) -> float:
    """Smallest squared distance from `centre` to any point, by a Python loop in float64."""
    return min(float(((p - centre.double()) ** 2).sum()) for p in points.double())


def assert_nearest(chosen: list[int], class_idx: torch.Tensor, feats: torch.Tensor, centres: torch.Tensor) -> None:
    """Each chosen x_train index is (one of) the class points nearest its centre (ties allowed)."""
    where = {int(g): i for i, g in enumerate(class_idx)}
    assert len(chosen) == len(centres)
    for g, m in zip(chosen, centres):
        d = float(((feats[where[g]].double() - m.double()) ** 2).sum())
        assert d == pytest.approx(brute_min_distance(feats, m), abs=1e-5)


# ---------------------------------------------------------------- k-means and nearest points

def test_nearest_to_centres_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(40, 3, generator=g), torch.randn(5, 3, generator=g)
    got = nearest_to_centres(x, c, n=3)
    for j in range(5):
        order = sorted(range(40), key=lambda i: float(((x[i] - c[j]) ** 2).sum()))
        assert got[j].tolist() == order[:3]


def test_torch_kmeans_matches_sklearn_inertia_on_blobs():
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n_samples=600, centers=6, n_features=8, cluster_std=0.4, random_state=0)
    x = torch.tensor(x, dtype=torch.float32)
    ours = kmeans(x, 6, backend="torch", seed=0, init="k-means++")
    ref = kmeans(x, 6, backend="sklearn", seed=0, init="k-means++")
    assert ours.inertia == pytest.approx(ref.inertia, rel=0.01)
    assert ours.inertia == pytest.approx(float(((x - ours.centres[ours.labels]) ** 2).sum()), rel=1e-4)
    rand = kmeans_torch(x, 6, seed=0, init="random")  # DREAM's seeding: a valid partition with its inertia
    assert rand.inertia == pytest.approx(float(((x - rand.centres[rand.labels]) ** 2).sum()), rel=1e-4)
    assert rand.inertia >= ours.inertia * (1 - 1e-4)
    # every blob is one cluster: the partitions agree up to relabelling
    pairs = {(int(a), int(b)) for a, b in zip(ours.labels, ref.labels)}
    assert len(pairs) == 6


def test_kmeans_rejects_bad_k_and_backend():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="k=6"):
        kmeans(x, 6)
    with pytest.raises(ValueError, match="backend"):
        kmeans(x, 2, backend="faiss")


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_dream_sampler_picks_sample_nearest_each_centre(backend):
    data = tiny_dataset()
    sampler = DreamSampler(data, batch_size=4, interval=3, seed=7, backend=backend)
    sampler.bind(FlatEmbed())
    idx = sampler.select(1, 0)
    class_idx = data.class_indices()[1]
    feats = data.x_train[class_idx].flatten(1)
    # the same clustering, recomputed with the seed the sampler used for (class 1, block 0)
    seed = sampler.cluster_seed(1, 0)
    local = representatives(FlatEmbed(), data.x_train[class_idx], 4, 1, backend=backend, seed=seed)
    assert idx.tolist() == class_idx[local].tolist()
    centres = kmeans(feats, 4, backend=backend, seed=seed).centres
    assert_nearest(idx.tolist(), class_idx, feats, centres)
    assert set(idx.tolist()) <= set(class_idx.tolist())


def test_dream_sampler_reclusters_every_interval_and_restores_state():
    data = tiny_dataset()
    model = FlatEmbed()
    sampler = DreamSampler(data, batch_size=4, per_cluster=2, interval=3, seed=0)
    sampler.bind(model)
    first = sampler.select(0, 0).clone()
    assert first.numel() == 4
    assert torch.equal(sampler.select(0, 2), first)  # same block: no re-clustering
    calls = []
    sampler.recluster = lambda c, b: calls.append((c, b)) or first  # type: ignore[method-assign]
    sampler.select(0, 3)
    assert calls == [(0, 1)]
    fresh = DreamSampler(data, batch_size=4, per_cluster=2, interval=3, seed=0)
    fresh.load_state_dict(DreamSampler.state_dict(sampler))
    assert torch.equal(fresh.select(0, 1), first)  # restored selection, no model needed
    with pytest.raises(ValueError, match="bind"):
        fresh.select(1, 0)


def test_per_cluster_takes_n_nearest_of_each_centre():
    data = tiny_dataset()
    sampler = DreamSampler(data, batch_size=6, per_cluster=3, seed=0)
    sampler.bind(FlatEmbed())
    idx = sampler.select(0, 0)
    class_idx = data.class_indices()[0]
    feats = data.x_train[class_idx].flatten(1)
    centres = kmeans(feats, 2, seed=sampler.cluster_seed(0, 0)).centres
    for j, c in enumerate(centres):
        order = torch.argsort(((feats - c) ** 2).sum(1))[:3]
        assert idx[3 * j:3 * j + 3].tolist() == class_idx[order].tolist()


def test_sampler_input_errors():
    data = tiny_dataset()
    with pytest.raises(ValueError, match="multiple of per_cluster"):
        DreamSampler(data, batch_size=5, per_cluster=2)
    with pytest.raises(ValueError, match="sub-clusters"):
        DreamSampler(data, batch_size=31)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("herding", data, 4)
    dream = sampler_from_settings({**SAMPLER_SETTINGS, "sampler": "dream", "per_cluster": 2}, data, 4, seed=1)
    assert isinstance(dream, DreamSampler) and dream.k == 2 and dream.seed == 1
    assert isinstance(sampler_from_settings(SAMPLER_SETTINGS, data, 4), RandomSampler)
    rs = RandomSampler(data, 5, seed=3)
    assert torch.equal(rs.select(1, 4), rs.select(1, 4))
    assert set(rs.select(1, 4).tolist()) <= set(data.class_indices()[1].tolist())


# ---------------------------------------------------------------- the loss

def test_bidirectional_loss_is_gradient_term_plus_feature_term_by_hand():
    torch.manual_seed(0)
    net = get_model("convnet", 1, 3, 8, depth=2, width=4)
    real, syn = torch.randn(6, 1, 8, 8), torch.randn(4, 1, 8, 8, requires_grad=True)
    y_real, y_syn = torch.full((6,), 2), torch.full((4,), 2)
    convs = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert matched_parameters(net) == convs
    for metric, dist in (("mse", lambda a, b: ((a - b) ** 2).sum()), ("mae", lambda a, b: (a - b).abs().sum())):
        gr = torch.autograd.grad(F.cross_entropy(net(real), y_real), convs)
        gs = torch.autograd.grad(F.cross_entropy(net(syn), y_syn), convs, create_graph=True)
        grad_term = sum(dist(a, b) for a, b in zip(gr, gs))
        feat_term = dist(net.embed(real).mean(0), net.embed(syn).mean(0))
        loss, g_part, f_part = bidirectional_loss(net, real, syn, y_real, y_syn, metric=metric, feature_weight=0.5)
        assert float(g_part.detach()) == pytest.approx(float(grad_term.detach()), rel=1e-5)
        assert float(f_part.detach()) == pytest.approx(float(feat_term.detach()), rel=1e-5)
        assert float(loss.detach()) == pytest.approx(float((grad_term + 0.5 * feat_term).detach()), rel=1e-5)
        (want,) = torch.autograd.grad(grad_term + 0.5 * feat_term, syn)
        (got,) = torch.autograd.grad(loss, syn)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in net.parameters())


# ---------------------------------------------------------------- cluster-centre init

def test_kmeans_init_returns_real_images_nearest_the_centres():
    data = tiny_dataset(classes=3)
    idx = kmeans_init_indices(data, FlatEmbed(), 3, seed=5)
    assert idx.shape == (9,)
    for c, class_idx in enumerate(data.class_indices()):
        feats = data.x_train[class_idx].flatten(1)
        centres = kmeans(feats, 3, seed=5 * 1009 + c).centres
        assert_nearest(idx[3 * c:3 * c + 3].tolist(), class_idx, feats, centres)
    images = encode_per_class(data.x_train[idx], 3, 3, 1)
    assert torch.equal(images, data.x_train[idx])


def test_encode_per_class_factor_two_keeps_class_blocks():
    real = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(8, 1, 4, 4)  # 2 classes x ipc 1 x 4 tiles
    stored = encode_per_class(real, 2, 1, 2)
    assert stored.shape == (2, 1, 4, 4)
    # each stored image only holds (downsampled) pixels of its own class
    assert stored[0].max() < real[4].min() and stored[1].min() > real[3].max()


# ---------------------------------------------------------------- end to end

SMOKE = dict(iterations=1, inner_loops=1, batch_real=8, pool=32, warmup_data=64, net_data=32)


def test_dreamplus_smoke_on_digits_moves_images():
    from ddnb.methods import get_method, resolve_budget
    from ddnb.methods.dream import initial_images

    data = ddnb.load_dataset("digits")
    settings = resolve_budget(get_method("dream+"), "smoke", SMOKE)
    init, _ = initial_images(data, 1, settings, 0, torch.device("cpu"))  # the run's own start (seeded)
    syn, history = ddnb.distill("dream+", data, 1, budget="smoke", seed=0, device="cpu", progress=False, **SMOKE)
    assert history.iterations == 1 and np.isfinite(history.loss[0])
    assert syn.images.shape == init.shape == (10, 1, 8, 8) and syn.factor == 2
    assert not torch.allclose(syn.images, init)
    assert syn.provenance["method"] == "dream+" and syn.provenance["metric"] == "mae"
    # iterations=0 is the run's starting set (notebook 03 evaluates it as iteration 0 of Fig. 4)
    start, history0 = ddnb.distill("dream+", data, 1, budget="smoke", seed=0, device="cpu", progress=False,
                                   **{**SMOKE, "iterations": 0})
    assert history0.iterations == 0 and torch.equal(start.images, init)


def test_registered_variants_and_bad_settings():
    names = {m["name"] for m in ddnb.list_methods()}
    assert {"idc", "dream", "dream+"} <= names
    data = ddnb.load_dataset("digits")
    with pytest.raises(ValueError, match="sampler"):
        ddnb.distill("dream+", data, 1, budget="smoke", device="cpu", sampler="kcenter")
    with pytest.raises(ValueError, match="metric"):
        ddnb.distill("idc", data, 1, budget="smoke", device="cpu", metric="l2")

