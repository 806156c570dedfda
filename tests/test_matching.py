"""Matching losses checked against independent computations: brute-force kernel sums, the DC
reference distance worked by hand, and the trajectory formula on hand-picked vectors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ddnb.matching import calibration_loss, gradient_distance, mean_feature_loss, mmd2, trajectory_loss


def _brute_mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths: list[float], unbiased: bool) -> float:
    """MMD^2 by explicit double loops over sample pairs (python floats, no vectorization)."""
    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        d2 = float(((a - b) ** 2).sum())
        return sum(math.exp(-d2 / bw) for bw in bandwidths)

    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if not (unbiased and i == j))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if not (unbiased and i == j))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    nxx, nyy = (n * (n - 1), m * (m - 1)) if unbiased else (n * n, m * m)
    return sxx / nxx + syy / nyy - 2 * sxy / (n * m)


@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd2_matches_double_loop(unbiased: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64) + 0.7
    bws = [0.5, 2.0, 8.0]
    got = float(mmd2(x, y, bandwidths=bws, unbiased=unbiased))
    assert got == pytest.approx(_brute_mmd2(x, y, bws, unbiased), rel=1e-9, abs=1e-12)


def test_mmd2_median_heuristic_bandwidths() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, generator=g, dtype=torch.float64)
    y = torch.randn(3, 2, generator=g, dtype=torch.float64) * 2
    # every squared distance of the three kernel matrices (diagonal zeros included), lower median
    pts_pairs = [(a, b) for a in x for b in x] + [(a, b) for a in y for b in y] + [(a, b) for a in x for b in y]
    d2 = sorted(float(((a - b) ** 2).sum()) for a, b in pts_pairs)
    med = d2[(len(d2) - 1) // 2]
    bws = [med * s for s in (0.25, 0.5, 1.0, 2.0, 4.0)]
    assert float(mmd2(x, y)) == pytest.approx(_brute_mmd2(x, y, bws, False), rel=1e-6)


def test_mmd2_properties() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, 2, generator=g)  # flattened to (6, 8)
    assert float(mmd2(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(mmd2(x, torch.randn(5, 4, 2, generator=g) + 3)) > 0.1
    with pytest.raises(ValueError, match="at least 2"):
        mmd2(x[:1], x, unbiased=True)


def _reference_distance_wb(gwr: torch.Tensor, gws: torch.Tensor) -> float:
    """The DC reference's per-layer distance written out row by row with python floats."""
    if gwr.dim() == 1:
        return 0.0
    rows_r, rows_s = gwr.reshape(gwr.shape[0], -1).tolist(), gws.reshape(gws.shape[0], -1).tolist()
    total = 0.0
    for r, s in zip(rows_r, rows_s):
        dot = sum(a * b for a, b in zip(r, s))
        nr, ns = math.sqrt(sum(a * a for a in r)), math.sqrt(sum(b * b for b in s))
        total += 1 - dot / (nr * ns + 1e-6)
    return total


def test_gradient_distance_ours_hand_worked() -> None:
    # conv weight (out=2, in=1, 1x2): rows [1,0],[0,1] vs [2,0],[3,0] -> cosines 1 and 0 -> 0 + 1
    gr_w = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]], dtype=torch.float64)
    gs_w = torch.tensor([[[[2.0, 0.0]]], [[[3.0, 0.0]]]], dtype=torch.float64)
    # a bias: ignored by the reference distance whatever its values
    gr_b, gs_b = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([-5.0, 7.0], dtype=torch.float64)
    # linear weight (2 x 2): rows [1,1]·[1,-1] -> cos 0 ; [3,4]·[-3,-4] -> cos -1 -> 1 + 2
    gr_l = torch.tensor([[1.0, 1.0], [3.0, 4.0]], dtype=torch.float64)
    gs_l = torch.tensor([[1.0, -1.0], [-3.0, -4.0]], dtype=torch.float64)
    got = gradient_distance([gr_w, gr_b, gr_l], [gs_w, gs_b, gs_l])
    assert float(got) == pytest.approx(0.0 + 1.0 + 0.0 + 1.0 + 2.0, abs=1e-5)


def test_gradient_distance_ours_matches_reference_on_model_gradients() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.GroupNorm(3, 3), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    params = list(net.parameters())
    xr, xs = torch.randn(8, 1, 4, 4), torch.randn(2, 1, 4, 4)
    yr, ys = torch.randint(0, 2, (8,)), torch.tensor([0, 1])
    gr = torch.autograd.grad(F.cross_entropy(net(xr), yr), params)
    gs = torch.autograd.grad(F.cross_entropy(net(xs), ys), params)
    expected = sum(_reference_distance_wb(a, b) for a, b in zip(gr, gs))
    assert float(gradient_distance(gr, gs)) == pytest.approx(expected, rel=1e-5)
    assert float(gradient_distance(gr, gr)) == pytest.approx(0.0, abs=1e-4)


def test_gradient_distance_mse_and_cos() -> None:
    gr = [torch.tensor([[1.0, 2.0]]), torch.tensor([3.0])]
    gs = [torch.tensor([[0.0, 2.0]]), torch.tensor([1.0])]
    # mse: (1-0)^2 + 0 + (3-1)^2 = 5 ; cos: 1 - (0+4+3) / (sqrt(14) * sqrt(5))
    assert float(gradient_distance(gr, gs, "mse")) == pytest.approx(5.0)
    assert float(gradient_distance(gr, gs, "cos")) == pytest.approx(1 - 7 / math.sqrt(70), rel=1e-5)


def test_gradient_distance_bad_input() -> None:
    g = [torch.ones(2, 2)]
    with pytest.raises(ValueError, match="metric"):
        gradient_distance(g, g, "l1")
    with pytest.raises(ValueError, match="gradients"):
        gradient_distance(g, g + g)


def test_trajectory_loss_formula() -> None:
    start, end = torch.tensor([0.0, 0.0]), torch.tensor([3.0, 4.0])
    student = torch.tensor([3.0, 0.0])
    # ||(3,0) - (3,4)||^2 / ||(0,0) - (3,4)||^2 = 16 / 25
    assert float(trajectory_loss(student, start, end)) == pytest.approx(16 / 25)
    assert float(trajectory_loss(end, start, end)) == 0.0
    assert float(trajectory_loss(start, start, end)) == pytest.approx(1.0)


def test_trajectory_loss_equals_reference_normalization() -> None:
    # the MTT code divides both sums by the parameter count before the ratio; the count cancels
    g = torch.Generator().manual_seed(3)
    s, a, b = (torch.randn(50, generator=g) for _ in range(3))
    ref = (F.mse_loss(s, b, reduction="sum") / 50) / (F.mse_loss(a, b, reduction="sum") / 50)
    assert float(trajectory_loss(s, a, b)) == pytest.approx(float(ref), rel=1e-6)


def test_mean_feature_loss_hand_worked() -> None:
    real = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # mean (2, 1)
    syn = torch.tensor([[0.0, 1.0]])  # mean (0, 1)
    assert float(mean_feature_loss(real, syn)) == pytest.approx(4.0)


def test_calibration_loss_hard_and_soft() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    hard = torch.tensor([0, 2])
    expected = -(torch.log_softmax(logits, -1)[[0, 1], [0, 2]]).mean()
    assert float(calibration_loss(logits, hard)) == pytest.approx(float(expected))
    assert float(calibration_loss(logits, F.one_hot(hard, 3).float())) == pytest.approx(float(expected))
