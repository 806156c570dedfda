"""dcs.py: size control removes a correlation that runs through size alone; the sign and the plain Spearman."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from ddnb.dcs import dcs


def _toy(seed=0):
    """Sets at 4 IPCs: loss and accuracy both depend on size, independently of each other otherwise."""
    rng = np.random.default_rng(seed)
    sizes = np.repeat([1, 10, 50, 100], 25).astype(float)
    loss = 5.0 / np.sqrt(sizes) + rng.normal(0, 0.01, sizes.size)   # a function of size plus noise
    acc = 40 + 10 * np.log(sizes) + rng.normal(0, 1.0, sizes.size)  # better with size, independent noise
    return loss, acc, sizes


@pytest.mark.parametrize("control", ["group", "linear"])
def test_loss_that_is_a_function_of_size_has_dcs_near_zero_after_control(control):
    loss, acc, sizes = _toy()
    assert dcs(loss, acc, sizes, control="none") > 0.8  # raw: strongly "predictive" through size alone
    assert abs(dcs(loss, acc, sizes, control=control)) < 0.25


def test_pure_function_of_size_without_noise_is_undefined_after_control():
    sizes = np.repeat([1.0, 10.0, 50.0], 5)
    acc = np.arange(15.0)
    assert math.isnan(dcs(1 / sizes, acc, sizes))


def test_a_loss_that_tracks_quality_within_sizes_is_found():
    rng = np.random.default_rng(1)
    sizes = np.repeat([10.0, 50.0], 30)
    quality = rng.normal(0, 1, sizes.size)
    acc = 50 + 20 * (sizes == 50) + 5 * quality
    loss = 1.0 / sizes - 0.001 * quality + rng.normal(0, 0.0002, sizes.size)  # lower loss, better set
    assert dcs(loss, acc, sizes) > 0.8


def test_no_control_is_plain_spearman_of_loss_with_error():
    rng = np.random.default_rng(2)
    loss, acc, sizes = rng.normal(size=20), rng.normal(size=20), rng.integers(1, 4, 20)
    assert dcs(loss, acc, sizes, control="none") == pytest.approx(-spearmanr(loss, acc)[0])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="control"):
        dcs([1, 2, 3], [1, 2, 3], [1, 1, 1], control="partial")
    with pytest.raises(ValueError, match="same length"):
        dcs([1, 2, 3], [1, 2], [1, 1, 1])
