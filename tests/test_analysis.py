"""Analysis measurements on tiny inputs against brute force: distances, MMD, mid-model accuracy, panels,
and notebook 03's measurements of representative sampling (gradient norms, coverage, the sampler trace)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ddnb
from ddnb import analysis as A
from ddnb.analysis import BANDWIDTH_SCALES
from ddnb.experts import flatten_params
from ddnb.models import get_model


class Linear(nn.Module):
    """embed(x) = W flatten(x) (no bias), classifier on top: features that are easy to compute by hand."""

    def __init__(self, d_in: int, d: int, k: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(d, d_in, generator=g))
        self.classifier = nn.Linear(d, k)

    def embed(self, x):
        return x.flatten(1) @ self.w.T

    def forward(self, x):
        return self.classifier(self.embed(x))


def _brute_mmd(a: np.ndarray, b: np.ndarray, bandwidths) -> float:
    k = lambda u, v: sum(math.exp(-float(((u - v) ** 2).sum()) / s) for s in bandwidths)  # noqa: E731
    kaa = np.mean([k(u, v) for u in a for v in a])
    kbb = np.mean([k(u, v) for u in b for v in b])
    kab = np.mean([k(u, v) for u in a for v in b])
    return kaa + kbb - 2 * kab


def _brute_distance(w: np.ndarray, real: tuple, syn: tuple) -> tuple[float, float]:
    xr, yr = real[0].flatten(1).double().numpy(), real[1].numpy()
    xs, ys = syn[0].flatten(1).double().numpy(), syn[1].numpy()
    means, mmds = [], []
    for c in range(int(yr.max()) + 1):
        fr, fs = xr[yr == c] @ w.T, xs[ys == c] @ w.T
        means.append(float(((fr.mean(0) - fs.mean(0)) ** 2).sum()))
        d2 = [float(((u - v) ** 2).sum()) for i, u in enumerate(fr) for j, v in enumerate(fr) if i != j]
        bw = [float(np.median(d2)) * s for s in BANDWIDTH_SCALES]
        mmds.append(_brute_mmd(fr, fs, bw))
    return float(np.mean(means)), float(np.mean(mmds))


@pytest.fixture()
def tiny():
    g = torch.Generator().manual_seed(0)
    real = (torch.randn(12, 1, 2, 2, generator=g), torch.tensor([0, 1] * 6))
    syn = (torch.randn(6, 1, 2, 2, generator=g) + 0.5, torch.tensor([0, 0, 0, 1, 1, 1]))
    return real, syn


def test_distribution_distance_matches_brute_force(tiny):
    real, syn = tiny
    models = [Linear(4, 3, 2, seed) for seed in (1, 2)]
    table = A.distribution_distance(models, real, {"a": syn, "b": real}, max_real_per_class=None, device="cpu")
    assert list(table.columns) == ["checkpoint", "set", "mean_distance", "mmd"] and len(table) == 4
    for i, m in enumerate(models):
        want = _brute_distance(m.w.detach().double().numpy(), real, syn)
        row = table[(table.checkpoint == i) & (table.set == "a")].iloc[0]
        assert row.mean_distance == pytest.approx(want[0], rel=1e-5)
        assert row.mmd == pytest.approx(want[1], rel=1e-4, abs=1e-9)
        same = table[(table.checkpoint == i) & (table.set == "b")].iloc[0]
        assert same.mean_distance == pytest.approx(0, abs=1e-12) and same.mmd == pytest.approx(0, abs=1e-12)


def test_flat_checkpoints_equal_modules(tiny):
    real, syn = tiny
    models = [Linear(4, 3, 2, seed) for seed in (3, 4)]
    flats = [flatten_params(m) for m in models]
    by_module = A.distribution_distance(models, real, syn, max_real_per_class=None, device="cpu")
    by_flat = A.distribution_distance(flats, real, syn, template=Linear(4, 3, 2, 0), max_real_per_class=None,
                                      device="cpu")
    assert np.allclose(by_module[["mean_distance", "mmd"]].to_numpy(), by_flat[["mean_distance", "mmd"]].to_numpy())
    with pytest.raises(ValueError, match="template"):
        A.distribution_distance(flats, real, syn, device="cpu")


def test_subsampling_is_seeded_and_capped(tiny):
    real, _ = tiny
    a = A.subsample_per_class(*real, 2, 3, seed=5)
    b = A.subsample_per_class(*real, 2, 3, seed=5)
    assert [len(x) for x in a] == [3, 3] and all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="class 2 has no images"):
        A.subsample_per_class(*real, 3, None)


def _mlp_by_hand(flat: torch.Tensor, x: torch.Tensor, d_in: int, hidden: int, k: int) -> np.ndarray:
    """The ddnb MLP (fc_1, fc_2, classifier; ReLU) evaluated from a flat parameter vector with numpy."""
    v, o, shapes = flat.double().numpy(), 0, [(hidden, d_in), (hidden,), (hidden, hidden), (hidden,), (k, hidden), (k,)]
    ps = []
    for s in shapes:
        n = int(np.prod(s))
        ps.append(v[o:o + n].reshape(s))
        o += n
    h = np.maximum(x.flatten(1).double().numpy() @ ps[0].T + ps[1], 0)
    h = np.maximum(h @ ps[2].T + ps[3], 0)
    return (h @ ps[4].T + ps[5]).argmax(1)


@pytest.fixture()
def toy_dataset():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 1, 3, 3, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    return SimpleNamespace(x_train=x[:24], y_train=y[:24], x_test=x[24:], y_test=y[24:], image_shape=(1, 3, 3),
                           num_classes=2)


def test_mid_model_accuracy_matches_brute_force(toy_dataset):
    torch.manual_seed(0)
    init = flatten_params(get_model("mlp", 1, 2, 3))
    expert = flatten_params(get_model("mlp", 1, 2, 3)) * 3
    lambdas = [0.0, 0.3, 1.0]
    table = A.mid_model_accuracy(init, expert, lambdas, toy_dataset, arch="mlp", device="cpu")
    assert table["lambda"].tolist() == lambdas
    for lam, acc in zip(lambdas, table["accuracy"]):
        pred = _mlp_by_hand(lam * init + (1 - lam) * expert, toy_dataset.x_test, 9, 128, 2)
        assert acc == pytest.approx(100.0 * float((pred == toy_dataset.y_test.numpy()).mean()))


def test_expert_accuracy_on_counts_correct_predictions():
    net = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(2))  # predicts the larger coordinate
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    assert A.expert_accuracy_on(net, x, torch.tensor([0, 1, 1, 0])) == pytest.approx(50.0)
    soft = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert A.expert_accuracy_on(net, x, soft) == pytest.approx(100.0)


def test_lambda_panel_agrees_with_its_parts(toy_dataset):
    torch.manual_seed(0)
    init = flatten_params(get_model("mlp", 1, 2, 3))
    expert = flatten_params(get_model("mlp", 1, 2, 3))
    idx = torch.cat([torch.nonzero(toy_dataset.y_train == c).flatten()[:3] for c in (0, 1)])
    syn = (toy_dataset.x_train[idx] * 0.5, toy_dataset.y_train[idx])
    acc, dist = A.lambda_panel(0.4, init_params=init, expert_params=expert, dataset=toy_dataset, syn=syn,
                               arch="mlp", max_test=None, max_real_per_class=None, device="cpu")
    assert acc == pytest.approx(float(A.mid_model_accuracy(init, expert, [0.4], toy_dataset, arch="mlp",
                                                           device="cpu")["accuracy"][0]))
    net = get_model("mlp", 1, 2, 3)
    torch.nn.utils.vector_to_parameters(0.4 * init + 0.6 * expert, net.parameters())
    want = A.distribution_distance(net, toy_dataset, syn, max_real_per_class=None, device="cpu")
    assert dist == pytest.approx(float(want["mean_distance"][0]))
    _, both = A.lambda_panel(0.4, init_params=init, expert_params=expert, dataset=toy_dataset,
                             syn={"a": syn, "b": syn}, arch="mlp", max_test=None, max_real_per_class=None,
                             device="cpu")
    assert set(both) == {"a", "b"} and both["a"] == pytest.approx(dist)


def test_tsne_embedding_has_one_row_per_point(toy_dataset):
    model = Linear(9, 4, 2, 0)
    table = A.tsne_embedding(model, {"real": toy_dataset, "syn": (toy_dataset.x_test, toy_dataset.y_test)},
                             max_per_class=5, perplexity=5, device="cpu")
    assert len(table) == 20 and set(table["set"]) == {"real", "syn"} and np.isfinite(table[["x", "y"]]).all().all()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="no checkpoints given"):
        A.distribution_distance([], (torch.zeros(2, 1, 2, 2), torch.zeros(2).long()), (torch.zeros(2, 1, 2, 2),
                                                                                       torch.zeros(2).long()))
    with pytest.raises(ValueError, match="expected an \\(images, labels\\) pair"):
        A.as_xy(torch.zeros(3))


# ---------------------------------------------------------------- representative sampling (notebook 03)

def test_per_sample_grad_norms_match_a_loop_of_autograd():
    torch.manual_seed(0)
    net = get_model("convnet", 1, 3, 8, depth=1, width=4)
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 1, 0])
    got = A.per_sample_grad_norms(net, x, y, chunk=2)
    for i in range(5):
        grads = torch.autograd.grad(F.cross_entropy(net(x[i:i + 1]), y[i:i + 1]), list(net.parameters()))
        assert float(got[i]) == pytest.approx(float(torch.sqrt(sum((g ** 2).sum() for g in grads))), rel=1e-4)


def test_centre_boundary_split_and_coverage_by_hand():
    feats = torch.tensor([[0.0], [1.0], [-1.0], [10.0], [-10.0], [0.5], [-0.5], [0.0]])  # mean 0
    centre, boundary = A.centre_boundary_split(feats, frac=0.25)
    assert sorted(centre.tolist()) == [0, 7] and sorted(boundary.tolist()) == [3, 4]
    real = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    syn = torch.tensor([[0.0, 0.0], [6.0, 8.0]])
    assert A.coverage(real, syn) == pytest.approx((0 + 5 + 0) / 3)
    with pytest.raises(ValueError, match="frac"):
        A.centre_boundary_split(feats, frac=0.9)


def test_class_coverages_per_class_by_hand():
    class Flat(nn.Module):
        def embed(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

    pool = SimpleNamespace(x_train=torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]]), y_train=torch.tensor([0, 0, 1]),
                           num_classes=2)
    syn = SimpleNamespace(decoded=lambda: (torch.tensor([[0.0, 0.0], [6.0, 8.0]]), torch.tensor([0, 1])))
    assert A.class_coverages(Flat(), pool, syn) == pytest.approx([(0 + 5) / 2, 0.0])
    assert A.class_coverage(Flat(), pool, syn) == pytest.approx(1.25)


def test_iterations_to_reach_and_matching_terms():
    evals = [{"iteration": 4, "mean": 60.0}, {"iteration": 2, "mean": 55.0}, {"iteration": 6, "mean": 59.0}]
    assert A.iterations_to_reach(evals, 55.0) == 2
    assert A.iterations_to_reach(evals, 59.5) == 4
    assert A.iterations_to_reach(evals, 70.0) is None
    rec = A.MatchingTerms()
    rec(0, {"grad_term": 2.0, "feature_term": 0.5})
    assert rec.grad == [2.0] and rec.feature == [0.5]


def test_sampler_trace_on_digits_records_batches_and_mmd():
    data = ddnb.load_dataset("digits")
    trace = A.sampler_trace(data, steps=2, batch_size=4, interval=2, pool=12, warmup_data=32, net_data=16, device="cpu")
    assert trace.mmd["dream"].shape == (2, 10) and np.all(trace.mmd["random"] >= -1e-9)
    assert torch.equal(trace.selections["dream"][0], trace.selections["dream"][1])  # one clustering block
    for c in range(10):  # every batch lies inside its class's pool
        assert set(trace.selections["dream"][1, c].tolist()) <= set(trace.pool.class_indices()[c].tolist())
    groups = A.gradient_norm_groups(trace, classes=[0, 1])
    assert groups["centre"].shape == (6,) and groups["dream"].shape == (8,)
