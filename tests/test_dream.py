"""DREAM / DREAM+: the k-means sampler, the bidirectional loss, cluster-centre init, and a smoke run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ddnb
from ddnb.data import Dataset
from ddnb.methods.base import encode_per_class
from ddnb.methods.dream import bidirectional_loss, kmeans_init_indices, matched_parameters
from ddnb.models import get_model
from ddnb.sampling import (SAMPLER_SETTINGS, DreamSampler, RandomSampler, kmeans, kmeans_torch, make_sampler,
                           nearest_to_centres)


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


def blob_dataset(classes: int = 2, blobs: int = 2, per_blob: int = 12, seed: int = 0) -> tuple[Dataset, torch.Tensor]:
    """1x2x2 images: each class is `blobs` tight, far-apart blobs (std 1, centres 40 apart), shuffled.

    Every Lloyd run with k = blobs from distinct data points ends with one cluster per blob, whatever
    its seed, so the k-means centres are the blob means: a reference that needs no k-means at all.
    Returns the dataset and the blob of every training image.
    """
    g = torch.Generator().manual_seed(seed)
    offsets = 20.0 * torch.tensor([[1.0, 1.0, -1.0, 1.0], [-1.0, -1.0, 1.0, -1.0], [1.0, -1.0, 1.0, 1.0]])[:blobs]
    xs, ys, bs = [], [], []
    for c in range(classes):
        pts = torch.cat([offsets[b] + torch.randn(per_blob, 4, generator=g) for b in range(blobs)])
        blob = torch.arange(blobs).repeat_interleave(per_blob)
        perm = torch.randperm(len(pts), generator=g)  # blob members are not contiguous in x_train
        xs.append(pts[perm].reshape(-1, 1, 2, 2))
        bs.append(blob[perm])
        ys.append(torch.full((len(pts),), c))
    x, y = torch.cat(xs), torch.cat(ys)
    data = Dataset("blobs", x, y, x[:4], y[:4], [str(c) for c in range(classes)], (0.0,), (1.0,), "test")
    return data, torch.cat(bs)


def nearest_of_each_blob(data: Dataset, blob: torch.Tensor, cls: int, n: int) -> set[tuple[int, ...]]:
    """Brute force in float64: per blob of class `cls`, the x_train indices of its n points nearest the blob mean."""
    out = set()
    members = [i for i in range(len(data.y_train)) if int(data.y_train[i]) == cls]
    for b in sorted({int(blob[i]) for i in members}):
        pts = [i for i in members if int(blob[i]) == b]
        mean = sum(data.x_train[i].double().flatten() for i in pts) / len(pts)
        dist = sorted((float(((data.x_train[i].double().flatten() - mean) ** 2).sum()), i) for i in pts)
        assert dist[n][0] - dist[n - 1][0] > 1e-4  # well defined in float32 too: no near tie at the cut
        out.add(tuple(i for _, i in dist[:n]))
    return out


def centre_groups(idx: torch.Tensor, n: int) -> set[tuple[int, ...]]:
    """A centre-major batch (n per centre, nearest first) as a set of per-centre tuples (centre order is free)."""
    flat = idx.tolist()
    return {tuple(flat[j:j + n]) for j in range(0, len(flat), n)}


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
    with pytest.raises(ValueError, match=r"k \(clusters\) must be an int >= 1 and <= 5, got 6"):
        kmeans(x, 6)
    with pytest.raises(ValueError, match="backend"):
        kmeans(x, 2, backend="faiss")


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_dream_sampler_picks_sample_nearest_each_centre(backend):
    data, blob = blob_dataset()
    for seed in (7, 8):  # the clustering's seed changes nothing on well-separated blobs
        sampler = DreamSampler(data, batch_size=2, interval=3, seed=seed, backend=backend)
        sampler.bind(FlatEmbed())
        for cls in (0, 1):
            idx = sampler.select(cls, 0)
            assert centre_groups(idx, 1) == nearest_of_each_blob(data, blob, cls, 1)
            assert centre_groups(sampler.select(cls, 3), 1) == centre_groups(idx, 1)  # next block: same blobs


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
    data, blob = blob_dataset()
    sampler = DreamSampler(data, batch_size=6, per_cluster=3, seed=0)
    sampler.bind(FlatEmbed())
    for cls in (0, 1):
        idx = sampler.select(cls, 0)
        assert idx.numel() == 6 and centre_groups(idx, 3) == nearest_of_each_blob(data, blob, cls, 3)


def test_sampler_input_errors():
    data = tiny_dataset()
    with pytest.raises(ValueError, match="multiple of per_cluster"):
        DreamSampler(data, batch_size=5, per_cluster=2)
    with pytest.raises(ValueError, match="sub-clusters"):
        DreamSampler(data, batch_size=31)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler({**SAMPLER_SETTINGS, "sampler": "herding"}, data, 4)
    dream = make_sampler({**SAMPLER_SETTINGS, "sampler": "dream", "per_cluster": 2}, data, 4, seed=1)
    assert isinstance(dream, DreamSampler) and dream.k == 2 and dream.seed == 1
    assert isinstance(make_sampler(SAMPLER_SETTINGS, data, 4), RandomSampler)
    rs = RandomSampler(data, 5, seed=3)
    assert torch.equal(rs.select(1, 4), rs.select(1, 4))
    assert set(rs.select(1, 4).tolist()) <= set(data.class_indices()[1].tolist())


# ---------------------------------------------------------------- the loss

def _reference_idc_loss(net: nn.Module, real: torch.Tensor, syn: torch.Tensor, cls: int, metric: str,
                        feature_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IDC's matching loss of one class (002 Eq. 2a; DREAM+ adds Eq. 2b), written out sample by sample.

    The gradient of the batch-mean cross-entropy w.r.t. each conv weight is the mean of the
    per-sample gradients (one autograd call per image, unlike the batched loss under test); D is
    the summed squared ("mse") or absolute ("mae") difference over every entry; the feature
    term is D between the batch means of the embeddings. Only syn carries a graph.
    """
    convs = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)]  # no bias, norm or classifier

    def mean_ce_grads(x: torch.Tensor, graph: bool) -> list[torch.Tensor]:
        total = [torch.zeros_like(w) for w in convs]
        for i in range(x.shape[0]):
            ce = -torch.log_softmax(net(x[i:i + 1]), dim=1)[0, cls]
            for t, g in zip(total, torch.autograd.grad(ce, convs, create_graph=graph)):
                t += g
        return [t / x.shape[0] for t in total]

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = (a - b).flatten()
        return (diff * diff).sum() if metric == "mse" else diff.abs().sum()

    g_real = [g.detach() for g in mean_ce_grads(real, graph=False)]
    g_syn = mean_ce_grads(syn, graph=True)
    grad_term = sum(dist(r, s) for r, s in zip(g_real, g_syn))
    feat_term = dist(net.embed(real).detach().mean(0), net.embed(syn).mean(0))
    return grad_term + feature_weight * feat_term, grad_term, feat_term


@pytest.mark.parametrize("metric", ["mse", "mae"])
@pytest.mark.parametrize("feature_weight", [0.0, 1.0, 0.5])  # 0: IDC / DREAM; > 0: DREAM+
def test_bidirectional_loss_and_its_image_gradient_match_a_plain_reference(metric, feature_weight):
    torch.manual_seed(0)
    net = get_model("convnet", 1, 3, 8, depth=2, width=4).double()  # float64: finite differences below
    g = torch.Generator().manual_seed(1)
    real = torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64)
    syn = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64).requires_grad_(True)
    y_real, y_syn = torch.full((5,), 2), torch.full((3,), 2)
    loss, g_part, f_part = bidirectional_loss(net, real, syn, y_real, y_syn, metric=metric,
                                              feature_weight=feature_weight)
    ref, ref_g, ref_f = _reference_idc_loss(net, real, syn, 2, metric, feature_weight)
    for ours, theirs in ((g_part, ref_g), (f_part, ref_f), (loss, ref)):
        assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-9)
    assert float(ref_g.detach()) > 0 and float(ref_f.detach()) > 0
    (got,) = torch.autograd.grad(loss, syn)
    (want,) = torch.autograd.grad(ref, syn)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)
    assert all(p.grad is None for p in net.parameters())  # the network's own gradients stay untouched
    # and the gradient is the loss's slope: central differences on a few pixels, no autograd
    eps = 1e-6
    for pos in [(0, 0, 0, 0), (1, 0, 3, 4), (2, 0, 7, 2), (2, 0, 5, 5)]:
        bumped = []
        for sign in (1, -1):
            x = syn.detach().clone()
            x[pos] += sign * eps
            bumped.append(float(bidirectional_loss(net, real, x.requires_grad_(True), y_real, y_syn, metric=metric,
                                                   feature_weight=feature_weight)[0].detach()))
        assert (bumped[0] - bumped[1]) / (2 * eps) == pytest.approx(float(got[pos]), rel=1e-4, abs=1e-8)


def test_bidirectional_loss_is_zero_when_the_synthetic_batch_is_the_real_one():
    torch.manual_seed(0)
    net = get_model("convnet", 1, 3, 8, depth=2, width=4)
    real = torch.randn(4, 1, 8, 8)
    syn = real.clone().requires_grad_(True)
    y = torch.full((4,), 1)
    convs = [m.weight for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert matched_parameters(net) == convs  # conv weights only: no bias, norm or classifier
    loss, g_part, f_part = bidirectional_loss(net, real, syn, y, y, metric="mse", feature_weight=1.0)
    assert float(g_part.detach()) == pytest.approx(0.0, abs=1e-10)
    assert float(f_part.detach()) == pytest.approx(0.0, abs=1e-10)
    (grad,) = torch.autograd.grad(loss, syn)
    assert float(grad.abs().max()) < 1e-6  # a minimum of the matching loss


# ---------------------------------------------------------------- cluster-centre init

@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_kmeans_init_returns_real_images_nearest_the_centres(backend):
    data, blob = blob_dataset(classes=3)
    for seed in (5, 6):
        idx = kmeans_init_indices(data, FlatEmbed(), 2, backend=backend, seed=seed)
        assert idx.shape == (6,)
        for c in range(3):  # class c's two images: the one nearest each of its blobs' means
            assert centre_groups(idx[2 * c:2 * c + 2], 1) == nearest_of_each_blob(data, blob, c, 1)
    images = encode_per_class(data.x_train[idx], 3, 2, 1)
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


def test_budgets_follow_the_official_code():
    from ddnb.methods.dream import BUDGETS

    for budget in ("smoke", "cpu", "paper"):  # only DREAM+ warms its network up before matching
        assert BUDGETS["idc"][budget]["warmup_data"] == 0 and BUDGETS["dream"][budget]["warmup_data"] == 0
        assert BUDGETS["dream+"][budget]["warmup_data"] != 0
        assert BUDGETS["idc"][budget]["net_batch"] == 64  # IDC's loader batch; DREAM's is 128
        assert BUDGETS["dream"][budget]["net_batch"] == BUDGETS["dream+"][budget]["net_batch"] == 128
        assert all(BUDGETS[v][budget]["eval_protocol"] == "idc" for v in BUDGETS)
    assert BUDGETS["dream+"]["paper"]["warmup_data"] is None  # one epoch of the whole training set
    assert BUDGETS["dream"]["paper"]["eval_epochs"] == 1000 and BUDGETS["dream"]["cpu"]["eval_epochs"] == 120
    assert BUDGETS["idc"]["paper"]["aug"] == "idc:color_crop_cutout"
    with pytest.raises(ValueError, match="warmup_data"):
        ddnb.distill("dream", ddnb.load_dataset("digits"), 1, budget="smoke", warmup_data=-1)


def test_image_lr_size_scaling_uses_base_28_for_mnist_like_data():
    from ddnb.methods.dream import resolve_lr_img

    assert resolve_lr_img(None, "mae", 10, 28, "fashion_mnist") == pytest.approx(1e-4)  # (28/28)^2
    assert resolve_lr_img(None, "mae", 20, 8, "digits") == pytest.approx(1e-4 * 2 * (8 / 28) ** 2)
    assert resolve_lr_img(None, "mse", 10, 32, "cifar10") == pytest.approx(5e-3)  # (32/32)^2
    assert resolve_lr_img(None, "mse", 1, 64, "tiny") == pytest.approx(5e-4 * 4)
    assert resolve_lr_img(0.3, "mse", 1, 64, "tiny") == 0.3


@pytest.mark.parametrize("variant, warmup, batch", [("idc", 0, 64), ("dream", 0, 128), ("dream+", 128, 128)])
def test_loop_warms_up_only_dreamplus_steps_in_pixel_units_and_carries_idc_protocol(monkeypatch, variant, warmup,
                                                                                    batch):
    import ddnb.methods.dream as D

    calls, hooks = [], []
    real_train, real_hook = D.train_on_real, D.pixel_unit_hook
    monkeypatch.setattr(D, "train_on_real", lambda net, opt, data, n, b, *a: calls.append((n, b)) or
                        real_train(net, opt, data, n, b, *a))
    monkeypatch.setattr(D, "pixel_unit_hook", lambda *a: hooks.append(a) or real_hook(*a))
    data = ddnb.load_dataset("digits")
    syn, _ = ddnb.distill(variant, data, 1, budget="smoke", seed=0, device="cpu", progress=False, iterations=1,
                          init="real")
    assert calls == [(warmup, batch), (64, batch)]  # warm-up (0: none), then the inner loop's net_data
    assert len(hooks) == 1
    assert syn.eval_protocol == {"name": "idc", "epochs": 4}


def test_train_on_real_with_zero_images_trains_and_draws_nothing():
    from ddnb.methods.dream import network_and_optimizer, train_on_real

    data = ddnb.load_dataset("digits")
    net, opt = network_and_optimizer("mlp", data, dict(lr_net=0.1, momentum_net=0.9, weight_decay_net=0.0), "cpu")
    before = [p.detach().clone() for p in net.parameters()]
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    train_on_real(net, opt, data, 0, 64, 0.5, g)
    assert torch.equal(g.get_state(), state) and all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.parametrize("curve_epochs, expected", [(None, 4), (3, 3)])
def test_in_loop_evaluations_train_curve_epochs_and_the_set_keeps_its_protocol(monkeypatch, curve_epochs, expected):
    import ddnb.train as T

    seen, real_eval = [], T.evaluate_synset

    def spy(syn, data, **kw):
        result = real_eval(syn, data, **kw)
        seen.append(result.protocol)
        return result

    monkeypatch.setattr(T, "evaluate_synset", spy)
    data = ddnb.load_dataset("digits")
    syn, hist = ddnb.distill("idc", data, 1, budget="smoke", seed=0, device="cpu", progress=False, iterations=1,
                             init="real", eval_every=1, curve_epochs=curve_epochs)
    assert len(hist.evals) == 1 and [(p["name"], p["epochs"]) for p in seen] == [("idc", expected)]
    assert syn.eval_protocol == {"name": "idc", "epochs": 4}  # what the set carries: the budget's eval_epochs
