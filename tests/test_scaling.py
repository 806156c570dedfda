"""scaling.py: 004 Eq. 7-8 against a direct product, and the fit recovers known parameters from noisy curves."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ddnb.scaling import bootstrap_fit, delta_of_tau, fit_scaling_law, scaling_curve

EPOCHS = np.array([1, 2, 3, 5, 8, 12, 20, 30, 50, 80, 120, 200, 300])
TRUE = dict(a=0.9, b=-0.8, tau=4.0, d=0.1)  # an error curve: from 1.0 down to a plateau near 0.24


def test_curve_matches_a_direct_product_of_eq7():
    a, b, tau, d, n = 1.5, -0.3, 2.0, 0.1, 100.0
    delta = 0.5 ** (1 / tau)
    for k in (1, 2, 7):
        prod = n**b  # n_1**b_1 with b_1 = b
        for j in range(2, k + 1):  # b_j = b * delta**(j-1); n_j / n_{j-1} = j / (j-1)
            prod *= (j * n / ((j - 1) * n)) ** (b * delta ** (j - 1))
        assert scaling_curve([k], a, b, tau, d, n)[0] == pytest.approx(a * prod + d, rel=1e-12)
    assert delta_of_tau(1.0) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_known_parameters_from_noisy_curves(seed):
    rng = np.random.default_rng(seed)
    y = scaling_curve(EPOCHS, n=1.0, **TRUE) + rng.normal(0, 0.002, EPOCHS.size)
    fit = fit_scaling_law(EPOCHS, y)
    # stated tolerances for noise sd 0.002 on a curve spanning ~0.75: b +-0.06, tau +-10 %, d +-0.05, a +-8 %
    # (a, b and d trade off along a shallow valley, so they are the loosest; tau is well pinned)
    assert fit.b == pytest.approx(TRUE["b"], abs=0.06)
    assert fit.tau == pytest.approx(TRUE["tau"], rel=0.1)
    assert fit.d == pytest.approx(TRUE["d"], abs=0.05)
    assert fit.a == pytest.approx(TRUE["a"], rel=0.08)
    assert fit.delta == pytest.approx(delta_of_tau(fit.tau))
    assert np.abs(fit.predict(EPOCHS) - scaling_curve(EPOCHS, **TRUE)).max() < 0.006


def test_fit_reports_a_for_the_pool_size():
    n = 500.0
    y = scaling_curve(EPOCHS, n=n, **TRUE)
    fit = fit_scaling_law(EPOCHS, y, n=n)
    assert fit.a == pytest.approx(TRUE["a"], rel=1e-3) and fit.b == pytest.approx(TRUE["b"], abs=1e-3)


def test_refinement_beats_the_grid_alone():
    y = scaling_curve(EPOCHS, a=1.7, b=-0.3333, tau=4.321, d=0.05)
    coarse = fit_scaling_law(EPOCHS, y, refine=False)
    fine = fit_scaling_law(EPOCHS, y)
    assert fine.rss < coarse.rss and fine.rss < 1e-12
    assert fine.tau == pytest.approx(4.321, rel=1e-3)


def test_bootstrap_interval_covers_the_truth_and_shrinks_with_less_noise():
    rng = np.random.default_rng(0)
    clean = scaling_curve(EPOCHS, **TRUE)
    wide = bootstrap_fit(EPOCHS, clean + rng.normal(0, 0.004, (8, EPOCHS.size)), n_boot=20, seed=0)
    narrow = bootstrap_fit(EPOCHS, clean + rng.normal(0, 0.0005, (8, EPOCHS.size)), n_boot=20, seed=0)
    assert narrow["b"]["std"] < wide["b"]["std"]
    assert abs(wide["b"]["mean"] - TRUE["b"]) < 3 * wide["b"]["std"]
    assert math.isfinite(wide["fit"]["tau"])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="integers >= 1"):
        fit_scaling_law([0, 1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="4 distinct"):
        fit_scaling_law([1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="2 seeds"):
        bootstrap_fit(EPOCHS, [scaling_curve(EPOCHS, **TRUE)])
